"""The "cgroup" mechanism and protect_children() on Linux, asserted on what the kernel has:
/proc/<pid>/cgroup of members and of the watcher, the watcher's session, cgroup files and
directories. Limits, stats and OOM need cgroup v2 controllers: they run where the hierarchy
has them (the VM) and are skipped, naming what is missing, where it doesn't (this host's
hybrid has hugetlb only)."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import pgjob
from pgjob import _cgroup, _procfs
from conftest import SRC, alive, unprivileged_python
from proc_helpers import pids_with_argument, wait_until

pytestmark = pytest.mark.linux

SCALE = 10 if os.environ.get("PGJOB_IN_VM") else 1


def _hierarchy_or_skip():
    try:
        return _cgroup.discover()
    except pgjob.UnsupportedError as exc:
        pytest.skip(f"no cgroup v2 here: {exc}")


def _writable_or_skip():
    h = _hierarchy_or_skip()
    if not os.access(h.own_dir, os.W_OK):
        pytest.skip(f"this process's cgroup {h.own_dir} is not writable by uid {os.geteuid()} "
                    "(not delegated): the 'cgroup' mechanism is unavailable here")
    return h


def _controllers_or_skip(*needed):
    h = _writable_or_skip()
    try:
        _cgroup.choose_parent(h, list(needed))
    except pgjob.UnsupportedError as exc:
        pytest.skip(f"controllers {', '.join(needed)} unavailable here: {exc}")
    return h


def _cgroup_dir_of(pid, h):
    path = _cgroup.own_cgroup(pid)
    return h.path_of(path)


@pytest.fixture
def cgroup_job(job_factory):
    _writable_or_skip()

    def make(**kwargs):
        return job_factory(mechanism="cgroup", **kwargs)
    return make


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return data[data.rindex(b")") + 2:].split()[0] in (b"Z", b"X")


# -- discovery ---------------------------------------------------------------------------------

def test_discovery_reads_mountinfo_and_the_0_line():
    h = _hierarchy_or_skip()
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split(" - ")[0].split()[4] for line in f
                  if line.split(" - ")[1].split()[0] == "cgroup2"]
    assert h.mount in mounts
    assert str(os.getpid()) in open(os.path.join(h.own_dir, "cgroup.procs")).read().split()


def test_mountinfo_root_field_is_respected(tmp_path):
    # A mount of a subtree (a container's, or a bind mount): its root field is the cgroup
    # path the mount point shows, and the directory of our cgroup is relative to it.
    info = tmp_path / "mountinfo"
    info.write_text("41 31 0:38 /user.slice/app /mnt/cg rw,relatime - cgroup2 cgroup2 rw\n")
    (mount, root, ro), = _cgroup.cgroup2_mounts(str(info))
    h = _cgroup.Hierarchy(mount, root, ro, "/user.slice/app/leaf")
    assert (mount, root, ro) == ("/mnt/cg", "/user.slice/app", False)
    assert h.own_dir == "/mnt/cg/leaf"
    assert h.path_of("/system.slice/x") is None


# -- the job cgroup, its members and its watcher --------------------------------------------------

def test_members_start_in_the_job_cgroup_and_the_watcher_outside(cgroup_job):
    h = _cgroup.discover()
    job = cgroup_job()
    assert job.mechanism == "cgroup"
    impl = job._impl
    path = impl.cgroup_path
    assert os.path.basename(path).startswith(f"pgjob-{os.getpid()}-")
    assert os.path.dirname(path) == _cgroup.choose_parent(h, [])
    p = job.popen(["sleep", "100"])
    assert p.spawn_path == "clone_into_cgroup"
    assert _cgroup_dir_of(p.pid, h) == path
    assert job.pids() == [p.pid] and job.contains(p.pid)
    watcher = impl.watcher_pid
    # Outside the job, in our own cgroup; its own session and process group.
    assert _cgroup_dir_of(watcher, h) == h.own_dir
    assert os.getsid(watcher) == watcher and os.getpgid(watcher) == watcher
    assert os.getsid(watcher) != os.getsid(0)
    assert not job.contains(watcher)
    # It holds nothing of ours but its two descriptors (plus /dev/null on 0-2).
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{watcher}/fd")) == [0, 1, 2, 3, 4]
    job.close()
    assert wait_until(lambda: _gone(p.pid), 5)
    assert not os.path.exists(path)
    assert wait_until(lambda: _gone(watcher), 5)


def test_terminate_kills_the_whole_tree_daemons_included(cgroup_job):
    job = cgroup_job()
    marker = "pgjob-test-" + uuid.uuid4().hex
    p = job.popen(["sh", "-c", f"setsid sh -c 'sh -c \"sleep 1000\" {marker} &' ; "
                   f"sh -c 'sleep 1000' {marker} & echo ok; wait"], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ok\n"
    assert wait_until(lambda: len(pids_with_argument(marker)) == 2, 5)
    daemons = pids_with_argument(marker)
    assert all(job.contains(pid) for pid in daemons)
    job.terminate()
    assert p.wait(5) == -signal.SIGKILL
    assert wait_until(lambda: all(_gone(pid) for pid in daemons), 5)
    assert wait_until(lambda: job.pids() == [], 5)
    # The job stays usable, as a Windows job does after TerminateJobObject.
    assert job.popen(["true"]).wait(5) == 0


def test_events_exit_and_zero_from_cgroup_events(cgroup_job):
    job = cgroup_job()
    p = job.popen(["sh", "-c", "sleep 0.2 & exit 0"])
    kinds = []
    for event in job.events(timeout=10 * SCALE):
        kinds.append(event.kind)
        if event.kind == pgjob.EventKind.ACTIVE_PROCESS_ZERO:
            break
    assert kinds[0] == pgjob.EventKind.NEW_PROCESS
    assert pgjob.EventKind.EXIT_PROCESS in kinds
    assert kinds[-1] == pgjob.EventKind.ACTIVE_PROCESS_ZERO
    assert p.wait(5) == 0
    assert job.wait(5)


def test_assign_moves_a_running_process(cgroup_job):
    h = _cgroup.discover()
    job = cgroup_job()
    outsider = subprocess.Popen(["sleep", "100"])
    try:
        assert not job.contains(outsider.pid)
        job.assign(outsider)
        assert _cgroup_dir_of(outsider.pid, h) == job._impl.cgroup_path
        assert job.contains(outsider.pid)
        job.terminate()
        assert outsider.wait(5) == -signal.SIGKILL
    finally:
        outsider.kill()
        outsider.wait()


def test_assign_of_an_exited_process(cgroup_job):
    job = cgroup_job()
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(pgjob.ProcessExitedError):
        job.assign(p.pid)


def test_detach_leaves_members_running_and_the_watcher_removes_the_cgroup(job_factory):
    _writable_or_skip()
    job = job_factory(mechanism="cgroup", kill_on_close=False)
    path, watcher = job._impl.cgroup_path, job._impl.watcher_pid
    p = job.popen(["sleep", "100"])
    job.close()
    time.sleep(0.05 * SCALE)  # a chance for a wrong kill to happen; not the assertion's wait
    assert p.poll() is None
    assert os.path.isdir(path) and not _gone(watcher)
    p.kill()
    p.wait()
    # The watcher drains: once the cgroup is empty it removes it and exits.
    assert wait_until(lambda: not os.path.exists(path), 5 * SCALE)
    assert wait_until(lambda: _gone(watcher), 5 * SCALE)


_DETACH_THEN_DIE = r"""
import os, signal, subprocess, sys
import pgjob
job = pgjob.Job(mechanism="cgroup")
member = job.popen(["sleep", "60"], stdout=subprocess.DEVNULL)
watcher = job._impl.watcher_pid
print(member.pid, watcher, job._impl.cgroup_path, flush=True)
if sys.argv[1] == "late":
    # A watcher not scheduled yet when the owner dies (a loaded machine), made certain: it
    # runs again only once the owner is dead (the test resumes it).
    os.kill(watcher, signal.SIGSTOP)
