"""What tests/stress/test_sanitizers_linux.py runs under ASan+UBSan: every C entry point of the
Linux extension, on its success and its error paths, a few times each."""
import subprocess
import sys

import pgjob
from pgjob import _jobobject as c

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3


def main():
    for _ in range(ROUNDS):
        for mechanism in ("pid_namespace", "pdeathsig"):
            with pgjob.Job(mechanism=mechanism) as job:
                assert job.popen(["/bin/true"]).wait(60) == 0
                p = job.popen(["sh", "-c", "exit 3"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd="/", env={"A": "B"})
                p.communicate(timeout=60)
                assert p.returncode == 3
                sleeper = job.popen(["sleep", "100"], start_new_session=True, umask=0o22)
                job.pids()
                job.stats()
                job.contains(sleeper)
                list(job.events(timeout=0))
                job.terminate()
                sleeper.wait(60)
                for bad in (dict(args=["/nonexistent/pgjob"]), dict(args=["/bin/true"], cwd="/nonexistent"),
                            dict(args=["/bin/true"] + ["x" * 100000] * 40),
                            dict(args=["/bin/true"], pass_fds=[999])):
                    try:
                        job.popen(bad.pop("args"), **bad).wait(60)
                    except (OSError, ValueError):
                        pass
                job.wait(60)
    # The raw C calls with wrong arguments: only Python exceptions.
    for call in (lambda: c.spawn(), lambda: c.unshare("x"), lambda: c.setns(-1, 0),
                 lambda: c.spawn(*([None] * 25)), lambda: c.spawn(*([None] * 27))):
        try:
            call()
        except (TypeError, ValueError, OSError):
            pass
    print(f"extension {c.__file__}", flush=True)
    print("workload done", flush=True)


if __name__ == "__main__":
    main()
