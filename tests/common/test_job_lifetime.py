"""Lifetime rules the same on every system: dropping a Popen never kills its child (as with
subprocess.Popen), detach() while other threads are inside the Job, a Job that learns its OS
object is gone, and a mechanism asked for by name that is not available here."""
import gc
import logging
import os
import subprocess
import sys
import threading
import weakref

import pytest

import pgjob
from proc_helpers import wait_until

READY_THEN_SLEEP = [sys.executable, "-c",
                    "import sys, time; print('ready', flush=True); time.sleep(120)"]


class ProcessRef:
    """A reference to a process that does not go through its Popen: a pidfd (Linux) or a
    process handle (Windows), so that the Popen can be dropped and the process still seen."""

    def __init__(self, pid):
        self.pid = pid
        if sys.platform == "win32":
            import _winapi
            self._winapi = _winapi
            # SYNCHRONIZE | PROCESS_TERMINATE
            self.handle = _winapi.OpenProcess(0x00100000 | 0x0001, False, pid)
        else:
            self.handle = os.pidfd_open(pid)

    def alive(self):
        if sys.platform == "win32":
            return self._winapi.WaitForSingleObject(self.handle, 0) != self._winapi.WAIT_OBJECT_0
        import select
        return not select.select([self.handle], [], [], 0)[0]

    def kill(self):
        if sys.platform == "win32":
            try:
                self._winapi.TerminateProcess(self.handle, 1)
            except PermissionError:
                pass  # exited already
        else:
            import signal
            try:
                signal.pidfd_send_signal(self.handle, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self):
        if sys.platform == "win32":
            self._winapi.CloseHandle(self.handle)
        else:
            os.close(self.handle)


def _start_ready(factory, **kwargs):
    p = factory(READY_THEN_SLEEP, stdout=subprocess.PIPE, **kwargs)
    assert p.stdout.readline().strip() == b"ready"
    return p


def test_dropping_a_popen_does_not_kill_its_child():
    p = _start_ready(pgjob.Popen)
    ref = ProcessRef(p.pid)
    job = weakref.ref(p.job)
    try:
        p.stdout.close()
        del p
        gc.collect()
        # Gone at once if the private job was closed (Windows did: TerminateJobObject).
        assert not wait_until(lambda: not ref.alive(), timeout=1.0), "the dropped child died"
        assert job() is not None and not job().closed
        ref.kill()
        assert wait_until(lambda: not ref.alive(), timeout=20)
        # The next Popen sweeps the dropped one whose child exited: its private job goes.
        with pgjob.Popen([sys.executable, "-c", "pass"]) as q:
            q.wait(60)
        assert wait_until(lambda: gc.collect() is not None and job() is None, timeout=10)
    finally:
        ref.kill()
        ref.close()


def test_with_block_and_job_close_still_kill_the_child():
    p = _start_ready(pgjob.Popen)
    ref = ProcessRef(p.pid)
    try:
        p.job.close()
        assert wait_until(lambda: not ref.alive(), timeout=20)
        p.wait(20)
    finally:
        ref.kill()
        ref.close()


def _blocked_in(job, call):
    """Run `call` on a thread until it is inside the job (borrowing the backend)."""
    box = {}

    def run():
        try:
            box["result"] = call()
        except BaseException as exc:  # reported to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_until(lambda: job._users > 0, timeout=10), "the thread never entered the job"
    return thread, box


@pytest.mark.parametrize("call", ["wait", "events"])
def test_detach_while_another_thread_is_inside(call):
    job = pgjob.Job()
    p = _start_ready(job.popen)
    ref = ProcessRef(p.pid)
    try:
        if call == "wait":
            thread, box = _blocked_in(job, job.wait)
        else:
            thread, box = _blocked_in(job, lambda: [e for e in job.events()
                                                    if e.kind is not pgjob.EventKind.NEW_PROCESS])
        job.detach()
        # Descriptor numbers the backend let go of are taken again at once, as in a busy
        # program: a late syscall on them would fail with EBADF or act on these pipes.
        pipes = [os.pipe() for _ in range(8)]
        thread.join(10)
        assert not thread.is_alive(), f"{call}() did not return after detach()"
        assert "error" not in box, repr(box.get("error"))
        assert box["result"] in (False, [])
        for r, w in pipes:
            os.close(r)
            os.close(w)
        assert job.closed, job
        # Still running a while later: on Linux the init once took the owner's close of the
        # control socket, which follows the detach, for "kill" and took the namespace down a
        # few milliseconds after detach() returned (this check came too early to see it).
        assert not wait_until(lambda: not ref.alive(), timeout=0.5), \
            "detach() must leave the member running"
    finally:
        ref.kill()
        p.wait(20)
        ref.close()


def test_close_while_another_thread_waits_kills_promptly():
    job = pgjob.Job()
    p = _start_ready(job.popen)
    ref = ProcessRef(p.pid)
    try:
        thread, box = _blocked_in(job, job.wait)
        job.close()
        thread.join(10)
        assert not thread.is_alive() and "error" not in box
        assert wait_until(lambda: not ref.alive(), timeout=20), "close() did not kill"
    finally:
        ref.kill()
        p.wait(20)
        ref.close()


def test_a_job_whose_os_object_is_gone_closes_itself_once(caplog):
    job = pgjob.Job(mechanism="none")
    impl = job._impl

    def gone():
        # What a backend raises when its OS object went away under it (Linux: the
        # namespace's init was killed); the real case is in the backend suites.
        raise pgjob.JobClosedError(3, "the job's OS object is gone")

    impl.pids = gone
    with caplog.at_level(logging.WARNING, logger="pgjob"):
        with pytest.raises(pgjob.JobClosedError):
            job.pids()
        assert job.closed
        with pytest.raises(pgjob.JobClosedError, match="OS object is gone"):
            job.pids()
        with pytest.raises(pgjob.JobClosedError):
            job.popen([sys.executable, "-c", "pass"])
    warnings = [r for r in caplog.records if r.name == "pgjob" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


OTHER_SYSTEM = {"win32": ["pid_namespace", "pdeathsig"]}.get(sys.platform, ["job_object"])


@pytest.mark.parametrize("mechanism", OTHER_SYSTEM)
@pytest.mark.parametrize("on_unavailable", ["log", "raise"])
def test_a_named_mechanism_is_never_downgraded(mechanism, on_unavailable, caplog):
    with pytest.raises(pgjob.UnsupportedError):
        pgjob.Job(mechanism=mechanism, on_unavailable=on_unavailable)


def test_mechanism_none_by_name_is_none_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pgjob"):
        with pgjob.Job(mechanism="none") as job:
            assert job.mechanism == "none"
            with job.popen([sys.executable, "-c", "pass"]) as p:
                assert p.wait(60) == 0 and p.spawn_path == "plain"
    assert not [r for r in caplog.records if r.name == "pgjob"]


@pytest.mark.parametrize("mechanism", [None, "none"])
def test_limits_with_mechanism_none_are_refused_not_ignored(mechanism):
    if mechanism is None and sys.platform == "win32":
        pytest.skip("Windows enforces limits with mechanism=None")
    with pytest.raises(pgjob.UnsupportedError):
        pgjob.Job(mechanism=mechanism, process_limit=5)
