"""Root test configuration: collect only the suites that can run on this platform, and say
in pytest's header when deadlines are scaled (scripts/vm's guest: PGJOB_TIMEOUT_SCALE).

tests/windows runs on Windows (and on Linux under Wine via scripts/winepy); tests/linux runs
on Linux. Everything else (tests/cli, tests/common, ...) runs wherever pgjob imports.
"""
import os
import sys

from proc_helpers import TIMEOUT_SCALE

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

