"""Build the pgjob._jobobject extension: pick the C sources and macros for the target OS.

The convention is by file name: src/jobobject/common_*.c everywhere, plus win_*.c on Windows,
linux_*.c on Linux, posix_*.c on other POSIX systems;
scripts/build_windows_ext (the MinGW cross-build for the Wine harness) follows the same rule.
"""
import glob
import os
import platform
import re
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.errors import LinkError
except ImportError:  # setuptools before 59
    from distutils.errors import LinkError

# pgjob-helper (src/helper/*.c): the program pgjob execs for its helper processes on Linux (a
# namespace's init, a cgroup's watcher). Installed inside the package, next to the extension.
HELPER = "pgjob-helper"

HERE = os.path.dirname(os.path.abspath(__file__))


def target_sources(platform):
    """C sources for `platform` ("win32", "linux", anything else), relative to the project."""
    prefix = {"win32": "win_", "linux": "linux_"}.get(platform, "posix_")
    impl_dir = os.path.join(HERE, "src", "jobobject")
    impl = sorted(f for f in os.listdir(impl_dir)
                  if f.startswith(("common_", prefix)) and f.endswith(".c"))
    return ["src/_jobobject.c"] + ["src/jobobject/" + f for f in impl]


def package_version():
    """pyproject.toml's [project] version: compiled into the extension (PGJOB_VERSION), so that
    pgjob refuses an extension built for another version (pgjob/__init__.py)."""
    table = None
    with open(os.path.join(HERE, "pyproject.toml"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("["):
                table = line.strip()
            found = re.match(r'version\s*=\s*"([^"]+)"', line)
            if table == "[project]" and found:
                return found.group(1)
    raise SystemExit("setup.py: no version in pyproject.toml's [project] table")


# The stable ABI (abi3) of CPython 3.9, on GIL builds: one cp39-abi3 wheel per platform for
# every CPython from 3.9 on. A free-threaded build (3.13t...) has no stable ABI before 3.15's
# abi3t, so there the extension stays version-specific (cpXYt).
LIMITED_API = 0x03090000
LIMITED_API_TAG = "cp39"
USE_LIMITED_API = not sysconfig.get_config_var("Py_GIL_DISABLED")
LIBC = platform.libc_ver()[0]


def extension():
    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    # Unquoted: the C code stringifies it (a quoted -D value is quoted differently by each
    # compiler driver).
    macros = [("PGJOB_VERSION", package_version())]
    if USE_LIMITED_API:
        macros += [("Py_LIMITED_API", hex(LIMITED_API))]
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
    extra_link_args = []
    if platform == "linux" and LIBC == "glibc":
        # Where the pthread calls live before glibc 2.34 (jobobject.h names their old
        # versions). By its soname: since 2.34 it is a stub with no libpthread.so to link
        # (-lpthread would take the empty libpthread.a), yet an old glibc needs it loaded.
        extra_link_args += ["-Wl,--no-as-needed", "-l:libpthread.so.0"]
    return Extension(
        "pgjob._jobobject",
        sources=target_sources(platform),
        include_dirs=["src/jobobject", "src/helper"],  # helper.h: the init's protocol
        define_macros=macros,
        libraries=libraries,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
        py_limited_api=USE_LIMITED_API,
    )


class BuildExtAndHelper(build_ext):
    """build_ext, plus pgjob-helper on Linux: compiled and linked with the same compiler as
    the extension, against libc only, into the package directory (the build tree, or src/pgjob
    with --inplace)."""

    def run(self):
        super().run()
        if self.inplace:
            self.remove_other_inplace_builds()
        if sys.platform.startswith("linux"):
            self.build_helper()

    def remove_other_inplace_builds(self):
        """After an abi3 build in place, it is the only build of a GIL CPython left in
        src/pgjob. The import system prefers a version-specific name
        (_jobobject.cpython-311-x86_64-linux-gnu.so) to _jobobject.abi3.so, and Debian's
        3.15 prefers _jobobject.abi3-x86_64-linux-gnu.so (what its setuptools names an abi3
        build) to it too: a stale one would be the file tested. The free-threaded builds
        (cpython-313t-...) stay: abi3 does not serve them."""
        if not USE_LIMITED_API:
            return
        built = os.path.abspath(self.get_ext_fullpath("pgjob._jobobject"))
        for other in glob.glob(os.path.join(os.path.dirname(built), "_jobobject.*.so")):
            if os.path.abspath(other) != built and not re.search(r"\.cpython-\d+t-", other):
                self.announce(f"removing {other}: {os.path.basename(built)} replaces it", level=3)
                os.unlink(other)

    def helper_path(self):
        if self.inplace:
            return os.path.join(HERE, "src", "pgjob", HELPER)
        return os.path.join(self.build_lib, "pgjob", HELPER)

    def build_helper(self):
        helper_dir = os.path.join("src", "helper")
        sources = sorted(os.path.join(helper_dir, f) for f in os.listdir(os.path.join(HERE, helper_dir))
                         if f.endswith(".c"))
        x86_64 = platform.machine().lower() in ("x86_64", "amd64")
        entry_source = os.path.join(helper_dir, "common_entry.c")

        def compile_(files, subdir, macros=()):
            return self.compiler.compile(
                files, output_dir=os.path.join(self.build_temp, "helper", subdir),
                macros=[("_GNU_SOURCE", None), *macros], include_dirs=[helper_dir],
                # No stack protector and no sanitizer (CFLAGS may ask for ASan for the
                # extension): on x86_64 the init runs without libc's startup (common_entry.c),
                # so without the thread pointer the canary would be read through, and no
                # sanitizer runtime is set up.
                extra_postargs=["-Wall", "-Wextra", "-Wformat=2", "-O2", "-fno-stack-protector",
                                "-fno-sanitize=all"],
                debug=self.debug)

        common = compile_([s for s in sources if s != entry_source], "common")
        target = self.helper_path()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # Static where libc.a exists: the helper then needs no symbol of the libc it runs on
        # (this tree is also built inside a newer-glibc chroot and then run on the host), and
        # its exec skips the dynamic loader. Without libc.a, dynamic: the sources use only
        # calls old enough for GLIBC_2.17 (see helper.h), and on x86_64 common_entry.c starts
        # libc itself to name the oldest __libc_start_main; tests/linux/test_helper_program.py
        # checks the versions the built file needs.
        variants = [("static", ["-static", "-s"], ()), ("dynamic", ["-s"], ())]
        if x86_64:
            variants = [("static", ["-static", "-s", "-Wl,-e,helper_entry"], ()),
                        ("dynamic", ["-s", "-nostartfiles", "-Wl,-e,helper_entry"],
                         (("HELPER_LINKED_DYNAMICALLY", None),))]
        for name, link_args, macros in variants:
            objects = common + compile_([entry_source], name, macros)
            try:
                # link_executable would add Python's LDSHARED flags (-shared): the C driver.
                self.compiler.link_executable(objects, HELPER, output_dir=os.path.dirname(target),
                                              extra_postargs=link_args, target_lang="c")
                break
            except LinkError:
                if name == "dynamic":
                    raise
                self.announce(f"{HELPER}: no static libc here, linking it dynamically", level=3)
        os.chmod(target, 0o755)

    def get_outputs(self):
        outputs = super().get_outputs()
        if sys.platform.startswith("linux"):
            outputs.append(self.helper_path())
        return outputs


if __name__ == "__main__":
    options = {"bdist_wheel": {"py_limited_api": LIMITED_API_TAG}} if USE_LIMITED_API else {}
    setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtAndHelper}, options=options)
