"""Leaks: thousands of create/spawn/close cycles must leave the open-fd count (Linux) or the
handle count (Windows; under Wine, which reports 0 handles, the lowest free handle value)
exactly where it was, and the resident memory flat."""
import gc
import os
import sys

import pytest

import pgjob
from stress_support import LINUX, STRESS, WINDOWS, report, sized, spawn_member, wine_1359_counts

pytestmark = STRESS

TRUE = ["hostname"] if WINDOWS else ["/bin/true"]
CYCLES = sized(300, 10_000)
WARMUP = sized(50, 200)
#: Resident memory may grow this much over all cycles (allocator noise, caches filling):
#: a real leak of even 1 KiB per cycle is 10 MiB over the full run.
RSS_SLACK = 4 * 1024 * 1024


def open_handles():
    if WINDOWS:
        import _winapi
        from pgjob import _jobobject
        count = _jobobject.GetProcessHandleCount(_winapi.GetCurrentProcess())
        # Wine 8 answers 0 here. The lowest free handle value is a count that works on both:
        # handles are allocated lowest-slot-first, so every leaked handle pushes it up.
        return count or lowest_free_handle()
    return len(os.listdir("/proc/self/fd"))


def _handle_count_works():
    import _winapi
    from pgjob import _jobobject
    return _jobobject.GetProcessHandleCount(_winapi.GetCurrentProcess()) > 0


def lowest_free_handle():
    import _winapi
    me = _winapi.GetCurrentProcess()
    probe = _winapi.DuplicateHandle(me, me, me, 0, False, _winapi.DUPLICATE_SAME_ACCESS)
    _winapi.CloseHandle(probe)
    return probe


def resident_bytes():
    if WINDOWS:
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
                (name, ctypes.c_size_t) for name in (
                    "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                    "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage",
                    "PagefileUsage", "PeakPagefileUsage")]

        counters = Counters()
        counters.cb = ctypes.sizeof(counters)
        kernel32 = ctypes.WinDLL("kernel32")
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        kernel32.K32GetProcessMemoryInfo.argtypes = [wintypes.HANDLE, ctypes.c_void_p,
                                                     wintypes.DWORD]
        ok = kernel32.K32GetProcessMemoryInfo(kernel32.GetCurrentProcess(),
                                              ctypes.byref(counters), counters.cb)
        assert ok
        return counters.WorkingSetSize
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def one_cycle(i, mechanism):
    """Create a job, spawn into it, use it, close it; now and then the other paths too."""
    kwargs = {} if mechanism is None else {"mechanism": mechanism}
    with pgjob.Job(**kwargs) as job:
        p = spawn_member(job.popen, TRUE)
        assert p.wait(30) == 0
        if i % 5 == 0:
            job.pids()
            job.stats()
            job.contains(p.pid)
            list(job.events(timeout=0))
            job.wait(5)
        if i % 7 == 0:
            try:
                job.popen(["pgjob-no-such-program"])
            except FileNotFoundError:
                pass
            else:
                raise AssertionError("a missing program started")
    if i % 11 == 0:
        with spawn_member(pgjob.Popen, TRUE) as own:  # its private job
            own.wait(30)
    if i % 13 == 0:
        closed = pgjob.Job(**kwargs)
        closed.close()
        try:
            closed.pids()
        except pgjob.JobClosedError:
            pass


MECHANISMS = ([None] if WINDOWS else ["pid_namespace", "pdeathsig", "none"])


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_create_spawn_close_cycles_leak_nothing(mechanism):
    cycles = CYCLES if mechanism in (None, "pid_namespace") else sized(200, 3000)
    for i in range(WARMUP):
        one_cycle(i, mechanism)
    gc.collect()
    handles_before, rss_before = open_handles(), resident_bytes()
    checkpoints = []
    for i in range(cycles):
        one_cycle(i, mechanism)
        if (i + 1) % max(1, cycles // 10) == 0:
            gc.collect()
            checkpoints.append((open_handles(), resident_bytes()))
    gc.collect()
    handles_after, rss_after = open_handles(), resident_bytes()
    name = "fds" if LINUX else ("handles" if _handle_count_works() else "lowest_free_handle")
    report(f"leaks {sys.platform} {mechanism or 'job_object'}", cycles=cycles,
           **{f"{name}_before": handles_before, f"{name}_after": handles_after,
              f"{name}_delta": handles_after - handles_before},
           rss_before_kib=rss_before // 1024, rss_after_kib=rss_after // 1024,
           rss_delta_kib=(rss_after - rss_before) // 1024, **wine_1359_counts(),
           handle_checkpoints=",".join(str(h) for h, _ in checkpoints),
           rss_checkpoints_kib=",".join(str(r // 1024) for _, r in checkpoints))
    assert handles_after <= handles_before, checkpoints
    assert rss_after - rss_before <= RSS_SLACK, checkpoints
