"""The owner process of the Linux orphan and protect_children tests: creates a job (or calls
protect_children(), or nothing: the control), starts the members of one scenario, waits until
each says it is ready, prints {"mechanism", "pids", ...} as one JSON line, then obeys stdin:
"exit" (leave the with-block normally), "raise" (leave it with an exception), or nothing at
all until the test SIGKILLs it.

usage: owner.py MECHANISM SCENARIO READY_DIR
MECHANISM: auto | pid_namespace | cgroup | pdeathsig | none | protect | plain
       owner.py checks protect|plain|raise READY_DIR
  runs a program's everyday machinery (threads, pools, multiprocessing, asyncio, subprocess,
  os.system, fork) before and after protect_children(), and reports what worked, the
  process's uid/cgroup/namespaces on both sides, and the cgroup its children start in.
"""
import json
import logging
import multiprocessing
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time

import pgjob

# tests/ (this file's parent folder's parent) for the helpers the suites share.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proc_helpers import children_by_parent, pids_with_argument, scaled  # noqa: E402

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
# A Python sleeper keeps READY_DIR in its argv (an exec'd `sleep` would not), so it is found
# again wherever it is reparented to: os.system's background job, a double fork.
PYSLEEP = [PY, "-c", "import sys, time; open(sys.argv[1] + '/' + sys.argv[2], 'w').close()\n"
                     "time.sleep(1000)"]
# A double fork without setsid: the middle process exits, the grandchild is reparented.
DOUBLE_FORK = [PY, "-c", """
import os, sys, time
d, name = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    if os.fork() == 0:
        open(f"{d}/{name}.orphan", "w").close()
        time.sleep(1000)
    os._exit(0)
os.wait()
open(f"{d}/{name}", "w").close()
time.sleep(1000)
"""]
# setsid(1) -f: a new session, forked away from its parent (which exits at once).
SETSID = ["setsid", "-f", "sh", "-c", 'touch "$0/$1"; sleep 1000; :']

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
    "doublefork": [("doublefork", DOUBLE_FORK, ["doublefork", "doublefork.orphan"])],
    "setsid": [("setsid", SETSID, ["setsid"])],
    # Spawned by a thread that existed before protect_children() (protect/plain only).
    "prethread": [("prethread", PYSLEEP, ["prethread"])],
    # Spawned by a multiprocessing.Pool worker (fork context) (protect/plain only).
    "pool": [("pool", PYSLEEP, ["pool"])],
    # os.system("... &"): the shell exits, its background job is reparented (protect/plain).
    "system": [("system", PYSLEEP, ["system"])],
    # Everything above at once, each by its own route (protect/plain only).
    "everything": [("sleep", SLEEP, ["sleep"]), ("busy", BUSY, ["busy"]),
                   ("tree", TREE, ["tree.a", "tree.b"]),
                   ("daemon", DAEMON, ["daemon", "daemon.daemon"]),
                   ("doublefork", DOUBLE_FORK, ["doublefork", "doublefork.orphan"]),
                   ("setsid", SETSID, ["setsid"]), ("thread", PYSLEEP, ["thread"]),
                   ("prethread", PYSLEEP, ["prethread"]), ("pool", PYSLEEP, ["pool"]),
                   ("system", PYSLEEP, ["system"]), ("asyncio", PYSLEEP, ["asyncio"])],
    # An asyncio program: members started by its loop (running since before the call) after
    # an asyncio.to_thread, by asyncio's create_subprocess_exec and by the Job's (protect only).
    "asyncio": [("asyncio", PYSLEEP, ["asyncio"]), ("asyncio_job", PYSLEEP, ["asyncio_job"])],
}
# How a member is started when there is no Job to call popen on (protect, plain).
ROUTE = {"thread": "thread", "prethread": "prethread", "pool": "pool", "system": "system",
         "asyncio": "asyncio", "asyncio_job": "asyncio_job"}
ASYNCIO = []     # the AsyncioThread of a scenario with asyncio routes
PROTECTION = []  # protect_children()'s Job