job.detach()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("watcher", ["running", "late"])
def test_detached_members_outlive_the_owner(tracker, watcher):
    """A kill-on-close cgroup job detached, then its owner SIGKILLed the moment detach()
    returns: the members live on, and the watcher removes the cgroup once they are gone.
    The watcher reads the owner's death and its 'd' together: the 'd' comes first."""
    _writable_or_skip()
    owner = subprocess.run([sys.executable, "-c", _DETACH_THEN_DIE, watcher],
                           stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=SRC),
                           timeout=60)
    assert owner.returncode == -signal.SIGKILL, owner
    member_pid, watcher_pid, path = owner.stdout.decode().split()
    member = tracker.track(int(member_pid))
    tracker.track(int(watcher_pid))
    os.kill(int(watcher_pid), signal.SIGCONT)
    assert not wait_until(lambda: not alive(member), 0.5 * SCALE), "the member died"
    os.kill(int(member_pid), signal.SIGKILL)
    assert wait_until(lambda: not os.path.exists(path), 5 * SCALE)
    assert wait_until(lambda: _gone(int(watcher_pid)), 5 * SCALE)


def test_limits_name_what_is_missing(job_factory):
    h = _writable_or_skip()
    for option, controller in (("memory_limit", "memory"), ("process_limit", "pids"),
                               ("cpu_rate", "cpu")):
        try:
            _cgroup.choose_parent(h, [controller])
            continue  # available here: the VM tests below cover it
        except pgjob.UnsupportedError:
            pass
        with pytest.raises(pgjob.UnsupportedError) as info:
            job_factory(**{option: 50 if option == "cpu_rate" else 10 ** 8})
        assert controller in str(info.value) and "cgroup.controllers" in str(info.value)
        assert h.mount in str(info.value)
    leftovers = [d for d in os.listdir(h.own_dir) if d.startswith(f"pgjob-{os.getpid()}-")]
    assert leftovers == [] or all(not os.path.exists(os.path.join(h.own_dir, d, "memory.max"))
                                  for d in leftovers)


