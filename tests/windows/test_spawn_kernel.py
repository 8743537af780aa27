"""What CreateProcessW really received for job.popen: which handles the child inherited, which
spawn path joined it to the job (and whether it was a member before it ran), the audit event,
the environment block, and the fallbacks when Windows refuses the job list."""
import inspect
import os
import subprocess
import sys

import _winapi
import msvcrt
import pytest

import pgjob
from conftest import wait_gone
from pgjob import _jobobject, _spawn_hook, _windows

PY = sys.executable
CREATE_SUSPENDED = 0x4

# The child writes a byte through each handle value it is given on its command line and says
# which writes worked; the parent then reads each pipe, so what counts is what came through.
WRITE_THROUGH = (
    "import msvcrt, os, sys\n"
    "for h in sys.argv[1:]:\n"
    "    try:\n"
    "        os.write(msvcrt.open_osfhandle(int(h), 0), b'x')\n"
    "    except OSError:\n"
    "        pass\n"
)


class InheritablePipe:
    """A pipe whose write end is an inheritable handle in this process."""

    def __init__(self):
        self.r, self.w = os.pipe()
        os.set_inheritable(self.w, True)
        self.handle = msvcrt.get_osfhandle(self.w)

    def received(self):
        """What arrived, once every writer is gone (our own write end is closed here)."""
        os.close(self.w)
        with os.fdopen(self.r, "rb") as f:
            return f.read()


def spawn_writer(spawn, pipes, **kwargs):
    return spawn([PY, "-c", WRITE_THROUGH, *(str(p.handle) for p in pipes)], **kwargs)


@pytest.mark.parametrize("spawn_name", ["job.popen", "subprocess.Popen"])
def test_close_fds_true_passes_only_the_handle_list(job, spawn_name):
    """close_fds=True with a handle list: only the listed handle reaches the child. Before
    the attribute list reached CreateProcessW, job.popen passed every inheritable handle.
    subprocess.Popen is the reference that the check itself can tell the two apart."""
    spawn = job.popen if spawn_name == "job.popen" else subprocess.Popen
    listed, unlisted = InheritablePipe(), InheritablePipe()
    si = subprocess.STARTUPINFO(lpAttributeList={"handle_list": [listed.handle]})
    p = spawn_writer(spawn, [listed, unlisted], startupinfo=si, close_fds=True)
    assert p.wait(60) == 0
    assert listed.received() == b"x"
    assert unlisted.received() == b"", "a handle outside the handle list was inherited"


def test_close_fds_false_inherits_every_inheritable_handle(job):
    """The control: without a handle list, the same unlisted handle does reach the child, so
    the check above can fail."""
    listed, unlisted = InheritablePipe(), InheritablePipe()
    p = spawn_writer(job.popen, [listed, unlisted], close_fds=False)
    assert p.wait(60) == 0
    assert listed.received() == b"x" and unlisted.received() == b"x"


def test_close_fds_true_without_pipes_inherits_nothing(job):
    """Popen's default (close_fds=True, no std handles): bInheritHandles is FALSE."""
    pipe = InheritablePipe()
    p = spawn_writer(job.popen, [pipe])
    assert p.wait(60) == 0
    assert pipe.received() == b""


def test_job_list_path_member_before_it_runs(job, reaper):
    """Windows 10+ and Wine 8 both accept PROC_THREAD_ATTRIBUTE_JOB_LIST once it is really in
    STARTUPINFOEXW.lpAttributeList: the child is born in the job, still suspended, without
    any AssignProcessToJobObject. (Before the fix every spawn said "suspended".)"""
    assert _jobobject.JobListSupported() is True
    p = job.popen([PY, "-c", "print('ran', flush=True)"], stdout=subprocess.PIPE, text=True,
                  creationflags=CREATE_SUSPENDED)
    reaper.track(p.pid)
    assert p.spawn_path == "job_list"
    assert job.contains(p) and pgjob.in_job(p.pid)
    # "job_list": the C layer found it a member right after CreateProcessW, before it
    # assigned anything, and it has not run since.
    assert _winapi.WaitForSingleObject(p._handle, 0) == _winapi.WAIT_TIMEOUT
    p.resume()
    assert p.communicate(timeout=60)[0] == "ran\n"


def test_suspended_path_when_job_list_is_unknown(job, reaper, monkeypatch):
    """Where the attribute is unknown (Windows before 10), the child is assigned while
    suspended, and is a member before it runs too."""
    monkeypatch.setattr(_windows, "_JOB_LIST_SUPPORTED", False)
    p = job.popen([PY, "-c", "pass"], creationflags=CREATE_SUSPENDED)
    reaper.track(p.pid)
    assert p.spawn_path == "suspended"
    assert job.contains(p)
    assert _winapi.WaitForSingleObject(p._handle, 0) == _winapi.WAIT_TIMEOUT
    p.resume()
    assert p.wait(60) == 0


