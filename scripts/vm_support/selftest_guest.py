"""Run inside the scripts/vm guest by `scripts/vm selftest`: assert that the guest gives pgjob
what it is for (pure cgroup v2, enforced limits, cgroup.kill, delegation, user namespaces).

As root the checks work under /sys/fs/cgroup; as another user under the delegated subtree
(PGJOB_VM_DELEGATED_CGROUP).  Each check prints one ok/FAIL line; the exit status is the
number of failures.  Every process a check starts is reaped and asserted gone.
"""
import ctypes
import errno
import os
import select
import signal
import subprocess
import sys
import time

CG = "/sys/fs/cgroup"
WANTED_CONTROLLERS = {"cpu", "cpuset", "io", "memory", "pids"}
failures = []


def check(name, cond, detail=""):
    print(f"{'ok' if cond else 'FAIL'}: {name}{f' ({detail})' if detail else ''}", flush=True)
    if not cond:
        failures.append(name)


def read(path):
    with open(path) as fh:
        return fh.read()


def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def reap(pid, timeout=30):
    """waitpid() with a deadline; returns the status, or kills and reaps on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def in_cgroup(pid):
    return read(f"/proc/{pid}/cgroup").strip().split("::", 1)[1]


def fork_into(cgroup, body):
    """Fork a child that moves itself into cgroup (a path under /sys/fs/cgroup), says so on
    a pipe, then runs body(write_fd) and exits 0; returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            write(f"{CG}{cgroup}/cgroup.procs", "0")
            os.write(w, b"in\n")
            body(w)
        except BaseException as exc:  # report, never return into the parent's code
            os.write(w, f"error {exc!r}\n".encode())
            code = 1
        os._exit(code)
    os.close(w)
    return pid, r


def read_lines(fd, count, timeout=60):
    """count lines from fd (a readiness handshake), or fewer if it closes or times out."""
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data = os.read(fd, 4096)
        if not data:
            break
        buf += data
    return buf.decode().splitlines()


def make_cgroup(base, name):
    path = f"{base}/{name}"
    os.mkdir(CG + path)
    return path


def remove_cgroup(path):
    # rmdir refuses while the kernel still counts dying members; they are gone in ms.
    wait_until(lambda: read(f"{CG}{path}/cgroup.events").find("populated 0") >= 0, 10)
    os.rmdir(CG + path)


def check_v2_only():
    mounts = [line.split() for line in read("/proc/mounts").splitlines()]
    cgroup_mounts = [(m[1], m[2]) for m in mounts if m[2] in ("cgroup", "cgroup2")]
    check("cgroup2 is the only cgroup mount, at /sys/fs/cgroup",
          cgroup_mounts == [(CG, "cgroup2")], str(cgroup_mounts))
    lines = read("/proc/self/cgroup").splitlines()
    check("/proc/self/cgroup has the single v2 line", len(lines) == 1 and lines[0].startswith("0::/"),
          str(lines))
    controllers = set(read(f"{CG}/cgroup.controllers").split())
    check("root cgroup.controllers has cpu cpuset io memory pids",
          WANTED_CONTROLLERS <= controllers, " ".join(sorted(controllers)))
    check("root cgroup.subtree_control enables them all",
          set(read(f"{CG}/cgroup.subtree_control").split()) == controllers)


def check_delegation(base, uid):
    stat = os.stat(CG + base)
    check(f"{base} is owned by uid {uid}", stat.st_uid == uid)
    for name in ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        check(f"{base}/{name} is writable by the user", os.access(f"{CG}{base}/{name}", os.W_OK))
    check(f"{base}/cgroup.subtree_control enables every controller",
          WANTED_CONTROLLERS <= set(read(f"{CG}{base}/cgroup.subtree_control").split()),
          read(f"{CG}{base}/cgroup.subtree_control").strip())
    check("the command runs below the delegated cgroup", in_cgroup(os.getpid()).startswith(base + "/"),
          in_cgroup(os.getpid()))
    # Control case: outside the delegation the user is refused.
    try:
        os.mkdir(f"{CG}/selftest-outside-{os.getpid()}")
        os.rmdir(f"{CG}/selftest-outside-{os.getpid()}")
        refused = False
    except PermissionError:
        refused = True
    check("mkdir in the root cgroup is refused (EACCES) outside the delegation", refused)


def check_pids_max(base):
    cgroup = make_cgroup(base, f"selftest-pids-{os.getpid()}")
    write(f"{CG}{cgroup}/pids.max", "3")

    def body(w):
        # The child is member 1; two sleepers make 3; the third fork must be refused.
        sleepers, refused = [], None
        hold_r, hold_w = os.pipe()
        for _ in range(3):
            try:
                pid = os.fork()
            except BlockingIOError as exc:
                refused = exc.errno
                break
            if pid == 0:
                os.close(hold_w)
                os.read(hold_r, 1)  # until the member closes hold_w
                os._exit(0)
            sleepers.append(pid)
        os.write(w, f"forked {len(sleepers)} refused {refused}\n".encode())
        os.close(hold_w)
        for pid in sleepers:
            os.waitpid(pid, 0)

    pid, r = fork_into(cgroup, body)
    lines = read_lines(r, 2)
    os.close(r)
    status = reap(pid)
    check("pids.max=3: a member forks 2 processes, the 3rd fork fails EAGAIN",
          lines[-1:] == [f"forked 2 refused {errno.EAGAIN}"] and status == 0, f"{lines}, status {status}")
    check("pids.events counts the refused fork",
          "max 1" in read(f"{CG}{cgroup}/pids.events"), read(f"{CG}{cgroup}/pids.events").strip())
    remove_cgroup(cgroup)


