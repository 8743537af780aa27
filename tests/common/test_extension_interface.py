"""The boundary between pgjob's Python code and its C extension, on each OS: the stub says
exactly what the built extension has (stubtest compares names, parameters and their kinds
against the functions' text signatures), and pgjob refuses an extension built for another
version of the package."""
import os
import re
import subprocess
import sys

import pytest

import pgjob
from pgjob import _jobobject

PACKAGE_DIR = os.path.dirname(os.path.abspath(pgjob.__file__))
PACKAGE_ROOT = os.path.dirname(PACKAGE_DIR)
INSTALLED = os.path.basename(PACKAGE_ROOT) in ("site-packages", "dist-packages")
# The project's pyproject.toml: beside src/ in a checkout, or copied next to tests/ (the
# wheel's test run, cibuildwheel's test-sources).
PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "pyproject.toml")


def test_stub_matches_the_built_extension(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed (pip install mypy)")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    env = dict(os.environ)
    if not INSTALLED:
        # A source checkout: mypy finds the stub through MYPYPATH (it refuses site-packages
        # there; an installed package's stub is found as any py.typed package's).
        env["MYPYPATH"] = PACKAGE_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH"))
                                            if p)
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "pgjob._jobobject", "--mypy-config-file",
         str(config)], env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert result.returncode == 0, result.stdout
    assert "Success: no issues found" in result.stdout, result.stdout


def test_every_function_has_a_text_signature():
    """What stubtest compares against: without one, a C function's parameters can't be
    checked, and a stub that drifted from the C code would pass."""
    import inspect
    unchecked = []
    for name in dir(_jobobject):
        value = getattr(_jobobject, name)
        if callable(value) and not name.startswith("_"):
            try:
                inspect.signature(value)
            except ValueError:
                unchecked.append(name)
    assert not unchecked


def test_extension_is_built_for_this_version():
    assert _jobobject.VERSION == pgjob.__version__
    if os.path.isfile(PYPROJECT):
        with open(PYPROJECT, encoding="utf-8") as f:
            declared = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        assert declared is not None and declared.group(1) == pgjob.__version__


def test_an_extension_of_another_version_is_refused_at_import():
    """A stale build must fail at `import pgjob`, naming both versions and the fix, not later
    with a TypeError from a changed argument list. The stale extension is a stand-in module
    (building a real one of another version is what setup.py refuses to do by mistake)."""
    program = (
        "import sys, types\n"
        "stale = types.ModuleType('pgjob._jobobject')\n"
        "stale.VERSION = '0.0.1'\n"
        "stale.__file__ = '/nowhere/_jobobject.so'\n"
        "sys.modules['pgjob._jobobject'] = stale\n"
        "try:\n"
        "    import pgjob\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
        "else:\n"
        "    print('imported')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=120).stdout
    assert out.startswith("refused:"), out
    for part in (pgjob.__version__, "0.0.1", "/nowhere/_jobobject.so", "build_ext --inplace"):
        assert part in out, out
