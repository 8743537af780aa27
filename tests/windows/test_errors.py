"""Every documented exception, raised for real where the OS can be made to, otherwise by
patching the C function with an OSError carrying the real winerror (and the meaning that C
function marks it with, where it marks one)."""
import _winapi
import logging
import subprocess
import sys

import pytest

import pgjob
from pgjob import _errors, _jobobject, _job
from conftest import actor_command, alive, wait_gone

ERROR_ACCESS_DENIED = _jobobject.ERROR_ACCESS_DENIED
NO_SUCH_PID = 0xFFFFFFF0  # pids are multiples of 4 and far smaller


def win_oserror(winerror, syscall, meaning=None):
    """An OSError as common_errors.c makes it: the code, .syscall and, where the C function
    marks one for that code, its meaning."""
    exc = OSError(0, f"{syscall} failed: simulated", None, winerror)
    exc.syscall = syscall
    if meaning is not None:
        _errors.mark(exc, meaning)
    return exc


@pytest.fixture
def fresh_protection(monkeypatch):
    """protect_children() remembers its job per process; give each test a clean slate."""
    monkeypatch.setattr(_job, "_PROTECTION", None)


def patch_c(monkeypatch, name, winerror, meaning=None):
    def fail(*args, **kwargs):
        raise win_oserror(winerror, name, meaning)
    monkeypatch.setattr(_jobobject, name, fail)


def refuse_assignments(monkeypatch):
    """AssignProcessToJobObject refused by the kernel, for real: the real C function is given
    a copy of the process handle with SYNCHRONIZE only, without the PROCESS_SET_QUOTA and
    PROCESS_TERMINATE rights it needs, and Windows answers ERROR_ACCESS_DENIED, the code a
    job that forbids nesting gives. What pgjob makes of it is what win_job.c marked."""
    real = _jobobject.AssignProcessToJobObject
    me = _winapi.GetCurrentProcess()

    def assign(job, process_handle):
        weak = _winapi.DuplicateHandle(me, process_handle, me, 0x00100000, False,  # SYNCHRONIZE
                                       0)
        try:
            return real(job, weak)
        finally:
            _winapi.CloseHandle(weak)
    monkeypatch.setattr(_jobobject, "AssignProcessToJobObject", assign)


# -- JobClosedError ------------------------------------------------------------------------

@pytest.mark.parametrize("use", [
    lambda j: j.popen([sys.executable, "-c", "pass"]),
    lambda j: j.assign(1234),
    lambda j: j.assign_current(),
    lambda j: j.contains(1234),
    lambda j: j.pids(),
    lambda j: j.terminate(),
    lambda j: j.stats(),
    lambda j: j.wait(0),
    lambda j: next(j.events(0)),
    lambda j: j.detach(),
    lambda j: j.__enter__(),
    lambda j: pgjob.Popen([sys.executable, "-c", "pass"], job=j),
], ids=["popen", "assign", "assign_current", "contains", "pids", "terminate", "stats", "wait",
        "events", "detach", "enter", "Popen"])
def test_use_after_close_raises_job_closed(use):
    job = pgjob.Job()
    job.close()
    job.close()  # idempotent
    with pytest.raises(pgjob.JobClosedError) as info:
        use(job)
    assert isinstance(info.value, OSError) and isinstance(info.value, pgjob.JobError)


def test_detach_hands_over_the_handle(reaper):
    job = pgjob.Job()
    actor = reaper.start(actor_command("sleeper"), spawn=job.popen)
    actor.read_json()
    handle = job.detach()
    assert job.closed and isinstance(handle, int)
    del job  # the finalizer must not close a detached handle
    assert alive(actor.pid)
    _jobobject.CloseHandle(handle)  # last handle: kill-on-close fires now
    assert wait_gone([actor.pid]) == []


# -- AlreadyInJobError and the protect_children fallback ----------------------------------