def refuse_job_list(monkeypatch, winerror):
    """CreateProcessInJob fails as CreateProcessW does when Windows refuses the job list
    (ERROR_ACCESS_DENIED: the job can't join this process's job hierarchy), only while
    the job list is asked for; returns the list of use_job_list values it was called with."""
    real = _jobobject.CreateProcessInJob
    calls = []

    def create(*args, **kwargs):
        # by position or by name, as the real function takes it
        use_job_list = inspect.signature(real).bind(*args, **kwargs).arguments["use_job_list"]
        calls.append(use_job_list)
        if use_job_list:
            exc = OSError(0, "CreateProcessW failed: simulated", None, winerror)
            exc.syscall = "CreateProcessW"
            exc.job_list = True
            raise exc
        return real(*args, **kwargs)
    monkeypatch.setattr(_jobobject, "CreateProcessInJob", create)
    return calls


def test_refused_job_list_retries_once_on_the_suspended_path(job, monkeypatch):
    calls = refuse_job_list(monkeypatch, _jobobject.ERROR_ACCESS_DENIED)
    p = job.popen([PY, "-c", "raise SystemExit(3)"])
    assert p.spawn_path == "suspended" and p.wait(60) == 3
    p2 = job.popen([PY, "-c", "pass"])  # this job does not ask again
    assert p2.wait(60) == 0
    assert calls == [True, False, False]


def test_other_job_list_failures_are_not_retried(job, monkeypatch):
    calls = refuse_job_list(monkeypatch, _jobobject.ERROR_FILE_NOT_FOUND)
    with pytest.raises(FileNotFoundError):
        job.popen([PY, "-c", "pass"])
    assert calls == [True] and job.pids() == []


def test_real_c_layer_marks_job_list_failures(job):
    """The .job_list mark the fallback relies on comes from the C layer itself."""
    with pytest.raises(OSError) as info:
        _jobobject.CreateProcessInJob(None, "C:\\no\\such\\program.exe", False, 0, None, None,
                                      0, 0, 0, 0, 0, None, job._impl.handle, True)
    assert info.value.job_list is True and info.value.syscall == "CreateProcessW"
    with pytest.raises(OSError) as info:
        _jobobject.CreateProcessInJob(None, "C:\\no\\such\\program.exe", False, 0, None, None,
                                      0, 0, 0, 0, 0, None, job._impl.handle, False)
    assert not hasattr(info.value, "job_list")


def test_probe_failure_is_not_cached_as_unsupported(job, monkeypatch):
    """Only ERROR_NOT_SUPPORTED means "no job list"; a probe that failed for another reason
    (out of memory) sends this one spawn down the suspended path and is asked again."""
    monkeypatch.setattr(_windows, "_JOB_LIST_SUPPORTED", None)

    def out_of_memory():
        raise MemoryError
    monkeypatch.setattr(_jobobject, "JobListSupported", out_of_memory)
    p = job.popen([PY, "-c", "pass"])
    assert p.spawn_path == "suspended" and p.wait(60) == 0
    assert _windows._JOB_LIST_SUPPORTED is None
    monkeypatch.setattr(_jobobject, "JobListSupported", lambda: True)
    p = job.popen([PY, "-c", "pass"])
    assert p.spawn_path == "job_list" and p.wait(60) == 0
    assert _windows._JOB_LIST_SUPPORTED is True


class _WinapiFailingDuplicate:
    def __getattr__(self, name):
        return getattr(_winapi, name)

    @staticmethod
    def DuplicateHandle(*args):
        exc = OSError(0, "simulated", None, _jobobject.ERROR_ACCESS_DENIED)
        raise exc


def test_failed_thread_duplicate_leaves_no_child_and_no_handle(job, monkeypatch):
    """CREATE_SUSPENDED keeps a copy of the thread handle; if that copy fails, the child
    (suspended, so it would never even run) is killed and both handles are closed."""
    monkeypatch.setattr(_windows, "_winapi", _WinapiFailingDuplicate())
    before = _jobobject.GetProcessHandleCount(_winapi.GetCurrentProcess())
    with pytest.raises(OSError):
        job.popen([PY, "-c", "pass"], creationflags=CREATE_SUSPENDED)
    monkeypatch.undo()
    assert job.wait(10) is True and job.pids() == []
    assert _jobobject.GetProcessHandleCount(_winapi.GetCurrentProcess()) <= before