def test_pid_namespace_job_refuses_assign_current(job_factory):
    job = job_factory(mechanism="pid_namespace")
    before = os.readlink("/proc/thread-self/ns/pid_for_children")
    with pytest.raises(pgjob.UnsupportedError, match="can't move itself into a PID namespace"):
        job.assign_current()
    assert os.readlink("/proc/thread-self/ns/pid_for_children") == before
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()


# -- the watcher's guarantee -------------------------------------------------------------------

OWNER = r"""
import json, logging, os, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
import pgjob
from pgjob import _cgroup
mode, marker = sys.argv[2], sys.argv[3]
before = _cgroup.own_cgroup()
report = {"before": before, "uid": os.getuid()}
go = threading.Event()
spawned = []
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # don't hold our pipes open
def early_thread():          # a thread that existed before protect_children()
    go.wait()
    spawned.append(subprocess.Popen(["sh", "-c", "sleep 1000", marker], **quiet))
early = threading.Thread(target=early_thread)
early.start()
if mode == "job":
    job = pgjob.Job(mechanism="cgroup")
    job.popen(["sh", "-c", "sleep 1000", marker], **quiet)
    job.popen(["sh", "-c", "setsid sh -c 'sh -c \"sleep 1000\" %s &'" % marker], **quiet)
else:
    job = pgjob.protect_children(on_unavailable=mode)
impl = job._impl
report.update(mechanism=job.mechanism, after=_cgroup.own_cgroup(),
              cgroup=getattr(impl, "cgroup_path", None), watcher=getattr(impl, "watcher_pid", -1))
if mode != "job":
    go.set(); early.join()
    later = threading.Thread(target=lambda: spawned.append(
        subprocess.Popen(["sh", "-c", "sleep 1000", marker], **quiet)))
    later.start(); later.join()
    os.system("setsid sh -c 'sh -c \"sleep 1000\" %s &' >/dev/null 2>&1 &" % marker)  # double fork
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    report["fork_ok"] = os.waitpid(pid, 0)[1] >> 8 == 7
else:
    go.set(); early.join()
print(json.dumps(report), flush=True)
sys.stdin.read()
"""


