"""The handles pgjob holds on members: exit codes read from them (never from a pid opened
again), wait() without spinning, completion-port messages that carry a pid, and the job
options Windows checks (memory limits that fit SIZE_T, namespaced names)."""
import os
import subprocess
import sys
import time

import _winapi
import pytest

import pgjob
from pgjob import EventKind, _jobobject, _windows
from conftest import actor_command
from proc_helpers import wait_until

PY = sys.executable


def exit_event(job, pid, timeout=30):
    for event in job.events(timeout=timeout):
        if event.kind in (EventKind.EXIT_PROCESS, EventKind.ABNORMAL_EXIT_PROCESS) \
                and event.pid == pid:
            return event
    raise AssertionError(f"no exit event for pid {pid}")


def test_exit_code_comes_from_the_members_own_handle(job, monkeypatch):
    """By the time its exit message is read, a member's pid may name another process. The
    reuse is simulated: OpenProcess on any pid now opens a stranger that exited with 99.
    pgjob must report the member's 7 (it used to reopen the pid and report 99)."""
    stranger = subprocess.Popen([PY, "-c", "raise SystemExit(99)"])
    assert stranger.wait(60) == 99
    member = job.popen([PY, "-c", "raise SystemExit(7)"])
    assert member.wait(60) == 7

    def open_the_stranger(access, inherit, pid):
        return _winapi.DuplicateHandle(_winapi.GetCurrentProcess(), stranger._handle,
                                       _winapi.GetCurrentProcess(), 0, False,
                                       _winapi.DUPLICATE_SAME_ACCESS)
    monkeypatch.setattr(_winapi, "OpenProcess", open_the_stranger)
    event = exit_event(job, member.pid)
    assert event.exit_code == 7


def test_exit_code_of_a_grandchild_announced_by_new_process(job, reaper):
    """A member's own child joins the job unseen by pgjob; its NEW_PROCESS message makes
    pgjob open it at once, so its exit code is read from that handle."""
    tree = reaper.start(actor_command("tree"), spawn=job.popen)
    grandchild = tree.read_json()["grandchild"]
    reaper.track(grandchild)
    seen_new = False
    for event in job.events(timeout=30):
        if event.kind is EventKind.NEW_PROCESS and event.pid == grandchild:
            seen_new = True
            break
    assert seen_new
    assert grandchild in job._impl._members
    h = _winapi.OpenProcess(0x0001, False, grandchild)  # PROCESS_TERMINATE
    try:
        _winapi.TerminateProcess(h, 5)
    finally:
        _winapi.CloseHandle(h)
    assert exit_event(job, grandchild).exit_code == 5
    assert grandchild not in job._impl._members


