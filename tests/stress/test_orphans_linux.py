"""Issue B's orphan matrix, repeated: every case (mechanism x scenario x how the owner ends)
runs many times with a separate owner process (tests/linux/owner.py), and every process the
owner reported must be gone afterwards. Survivors are counted, killed, and fail the case.

The SIGKILL cases run scripts/stress_linux_orphans.py's own round; the clean-exit, exception
and unprivileged cases extend it here with the same owner and the same liveness test."""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from proc_helpers import wait_until
from stress_support import LINUX, STRESS, report, sized

pytestmark = [*STRESS, pytest.mark.linux,
              pytest.mark.skipif(not LINUX, reason="Linux backend")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OWNER = os.path.join(ROOT, "tests", "linux", "owner.py")
REPETITIONS = sized(3, 100)


def _load_orphan_script():
    path = os.path.join(ROOT, "scripts", "stress_linux_orphans.py")
    spec = importlib.util.spec_from_file_location("stress_linux_orphans", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


orphans = _load_orphan_script()


def _set_subreaper(on):
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    """Only while these tests run: the rest of a pytest session must not inherit orphans."""
    _set_subreaper(True)
    yield
    _set_subreaper(False)
    _reap_orphans()


def _reap_orphans():
    """Reap every zombie child. That may include an owner killed a moment ago, whose Popen
    then reads returncode 0: only the SIGKILL rounds can meet that, and they ignore it."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return
        if info is None:
            return


def _start_time_reaping(pid, _start_time=orphans.start_time):
    # The namespace init exits only once every process of its namespace is reaped; the
    # program (the owner's child) is reaped by the owner's reaper. This process is that
    # subreaper, reaping at once as a supervisor or a container init would: otherwise each
    # round waits for this container's PID 1, which reaps every ~2 s.
    _reap_orphans()
    return _start_time(pid)


orphans.start_time = start_time = _start_time_reaping

# (mechanism, scenario): SIGKILL the owner; everything it reported must die. pdeathsig only
# promises its direct children, so it runs the scenarios without grandchildren.
MATRIX = ("sleeping", "busy", "stopped", "tree", "daemon", "doublefork", "setsid", "mixed",
          "thread")
# protect_children() also by the routes only a whole program has (owner.py's ROUTE).
PROTECT_ROUTES = ("prethread", "pool", "system", "everything")
SIGKILL_CASES = (
    [("pid_namespace", s) for s in MATRIX]
    + [("cgroup", s) for s in MATRIX]
    + [("pdeathsig", s) for s in ("sleeping", "busy", "stopped", "thread")]
    + [("protect", s) for s in MATRIX + PROTECT_ROUTES]
)
# What each owner mode must report: protect_children() is a cgroup job on Linux.
EXPECTED_MECHANISM = {"protect": "cgroup"}
TEST_UID = 1500  # pgjob-tester: an ordinary user, not the overflow uid 65534


def _kill_leftovers(members):
    for pid, started in members:
        if start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited since we looked


@pytest.mark.parametrize("mechanism,scenario", SIGKILL_CASES)
def test_owner_sigkilled_repeatedly_leaves_no_survivor(mechanism, scenario):
    members = survivors = 0
    mechanisms = set()
    for _ in range(REPETITIONS):
        n, left, _ms, got = orphans.one_round(mechanism, scenario)
        members += n
        survivors += left
        mechanisms.add(got)
    report(f"linux-orphans sigkill {mechanism}/{scenario}", repetitions=REPETITIONS,
           members=members, survivors=survivors)
    assert mechanisms == {EXPECTED_MECHANISM.get(mechanism, mechanism)}
    assert members >= REPETITIONS
    assert survivors == 0


def _owner_round(mechanism, scenario, command, user=None, python=sys.executable, grace=5.0):
    """Start an owner, end it with `command` ("exit", "raise" or "kill"), return (members,
    survivors) after up to `grace` seconds."""
    ready_dir = tempfile.mkdtemp(prefix="pgjob-stress-")
    os.chmod(ready_dir, 0o777)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), PYTHONDONTWRITEBYTECODE="1")
    kwargs = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    proc = subprocess.Popen([python, OWNER, mechanism, scenario, ready_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd="/", **kwargs)
    members = []
    try:
        info = orphans.read_report(proc)
        members = [(pid, start_time(pid)) for pid in info["pids"]]
        members = [m for m in members if m[1] is not None]
        if command == "kill":
            proc.kill()
        else:
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
        proc.wait(20)
        if command != "kill":
            assert proc.returncode == (0 if command == "exit" else 1), proc.stderr.read()
        wait_until(lambda: all(start_time(p) != s for p, s in members),
                   timeout=grace * orphans.TIMEOUT_SCALE)
        left = [m for m in members if start_time(m[0]) == m[1]]
        return len(members), len(left), info
    finally:
        _kill_leftovers(members)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        shutil.rmtree(ready_dir, ignore_errors=True)


@pytest.mark.parametrize("command", ["exit", "raise"])
@pytest.mark.parametrize("mechanism,scenario", [("pid_namespace", "mixed"), ("cgroup", "mixed"),
                                               ("pdeathsig", "tree")])
def test_owner_leaving_the_with_block_repeatedly_leaves_no_survivor(mechanism, scenario, command):
    members = survivors = 0
    for _ in range(REPETITIONS):
        n, left, info = _owner_round(mechanism, scenario, command)
        assert info["mechanism"] == mechanism
        members += n
        survivors += left
    report(f"linux-orphans {command} {mechanism}/{scenario}", repetitions=REPETITIONS,
           members=members, survivors=survivors)
    assert survivors == 0


# As in tests/linux/conftest.py: an ordinary user's uid (scripts/setup makes pgjob-tester), and
# 65534, which is also the kernel's overflow uid and so hides a wrongly written uid_map.
UNPRIVILEGED_UIDS = [1500, 65534]


def _unprivileged_python(uid):
    """An interpreter `uid` can run, of our version (pyenv's own lives under /root; scripts/test
    runs world-readable copies)."""
    if os.geteuid() != 0:
        return None
    for candidate in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(candidate):
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 user=uid, group=uid, extra_groups=[], cwd="/",
                                 capture_output=True, text=True)
        except PermissionError:
            continue
        if out.returncode == 0 and out.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    return None


@pytest.mark.parametrize("uid", UNPRIVILEGED_UIDS)
@pytest.mark.parametrize("scenario", ["mixed", "thread"])
def test_unprivileged_owner_sigkilled_repeatedly_leaves_no_survivor(scenario, uid):
    if os.geteuid() == uid:
        uid = None  # the suite runs as that user: the owner is simply our child
        python = sys.executable
    elif os.geteuid() != 0:
        pytest.skip("not root: can't switch to another uid (the suite itself also runs as an "
                    "ordinary user)")
    else:
        python = _unprivileged_python(uid)
    if python is None:
        pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} that uid {uid} can run")
    members = survivors = 0
    for _ in range(REPETITIONS):
        n, left, info = _owner_round("pid_namespace", scenario, "kill", user=uid, python=python)
        assert info["mechanism"] == "pid_namespace"
        members += n
        survivors += left
    report(f"linux-orphans sigkill unprivileged uid {uid or os.geteuid()} "
           f"pid_namespace/{scenario}",
           repetitions=REPETITIONS, members=members, survivors=survivors)
    assert survivors == 0


def test_control_plain_subprocess_leaves_survivors_every_time():
    """Without pgjob the same tree outlives its owner in every round: the counts above
    could be non-zero."""
    rounds = sized(2, 10)
    members = survivors = 0
    for _ in range(rounds):
        n, left, _info = _owner_round("plain", "mixed", "kill", grace=0.5)
        assert left == n > 0
        members += n
        survivors += left
    report("linux-orphans control plain/mixed", repetitions=rounds, members=members,
           survivors=survivors)


@pytest.mark.parametrize("mechanism,scenario",
                         [("cgroup", s) for s in MATRIX] + [("protect", s) for s in
                                                            MATRIX + PROTECT_ROUTES])
def test_delegated_owner_sigkilled_repeatedly_leaves_no_survivor(mechanism, scenario):
    """uid 1500 in a cgroup delegated to it (as systemd's Delegate=yes gives): the cgroup
    mechanisms, SIGKILLed, 0 survivors. Root makes the delegation; an ordinary user running
    the suite uses its own if it was delegated."""
    if os.geteuid() == 0:
        uid = TEST_UID
        python = _unprivileged_python(uid)
        if python is None:
            pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} that uid {uid} "
                        "can run")
    else:
        uid, python = None, sys.executable
        delegated = os.environ.get("PGJOB_VM_DELEGATED_CGROUP") or orphans.own_cgroup()
        own = os.path.join(orphans.cgroup2_mount() or "/nonexistent", delegated.lstrip("/"))
        if not os.access(os.path.join(own, "cgroup.procs"), os.W_OK):
            pytest.skip("this ordinary user's cgroup is not delegated to it")
    members = survivors = 0
    mechanisms = set()
    with orphans.delegated_cgroup(uid if uid is not None else os.geteuid()) as cgroup:
        for _ in range(REPETITIONS):
            n, left, _ms, got = orphans.one_round(mechanism, scenario, user=uid, cgroup=cgroup,
                                                  python=python)
            members += n
            survivors += left
            mechanisms.add(got)
    report(f"linux-orphans sigkill delegated uid {uid or os.geteuid()} {mechanism}/{scenario}",
           repetitions=REPETITIONS, members=members, survivors=survivors)
    assert mechanisms == {"cgroup"}
    assert members >= REPETITIONS
    assert survivors == 0
