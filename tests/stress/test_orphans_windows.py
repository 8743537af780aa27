"""Issue A's orphan matrix, repeated under Wine: an owner (tests/windows/actor.py) builds its
tree, reports every member, and is TerminateProcess'd (from outside, or by itself); every
member must be gone within 5 s. Survivors are counted, killed, and fail the case."""
import json
import os
import subprocess
import sys

import pytest

from stress_support import STRESS, WINDOWS, report, sized

pytestmark = [*STRESS, pytest.mark.windows,
              pytest.mark.skipif(not WINDOWS, reason="Windows backend (scripts/winepy)")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ACTOR = os.path.join(ROOT, "tests", "windows", "actor.py")
REPETITIONS = sized(3, 100)
SYNCHRONIZE, PROCESS_TERMINATE = 0x00100000, 0x0001

# (owner options, how it dies)
CASES = [
    (("--mode", "job", "--child", "tree"), "outside"),
    (("--mode", "job", "--child", "tree"), "self"),
    (("--mode", "protect", "--child", "tree"), "outside"),
    (("--mode", "job", "--child", "sleeper", "--creationflags", "0x4"), "outside"),
]


def _open(pid):
    import _winapi
    try:
        return _winapi.OpenProcess(SYNCHRONIZE | PROCESS_TERMINATE, False, pid)
    except OSError:
        return None  # already gone


def one_round(owner_args, how, grace=5.0):
    """(members, survivors) of one owner death."""
    import _winapi
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    owner = subprocess.Popen([sys.executable, ACTOR, "owner", *owner_args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    handles = []
    try:
        line = owner.stdout.readline()
        assert line, f"owner exited with {owner.wait()} before reporting"
        members = json.loads(line)["members"]
        handles = [h for h in map(_open, members) if h is not None]
        if how == "self":
            owner.stdin.write("die\n")
            owner.stdin.flush()
        else:
            owner.kill()
        owner.wait(30)
        survivors = 0
        for h in handles:
            if _winapi.WaitForSingleObject(h, int(grace * 1000)) == _winapi.WAIT_TIMEOUT:
                survivors += 1
        return len(members), survivors
    finally:
        for h in handles:
            try:
                _winapi.TerminateProcess(h, 9)  # a survivor (or the control's tree) is ours
            except OSError:
                pass  # already gone
            _winapi.WaitForSingleObject(h, 10000)
            _winapi.CloseHandle(h)
        if owner.poll() is None:
            owner.kill()
        owner.wait(30)
        owner.stdin.close()
        owner.stdout.close()


@pytest.mark.parametrize("owner_args,how", CASES, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_owner_terminated_repeatedly_leaves_no_survivor(owner_args, how):
    members = survivors = 0
    for _ in range(REPETITIONS):
        n, left = one_round(owner_args, how)
        members += n
        survivors += left
    report(f"wine-orphans {' '.join(owner_args)} die={how}", repetitions=REPETITIONS,
           members=members, survivors=survivors)
    assert members >= REPETITIONS
    assert survivors == 0


def test_control_without_kill_on_close_leaves_survivors_every_time():
    rounds = sized(2, 10)
    members = survivors = 0
    for _ in range(rounds):
        n, left = one_round(("--mode", "job", "--child", "tree", "--no-kill-on-close"), "outside",
                            grace=0.5)
        assert left == n > 0
        members += n
        survivors += left
    report("wine-orphans control no-kill-on-close", repetitions=rounds, members=members,
           survivors=survivors)
