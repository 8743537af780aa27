"""The public contract, the same on every platform: names, exception hierarchy, argument
checking, and an honest `mechanism`."""
import errno
import os
import subprocess
import sys

import pytest

import pgjob


def test_public_names():
    for name in ("Job", "Popen", "protect_children", "in_job", "JobStats", "JobEvent",
                 "EventKind", "JobError", "AlreadyInJobError", "ProcessExitedError",
                 "JobClosedError", "UnsupportedError", "LimitExceededError", "ProcessHandle"):
        assert name in pgjob.__all__ and hasattr(pgjob, name)
    assert issubclass(pgjob.Popen, subprocess.Popen)


@pytest.mark.parametrize("cls", [pgjob.AlreadyInJobError, pgjob.ProcessExitedError,
                                 pgjob.JobClosedError, pgjob.UnsupportedError,
                                 pgjob.LimitExceededError])
def test_every_error_is_an_oserror_under_job_error(cls):
    assert issubclass(cls, pgjob.JobError) and issubclass(cls, OSError)
    err = cls(errno.EPERM, "message")
    assert err.errno == errno.EPERM and err.strerror == "message"


def test_error_numbers_mean_the_same_on_this_platform():
    """errno is this platform's own code for what happened, never a literal that means another
    error elsewhere: 38, once used for "unsupported" everywhere, is ENOSYS on Linux but
    ENAMETOOLONG in the Windows C runtime and ENOTSOCK on macOS."""
    foreign = "pid_namespace" if sys.platform == "win32" else "job_object"
    raised = {}
    with pytest.raises(pgjob.UnsupportedError) as info:
        pgjob.Job(mechanism=foreign, on_unavailable="raise")
    raised["foreign mechanism"] = (info.value.errno, errno.EOPNOTSUPP)
    with pgjob.Job(mechanism="none") as job:
        with pytest.raises(pgjob.UnsupportedError) as info:
            job.assign(os.getpid())
        raised["assign to mechanism none"] = (info.value.errno, errno.EOPNOTSUPP)
        exited = subprocess.Popen([sys.executable, "-c", "pass"])
        exited.wait()
        with pytest.raises(pgjob.ProcessExitedError) as info:
            job.assign(exited)
        raised["assign of an exited Popen"] = (info.value.errno, errno.ESRCH)
    with pytest.raises(pgjob.JobClosedError) as info:
        job.popen([sys.executable, "-c", "pass"])
    raised["popen in a closed job"] = (info.value.errno, errno.EBADF)
    if sys.platform != "win32":
        with pgjob.Popen([sys.executable, "-c", "pass"]) as p:
            with pytest.raises(pgjob.UnsupportedError) as info:
                p.resume()
        raised["resume off Windows"] = (info.value.errno, errno.EOPNOTSUPP)
    wrong = {what: got for what, (got, want) in raised.items() if got != want}
    assert not wrong, wrong


@pytest.mark.parametrize("record", [
    pgjob.JobStats(2, total_processes=5, user_time=0.25),
    pgjob.JobEvent(pgjob.EventKind.EXIT_PROCESS, pid=1234, exit_code=3),
    pgjob.JobOptions(kill_on_close=False, process_limit=4),
], ids=["JobStats", "JobEvent", "JobOptions"])
def test_records_are_immutable_values(record):
    """What pgjob hands back compares, hashes, copies and pickles by its fields, and can't
    be changed in place: `_replace()` makes a changed copy (through the constructor, so
    JobOptions validates it), `_asdict()` a dict."""
    import copy
    import pickle
    cls = type(record)
    fields = record._asdict()
    assert list(fields) == list(cls.__slots__)
    assert cls(**fields) == record and hash(cls(**fields)) == hash(record)
    assert pickle.loads(pickle.dumps(record)) == record and copy.deepcopy(record) == record
    assert repr(record).startswith(f"{cls.__name__}(") and all(f"{k}=" in repr(record)
                                                              for k in fields)
    first = cls.__slots__[0]
    with pytest.raises(AttributeError):
        setattr(record, first, None)
    with pytest.raises(AttributeError):
        delattr(record, first)
    assert record._asdict() == fields
    assert record != tuple(fields.values())  # a record, not a tuple
    changed = record._replace(**{"exit_code" if cls is pgjob.JobEvent else
                                 "process_limit" if cls is pgjob.JobOptions else
                                 "total_processes": 9})
    assert changed != record and type(changed) is cls


def test_replacing_an_option_validates_it():
    with pytest.raises(ValueError):
        pgjob.JobOptions()._replace(cpu_rate=500)


def test_mechanism_is_named_and_closing_is_idempotent():
    job = pgjob.Job()
    assert job.mechanism in ("job_object", "pid_namespace", "pdeathsig", "none")
    assert not job.closed and job.mechanism in repr(job)
    job.close()
    job.close()
    assert job.closed and "closed" in repr(job)


def test_job_options_are_kept_validated():
    options = pgjob.JobOptions(kill_on_close=False, process_limit=3, cpu_rate=25)
    assert options.process_limit == 3 and options.cpu_rate == 25.0 and options.has_limits
    with pgjob.Job(kill_on_close=False) as job:
        assert job.options.kill_on_close is False and not job.options.has_limits


@pytest.mark.parametrize("kwargs, exc", [
    ({"kill_on_close": 1}, TypeError),
    ({"name": 5}, TypeError),
    ({"name": "a\0b"}, ValueError),
    ({"memory_limit": -1}, ValueError),
    ({"memory_limit": 2**70}, ValueError),
    ({"process_limit": 0}, ValueError),
    ({"process_limit": "3"}, TypeError),
    ({"cpu_rate": 0}, ValueError),
    ({"cpu_rate": float("nan")}, ValueError),
    ({"cpu_rate": 101}, ValueError),
    ({"on_unavailable": "ignore"}, ValueError),
    ({"mechanism": "magic"}, ValueError),
])
def test_bad_options(kwargs, exc):
    with pytest.raises(exc):
        pgjob.Job(**kwargs)