def test_extended_startupinfo_flag_from_the_caller_gets_a_startupinfoex(job):
    """With EXTENDED_STARTUPINFO_PRESENT in the caller's creationflags, CreateProcessW reads
    a STARTUPINFOEXW: cb must be its size even when no attribute list is needed. The size
    is invisible to the child, so the C trace (PGJOB_DEBUG=1) is what is read here."""
    script = ("import pgjob, sys, subprocess\n"
              "from pgjob import _windows\n"
              "_windows._JOB_LIST_SUPPORTED = False\n"
              "with pgjob.Job() as job:\n"
              f"    p = job.popen([sys.executable, '-c', 'pass'], creationflags={_jobobject.EXTENDED_STARTUPINFO_PRESENT})\n"
              "    assert p.wait(60) == 0\n")
    env = dict(os.environ, PGJOB_DEBUG="1")
    out = subprocess.run([PY, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    traced = [line for line in out.stderr.splitlines() if "CreateProcessW: cb=" in line]
    size = 112 if sys.maxsize > 2**32 else 72  # sizeof(STARTUPINFOEXW), 64/32-bit
    assert traced and all(f"cb={size} " in line for line in traced), traced


AUDIT_SCRIPT = """
import json, subprocess, sys, pgjob
seen = {{}}
def hook(event, args):
    if event == "_winapi.CreateProcess":
        current.append([a if isinstance(a, (str, type(None))) else repr(a) for a in args])
sys.addaudithook(hook)
with pgjob.Job() as job:
    for name, spawn in (("job.popen", job.popen), ("subprocess.Popen", subprocess.Popen)):
        current = seen[name] = []
        spawn([sys.executable, "-c", "pass"], cwd={cwd!r}).wait(60)
print(json.dumps(seen))
"""


def test_audit_event_is_winapis_own_raised_once(tmp_path):
    """_winapi raises the event, once, with its own arguments. Its command_line slot formats
    the object as a wide string (garbage, on every version up to 3.14): job.popen's is the
    command line exactly when subprocess.Popen's is."""
    out = subprocess.run([PY, "-c", AUDIT_SCRIPT.format(cwd=str(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json
    seen = json.loads(out.stdout)
    (ours,), (plain,) = seen["job.popen"], seen["subprocess.Popen"]
    assert ours[0] is None and ours[2] == str(tmp_path) == plain[2] and plain[0] is None
    command_line = subprocess.list2cmdline([PY, "-c", "pass"])
    assert (ours[1] == command_line) == (plain[1] == command_line)


WINAPI_ORDER_SCRIPT = """
import json, subprocess, sys, _winapi
trace = []
sys.addaudithook(lambda event, args: event == "_winapi.CreateProcess" and trace.append("audit"))

class Stop(Exception):
    pass

class HandleList:
    def __iter__(self):
        trace.append("handle_list")
        raise Stop

class StartupInfo:
    def __getattr__(self, name):
        trace.append(name)
        return {"handle_list": HandleList()} if name == "lpAttributeList" else 0

class Environment:
    def keys(self):
        trace.append("keys")
        return ["b", "A", "a"]
    def values(self):
        trace.append("values")
        return ["1", "2", "3"]
    def __getitem__(self, key):
        trace.append("[%s]" % key)
        return "x"

def stopped(*args):
    try:
        _winapi.CreateProcess(*args)
    except Stop:
        return True
    except Exception as exc:
        return type(exc).__name__
    return "created"

# command_line: checked after the handle list
ok = stopped(None, 5, None, None, 1, 0, Environment(), None, StartupInfo())
first = list(trace)
# the handles: converted after the list is read, before command_line is checked
class Plain:
    dwFlags = wShowWindow = 0
    hStdInput = hStdOutput = hStdError = None
    lpAttributeList = {"handle_list": [2**70]}
handles_first = stopped(None, 5, None, None, 1, 0, None, None, Plain())
print(json.dumps([first, ok, handles_first]))
"""


def test_winapi_checks_everything_but_two_before_the_handle_list():
    """The premise of _windows.check_with_winapi, on this Python
    (_spawn_hook.WINAPI_CREATE_PROCESS_ORDER): _winapi.CreateProcess raises its audit event,
    reads the startupinfo fields and the whole environment, and only then iterates the handle
    list; command_line is checked after it, and the handles' conversion before command_line."""
    out = subprocess.run([PY, "-c", WINAPI_ORDER_SCRIPT], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import json
    trace, stopped, handles_first = json.loads(out.stdout)
    fields = ["dwFlags", "wShowWindow", "hStdInput", "hStdOutput", "hStdError"]
    if sys.version_info >= (3, 12, 2) or (3, 11, 8) <= sys.version_info < (3, 12):
        environment = ["keys", "[a]", "[b]"]  # gh-87868: sorted, "A" merged into the later "a"
    else:
        environment = ["keys", "values"]
    assert trace == ["audit", *fields, *environment, "lpAttributeList", "handle_list"]
    assert stopped is True, "command_line was checked before the handle list"
    assert handles_first == "OverflowError"


def test_a_winapi_that_creates_before_the_handle_list_is_refused(job, monkeypatch, tmp_path):
    """The guard, with a stand-in for a _winapi that never reads the handle list: the process
    its trial call creates is suspended, so it never runs, and killed; the spawn raises
    UnsupportedError and nothing joins the job."""
    created = []

    class CreatesAtOnce:
        def __getattr__(self, name):
            return getattr(_winapi, name)

        def CreateProcess(self, *args):
            result = _winapi.CreateProcess(*args[:8], subprocess.STARTUPINFO())
            created.append(result[2])
            return result

    monkeypatch.setattr(_windows, "_winapi", CreatesAtOnce())
    marker = tmp_path / "ran"
    with pytest.raises(pgjob.UnsupportedError, match="before reading its handle list"):
        job.popen([PY, "-c", f"open({str(marker)!r}, 'w').close()"])
    monkeypatch.undo()
    assert len(created) == 1
    assert wait_gone(created) == []
    assert not marker.exists()
    assert job.pids() == []


def test_audit_hook_can_veto_the_spawn(job):
    """A hook that raises stops the spawn before anything is created, as in _winapi."""
    script = ("import sys, pgjob\n"
              "def veto(event, args):\n"
              "    if event == '_winapi.CreateProcess':\n"
              "        raise PermissionError('vetoed')\n"
              "sys.addaudithook(veto)\n"
              "with pgjob.Job() as job:\n"
              "    try:\n"
              "        job.popen([sys.executable, '-c', 'pass'])\n"
              "    except PermissionError as exc:\n"
              "        print(exc, job.pids())\n")
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "vetoed []", out.stderr


# Names equal for str.upper() but not for Windows ("ß".upper() == "SS"), names Windows does
# upper-case beyond ASCII, and names that only differ in case, which Windows merges.
UNICODE_ENVIRONMENTS = [
    {"STRAßE": "eszett", "STRASSE": "double s"},
    {"ßX": "1", "SSX": "2", "ssx": "3"},
    {"ÉTÉ": "upper", "été": "lower"},
    {"ǅ": "title", "ǆ": "lower", "Ǆ": "upper"},
    {"ﬁle": "ligature", "FILE": "plain"},
    {"Ωmega": "omega", "ωMEGA": "other"},
    {"Straße": "a", "STRAßE": "b"},  # a case variant: merged from gh-87868 on, the later wins
]
SHOW_ENV = ("import json, os\n"
            "print(json.dumps(sorted((k, v) for k, v in os.environ.items()"
            " if not k.isascii() or k.upper() in ('STRASSE', 'SSX', 'FILE'))))")


@pytest.mark.parametrize("extra", UNICODE_ENVIRONMENTS, ids=repr)
def test_environment_matches_subprocess_for_non_ascii_names(job, extra):
    base = {k: os.environ[k] for k in ("SYSTEMROOT", "PATH", "PYTHONPATH") if k in os.environ}
    env = dict(base, **extra)
    argv = [PY, "-c", SHOW_ENV]
    ours = job.popen(argv, env=env, stdout=subprocess.PIPE, encoding="utf-8").communicate(timeout=60)
    plain = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                             encoding="utf-8").communicate(timeout=60)
    assert ours == plain


def test_import_check_warns_and_spawn_is_unsupported(monkeypatch):
    """An _execute_child that no longer makes the one CreateProcess call pgjob knows: a
    RuntimeWarning at import naming the Python version, then UnsupportedError on spawn."""
    def changed_execute_child(self, args, *rest):
        return _winapi.CreateProcess(args, None)  # 2 arguments, not 9
    monkeypatch.setattr(subprocess.Popen, "_execute_child", changed_execute_child)
    problem = _spawn_hook.create_process_interface_problem(subprocess.Popen._execute_child)
    assert problem is not None and "2" in problem
    monkeypatch.undo()
    monkeypatch.setattr(_spawn_hook, "PROBLEM", problem)
    with pgjob.Job() as job:
        with pytest.raises(pgjob.UnsupportedError) as info:
            job.popen([PY, "-c", "pass"])
        assert job.pids() == []
    assert sys.version.split()[0] in str(info.value)


def test_import_check_passes_on_this_python():
    assert _spawn_hook.interface_problem() is None and _spawn_hook.PROBLEM is None


def test_import_warning_names_the_python_version():
    script = ("import subprocess, warnings, _winapi\n"
              "def changed(self, args, *rest):\n"
              "    return _winapi.CreateProcess(args)\n"
              "subprocess.Popen._execute_child = changed\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    import pgjob\n"
              "print([str(w.message) for w in caught if w.category is RuntimeWarning])\n")
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unavailable on Python " + sys.version.split()[0] in out.stdout
