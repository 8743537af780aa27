"""pgjob-helper, the program pgjob execs for its helper processes, and the C spawn's
clone3(CLONE_INTO_CGROUP): what the kernel received, read back from /proc."""
import errno
import os
import platform
import subprocess
import uuid

import pytest

import pgjob
from pgjob import _jobobject as c
from pgjob import _linux_helpers
from pgjob._linux_spawn import _spawn
from pgjob._spawn_hook import fork_exec_replacements, run_execute_child

from proc_helpers import wait_until


# -- a temporary cgroup v2 ------------------------------------------------------------------------

def unified_mount():
    """Mount point of the cgroup2 hierarchy, from /proc/self/mountinfo; None without one."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4].replace("\\040", " ")
    return None


def own_cgroup():
    """Our cgroup in the unified hierarchy, from the 0:: line of /proc/self/cgroup."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    return None


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    return None


@pytest.fixture
def child_cgroup():
    """(path relative to the hierarchy, directory) of a new child of our own cgroup, removed
    after the test; skipped where we may not create one (no cgroup2, not delegated to us)."""
    mount, own = unified_mount(), own_cgroup()
    if mount is None or own is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    name = f"pgjob-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    relative = os.path.join(own, name)
    directory = os.path.join(mount, relative.lstrip("/"))
    try:
        os.mkdir(directory)
    except PermissionError:
        pytest.skip(f"no permission to create a cgroup under {os.path.dirname(directory)}")
    try:
        yield relative, directory
    finally:
        # Anything left inside would keep rmdir from working: kill it first (5.14+).
        if os.path.exists(os.path.join(directory, "cgroup.kill")):
            with open(os.path.join(directory, "cgroup.kill"), "w") as f:
                f.write("1")

        def removed():
            try:
                os.rmdir(directory)
            except OSError:
                return False
            return True
        assert wait_until(removed, timeout=10), f"could not remove {directory}"


class CgroupPopen(subprocess.Popen):
    """subprocess.Popen whose one fork_exec call goes to pgjob's spawn with a cgroup_fd."""

    def __init__(self, args, cgroup_fd, **kwargs):
        self._cgroup_fd = cgroup_fd
        super().__init__(args, **kwargs)

    def _execute_child(self, *args):
        def fork_exec(*fork_exec_args):
            pid, pidfd = _spawn(fork_exec_args, -1, -1, False, self._cgroup_fd)
            os.close(pidfd)
            return pid
        run_execute_child(subprocess.Popen._execute_child, self, args,
                          fork_exec_replacements(fork_exec))


def test_spawn_with_cgroup_fd_starts_the_program_in_that_cgroup(child_cgroup, tracker):
    relative, directory = child_cgroup
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        proc = CgroupPopen(["sleep", "60"], fd)
    finally:
        os.close(fd)
    tracker.track(proc.pid)
    try:
        assert cgroup_of(proc.pid) == relative
        with open(os.path.join(directory, "cgroup.procs")) as f:
            assert [int(line) for line in f] == [proc.pid]
        assert cgroup_of(os.getpid()) == own_cgroup() != relative  # and we stayed where we were
    finally:
        proc.kill()
        proc.wait(10)


def test_spawn_without_cgroup_fd_stays_in_our_cgroup(child_cgroup, tracker):
    """The control case: the same spawn without a cgroup_fd is a child in our own cgroup."""
    proc = CgroupPopen(["sleep", "60"], -1)
    tracker.track(proc.pid)
    try:
        assert cgroup_of(proc.pid) == own_cgroup()
    finally:
        proc.kill()
        proc.wait(10)


def test_spawn_into_a_cgroup_reports_a_failed_exec_as_subprocess_does(child_cgroup):
    _, directory = child_cgroup
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(FileNotFoundError):
            CgroupPopen(["/nonexistent/pgjob-program"], fd)
    finally:
        os.close(fd)


def test_spawn_into_a_file_that_is_no_cgroup_fails_with_the_kernels_errno():
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError) as info:
            CgroupPopen(["true"], fd)
    finally:
        os.close(fd)
    assert "CLONE_INTO_CGROUP" in str(info.value)


# -- the helper program ---------------------------------------------------------------------------

def test_helper_path_is_the_executable_next_to_the_extension():
    path = _linux_helpers.helper_path()
    assert os.path.isabs(path)
    assert os.path.dirname(path) == os.path.dirname(os.path.abspath(c.__file__))
    assert os.access(path, os.X_OK)


