"""pgjob demo: an owner process starts a tree (child, grandchild, and on Linux a setsid'd
daemon), then is killed the hard way. With pgjob the kernel tears the tree down; with plain
subprocess (the control) the tree is orphaned. Runs on Linux and on Windows (and under Wine).

    python examples/demo.py
"""
import json
import os
import subprocess
import sys
import time

WINDOWS = sys.platform == "win32"
HERE = os.path.abspath(__file__)

# The tree: a child that starts a grandchild (and on POSIX a setsid daemon), then reports pids.
TREE = r"""
import json, os, subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])]
if os.name == "posix":
    kids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                 start_new_session=True))
print(json.dumps([os.getpid()] + [k.pid for k in kids]), flush=True)
time.sleep(3600)
"""


def owner(use_pgjob):
    """Runs in the owner process: start the tree, print its pids, wait to be killed."""
    if use_pgjob:
        import pgjob
        job = pgjob.Job(kill_on_close=True)
        child = job.popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
        mechanism = job.mechanism
    else:
        child = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
        mechanism = "plain subprocess"
    pids = json.loads(child.stdout.readline())  # the tree is ready
    if use_pgjob:
        # What the tree says about itself are pids in its own view: inside a Linux PID
        # namespace they are not host pids. The job speaks host pids.
        pids = job.pids()
    print(json.dumps({"mechanism": mechanism, "pids": pids}), flush=True)
    time.sleep(3600)


def alive(pid):
    if WINDOWS:
        import _winapi
        try:
            handle = _winapi.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        except OSError:
            return False
        try:
            return _winapi.WaitForSingleObject(handle, 0) == _winapi.WAIT_TIMEOUT
        finally:
            _winapi.CloseHandle(handle)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill(pid):
    if WINDOWS:
        import _winapi
        try:
            handle = _winapi.OpenProcess(0x0001, False, pid)
        except OSError:
            return
        try:
            _winapi.TerminateProcess(handle, 9)
        except OSError:
            pass
        finally:
            _winapi.CloseHandle(handle)
    else:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def run(use_pgjob):
    label = "with pgjob" if use_pgjob else "control, plain subprocess"
    proc = subprocess.Popen([sys.executable, HERE, "--owner", "pgjob" if use_pgjob else "plain"],
                            stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    pids = info["pids"]
    print(f"\n[{label}] owner pid {proc.pid} started a tree {pids} (mechanism: {info['mechanism']})")
    how = "TerminateProcess" if WINDOWS else "SIGKILL"
    print(f"[{label}] killing the owner with {how} ...")
    start = time.monotonic()
    proc.kill()
    proc.wait()
    deadline = start + 5.0
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.005)
    survivors = [p for p in pids if alive(p)]
    elapsed = (time.monotonic() - start) * 1000
    if survivors:
        print(f"[{label}] after {elapsed:.0f} ms, {len(survivors)} of {len(pids)} processes are "
              f"still running: {survivors}  <- orphans (cleaning them up)")
        for p in survivors:
            kill(p)
    else:
        print(f"[{label}] every member was gone {elapsed:.0f} ms after the owner died")
    proc.stdout.close()
    return survivors


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--owner":
        owner(sys.argv[2] == "pgjob")
        return 0
    platform = "Windows" if WINDOWS else sys.platform
    print(f"pgjob demo on {platform}, Python {sys.version.split()[0]}")
    protected = run(use_pgjob=True)
    control = run(use_pgjob=False)
    ok = not protected and bool(control)
    print("\nresult:", "pgjob left no orphans; the unprotected control did" if ok
          else "UNEXPECTED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
