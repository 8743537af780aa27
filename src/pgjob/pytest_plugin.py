"""pgjob's pytest plugin, registered as `pgjob` through the `pytest11` entry point.

- The `job` fixture: a kill-on-close `pgjob.Job` per test, closed after it; a member still
  running once it is closed fails the test.
- `--pgjob-leaks` (or `pgjob_leaks = true` in the ini file): a test that leaves behind a
  process it started fails, naming each one (pid and command line), and the process is
  killed. The pytest process joins a job of its own for the session (a Job Object on
  Windows, a cgroup on Linux), so every process a test starts is seen, by any means and at
  any depth, daemons included. Where Linux has no writable cgroup v2, the descendants of
  the pytest process are watched instead (a daemon that left the process tree is not seen
  then), and the report header says which. Processes a fixture of a wider scope
  (class, module, session) starts belong to that fixture, not to the test that set it up.

docs/testing.md shows a conftest using it.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Iterator, Optional

import pytest

import pgjob

if TYPE_CHECKING:
    from _pytest.config import Config
    from _pytest.config.argparsing import Parser
    from _pytest.fixtures import FixtureDef, SubRequest
    from _pytest.nodes import Item

#: How long a killed process may take to be gone before the fixture calls it a survivor.
GONE_TIMEOUT = 10.0


def pytest_addoption(parser: Parser) -> None:
    group = parser.getgroup("pgjob", "pgjob: processes that outlive a test")
    group.addoption("--pgjob-leaks", action="store_true", default=None,
                    help="fail a test that leaves behind a process it started, naming it, "
                         "and kill that process (ini: pgjob_leaks)")
    parser.addini("pgjob_leaks", type="bool", default=False,
                  help="fail a test that leaves behind a process it started (as --pgjob-leaks)")


@pytest.fixture
def job() -> Iterator[pgjob.Job]:
    """A `pgjob.Job()` (kill_on_close) for this test, closed after it. Its members must be
    gone then: one that survives the close fails the test."""
    with pgjob.Job() as j:
        yield j
        members = [] if j.closed else j.pids()
    survivors = _still_running(members, GONE_TIMEOUT)
    if survivors:
        pytest.fail(f"pgjob: {len(survivors)} member(s) of the test's job survived its close "
                    f"(mechanism {j.mechanism}): " + "; ".join(_describe(p) for p in survivors),
                    pytrace=False)


# -- leak checks ---------------------------------------------------------------------------

class _Watch:
    """What the session watches: the processes of its own job, or (Linux without a writable
    cgroup v2) the descendants of the pytest process."""

    def __init__(self) -> None:
        self.job: Optional[pgjob.Job] = None
        self.how = ""
        try:
            mechanism = "cgroup" if sys.platform.startswith("linux") else None
            job = pgjob.Job(kill_on_close=True, mechanism=mechanism, on_unavailable="raise")
            job.assign_current()
        except (pgjob.UnsupportedError, pgjob.AlreadyInJobError) as exc:
            if not sys.platform.startswith("linux"):
                raise pytest.UsageError(f"--pgjob-leaks: this process can't join a job: {exc}")
            self.how = (f"the descendants of pid {os.getpid()}, not daemons that leave them "
                        f"(no cgroup for a job: {exc.strerror or exc})")
        else:
            self.job = job
            self.how = f"the session's job (mechanism {job.mechanism})"
        #: processes started while a wider-scoped fixture was set up: that fixture's
        self.owned_by_fixtures: set[int] = set()

    def processes(self) -> set[int]:
        me = os.getpid()
        if self.job is not None:
            return {p for p in self.job.pids() if p != me}
        from . import _procfs
        return set(_procfs._descendants([me]))


# Kept on pytest's own objects as attributes, not in their `stash`: that needs pytest 7, and
# this plugin is loaded into every pytest run of an environment that has pgjob.
def _watch_of(config: Config) -> Optional[_Watch]:
    return getattr(config, "_pgjob_watch", None)


def _leak_checks_on(config: Config) -> bool:
    option = config.getoption("--pgjob-leaks")
    return bool(option if option is not None else config.getini("pgjob_leaks"))


def pytest_configure(config: Config) -> None:
    if _leak_checks_on(config):
        config._pgjob_watch = _Watch()  # type: ignore[attr-defined]


def pytest_report_header(config: Config) -> Optional[str]:
    watch = _watch_of(config)
    return None if watch is None else f"pgjob: leak checks on, watching {watch.how}"


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: FixtureDef[object], request: SubRequest) -> Iterator[None]:
    watch = _watch_of(request.config)
    if watch is None or fixturedef.scope == "function":
        yield
        return
    before = watch.processes()
    yield
    watch.owned_by_fixtures |= watch.processes() - before


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: Item) -> None:
    watch = _watch_of(item.config)
    if watch is not None:
        item._pgjob_before = watch.processes()  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: Item) -> None:
    # Last: pytest's own implementation has torn the test's fixtures down; what they clean up
    # is no leak.
    watch = _watch_of(item.config)
    before: Optional[set[int]] = getattr(item, "_pgjob_before", None)
    if watch is None or before is None:
        return
    leaked = _still_running(sorted(watch.processes() - before - watch.owned_by_fixtures), 0)
    if not leaked:
        return
    described = [_describe(pid) for pid in leaked]
    for pid in leaked:
        _kill(pid)
    pytest.fail(f"pgjob: the test left {len(leaked)} process(es) running (now killed): "
                + "; ".join(described), pytrace=False)


# -- processes -----------------------------------------------------------------------------

def _still_running(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        running = [p for p in pids if _running(p)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.02)


if sys.platform == "win32":
    import _winapi

    from . import _jobobject as _c

    _QUERY = 0x1000  # PROCESS_QUERY_LIMITED_INFORMATION
    _TERMINATE = 0x0001
    _STILL_ACTIVE = 259

    def _open(pid: int, access: int) -> Optional[int]:
        try:
            return int(_winapi.OpenProcess(access, False, pid))
        except OSError:
            return None  # gone (or not ours to see)

    def _running(pid: int) -> bool:
        h = _open(pid, _QUERY)
        if h is None:
            return False
        try:
            return bool(_winapi.GetExitCodeProcess(h) == _STILL_ACTIVE)
        finally:
            _winapi.CloseHandle(h)

    def _describe(pid: int) -> str:
        h = _open(pid, _QUERY | 0x0010)  # PROCESS_VM_READ: the command line is in its memory
        if h is None:
            return f"pid {pid} (gone)"
        try:
            return f"pid {pid}: {_c.GetProcessCommandLine(h)}"
        except OSError as exc:
            return f"pid {pid} (command line unreadable: {exc.strerror or exc})"
        finally:
            _winapi.CloseHandle(h)

    def _kill(pid: int) -> None:
        h = _open(pid, _TERMINATE)
        if h is not None:
            try:
                _winapi.TerminateProcess(h, 1)
            except OSError:
                pass  # exited meanwhile
            finally:
                _winapi.CloseHandle(h)
elif sys.platform.startswith("linux"):
    import signal

    from ._procfs import _running  # running, not a zombie: what the Linux backend counts

    def _describe(pid: int) -> str:
        # A process caught in execve (subprocess.Popen returns once close-on-exec has run,
        # before the kernel has set up the new program's arguments) reads as an empty
        # cmdline for a moment: look again, briefly, then name it by its comm.
        deadline = time.monotonic() + 0.5
        while True:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    data = f.read()
            except OSError:
                return f"pid {pid} (gone)"
            if data or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if not data:
            try:
                with open(f"/proc/{pid}/comm", "rb") as f:
                    return f"pid {pid}: [{os.fsdecode(f.read().strip())}]"
            except OSError:
                return f"pid {pid} (gone)"
        return f"pid {pid}: " + " ".join(os.fsdecode(a) for a in data.rstrip(b"\0").split(b"\0"))

    def _kill(pid: int) -> None:
        # A pidfd: the process itself, whatever reuses its pid meanwhile. (A killed child of
        # ours stays a zombie for its Popen, or subprocess, to reap.)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # gone meanwhile
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(fd)
else:
    import signal

    # Elsewhere (macOS): no /proc, no pidfd; pgjob protects nothing there (mechanism "none").
    def _running(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _describe(pid: int) -> str:
        return f"pid {pid}"

    def _kill(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