def test_helper_path_names_a_missing_helper(monkeypatch, tmp_path):
    monkeypatch.setattr(c, "__file__", str(tmp_path / "_jobobject.so"))
    with pytest.raises(pgjob.UnsupportedError) as info:
        _linux_helpers.helper_path()
    assert str(tmp_path / "pgjob-helper") in str(info.value)


def test_helper_path_names_a_helper_that_is_not_executable(monkeypatch, tmp_path):
    (tmp_path / "pgjob-helper").write_bytes(b"")
    (tmp_path / "pgjob-helper").chmod(0o644)  # no x bit: not even root may exec it
    monkeypatch.setattr(c, "__file__", str(tmp_path / "_jobobject.so"))
    with pytest.raises(pgjob.UnsupportedError) as info:
        _linux_helpers.helper_path()
    assert "not executable" in str(info.value)


# -- the init is the exec'd helper ----------------------------------------------------------------

def status_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].split()
    raise KeyError(name)


@pytest.fixture
def job():
    j = pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
    yield j
    j.close()


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")


def set_up(pid):
    """Job() returns once the init has exec'd, not once it has set itself up (setsid, fds,
    SIGCHLD): wait for the last of those steps."""
    assert wait_until(lambda: int(status_field(pid, "SigIgn")[0], 16) & (1 << (17 - 1)), 10)
    return pid


def test_the_init_runs_pgjob_helper(job):
    init = job._impl._init.pid
    # CLONE_VFORK lets us go on inside the child's execve, just before it switches to the new
    # program's memory (Linux 6.1: /proc/<pid>/exe may name the interpreter a moment longer).
    assert wait_until(lambda: os.readlink(f"/proc/{init}/exe") == _linux_helpers.helper_path(), 10)
    assert wait_until(lambda: len(cmdline(init)) > 2, 10)
    assert cmdline(init)[1] == b"init"


def test_the_init_is_pid_1_of_the_members_namespace(job):
    init = job._impl._init.pid
    proc = job.popen(["sleep", "60"])
    try:
        assert status_field(init, "NSpid")[-1] == "1"
        assert len(status_field(proc.pid, "NSpid")) == len(status_field(init, "NSpid"))
        assert os.stat(f"/proc/{proc.pid}/ns/pid").st_ino == os.stat(f"/proc/{init}/ns/pid").st_ino
        assert os.stat(f"/proc/{init}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    finally:
        proc.kill()
        proc.wait(10)


def test_the_init_has_its_own_session(job):
    init = set_up(job._impl._init.pid)
    assert os.getsid(init) == init != os.getsid(0)
    assert os.getpgid(init) == init != os.getpgid(0)


def test_the_init_holds_only_its_control_socket_and_the_owners_pidfd(job):
    init = set_up(job._impl._init.pid)
    fds = {int(fd): os.readlink(f"/proc/{init}/fd/{fd}") for fd in os.listdir(f"/proc/{init}/fd")}
    assert sorted(fds) == [3, 4], fds
    assert fds[3].startswith("socket:"), fds
    assert "pidfd" in fds[4], fds


def test_the_init_ignores_sigchld_and_blocks_every_signal(job):
    init = set_up(job._impl._init.pid)
    assert int(status_field(init, "SigIgn")[0], 16) & (1 << (17 - 1))  # SIGCHLD
    blocked = int(status_field(init, "SigBlk")[0], 16)
    assert blocked & (1 << (15 - 1)) and blocked & (1 << (2 - 1))  # SIGTERM, SIGINT


OWNER_REWRITES_MEMORY = r"""
import json, os, sys
import pgjob
size = 512 * 1024 * 1024
memory = bytearray(size)            # zero pages: touch them all, the owner's own memory
for i in range(0, size, 4096):
    memory[i] = 1
job = pgjob.Job(mechanism="pid_namespace", on_unavailable="raise")
member = job.popen(["sleep", "60"])
init = job._impl._init.pid
for i in range(0, size, 4096):      # rewrite all of it after the Job exists
    memory[i] = 2

def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out

print(json.dumps({"init": rollup(init), "member": rollup(member.pid), "owner": rollup(os.getpid())}),
      flush=True)
member.kill()
member.wait()
job.close()
"""


def test_the_init_holds_no_copy_of_a_large_owners_memory(tmp_path):
    """A 512 MiB owner creates a Job and then rewrites its memory: were the init a fork of
    the owner, every rewritten page would be copied for it (the 494 MiB of issue 9)."""
    import json
    import sys
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pgjob.__file__)))
    out = subprocess.run([sys.executable, "-c", OWNER_REWRITES_MEMORY], env=env,
                         stdout=subprocess.PIPE, timeout=120, check=True).stdout
    sizes = json.loads(out)
    assert sizes["owner"]["Private_Dirty"] > 500 * 1024  # the control: the owner really is big
    assert sizes["init"]["Rss"] < 16 * 1024, sizes["init"]
    assert sizes["init"]["Private_Dirty"] < 4 * 1024, sizes["init"]
    assert sizes["member"]["Private_Dirty"] < 16 * 1024, sizes["member"]


