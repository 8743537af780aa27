"""The owner process of the Linux orphan tests: creates a job, starts the members of one
scenario, waits until each says it is ready, prints {"mechanism", "pids", ...} as one JSON
line, then obeys stdin: "exit" (leave the with-block normally), "raise" (leave it with an
exception), or nothing at all until the test SIGKILLs it.

usage: owner.py MECHANISM SCENARIO READY_DIR
MECHANISM: auto | pid_namespace | pdeathsig | none | protect | plain
"""
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pgjob

# tests/ (this file's parent folder's parent) for the helpers the suites share.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proc_helpers import children_by_parent, pids_with_argument  # noqa: E402

mechanism, scenario, ready_dir = sys.argv[1:4]
log_lines = []


class _Capture(logging.Handler):
    def emit(self, record):
        log_lines.append(f"{record.levelname} {record.getMessage()}")


logging.getLogger("pgjob").addHandler(_Capture())
logging.getLogger("pgjob").setLevel(logging.DEBUG)

PY = sys.executable
# Each member signals readiness by creating READY_DIR/<name> once it (and what it forks) runs.
SLEEP = ["sh", "-c", 'touch "$0/$1"; exec sleep 1000']
BUSY = [PY, "-c", "import sys; open(sys.argv[1] + '/' + sys.argv[2], 'w').close()\nwhile True: pass"]
TREE = ["sh", "-c", '(touch "$0/$1.a"; exec sleep 1000) & (touch "$0/$1.b"; exec sleep 1000) & wait']
# A daemon the classic way: fork, setsid, fork again; the middle process exits, so the daemon
# is reparented (to the namespace init or to the host's init/subreaper).
DAEMON = [PY, "-c", """
import os, sys, time
d, name = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(f"{d}/{name}.daemon", "w").close()
        time.sleep(1000)
    os._exit(0)
os.wait()
open(f"{d}/{name}", "w").close()
time.sleep(1000)
"""]
CRASH = ["sh", "-c", 'touch "$0/$1"; kill -SEGV $$']

SCENARIOS = {
    "sleeping": [("sleep", SLEEP, ["sleep"])],
    "busy": [("busy", BUSY, ["busy"])],
    "stopped": [("stopped", SLEEP, ["stopped"])],
    "tree": [("tree", TREE, ["tree.a", "tree.b"])],
    "daemon": [("daemon", DAEMON, ["daemon", "daemon.daemon"])],
    "mixed": [("sleep", SLEEP, ["sleep"]), ("busy", BUSY, ["busy"]),
              ("tree", TREE, ["tree.a", "tree.b"]), ("daemon", DAEMON, ["daemon", "daemon.daemon"])],
    "thread": [("thread", SLEEP, ["thread"])],
    "crash": [("sleep", SLEEP, ["sleep"]), ("crash", CRASH, ["crash"])],
}


def wait_ready(names, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(os.path.join(ready_dir, n)) for n in names):
        if time.monotonic() > deadline:
            raise SystemExit(f"members not ready: {names}")
        time.sleep(0.002)


def descendants(root):
    """Host pids below `root`, for the modes where pgjob is not asked (plain, protect)."""
    children = children_by_parent()
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def started_for_this_owner():
    """Host pids of every process with our ready_dir in its argv, but us: each member gets it
    as an argument, and so does anything it forks. This finds a setsid daemon that was
    reparented away from our tree (the plain control, pdeathsig), which descendants() can't,
    so the test can count it and kill it instead of leaking it onto the machine."""
    return pids_with_argument(ready_dir, exclude={os.getpid()})


def all_in_namespace_of(pid):
    ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/pid").st_ino == ns:
                    out.append(int(name))
            except OSError:
                pass
    return out


def inner_pid(pid):
    """`pid` as its own PID namespace sees it (the last NSpid field); None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int([line for line in f if line.startswith("NSpid:")][0].split()[-1])
    except (OSError, IndexError):
        return None


def main():
    members = SCENARIOS[scenario]
    ready_names = [n for _, _, names in members for n in names]
    report = {"scenario": scenario}
    if mechanism in ("plain", "protect"):
        # No Job: plain subprocess (the control), or after protect_children().
        if mechanism == "protect":
            job = pgjob.protect_children(on_unavailable="log")
            report["mechanism"] = job.mechanism
            report["in_job"] = pgjob.in_job()
        popens = [subprocess.Popen(argv + [ready_dir, name]) for name, argv, _ in members]
        wait_ready(ready_names)
        pids = set()
        for p in popens:
            pids.add(p.pid)
            pids.update(descendants(p.pid))
        if mechanism == "protect" and popens:
            pids.update(all_in_namespace_of(popens[0].pid))
        pids.update(p for p in descendants(os.getpid()))
        pids.update(started_for_this_owner())
        report["pids"] = sorted(pids)
        report["log"] = log_lines
        print(json.dumps(report), flush=True)
        sys.stdin.readline()
        return
    kwargs = {} if mechanism == "auto" else {"mechanism": mechanism}
    with pgjob.Job(**kwargs) as job:
        report["mechanism"] = job.mechanism
        popens = []
        for name, argv, _ in members:
            if scenario == "thread":
                # Spawn from a worker thread that then exits: PR_SET_PDEATHSIG would fire here.
                box = []
                t = threading.Thread(target=lambda: box.append(job.popen(argv + [ready_dir, name])))
                t.start()
                t.join()
                popens.append(box[0])
            else:
                popens.append(job.popen(argv + [ready_dir, name]))
        wait_ready(ready_names)
        if scenario == "stopped":
            # Every member, and the namespace's init: a stopped init can't poll the owner's
            # pidfd, so this exercises its PR_SET_PDEATHSIG backstop.
            inits = [pid for pid in all_in_namespace_of(popens[0].pid) if inner_pid(pid) == 1]
            report["stopped_init"] = inits
            for pid in job.pids() + inits:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass  # a transient process (touch) that has just exited
        if scenario == "crash":
            report["crash_returncode"] = popens[1].wait(20)
        if job.mechanism == "pid_namespace":
            # pgjob's own init: PID 1 of the namespace, no member but one of our children.
            report["init"] = [pid for pid in descendants(os.getpid()) if inner_pid(pid) == 1]
        report["popen_pids"] = [p.pid for p in popens]
        report["pids"] = sorted(set(job.pids()) | set(descendants(os.getpid()))
                                | set(started_for_this_owner()))
        report["direct"] = [p.pid for p in popens]
        report["log"] = log_lines
        print(json.dumps(report), flush=True)
        command = sys.stdin.readline().strip()
        if command == "raise":
            raise RuntimeError("owner raised on purpose")
        if command == "report":
            print(json.dumps({"pids": job.pids()}), flush=True)
            sys.stdin.readline()


if __name__ == "__main__":
    main()
