"""Helpers the stress tests share: the scale (PGJOB_STRESS), count reports, a cheap sleeper argv.

The stress suite (marker `stress`) is off unless PGJOB_STRESS is set: "ci" runs a
few-minute subset sized for CI, "full" the sizes issue 5 asks for (scripts/stress). Each
test prints one "STRESS ..." line with its counts, appended to $PGJOB_STRESS_REPORT too.
(No conftest.py here: a second top-level `conftest` module would shadow tests/linux's.)
"""
import os
import subprocess
import sys

import pytest

SCALE = os.environ.get("PGJOB_STRESS", "")
FULL = SCALE == "full"
LINUX = sys.platform.startswith("linux")
WINDOWS = sys.platform == "win32"

#: Every stress test module starts its pytestmark with these two.
STRESS = [pytest.mark.stress,
          pytest.mark.skipif(SCALE not in ("ci", "full"),
                             reason="stress tests run with PGJOB_STRESS=ci or =full (scripts/stress)")]


def sleeper(seconds):
    """argv of a cheap process that waits `seconds` and exits 0.

    Windows: not `ping -n N 127.0.0.1`, the usual idiom. Under Wine 8 a ping killed while its
    ICMP request is in flight (which is what a job teardown does) can deadlock nsiproxy.sys in
    winedevice.exe, and mountmgr.sys lives in the same process: from then on every new process
    and many file stats hang, and the whole run stalls. A bare Python (-S -I: no site, no
    user paths) starts in ~40 ms under Wine and touches no driver."""
    if WINDOWS:
        return [sys.executable, "-S", "-I", "-c", f"import time; time.sleep({seconds!r})"]
    return ["sleep", str(seconds)]


def spawn_member(spawn, argv, **kwargs):
    """spawn(argv, stdout=DEVNULL, **kwargs) for a well-formed argv: a member or a helper
    process, never the fuzzed input."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    return spawn(argv, **kwargs)


def wine_1359_counts():
    """For a STRESS line under Wine: how many spawns of this process failed with Wine's own
    winerror 1359 and were retried, per side (plain subprocess, pgjob). The retry is
    scripts/winepy's start-up hook (winepy_support/site/sitecustomize.py); printing the
    counts per side shows whether the rate were ever pgjob's own."""
    counts = getattr(sys.modules.get("sitecustomize"), "RETRIES", None)
    if not WINDOWS or counts is None:
        return {}
    return {f"wine_1359_retries_{side}": n for side, n in counts.items()}


def sized(ci, full):
    """The count to use at this scale."""
    return full if FULL else ci


def report(name, **counts):
    """One line scripts/stress collects: STRESS <name> key=value ..."""
    line = "STRESS %s %s" % (name, " ".join(f"{k}={v}" for k, v in counts.items()))
    print(line, flush=True)
    path = os.environ.get("PGJOB_STRESS_REPORT")  # empty: don't write
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
