"""pgjob's pytest plugin as a user's suite meets it: real pytest runs in a child process
(the leak checks put that process in a job of its own), on a suite that starts real
processes, with the plugin loaded the way a user's pytest loads it."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from proc_helpers import pgjob_plugin_args, running, wait_until

import pgjob

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The pgjob under test, wherever it was imported from (the source tree, or an installed wheel).
SRC = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
SLEEP = [sys.executable, "-c", "import time, sys; time.sleep(120)"]

USER_TESTS = f"""
import os, subprocess, sys
import pytest

SLEEP = {SLEEP!r}


def write_pid(name, pid):
    with open(name, "w") as f:
        f.write(str(pid))


@pytest.fixture(scope="session")
def server():
    # A session fixture's process lives until the session ends: it is the fixture's.
    p = subprocess.Popen(SLEEP + ["session-server"])
    write_pid("server.pid", p.pid)
    yield p
    p.kill()
    p.wait()


def test_member_of_the_job_fixture(job):
    p = job.popen(SLEEP + ["job-member"])
    write_pid("member.pid", p.pid)
    assert job.contains(p.pid)


def test_clean(server):
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_leaves_a_child():
    p = subprocess.Popen(SLEEP + ["leaked-child"])
    write_pid("child.pid", p.pid)


def test_leaves_an_orphan():
    # The process it starts starts another and exits: the grandchild is nobody's child now.
    # (Not on our pipe: run() would wait for the grandchild's end of it.)
    code = ("import subprocess, sys; p = subprocess.Popen(%r, stdout=subprocess.DEVNULL); "
            "print(p.pid)" % (SLEEP + ["leaked-orphan"],))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True)
    write_pid("orphan.pid", int(out.stdout))
"""


def _kill(pid):
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/PID", str(pid)], capture_output=True)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def user_suite(tmp_path):
    """A user's project: its tests in tmp_path; run(*args) runs pytest on it and returns
    (exit code, output, {name: pid} of the processes its tests started). Whatever they
    started and left is killed afterwards."""
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    pids = {}

    def run(*args, ini=None):
        if ini is not None:
            (tmp_path / "pytest.ini").write_text(textwrap.dedent(ini))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        env.pop("PYTEST_ADDOPTS", None)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               *pgjob_plugin_args(), "-rA", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=300)
        for name in ("member", "child", "orphan", "server"):
            path = tmp_path / f"{name}.pid"
            if path.exists():
                pids[name] = int(path.read_text())
        return proc.returncode, proc.stdout, dict(pids)

    yield run
    for pid in pids.values():
        _kill(pid)


def test_the_job_fixture_kills_its_members_after_the_test(user_suite):
    code, out, pids = user_suite("-k", "member_of_the_job_fixture")
    assert code == 0, out
    assert "1 passed" in out
    assert wait_until(lambda: not running(pids["member"]), 10), "the job's member survived"


def test_without_leak_checks_nothing_is_checked(user_suite):
    code, out, pids = user_suite("-k", "leaves_a_child")
    assert code == 0, out
    assert "pgjob: leak checks" not in out
    assert running(pids["child"])  # left running, as pytest alone would


@pytest.mark.parametrize("how", ["option", "ini"])
def test_a_leaked_child_fails_its_test_is_named_and_killed(user_suite, how):
    if how == "option":
        code, out, pids = user_suite("--pgjob-leaks")
    else:
        code, out, pids = user_suite(ini="[pytest]\npgjob_leaks = true\n")
    assert code == 1, out
    assert "pgjob: leak checks on, watching" in out
    child = pids["child"]
    assert f"pid {child}: " in out and "leaked-child" in out, out
    assert "test_leaves_a_child" in out.split("short test summary info")[1]
    assert wait_until(lambda: not running(child), 10), "the leaked process still runs"
    # The others are clean: the job fixture's member, and the session fixture's server
    # (started during test_clean's setup, it is the fixture's, not the test's).
    summary = out.split("short test summary info")[1]
    assert "PASSED test_user.py::test_member_of_the_job_fixture" in summary
    assert "PASSED test_user.py::test_clean" in summary
    assert "ERROR test_user.py::test_clean" not in summary
    assert "session-server" not in out


def test_a_leaked_orphan_is_found_through_the_session_job(user_suite):
    code, out, pids = user_suite("--pgjob-leaks", "-k", "orphan")
    if "the descendants of pid" in out:
        pytest.skip("no job can hold the pytest process here (no writable cgroup v2): the "
                    "plugin watches descendants, which an orphan has left: "
                    + out.split("watching ", 1)[1].splitlines()[0])
    assert code == 1, out
    orphan = pids["orphan"]
    assert f"pid {orphan}: " in out and "leaked-orphan" in out, out
    assert wait_until(lambda: not running(orphan), 10), "the leaked orphan still runs"


def test_the_suite_in_docs_testing_md_runs_as_documented(tmp_path):
    """docs/testing.md's conftest.py, test module and pytest.ini, each a block whose first
    line names its file, written out and run: both tests pass with the leak checks on."""
    import re
    docs = os.path.join(ROOT, "docs", "testing.md")
    with open(docs, encoding="utf-8") as f:
        blocks = re.findall(r"^```\w*\n# (\S+)\n(.*?)^```", f.read(), re.S | re.M)
    assert sorted(name for name, _ in blocks) == ["conftest.py", "pytest.ini", "test_example.py"]
    for name, body in blocks:
        (tmp_path / name).write_text(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           *pgjob_plugin_args()], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, done.stdout
    assert "pgjob: leak checks on" in done.stdout and "2 passed" in done.stdout, done.stdout
