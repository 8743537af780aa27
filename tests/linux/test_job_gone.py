"""When the OS object behind a Job disappears (here: the namespace's init is SIGKILLed by
someone else), the Job says so with JobClosedError, closes itself, and warns once."""
import logging
import os
import signal
import subprocess

import pytest

import pgjob
from proc_helpers import wait_until


def _ns(pid):
    st = os.stat(f"/proc/{pid}/ns/pid")
    return (st.st_dev, st.st_ino)


def _init_of(job_namespace_member):
    """The namespace's PID 1: this process's child in the member's namespace whose NSpid
    ends in 1 (found in /proc, as an outsider would, not through pgjob's internals)."""
    wanted = _ns(job_namespace_member)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            if (int(status["PPid"]) == os.getpid() and status["NSpid"].split()[-1] == "1"
                    and _ns(entry) == wanted):
                return int(entry)
        except (OSError, KeyError, ValueError):
            continue  # exited while we looked
    return None


def test_killed_init_closes_the_job_with_job_closed_error(caplog, tracker):
    job = pgjob.Job()
    if job.mechanism != "pid_namespace":
        job.close()
        pytest.skip(f"no PID namespace here (mechanism={job.mechanism})")
    try:
        member = job.popen(["sleep", "300"], stdin=subprocess.DEVNULL)
        tracker.track(member.pid)
        assert wait_until(lambda: _init_of(member.pid) is not None, timeout=10)
        init = _init_of(member.pid)
        os.kill(init, signal.SIGKILL)
        # The kernel kills the namespace with its init: the member dies of SIGKILL.
        assert member.wait(20) == -signal.SIGKILL
        with caplog.at_level(logging.WARNING, logger="pgjob"):
            with pytest.raises(pgjob.JobClosedError):
                job.popen(["true"])
            assert job.closed
            with pytest.raises(pgjob.JobClosedError):
                job.popen(["true"])
        warnings = [r for r in caplog.records
                    if r.name == "pgjob" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
    finally:
        job.close()
