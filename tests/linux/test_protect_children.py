"""protect_children() on Linux with real programs (issue 9, point 1): each case runs in a fresh
owner process (tests/linux/owner.py) as root, as an ordinary user (uid 1500) in a delegated
cgroup, and as one without: the program works the same before and after the call; when the
owner is SIGKILLed every process it created afterwards, by any route, is gone; where the
system can't protect, the process is exactly as it was. Assertions read what the kernel has:
/proc/PID/cgroup, /proc/PID/ns/*, the cgroup's own files."""
import os
import re

import pytest

from conftest import alive, cgroup_of, cgroup_path, cgroup_procs, kill_quietly
from proc_helpers import scaled, wait_until

pytestmark = pytest.mark.linux

# Routes by which a program creates processes; each is one owner scenario (owner.py).
KILL_SCENARIOS = ["sleeping", "busy", "stopped", "tree", "daemon", "doublefork", "setsid",
                  "thread", "prethread", "pool", "system", "asyncio"]
WHO_PROTECTED = ["root", "delegated"]


def owner_options(request, who):
    """Owner keyword arguments that start it as `who`: "root" (the suite's user, which must
    be root), "delegated" (uid 1500 inside a cgroup delegated to it), "undelegated" (an
    ordinary user whose cgroup is not its own)."""
    if who == "root":
        if os.geteuid() != 0:
            pytest.skip("the suite runs as an ordinary user")
        return {}
    if who == "delegated":
        cgroup = request.getfixturevalue("delegated_cgroup")
        return {"wrapper": cgroup.wrapper, "python": cgroup.python}
    return request.getfixturevalue("undelegated_user")


def helpers_started(info):
    """pgjob-helper processes that appeared with the call: {pid: cgroup}."""
    before = info.get("helpers_before", {})
    now = info["helpers"] if "helpers" in info else info["helpers_after"]
    return {int(pid): cg for pid, cg in now.items() if pid not in before}


def same_process_state(a, b):
    """Everything but the thread count (pools and executors come and go)."""
    return {k: v for k, v in a.items() if k != "threads"} == \
        {k: v for k, v in b.items() if k != "threads"}


def assert_every_check_ok(results, when):
    failed = {name: result for name, result in results.items() if result != "ok"}
    assert not failed, f"{when} protect_children(): {failed}"


# -- the program works exactly as before ------------------------------------------------------


@pytest.mark.parametrize("who", WHO_PROTECTED)
def test_program_works_the_same_before_and_after_the_call(owner_factory, request, who):
    owner = owner_factory("protect", "checks", ready_within=120, **owner_options(request, who))
    info = owner.info
    before, after = info["state_before"], info["state_after"]
    problems = []  # all of them at once: each names a different broken promise
    if info["mechanism"] != "cgroup":
        problems.append(f"mechanism {info['mechanism']!r}, not 'cgroup': {info['log'][-3:]}")
    for when in ("before", "after"):
        failed = {name: result for name, result in info[when].items() if result != "ok"}
        if failed:
            problems.append(f"{when} the call: {failed}")
    # Same uid, gid, groups and every namespace; only the cgroup changed.
    unchanged = ("cgroup", "threads")
    changed = {k: (v, after[k]) for k, v in before.items()
               if k not in unchanged and after[k] != v}
    if changed:
        problems.append(f"changed by the call: {changed}")
    if after["cgroup"] == before["cgroup"]:
        problems.append(f"still in cgroup {before['cgroup']}")
    # The kernel's view of the owner, from outside: in the job's cgroup.
    if cgroup_of(owner.proc.pid) != after["cgroup"]:
        problems.append(f"/proc/{owner.proc.pid}/cgroup says {cgroup_of(owner.proc.pid)}")
    # Every route starts its children in that cgroup too.
    elsewhere = {way: cg for way, cg in info["child_cgroups"].items() if cg != after["cgroup"]}
    if elsewhere:
        problems.append(f"children outside the job cgroup {after['cgroup']}: {elsewhere}")
    # The watcher is outside it.
    watchers = helpers_started(info)
    if not watchers:
        problems.append("no pgjob-helper (watcher) appeared")
    inside = {pid: cg for pid, cg in watchers.items()
              if cg == after["cgroup"] or cg.startswith(after["cgroup"].rstrip("/") + "/")}
    if inside:
        problems.append(f"watcher inside the job cgroup: {inside}")
    assert not problems, "\n".join(problems)


def test_control_the_checks_pass_in_a_plain_program(owner_factory):
    """The same checks without protect_children(): they are what a program does anyway."""
    owner = owner_factory("plain", "checks", ready_within=120)
    assert_every_check_ok(owner.info["before"], "without")
    assert_every_check_ok(owner.info["after"], "without (second round)")


# -- SIGKILL of the owner ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", KILL_SCENARIOS)
@pytest.mark.parametrize("who", WHO_PROTECTED)
def test_owner_sigkilled_every_process_created_after_the_call_dies(owner_factory, request,
                                                                    who, scenario):
    owner = owner_factory(scenario, "protect", **owner_options(request, who))
    info = owner.info
    assert info["mechanism"] == "cgroup", info["log"]
    job_cgroup = info["state_after"]["cgroup"]
    assert job_cgroup != info["state_before"]["cgroup"]
    assert owner.members and all(alive(m) for m in owner.members)
    # What the kernel has: every member (not the watcher) in the job's cgroup, like the owner.
    assert cgroup_of(owner.proc.pid) == job_cgroup
    watchers = helpers_started(info)
    outside = {pid: cgroup_of(pid) for pid, _ in owner.members
               if pid not in watchers and cgroup_of(pid) != job_cgroup}
    assert not outside, f"members outside the job cgroup {job_cgroup}: {outside}"
    assert watchers and all(cg != job_cgroup for cg in watchers.values()), watchers
    watcher_procs = [owner.tracker.track(pid) for pid in watchers]

    owner.sigkill()
    assert owner.members_gone(timeout=scaled(5)), [m for m in owner.members if alive(m)]
    # The watcher's work is done: it goes too, and so does the job's cgroup.
    assert wait_until(lambda: not any(alive(w) for w in watcher_procs), scaled(5)), watchers
    assert wait_until(lambda: not os.path.exists(cgroup_path(job_cgroup)), scaled(5)), \
        f"the job's cgroup {job_cgroup} was left behind"