def test_member_handles_are_closed_with_the_job(reaper):
    current = _winapi.GetCurrentProcess()
    before = _jobobject.GetProcessHandleCount(current)
    job = pgjob.Job()
    popens = [job.popen([PY, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
    assert len(job._impl._members) == 3
    job.close()
    for p in popens:
        p.wait(60)
        p._handle.Close()
    assert _jobobject.GetProcessHandleCount(current) <= before


def test_an_exited_members_handle_goes_with_its_message_read_or_not(job):
    """The event pump takes each message off the port as it comes: the exit message of a
    member closes the handle held on it, though nobody reads the job's events."""
    popens = [job.popen([PY, "-c", "pass"]) for _ in range(3)]
    for p in popens:
        assert p.wait(60) == 0
    assert wait_until(lambda: not job._impl._members, timeout=10), job._impl._members
    kinds = [e.kind for e in job.events(timeout=1)]
    assert kinds.count(EventKind.EXIT_PROCESS) == 3, kinds


def test_wait_does_not_spin_on_a_member_it_may_not_open(job, reaper, monkeypatch):
    """A live member pgjob holds no handle for and may not open (ACCESS_DENIED): wait()
    used to return to its loop at once, re-listing at 100% CPU. Now it waits in slices."""
    outsider = reaper.start(actor_command("sleeper"))
    outsider.read_json()
    # Joined behind pgjob's back (as by inheritance): no held handle.
    _jobobject.AssignProcessToJobObject(job._impl.handle, outsider.popen._handle)

    def access_denied(access, inherit, pid):
        raise PermissionError(13, "Access is denied", None, _jobobject.ERROR_ACCESS_DENIED)
    lists = []
    real_list = _jobobject.QueryJobProcessIdList

    def counting_list(handle):
        lists.append(time.monotonic())
        return real_list(handle)
    monkeypatch.setattr(_winapi, "OpenProcess", access_denied)
    monkeypatch.setattr(_jobobject, "QueryJobProcessIdList", counting_list)
    assert job.wait(1.0) is False
    monkeypatch.undo()
    # Job.wait() borrows the backend in 0.25 s slices (so close()/detach() from another thread
    # take effect promptly), and each slice lists the job when it starts and when it ends: at
    # most 8 lists in 1 s, plus one. The spin this guards against listed thousands of times.
    assert len(lists) <= 9, f"wait() re-listed the job {len(lists)} times in 1 s"


def test_wait_returns_when_a_held_member_exits(job, reaper, monkeypatch):
    """The held handle is what wait() blocks on: it works though OpenProcess would fail."""
    member = reaper.start(actor_command("sleeper"), spawn=job.popen)
    member.read_json()

    def access_denied(access, inherit, pid):
        raise PermissionError(13, "Access is denied", None, _jobobject.ERROR_ACCESS_DENIED)
    monkeypatch.setattr(_winapi, "OpenProcess", access_denied)
    assert job.wait(0.2) is False
    member.popen.kill()
    start = time.monotonic()
    assert job.wait(10) is True
    assert time.monotonic() - start < 5


def post(job, message, value):
    """Put a job message on the job's port with its completion key, as the kernel would."""
    import ctypes
    from ctypes import wintypes
    post_status = ctypes.windll.kernel32.PostQueuedCompletionStatus
    post_status.argtypes = [wintypes.HANDLE, wintypes.DWORD, ctypes.c_size_t, ctypes.c_void_p]
    post_status.restype = wintypes.BOOL
    assert post_status(job._impl.port, message, job._impl._key, value)


def next_kernel_event(job):
    for event in job.events(timeout=10):
        return event
    raise AssertionError("no event")


def test_job_memory_limit_message_carries_the_pid(job):
    """JOB_OBJECT_MSG_JOB_MEMORY_LIMIT's value is the pid of the process that hit the limit
    (JOBOBJECT_ASSOCIATE_COMPLETION_PORT). Posted on the port: Wine never enforces it."""
    post(job, _jobobject.JOB_OBJECT_MSG_JOB_MEMORY_LIMIT, 4242)
    event = next_kernel_event(job)
    assert event.kind is EventKind.JOB_MEMORY_LIMIT and event.pid == 4242


def test_notification_limit_message_is_an_event(job):
    post(job, _jobobject.JOB_OBJECT_MSG_NOTIFICATION_LIMIT, 4244)
    event = next_kernel_event(job)
    assert event.kind is EventKind.NOTIFICATION_LIMIT and event.pid == 4244
    assert event.os_message == _jobobject.JOB_OBJECT_MSG_NOTIFICATION_LIMIT


def test_job_wide_messages_carry_no_pid(job):
    post(job, _jobobject.JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO, 0)
    event = next_kernel_event(job)
    assert event.kind is EventKind.ACTIVE_PROCESS_ZERO and event.pid is None


@pytest.mark.parametrize("field", ["memory_limit", "process_memory_limit"])
def test_memory_limit_beyond_size_t_is_refused(monkeypatch, field):
    """32-bit Windows: SIZE_T is 32 bits, and 5 GiB used to be truncated to 1 GiB without a
    word. Simulated here (this Python is 64-bit) by SIZE_T's range."""
    monkeypatch.setattr(_windows, "_SIZE_MAX", 2**32 - 1)
    handles = _jobobject.GetProcessHandleCount(_winapi.GetCurrentProcess())
    with pytest.raises(OverflowError):
        pgjob.Job(**{field: 5 << 30})
    assert _jobobject.GetProcessHandleCount(_winapi.GetCurrentProcess()) <= handles
    with pgjob.Job(**{field: 3 << 30}) as job:  # fits: accepted
        assert job.mechanism == "job_object"


def test_c_layer_refuses_what_size_t_cannot_hold():
    """The C wrapper checks too; on 64-bit Windows any 64-bit value fits."""
    if sys.maxsize > 2**32:
        with pgjob.Job() as job:
            _jobobject.SetJobExtendedLimits(job._impl.handle, 0, 2**40, 2**40, 0)


@pytest.mark.parametrize("prefix", ["Global\\", "Local\\"])
def test_named_job_in_a_namespace(prefix):
    name = f"{prefix}pgjob-test-{os.getpid()}"
    with pgjob.Job(name=name) as job:
        assert job.mechanism == "job_object"
        with pytest.raises(pgjob.JobError) as info:
            pgjob.Job(name=name)
        assert info.value.winerror == _jobobject.ERROR_ALREADY_EXISTS


def test_local_prefix_is_the_sessions_own_namespace():
    """A name without prefix lives in the session namespace, which is what Local\\ names."""
    base = f"pgjob-local-{os.getpid()}"
    with pgjob.Job(name="Local\\" + base):
        with pytest.raises(pgjob.JobError) as info:
            pgjob.Job(name=base)
        assert info.value.winerror == _jobobject.ERROR_ALREADY_EXISTS


@pytest.mark.parametrize("name", ["Global\\", "Local\\a\\b", "Session\\1\\x", "a\\b",
                                  "\\Global\\x", "global\\x", "Global\\\0"])
def test_other_backslashes_are_refused(name):
    with pytest.raises(ValueError):
        pgjob.Job(name=name)