def test_assign_current_refused_is_already_in_job(monkeypatch):
    refuse_assignments(monkeypatch)
    with pgjob.Job() as job:
        with pytest.raises(pgjob.AlreadyInJobError) as info:
            job.assign_current()
    err = info.value
    assert err.winerror == ERROR_ACCESS_DENIED
    assert isinstance(err.__cause__, OSError) and err.__cause__.winerror == ERROR_ACCESS_DENIED
    assert "AssignProcessToJobObject" in str(err) and "simulated" not in str(err)


def test_protect_children_logs_and_continues_when_refused(monkeypatch, caplog, fresh_protection):
    refuse_assignments(monkeypatch)
    caplog.set_level(logging.INFO, logger="pgjob")
    job = pgjob.protect_children()
    assert job.mechanism == "none"
    assert pgjob.protect_children() is job  # one protection per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "error code 5" in warnings[0] and "orphan protection is off" in warnings[0]
    # The unprotected job still runs and tracks what it starts.
    p = job.popen([sys.executable, "-c", "pass"])
    assert p.wait(60) == 0


def test_protect_children_raise_mode(monkeypatch, fresh_protection):
    refuse_assignments(monkeypatch)
    with pytest.raises(pgjob.AlreadyInJobError):
        pgjob.protect_children(on_unavailable="raise")
    assert _job._PROTECTION is None


def test_nesting_really_refused_is_already_in_job(reaper):
    """The kernel's nesting rule: a process already in job A may only join a job that is
    empty or already nested under A. Joining a busy, unrelated job is refused for real."""
    with pgjob.Job() as a, pgjob.Job() as busy:
        resident = reaper.start(actor_command("sleeper"), spawn=busy.popen)
        in_a = reaper.start(actor_command("sleeper"), spawn=a.popen)
        resident.read_json(), in_a.read_json()
        with pytest.raises(pgjob.AlreadyInJobError) as info:
            busy.assign(in_a.popen)
        assert info.value.winerror == ERROR_ACCESS_DENIED
        assert info.value.__cause__.syscall == "AssignProcessToJobObject"
        assert busy.pids() == [resident.pid] and a.pids() == [in_a.pid]


def test_owner_inside_another_job_really_nested(reaper, job):
    """A real owner started inside our job calls protect_children(): Windows 8+ nests the
    jobs (protection on); where nesting is refused, it must log and continue unprotected."""
    script = (
        "import json, logging, io, pgjob\n"
        "log = io.StringIO(); logging.basicConfig(stream=log, level=logging.INFO)\n"
        "j = pgjob.protect_children()\n"
        "print(json.dumps({'mechanism': j.mechanism, 'log': log.getvalue()}), flush=True)\n"
    )
    owner = reaper.start([sys.executable, "-c", script], spawn=job.popen)
    ready = owner.read_json()
    if ready["mechanism"] == "none":
        assert "error code 5" in ready["log"] and "orphan protection is off" in ready["log"]
    else:
        assert ready["mechanism"] == "job_object"
        assert "orphan protection enabled" in ready["log"]
    assert owner.popen.wait(60) == 0


# -- breakaway -----------------------------------------------------------------------------

BREAKAWAY_SCRIPT = """
import json, subprocess, sys, pgjob
job = pgjob.protect_children(breakaway={breakaway})
try:
    child = subprocess.Popen({cmd!r}, stdout=subprocess.PIPE, text=True,
                             creationflags=subprocess.CREATE_BREAKAWAY_FROM_JOB)
except PermissionError as exc:
    print(json.dumps({{"mechanism": job.mechanism, "refused": exc.winerror}}), flush=True)
else:
    pid = json.loads(child.stdout.readline())["pid"]
    print(json.dumps({{"mechanism": job.mechanism, "pid": pid, "in_job": pgjob.in_job(pid)}}), flush=True)
sys.stdin.readline()
"""


def test_breakaway_is_refused_by_default(reaper):
    owner = reaper.start([sys.executable, "-c", BREAKAWAY_SCRIPT.format(
        breakaway=False, cmd=actor_command("sleeper"))])
    ready = owner.read_json()
    assert ready == {"mechanism": "job_object", "refused": ERROR_ACCESS_DENIED}


