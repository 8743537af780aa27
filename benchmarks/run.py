"""pgjob's benchmarks: spawn cost, teardown after the owner dies, job operations, import time.

    python benchmarks/run.py [--quick] [--only spawn,asyncio,teardown,ops,import,costs] [--out DIR]
    scripts/winepy benchmarks/run.py [--quick] ...      the same for the Windows backend, under Wine

Every comparison runs side by side in one process, interleaved round by round in a shuffled
order, and reports medians and the ratio to the reference. Results go to benchmarks/results/
(--quick: benchmarks/results/quick/, not committed): <platform>.json and <platform>.md, and on
Linux benchmarks.png, which also plots every Wine JSON found beside it. docs/benchmarks.md says
what each number means.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
TREE = os.path.join(HERE, "member_tree.py")
WINDOWS = sys.platform == "win32"
LINUX = sys.platform.startswith("linux")

import pgjob  # noqa: E402  (after the path is set)
from member_tree import WIN_SLEEPER  # noqa: E402  (benchmarks/ is sys.path[0])

clock = time.perf_counter


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ms(seconds):
    return seconds * 1000.0


def median_ms(samples):
    return round(ms(statistics.median(samples)), 4)


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- 1. spawn cost ------------------------------------------------------------------------------

def spawn_contenders():
    """name -> (setup, spawn_once, teardown): spawn_once starts the trivial program and waits."""
    if WINDOWS:
        argv = ["hostname"]  # a small native Wine/Windows program: there is no /bin/true
        quiet = {"stdout": subprocess.DEVNULL}
    else:
        argv = ["/bin/true"]
        quiet = {}
    found = {}
    found["subprocess"] = (None, lambda: subprocess.Popen(argv, **quiet).wait(), None)
    mechanisms = ["job_object"] if WINDOWS else ["pid_namespace", "pdeathsig", "none"]
    for mech in mechanisms:
        try:
            job = pgjob.Job(mechanism=mech, on_unavailable="raise")
        except pgjob.JobError as exc:
            log(f"spawn: mechanism {mech} unavailable here: {exc}")
            continue
        found[f"pgjob[{mech}]"] = (None, lambda job=job: job.popen(argv, **quiet).wait(), job.close)
    # A private job per process, as pgjob.Popen(...) without job= does.
    found["pgjob.Popen (own job)"] = (None, lambda: _popen_own_job(argv, quiet), None)
    try:
        import processkit
    except ImportError:
        log("spawn: processkit-py is not installed (pip install processkit-py): left out")
    else:
        command = processkit.Command(argv[0])
        group = processkit.ProcessGroup()
        group.__enter__()
        found["processkit ProcessGroup"] = (None, lambda: group.exit_code(command),
                                            lambda: group.__exit__(None, None, None))
        found["processkit Command"] = (None, lambda: command.exit_code(), None)
    return argv, found


def _popen_own_job(argv, quiet):
    with pgjob.Popen(argv, **quiet) as p:
        p.wait()


def bench_spawn(quick):
    rounds, batch = (6, 10) if quick else (30, 20)
    if WINDOWS:
        rounds, batch = (4, 5) if quick else (12, 10)
    argv, contenders = spawn_contenders()
    samples = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:  # warm-up: first-use costs (probes, the spawner thread, imports)
        for _ in range(3):
            contenders[name][1]()
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            spawn = contenders[name][1]
            for _ in range(batch):
                t = clock()
                spawn()
                samples[name].append(clock() - t)
    for name, (_, _, teardown) in contenders.items():
        if teardown:
            teardown()
    base = statistics.median(samples["subprocess"])
    rows = []
    for name in contenders:
        med = statistics.median(samples[name])
        rows.append({"contender": name, "median_ms": median_ms(samples[name]),
                     "p10_ms": round(ms(_quantile(samples[name], 0.1)), 4),
                     "p90_ms": round(ms(_quantile(samples[name], 0.9)), 4),
                     "ratio_to_subprocess": round(med / base, 3), "samples": len(samples[name])})
    return {"program": argv, "rounds": rounds, "batch": batch, "rows": rows}


# -- 1b. asyncio spawn cost ------------------------------------------------------------------

def bench_asyncio(quick):
    """job.create_subprocess_exec against asyncio.create_subprocess_exec, on the OS's default
    loop: start the trivial program, await its exit; interleaved rounds, medians."""
    import asyncio
    argv, _ = spawn_contenders()
    quiet = {"stdout": subprocess.DEVNULL}
    rounds, batch = (6, 10) if quick else (30, 20)
    if WINDOWS:
        rounds, batch = (4, 5) if quick else (12, 10)
    job = pgjob.Job()
    contenders = {"asyncio.create_subprocess_exec": asyncio.create_subprocess_exec,
                  f"job.create_subprocess_exec [{job.mechanism}]": job.create_subprocess_exec}
    samples = {name: [] for name in contenders}

    async def once(create):
        t = clock()
        proc = await create(*argv, **quiet)
        await proc.wait()
        return clock() - t

    async def main():
        names = list(contenders)
        for name in names:  # warm-up: first-use costs (the hook, the child watcher)
            for _ in range(3):
                await once(contenders[name])
        for _ in range(rounds):
            random.shuffle(names)
            for name in names:
                for _ in range(batch):
                    samples[name].append(await once(contenders[name]))

    try:
        asyncio.run(main())
    finally:
        job.close()
    base = statistics.median(samples["asyncio.create_subprocess_exec"])
    rows = [{"contender": name, "median_ms": median_ms(samples[name]),
             "p10_ms": round(ms(_quantile(samples[name], 0.1)), 4),
             "p90_ms": round(ms(_quantile(samples[name], 0.9)), 4),
             "ratio_to_asyncio": round(statistics.median(samples[name]) / base, 3),
             "samples": len(samples[name])} for name in contenders]
    return {"program": argv, "rounds": rounds, "batch": batch, "rows": rows}


def _quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- 2. teardown after the owner dies -----------------------------------------------------------

def read_line(proc, timeout):
    """One line of proc's stdout within `timeout` seconds (select on the pipe; Linux only)."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise RuntimeError(f"pid {proc.pid}: no line within {timeout} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"pid {proc.pid} exited ({proc.wait()}) before its line")
        data += chunk
    return data.decode()