def test_a_job_made_from_a_thread_while_other_threads_run():
    import threading
    stop = threading.Event()
    spins = [0, 0, 0]

    def busy(i):
        while not stop.is_set():
            spins[i] += 1
            subprocess.run(["true"]) if i == 0 else sum(range(1000))

    others = [threading.Thread(target=busy, args=(i,)) for i in range(3)]
    for t in others:
        t.start()
    result = {}

    def make_job():
        try:
            with pgjob.Job(mechanism="pid_namespace", on_unavailable="raise") as j:
                p = j.popen(["sh", "-c", "grep NSpid /proc/self/status"], stdout=subprocess.PIPE)
                result["out"] = p.communicate(timeout=30)[0].decode()
                result["code"] = p.returncode
                init = j._impl._init.pid
                wait_until(lambda: os.readlink(f"/proc/{init}/exe").endswith("pgjob-helper"), 10)
                result["init_exe"] = os.readlink(f"/proc/{init}/exe")
        except BaseException as exc:  # handed to the test's thread
            result["error"] = exc

    try:
        maker = threading.Thread(target=make_job)
        maker.start()
        maker.join(60)
    finally:
        stop.set()
        for t in others:
            t.join(60)
    assert "error" not in result, result
    assert result["code"] == 0
    # one PID namespace deeper than ours: the job's
    assert len(result["out"].split()) == 1 + len(status_field(os.getpid(), "NSpid")) + 1, result
    assert result["init_exe"] == _linux_helpers.helper_path()
    assert all(spins), spins  # they did run meanwhile


def _in_a_fork_that_setuid_from_root(uid):
    """In a fork: become `uid` by setuid() from root (which leaves the process non-dumpable:
    its /proc files are root's), then make a Job and run a member; JSON back."""
    import ctypes
    import json
    import traceback
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            libc = ctypes.CDLL(None, use_errno=True)
            dumpable = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
            with pgjob.Job() as j:
                p = j.popen(["sh", "-c", "id -u; grep NSpid /proc/self/status"],
                            stdout=subprocess.PIPE)
                out = p.communicate(timeout=30)[0].decode()
                result = {"dumpable": dumpable, "mechanism": j.mechanism, "out": out,
                          "code": p.returncode, "uid_map": open(
                              f"/proc/{j._impl._init.pid}/uid_map").read().split()}
        except BaseException:
            result = {"error": traceback.format_exc()}
        try:
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() to another user")
def test_an_owner_that_setuid_from_root_gets_a_pid_namespace():
    result = _in_a_fork_that_setuid_from_root(1500)
    assert "error" not in result, result.get("error")
    assert result["dumpable"] == 0  # the case itself: /proc/self of the owner is root's
    assert result["mechanism"] == "pid_namespace"
    assert result["uid_map"] == ["1500", "1500", "1"]
    assert result["code"] == 0
    uid, _, *nspid = result["out"].split()
    assert uid == "1500" and len(nspid) >= 2, result["out"]


# -- the built helper needs only an old glibc -----------------------------------------------------

GLIBC_FLOOR = (2, 17)  # manylinux2014