def test_breakaway_allowed_child_leaves_the_job_and_survives(reaper):
    owner = reaper.start([sys.executable, "-c", BREAKAWAY_SCRIPT.format(
        breakaway=True, cmd=actor_command("sleeper"))])
    ready = owner.read_json()
    reaper.track(ready.get("pid"))
    assert ready["mechanism"] == "job_object" and ready["in_job"] is False
    owner.popen.kill()
    owner.popen.wait(30)
    assert alive(ready["pid"])  # broke away: not killed with the owner


# -- ProcessExitedError --------------------------------------------------------------------

def test_assign_exited_process(job):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(60)
    with pytest.raises(pgjob.ProcessExitedError):
        job.assign(p)
    with pytest.raises(pgjob.ProcessExitedError):
        job.assign(NO_SUCH_PID)
    with pytest.raises(pgjob.ProcessExitedError):
        pgjob.in_job(NO_SUCH_PID)


def test_assign_race_with_exit_is_process_exited(monkeypatch, job):
    """AssignProcessToJobObject says ACCESS_DENIED for a process that just exited; pgjob
    checks the process and reports the benign race as ProcessExitedError."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(60)
    handle = pgjob.ProcessHandle(p._handle)
    refuse_assignments(monkeypatch)
    with pytest.raises(pgjob.ProcessExitedError) as info:
        job.assign(handle)
    assert info.value.__cause__.winerror == ERROR_ACCESS_DENIED


# -- UnsupportedError and the generic JobError ---------------------------------------------

def test_linux_mechanism_on_windows():
    with pytest.raises(pgjob.UnsupportedError):
        pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
    # A named mechanism is never downgraded, whatever on_unavailable says (docs/api.md).
    with pytest.raises(pgjob.UnsupportedError):
        pgjob.Job(mechanism="pid_namespace")  # default on_unavailable="log"


@pytest.mark.parametrize("winerror", [_jobobject.ERROR_NOT_SUPPORTED,
                                      _jobobject.ERROR_CALL_NOT_IMPLEMENTED])
def test_not_supported_is_unsupported(monkeypatch, winerror):
    patch_c(monkeypatch, "QueryJobAccounting", winerror)
    with pgjob.Job() as job:
        with pytest.raises(pgjob.UnsupportedError):
            job.stats()


def test_other_codes_are_job_error_keeping_winerror(monkeypatch):
    patch_c(monkeypatch, "TerminateJobObject", 1234)
    with pgjob.Job() as job:
        with pytest.raises(pgjob.JobError) as info:
            job.terminate()
    assert type(info.value) is pgjob.JobError and info.value.winerror == 1234


def test_create_failure_falls_back_or_raises(monkeypatch, caplog):
    patch_c(monkeypatch, "CreateJobObject", ERROR_ACCESS_DENIED, pgjob.UnsupportedError)
    with pytest.raises(pgjob.UnsupportedError) as info:
        pgjob.Job(on_unavailable="raise")
    assert info.value.winerror == ERROR_ACCESS_DENIED
    caplog.set_level(logging.WARNING, logger="pgjob")
    with pgjob.Job() as job:
        assert job.mechanism == "none"
    assert "orphan protection is off" in caplog.text


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc", [
    (lambda j: j.contains("12"), TypeError),
    (lambda j: j.contains(-1), ValueError),
    (lambda j: j.assign(None), TypeError),
    (lambda j: j.assign(2**40), ValueError),
    (lambda j: j.terminate(-1), ValueError),
    (lambda j: j.terminate(1.5), TypeError),
    (lambda j: j.wait(-1), ValueError),
    (lambda j: j.wait("1"), TypeError),
    (lambda j: j.events(float("nan")), ValueError),
    (lambda j: pgjob.Popen(["x"], job="not a job"), TypeError),
    (lambda j: j.popen([sys.executable, "-c", "pass"], env={"A": "1\0"}), ValueError),
    (lambda j: j.popen([sys.executable, "-c", "pass"], env={"A=B": "1"}), ValueError),
])
def test_bad_arguments(job, call, exc):
    with pytest.raises(exc):
        call(job)
    assert job.pids() == []
