"""A user's program written against pgjob's public API, type-checked with `mypy --strict`
(tests/typing/test_mypy.py): every public name must carry precise types."""
from __future__ import annotations

import subprocess
import sys
from typing import Optional

import pgjob


def run_server(argv: list[str], memory: Optional[int] = None) -> int:
    with pgjob.Job(kill_on_close=True, memory_limit=memory, on_unavailable="log") as job:
        mechanism: str = job.mechanism
        server: pgjob.Popen = job.popen(argv, stdout=subprocess.PIPE, text=True)
        out: Optional[str]
        out, _ = server.communicate(timeout=60)
        members: list[int] = job.pids()
        stats: pgjob.JobStats = job.stats()
        active: int = stats.active_processes
        print(mechanism, members, active, out)
        for event in job.events(timeout=0.1):
            kind: pgjob.EventKind = event.kind
            pid: Optional[int] = event.pid
            print(kind.value, pid)
        finished: bool = job.wait(timeout=1.0)
        print(finished)
        return server.returncode


def protect() -> bool:
    job: pgjob.Job = pgjob.protect_children()
    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    except pgjob.JobError as exc:
        code: Optional[int] = exc.errno
        print(code)
    return pgjob.in_job() and job.mechanism != "none"


def with_private_job() -> Optional[int]:
    with pgjob.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait()
        job: pgjob.Job = proc.job
        print(job.closed, job.options.kill_on_close, proc.spawn_path)
    return proc.returncode


if __name__ == "__main__":
    print(run_server([sys.executable, "-c", "print('hello')"]))
    print(with_private_job())
    print(pgjob.__version__)
