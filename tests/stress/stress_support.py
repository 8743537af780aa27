"""Helpers the stress tests share: the scale (PGJOB_STRESS), count reports, deadline waits."""
import os
import sys
import time

SCALE = os.environ.get("PGJOB_STRESS", "")
FULL = SCALE == "full"
LINUX = sys.platform.startswith("linux")
WINDOWS = sys.platform == "win32"


def sized(ci, full):
    """The count to use at this scale."""
    return full if FULL else ci


def report(name, **counts):
    """One line scripts/stress collects: STRESS <name> key=value ..."""
    line = "STRESS %s %s" % (name, " ".join(f"{k}={v}" for k, v in counts.items()))
    print(line, flush=True)
    path = os.environ.get("PGJOB_STRESS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def wait_until(predicate, timeout=10.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