def _settled(marker, owner):
    """The `sh -c 'sleep 1000' MARKER` processes that have started their sleep (a shell's
    fork that has not exec'd yet carries the marker too, for a moment)."""
    found = []
    for pid in pids_with_argument(marker, exclude=(owner,)):
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
            comms = [open(f"/proc/{c}/comm").read().strip() for c in children]
        except OSError:
            continue  # exited, or its child did, while we looked
        if "sleep" in comms:
            found.append(pid)
    return found


def _start_owner(mode, marker, user=None, wrapper=(), python=None):
    if python is None:
        python = sys.executable if user is None else unprivileged_python(user)
    kwargs = {} if user is None else dict(user=user, group=user, extra_groups=[], cwd="/")
    owner = subprocess.Popen([*wrapper, python, "-c", OWNER, SRC, mode, marker],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, **kwargs)
    line = owner.stdout.readline()
    if not line:
        owner.kill()
        pytest.fail("owner died: " + owner.stderr.read().decode())
    return owner, json.loads(line)


def _finish(owner):
    if owner.poll() is None:
        owner.kill()
    owner.wait(10)
    for stream in (owner.stdin, owner.stdout, owner.stderr):
        if stream is not None:
            stream.close()


def _kill_leftovers(marker):
    """Kill what a test left of its `sh -c 'sleep 1000' MARKER` trees: the marked shells and
    their descendants (the sleep a shell forked carries no marker, and outlives its shell if
    only that is killed: a leak into the next stage, found there as uid 1500's processes)."""
    tree = _procfs._descendants(pids_with_argument(marker))
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: all(_gone(pid) for pid in tree), 5 * SCALE)


@pytest.mark.parametrize("mode", ["job", "log"])
def test_owner_sigkill_kills_everything_in_the_cgroup(mode):
    """A "cgroup" Job's members, and after protect_children() every child by any means
    (an early thread's, a later thread's, os.system's setsid double fork), die when the
    owner is SIGKILLed; the watcher removes the cgroup and exits."""
    h = _writable_or_skip()
    marker = "pgjob-cg-" + uuid.uuid4().hex
    owner, report = _start_owner(mode, marker)
    try:
        assert report["mechanism"] == "cgroup", report
        path, watcher = report["cgroup"], report["watcher"]
        expected = 3
        assert wait_until(lambda: len(_settled(marker, owner.pid)) == expected, 10 * SCALE)
        members = _settled(marker, owner.pid)
        if mode == "job":
            members = [pid for pid in members if _cgroup_dir_of(pid, h) == path]
            assert len(members) == 2  # the early thread's plain subprocess is no member
        else:
            assert report["fork_ok"]
            assert h.path_of(report["after"]) == path and report["before"] != report["after"]
            assert all(_cgroup_dir_of(pid, h) == path for pid in members)
        assert _cgroup_dir_of(watcher, h) == h.path_of(report["before"])
        owner.kill()
        owner.wait(10)
        assert wait_until(lambda: all(_gone(pid) for pid in members), 5 * SCALE), members
        assert wait_until(lambda: not os.path.exists(path), 5 * SCALE)
        assert wait_until(lambda: _gone(watcher), 5 * SCALE)
    finally:
        _finish(owner)
        _kill_leftovers(marker)