def wait_ready(names, timeout=20.0):
    deadline = time.monotonic() + scaled(timeout)
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


def cgroup_of(pid="self"):
    """The process's cgroup v2 path (the "0::" line of /proc/PID/cgroup); None if it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def cgroup2_mount():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def cgroup_members(path):
    """Host pids in cgroup `path` (relative to the cgroup2 mount) and below it."""
    mount = cgroup2_mount()
    if mount is None or path is None:
        return []
    pids = []
    for dirpath, _dirs, files in os.walk(os.path.join(mount, path.lstrip("/"))):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids.extend(int(line) for line in f if line.strip())
        except OSError:
            pass  # removed while we walked
    return pids


HELPER = os.path.realpath(os.path.join(os.path.dirname(pgjob.__file__), "pgjob-helper"))


def helper_processes():
    """Host pids running our pgjob-helper (an init or a watcher), with their cgroups; other
    users' processes can't be read and are not ours anyway."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                exe = os.readlink(f"/proc/{name}/exe")
            except OSError:
                continue
            if exe == HELPER:
                found[int(name)] = cgroup_of(name)
    return found


def process_state():
    """What protect_children() must leave alone where it can't protect, and what it changes
    where it can (the cgroup)."""
    namespaces = {}
    for ns in sorted(os.listdir("/proc/self/ns")):
        try:
            namespaces[ns] = os.stat(f"/proc/self/ns/{ns}").st_ino
        except OSError:
            pass
    return {"cgroup": cgroup_of(), "ns": namespaces, "uid": os.getuid(), "euid": os.geteuid(),
            "gid": os.getgid(), "egid": os.getegid(), "groups": sorted(os.getgroups()),
            "threads": threading.active_count()}


class PreThread:
    """A thread started before protect_children() that runs what it is given afterwards."""

    def __init__(self):
        self.stuck = False
        self.jobs = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            fn, box, done = self.jobs.get()
            try:
                box.append(("ok", fn()))
            except BaseException as exc:  # reported, not raised: the test reads it
                box.append(("error", f"{type(exc).__name__}: {exc}"))
            done.set()

    def call(self, fn, timeout=60):
        box, done = [], threading.Event()
        self.jobs.put((fn, box, done))
        if not done.wait(timeout):
            self.stuck = True
            raise TimeoutError("the pre-existing thread did not answer")
        status, value = box[0]
        if status == "error":
            raise RuntimeError(value)
        return value


class AsyncioThread:
    """An asyncio program's loop, running in its own thread since before protect_children()
    and used before it (a to_thread and a subprocess). After the call, `spawn` starts members
    from a coroutine that first uses asyncio.to_thread, by asyncio.create_subprocess_exec or
    by the protection Job's create_subprocess_exec; the loop keeps their Process objects."""

    def __init__(self):
        import asyncio
        self.asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.processes = []
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.run(self._before())

    async def _before(self):
        assert await self.asyncio.to_thread(sum, [1, 2]) == 3
        proc = await self.asyncio.create_subprocess_exec("true")
        assert await proc.wait() == 0

    def run(self, coroutine, timeout=60):
        return self.asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def spawn(self, argv, job=None):
        async def body():
            assert await self.asyncio.to_thread(sum, [3, 4]) == 7
            create = self.asyncio.create_subprocess_exec if job is None else job.create_subprocess_exec
            proc = await create(*argv, **QUIET)
            self.processes.append(proc)
            return proc.pid
        return self.run(body())