def namespace_members(pid):
    """Host pids of every process in the PID namespace `pid` lives in."""
    ns = os.stat(f"/proc/{pid}/ns/pid")
    key = (ns.st_dev, ns.st_ino)
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = os.stat(f"/proc/{name}/ns/pid")
            except OSError:
                continue  # exited while we looked
            if (st.st_dev, st.st_ino) == key:
                found.append(int(name))
    return sorted(found)


def become_subreaper():
    """Orphans (the namespace init once its owner is dead) are reparented to us, so we reap
    them: nothing is left as a zombie of a container init that never reaps."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_all_exited_linux(pidfds, t0, timeout):
    """Seconds from t0 until every pidfd turned readable (its process has exited), and the
    number of processes still running at `timeout`."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    left = set(pidfds)
    last = t0
    deadline = t0 + timeout
    while left:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(max(1, int(remaining * 1000))):
            if fd in left:
                left.discard(fd)
                poller.unregister(fd)
                last = clock()
    for fd in left:  # survivors: a benchmark never leaves processes behind
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return last - t0, len(left)


def teardown_once_linux(side, n, map_ids):
    env = child_env()
    if side == "pgjob":
        proc = subprocess.Popen([sys.executable, TREE, "owner", "pgjob:pid_namespace", str(n)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        pids = json.loads(read_line(proc, 120))["pids"]
    else:
        user = ["--user", "--map-root-user"] if map_ids else []
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", *user,
                                 sys.executable, TREE, "build", str(n)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
        builder = int(read_line(proc, 120).split()[1])
        pids = namespace_members(builder)
    pidfds = [os.pidfd_open(pid) for pid in pids]
    try:
        t0 = clock()
        os.kill(proc.pid, signal.SIGKILL)
        seconds, survivors = wait_all_exited_linux(pidfds, t0, timeout=30)
    finally:
        for fd in pidfds:
            os.close(fd)
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()
        reap_orphans()
    return seconds, len(pids), survivors


def wait_all_exited_windows(handles, t0, timeout):
    import _winapi
    survivors = 0
    for h in handles:
        remaining = max(0, t0 + timeout - clock())
        if _winapi.WaitForSingleObject(h, int(remaining * 1000)) == _winapi.WAIT_TIMEOUT:
            survivors += 1
            try:
                _winapi.TerminateProcess(h, 9)
            except OSError:
                pass
    return clock() - t0, survivors


def teardown_once_windows(side, n):
    import _winapi
    mode = "pgjob" if side == "pgjob" else "raw"
    proc = subprocess.Popen([sys.executable, TREE, "owner", mode, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=child_env(), text=True)
    pids = json.loads(proc.stdout.readline())["pids"]
    handles = []
    for pid in pids:
        # SYNCHRONIZE | PROCESS_TERMINATE: wait for it, and kill it if it survives.
        handles.append(_winapi.OpenProcess(0x00100000 | 0x0001, False, pid))
    try:
        t0 = clock()
        proc.kill()  # TerminateProcess: no Python shutdown, no close(): the kernel's job
        seconds, survivors = wait_all_exited_windows(handles, t0, timeout=30)
    finally:
        for h in handles:
            _winapi.CloseHandle(h)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    return seconds, len(pids), survivors


def bench_teardown(quick):
    if WINDOWS:
        sizes = {1: 3, 10: 3, 100: 2} if quick else {1: 10, 10: 8, 100: 5}
        sides = ["pgjob", "raw_job_object"]
        once = teardown_once_windows
        reference = "raw_job_object"
    else:
        sizes = {1: 5, 10: 5, 100: 3, 1000: 2} if quick else {1: 20, 10: 20, 100: 10, 1000: 6}
        sides = ["pgjob", "raw_unshare"]
        from pgjob import _linux_helpers as _linux
        _, map_ids = _linux.namespace_flags()
        once = lambda side, n: teardown_once_linux(side, n, map_ids)  # noqa: E731
        reference = "raw_unshare"
    rows = []
    for n, reps in sizes.items():
        samples = {s: [] for s in sides}
        members = {s: 0 for s in sides}
        survivors = {s: 0 for s in sides}
        for _ in range(reps):
            order = list(sides)
            random.shuffle(order)
            for side in order:
                seconds, count, left = once(side, n)
                samples[side].append(seconds)
                members[side] = count
                survivors[side] += left
        ref = statistics.median(samples[reference])
        for side in sides:
            rows.append({"n": n, "side": side, "processes": members[side],
                         "median_ms": median_ms(samples[side]),
                         "min_ms": round(ms(min(samples[side])), 4),
                         "max_ms": round(ms(max(samples[side])), 4),
                         "ratio_to_raw": round(statistics.median(samples[side]) / ref, 3),
                         "survivors": survivors[side], "repetitions": reps})
        log(f"teardown N={n}: " + ", ".join(f"{s} {median_ms(samples[s]):.2f} ms" for s in sides))
    return {"reference": reference, "rows": rows}


# -- 3. job operations ---------------------------------------------------------------------------

def bench_ops(quick):
    """pids(), contains(), stats() on a job of N members: one tree of N processes under one
    job.popen() ("tree"), and N separate job.popen() children ("popens")."""
    if WINDOWS:
        sizes = [1, 10, 100] if quick else [1, 10, 50, 100]
        mechanisms = ["job_object"]
        layouts = ["tree"]
    else:
        sizes = [1, 10, 100, 1000]
        mechanisms = ["pid_namespace", "pdeathsig"]
        layouts = ["tree", "popens"]
    reps = 10 if quick else 40
    rows = []
    for mech in mechanisms:
        for layout in layouts:
            for n in sizes:
                if layout == "popens" and mech == "pdeathsig" and n > 100 and quick:
                    continue
                rows.extend(_ops_for(mech, layout, n, reps))
                log(f"ops {mech}/{layout} N={n}: " + ", ".join(
                    f"{r['op']} {r['median_ms']:.3f} ms" for r in rows[-3:]))
    return {"rows": rows, "repetitions": reps}


def _ops_for(mech, layout, n, reps):
    quiet = {"stdout": subprocess.PIPE, "stdin": subprocess.DEVNULL}
    with pgjob.Job(mechanism=mech, on_unavailable="raise") as job:
        if layout == "tree":
            # pdeathsig can't follow a setsid daemon once it is reparented away (its documented
            # limit): its tree has no daemons, or they would escape the benchmark.
            shape = ["flat"] if mech == "pdeathsig" else []
            builder = job.popen([sys.executable, TREE, "build", str(n), *shape], env=child_env(),
                                **quiet)
            builder.stdout.readline()
            builder.stdout.close()
            popens = [builder]
        else:
            argv = (WIN_SLEEPER if WINDOWS else ["sleep", "100000"])
            popens = [job.popen(argv, stdout=subprocess.DEVNULL) for _ in range(n)]
        members = job.pids()
        target = popens[-1].pid
        ops = {"pids": job.pids, "contains": lambda: job.contains(target), "stats": job.stats}
        samples = {op: [] for op in ops}
        names = list(ops)
        for _ in range(reps):
            random.shuffle(names)
            for op in names:
                t = clock()
                ops[op]()
                samples[op].append(clock() - t)
        assert job.contains(target)
        watch = _watch_gone(members)
    for p in popens:
        p.wait()
    left = watch()
    if left:
        raise RuntimeError(f"ops {mech}/{layout} N={n}: {left} members outlived the job")
    return [{"mechanism": mech, "layout": layout, "n": n, "members": len(members), "op": op,
             "median_ms": median_ms(samples[op]),
             "per_member_us": round(ms(statistics.median(samples[op])) * 1000 / len(members), 3)}
            for op in ops]


def _watch_gone(pids):
    """Returns a function that waits (up to 10 s) until every one of `pids` has exited, kills
    the survivors and returns how many there were: no benchmark leaves processes behind."""
    if WINDOWS:
        import _winapi
        handles = []
        for pid in pids:
            try:
                handles.append(_winapi.OpenProcess(0x00100000 | 0x0001, False, pid))
            except OSError:
                pass  # already gone
        def check():
            try:
                return wait_all_exited_windows(handles, clock(), 10)[1]
            finally:
                for h in handles:
                    _winapi.CloseHandle(h)
        return check
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass  # already gone
    def check():
        try:
            return wait_all_exited_linux(fds, clock(), 10)[1]
        finally:
            for fd in fds:
                os.close(fd)
            reap_orphans()
    return check


# -- 4. import time ------------------------------------------------------------------------------

def bench_import(quick):
    """`import pgjob` in fresh interpreters, with compiled bytecode (as installed), measured two
    ways: -X importtime's cumulative microseconds, and the wall clock of `python -c "import
    pgjob"` minus `python -c "pass"` (interleaved)."""
    runs = 8 if quick else 30
    if WINDOWS:
        runs = 5 if quick else 15
    pycache = tempfile.mkdtemp(prefix="pgjob-bench-pycache-")
    env = child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = pycache  # bytecode goes here, not into the source tree
    py = [sys.executable]
    subprocess.run(py + ["-c", "import pgjob"], env=env, check=True)  # compile once
    selftime, wall_import, wall_pass = [], [], []
    for _ in range(runs):
        out = subprocess.run(py + ["-X", "importtime", "-c", "import pgjob"], env=env,
                             stderr=subprocess.PIPE, text=True, check=True).stderr
        for line in out.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*pgjob$", line)
            if m:
                selftime.append(int(m.group(2)) / 1e6)
        order = [("import", wall_import), ("pass", wall_pass)]
        random.shuffle(order)
        for what, bucket in order:
            code = "import pgjob" if what == "import" else "pass"
            t = clock()
            subprocess.run(py + ["-c", code], env=env, check=True)
            bucket.append(clock() - t)
    _rmtree(pycache)
    return {"runs": runs, "importtime_cumulative_ms": median_ms(selftime),
            "wall_import_ms": median_ms(wall_import), "wall_pass_ms": median_ms(wall_pass),
            "wall_difference_ms": round(median_ms(wall_import) - median_ms(wall_pass), 4)}


# -- 5. the costs issue 9 sets targets for -------------------------------------------------------

COST_TARGETS = {"memory_extra_mib": 16.0, "popen_own_job_ratio": 1.3, "job_popen_ratio": 1.05}

# An owner of `size` MiB that touches all of it, starts one `sleep` member (side "pgjob": in a
# Job, made after the memory is touched; side "subprocess": a plain subprocess.Popen), then
# rewrites all its memory, and says what that cost the machine (MemAvailable before and after
# the rewrite) and what the helper (the Job's init) holds (smaps_rollup).
_MEMORY_OWNER = r"""
import json, os, subprocess, sys
side, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024

def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])

def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out

memory = bytearray(size)
for i in range(0, size, 4096):
    memory[i] = 1
before = mem_available_kib()
helper = None
if side == "pgjob":
    import pgjob
    job = pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
    member = job.popen(["sleep", "600"])
    helper = job._impl._init.pid
else:
    member = subprocess.Popen(["sleep", "600"])
for i in range(0, size, 4096):
    memory[i] = 2
after = mem_available_kib()
result = {"lost_kib": before - after, "helper": rollup(helper) if helper else None}
member.kill()
member.wait()
if side == "pgjob":
    job.close()
print(json.dumps(result), flush=True)
"""


def _memory_cost(side, size_mib):
    out = subprocess.run([sys.executable, "-c", _MEMORY_OWNER, side, str(size_mib)],
                         env=child_env(), stdout=subprocess.PIPE, check=True, timeout=300).stdout
    return json.loads(out)


FLOOR = "floor: setns spawn, no job bookkeeping"
FLOOR_B = "floor of (b): a bare init around the floor's spawn"


def _floor_popen_class(namespace_fds):
    """subprocess.Popen whose one fork_exec call is pgjob's C spawn into the PID namespace
    whose (pidns_fd, userns_fd) `namespace_fds()` gives, with nothing around it."""
    import types
    from pgjob import _jobobject, _linux_spawn, _spawn_hook
    execute_child = subprocess.Popen._execute_child
    last = [-1]

    def fork_exec(*args):
        pidns_fd, userns_fd = namespace_fds()
        pid, pidfd = _jobobject.spawn(
            *_linux_spawn._PICK_SPAWN_FIELDS(args + _linux_spawn._MISSING),
            pidns_fd=pidns_fd, userns_fd=userns_fd, pdeathsig=False,
            chdir_marker=_linux_spawn._CHDIR_MARKER, cgroup_fd=-1, data_limit=-1)
        if last[0] >= 0:
            os.close(last[0])
        last[0] = pidfd
        return pid
    namespace = dict(execute_child.__globals__, **_spawn_hook.fork_exec_replacements(fork_exec))
    routed = types.FunctionType(execute_child.__code__, namespace, execute_child.__name__,
                                execute_child.__defaults__, execute_child.__closure__)

    class FloorPopen(subprocess.Popen):
        def _execute_child(self, *args):
            routed(self, *args)
    return FloorPopen


def _namespace_floor(job, argv):
    """A diagnostic, not a product path: subprocess.Popen whose one fork_exec call is pgjob's C
    spawn into the job's PID namespace with nothing around it (no member tracking, no events,
    no borrow of the Job): how much of (c) the kernel's namespace path alone costs."""
    init = job._impl._init
    floor_popen = _floor_popen_class(lambda: (init.pidns_fd, init.userns_fd))
    return lambda: floor_popen(argv).wait()


def _private_job_floor(argv):
    """A diagnostic for (b): what a private job costs with no Python Job at all. The C calls
    alone: start_init (clone of a new PID namespace, exec of pgjob-helper init), the
    namespace's files opened, the floor's spawn into it, then SIGKILL to the init and its
    reap, as Job.close() does. The gap between this row and subprocess is the kernel's
    price of one namespace and one more process per call."""
    import signal
    from pgjob import _jobobject, _linux_helpers
    flags, map_ids = _linux_helpers.namespace_flags()
    helper = _linux_helpers.helper_path()
    fds = [-1, -1]
    floor_popen = _floor_popen_class(lambda: (fds[0], fds[1]))
    kill = _jobobject.PGJOB_INIT_KILL

    def once():
        pid, pidfd, control = _jobobject.start_init(
            clone_flags=flags, map_ids=map_ids, on_owner_exit=kill, on_eof=kill,
            arm_pdeathsig=True, helper_path=helper)
        fds[0] = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        fds[1] = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC) if map_ids else -1
        try:
            floor_popen(argv).wait()
        finally:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            for fd in (pidfd, control, *fds):
                if fd >= 0:
                    os.close(fd)
    return once


def bench_costs(quick):
    """Issue 9's targets, side by side with subprocess.Popen: (a) the machine memory a 512 MiB
    owner loses when it rewrites its memory after creating a Job and starting a member, (b)
    `pgjob.Popen(["true"]).wait()` with its private job, (c) `job.popen(["true"]).wait()` in a
    long-lived job."""
    if not LINUX:
        return {"skipped": "the costs benchmark is Linux's (issue 9)"}
    size_mib = 512
    memory_runs = 2 if quick else 5
    lost = {"pgjob": [], "subprocess": []}
    helper_kib = []
    for _ in range(memory_runs):
        sides = list(lost)
        random.shuffle(sides)
        for side in sides:
            r = _memory_cost(side, size_mib)
            lost[side].append(r["lost_kib"] / 1024)
            if r["helper"]:
                helper_kib.append(r["helper"])
    memory = {
        "owner_mib": size_mib, "runs": memory_runs,
        "lost_mib_median": {side: round(statistics.median(v), 1) for side, v in lost.items()},
        "extra_mib": round(statistics.median(lost["pgjob"]) - statistics.median(lost["subprocess"]), 1),
        "helper_rss_kib": statistics.median(h["Rss"] for h in helper_kib),
        "helper_pss_kib": statistics.median(h["Pss"] for h in helper_kib),
        "helper_private_dirty_kib": statistics.median(h["Private_Dirty"] for h in helper_kib),
    }

    argv = ["true"]
    job = pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
    contenders = {
        "subprocess.Popen(argv).wait()": lambda: subprocess.Popen(argv).wait(),
        "pgjob.Popen(argv).wait()": lambda: pgjob.Popen(argv).wait(),
        "job.popen(argv).wait()": lambda: job.popen(argv).wait(),
        FLOOR: _namespace_floor(job, argv),
        FLOOR_B: _private_job_floor(argv),
    }
    rounds, batch = (6, 20) if quick else (40, 25)
    samples = {name: [] for name in contenders}
    # CPU time (ours and our reaped children's, user + system) per call, per batch: what the
    # work costs the machine, which moves less than wall time when other work competes.
    cpu = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:
        for _ in range(10):
            contenders[name]()

    import resource

    def cpu_now():  # getrusage: microseconds (os.times() counts clock ticks of 10 ms)
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            spawn = contenders[name]
            c0 = cpu_now()
            for _ in range(batch):
                t = clock()
                spawn()
                samples[name].append(clock() - t)
            cpu[name].append((cpu_now() - c0) / batch)
    job.close()
    reference = "subprocess.Popen(argv).wait()"
    base = statistics.median(samples[reference])
    cpu_base = statistics.mean(cpu[reference])
    rows = [{"contender": name, "median_ms": median_ms(s),
             "p10_ms": round(ms(_quantile(s, 0.1)), 4), "p90_ms": round(ms(_quantile(s, 0.9)), 4),
             "ratio_to_subprocess": round(statistics.median(s) / base, 3), "samples": len(s),
             "cpu_ms": round(ms(statistics.mean(cpu[name])), 4),
             "cpu_ratio_to_subprocess": round(statistics.mean(cpu[name]) / cpu_base, 3)}
            for name, s in samples.items()]
    return {"program": argv, "rounds": rounds, "batch": batch, "rows": rows, "memory": memory,
            "targets": COST_TARGETS}


def _rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


# -- output ----------------------------------------------------------------------------------------

def platform_name():
    if WINDOWS:
        from pgjob import _jobobject
        return "wine-py%d.%d" % sys.version_info[:2] if _jobobject.WineVersion() else "windows"
    return "linux"


def describe():
    info = {"platform": platform_name(), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if WINDOWS:
        from pgjob import _jobobject
        info["wine"] = _jobobject.WineVersion()
    else:
        info["kernel"] = platform.release()
        info["euid"] = os.geteuid()
    try:
        import processkit
        info["processkit"] = getattr(processkit, "__version__", None) or processkit.version()
    except Exception:
        pass
    return info


def markdown(result):
    info = result["info"]
    out = [f"# pgjob benchmarks: {info['platform']}", "",
           "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    if "spawn" in result:
        s = result["spawn"]
        out += ["## 1. Spawn cost: start `%s` and wait" % " ".join(s["program"]), "",
                f"{s['rounds']} interleaved rounds of {s['batch']} spawns per contender.", "",
                "| contender | median ms | p10 ms | p90 ms | ratio to subprocess |",
                "|---|---:|---:|---:|---:|"]
        out += [f"| {r['contender']} | {r['median_ms']:.3f} | {r['p10_ms']:.3f} | "
                f"{r['p90_ms']:.3f} | {r['ratio_to_subprocess']:.2f}x |" for r in s["rows"]]
        out.append("")
    if "asyncio" in result:
        a = result["asyncio"]
        out += ["## 1b. asyncio spawn cost: start `%s` and await its exit" % " ".join(a["program"]),
                "", f"{a['rounds']} interleaved rounds of {a['batch']} spawns per contender, "
                "on the default event loop.", "",
                "| contender | median ms | p10 ms | p90 ms | ratio to asyncio |",
                "|---|---:|---:|---:|---:|"]
        out += [f"| {r['contender']} | {r['median_ms']:.3f} | {r['p10_ms']:.3f} | "
                f"{r['p90_ms']:.3f} | {r['ratio_to_asyncio']:.2f}x |" for r in a["rows"]]
        out.append("")
    if "teardown" in result:
        t = result["teardown"]
        out += ["## 2. Teardown: owner killed, until every member has exited", "",
                f"Reference: {t['reference']}. `processes`: every process of the tree that had to die "
                "(pgjob: what job.pids() listed; raw: the namespace or job).", "",
                "| N | side | processes | median ms | min ms | max ms | ratio to raw | survivors |",
                "|---:|---|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['n']} | {r['side']} | {r['processes']} | {r['median_ms']:.2f} | "
                f"{r['min_ms']:.2f} | {r['max_ms']:.2f} | {r['ratio_to_raw']:.2f}x | "
                f"{r['survivors']}/{r['repetitions']} runs |" for r in t["rows"]]
        out.append("")
    if "ops" in result:
        o = result["ops"]
        out += ["## 3. Job operations", "", f"Median of {o['repetitions']} calls each.", "",
                "| mechanism | layout | N | members | op | median ms | per member µs |",
                "|---|---|---:|---:|---|---:|---:|"]
        out += [f"| {r['mechanism']} | {r['layout']} | {r['n']} | {r['members']} | {r['op']} | "
                f"{r['median_ms']:.3f} | {r['per_member_us']:.2f} |" for r in o["rows"]]
        out.append("")
    if "import" in result:
        i = result["import"]
        out += ["## 4. `import pgjob`", "", f"{i['runs']} fresh interpreters, bytecode compiled.",
                "", "| measure | ms |", "|---|---:|",
                f"| -X importtime, cumulative | {i['importtime_cumulative_ms']:.2f} |",
                f"| wall: `-c 'import pgjob'` | {i['wall_import_ms']:.2f} |",
                f"| wall: `-c 'pass'` | {i['wall_pass_ms']:.2f} |",
                f"| wall difference | {i['wall_difference_ms']:.2f} |", ""]
    if "costs" in result and "rows" in result["costs"]:
        c, t = result["costs"], result["costs"]["targets"]
        m = c["memory"]
        out += ["## 5. Issue 9's costs, next to subprocess.Popen", "",
                f"(a) A {m['owner_mib']} MiB owner touches its memory, creates a Job, starts a "
                f"member (`sleep`), then rewrites all its memory; MemAvailable lost meanwhile, "
                f"median of {m['runs']} runs per side, and the Job's init (smaps_rollup):", "",
                "| side | MemAvailable lost MiB |", "|---|---:|"]
        out += [f"| {side} | {v:.1f} |" for side, v in m["lost_mib_median"].items()]
        out += ["", f"Extra for the Job: **{m['extra_mib']:.1f} MiB** (target < "
                f"{t['memory_extra_mib']:.0f} MiB); the init: Rss {m['helper_rss_kib']} KiB, Pss "
                f"{m['helper_pss_kib']} KiB, Private_Dirty {m['helper_private_dirty_kib']} KiB.", "",
                f"(b), (c): `{' '.join(c['program'])}`, {c['rounds']} interleaved rounds of "
                f"{c['batch']}. CPU: user + system time of the owner and its reaped children "
                "per call (mean over the batches).", "",
                "| contender | median ms | p10 ms | p90 ms | ratio to subprocess | CPU ms | CPU ratio "
                "| target |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        target = {"pgjob.Popen(argv).wait()": f"<= {t['popen_own_job_ratio']}x",
                  "job.popen(argv).wait()": f"<= {t['job_popen_ratio']}x",
                  FLOOR: "diagnostic", FLOOR_B: "diagnostic"}
        out += [f"| `{r['contender']}` | {r['median_ms']:.3f} | {r['p10_ms']:.3f} | "
                f"{r['p90_ms']:.3f} | {r['ratio_to_subprocess']:.2f}x | {r['cpu_ms']:.3f} | "
                f"{r['cpu_ratio_to_subprocess']:.2f}x | {target.get(r['contender'], 'reference')} |"
                for r in c["rows"]]
        out.append("")
    return "\n".join(out)


def plot(outdir):
    """benchmarks.png: one column per platform result found in outdir."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("plot: matplotlib is not installed (pip install matplotlib): no PNG")
        return None
    results = []
    for name in sorted(os.listdir(outdir)):
        if name.endswith(".json"):
            with open(os.path.join(outdir, name)) as f:
                results.append(json.load(f))
    results.sort(key=lambda r: r["info"]["platform"] != "linux")
    fig, axes = plt.subplots(3, len(results), figsize=(6.5 * len(results), 13), squeeze=False)
    for col, res in enumerate(results):
        name = res["info"]["platform"]
        ax = axes[0][col]
        if "spawn" in res:
            rows = res["spawn"]["rows"]
            ax.barh([r["contender"] for r in rows], [r["median_ms"] for r in rows],
                    xerr=[[r["median_ms"] - r["p10_ms"] for r in rows],
                          [r["p90_ms"] - r["median_ms"] for r in rows]], color="tab:blue")
            for i, r in enumerate(rows):
                ax.text(r["median_ms"], i, f" {r['ratio_to_subprocess']:.2f}x", va="center")
            ax.set_xlabel("ms per spawn+wait (median, p10-p90)")
            ax.invert_yaxis()
        ax.set_title(f"{name}: spawn cost")
        ax = axes[1][col]
        if "teardown" in res:
            rows = res["teardown"]["rows"]
            for side in dict.fromkeys(r["side"] for r in rows):
                pts = [r for r in rows if r["side"] == side]
                ax.plot([r["n"] for r in pts], [r["median_ms"] for r in pts], "o-", label=side)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N (processes in the tree)")
            ax.set_ylabel("ms until all exited (median)")
            ax.legend()
        ax.set_title(f"{name}: teardown after the owner is killed")
        ax = axes[2][col]
        if "ops" in res:
            rows = res["ops"]["rows"]
            keys = dict.fromkeys((r["mechanism"], r["layout"], r["op"]) for r in rows)
            for key in keys:
                pts = [r for r in rows if (r["mechanism"], r["layout"], r["op"]) == key]
                ax.plot([r["members"] for r in pts], [r["per_member_us"] for r in pts], "o-",
                        label="/".join(key))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("members")
            ax.set_ylabel("µs per member (median call / members)")
            ax.legend(fontsize=7)
        ax.set_title(f"{name}: job operations")
    fig.tight_layout()
    path = os.path.join(outdir, "benchmarks.png")
    fig.savefig(path, dpi=80)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", default="spawn,asyncio,teardown,ops,import")
    parser.add_argument("--out", help="output directory (default benchmarks/results[/quick])")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    args = parser.parse_args()
    outdir = args.out or os.path.join(HERE, "results", "quick" if args.quick else "")
    os.makedirs(outdir, exist_ok=True)
    if args.plot_only:
        print(plot(outdir))
        return
    if LINUX:
        become_subreaper()
    result = {"info": describe(), "quick": args.quick}
    benches = {"spawn": bench_spawn, "asyncio": bench_asyncio, "teardown": bench_teardown, "ops": bench_ops,
               "import": bench_import, "costs": bench_costs}
    for name in args.only.split(","):
        log(f"--- {name}")
        t = clock()
        result[name] = benches[name](args.quick)
        log(f"--- {name}: {clock() - t:.1f} s")
    # The costs benchmark alone has a file of its own, so it can be rerun without the others.
    base = os.path.join(outdir, result["info"]["platform"]
                        + ("-costs" if args.only == "costs" else ""))
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    if LINUX:
        path = plot(outdir)
        if path:
            log(f"wrote {path}")
    log(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