def test_control_plain_program_leaves_survivors(owner_factory):
    """Without protect_children() the same routes outlive a SIGKILLed owner: the test above
    can fail."""
    owner = owner_factory("everything", "plain")
    assert len(owner.members) >= 12
    lasting = [m for m in owner.members if m[0] not in owner.info["pool_workers"]]
    owner.sigkill()
    assert not wait_until(lambda: not all(alive(m) for m in lasting), timeout=1.0), \
        [m for m in lasting if not alive(m)]
    for pid, _ in owner.members:
        kill_quietly(pid)
    assert owner.members_gone(timeout=scaled(5))


@pytest.mark.parametrize("who", WHO_PROTECTED)
def test_owner_sigkilled_with_every_route_at_once(owner_factory, request, who):
    owner = owner_factory("everything", "protect", **owner_options(request, who))
    assert owner.info["mechanism"] == "cgroup", owner.info["log"]
    assert len(owner.members) >= 12
    owner.sigkill()
    assert owner.members_gone(timeout=scaled(5)), [m for m in owner.members if alive(m)]


# -- where the system can't protect -----------------------------------------------------------


def _assert_left_exactly_as_it_was(info):
    for later in ("state_between", "state_after", "state_end"):
        assert same_process_state(info["state_before"], info[later]), (later, info[later])
    assert_every_check_ok(info["after"], "after a refused")
    # Children start where they always did.
    original = info["state_before"]["cgroup"]
    assert info["child_cgroups"] == {way: original for way in info["child_cgroups"]}
    assert info["helpers_after"] == info["helpers_before"], "a helper process was left"
    assert info["cgroup_dirs_after"] == info["cgroup_dirs_before"], "a cgroup was left"


def test_ordinary_user_without_delegation_logs_and_changes_nothing(owner_factory, request):
    owner = owner_factory("protect", "checks", ready_within=120,
                          **owner_options(request, "undelegated"))
    info = owner.info
    assert info["mechanism"] == "none"
    warnings = [line for line in info["log"] if line.startswith("WARNING")]
    assert any("orphan protection is off" in line for line in warnings), info["log"]
    assert any(re.search(r"(error code|errno) \d+", line) for line in warnings), warnings
    _assert_left_exactly_as_it_was(info)
    # The kernel agrees: the owner is where it started.
    assert cgroup_of(owner.proc.pid) == info["state_before"]["cgroup"]
    for ns, inode in info["state_before"]["ns"].items():
        assert os.stat(f"/proc/{owner.proc.pid}/ns/{ns}").st_ino == inode, ns


def test_ordinary_user_without_delegation_raise_raises_and_changes_nothing(owner_factory,
                                                                            request):
    owner = owner_factory("raise", "checks", ready_within=120,
                          **owner_options(request, "undelegated"))
    info = owner.info
    raised = info.get("raised")
    assert raised, f"protect_children(on_unavailable='raise') returned {info['mechanism']!r}"
    assert "pgjob._errors.JobError" in raised, raised
    assert ("builtins.PermissionError" in raised
            or "pgjob._errors.UnsupportedError" in raised), raised
    assert isinstance(info["raised_errno"], int)
    _assert_left_exactly_as_it_was(info)
    assert cgroup_of(owner.proc.pid) == info["state_before"]["cgroup"]


def test_ordinary_user_without_delegation_children_are_not_protected(owner_factory, request):
    """mechanism "none" means it: the members outlive the owner (and are cleaned up here)."""
    owner = owner_factory("tree", "protect", **owner_options(request, "undelegated"))
    assert owner.info["mechanism"] == "none"
    assert same_process_state(owner.info["state_before"], owner.info["state_after"])
    owner.sigkill()
    assert not wait_until(lambda: not all(alive(m) for m in owner.members), timeout=0.5)
    for pid, _ in owner.members:
        kill_quietly(pid)
    assert owner.members_gone(timeout=scaled(5))


@pytest.mark.parametrize("who", WHO_PROTECTED)
def test_delegated_cgroup_is_clean_after_the_owner_dies(owner_factory, request, who):
    """Nothing of the job is left in the cgroup the owner started in: no process, no child
    cgroup (the watcher removes the job's after killing it)."""
    options = owner_options(request, who)
    owner = owner_factory("tree", "protect", **options)
    assert owner.info["mechanism"] == "cgroup", owner.info["log"]
    start = cgroup_path(owner.info["state_before"]["cgroup"])
    owner.sigkill()
    assert owner.members_gone(timeout=scaled(5))
    job = cgroup_path(owner.info["state_after"]["cgroup"])
    assert wait_until(lambda: not os.path.exists(job), scaled(5)), f"{job} left behind"
    if who == "delegated":
        assert wait_until(lambda: not cgroup_procs(start), scaled(5)), cgroup_procs(start)