def test_control_case_without_protection_children_survive():
    """The control: the same owner without any protection leaves its children behind."""
    marker = "pgjob-cg-" + uuid.uuid4().hex
    script = ("import os, subprocess, sys; subprocess.Popen(['sh', '-c', 'sleep 1000', %r]); "
              "print('ok', flush=True); sys.stdin.read()" % marker)
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert owner.stdout.readline() == b"ok\n"
        assert wait_until(lambda: len(pids_with_argument(marker)) == 1, 5)
        owner.kill()
        owner.wait(10)
        time.sleep(0.2)  # what the test asserts is that nothing kills them: give it time
        assert len(pids_with_argument(marker)) == 1
    finally:
        _finish(owner)
        _kill_leftovers(marker)


def test_watcher_killed_the_owner_says_so_and_starts_another(cgroup_job, caplog):
    h = _cgroup.discover()
    job = cgroup_job()
    impl = job._impl
    first = impl.watcher_pid
    with caplog.at_level(logging.WARNING, logger="pgjob"):
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: impl.watcher_pid not in (first, -1), 5 * SCALE)
        assert wait_until(lambda: any("a new watcher" in r.getMessage()
                                      for r in caplog.records), 5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("orphan protection is off" in m and str(first) in m for m in messages), messages
    second = impl.watcher_pid
    assert _cgroup_dir_of(second, h) == h.own_dir and os.getsid(second) == second
    p = job.popen(["sleep", "100"])
    job.close()
    assert p.wait(5) == -signal.SIGKILL
    assert wait_until(lambda: _gone(second), 5)


RESPAWN_OWNER = r"""
import json, os, signal, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import pgjob
job = pgjob.protect_children(on_unavailable="raise")
impl = job._impl
first = impl.watcher_pid
os.kill(first, signal.SIGKILL)
deadline = time.monotonic() + float(sys.argv[3])
while impl.watcher_pid in (first, -1) and time.monotonic() < deadline:
    time.sleep(0.01)
subprocess.Popen(["sh", "-c", "sleep 1000", sys.argv[2]], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
print(json.dumps({"first": first, "second": impl.watcher_pid, "cgroup": impl.cgroup_path}),
      flush=True)
sys.stdin.read()
"""


def test_watcher_respawned_by_a_protected_owner_lives_outside_the_job():
    """After protect_children() the owner is inside the job cgroup, so a new watcher is born
    there: it must move itself out (to the owner's old cgroup), or the job's kill would take
    it along, and still kill the job when the owner dies."""
    h = _writable_or_skip()
    marker = "pgjob-cg-" + uuid.uuid4().hex
    owner = subprocess.Popen([sys.executable, "-c", RESPAWN_OWNER, SRC, marker, str(5 * SCALE)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        report = json.loads(owner.stdout.readline())
        second = report["second"]
        assert second not in (report["first"], -1)
        assert _cgroup_dir_of(second, h) == h.own_dir
        assert os.getsid(second) == second
        assert wait_until(lambda: len(_settled(marker, owner.pid)) == 1, 10 * SCALE)
        member, = _settled(marker, owner.pid)
        assert _cgroup_dir_of(member, h) == report["cgroup"]
        owner.kill()
        owner.wait(10)
        assert wait_until(lambda: _gone(member), 5 * SCALE)
        assert wait_until(lambda: not os.path.exists(report["cgroup"]), 5 * SCALE)
        assert wait_until(lambda: _gone(second), 5 * SCALE)
    finally:
        _finish(owner)
        _kill_leftovers(marker)


# -- protect_children() where it can't --------------------------------------------------------------

def test_protect_children_unavailable_leaves_the_process_as_it_was():
    """uid 1500 on a cgroup it may not write (this host's root cgroup; the VM's without a
    delegated subtree): logged, mechanism "none", same cgroup, no stray cgroup or watcher,
    threads and forks work."""
    h = _hierarchy_or_skip()
    marker = "pgjob-cg-" + uuid.uuid4().hex
    user = 1500 if os.geteuid() == 0 else None  # else: this ordinary user itself
    owner, report = _start_owner("log", marker, user=user)
    try:
        if report["mechanism"] == "cgroup":
            pytest.skip(f"uid {report['uid']} has a writable cgroup here ({report['before']}): "
                        "delegated")
        assert report["mechanism"] == "none"
        assert report["after"] == report["before"]
        assert report["uid"] == (1500 if user else os.getuid())
        assert report["fork_ok"]
        owner.stdin.close()
        owner.wait(10)
        err = owner.stderr.read().decode()
        assert "orphan protection is off (mechanism=none)" in err and "error code 13" in err, err
        parent = h.path_of(report["before"])
        assert not [d for d in os.listdir(parent) if d.startswith(f"pgjob-{owner.pid}-")]
    finally:
        _finish(owner)
        _kill_leftovers(marker)


def test_protect_children_unavailable_raise_changes_nothing():
    h = _hierarchy_or_skip()
    if os.geteuid() != 0:
        pytest.skip("starting the owner as uid 1500 needs root (this suite runs as an ordinary "
                    "user: its own undelegated case is in test_protect_children.py)")
    user = 1500
    python = unprivileged_python(user)
    script = ("import sys; sys.path.insert(0, %r); import os, pgjob; from pgjob import _cgroup\n"
              "before = _cgroup.own_cgroup()\n"
              "try:\n    pgjob.protect_children(on_unavailable='raise')\n"
              "except pgjob.UnsupportedError as e:\n    print('raised', e.errno, e)\n"
              "print(before == _cgroup.own_cgroup(), os.getpid())\n" % SRC)
    out = subprocess.run([python, "-c", script], user=user, group=user, extra_groups=[], cwd="/",
                         capture_output=True, text=True, timeout=30 * SCALE)
    if "raised" not in out.stdout:
        pytest.skip(f"uid {user} has a writable cgroup here (delegated): {out.stdout}{out.stderr}")
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"raised {errno.EACCES}") and h.mount in lines[0], lines
    assert lines[-1].startswith("True ")


def test_protect_children_failure_half_way_is_undone(monkeypatch, caplog):
    """The move into the job cgroup refused (EACCES, injected: the kernel gives it on a
    cgroup.procs we may not write): logged, the process stays where it was, the job cgroup
    and its watcher are gone."""
    _writable_or_skip()
    from pgjob import _job
    made = []

    def refuse(directory, pid, hierarchy):
        made.append(directory)
        exc = PermissionError(errno.EACCES, "Permission denied")
        exc.filename = os.path.join(directory, "cgroup.procs")
        raise _cgroup._refused(exc, f"moving pid {pid} into {directory}", hierarchy) from exc

    monkeypatch.setattr(_cgroup, "move", refuse)
    monkeypatch.setattr(_job, "_PROTECTION", None)
    before = _cgroup.own_cgroup()
    with caplog.at_level(logging.WARNING, logger="pgjob"):
        job = pgjob.protect_children()
    monkeypatch.setattr(_job, "_PROTECTION", None)
    assert job.mechanism == "none"
    assert _cgroup.own_cgroup() == before
    assert made and not os.path.exists(made[0])
    assert "orphan protection is off (mechanism=none)" in caplog.records[-1].getMessage()
    assert "error code 13" in caplog.records[-1].getMessage()
    # Its watcher (argv: pgjob-helper watch CGROUP ...) is gone too.
    assert wait_until(lambda: not pids_with_argument(made[0]), 5 * SCALE)
    threading.Thread(target=lambda: None).start()  # and the process works as before


def test_delegated_user_protect_children_and_owner_sigkill(delegated_cgroup):
    """An ordinary user in a delegated cgroup (as systemd's Delegate=yes gives one): the job
    cgroup is made below it, every child lands there, and the owner's SIGKILL kills them."""
    h = _hierarchy_or_skip()
    marker = "pgjob-cg-" + uuid.uuid4().hex
    owner, report = _start_owner("log", marker, wrapper=delegated_cgroup.wrapper,
                                 python=delegated_cgroup.python)
    try:
        assert report["uid"] == delegated_cgroup.uid
        assert report["mechanism"] == "cgroup", owner.stderr.read1().decode()
        assert report["before"] == delegated_cgroup.relative
        path = report["cgroup"]
        assert os.path.dirname(path) in (delegated_cgroup.path,
                                         os.path.dirname(delegated_cgroup.path))
        assert wait_until(lambda: len(_settled(marker, owner.pid)) == 3, 10 * SCALE)
        members = _settled(marker, owner.pid)
        assert all(_cgroup_dir_of(pid, h) == path for pid in members)
        assert _cgroup_dir_of(report["watcher"], h) == delegated_cgroup.path
        owner.kill()
        owner.wait(10)
        assert wait_until(lambda: all(_gone(pid) for pid in members), 5 * SCALE), members
        assert wait_until(lambda: not os.path.exists(path), 5 * SCALE)
        assert wait_until(lambda: _gone(report["watcher"]), 5 * SCALE)
    finally:
        _finish(owner)
        _kill_leftovers(marker)


# -- limits, stats, OOM: where the controllers exist (the VM) -------------------------------------

def test_memory_limit_writes_memory_max_and_oom_kills(job_factory):
    _controllers_or_skip("memory")
    job = job_factory(memory_limit=64 * 2 ** 20)
    path = job._impl.cgroup_path
    assert open(os.path.join(path, "memory.max")).read().strip() == str(64 * 2 ** 20)
    p = job.popen([sys.executable, "-c", "b = bytearray(256 * 2 ** 20); b[::4096] = b'x' * "
                   "len(b[::4096])"])
    assert p.wait(60 * SCALE) == -signal.SIGKILL
    kinds = [e.kind for e in job.events(timeout=2 * SCALE)]
    assert pgjob.EventKind.JOB_MEMORY_LIMIT in kinds
    oom = _cgroup.read_keyed(path, "memory.events")
    assert oom["oom_kill"] >= 1
    peak = job.stats().peak_job_memory
    if os.path.exists(os.path.join(path, "memory.peak")):
        assert peak is not None and 0 < peak <= 64 * 2 ** 20 + 2 ** 20


def test_process_limit_writes_pids_max_and_refuses_forks(job_factory):
    _controllers_or_skip("pids")
    job = job_factory(process_limit=3)
    path = job._impl.cgroup_path
    assert open(os.path.join(path, "pids.max")).read().strip() == "3"
    members = [job.popen(["sleep", "100"]) for _ in range(3)]
    with pytest.raises(pgjob.LimitExceededError):
        job.popen(["sleep", "100"])  # clone3 refused with EAGAIN by pids.max
    assert _cgroup.read_keyed(path, "pids.events")["max"] >= 1
    kinds = [e.kind for e in job.events(timeout=1 * SCALE)]
    assert pgjob.EventKind.ACTIVE_PROCESS_LIMIT in kinds
    assert sorted(job.pids()) == sorted(m.pid for m in members)
    if os.path.exists(os.path.join(path, "pids.peak")):
        assert job.stats().peak_processes == 3
    job.terminate()
    for m in members:
        assert m.wait(10 * SCALE) == -signal.SIGKILL


def test_cpu_rate_writes_cpu_max(job_factory):
    _controllers_or_skip("cpu")
    job = job_factory(cpu_rate=25)
    quota, period = open(os.path.join(job._impl.cgroup_path, "cpu.max")).read().split()
    assert int(period) == 100000
    assert int(quota) == int(0.25 * os.cpu_count() * 100000)


def test_stats_from_cpu_stat(cgroup_job):
    job = cgroup_job()
    p = job.popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                   "while time.process_time() - t < 0.2: pass"])
    assert p.wait(30 * SCALE) == 0
    stats = job.stats()
    usage = _cgroup.read_keyed(job._impl.cgroup_path, "cpu.stat")
    assert stats.user_time == usage["user_usec"] / 1e6
    assert stats.user_time + stats.kernel_time >= 0.15
    assert stats.active_processes == 0