QUIET = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def start(argv):
    """A member with no copy of our stdout: an orphan holding the report pipe would keep the
    test's reader waiting for an end of file."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).pid


def spawn_detached(argv):
    """In a pool worker: start a member and leave it running (its pid goes back)."""
    return start(argv)


def spawn(route, argv, prethread, pool_box):
    """Start `argv` by `route`; return the pids we know of at once (for os.system: none)."""
    if route == "thread":
        box = []
        t = threading.Thread(target=lambda: box.append(start(argv)))
        t.start()
        t.join()
        return box
    if route == "prethread":
        return [prethread.call(lambda: start(argv))]
    if route == "pool":
        if not pool_box:
            pool_box.append(multiprocessing.get_context("fork").Pool(1))
        return [pool_box[0].apply(spawn_detached, (argv,))]
    if route in ("asyncio", "asyncio_job"):
        return [ASYNCIO[0].spawn(argv, PROTECTION[0] if route == "asyncio_job" else None)]
    if route == "system":
        status = os.system(shlex.join(argv) + " </dev/null >/dev/null 2>&1 &")
        if status != 0:
            raise SystemExit(f"os.system returned {status}")
        return []
    return [start(argv)]


def protected_pids(popen_pids, report):
    """Every process of ours: the members, whatever they forked (wherever it went: marker
    search), our own descendants (pool workers), and what shares the protection's cgroup or
    PID namespace where it gave us a new one."""
    roots = set(popen_pids) | set(started_for_this_owner()) | set(descendants(os.getpid()))
    pids = set(roots)
    for pid in roots:
        pids.update(descendants(pid))
    after, before = report["state_after"]["cgroup"], report["state_before"]["cgroup"]
    # Only a cgroup the call made for us: never the root or one of our old cgroup's ancestors,
    # which hold the rest of the machine (the test kills what this returns).
    if after and after != before and after != "/" and not (before + "/").startswith(
            after.rstrip("/") + "/"):
        pids.update(cgroup_members(after))
    own_ns = os.stat("/proc/self/ns/pid").st_ino
    for pid in popen_pids[:1]:
        try:
            child_ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
        except OSError:
            continue
        if child_ns != own_ns:  # a namespace of the job's: never the host's
            pids.update(all_in_namespace_of(pid))
    pids.discard(os.getpid())
    return only_younger_than_me(pids)


def only_younger_than_me(pids):
    """The processes started after this owner: nothing older can be one of ours, and the
    test kills what we report, so a wrong search must not name the machine's processes."""
    mine = start_ticks(os.getpid())
    return {pid for pid in pids if (start_ticks(pid) or -1) >= mine}


def start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


def run_protect_or_plain(members, ready_names, report):
    """No Job: plain subprocess etc. (the control), or after protect_children()."""
    prethread = PreThread()  # started before the call, as a program's threads would be
    if any(name.startswith("asyncio") for name, _, _ in members):
        ASYNCIO.append(AsyncioThread())
    report["state_before"] = process_state()
    report["helpers_before"] = helper_processes()
    if mechanism == "protect":
        job = pgjob.protect_children(on_unavailable="log")
        PROTECTION.append(job)
        report["mechanism"] = job.mechanism
        report["in_job"] = pgjob.in_job()
    else:
        report["mechanism"] = "plain"
    report["state_after"] = process_state()
    pool_box = []
    popen_pids = []
    for name, argv, _ in members:
        popen_pids += spawn(ROUTE.get(name, "main"), argv + [ready_dir, name], prethread, pool_box)
    wait_ready(ready_names)
    if scenario == "stopped":
        for pid in popen_pids:
            os.kill(pid, signal.SIGSTOP)
    pids = protected_pids(popen_pids, report)
    report["pids"] = sorted(pids)
    # A pool worker ends by itself when its pool's pipe closes (the owner died): the control
    # does not count it as a survivor.
    report["pool_workers"] = [w.pid for w in pool_box[0]._pool] if pool_box else []
    report["cgroups"] = {pid: cgroup_of(pid) for pid in pids}
    report["helpers"] = helper_processes()
    report["log"] = log_lines
    print(json.dumps(report), flush=True)
    sys.stdin.readline()


def own_cgroup():
    """For pool workers: the cgroup they run in."""
    return cgroup_of()


def _check_thread():
    box = []
    t = threading.Thread(target=lambda: box.append(threading.get_ident()))
    t.start()
    t.join(30)
    assert box and box[0] != threading.get_ident(), "the thread did not run"


def _check_thread_pool():
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(abs, range(-8, 0))) == list(range(8, 0, -1))


def _check_mp_pool(method):
    def check():
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map(abs, range(-6, 0), chunksize=1) == list(range(6, 0, -1))
            worker = pool.apply(os.getpid)
            assert worker != os.getpid()
    return check


