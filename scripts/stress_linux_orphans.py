#!/usr/bin/env python3
"""Stress the Linux guarantee: SIGKILL the owner of a pgjob tree, many times over, and count
the processes that survive it; report how long the kernel took to tear the tree down.

Each repetition starts tests/linux/owner.py (a separate Python process holding a Job with
the "mixed" members: a sleeper, a busy loop, a shell with two children, and a setsid'd
double-forked daemon), waits until it reports every member ready, SIGKILLs it, and polls
/proc until every member is gone (teardown time, from the SIGKILL) or 5 s have passed
(then the leftovers are survivors, and are killed). A zombie counts as gone: it runs no
code, and whoever is its parent now reaps it.

pgjob's own init (pid_namespace) is timed apart: the kernel keeps a namespace's dying init
until every zombie of the namespace has been reaped, and the members' zombies are reaped by
whoever inherits the owner's children (the nearest child subreaper, else PID 1), on its own
schedule. --subreaper makes this script that subreaper, reaping at once, as systemd would.

--mechanism is one of owner.py's: pid_namespace, cgroup (a Job with mechanism="cgroup"),
pdeathsig, protect (protect_children() in the owner, then plain subprocess & co), plain (the
control). --user UID runs the owner as that user (root only); --delegate first makes a cgroup
delegated to it (chowned, as systemd's Delegate=yes) and starts the owner inside.

usage: python scripts/stress_linux_orphans.py [-n 100] [--mechanism pid_namespace] [--scenario mixed]
                                              [--user 1500 [--delegate]] [--subreaper]
"""
import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import contextlib
import tempfile
import time
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWNER = os.path.join(ROOT, "tests", "linux", "owner.py")
# As tests/proc_helpers.scaled(): the VM's spawns are ~50x slower than this host's.
TIMEOUT_SCALE = float(os.environ.get("PGJOB_TIMEOUT_SCALE") or
                      (20 if os.environ.get("PGJOB_IN_VM") == "1" else 1))


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def read_report(proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
            raise RuntimeError("owner did not report ready")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"owner exited: {proc.stderr.read().decode()}")
        line += chunk
    return json.loads(line)


def alive(member):
    return start_time(member[0]) == member[1]


def reap(tracked):
    """As the owner's child subreaper: reap those of `tracked` that died and are ours now."""
    for pid, _ in tracked:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not (or no longer) our child


def cgroup2_mount():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def own_cgroup():
    with open("/proc/self/cgroup") as f:
        return [line[3:].strip() for line in f if line.startswith("0::")][0]


@contextlib.contextmanager
def delegated_cgroup(uid):
    """A cgroup in the unified hierarchy handed to `uid` the way systemd's Delegate=yes does
    (the directory and its cgroup.procs, cgroup.subtree_control, cgroup.threads chowned);
    yields its path; kills what is left in it and removes it afterwards."""
    mount = cgroup2_mount()
    if mount is None:
        raise RuntimeError("no cgroup2 hierarchy is mounted")
    # As root: a child of our own cgroup. As an ordinary user: of the one delegated to us,
    # which scripts/vm's guest names (its command runs in a leaf scope below it).
    parent = os.environ.get("PGJOB_VM_DELEGATED_CGROUP") if os.geteuid() else None
    path = os.path.join(mount, (parent or own_cgroup()).lstrip("/"), f"pgjob-stress-{os.getpid()}")
    os.mkdir(path)
    try:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(path, name), uid, uid)
        yield path
    finally:
        for dirpath, _dirs, _files in os.walk(path, topdown=False):
            with contextlib.suppress(OSError):
                with open(os.path.join(dirpath, "cgroup.kill"), "w") as f:
                    f.write("1")
            deadline = time.monotonic() + 10
            while os.path.exists(dirpath) and time.monotonic() < deadline:
                try:
                    os.rmdir(dirpath)
                except OSError:  # EBUSY until its last process is gone and reaped
                    time.sleep(0.01)


def owner_command(mechanism, scenario, ready_dir, user=None, cgroup=None, python=None):
    """argv and Popen keywords for an owner as `user`, inside `cgroup` if given (its pid is
    written there before Python starts: everything it does happens inside)."""
    argv = [python or sys.executable, OWNER, mechanism, scenario, ready_dir]
    if cgroup is not None:
        switch = (f'exec setpriv --reuid={user} --regid={user} --clear-groups "$@"'
                  if user is not None else 'exec "$@"')
        return ["sh", "-c", f'echo $$ > "$0/cgroup.procs" && {switch}', cgroup, *argv], {}
    if user is not None:
        return argv, {"user": user, "group": user, "extra_groups": []}
    return argv, {}


