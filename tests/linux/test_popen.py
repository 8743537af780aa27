"""subprocess.Popen compatibility through job.popen(), in both Linux mechanisms: pipes,
communicate, env/cwd, exec errors, returncode (negative for signals), send_signal,
terminate, kill, timeouts; and what Popen.pid means in a PID namespace."""
import os
import signal
import subprocess
import sys
import threading

import pytest

import pgjob
from conftest import UNPRIVILEGED_UIDS
from proc_helpers import wait_until

pytestmark = pytest.mark.linux

MECHANISMS = ["pid_namespace", "pdeathsig"]


@pytest.fixture(params=MECHANISMS)
def job(request, job_factory):
    job = job_factory(mechanism=request.param, on_unavailable="raise")
    assert job.mechanism == request.param
    return job


def test_pipes_and_communicate(job):
    p = job.popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(b"hello\n" * 10000, timeout=10)
    assert out == b"hello\n" * 10000 and err == b"" and p.returncode == 0


def test_text_mode_stderr_to_stdout_env_and_cwd(job, tmp_path):
    p = job.popen(["sh", "-c", 'echo "$PGJOB_X $(pwd)"; echo err >&2'], stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT, text=True, env={"PGJOB_X": "x", "PATH": os.environ["PATH"]},
                  cwd=tmp_path)
    out, _ = p.communicate(timeout=10)
    assert out == f"x {tmp_path}\nerr\n"


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_code(job, code):
    p = job.popen(["sh", "-c", f"exit {code}"])
    assert p.wait(10) == code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGSEGV, signal.SIGUSR1])
def test_death_by_signal_is_a_negative_returncode(job, sig):
    p = job.popen(["sh", "-c", f"kill -{int(sig)} $$"])
    assert p.wait(10) == -sig


def _started(job, argv, **kwargs):
    """A member that has finished starting: it writes one line once it runs."""
    p = job.popen(["sh", "-c", "echo ready; exec " + " ".join(argv)], stdout=subprocess.PIPE, **kwargs)
    assert p.stdout.readline() == b"ready\n"
    return p


def test_terminate_kill_send_signal(job):
    p = _started(job, ["sleep", "1000"])
    p.terminate()
    assert p.wait(10) == -signal.SIGTERM
    p = _started(job, ["sleep", "1000"])
    p.kill()
    assert p.wait(10) == -signal.SIGKILL
    p = _started(job, ["sleep", "1000"])
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == -signal.SIGINT
    p.send_signal(signal.SIGTERM)  # after exit: a no-op, as in subprocess


