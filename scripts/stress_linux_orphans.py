#!/usr/bin/env python3
"""Stress the Linux guarantee: SIGKILL the owner of a pgjob tree, many times over, and count
the processes that survive it; report how long the kernel took to tear the tree down.

Each repetition starts tests/linux/owner.py (a separate Python process holding a Job with
the "mixed" members: a sleeper, a busy loop, a shell with two children, and a setsid'd
double-forked daemon), waits until it reports every member ready, SIGKILLs it, and polls
/proc until every member is gone (teardown time, from the SIGKILL) or 5 s have passed
(then the leftovers are survivors, and are killed).

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


def one_round(mechanism, scenario):
    ready_dir = tempfile.mkdtemp(prefix="pgjob-stress-")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    proc = subprocess.Popen([sys.executable, OWNER, mechanism, scenario, ready_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        report = read_report(proc)
        members = [(pid, start_time(pid)) for pid in report["pids"]]
        members = [m for m in members if m[1] is not None]
        killed_at = time.monotonic()
        proc.kill()
        deadline = killed_at + 5.0
        left = members
        while left and time.monotonic() < deadline:
            left = [m for m in left if start_time(m[0]) == m[1]]
            if left:
                time.sleep(0.0002)
        teardown_ms = (time.monotonic() - killed_at) * 1000
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(members), len(left), (None if left else teardown_ms), report["mechanism"]
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
    args = parser.parse_args()
    survivors = members = 0
    failed_rounds = 0
    times = []
    mechanisms = set()
    for i in range(args.repetitions):
        n, left, ms, mechanism = one_round(args.mechanism, args.scenario)
        mechanisms.add(mechanism)
        members += n
        survivors += left
        failed_rounds += bool(left)
        if ms is not None:
            times.append(ms)
    times.sort()
    p95 = times[max(0, int(round(0.95 * len(times))) - 1)] if times else float("nan")
    print(f"repetitions: {args.repetitions}  mechanism: {', '.join(sorted(mechanisms))}  "
          f"scenario: {args.scenario}")
    print(f"members per round: {members / args.repetitions:.1f}  total members: {members}")
    print(f"survivors: {survivors} (in {failed_rounds} rounds)")
    if times:
        print(f"teardown after SIGKILL of the owner: median {statistics.median(times):.1f} ms, "
              f"p95 {p95:.1f} ms, max {times[-1]:.1f} ms")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
