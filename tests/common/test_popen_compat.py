"""pgjob.Popen is a drop-in subprocess.Popen: the same positional and keyword arguments on
every Python version, `job` keyword-only, and it keeps working when a program replaces
subprocess.Popen with it (subprocess.call/run/check_output, subclasses, multiprocessing).
The replacement runs in a child interpreter, so it never leaks into this one."""
import inspect
import os
import subprocess
import sys
import textwrap

import pytest

import pgjob

from proc_helpers import running

# The pgjob under test, wherever it was imported from.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
ECHO = [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())"]


def _positional_parameters():
    """subprocess.Popen's positional parameters after `args` on this Python, with defaults."""
    params = list(inspect.signature(subprocess.Popen.__init__).parameters.values())[2:]
    return [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]


def run_python(code, tmp_path, timeout=120):
    """Run `code` as a script in a child interpreter with pgjob importable; its result."""
    script = tmp_path / "child_script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=timeout, cwd=str(tmp_path))


@pytest.mark.parametrize("via", ["Popen", "job.popen"])
def test_positional_arguments_as_subprocess_takes_them(via):
    with pgjob.Job() as job:
        factory = pgjob.Popen if via == "Popen" else job.popen
        # (args, bufsize, executable, stdin, stdout): the call the issue quotes.
        with factory(ECHO, -1, None, subprocess.PIPE, subprocess.PIPE) as p:
            assert p.communicate(b"through the pipe", timeout=60)[0] == b"through the pipe"
        assert p.returncode == 0


def test_every_positional_parameter_of_this_python_is_accepted():
    values = [p.default for p in _positional_parameters()]
    names = [p.name for p in _positional_parameters()]
    values[names.index("stdout")] = subprocess.PIPE
    with pgjob.Popen([sys.executable, "-c", "print('ok')"], *values) as p:
        assert p.communicate(timeout=60)[0].strip() == b"ok"


def test_one_positional_too_many_is_the_same_type_error_as_subprocess():
    too_many = [p.default for p in _positional_parameters()] + [None]
    with pytest.raises(TypeError) as ours:
        pgjob.Popen(ECHO, *too_many)
    with pytest.raises(TypeError) as theirs:
        subprocess.Popen(ECHO, *too_many)
    assert str(ours.value).split("() ", 1)[-1] == str(theirs.value).split("() ", 1)[-1]


def test_job_is_keyword_only_and_job_popen_takes_no_second_job():
    with pgjob.Job() as job, pgjob.Job() as other:
        with pytest.raises(TypeError):
            job.popen(ECHO, job=other)
        with pgjob.Popen(ECHO, stdin=subprocess.DEVNULL, job=job) as p:
            assert p.job is job and p.wait(60) == 0


def test_args_by_keyword():
    with pgjob.Popen(args=ECHO, stdin=subprocess.DEVNULL) as p:
        assert p.wait(60) == 0


REPLACED = """
import multiprocessing
import subprocess
import sys

import pgjob


def square(x):
    return x * x


if __name__ == "__main__":
    subprocess.Popen = pgjob.Popen
    quiet = [sys.executable, "-c", "pass"]
    assert subprocess.call(quiet) == 0
    assert subprocess.check_call(quiet) == 0
    out = subprocess.check_output([sys.executable, "-c", "print('out')"])
    assert out.strip() == b"out", out
    done = subprocess.run([sys.executable, "-c", "import sys; sys.exit(3)"], timeout=60,
                          capture_output=True)
    assert done.returncode == 3, done
    try:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    except subprocess.TimeoutExpired:
        pass
    else:
        raise AssertionError("no TimeoutExpired")
    sleeper = [sys.executable, "-c", "import sys; sys.stdin.read()"]

    # A class written against the replaced name: it subclasses pgjob.Popen now.
    class Wrapping(subprocess.Popen):
        def __init__(self, args, **kwargs):
            self.wrapped = True
            super().__init__(args, **kwargs)

    class WithJob(pgjob.Popen):
        def __init__(self, args, *, label, **kwargs):
            self.label = label
            super().__init__(args, **kwargs)

    with pgjob.Job() as job:
        for cls, extra in ((Wrapping, {}), (WithJob, {"label": "x"})):
            with cls(sleeper, stdin=subprocess.PIPE, job=job, **extra) as p:
                # The kernel's view, not ours: the child really is a member of the job.
                assert job.contains(p.pid), (cls, job.pids(), p.pid)
                p.stdin.close()
                assert p.wait(60) == 0
    with multiprocessing.Pool(2) as pool:
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
    print("all fine")
"""


def test_subprocess_popen_replaced_by_pgjob_popen(tmp_path):
    done = run_python(REPLACED, tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == b"all fine", done.stderr.decode()


def test_a_wrapped_execute_child_is_refused_and_the_escaped_child_killed(monkeypatch):
    """A profiler or mocking library that wraps Popen._execute_child calls the original
    function, whose globals pgjob does not route: the child starts outside the job. pgjob
    notices (its hook never ran), kills that child and says why, rather than return a member
    that is not one."""
    import functools
    import re
    original = subprocess.Popen._execute_child
    calls = []

    @functools.wraps(original)
    def wrapper(self, *args):
        calls.append(self)
        return original(self, *args)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", wrapper)
    with pgjob.Job() as job:
        if job.mechanism == "none":
            pytest.skip("mechanism none has no hook to bypass")
        with pytest.raises(pgjob.UnsupportedError, match="started outside the job") as info:
            job.popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert calls, "the wrapper was not called: the test proves nothing"
        assert "test_popen_compat" in str(info.value)  # names the wrapper's module
        pid = int(re.search(r"pid (\d+)", str(info.value)).group(1))
        assert not running(pid)
        if sys.platform != "win32":
            assert not os.path.exists(f"/proc/{pid}")  # reaped by pgjob: no zombie either
        assert pid not in job.pids()
    monkeypatch.undo()
    with pgjob.Job() as job:  # unwrapped again: spawns go through the job
        p = job.popen([sys.executable, "-c", "pass"])
        assert p.wait() == 0 and p.spawn_path not in (None, "plain")
