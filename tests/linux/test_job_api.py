"""The Job API on Linux: choosing and forcing a mechanism, the logged fallback when the kernel
refuses namespaces (simulated with the real errno), limits and assign() refused loudly, and
pids/contains/terminate/stats/events/wait over whole trees."""
import errno
import logging
import os
import signal
import subprocess
import sys

import pytest

import pgjob
from pgjob import _jobobject, _linux_helpers
from conftest import alive
from proc_helpers import wait_until

pytestmark = pytest.mark.linux


CLONE_THREAD = 0x00010000


@pytest.fixture
def no_namespaces(monkeypatch):
    """The kernel refusing the clone of a namespace's init, for real: the real start_init,
    asked for CLONE_THREAD without CLONE_SIGHAND, which copy_process() refuses with EINVAL
    before anything is made (as user.max_pid_namespaces=0 refuses with ENOSPC, or seccomp
    with EPERM). What pgjob makes of it is what its C layer marked."""
    real = _jobobject.start_init

    def refuse(**kwargs):  # pgjob passes every argument by name
        return real(**dict(kwargs, clone_flags=kwargs["clone_flags"] | CLONE_THREAD))

    monkeypatch.setattr(_jobobject, "start_init", refuse)
    monkeypatch.setattr(_linux_helpers, "_NAMESPACE_FLAGS", {})


def _tree(job):
    """A member with grandchildren, returned once every process has started. In a PID
    namespace one of them is a setsid'd double fork; "pdeathsig" finds members by parent
    links, which such a daemon has cut (docs/linux.md), so there it is a plain subshell."""
    daemon = "setsid sh -c 'sleep 1000 & echo d' &" if job.mechanism == "pid_namespace" else \
        "sh -c 'sleep 1000 & echo d; wait' &"
    p = job.popen(["sh", "-c", "sleep 1000 & " + daemon + " wait"], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"d\n"
    # Settled: the daemon's intermediate sh has exited. sh, sleep, (sh,) sleep; pgjob's own
    # init is not a member.
    expected = 3 if job.mechanism == "pid_namespace" else 4
    assert wait_until(lambda: len(job.pids()) == expected, 5), job.pids()
    return p


def test_default_mechanism_is_pid_namespace(job_factory):
    assert job_factory().mechanism == "pid_namespace"


@pytest.mark.parametrize("mechanism", ["pid_namespace", "pdeathsig", "none"])
def test_forced_mechanism(job_factory, mechanism):
    job = job_factory(mechanism=mechanism)
    assert job.mechanism == mechanism
    assert job.popen(["true"]).wait(10) == 0


def test_job_object_mechanism_is_refused(job_factory, caplog):
    with pytest.raises(pgjob.UnsupportedError):
        job_factory(mechanism="job_object", on_unavailable="raise")
    # A named mechanism is never downgraded, whatever on_unavailable says (docs/api.md).
    with pytest.raises(pgjob.UnsupportedError):
        job_factory(mechanism="job_object")


def test_fallback_logs_what_failed_and_what_remains(job_factory, no_namespaces, caplog):
    with caplog.at_level(logging.WARNING, logger="pgjob"):
        job = job_factory()
    assert job.mechanism == "pdeathsig"
    message = caplog.records[-1].getMessage()
    assert "clone failed: Invalid argument" in message and "errno 22" in message
    assert "falling back to mechanism=pdeathsig" in message and "survive" in message
    p = job.popen(["sh", "-c", "echo $$"], stdout=subprocess.PIPE)
    assert int(p.communicate(timeout=10)[0]) == p.pid  # no namespace: real pids


def test_fallback_refused_with_on_unavailable_raise(job_factory, no_namespaces):
    with pytest.raises(pgjob.UnsupportedError) as info:
        job_factory(on_unavailable="raise")
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value.__cause__, OSError)


def test_forced_pid_namespace_unavailable_is_not_silently_downgraded(job_factory, no_namespaces, caplog):
    # A named mechanism is never downgraded, whatever on_unavailable says (docs/api.md).
    with pytest.raises(pgjob.UnsupportedError, match="clone failed"):
        job_factory(mechanism="pid_namespace")


def test_limits_get_a_cgroup_or_are_refused_not_ignored(job_factory):
    # Even with on_unavailable="log": a job with limits is "cgroup" or nothing.
    for limit, controller in (({"memory_limit": 1 << 30}, "memory"),
                              ({"process_limit": 10}, "pids"), ({"cpu_rate": 50}, "cpu")):
        try:
            job = job_factory(on_unavailable="log", **limit)
        except pgjob.UnsupportedError as exc:
            assert "cgroup" in str(exc), exc
        else:
            assert job.mechanism == "cgroup"
            assert controller in open(os.path.join(job._impl.cgroup_path,
                                                   "cgroup.controllers")).read().split()