def one_round(mechanism, scenario, user=None, cgroup=None, python=None):
    """(members, survivors, members-gone ms or None, mechanism): what tests/stress uses."""
    return one_round_detailed(mechanism, scenario, False, user, cgroup, python)[:4]


def one_round_detailed(mechanism, scenario, subreaper, user=None, cgroup=None, python=None):
    """one_round(), plus how many of pgjob's inits were left after 5 s and when they went."""
    ready_dir = tempfile.mkdtemp(prefix="pgjob-stress-")
    os.chmod(ready_dir, 0o777)  # an owner of another uid writes its readiness files here
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), PYTHONDONTWRITEBYTECODE="1")
    argv, kwargs = owner_command(mechanism, scenario, ready_dir, user, cgroup, python)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd="/", **kwargs)
    owner_started = start_time(proc.pid)
    try:
        report = read_report(proc, timeout=20.0 * TIMEOUT_SCALE)
        init_pids = set(report.get("init", []))
        # Nothing older than the owner is one of its processes: never kill the machine's.
        tracked = [(pid, start_time(pid)) for pid in report["pids"]]
        tracked = [m for m in tracked if m[1] is not None and m[1] >= owner_started]
        members = [m for m in tracked if m[1] is not None and m[0] not in init_pids]
        inits = [m for m in tracked if m[1] is not None and m[0] in init_pids]
        killed_at = time.monotonic()
        proc.kill()
        deadline = killed_at + 5.0 * TIMEOUT_SCALE
        left, members_ms = members, None
        while (left or any(alive(m) for m in inits)) and time.monotonic() < deadline:
            if subreaper:
                reap(members + inits)
            left = [m for m in left if alive(m)]
            if not left and members_ms is None:
                members_ms = (time.monotonic() - killed_at) * 1000
            time.sleep(0.0002)
        if not left and members_ms is None:
            members_ms = (time.monotonic() - killed_at) * 1000
        init_left = [m for m in inits if alive(m)]
        init_ms = None if init_left else (time.monotonic() - killed_at) * 1000
        for pid, _ in left + init_left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return (len(members), len(left), members_ms, report["mechanism"],
                len(init_left), init_ms if inits else None)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        shutil.rmtree(ready_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--repetitions", type=int, default=100)
    parser.add_argument("--mechanism", default="pid_namespace")
    parser.add_argument("--scenario", default="mixed")
    parser.add_argument("--subreaper", action="store_true",
                        help="become the owner's child subreaper and reap its orphans at once")
    parser.add_argument("--user", type=int, help="run the owner as this uid (root only)")
    parser.add_argument("--delegate", action="store_true",
                        help="start the owner in a cgroup delegated to --user (or to us)")
    parser.add_argument("--python", help="interpreter for the owner (one --user can run)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        cgroup = None
        if args.delegate:
            cgroup = stack.enter_context(delegated_cgroup(
                args.user if args.user is not None else os.geteuid()))
        return run(args, cgroup)


def run(args, cgroup):
    if args.subreaper:
        import ctypes
        PR_SET_CHILD_SUBREAPER = 36
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    survivors = members = 0
    failed_rounds = 0
    times, init_times = [], []
    inits_left = 0
    mechanisms = set()
    for i in range(args.repetitions):
        n, left, ms, mechanism, init_left, init_ms = one_round_detailed(
            args.mechanism, args.scenario, args.subreaper, args.user, cgroup, args.python)
        mechanisms.add(mechanism)
        members += n
        survivors += left
        failed_rounds += bool(left)
        inits_left += init_left
        if ms is not None:
            times.append(ms)
        if init_ms is not None:
            init_times.append(init_ms)
    print(f"repetitions: {args.repetitions}  mechanism: {', '.join(sorted(mechanisms))}  "
          f"scenario: {args.scenario}  subreaper: {args.subreaper}  uid: "
          f"{args.user if args.user is not None else os.geteuid()}"
          f"{'  delegated cgroup' if cgroup else ''}")
    print(f"members per round: {members / args.repetitions:.1f}  total members: {members}")
    print(f"survivors: {survivors} (in {failed_rounds} rounds)")
    if times:
        print(f"members gone after SIGKILL of the owner: {summary(times)}")
    if init_times or inits_left:
        print(f"pgjob's init gone too: {summary(init_times)}; still there after 5 s: {inits_left}")
    return 1 if survivors else 0


def summary(times):
    times = sorted(times)
    if not times:
        return "never"
    p95 = times[max(0, int(round(0.95 * len(times))) - 1)]
    return (f"median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, "
            f"max {times[-1]:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
