"""Regressions of issue F on Linux, each checked against what the kernel or plain
subprocess.Popen does: the fork_exec shape of every CPython, pgjob's descriptors above 2,
the errno of unmapped user/group ids, protect_children() as an ordinary user, a killed init,
_jobobject.spawn's argument handling, and a fork's inert copy of the backend."""
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import types

import pytest

import pgjob
import pgjob._records  # noqa: F401  imported now: a child that dropped to uid 1500 can't read /root
from pgjob import _jobobject, _spawn_hook
from conftest import SRC, start_time
from proc_helpers import wait_until

pytestmark = pytest.mark.linux

HERE = os.path.dirname(os.path.abspath(__file__))
ORDINARY_UID = 1500
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_DUMPABLE = 4


# -- helpers ------------------------------------------------------------------------------------

def run_forked(fn, *args, uid=ORDINARY_UID, timeout=30.0):
    """fn(*args) in a fork of this process, as an ordinary user: dropped to `uid` when we are
    root (after every import, so nothing under /root needs to be readable), as we are
    otherwise. Returns what fn returned (JSON-able); raises with the child's traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                # setuid() made us non-dumpable, which makes /proc/self root's (the init
                # could not write its uid_map); a program exec'd as the user is dumpable.
                if _LIBC.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
            result = {"value": fn(*args)}
        except BaseException:
            result = {"error": traceback.format_exc()}
        try:
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"forked child did not report in {timeout} s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    result = json.loads(data)
    if "error" in result:
        raise AssertionError("in the forked child:\n" + result["error"])
    return result["value"]


def _gone(pids):
    return all(start_time(pid) is None for pid in pids)


# -- 1. fork_exec shape of each CPython -----------------------------------------------------------

@pytest.mark.parametrize("version, count, hook", [
    ((3, 9), 21, "_posixsubprocess"), ((3, 10), 21, "_posixsubprocess"),
    ((3, 11), 23, "_fork_exec"), ((3, 12), 23, "_fork_exec"), ((3, 13), 23, "_fork_exec"),
    ((3, 14), 22, "_fork_exec"), ((3, 15), 22, "_fork_exec"),
])
def test_fork_exec_shape_table(version, count, hook):
    found_hook, names = _spawn_hook.fork_exec_shape(version)
    assert (len(names), found_hook) == (count, hook)


def test_this_pythons_fork_exec_call_is_the_one_pgjob_knows(job_factory):
    """What this Python's _execute_child really passes: intercept the call in plain
    subprocess (no pgjob) and compare with the table."""
    seen = []

    def record(*args):
        seen.append(len(args))
        raise OSError(errno.EPERM, "recorded")

    hook, names = _spawn_hook.fork_exec_shape(sys.version_info)
    execute_child = subprocess.Popen._execute_child
    patched = types.FunctionType(
        execute_child.__code__,
        dict(execute_child.__globals__, _USE_POSIX_SPAWN=False,
             **({"_fork_exec": record} if hook == "_fork_exec"
                else {"_posixsubprocess": _spawn_hook._PosixsubprocessWithJob(record)})),
        execute_child.__name__, execute_child.__defaults__, execute_child.__closure__)

    class Recording(subprocess.Popen):
        _execute_child = patched

    with pytest.raises(OSError, match="recorded"):
        Recording(["true"])
    assert seen == [len(names)]
    assert _spawn_hook.PROBLEM is None
    # and through pgjob, on this Python
    assert job_factory(mechanism="pid_namespace").popen(["true"]).wait(10) == 0


def test_a_changed_interface_is_reported_at_import_and_at_spawn(tmp_path):
    """A Python whose _execute_child no longer calls fork_exec by the name pgjob replaces:
    simulated by replacing _execute_child before pgjob is imported (control: the same
    process spawns fine with plain subprocess)."""
    script = (
        "import subprocess, warnings, logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format='LOG %(message)s')\n"
        "def _execute_child(self, *args):\n"
        "    return some_new_private_name(*args)\n"
        "subprocess.Popen._execute_child = _execute_child\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import pgjob\n"
        "for w in caught:\n"
        "    print('WARN', w.category.__name__, w.message)\n"
        "job = pgjob.Job(mechanism='pid_namespace')\n"
        "try:\n"
        "    job.popen(['true'])\n"
        "except pgjob.UnsupportedError as exc:\n"
        "    print('SPAWN', type(exc).__name__, exc)\n"
        "job.close()\n")
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    version = "Python %d.%d" % sys.version_info[:2]
    lines = out.stdout.splitlines()
    warn = [line for line in lines if line.startswith("WARN RuntimeWarning")]
    log = [line for line in lines if line.startswith("LOG")]
    spawn = [line for line in lines if line.startswith("SPAWN UnsupportedError")]
    assert warn and version in warn[0] and "job.popen() is unavailable" in warn[0], out.stdout
    assert log and version in log[0], out.stdout
    assert spawn and version in spawn[0], out.stdout


# -- 2. descriptors above 2, close-on-exec ----------------------------------------------------------

def _stdio_scenario(mechanism, scenario, closed, tracker):
    read_end, write_end = os.pipe()
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "stdio_scenario.py"), str(write_end), mechanism,
         scenario, ",".join(map(str, closed))],
        pass_fds=[write_end], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tracker.track(proc.pid)
    os.close(write_end)
    try:
        _, err = proc.communicate(timeout=30)
        with os.fdopen(read_end, "rb") as f:
            report = json.loads(f.read() or b'{"error": "no report"}')
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert "error" not in report, report.get("error", "") + err.decode()
    assert wait_until(lambda: _gone(report["pids"]), 10)
    return report


def _assert_held_above_stdio(report):
    assert report["held"], "the job holds no descriptor at all?"
    for fd, (target, cloexec) in report["held"].items():
        assert int(fd) > 2 and cloexec, (fd, target, cloexec, report["held"])


@pytest.mark.parametrize("mechanism", ["pid_namespace", "pdeathsig"])
@pytest.mark.parametrize("closed", [[0], [1], [0, 1, 2]])
def test_spawn_with_stdio_closed_then_restored(mechanism, closed, tracker):
    """(a) A member's pidfd taken on a closed stdin/stdout: once the caller restores that
    descriptor, the job polls /dev/null as the member, calls it exited and closes it."""
    report = _stdio_scenario(mechanism, "spawn_then_restore", closed, tracker)
    assert report["taken_while_closed"] == []
    assert report["second_returncode"] == 0
    assert report["job_waits_for_first"] and report["first_is_member"]
    assert report["stdio_after"] == {str(fd): "/dev/null" for fd in closed}
    _assert_held_above_stdio(report)


@pytest.mark.parametrize("mechanism", ["pid_namespace", "pdeathsig"])
def test_job_made_with_stdio_closed_then_restored(mechanism, tracker):
    """(b) The job's namespace descriptors on 0-2, replaced by the caller's dup2: every
    later spawn failed with EINVAL from setns(CLONE_NEWPID)."""
    report = _stdio_scenario(mechanism, "restore_after_job", [0, 1, 2], tracker)
    assert report["taken_while_closed"] == []
    assert "spawn_error" not in report, report["spawn_error"]
    assert report["second_returncode"] == 0
    assert report["stdio_after"] == {"0": "/dev/null", "1": "/dev/null", "2": "/dev/null"}
    _assert_held_above_stdio(report)


def test_every_descriptor_a_job_holds_is_above_stdio_and_close_on_exec(job_factory):
    """The same as seen from /proc in this process, for a job with a running member."""
    before = set(os.listdir("/proc/self/fd"))
    job = job_factory(mechanism="pid_namespace")
    p = job.popen(["sleep", "60"])
    try:
        held = set(os.listdir("/proc/self/fd")) - before
        held = [int(fd) for fd in held if os.path.exists(f"/proc/self/fd/{fd}")]
        assert held
        for fd in held:
            assert fd > 2 and fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd
    finally:
        p.kill()
        p.wait(10)


# -- 3. user=/group=/extra_groups= as an ordinary user ----------------------------------------------

def _id_outcomes(cases):
    def outcome(popen, kwargs):
        try:
            p = popen(["true"], **kwargs)
        except OSError as exc:
            return [type(exc).__name__, exc.errno]
        return ["exit", p.wait(10)]

    job = pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
    try:
        return {
            "spawn_path_userns": job._impl._init.userns_fd >= 0,
            "outcomes": [[outcome(job.popen, kwargs), outcome(subprocess.Popen, kwargs)]
                         for kwargs in cases],
        }
    finally:
        job.close()


def test_foreign_ids_give_what_subprocess_gives():
    me = ORDINARY_UID if os.geteuid() == 0 else os.geteuid()
    cases = [{"user": 0}, {"group": 0}, {"extra_groups": [0]}, {"extra_groups": []},
             {"user": 0, "group": 0, "extra_groups": []}, {"user": me}]
    result = run_forked(_id_outcomes, cases)
    assert result["spawn_path_userns"], "expected an unprivileged user namespace"
    for kwargs, (ours, theirs) in zip(cases, result["outcomes"]):
        assert ours == theirs, (kwargs, ours, theirs)
    # control: the comparison can tell outcomes apart
    assert result["outcomes"][0][1] == ["PermissionError", errno.EPERM]
    assert result["outcomes"][-1][1] == ["exit", 0]


# -- 4. protect_children() as an ordinary user: tests/linux/test_protect_children.py (it no
# longer unshares anything; with and without a delegated cgroup) ---------------------------------


# -- 5. the namespace's init killed ------------------------------------------------------------------

def _popen_after_init_killed():
    job = pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
    try:
        assert job.popen(["true"]).wait(10) == 0
        init = job._impl._init
        # Read before the kill: once the Job has closed itself its backend holds nothing.
        with_userns = init.userns_fd >= 0
        os.kill(init.pid, signal.SIGKILL)  # as a person, or the OOM killer, would
        assert wait_until(lambda: start_time(init.pid) is None, 10)  # a zombie, or gone
        try:
            job.popen(["true"])
        except OSError as exc:
            first = {"type": type(exc).__name__, "message": str(exc),
                     "cause": [type(exc.__cause__).__name__,
                               getattr(exc.__cause__, "errno", None)]}
        else:
            first = {"type": None}
        try:
            job.popen(["true"])
        except OSError as exc:
            second = type(exc).__name__
        else:
            second = None
        return {"init": init.pid, "first": first, "second": second, "closed": job.closed,
                "userns": with_userns}
    finally:
        job.close()


def _check_dead_init(result):
    first = result["first"]
    assert first["type"] == "JobClosedError", first
    assert str(result["init"]) in first["message"] and "namespace is gone" in first["message"]
    assert first["cause"] == ["OSError", errno.ENOMEM], first  # the kernel's answer, kept


def test_killed_init_is_job_closed_error():
    """In this process (as root: setns from the spawning thread)."""
    result = _popen_after_init_killed()
    _check_dead_init(result)


def test_killed_init_is_job_closed_error_unprivileged():
    """As an ordinary user: the spawn goes through the user-namespace helper."""
    result = run_forked(_popen_after_init_killed)
    assert result["userns"]
    _check_dead_init(result)


def test_killed_init_closes_the_job():
    """The contract with pgjob.Job (_job.py): a backend's JobClosedError marks the Job closed
    and a second popen raises JobClosedError too. Needs the _job.py side of issue F."""
    result = _popen_after_init_killed()
    _check_dead_init(result)
    assert result["second"] == "JobClosedError"
    assert result["closed"] is True


# -- 6. _jobobject.spawn -----------------------------------------------------------------------------

def _raw_spawn(argv, executables, fds_to_keep=None, pidns_fd=-1):
    """_jobobject.spawn of a direct child, its stdout a pipe; (pid, pidfd, output, status)."""
    errpipe_read, errpipe_write = os.pipe2(os.O_CLOEXEC)
    out_read, out_write = os.pipe2(os.O_CLOEXEC)
    keep = (errpipe_write,) if fds_to_keep is None else fds_to_keep
    try:
        pid, pidfd = _jobobject.spawn(
            argv, executables, None, None, True, keep, -1, -1, out_read, out_write, -1, -1,
            errpipe_read, errpipe_write, True, False, -1, -1, None, -1, -1, pidns_fd, -1,
            False, False)
    finally:
        os.close(errpipe_write)
        os.close(out_write)
    try:
        with os.fdopen(out_read, "rb") as f:
            output = f.read()
        error = os.read(errpipe_read, 100)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(errpipe_read)
    os.close(pidfd)
    return output, error, status


@pytest.mark.parametrize("bad", [(5, 3), (3, 3), (-1, 3), ("3",), (2**40,), (3.0,)])
def test_spawn_rejects_bad_fds_to_keep_as_posixsubprocess_does(bad):
    with pytest.raises(ValueError, match=r"^bad value\(s\) in fds_to_keep$"):
        _raw_spawn([b"true"], [b"/bin/true"], fds_to_keep=bad)
    # control: _posixsubprocess itself says the same for the same tuple
    import _posixsubprocess
    args = dict(zip(_spawn_hook.FORK_EXEC_ARGS, [None] * len(_spawn_hook.FORK_EXEC_ARGS)))
    args.update(args=[b"true"], executables=[b"/bin/true"], close_fds=True, fds_to_keep=bad,
                p2cread=-1, p2cwrite=-1, c2pread=-1, c2pwrite=-1, errread=-1, errwrite=-1,
                errpipe_read=1000, errpipe_write=1001, restore_signals=True, start_new_session=False,
                process_group=-1, gid=None, groups=None, uid=None, umask=-1, allow_vfork=True)
    with pytest.raises(ValueError, match=r"^bad value\(s\) in fds_to_keep$"):
        _posixsubprocess.fork_exec(*(args[name] for name in _spawn_hook.FORK_EXEC_ARGS))


def test_spawn_accepts_sorted_unique_fds_to_keep():
    read_end, write_end = os.pipe()
    try:
        output, error, status = _raw_spawn([b"true"], [b"/bin/true"])
        assert (output, error, os.waitstatus_to_exitcode(status)) == (b"", b"", 0)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_spawn_copies_its_argument_lists_before_releasing_the_gil():
    """Another thread replaces the items of the argv and executables lists while the child,
    sharing our memory, still reads them: a long PATH walk (thousands of missing
    directories) keeps the child on its way to exec. The mutation starts only once the child
    exists (the GIL is released then), so the call itself was given the original lists; the
    program must run with exactly those."""
    misses = [b"/nonexistent-pgjob-dir/%d/echo" % i for i in range(20000)]
    marker = b"pgjob-argv-" + b"A" * 40
    stop = threading.Event()
    caught = []

    def children_of(tid):
        with open(f"/proc/self/task/{tid}/children") as f:
            return set(f.read().split())

    def mutate(argv, executables, spawning_tid, earlier):
        # Earlier children of that thread (inits, members not reaped yet) don't count.
        while not stop.is_set():
            if children_of(spawning_tid) - earlier:
                break
        else:
            return
        caught.append(True)
        n = 0
        while not stop.is_set():
            n += 1
            argv[1] = b"pgjob-argv-" + (b"%040d" % n)  # frees the item the child reads
            executables[-1] = b"/bin/ech" + bytes([48 + n % 10])

    bad = []
    for _ in range(10):
        argv = [b"echo", bytes(bytearray(marker))]
        executables = misses + [bytes(bytearray(b"/bin/echo"))]
        stop.clear()
        tid = threading.get_native_id()
        mutator = threading.Thread(target=mutate,
                                   args=(argv, executables, tid, children_of(tid)))
        mutator.start()
        try:
            output, error, status = _raw_spawn(argv, executables)
        finally:
            stop.set()
            mutator.join()
        if (output, error, os.waitstatus_to_exitcode(status)) != (marker + b"\n", b"", 0):
            bad.append((output, error, status))
    assert caught, "the mutating thread never saw the child: the test tested nothing"
    assert not bad, bad


def _spawn_while_helpers_are_killed():
    """Spawn through the user-namespace helper while a thread SIGKILLs every helper it sees
    (a child of ours in our own PID namespace that is neither a member nor an init)."""
    job = pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
    me, own_ns = os.getpid(), os.readlink("/proc/self/ns/pid")
    stop = threading.Event()
    killed = []

    def kill_helpers():
        while not stop.is_set():
            for name in os.listdir("/proc"):
                if not name.isdigit() or int(name) == me:
                    continue
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        data = f.read()
                    ppid = int(data[data.rindex(b")") + 2:].split()[1])
                    if ppid == me and os.readlink(f"/proc/{name}/ns/pid") == own_ns:
                        os.kill(int(name), signal.SIGKILL)
                        killed.append(int(name))
                except (OSError, ValueError):
                    continue

    # The program's PATH walk keeps the helper waiting (CLONE_VFORK) long enough to be seen.
    env = {"PATH": ":".join(f"/nonexistent-pgjob-dir/{i}" for i in range(20000)) + ":/bin"}
    killer = threading.Thread(target=kill_helpers)
    killer.start()
    outcomes = []
    try:
        # Until a spawn failed: a helper killed after its clone returned has done its work,
        # and that spawn succeeds.
        deadline = time.monotonic() + 20
        while not outcomes and time.monotonic() < deadline:
            try:
                p = job.popen(["true"], env=env)
            except SystemError as exc:
                outcomes.append(["SystemError", str(exc), None])
            except OSError as exc:
                outcomes.append([type(exc).__name__, str(exc), getattr(exc, "syscall", None)])
            else:
                p.wait(10)
    finally:
        stop.set()
        killer.join()
    # Nothing of the failed spawns is left: no zombie, no running program, only the init.
    children = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(b")") + 2:].split()[1]) == me:
            children.append(int(name))
    init = job._impl._init.pid
    job.close()
    return {"killed": killed, "outcomes": outcomes, "children": children, "init": init}


def test_spawn_helper_killed_by_a_signal_is_an_oserror_and_leaves_nothing():
    result = run_forked(_spawn_while_helpers_are_killed, timeout=60)
    if not result["outcomes"]:
        pytest.skip(f"no helper was killed before it reported in 20 s ({len(result['killed'])} "
                    "killed later): the race was never won here")
    for kind, message, syscall in result["outcomes"]:
        assert kind != "SystemError", message
        assert "namespace helper" in message and "killed by signal 9" in message, message
        assert syscall and syscall.startswith("namespace helper"), syscall
    assert result["children"] == [result["init"]], result


# -- 7. os.fork() in the owner -----------------------------------------------------------------------

def _fork_and_use_the_job(mechanism):
    job = pgjob.Job(mechanism=mechanism, on_unavailable="raise")
    p = job.popen(["sleep", "60"])
    init = job._impl._init.pid if mechanism == "pid_namespace" else None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        report = {}
        try:
            held = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{name}")
                except OSError:
                    continue
                if "pidfd" in target or target.startswith(("pid:", "user:", "socket:")):
                    held.append(target)
            report["held"] = held
            for what, action in (("terminate", job.terminate), ("close", job.close),
                                 ("popen", lambda: job.popen(["true"]))):
                try:
                    action()
                    report[what] = None
                except Exception as exc:
                    report[what] = type(exc).__name__
        finally:
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = json.loads(f.read())
    os.waitpid(child, 0)
    try:
        return {"report": report, "member_alive": p.poll() is None,
                "init_alive": init is None or start_time(init) is not None,
                "job_works": job.popen(["true"]).wait(10)}
    finally:
        job.close()
        p.wait(10)


@pytest.mark.parametrize("mechanism", ["pid_namespace", "pdeathsig"])
def test_a_fork_of_the_owner_leaves_the_job_alone(mechanism):
    result = run_forked(_fork_and_use_the_job, mechanism)
    report = result["report"]
    assert report["held"] == [], report  # the fork holds no pidfd, namespace or control socket
    assert report["popen"] == "JobClosedError", report
    assert result["member_alive"] and result["init_alive"], result
    assert result["job_works"] == 0