def test_assign_running_process_is_unsupported(job_factory):
    job = job_factory()
    p = subprocess.Popen(["sleep", "1000"])
    try:
        with pytest.raises(pgjob.UnsupportedError, match="job.popen"):
            job.assign(p)
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("mechanism", ["pid_namespace", "pdeathsig"])
def test_pids_contains_terminate_wait(job_factory, mechanism):
    job = job_factory(mechanism=mechanism)
    p = _tree(job)
    pids = job.pids()
    assert p.pid in pids and len(pids) == (3 if mechanism == "pid_namespace" else 4)
    assert all(job.contains(pid) for pid in pids)
    assert not job.contains(os.getpid())
    assert job.stats().active_processes == len(pids)
    assert not job.wait(timeout=0.05)
    job.terminate()
    assert p.wait(10) == -signal.SIGKILL
    assert job.wait(timeout=10)
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), 5)
    assert job.pids() == [] and job.stats().active_processes == 0


def test_close_kills_the_whole_tree_including_setsid_daemons(job_factory):
    job = job_factory()
    p = _tree(job)
    pids = job.pids()
    job.close()
    assert p.wait(10) == -signal.SIGKILL
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), 5)
    with pytest.raises(pgjob.JobClosedError):
        job.pids()


def test_kill_on_close_false_leaves_members_running(job_factory):
    job = job_factory(kill_on_close=False)
    p = job.popen(["sleep", "1000"])
    job.close()
    try:
        assert p.poll() is None
    finally:
        p.kill()
        assert p.wait(10) == -signal.SIGKILL


def _daemon(job):
    """A program that starts a setsid'd daemon and exits; the daemon's host pid."""
    p = job.popen(["sh", "-c", "setsid sleep 1000 & echo $!"], stdout=subprocess.PIPE)
    inner = int(p.stdout.readline())
    assert p.wait(10) == 0
    p.stdout.close()
    assert wait_until(lambda: len(job.pids()) == 1, 5), job.pids()
    daemon = job.pids()[0]
    assert _inner_pid(daemon) == inner
    return daemon


def _inner_pid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([line for line in f if line.startswith("NSpid:")][0].split()[-1])


def test_daemon_outlives_the_program_that_started_it_until_close(job_factory, tracker):
    """As in a Windows job: the namespace lives as long as the job, not as its first program."""
    job = job_factory()
    daemon = tracker.track(_daemon(job))
    assert not job.wait(timeout=0.2)
    assert job.contains(daemon[0]) and alive(daemon)
    job.close()
    assert wait_until(lambda: not alive(daemon), 5)


def test_terminate_kills_the_daemon_and_the_job_stays_usable(job_factory, tracker):
    job = job_factory()
    daemon = tracker.track(_daemon(job))
    job.terminate()
    assert wait_until(lambda: not alive(daemon), 5)
    assert job.wait(timeout=5) and job.pids() == []
    assert job.popen(["sh", "-c", "exit 6"]).wait(10) == 6


def test_kill_on_close_false_daemon_outlives_close_then_the_init_goes(job_factory, tracker):
    """close() without kill_on_close detaches: the init stays while anyone is in the
    namespace, then exits by itself (it is our child, so it shows up as one)."""
    job = job_factory(kill_on_close=False)
    daemon = tracker.track(_daemon(job))
    init_pid = job._impl._init.pid
    init = tracker.track(init_pid)
    job.close()
    assert not wait_until(lambda: not alive(daemon), 0.3)
    os.kill(daemon[0], signal.SIGKILL)
    assert wait_until(lambda: not alive(init), 5), "the detached init did not exit"


def test_events_new_exit_and_zero_waits_for_the_daemon(job_factory, tracker):
    job = job_factory()
    daemon = tracker.track(_daemon(job))
    kinds = [e.kind for e in job.events(timeout=0.3)]
    assert kinds == [pgjob.EventKind.NEW_PROCESS, pgjob.EventKind.EXIT_PROCESS]
    os.kill(daemon[0], signal.SIGKILL)
    assert [e.kind for e in job.events(timeout=5)][:1] == [pgjob.EventKind.ACTIVE_PROCESS_ZERO]


def test_events_new_exit_and_zero(job_factory):
    job = job_factory()
    p = job.popen(["sh", "-c", "exit 3"])
    events = []
    for event in job.events(timeout=10):
        events.append(event)
        if event.kind is pgjob.EventKind.ACTIVE_PROCESS_ZERO:
            break
    kinds = [e.kind for e in events]
    assert kinds == [pgjob.EventKind.NEW_PROCESS, pgjob.EventKind.EXIT_PROCESS,
                     pgjob.EventKind.ACTIVE_PROCESS_ZERO]
    assert events[0].pid == p.pid == events[1].pid
    assert p.wait(10) == 3
    assert list(job.events(timeout=0.05)) == []


