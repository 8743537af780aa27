"""A Job belongs to the process that created it: in a child of os.fork() it is inert.
Closing it there (explicitly, by `with`, by garbage collection, at interpreter exit) must
not touch the parent's namespace, and using it raises JobClosedError naming the owner.
Each case runs in its own owner interpreter (tests/linux/conftest.py's SRC on its path),
so sys.exit() in the forked child ends only that child."""
import json
import os
import subprocess
import sys

import pytest

import pgjob

# The pgjob under test, wherever it was imported from.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))

OWNER = r'''
import gc, json, os, subprocess, sys
import pgjob

action, variant = sys.argv[1], sys.argv[2]
SLEEPER = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]
if variant == "protect":
    job = pgjob.protect_children(on_unavailable="raise")
    member = subprocess.Popen(SLEEPER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
else:
    job = pgjob.Job(on_unavailable="raise")
    member = job.popen(SLEEPER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
assert member.stdout.readline() == b"ready\n"
owner = os.getpid()
report = {"mechanism": job.mechanism, "member": member.pid}


def child():
    """In the forked child; returns its exit status (0: everything as documented)."""
    global job
    if action == "use":
        assert job.closed, "job.closed is False in the forked child"
        for use in (lambda: job.popen(["true"]), job.pids, lambda: job.terminate(),
                    job.wait, job.detach, lambda: job.contains(member.pid),
                    lambda: job.events(0), lambda: pgjob.Popen(["true"], job=job)):
            try:
                use()
            except pgjob.JobClosedError as exc:
                assert f"belongs to process {owner}" in str(exc), str(exc)
            else:
                raise AssertionError("no JobClosedError in the forked child")
        assert pgjob.protect_children() is job or variant != "protect"
        os._exit(0)
    if action == "close":
        job.close()
        job.close()
        os._exit(0)
    if action == "gc":
        collected = __import__("weakref").ref(job)
        del job
        member.job = None  # the Popen's reference: the child lets go of every one
        gc.collect()
        assert collected() is None, "the Job was not collected in the child"
        os._exit(0)
    if action == "exit":
        sys.exit(0)  # interpreter shutdown: finalizers, atexit, module teardown
    raise AssertionError(action)


def fork_and_wait():
    pid = os.fork()
    if pid == 0:
        try:
            child()
        except SystemExit:
            raise
        except BaseException as exc:
            print(f"child: {exc!r}", file=sys.stderr, flush=True)
            os._exit(3)
    return os.waitpid(pid, 0)[1]


def check_parent():
    report["member_running"] = member.poll() is None
    report["member_in_job"] = variant == "protect" or job.contains(member.pid)
    # The parent's next spawn works: the namespace's init is alive.
    later = subprocess.Popen(["true"]) if variant == "protect" else job.popen(["true"])
    report["later_status"] = later.wait(30)
    member.stdin.close()
    report["member_status"] = member.wait(30)


if action == "with":
    action = "exit"  # the child leaves the with block (closing the Job there), then exits
    with job:
        status = fork_and_wait()
        if os.getpid() != owner:
            sys.exit(0)
        report["child_status"] = os.waitstatus_to_exitcode(status)
        check_parent()
else:
    report["child_status"] = os.waitstatus_to_exitcode(fork_and_wait())
    check_parent()
print(json.dumps(report), flush=True)
'''


def run_owner(tmp_path, tracker, action, variant):
    script = tmp_path / "fork_owner.py"
    script.write_text(OWNER)
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, str(script), action, variant],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    tracker.track(proc.pid)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    return report, err.decode()


@pytest.mark.parametrize("variant", ["job", "protect"])
@pytest.mark.parametrize("action", ["use", "close", "gc", "exit", "with"])
def test_a_forked_child_cannot_touch_the_parents_job(tmp_path, tracker, action, variant):
    if variant == "protect" and action == "with":
        pytest.skip("protect_children()'s Job is not used as a with block")
    if variant == "protect" and action == "gc":
        pytest.skip("protect_children() keeps its Job for the process lifetime: never collected")
    report, err = run_owner(tmp_path, tracker, action, variant)
    if report["mechanism"] not in ("pid_namespace", "cgroup", "pdeathsig"):
        pytest.skip(f"no kernel mechanism here: {report['mechanism']}")
    assert report["child_status"] == 0, err
    assert report["member_running"], f"the child's {action} killed the parent's member: {report}"
    assert report["member_in_job"]
    assert report["later_status"] == 0, report
    assert report["member_status"] == 0, report