def test_signal_handled_by_the_program_is_delivered(job):
    p = job.popen([sys.executable, "-c", "import signal, sys, time\n"
                   "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
                   "print('ready', flush=True)\ntime.sleep(100)"], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    p.terminate()
    assert p.wait(10) == 7


def test_timeouts(job):
    p = _started(job, ["sleep", "1000"])
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(timeout=0.05)
    with pytest.raises(subprocess.TimeoutExpired):
        p.communicate(timeout=0.05)
    p.kill()
    p.communicate(timeout=10)
    assert p.returncode == -signal.SIGKILL


def _outcome(popen_class, argv, **kwargs):
    try:
        p = popen_class(argv, **kwargs)
    except OSError as exc:
        return type(exc), exc.errno, exc.filename
    return p.wait(10), None, None


@pytest.mark.parametrize("argv, kwargs", [
    (["/nonexistent/program"], {}),
    (["no-such-program-on-path"], {}),
    (["true"], {"cwd": "/nonexistent/dir"}),
    (["NOT_EXECUTABLE"], {}),
    (["true"], {"cwd": "NOT_EXECUTABLE"}),
])
def test_exec_errors_are_what_subprocess_raises(job, tmp_path, argv, kwargs):
    plain = tmp_path / "plain.txt"
    plain.write_text("data")
    plain.chmod(0o644)
    argv = [str(plain) if a == "NOT_EXECUTABLE" else a for a in argv]
    kwargs = {k: (str(plain) if v == "NOT_EXECUTABLE" else v) for k, v in kwargs.items()}
    expected = _outcome(subprocess.Popen, argv, **kwargs)
    assert issubclass(expected[0], OSError)
    assert _outcome(job.popen, argv, **kwargs) == expected
    assert job.popen(["true"]).wait(10) == 0  # the job is still usable


def test_pass_fds_and_new_session(job):
    r, w = os.pipe()
    try:
        p = job.popen([sys.executable, "-c", f"import os; os.write({w}, b'%d' % (os.getsid(0) == os.getpid()))"],
                      pass_fds=[w], start_new_session=True)
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"1"
        assert p.wait(10) == 0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_preexec_fn_is_rejected_clearly(job):
    with pytest.raises(pgjob.UnsupportedError, match="preexec_fn"):
        job.popen(["true"], preexec_fn=lambda: None)


def test_popen_pid_is_a_host_pid_and_a_member(job):
    p = _started(job, ["sleep", "1000"])
    assert os.path.exists(f"/proc/{p.pid}")
    assert job.contains(p) and job.contains(p.pid) and p.pid in job.pids()
    assert not job.contains(os.getpid())
    p.kill()
    p.wait(10)
    assert wait_until(lambda: not job.pids(), 5)


def test_popen_pid_is_the_program_itself(job):
    """No init or helper in between: the program's own host pid, as its NSpid line says
    (host pid first, then its pid in each nested namespace)."""
    p = job.popen(["grep", "NSpid:", "/proc/self/status"], stdout=subprocess.PIPE)
    nspid = [int(x) for x in p.communicate(timeout=10)[0].split()[1:]]
    assert p.returncode == 0 and nspid[0] == p.pid
    if job.mechanism == "pid_namespace":
        assert len(nspid) == 2 and nspid[1] > 1  # inside the job's namespace, not its PID 1
    else:
        assert len(nspid) == 1


def test_parent_is_this_process(job):
    p = job.popen(["sh", "-c", "echo $PPID; exec sleep 1000"], stdout=subprocess.PIPE)
    inner_ppid = int(p.stdout.readline())
    with open(f"/proc/{p.pid}/stat", "rb") as f:
        host_ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
    assert host_ppid == os.getpid()
    # Seen from inside the namespace, the parent is outside it: pid 0.
    assert inner_ppid == (0 if job.mechanism == "pid_namespace" else os.getpid())
    p.kill()
    p.wait(10)
    p.stdout.close()


def test_pid_inside_the_namespace_is_not_the_host_pid(job_factory):
    """The documented caveat: a program writing its own pid (a pidfile) writes an inner pid."""
    job = job_factory(mechanism="pid_namespace")
    p = job.popen(["sh", "-c", "echo $$"], stdout=subprocess.PIPE)
    inner = int(p.communicate(timeout=10)[0])
    assert inner > 1  # the init is 1
    assert p.pid != inner


def test_sigterm_without_a_handler_is_minus_15(job):
    """The program is not a PID 1, so default signal dispositions apply."""
    p = job.popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(100)"],
                  stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    p.terminate()
    assert p.wait(10) == -signal.SIGTERM
    p.stdout.close()


def test_spawn_from_a_thread_that_exits(job):
    box = []
    t = threading.Thread(target=lambda: box.append(_started(job, ["sleep", "1000"])))
    t.start()
    t.join()
    p = box[0]
    # No PR_SET_PDEATHSIG tied to that thread (pid_namespace) or a long-lived spawner
    # (pdeathsig): the member still runs.
    assert not wait_until(lambda: p.poll() is not None, 0.3)
    p.kill()
    assert p.wait(10) == -signal.SIGKILL


def _open_fds():
    """{fd: what it refers to}, without the listing's own (already closed) descriptor."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass
    return found


def test_spawn_from_threads(job):
    results = []
    fds_before = _open_fds()
    threads_before = len(os.listdir("/proc/self/task"))

    def spawn():
        p = job.popen(["sh", "-c", "exit 5"])
        results.append(p.wait(10))

    threads = [threading.Thread(target=spawn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [5] * 8
    assert wait_until(lambda: len(os.listdir("/proc/self/task")) <= max(threads_before, 2), 5)
    assert job.wait(timeout=5)  # notes the exits: the job lets go of the pidfds
    leaked = {fd: target for fd, target in _open_fds().items() if fds_before.get(fd) != target}
    assert not leaked


def test_a_long_lived_job_does_not_hold_a_descriptor_per_process(job):
    # (After a first spawn: as root the spawning thread keeps one descriptor of its own,
    # the namespace its children go back to, for its whole life.)
    assert job.popen(["true"]).wait(10) == 0
    fds_before = len(_open_fds())
    for _ in range(50):
        assert job.popen(["true"]).wait(10) == 0
    # Each spawn lets go of the pidfds of members that have exited: one is left at most.
    assert len(_open_fds()) <= fds_before + 1


def _child_namespace_depth(**kwargs):
    """How many PID namespaces deep a plain subprocess child of this thread is (NSpid)."""
    plain = subprocess.Popen(["grep", "NSpid:", "/proc/self/status"], stdout=subprocess.PIPE, **kwargs)
    return len(plain.communicate(timeout=10)[0].split()) - 1


def _own_namespace_depth():
    with open("/proc/self/status", "rb") as f:
        return len([line for line in f if line.startswith(b"NSpid:")][0].split()) - 1


def _job_this_thread_enters(job_factory):
    """A pid_namespace job whose spawns this thread makes itself (setns), keeping its way
    back; unprivileged, a helper process enters the namespace instead: skip."""
    job = job_factory(mechanism="pid_namespace", on_unavailable="raise")
    if job._impl._init.userns_fd >= 0:
        pytest.skip("unprivileged: a helper process enters the namespace, this thread never does")
    return job


def _way_back_fds():
    """Our descriptors of our own PID namespace: the spawning threads' ways back."""
    own_ns = os.readlink("/proc/self/ns/pid")
    return {int(fd) for fd, target in _open_fds().items() if target == own_ns}


def _take_over(number, tmp_path):
    """What a program does that closes every descriptor and opens a file of its own: close
    `number` and put a file on it; returns the file's path."""
    os.close(number)
    other = tmp_path / "program-file"
    other.write_bytes(b"the program's")
    fd = os.open(other, os.O_RDONLY)
    if fd != number:
        os.dup2(fd, number)
        os.close(fd)
    return other


def test_the_way_back_survives_a_program_that_closes_and_reuses_its_number(job_factory, tmp_path):
    """As root a spawning thread keeps a descriptor of its own pid_for_children, to point
    its children back there after each spawn in a job's namespace. A program may close it
    (a daemon closing every descriptor) and get its number back for another file: the next
    spawn must still go to the job, the thread's next plain child to our own namespace, and
    the program's file must be left as it is."""
    job = _job_this_thread_enters(job_factory)
    assert job.popen(["true"]).wait(10) == 0
    kept = _way_back_fds()
    assert len(kept) == 1, _open_fds()
    (number,) = kept
    other = _take_over(number, tmp_path)
    try:
        p = job.popen(["grep", "NSpid:", "/proc/self/status"], stdout=subprocess.PIPE)
        assert len(p.communicate(timeout=10)[0].split()) - 1 == _own_namespace_depth() + 1
        assert _child_namespace_depth() == _own_namespace_depth()
        assert os.readlink(f"/proc/self/fd/{number}") == str(other)
        assert os.pread(number, 100, 0) == b"the program's"
        assert _way_back_fds(), "no way back was opened again"
    finally:
        os.close(number)


def test_a_thread_that_exits_closes_its_way_back_only_if_it_is_still_its_own(job_factory, tmp_path):
    """The descriptor a spawning thread keeps (as root) is closed when the thread exits, but
    not if the program closed that number meanwhile and opened a file of its own on it."""
    job = _job_this_thread_enters(job_factory)
    threads_before = len(os.listdir("/proc/self/task"))

    def threads_gone():
        return wait_until(lambda: len(os.listdir("/proc/self/task")) <= max(threads_before, 1), 5)

    # A thread that spawns and exits: its descriptor goes with it.
    before = _way_back_fds()
    t = threading.Thread(target=lambda: job.popen(["true"]).wait(10))
    t.start()
    t.join()
    assert threads_gone()
    assert _way_back_fds() == before

    # A thread whose number the program takes over while it lives: the file stays open.
    spawned, leave = threading.Event(), threading.Event()

    def spawn_then_wait():
        job.popen(["true"]).wait(10)
        spawned.set()
        leave.wait(10)
    t = threading.Thread(target=spawn_then_wait)
    t.start()
    try:
        assert spawned.wait(10)
        (number,) = _way_back_fds() - before
        other = _take_over(number, tmp_path)
    finally:
        leave.set()
        t.join()
    try:
        assert threads_gone()
        assert os.readlink(f"/proc/self/fd/{number}") == str(other)
        assert os.pread(number, 100, 0) == b"the program's"
    finally:
        os.close(number)


def test_pgjob_popen_without_job_owns_a_private_job():
    with pgjob.Popen(["sh", "-c", "exit 4"]) as p:
        assert p.job.mechanism in ("pid_namespace", "pdeathsig")
        assert p.wait(10) == 4
    assert p.job.closed


def test_returncode_when_never_waited_then_garbage_collected(job):
    # Popen.__del__ must not raise, and the child is reaped or left a zombie for _cleanup().
    p = job.popen(["true"])
    pid = p.pid
    del p
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
                      open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z", 5)


def test_plain_children_of_the_spawning_thread_stay_outside_the_job(job):
    """Entering the job's namespace for a spawn must not leak into this thread's later
    children (pid_namespace as root: the thread points its children back afterwards)."""
    assert job.popen(["true"]).wait(10) == 0
    assert _child_namespace_depth() == _own_namespace_depth()
    assert not job.contains(os.getpid())


@pytest.mark.parametrize("kwargs, exc", [
    ({"user": 2**40}, OverflowError),
    ({"group": 2**40}, OverflowError),
    ({"extra_groups": [2**40]}, ValueError),
])
def test_ids_out_of_range_are_refused_not_truncated(job, kwargs, exc):
    """2**40 truncated to uid_t is 0: the child would run as root. subprocess refuses it."""
    with pytest.raises(exc):
        subprocess.Popen(["true"], **kwargs)
    with pytest.raises(exc):
        job.popen(["true"], **kwargs)
    assert not job.pids()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
@pytest.mark.parametrize("uid", UNPRIVILEGED_UIDS)
def test_user_group_switch_from_a_multithreaded_owner_changes_only_the_child(job, uid):
    """user/group/extra_groups reach the child, and only the child, with the owner
    multithreaded (the child is a vfork-style clone sharing the owner's memory). This checks
    the outcome; it did not fail on this machine's glibc with the old setreuid() calls, so it
    is no proof of the broadcast hazard the raw syscalls avoid."""
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        before = (os.getresuid(), os.getresgid(), os.getgroups())
        # (the kernel's view, from a program every uid can run)
        p = job.popen(["grep", "-E", "^(Uid|Gid|Groups):", "/proc/self/status"],
                      user=uid, group=uid, extra_groups=[uid],
                      stdout=subprocess.PIPE, text=True)
        out = p.communicate(timeout=30)[0]
        assert p.returncode == 0
        ids = {line.split(":")[0]: line.split()[1:] for line in out.splitlines()}
        assert ids == {"Uid": [str(uid)] * 4, "Gid": [str(uid)] * 4, "Groups": [str(uid)]}
        assert (os.getresuid(), os.getresgid(), os.getgroups()) == before
    finally:
        stop.set()
        for t in threads:
            t.join()