def test_unread_events_are_bounded_the_oldest_dropped_and_the_drop_logged(
        job_factory, monkeypatch, caplog):
    """A job nobody reads events from must not grow by two entries per process it starts for
    its whole life: the queue keeps the newest MAX_QUEUED_EVENTS, and the next read says how
    many were dropped."""
    from pgjob import _linux
    monkeypatch.setattr(_linux, "MAX_QUEUED_EVENTS", 6)
    job = job_factory()
    pids = []
    for _ in range(6):
        p = job.popen(["true"])
        assert p.wait(10) == 0
        pids.append(p.pid)
    # Queued: NEW 1, then at each later spawn the EXIT of the one before and its own NEW
    # (11), then at the first read EXIT 6 and ACTIVE_PROCESS_ZERO: 13, of which 6 are kept.
    with caplog.at_level(logging.WARNING, logger="pgjob"):
        events = list(job.events(timeout=0.3))
    new, exit_, zero = (pgjob.EventKind.NEW_PROCESS, pgjob.EventKind.EXIT_PROCESS,
                        pgjob.EventKind.ACTIVE_PROCESS_ZERO)
    assert [(e.kind, e.pid) for e in events] == [
        (exit_, pids[3]), (new, pids[4]), (exit_, pids[4]), (new, pids[5]), (exit_, pids[5]),
        (zero, None)]
    dropped = [r.getMessage() for r in caplog.records if "events were dropped" in r.getMessage()]
    assert dropped and dropped[0].startswith("7 job events were dropped"), dropped
    p = job.popen(["true"])  # and the job goes on: new events are queued and read again
    p.wait(10)
    assert [e.kind for e in job.events(timeout=0.3)][:2] == [new, exit_]


def test_stats_cpu_time_of_members(job_factory):
    job = job_factory()
    p = job.popen(["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done; sleep 1000"],
                  stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"done\n"
    stats = job.stats()
    assert stats.user_time + stats.kernel_time > 0
    assert stats.peak_job_memory is None and stats.total_processes is None
    p.kill()
    p.wait(10)


def test_in_job():
    assert pgjob.in_job() is False
    with pgjob.Job() as job:
        p = job.popen(["sleep", "1000"])
        assert pgjob.in_job(p.pid) is True
        p.kill()
        p.wait(10)
    plain = subprocess.Popen(["sleep", "1000"])
    try:
        assert pgjob.in_job(plain.pid) is False
    finally:
        plain.kill()
        plain.wait()
    with pytest.raises(pgjob.ProcessExitedError):
        pgjob.in_job(plain.pid)


def test_detach_leaves_members_running_and_the_init_drains(job_factory, tracker):
    """detach() of a kill-on-close job: the members keep running (the init takes the owner's
    close of the control socket, which follows the DETACH, for what it is), and the init
    leaves once the namespace is empty."""
    job = job_factory()
    member = job.popen(["sleep", "60"])
    proc = tracker.track(member.pid)
    init = tracker.track(job._impl._init.pid)
    assert job.detach() is None and job.closed
    assert not wait_until(lambda: not alive(proc), 0.5), "detach() killed the member"
    assert alive(init)
    member.kill()
    member.wait(10)
    assert wait_until(lambda: not alive(init), 5), "the detached init did not leave"


_DETACH_THEN_DIE = r"""
import os, signal, subprocess, sys
import pgjob
job = pgjob.Job(on_unavailable="raise")
member = job.popen(["sleep", "60"], stdout=subprocess.DEVNULL)
init = job._impl._init.pid
print(member.pid, init, flush=True)
if sys.argv[1] == "late":
    # An init not scheduled yet when the owner dies (a loaded machine), made certain.
    os.kill(init, signal.SIGSTOP)
job.detach()
# At once: detach() returns only once the init has said it drains (its PR_SET_PDEATHSIG off).
# Before that answer, an owner dying microseconds after detach() took the namespace down.
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("init", ["running", "late"])
def test_detached_members_outlive_the_owner(tracker, init):
    """After detach() the members outlive the owner's death too (as a Windows job's do once
    its handle is handed on and kept): SIGKILL the owner the moment detach() returns, also
    when the init had not run since the DETACH was sent."""
    from conftest import SRC
    owner = subprocess.run([sys.executable, "-c", _DETACH_THEN_DIE, init],
                           stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=SRC),
                           timeout=60)
    assert owner.returncode == -signal.SIGKILL, owner
    member_pid, init_pid = map(int, owner.stdout.split())
    member, init = tracker.track(member_pid), tracker.track(init_pid)
    assert not wait_until(lambda: not alive(member), 0.5), "the member died with the owner"
    os.kill(member_pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(init), 10), "the detached init did not leave"
