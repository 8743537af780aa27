"""Root test configuration: collect only the suites that can run on this platform, say in
pytest's header when deadlines are scaled (scripts/vm's guest: PGJOB_TIMEOUT_SCALE), and
with PGJOB_TEST_TIMEOUT=S fail a test that runs longer than S seconds instead of letting
it hang the whole run (the VM stage: one hung test would otherwise cost a boot's results).

tests/windows runs on Windows (and on Linux under Wine via scripts/winepy); tests/linux runs
on Linux. Everything else (tests/cli, tests/common, ...) runs wherever pgjob imports.
"""
import os
import signal
import sys
import threading

import pytest

from proc_helpers import TIMEOUT_SCALE, pgjob_plugin_args

# The suites use pgjob's own pytest plugin (its `job` fixture), as a user's would: through its
# pytest11 entry point where pgjob is installed (the wheel's test run), loaded here in the
# source tree.
pytest_plugins = [arg for arg in pgjob_plugin_args() if arg != "-p"]

collect_ignore = []
if sys.platform != "win32":
    collect_ignore.append("windows")
if not sys.platform.startswith("linux"):
    collect_ignore.append("linux")
    collect_ignore.append("postgres")


def pytest_report_header(config):
    # A failure in the VM then reads with the right clock in mind: deadlines written as
    # proc_helpers.scaled(seconds) are that much longer there.
    if TIMEOUT_SCALE != 1:
        where = " (in scripts/vm's guest)" if os.environ.get("PGJOB_IN_VM") == "1" else ""
        return f"pgjob: deadlines x{TIMEOUT_SCALE:g}{where}: PGJOB_TIMEOUT_SCALE"
    return None



class RanTooLong(Exception):
    """A test ran past PGJOB_TEST_TIMEOUT (not a TimeoutError: tests catch those)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = float(os.environ.get("PGJOB_TEST_TIMEOUT") or 0)
    if limit <= 0 or not hasattr(signal, "setitimer") \
            or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        # Raised in the main thread wherever it blocks (a read, a wait): the test fails,
        # its finally blocks and fixtures clean up, and the run goes on.
        raise RanTooLong(f"{item.nodeid} ran past PGJOB_TEST_TIMEOUT={limit:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
