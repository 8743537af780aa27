"""Job operations on real members: events, pids, stats, contains, limits, wait, terminate."""
import os
import subprocess
import sys

import pytest

import pgjob
from pgjob import EventKind, _errors, _jobobject
from conftest import WINE_VERSION, actor_command, alive, wait_gone

ACCESS_VIOLATION = 0xC0000005


def test_member_crash_leaves_owner_and_siblings_alone_and_is_reported(job, reaper):
    sibling = reaper.start(actor_command("sleeper"), spawn=job.popen)
    sibling.read_json()
    crasher = reaper.start(actor_command("crasher"), spawn=job.popen)
    crasher.read_json()
    assert crasher.popen.wait(60) == ACCESS_VIOLATION
    seen = []
    for event in job.events(timeout=10):
        seen.append(event)
        if event.kind is EventKind.ABNORMAL_EXIT_PROCESS and event.pid == crasher.pid:
            break
    (abnormal,) = [e for e in seen if e.kind is EventKind.ABNORMAL_EXIT_PROCESS]
    assert abnormal.pid == crasher.pid and abnormal.exit_code == ACCESS_VIOLATION
    if WINE_VERSION is None:  # wineserver posts every exit as EXIT_PROCESS
        assert abnormal.os_message == _jobobject.JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS
    assert any(e.kind is EventKind.NEW_PROCESS and e.pid == crasher.pid for e in seen), seen
    assert alive(sibling.pid) and job.contains(sibling.popen)
    assert alive(os.getpid())


def test_pids_lists_more_than_fifty_members(job, reaper):
    # pywin32's list call spins forever past ~50 members (pywin32#1242).
    actors = [reaper.start(actor_command("sleeper"), spawn=job.popen) for _ in range(60)]
    expected = sorted(a.read_json()["pid"] for a in actors)
    assert job.pids() == expected
    stats = job.stats()
    assert stats.active_processes == 60
    assert stats.total_processes == 60
    job.terminate(7)
    assert wait_gone(expected) == []
    assert all(a.popen.wait(10) == 7 for a in actors)
    assert job.wait(10) is True
    assert job.pids() == []
    assert job.stats().active_processes == 0


@pytest.mark.skipif(WINE_VERSION is not None,
                    reason=f"Wine {WINE_VERSION}: job accounting fills only total/active "
                           "process counts (TotalTerminatedProcesses and times stay 0)")
def test_accounting_counts_terminated_members(job, reaper):
    actors = [reaper.start(actor_command("sleeper"), spawn=job.popen) for _ in range(3)]
    for a in actors:
        a.read_json()
    job.terminate(2)
    assert job.wait(10) is True
    stats = job.stats()
    assert stats.total_processes == 3 and stats.terminated_processes == 3
    assert stats.user_time >= 0 and stats.read_bytes is not None


def test_contains_and_in_job(job, reaper):
    member = reaper.start(actor_command("sleeper"), spawn=job.popen)
    outsider = reaper.start(actor_command("sleeper"))
    member.read_json(), outsider.read_json()
    assert job.contains(member.popen) and job.contains(member.pid)
    assert not job.contains(outsider.pid)
    assert pgjob.in_job(member.pid) is True
    assert pgjob.in_job(outsider.pid) is False
    assert pgjob.in_job() is False  # the test process itself is in no job


def test_assign_running_process_by_pid_popen_and_handle(job, reaper):
    actors = [reaper.start(actor_command("sleeper")) for _ in range(3)]
    for a in actors:
        a.read_json()
    job.assign(actors[0].pid)
    job.assign(actors[1].popen)
    job.assign(pgjob.ProcessHandle(actors[2].popen._handle))
    assert job.pids() == sorted(a.pid for a in actors)


def test_wait_times_out_while_members_live_then_returns_when_they_exit(job, reaper):
    member = reaper.start(actor_command("sleeper"), spawn=job.popen)
    member.read_json()
    assert job.wait(0.2) is False
    member.popen.kill()
    assert job.wait(10) is True


@pytest.mark.skipif(WINE_VERSION is not None,
                    reason=f"Wine {WINE_VERSION}: SetInformationJobObject passes only LimitFlags "
                           "to wineserver, so ActiveProcessLimit is stored but never enforced")
def test_process_limit_refuses_the_next_member(reaper):
    with pgjob.Job(process_limit=1) as job:
        first = reaper.start(actor_command("sleeper"), spawn=job.popen)
        first.read_json()
        with pytest.raises(pgjob.LimitExceededError) as info:
            job.popen([sys.executable, "-c", "pass"])
        assert isinstance(info.value.__cause__, OSError)
        assert job.pids() == [first.pid]


