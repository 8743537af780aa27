"""Root test configuration: collect only the suites that can run on this platform.

tests/windows runs on Windows (and on Linux under Wine via scripts/winepy); tests/linux runs
on Linux. Everything else (tests/cli, tests/common, ...) runs wherever pgjob imports.
"""
import sys

collect_ignore = []
if sys.platform != "win32":
    collect_ignore.append("windows")
if not sys.platform.startswith("linux"):
    collect_ignore.append("linux")
    collect_ignore.append("postgres")
