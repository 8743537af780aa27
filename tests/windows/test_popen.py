"""job.popen is subprocess.Popen: everything Popen does keeps working through the job spawn path."""
import collections.abc
import os
import subprocess
import sys

import pytest

import pgjob
from conftest import actor_command

PY = sys.executable
CREATE_SUSPENDED = 0x4
CREATE_NEW_PROCESS_GROUP = 0x200


def test_is_a_popen_and_a_member(job):
    p = job.popen([PY, "-c", "pass"])
    assert isinstance(p, subprocess.Popen) and isinstance(p, pgjob.Popen)
    assert p.spawn_path in ("job_list", "suspended")
    assert p.wait(60) == 0


def test_pipes_and_communicate_bytes(job):
    p = job.popen([PY, "-c", "import sys; data = sys.stdin.buffer.read(); "
                   "sys.stdout.buffer.write(data[::-1]); sys.stderr.write('err')"],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(b"abc\x00def", timeout=60)
    assert out == b"fed\x00cba" and err == b"err" and p.returncode == 0


def test_text_mode_stderr_to_stdout(job):
    p = job.popen([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=60)
    assert sorted(out.split()) == ["err", "out"]


def test_env_and_cwd(job, tmp_path):
    env = dict(os.environ, PGJOB_TEST_VALUE="héllo wörld")
    p = job.popen([PY, "-c", "import os; print(os.environ['PGJOB_TEST_VALUE']); print(os.getcwd())"],
                  stdout=subprocess.PIPE, env=env, cwd=str(tmp_path), encoding="utf-8")
    out, _ = p.communicate(timeout=60)
    value, cwd = out.splitlines()
    assert value == "héllo wörld"
    assert os.path.normcase(cwd) == os.path.normcase(str(tmp_path))


def test_empty_environment_value_and_minimal_env(job):
    base = {k: os.environ[k] for k in ("SYSTEMROOT", "PATH", "PYTHONPATH") if k in os.environ}
    p = job.popen([PY, "-c", "import os; print(repr(os.environ.get('EMPTY')))"],
                  stdout=subprocess.PIPE, text=True, env=dict(base, EMPTY=""))
    assert p.communicate(timeout=60)[0].strip() == "''"


def test_returncode_and_timeout(job, reaper):
    assert job.popen([PY, "-c", "raise SystemExit(42)"]).wait(60) == 42
    sleeper = reaper.start(actor_command("sleeper"), spawn=job.popen)
    sleeper.read_json()
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.popen.wait(timeout=0.1)
    sleeper.popen.terminate()
    assert sleeper.popen.wait(30) == 1


def test_run_style_check_output_through_job(job):
    p = job.popen([PY, "-c", "print(2 + 2)"], stdout=subprocess.PIPE, text=True)
    assert p.communicate(timeout=60)[0] == "4\n"


def test_shell_true(job):
    p = job.popen("echo pgjob", shell=True, stdout=subprocess.PIPE, text=True)
    assert p.communicate(timeout=60)[0].strip() == "pgjob"


def test_missing_program_is_file_not_found(job):
    with pytest.raises(FileNotFoundError):
        job.popen(["C:\\no\\such\\program.exe"])
    assert job.pids() == []


def test_caller_creationflags_are_preserved_and_suspended_child_stays_suspended(job, reaper):
    p = job.popen([PY, "-c", "print('ran', flush=True)"], stdout=subprocess.PIPE, text=True,
                  creationflags=CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP)
    reaper.track(p.pid)
    assert job.contains(p)
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(timeout=1.0)  # suspended: it cannot have run
    p.resume()
    assert p.communicate(timeout=60)[0] == "ran\n"
    with pytest.raises(ValueError):
        p.resume()


def test_close_fds_false_and_handle_inheritance(job):
    r, w = os.pipe()
    os.set_inheritable(w, True)
    import msvcrt
    handle = msvcrt.get_osfhandle(w)
    si = subprocess.STARTUPINFO(lpAttributeList={"handle_list": [handle]})
    p = job.popen([PY, "-c", f"import msvcrt, os; fd = msvcrt.open_osfhandle({handle}, 0); "
                   "os.write(fd, b'through'); os.close(fd)"], startupinfo=si, close_fds=True)
    os.close(w)
    assert p.wait(60) == 0
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"through"


def test_pgjob_popen_without_job_makes_a_private_job(reaper):
    with pgjob.Popen([PY, "-c", "pass"]) as p:
        assert p.job.mechanism == "job_object"
        assert p.wait(60) == 0
    assert p.job.closed


def outcome(spawn, argv, **kwargs):
    """What spawn(argv, **kwargs) did, comparable between subprocess.Popen and job.popen:
    ("ran", its stdout), or the exception's class, message and winerror."""
    try:
        p = spawn(argv, stdout=subprocess.PIPE, text=True, **kwargs)
    except (OSError, TypeError, ValueError) as exc:
        return (type(exc), str(exc), getattr(exc, "winerror", None))
    return ("ran", p.communicate(timeout=60)[0])


# Environments that fail (or not) in _winapi in an order-dependent way: names are checked
# (type, emptiness) in insertion order first, then every pair in case-insensitive sorted order.
BAD_ENVIRONMENTS = [
    {"": "x"}, {"A=B": "x"}, {"=C:": "x"}, {"x": "y", "": 1, 2: 3}, {1: "x", "": "y"},
    {"": "y", 1: "x"}, {"b": 1, "a=b": "x"}, {"b": "x", "a=b": 1}, {"b": 1, "A\0": "x"},
    {b"a": "x"}, {"a": b"x"}, {"a": "x\0"}, {"a": "x", "A": "y"},
]


@pytest.mark.parametrize("extra", BAD_ENVIRONMENTS, ids=repr)
def test_environment_fails_exactly_like_subprocess(job, extra):
    """The fuzzer's finds: job.popen must refuse (or accept) an environment exactly as
    subprocess.Popen does, with the same exception class, message and winerror."""
    env = dict(os.environ)
    env.update(extra)
    argv = [PY, "-c", "import os; print(os.environ.get('A'))"]
    assert outcome(job.popen, argv, env=env) == outcome(subprocess.Popen, argv, env=env)


@pytest.mark.parametrize("kwargs", [
    {"creationflags": None, "env": {"": "x"}},
    {"creationflags": 1.5, "env": {"": "x"}},
    {"creationflags": "x"},
], ids=repr)
def test_bad_arguments_fail_in_winapis_order(job, kwargs):
    """The full-size fuzz's find: _winapi converts its arguments before it reads the
    environment, so a bad creationflags wins over a bad env, with _winapi's own message."""
    plain = outcome(subprocess.Popen, [PY, "-c", "pass"], **kwargs)
    assert plain[0] is TypeError
    assert outcome(job.popen, [PY, "-c", "pass"], **kwargs) == plain


class DuckStartupInfo:
    """A startupinfo that is not a subprocess.STARTUPINFO (Popen only calls its copy()), so
    _winapi sees fields and attribute lists a STARTUPINFO would not let through."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def copy(self):
        return DuckStartupInfo(**self.__dict__)


class Index:
    def __index__(self):
        return 0


def unpiped_outcome(spawn, argv, **kwargs):
    """outcome() without pipes, which would make Popen itself touch dwFlags and the handles."""
    try:
        p = spawn(argv, **kwargs)
    except Exception as exc:
        return (type(exc), str(exc), getattr(exc, "winerror", None))
    return ("ran", p.wait(60))


BAD_ENV = {"": "x"}
FIELDS = {"dwFlags": 0, "wShowWindow": 0, "hStdInput": None, "hStdOutput": None,
          "hStdError": None}


@pytest.mark.parametrize("argv_tail, kwargs", [
    # _winapi reads the five fields before the environment and raises a conversion error
    # after the last one: an error in hStdError stands, one in an earlier field is lost in
    # the lookups that follow it (so the bad env wins), and so is one before a field it can't
    # read, which it takes for 0
    pytest.param([], {"startupinfo": subprocess.STARTUPINFO(hStdError=-1), "env": BAD_ENV},
                 id="hStdError-and-env"),
    pytest.param([], {"startupinfo": subprocess.STARTUPINFO(dwFlags="x"), "env": BAD_ENV},
                 id="dwFlags-and-env"),
    pytest.param([], {"startupinfo": subprocess.STARTUPINFO(hStdInput=-1)}, id="hStdInput"),
    pytest.param([], {"startupinfo": subprocess.STARTUPINFO(wShowWindow=2**40)},
                 id="wShowWindow"),
    pytest.param([], {"startupinfo": DuckStartupInfo(
        dwFlags=0, wShowWindow=0, hStdInput=None, hStdOutput=-1, lpAttributeList={})},
        id="missing-field"),
    pytest.param([], {"env": collections.deque()}, id="env-deque"),
    pytest.param([], {"env": ["A=B"]}, id="env-list"),
    pytest.param([], {"env": collections.deque(), "creationflags": "x"},
                 id="env-deque-and-flags"),
    # 3.14 takes an __index__, earlier versions don't
    pytest.param([], {"creationflags": Index()}, id="flags-index"),
    pytest.param([], {"startupinfo": subprocess.STARTUPINFO(
        lpAttributeList=collections.deque(["x"]))}, id="attribute-list-deque"),
    pytest.param([], {"startupinfo": subprocess.STARTUPINFO(
        lpAttributeList=collections.deque(["x"])), "env": BAD_ENV},
        id="attribute-list-deque-and-env"),
    pytest.param([], {"startupinfo": DuckStartupInfo(**FIELDS,
                                                     lpAttributeList={"handle_list": 0})},
                 id="handle-list-int"),
    pytest.param([], {"startupinfo": DuckStartupInfo(**FIELDS, lpAttributeList={"other": 1})},
                 id="no-handle-list"),
    pytest.param(["\0"], {}, id="command-line-nul"),
    # the handles are converted before command_line is checked
    pytest.param(["\0"], {"startupinfo": subprocess.STARTUPINFO(
        lpAttributeList={"handle_list": [2**70]}), "close_fds": True},
        id="handle-overflow-and-command-line-nul"),
])
def test_two_bad_arguments_fail_as_in_subprocess(job, argv_tail, kwargs):
    """_winapi checks the arguments in its own order, and job.popen has it do so: whichever
    argument it refuses first is refused, with its exception."""
    argv = [PY, "-c", "pass", *argv_tail]
    plain = unpiped_outcome(subprocess.Popen, argv, **kwargs)
    assert unpiped_outcome(job.popen, argv, **kwargs) == plain
    assert job.pids() == []


class LoggingEnvironment(collections.abc.Mapping):
    """An env whose every read is logged, to compare how each Popen reads it."""

    def __init__(self, data, log):
        self._data, self._log = data, log

    def __getitem__(self, key):
        self._log.append(("getitem", key))
        return self._data[key]

    def __iter__(self):
        self._log.append(("iter",))
        return iter(self._data)

    def __len__(self):
        self._log.append(("len",))
        return len(self._data)

    def keys(self):
        self._log.append(("keys",))
        return list(self._data)

    def values(self):
        self._log.append(("values",))
        return list(self._data.values())


def test_environment_is_read_once_as_subprocess_reads_it(job):
    """The same calls on the mapping, in the same order, once (pgjob builds the block from what
    _winapi read), and the same variables in the child."""
    data = {k: os.environ[k] for k in ("SYSTEMROOT", "PATH", "PYTHONPATH") if k in os.environ}
    data.update({"pgjob_b": "1", "PGJOB_A": "2", "pgjob_a": "3"})
    argv = [PY, "-c", "import os; print(sorted(k for k in os.environ if 'PGJOB' in k.upper()), "
            "os.environ['PGJOB_A'])"]
    logs = []
    for spawn in (job.popen, subprocess.Popen):
        log = []
        p = spawn(argv, env=LoggingEnvironment(data, log), stdout=subprocess.PIPE, text=True)
        logs.append((log, p.communicate(timeout=60)[0]))
    assert logs[0] == logs[1]
    assert logs[0][0].count(("keys",)) == 1
