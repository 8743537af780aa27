"""Runs under the Wine Python (scripts/winepy --selftest): checks that an extension built by
build_windows_ext with our pyconfig.h agrees with the python.org DLL on the C API's types
and struct layouts, and that child processes work.  Exit status 0 means all passed."""
import subprocess
import sys

import _winepy_selftest as t

failures = []


def check(name, got, want):
    ok = got == want
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {got!r}" + ("" if ok else f" (want {want!r})"))
    if not ok:
        failures.append(name)


print(sys.version, "|", t.__file__)
check("PyArg_ParseTuple is#|n", t.parse(7, "abc", 2**40), (7, "abc", 2**40))
check("PyArg_ParseTuple default", t.parse(-1, ""), (-1, "", -1))
check("PyUnicode_AsWideCharString", t.wide("h\u00e9\U0001f600"), (4, 4, "h\u00e9\U0001f600"))
check("PyLong long long / Py_ssize_t", t.bigint(2**62), (2**62 + 1, 2**62))
try:
    t.bigint(2**63)
    check("PyLong overflow raises", False, True)
except OverflowError:
    check("PyLong overflow raises", True, True)
data = [object(), 2, 3]
check("Py_TYPE/tp_basicsize/PyList macros", t.layout(data),
      ("list", list.__basicsize__, 3, data[0], object.__basicsize__, 8, 4))
check("tp_name of a str", t.layout("x")[:2], ("str", str.__basicsize__))
try:
    t.fail(None)
    check("PyExc_ValueError (data import)", "no exception", "ValueError")
except ValueError as e:
    check("PyExc_ValueError (data import)", str(e), "selftest failure path")
import os
check("GetCurrentProcessId == os.getpid", t.pid(), os.getpid())
out = subprocess.run([sys.executable, "-c", "import _winepy_selftest as t; print(t.pid())"],
                     capture_output=True, text=True)
check("child python imports the extension", out.returncode, 0)
crash = subprocess.run([sys.executable, "-X", "faulthandler", "-c",
                        "import _winepy_selftest as t; t.crash()"],
                       capture_output=True, text=True)
check("segfault -> exit code 0xC0000005", crash.returncode & 0xFFFFFFFF, 0xC0000005)
print("--- crash stderr (expected):\n" + crash.stderr.strip())
print(f"{len(failures)} failed" if failures else "selftest passed")
sys.exit(1 if failures else 0)
