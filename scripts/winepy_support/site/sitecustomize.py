"""Start-up hook of every python.exe that scripts/winepy runs (and of their Python children
that keep its PYTHONPATH): retry, once and on the record, the one CreateProcess failure
that is Wine's own.

Wine 8's CreateProcess now and then fails with winerror 1359 (ERROR_INTERNAL_ERROR): the
wineserver saw the new process die during Wine's start-up of it, before the program ran.
It hits plain subprocess.Popen as often as pgjob's job.popen (measured: about 1 in 3,000
spawns on this project's machines, more on some CI hosts), so tests would fail at random on
a fault that is neither pgjob's nor the test's. Nothing was created, so one more call is
safe. Both spawn paths are wrapped: _winapi.CreateProcess (subprocess, multiprocessing)
and pgjob's _jobobject.CreateProcessInJob. Each retry is counted in RETRIES (the stress
suite prints it) and appended to the file PGJOB_WINE_RETRY_LOG names, which winepy sums up
on stderr when python.exe exits. A second failure in a row is raised as it is.

Real Windows never loads this file: it lives in scripts/, not in the package."""
import os
import sys

WINERROR_INTERNAL = 1359
RETRIES = {"plain": 0, "pgjob": 0}


def _log(side):
    path = os.environ.get("PGJOB_WINE_RETRY_LOG")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"pid {os.getpid()} {side}\n")
    except OSError:
        pass  # the record is a courtesy; never fail a spawn over it


def _retrying(side, create):
    def create_process(*args, **kwargs):
        try:
            return create(*args, **kwargs)
        except OSError as exc:
            if getattr(exc, "winerror", None) != WINERROR_INTERNAL:
                raise
        RETRIES[side] += 1
        _log(side)
        return create(*args, **kwargs)
    create_process.__wrapped__ = create
    return create_process


class _WrapExtensionOnImport:
    """Meta-path finder: wraps pgjob._jobobject.CreateProcessInJob when the extension is
    first imported, without importing it (or pgjob) at start-up."""

    @staticmethod
    def find_spec(name, path, target=None):
        if name != "pgjob._jobobject":
            return None
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            module.CreateProcessInJob = _retrying("pgjob", module.CreateProcessInJob)
        spec.loader.exec_module = exec_and_wrap
        return spec


if sys.platform == "win32":
    import _winapi
    _winapi.CreateProcess = _retrying("plain", _winapi.CreateProcess)
    sys.meta_path.insert(0, _WrapExtensionOnImport)
