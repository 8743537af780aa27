"""What tests/stress/test_sanitizers_linux.py runs under ASan+UBSan: every C entry point of the
Linux extension, on its success and its error paths, a few times each."""
import os
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
    spawn_into_cgroups()
    # The raw C calls with wrong arguments: only Python exceptions.
    for call in (lambda: c.spawn(), lambda: c.start_init(),
                 lambda: c.spawn(*([None] * 25)), lambda: c.spawn(*([None] * 27)),
                 lambda: c.spawn(*([None] * 25), no_such_keyword=1),
                 lambda: c.start_init(clone_flags=0, helper_path=b"x")):
        try:
            call()
        except (TypeError, ValueError, OSError):
            pass
    print(f"extension {c.__file__}", flush=True)
    print("workload done", flush=True)


def _raw_spawn(argv, cgroup_fd):
    """_jobobject.spawn of `argv` as subprocess would call it, into cgroup_fd; its exit code."""
    errpipe_read, errpipe_write = os.pipe()
    try:
        pid, pidfd = c.spawn([os.fsencode(a) for a in argv], (os.fsencode(argv[0]),), None, None,
                             True, (errpipe_write,), -1, -1, -1, -1, -1, -1, errpipe_read,
                             errpipe_write, True, False, -1, -1, None, -1, -1, -1, -1, False,
                             False, cgroup_fd)
    finally:
        os.close(errpipe_write)
        os.close(errpipe_read)
    os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def spawn_into_cgroups():
    """spawn's clone3(CLONE_INTO_CGROUP) path: refused for a directory that is no cgroup, and,
    where we may make one, into a temporary child of our own cgroup."""
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _raw_spawn(["/bin/true"], root)
    except OSError:
        pass
    finally:
        os.close(root)
    mount = own = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                mount = left.split()[4]
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                own = line[3:].strip()
    if mount is None or own is None:
        return
    path = os.path.join(mount, own.lstrip("/"), f"pgjob-asan-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError:
        return  # not ours to write: nothing more to exercise
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert _raw_spawn(["/bin/true"], fd) == 0
        finally:
            os.close(fd)
    finally:
        os.rmdir(path)


if __name__ == "__main__":
    main()
