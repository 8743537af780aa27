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

usage: python scripts/stress_linux_orphans.py [-n 100] [--mechanism pid_namespace] [--scenario mixed]
"""
import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWNER = os.path.join(ROOT, "tests", "linux", "owner.py")


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


def one_round(mechanism, scenario):
    """(members, survivors, members-gone ms or None, mechanism): what tests/stress uses."""
    return one_round_detailed(mechanism, scenario, False)[:4]


def one_round_detailed(mechanism, scenario, subreaper):
    """one_round(), plus how many of pgjob's inits were left after 5 s and when they went."""
    ready_dir = tempfile.mkdtemp(prefix="pgjob-stress-")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    proc = subprocess.Popen([sys.executable, OWNER, mechanism, scenario, ready_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        report = read_report(proc)
        init_pids = set(report.get("init", []))
        tracked = [(pid, start_time(pid)) for pid in report["pids"]]
        members = [m for m in tracked if m[1] is not None and m[0] not in init_pids]
        inits = [m for m in tracked if m[1] is not None and m[0] in init_pids]
        killed_at = time.monotonic()
        proc.kill()
        deadline = killed_at + 5.0
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
    args = parser.parse_args()
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
            args.mechanism, args.scenario, args.subreaper)
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
          f"scenario: {args.scenario}  subreaper: {args.subreaper}")
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
