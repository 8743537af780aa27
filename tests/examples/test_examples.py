"""The examples are real programs: the POSIX supervisor imports, restarts a crashing service
and kills what each run leaves behind; the Windows service at least compiles here (it needs
pywin32 and the Service Control Manager to run)."""
import importlib.util
import os
import py_compile
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
SUPERVISOR = os.path.join(EXAMPLES, "posix_supervisor.py")


def child_env():
    import pgjob

    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def test_posix_supervisor_imports():
    spec = importlib.util.spec_from_file_location("posix_supervisor", SUPERVISOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and module.Supervisor.run_once


@pytest.mark.parametrize("name", ["windows_service.py", "typed_usage.py", "posix_supervisor.py"])
def test_example_compiles(tmp_path, name):
    py_compile.compile(os.path.join(EXAMPLES, name), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX example")
def test_posix_supervisor_restarts_a_crashing_service():
    result = subprocess.run(
        [sys.executable, SUPERVISOR, "--restarts", "2", "--backoff", "0.01", "--",
         sys.executable, "-c", "import sys; print('run', flush=True); sys.exit(3)"],
        env=child_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 3, result.stderr
    assert result.stdout.count("run") == 3  # first run + 2 restarts
    assert "restart 2/2" in result.stderr
