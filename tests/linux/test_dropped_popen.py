"""Dropped pgjob.Popen objects (never waited for, never closed) cost nothing for long: once
a dropped Popen's child has exited, the next Popen lets its private job go, and with it
the namespace's init and every descriptor it held."""
import gc
import os

import pgjob
from proc_helpers import children_by_parent, wait_until


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


def _children():
    """Pids whose parent is this process (the dropped children, their inits)."""
    return children_by_parent().get(os.getpid(), [])


def test_a_thousand_dropped_popens_leak_no_descriptor():
    gc.collect()
    before = _open_fds()
    for _ in range(1000):
        pgjob.Popen(["true"])  # dropped at once, while the child may still run
    # The last ones are swept by a later Popen, once their children have exited.
    def swept():
        with pgjob.Popen(["true"]) as p:
            p.wait(10)
        gc.collect()
        return len(_open_fds() - before) <= 2 and not pgjob._job._DROPPED_POPENS
    assert wait_until(swept, timeout=60), sorted(_open_fds() - before)
    assert wait_until(lambda: not _children(), timeout=30), _children()