def _check_asyncio():
    import asyncio

    async def body():
        assert await asyncio.to_thread(sum, [1, 2]) == 3
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, sum, [3, 4]) == 7
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
        assert await proc.wait() == 7
    asyncio.run(body())


def _check_subprocess():
    assert subprocess.run(["sh", "-c", "exit 5"]).returncode == 5
    assert subprocess.check_output(["echo", "hi"]) == b"hi\n"


def _check_os_system():
    assert os.waitstatus_to_exitcode(os.system("exit 3")) == 3


def _check_fork():
    pid = os.fork()
    if pid == 0:
        os._exit(4)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 4


CHECKS = {
    "thread": _check_thread,
    "thread_pool": _check_thread_pool,
    "multiprocessing_fork": _check_mp_pool("fork"),
    "multiprocessing_spawn": _check_mp_pool("spawn"),
    "asyncio": _check_asyncio,
    "subprocess": _check_subprocess,
    "os_system": _check_os_system,
    "fork": _check_fork,
}


CHECK_TIMEOUT = scaled(20)


def _alarm(signum, frame):
    raise TimeoutError(f"no result within {CHECK_TIMEOUT:.0f} s")


def _in_main_thread(check):
    """A broken program can hang rather than fail (a Pool whose workers die at start is
    restarted forever): SIGALRM turns that into a TimeoutError."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CHECK_TIMEOUT)
    try:
        check()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_battery(prethread):
    """{check: "ok" | "what went wrong"}, from the main thread and (pre_ prefix) from a
    thread that was started before protect_children()."""
    results = {}
    for name, check in CHECKS.items():
        try:
            _in_main_thread(check)
            results[name] = "ok"
        except BaseException as exc:  # noqa: B902 - reported for the test to assert on
            results[name] = f"{type(exc).__name__}: {exc}"
    for name, check in CHECKS.items():
        if prethread.stuck:
            results["pre_" + name] = "not run: the pre-existing thread is stuck"
            continue
        try:
            prethread.call(check, timeout=CHECK_TIMEOUT)
            results["pre_" + name] = "ok"
        except BaseException as exc:  # noqa: B902 - reported for the test to assert on
            results["pre_" + name] = f"{type(exc).__name__}: {exc}"
    return results


def child_cgroups(prethread):
    """The cgroup each way of starting a process puts the child in."""
    read = ["cat", "/proc/self/cgroup"]

    def zero_line(text):
        return [line[3:] for line in text.splitlines() if line.startswith("0::")][0]

    def by_thread():
        box = []
        t = threading.Thread(target=lambda: box.append(subprocess.check_output(read, text=True)))
        t.start()
        t.join(30)
        return box[0]

    def by_pool(method):
        with multiprocessing.get_context(method).Pool(1) as pool:
            return pool.apply(own_cgroup)

    def by_system():
        target = os.path.join(ready_dir, "system.cgroup")
        os.system(f"cat /proc/self/cgroup > {shlex.quote(target)}")
        with open(target) as f:
            return zero_line(f.read())

    ways = {"main": lambda: zero_line(subprocess.check_output(read, text=True)),
            "thread": lambda: zero_line(by_thread()),
            "prethread": lambda: zero_line(prethread.call(
                lambda: subprocess.check_output(read, text=True), timeout=CHECK_TIMEOUT)),
            "multiprocessing_fork": lambda: by_pool("fork"),
            "multiprocessing_spawn": lambda: by_pool("spawn"),
            "os_system": by_system}
    out = {}
    for way, how in ways.items():
        box = []
        try:
            _in_main_thread(lambda: box.append(how()))
            out[way] = box[0]
        except BaseException as exc:  # noqa: B902 - reported: the test names the route
            out[way] = f"failed: {type(exc).__name__}: {exc}"
    return out


def run_checks(mode):
    """owner.py checks protect|plain|raise READY_DIR"""
    global ready_dir
    ready_dir = sys.argv[3]
    prethread = PreThread()
    report = {"mode": mode, "state_before": process_state()}
    report["before"] = run_battery(prethread)
    report["state_between"] = process_state()
    # Right around the call: other sessions on the machine make and remove cgroups and
    # helpers of their own, so a wide window would see theirs.
    report["helpers_before"] = helper_processes()
    report["cgroup_dirs_before"] = cgroup_tree()
    if mode == "protect":
        job = pgjob.protect_children(on_unavailable="log")
        report["mechanism"] = job.mechanism
    elif mode == "raise":
        try:
            job = pgjob.protect_children(on_unavailable="raise")
            report["mechanism"] = job.mechanism
        except BaseException as exc:  # noqa: B902 - the test asserts its class
            report["raised"] = [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]
            report["raised_errno"] = getattr(exc, "errno", None)
            report["raised_message"] = str(exc)
            report["mechanism"] = None
    else:
        report["mechanism"] = "plain"
    report["cgroup_dirs_after"] = cgroup_tree()
    report["helpers_after"] = helper_processes()
    report["state_after"] = process_state()
    report["after"] = run_battery(prethread)
    report["child_cgroups"] = child_cgroups(prethread)
    report["state_end"] = process_state()
    report["log"] = log_lines
    print(json.dumps(report), flush=True)
    sys.stdin.readline()


def cgroup_tree():
    """The cgroup directories this user owns under the one this process started in: a failed
    protect_children() must leave none behind. (Only ours: other tests on the machine make
    and remove theirs meanwhile.)"""
    mount = cgroup2_mount()
    if mount is None:
        return []
    top = os.path.join(mount, (report_cgroup_start or "/").lstrip("/"))
    found = []
    for dirpath, dirs, _files in os.walk(top):
        for d in dirs:
            try:
                if os.stat(os.path.join(dirpath, d)).st_uid == os.geteuid():
                    found.append(os.path.relpath(os.path.join(dirpath, d), mount))
            except OSError:
                pass  # removed while we walked
    return sorted(found)


report_cgroup_start = cgroup_of()


def main():
    if sys.argv[1] == "checks":
        return run_checks(sys.argv[2])
    members = SCENARIOS[scenario]
    ready_names = [n for _, _, names in members for n in names]
    report = {"scenario": scenario}
    if mechanism in ("plain", "protect"):
        return run_protect_or_plain(members, ready_names, report)
    report["cgroup"] = cgroup_of()
    kwargs = {} if mechanism == "auto" else {"mechanism": mechanism}
    with pgjob.Job(**kwargs) as job:
        report["mechanism"] = job.mechanism
        popens = []
        for name, argv, _ in members:
            if scenario == "thread":
                # Spawn from a worker thread that then exits: PR_SET_PDEATHSIG would fire here.
                box = []
                t = threading.Thread(target=lambda: box.append(
                    job.popen(argv + [ready_dir, name], **QUIET)))
                t.start()
                t.join()
                popens.append(box[0])
            else:
                popens.append(job.popen(argv + [ready_dir, name], **QUIET))
        wait_ready(ready_names)
        if scenario == "stopped":
            # Every member, and (pid_namespace) the namespace's init: a stopped init can't
            # poll the owner's pidfd, so this exercises its PR_SET_PDEATHSIG backstop. Only
            # in a namespace of our own: in the host's, "PID 1" is the machine's init.
            inits = []
            if job.mechanism == "pid_namespace":
                inits = [pid for pid in all_in_namespace_of(popens[0].pid)
                         if inner_pid(pid) == 1]
            report["stopped_init"] = inits
            # The members themselves, not job.pids(): that may list a member's transient
            # `touch`, and a stopped grandchild is beyond what pdeathsig promises.
            for pid in [p.pid for p in popens] + inits:
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
        report["pids"] = sorted(only_younger_than_me(
            set(job.pids()) | set(descendants(os.getpid())) | set(started_for_this_owner())))
        report["direct"] = [p.pid for p in popens]
        report["cgroups"] = {pid: cgroup_of(pid) for pid in report["pids"]}
        report["helpers"] = helper_processes()
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
