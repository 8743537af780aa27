"""The process trees the teardown and job-operation benchmarks kill and query, and the owner
processes that hold them. Run by benchmarks/run.py, never imported by pgjob.

    member_tree.py build N [flat] make a tree of N processes (this one included), print one
                                  line "ready <host pid>" once every member runs, then sleep;
                                  "flat": no daemons, every member a child of this one
    member_tree.py owner MODE N   own a tree of N: MODE "pgjob" or "pgjob:<mechanism>" puts it
                                  in a kill-on-close pgjob.Job; "raw" (Windows only) in a Job
                                  Object made with the bare C calls, no pgjob Python layer.
                                  Prints {"pids": [...], "mechanism": ...} then blocks on stdin.

Linux: every other member is a daemon made the classic way (fork, setsid, fork, the middle
process exits), so half the tree are setsid grandchildren reparented to the namespace's init.
Windows: members are bare Pythons sleeping (`python -S -I`); every other one
is started by a middle process that exits at once, with DETACHED_PROCESS and a new process
group: the Windows form of an orphaned daemon.
"""
import json
import os
import subprocess
import sys
import time

WINDOWS = sys.platform == "win32"
SLEEP_ARGV = [b"sleep", b"100000"]
# Not `ping -n N 127.0.0.1`: under Wine 8 killing a ping mid-request can deadlock nsiproxy.sys
# (and mountmgr.sys beside it in winedevice.exe), after which every new process hangs.
WIN_SLEEPER = [sys.executable, "-S", "-I", "-c", "import time; time.sleep(100000)"]
DETACHED = 0x00000008 | 0x00000200  # DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP


def host_pid():
    """Our pid as the host sees it: /proc is the host's mount, even inside a PID namespace."""
    try:
        return int(os.readlink("/proc/self"))
    except OSError:
        return os.getpid()


def build_linux(n, daemons):
    # Exec barrier: every worker inherits `barrier_w` with O_CLOEXEC, so the read end sees EOF
    # only once every worker has exec'd sleep (or died): then the whole tree runs.
    barrier_r, barrier_w = os.pipe2(os.O_CLOEXEC)
    middles = []
    for i in range(n - 1):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(barrier_r)
                if daemons and i % 2:  # daemon: setsid, fork again, the middle exits
                    os.setsid()
                    if os.fork() != 0:
                        os._exit(0)
                os.execvp("sleep", SLEEP_ARGV)
            finally:
                os._exit(127)
        if daemons and i % 2:
            middles.append(pid)
    os.close(barrier_w)
    for pid in middles:
        os.waitpid(pid, 0)
    while os.read(barrier_r, 1):
        pass
    os.close(barrier_r)


def build_windows(n, daemons):
    import _winapi
    workers, handles = [], []
    middle_code = ("import subprocess, sys; p = subprocess.Popen(sys.argv[1:], creationflags=%d, "
                   "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)" % DETACHED)
    for i in range(n - 1):
        if daemons and i % 2:
            out = subprocess.run([sys.executable, "-S", "-c", middle_code, *WIN_SLEEPER],
                                 stdout=subprocess.PIPE, text=True, check=True).stdout
            pid = int(out)
        else:
            p = subprocess.Popen(WIN_SLEEPER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pid = p.pid
            workers.append(p)
        handles.append(_winapi.OpenProcess(0x00100000, False, pid))  # SYNCHRONIZE
    return workers, handles


def build(n, daemons=True):
    if WINDOWS:
        keep = build_windows(n, daemons)  # noqa: F841 (the Popen objects must stay referenced)
    else:
        build_linux(n, daemons)
    print(f"ready {host_pid()}", flush=True)
    while True:
        time.sleep(3600)


def owner(mode, n):
    here = os.path.abspath(__file__)
    argv = [sys.executable, here, "build", str(n)]
    if mode == "raw":
        # The Job Object with only the extension's one-to-one Win32 calls: no pgjob.Job.
        from pgjob import _jobobject as c
        import _winapi
        job = c.CreateJobObject(None)
        c.SetJobExtendedLimits(job, c.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, 0, 0, 0)
        c.AssignProcessToJobObject(job, _winapi.GetCurrentProcess())
        builder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        builder.stdout.readline()
        me = os.getpid()
        pids = [p for p in c.QueryJobProcessIdList(job) if p != me]
        mechanism = "raw_job_object"
    else:
        import pgjob
        _, _, mechanism = mode.partition(":")
        job = pgjob.Job(kill_on_close=True, mechanism=mechanism or None, on_unavailable="raise")
        builder = job.popen(argv, stdout=subprocess.PIPE, text=True)
        builder.stdout.readline()
        pids = job.pids()
        mechanism = job.mechanism
    print(json.dumps({"pids": sorted(pids), "mechanism": mechanism}), flush=True)
    sys.stdin.read()  # until the benchmark kills us (or closes stdin: clean exit)


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(int(sys.argv[2]), daemons=sys.argv[3:4] != ["flat"])
    elif sys.argv[1] == "owner":
        owner(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