def glibc_versions_needed(path):
    """Every GLIBC_x.y an ELF file requires (its .gnu.version_r), parsed by hand: a static
    file needs none. Each as a tuple of ints."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF", path
    is64, little = data[4] == 2, data[5] == 1
    e = "<" if little else ">"
    if is64:
        shoff, = struct.unpack_from(e + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x3A)
        fmt = e + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(e + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x2E)
        fmt = e + "IIIIIIIIII"
    sections = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    found = set()
    for sec in sections:
        if sec[1] != 0x6FFFFFFE:  # SHT_GNU_verneed
            continue
        strtab = sections[sec[6]]  # sh_link
        stroff = strtab[4]

        def string(at):
            end = data.index(b"\0", stroff + at)
            return data[stroff + at:end].decode()
        off = sec[4]
        while True:
            _, cnt, _, aux, nxt = struct.unpack_from(e + "HHIII", data, off)
            a = off + aux
            for _ in range(cnt):
                _, _, _, name, anext = struct.unpack_from(e + "IHHII", data, a)
                if string(name).startswith("GLIBC_") and string(name)[6:7].isdigit():
                    found.add(tuple(int(x) for x in string(name)[6:].split(".")))
                a += anext
            if nxt == 0:
                break
            off += nxt
    return found


def test_the_version_reader_sees_what_a_dynamic_file_needs():
    """The control: the extension itself, linked against this glibc, needs some GLIBC_x.y."""
    assert glibc_versions_needed(c.__file__)


def test_the_built_helper_needs_no_glibc_newer_than_2_17():
    needed = glibc_versions_needed(_linux_helpers.helper_path())
    assert all(v <= GLIBC_FLOOR for v in needed), sorted(needed)


EXTENSION_GLIBC_FLOOR = (2, 28)  # manylinux_2_28: the policy build_dist's wheel claims


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64")
                    or platform.libc_ver()[0] != "glibc",
                    reason="jobobject.h pins the pthread calls' versions on x86_64/aarch64 glibc")
def test_the_built_extension_needs_no_glibc_newer_than_2_28():
    """Built on this machine's glibc, the extension still names the pthread calls' old
    versions (jobobject.h), not 2.32/2.34's, and loads libpthread.so.0 where they lived."""
    needed = glibc_versions_needed(c.__file__)
    assert all(v <= EXTENSION_GLIBC_FLOOR for v in needed), sorted(needed)


def test_the_helper_refuses_a_wrong_command_line():
    path = _linux_helpers.helper_path()
    for argv in ([path], [path, "nonsense"], [path, "init"], [path, "init", "1", "x", "0", "0"],
                 [path, "init", "1", "99999999999999999999", "0", "0"], [path, "init", "1", "1", "0"]):
        proc = subprocess.run(argv, stderr=subprocess.PIPE, timeout=10)
        assert proc.returncode == 64, (argv, proc)
        assert b"usage: pgjob-helper" in proc.stderr


def test_start_init_of_a_missing_helper_names_execve_and_leaves_nothing(tmp_path, tracker):
    from proc_helpers import children_by_parent
    before = set(os.listdir("/proc/self/fd"))
    children_before = set(children_by_parent().get(os.getpid(), []))
    with pytest.raises(FileNotFoundError) as info:
        c.start_init(c.CLONE_NEWPID if os.geteuid() == 0 else c.CLONE_NEWPID | c.CLONE_NEWUSER,
                     os.geteuid() != 0, c.PGJOB_INIT_KILL, c.PGJOB_INIT_KILL, False,
                     str(tmp_path / "no-such-helper"))
    # Marked where it is known: a helper that can't be run means no namespace here.
    assert info.value.syscall == "execve" and info.value._pgjob_meaning is pgjob.UnsupportedError
    assert info.value.filename == str(tmp_path / "no-such-helper")
    assert set(os.listdir("/proc/self/fd")) == before  # every descriptor of the attempt closed
    # and the failed child was reaped (older children may have gone meanwhile: a subset)
    assert set(children_by_parent().get(os.getpid(), [])) <= children_before


@pytest.fixture
def unrunnable_helper(monkeypatch, tmp_path):
    """A pgjob-helper that is there and executable but that the kernel can't run (ENOEXEC),
    as on a noexec mount or for a foreign architecture."""
    path = tmp_path / "pgjob-helper"
    path.write_bytes(b"\x00not a program\n")
    path.chmod(0o755)
    monkeypatch.setattr(_linux_helpers, "helper_path", lambda: str(path))
    return str(path)


def test_a_helper_that_cant_run_makes_a_named_pid_namespace_unsupported(unrunnable_helper):
    with pytest.raises(pgjob.UnsupportedError) as info:
        pgjob.Job(mechanism="pid_namespace")
    assert unrunnable_helper in str(info.value) and info.value.filename == unrunnable_helper
    assert info.value.errno == errno.ENOEXEC and info.value.__cause__.syscall == "execve"


def test_a_helper_that_cant_run_falls_back_and_says_so(unrunnable_helper, caplog):
    with caplog.at_level("WARNING", logger="pgjob"):
        with pgjob.Job() as j:
            assert j.mechanism != "pid_namespace"
            assert j.popen(["true"]).wait(30) == 0
    assert unrunnable_helper in caplog.text