def check_memory_max(base):
    def body(w):
        hog = b"\x01" * (128 << 20)  # written, so every page is charged to the cgroup
        os.write(w, f"survived {len(hog)}\n".encode())

    # Control case: without memory.max the same member survives.
    cgroup = make_cgroup(base, f"selftest-nolimit-{os.getpid()}")
    pid, r = fork_into(cgroup, body)
    lines = read_lines(r, 2)
    os.close(r)
    status = reap(pid, timeout=120)
    check("without memory.max a member writing 128M survives",
          lines == ["in", f"survived {128 << 20}"] and status == 0, f"{lines}, status {status}")
    remove_cgroup(cgroup)

    cgroup = make_cgroup(base, f"selftest-mem-{os.getpid()}")
    write(f"{CG}{cgroup}/memory.max", str(32 << 20))
    write(f"{CG}{cgroup}/memory.swap.max", "0")
    pid, r = fork_into(cgroup, body)
    lines = read_lines(r, 2)
    os.close(r)
    status = reap(pid, timeout=120)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    check("memory.max=32M: a member writing 128M is SIGKILLed", killed and lines == ["in"],
          f"{lines}, status {status}")
    events = dict(line.split() for line in read(f"{CG}{cgroup}/memory.events").splitlines())
    check("memory.events counts the OOM kill", int(events.get("oom_kill", 0)) >= 1, str(events))
    remove_cgroup(cgroup)


def check_cgroup_kill(base):
    cgroup = make_cgroup(base, f"selftest-kill-{os.getpid()}")
    # Orphans (the daemon below) come back to us instead of to PID 1, so we can reap them
    # and read how they died.
    libc = ctypes.CDLL(None, use_errno=True)
    check("PR_SET_CHILD_SUBREAPER", libc.prctl(36, 1, 0, 0, 0) == 0)

    def body(w):
        # A daemon the usual way: fork, setsid, fork; its parents exit, it stays in the cgroup.
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(w, f"daemon {os.getpid()}\n".encode())
                while True:
                    signal.pause()
            os._exit(0)

    pid, r = fork_into(cgroup, body)
    lines = read_lines(r, 2)
    os.close(r)
    status = reap(pid)
    daemon = int(lines[1].split()[1]) if len(lines) == 2 and lines[1].startswith("daemon ") else None
    check("a setsid daemon started in the cgroup", daemon is not None and status == 0, str(lines))
    if daemon is None:
        return
    # Control case: before cgroup.kill the daemon is alive, in another session, in the cgroup.
    # Its parents exited, so it was reparented to us (the subreaper), in a session of its own.
    alive = not gone(daemon)
    where = in_cgroup(daemon) if alive else None
    ppid = int(read(f"/proc/{daemon}/stat").rsplit(")", 1)[1].split()[1]) if alive else None
    check("the daemon is alive in the cgroup before cgroup.kill, orphaned, in its own session",
          alive and where == cgroup and ppid == os.getpid() and os.getsid(daemon) != os.getsid(0),
          f"cgroup {where}, ppid {ppid}")
    write(f"{CG}{cgroup}/cgroup.kill", "1")
    status = reap(daemon)
    check("cgroup.kill SIGKILLs the daemon", os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
          f"status {status}")
    check("the cgroup is empty and the daemon gone",
          wait_until(lambda: read(f"{CG}{cgroup}/cgroup.procs") == "", 10) and gone(daemon))
    remove_cgroup(cgroup)


def check_userns():
    proc = subprocess.run(["unshare", "-Ur", "sh", "-c", "id -u; cat /proc/self/uid_map"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    check("unshare -Ur: a user namespace where we are uid 0",
          proc.returncode == 0 and proc.stdout.split()[:1] == ["0"], proc.stdout.strip().replace("\n", " | "))


def run_step(step, *args):
    """One group of checks; an exception (a missing interface file...) fails it, not the run."""
    try:
        step(*args)
    except Exception as exc:
        check(step.__name__, False, f"{type(exc).__name__}: {exc}")


def main():
    uid = os.getuid()
    print(f"selftest in the VM: uid {uid}, kernel {os.uname().release}, cgroup {in_cgroup(os.getpid())}",
          flush=True)
    check("PGJOB_IN_VM=1 is set", os.environ.get("PGJOB_IN_VM") == "1")
    check_v2_only()
    base = ""
    if uid != 0:
        base = os.environ.get("PGJOB_VM_DELEGATED_CGROUP", "")
        check("PGJOB_VM_DELEGATED_CGROUP names the delegated cgroup", base.startswith("/"), base)
        check_delegation(base, uid)
    for step in (check_pids_max, check_memory_max, check_cgroup_kill):
        run_step(step, base)
    run_step(check_userns)
    print(f"selftest: {len(failures)} failure(s){': ' + ', '.join(failures) if failures else ''}",
          flush=True)
    return len(failures)


if __name__ == "__main__":
    sys.exit(main())