def test_memory_limits_are_accepted_and_members_run():
    with pgjob.Job(memory_limit=512 << 20, process_memory_limit=256 << 20) as job:
        p = job.popen([sys.executable, "-c", "print('ok')"], stdout=subprocess.PIPE, text=True)
        assert p.communicate(timeout=60)[0] == "ok\n"


def test_cpu_rate_is_set_or_refused_as_unsupported():
    """CPU-rate control exists since Windows 8. Where the OS lacks the information class
    (Windows 7, Wine 8) the job must refuse with UnsupportedError, never run unlimited."""
    try:
        job = pgjob.Job(cpu_rate=50)
    except pgjob.UnsupportedError as exc:
        assert WINE_VERSION is not None, "real Windows 8+ must accept CPU-rate control"
        assert exc.__cause__.winerror == _jobobject.ERROR_INVALID_PARAMETER
        return
    with job:
        assert job.mechanism == "job_object"
        p = job.popen([sys.executable, "-c", "pass"])
        assert p.wait(60) == 0


def test_a_job_with_limits_never_falls_back_to_none(monkeypatch):
    def refuse(*args, **kwargs):
        exc = OSError(0, "simulated", None, _jobobject.ERROR_ACCESS_DENIED)
        exc.syscall = "CreateJobObjectW"
        raise _errors.mark(exc, pgjob.UnsupportedError)  # as win_job.c marks it
    monkeypatch.setattr(_jobobject, "CreateJobObject", refuse)
    with pytest.raises(pgjob.UnsupportedError):
        pgjob.Job(memory_limit=1 << 30)  # on_unavailable="log" does not apply to limits


@pytest.mark.skipif(WINE_VERSION is not None,
                    reason=f"Wine {WINE_VERSION}: QueryInformationJobObject returns LimitFlags=0")
def test_limits_read_back():
    with pgjob.Job(memory_limit=512 << 20, process_limit=5, breakaway=True) as job:
        flags, process_mem, job_mem, active, _, _ = _jobobject.QueryJobExtendedLimits(
            job._impl.handle)
        assert flags & _jobobject.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        assert flags & _jobobject.JOB_OBJECT_LIMIT_BREAKAWAY_OK
        assert job_mem == 512 << 20 and active == 5


def test_named_job_refuses_to_open_an_existing_one():
    name = f"pgjob-test-{os.getpid()}"
    with pgjob.Job(name=name):
        with pytest.raises(pgjob.JobError) as info:
            pgjob.Job(name=name)
        assert info.value.winerror == _jobobject.ERROR_ALREADY_EXISTS


def start_owner_in_job(reaper, then):
    """Start a Python owner that puts itself in a kill-on-close job, starts a sleeper
    member (its pid in `pid`, its Popen in `child`), then runs the code `then`."""
    script = (
        "import json, subprocess, sys, pgjob\n"
        "from pgjob import _jobobject\n"
        "job = pgjob.Job()\n"
        "job.assign_current()\n"
        f"child = subprocess.Popen({actor_command('sleeper')!r}, stdout=subprocess.PIPE, text=True)\n"
        "pid = json.loads(child.stdout.readline())['pid']\n"
        f"{then}"
        "sys.stdin.readline()\n"
    )
    return reaper.start([sys.executable, "-c", script])


def test_owner_in_job_terminate_never_kills_a_reused_pid(reaper):
    """An owner inside its own job can't TerminateJobObject (it would die too), so
    terminate() kills the other members one by one, by pid. A pid from the list may name
    another process by then (Windows reuses pids): that one must live. The reuse is
    simulated by listing a stranger's pid, since the OS won't reuse a pid on demand."""
    stranger = reaper.start(actor_command("sleeper"))
    stranger_pid = stranger.read_json()["pid"]
    owner = start_owner_in_job(reaper, (
        "real = _jobobject.QueryJobProcessIdList\n"
        f"_jobobject.QueryJobProcessIdList = lambda h: real(h) + [{stranger_pid}]\n"
        "job.terminate(5)\n"
        "print(json.dumps({'pid': pid, 'code': child.wait(30)}), flush=True)\n"))
    result = owner.read_json()
    reaper.track(result["pid"])
    assert result["code"] == 5  # the real member was terminated
    assert alive(owner.pid)  # the owner spared itself
    assert alive(stranger_pid), "terminate() killed a process outside the job"


def test_owner_in_job_close_keeps_the_process_alive_and_protected(reaper):
    """The trap: closing the last handle of a kill-on-close job we are in would kill us."""
    owner = start_owner_in_job(reaper, (
        "job.close()\n"
        "print(json.dumps({'pid': pid, 'closed': job.closed}), flush=True)\n"))
    ready = owner.read_json()
    reaper.track(ready["pid"])
    assert ready["closed"] is True
    assert alive(owner.pid) and alive(ready["pid"])
    owner.popen.kill()
    assert wait_gone([ready["pid"]]) == []
