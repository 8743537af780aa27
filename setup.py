"""Build the pgjob._jobobject extension: pick the C sources and macros for the target OS.

The convention is by file name: src/jobobject/common_*.c everywhere, plus win_*.c on Windows,
linux_*.c on Linux, posix_*.c on other POSIX systems;
scripts/build_windows_ext (the MinGW cross-build for the Wine harness) follows the same rule.
"""
import os
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def target_sources(platform):
    """C sources for `platform` ("win32", "linux", anything else), relative to the project."""
    prefix = {"win32": "win_", "linux": "linux_"}.get(platform, "posix_")
    impl_dir = os.path.join(HERE, "src", "jobobject")
    impl = sorted(f for f in os.listdir(impl_dir)
                  if f.startswith(("common_", prefix)) and f.endswith(".c"))
    return ["src/_jobobject.c"] + ["src/jobobject/" + f for f in impl]


def extension():
    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    macros = []
    libraries = []
    extra_compile_args = []
    if platform == "win32":
        # Windows 8 API level: nested jobs, PROC_THREAD_ATTRIBUTE_JOB_LIST is probed at run time.
        macros += [("_WIN32_WINNT", "0x0A00"), ("UNICODE", None), ("_UNICODE", None)]
        libraries += ["kernel32", "advapi32"]
        if "GCC" in sys.version:
            extra_compile_args += ["-Wall", "-Wextra", "-Wformat=2"]
        else:
            extra_compile_args += ["/W4"]
    else:
        macros += [("_GNU_SOURCE", None)]
        extra_compile_args += ["-Wall", "-Wextra", "-Wformat=2", "-Wno-missing-field-initializers"]
    return Extension(
        "pgjob._jobobject",
        sources=target_sources(platform),
        include_dirs=["src/jobobject"],
        define_macros=macros,
        libraries=libraries,
        extra_compile_args=extra_compile_args,
    )


if __name__ == "__main__":
    setup(ext_modules=[extension()])
