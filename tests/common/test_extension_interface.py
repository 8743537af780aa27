"""The boundary between pgjob's Python code and its C extension, on each OS: the stub says
exactly what the built extension has (stubtest compares names, parameters and their kinds
against the functions' text signatures), and pgjob refuses an extension built for another
version of the package."""
import os
import re
import subprocess
import sys
import sysconfig

import pytest

import pgjob
from pgjob import _jobobject

PACKAGE_DIR = os.path.dirname(os.path.abspath(pgjob.__file__))
PACKAGE_ROOT = os.path.dirname(PACKAGE_DIR)
INSTALLED = os.path.basename(PACKAGE_ROOT) in ("site-packages", "dist-packages")
# The project's pyproject.toml: beside src/ in a checkout, or copied next to tests/ (the
# wheel's test run, cibuildwheel's test-sources).
PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "pyproject.toml")


def test_stub_matches_the_built_extension(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed (pip install mypy)")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    env = dict(os.environ)
    if not INSTALLED:
        # A source checkout: mypy finds the stub through MYPYPATH (it refuses site-packages
        # there; an installed package's stub is found as any py.typed package's).
        env["MYPYPATH"] = PACKAGE_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH"))
                                            if p)
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "pgjob._jobobject", "--mypy-config-file",
         str(config)], env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert result.returncode == 0, result.stdout
    assert "Success: no issues found" in result.stdout, result.stdout


def test_every_function_has_a_text_signature():
    """What stubtest compares against: without one, a C function's parameters can't be
    checked, and a stub that drifted from the C code would pass."""
    import inspect
    unchecked = []
    for name in dir(_jobobject):
        value = getattr(_jobobject, name)
        if callable(value) and not name.startswith("_"):
            try:
                inspect.signature(value)
            except ValueError:
                unchecked.append(name)
    assert not unchecked


def test_extension_is_built_for_this_version():
    assert _jobobject.VERSION == pgjob.__version__
    if os.path.isfile(PYPROJECT):
        with open(PYPROJECT, encoding="utf-8") as f:
            declared = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        assert declared is not None and declared.group(1) == pgjob.__version__


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.skipif(FREE_THREADED, reason="a free-threaded build has no stable ABI: cpXYt")
def test_the_extension_is_the_abi3_build():
    """setup.py builds against the 3.9 limited API on every GIL CPython, for one cp39-abi3
    wheel per platform: the module says so itself, and its file has the abi3 name."""
    assert _jobobject.LIMITED_API == 0x03090000
    name = os.path.basename(_jobobject.__file__)
    if sys.platform == "win32":
        assert name == "_jobobject.pyd"
    else:
        # (Debian's newer setuptools name it _jobobject.abi3-x86_64-linux-gnu.so)
        assert re.fullmatch(r"_jobobject\.abi3(-[A-Za-z0-9_]+-[a-z]+-[a-z0-9]+)?\.so", name), name


def test_no_other_build_of_the_extension_could_be_imported_instead():
    """The import system prefers a version-specific name (_jobobject.cpython-311-...so,
    .cp311-win_amd64.pyd) to the abi3 one: a stale build left beside the new one would be
    the file tested. None of this Python's other suffixes names a file in the package."""
    import importlib.machinery
    loaded = os.path.basename(_jobobject.__file__)
    shadows = [f"_jobobject{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    present = [n for n in shadows if n != loaded and os.path.exists(os.path.join(PACKAGE_DIR, n))]
    assert not present, f"{loaded} imported, but {present} are there too"


def test_an_extension_of_another_version_is_refused_at_import():
    """A stale build must fail at `import pgjob`, naming both versions and the fix, not later
    with a TypeError from a changed argument list. The stale extension is a stand-in module
    (building a real one of another version is what setup.py refuses to do by mistake)."""
    program = (
        "import sys, types\n"
        "stale = types.ModuleType('pgjob._jobobject')\n"
        "stale.VERSION = '0.0.1'\n"
        "stale.__file__ = '/nowhere/_jobobject.so'\n"
        "sys.modules['pgjob._jobobject'] = stale\n"
        "try:\n"
        "    import pgjob\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
        "else:\n"
        "    print('imported')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=120).stdout
    assert out.startswith("refused:"), out
    for part in (pgjob.__version__, "0.0.1", "/nowhere/_jobobject.so", "build_ext --inplace"):
        assert part in out, out


# -- keyword parsing in C: what stubtest cannot see ---------------------------------------------
# stubtest compares the stub with the text signatures, not with the C functions' kwlists: a
# kwlist name that differs from the signature's, or names in another order than the format's
# (a value bound to the wrong parameter), would pass it. Only calls show those.

# The functions that take keywords: every one with more than one parameter.
KEYWORD_FUNCTIONS = {
    "linux": {"spawn", "start_init"},
    "windows": {"SetJobExtendedLimits", "SetJobCpuRate", "AssignProcessToJobObject",
                "IsProcessInJob", "TerminateJobObject", "QueryJobAccounting",
                "AssociateJobCompletionPort", "GetQueuedCompletionStatus", "CreateProcessInJob"},
}.get(_jobobject.PLATFORM, set())

# spawn's required arguments, all by name: a direct child of /bin/true, nothing redirected.
SPAWN_REQUIRED = dict(
    argv=[b"true"], executables=[b"/bin/true"], env=None, cwd=None, close_fds=True,
    fds_to_keep=(), p2cread=-1, p2cwrite=-1, c2pread=-1, c2pwrite=-1, errread=-1, errwrite=-1,
    errpipe_read=-1, errpipe_write=-1, restore_signals=True, start_new_session=False,
    process_group=-1, gid=None, extra_groups=None, uid=None, umask=-1, pidns_fd=-1,
    userns_fd=-1, pdeathsig=False, chdir_marker=False)


def _functions():
    return sorted(name for name in dir(_jobobject)
                  if not name.startswith("_") and callable(getattr(_jobobject, name)))


def _kinds(name):
    import inspect
    return {p.kind for p in inspect.signature(getattr(_jobobject, name)).parameters.values()}


def test_keywords_are_taken_exactly_where_the_text_signature_says():
    """The functions with keyword parameters are the ones meant to have them, and a function
    whose signature says positional-only refuses a keyword in C too."""
    import inspect
    with_keywords = {name for name in _functions()
                     if inspect.Parameter.POSITIONAL_OR_KEYWORD in _kinds(name)}
    assert with_keywords == KEYWORD_FUNCTIONS
    for name in _functions():
        function = getattr(_jobobject, name)
        parameters = list(inspect.signature(function).parameters)
        if name in KEYWORD_FUNCTIONS or not parameters:
            continue
        assert _kinds(name) == {inspect.Parameter.POSITIONAL_ONLY}, name
        # refused before the function runs: no handle is closed, no process resumed
        with pytest.raises(TypeError, match="keyword"):
            function(**{parameters[0]: 0})


@pytest.fixture
def windows_job():
    """A fresh, empty job and a completion port (never handle 0: SetInformationJobObject
    would take NULL for the job the test process is in)."""
    if _jobobject.PLATFORM != "windows":
        pytest.skip("Windows' functions")
    job = _jobobject.CreateJobObject(None)
    port = _jobobject.CreateIoCompletionPort()
    yield job, port
    _jobobject.CloseHandle(port)
    _jobobject.CloseHandle(job)


@pytest.mark.skipif(_jobobject.PLATFORM != "linux", reason="Linux's functions")
def test_linux_functions_take_every_parameter_by_name():
    # data_limit, the last one, is checked right after parsing: nothing is cloned.
    with pytest.raises(ValueError, match="data_limit"):
        _jobobject.spawn(**SPAWN_REQUIRED, cgroup_fd=-1, data_limit=-2)
    # helper_path, the last one, refused by its converter: nothing is cloned.
    with pytest.raises(ValueError, match="null"):
        _jobobject.start_init(clone_flags=_jobobject.CLONE_NEWPID, map_ids=False,
                              on_owner_exit=_jobobject.PGJOB_INIT_KILL,
                              on_eof=_jobobject.PGJOB_INIT_KILL, arm_pdeathsig=False,
                              helper_path="no\0such")


def test_windows_functions_take_every_parameter_by_name(windows_job):
    import _winapi
    c = _jobobject
    job, port = windows_job
    # Distinct values, read back: a kwlist out of the format's order would swap them.
    c.SetJobExtendedLimits(active_processes=5, job_memory=128 << 20, process_memory=64 << 20,
                           limit_flags=c.JOB_OBJECT_LIMIT_PROCESS_MEMORY
                           | c.JOB_OBJECT_LIMIT_JOB_MEMORY | c.JOB_OBJECT_LIMIT_ACTIVE_PROCESS,
                           job=job)
    if c.WineVersion() is None:  # Wine's QueryInformationJobObject returns no limits at all
        assert c.QueryJobExtendedLimits(job)[:4] == (
            c.JOB_OBJECT_LIMIT_PROCESS_MEMORY | c.JOB_OBJECT_LIMIT_JOB_MEMORY
            | c.JOB_OBJECT_LIMIT_ACTIVE_PROCESS, 64 << 20, 128 << 20, 5)
    try:
        c.SetJobCpuRate(job=job, cpu_rate=5000, control_flags=c.JOB_OBJECT_CPU_RATE_CONTROL_ENABLE
                        | c.JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP)
    except OSError as exc:  # Wine 8 lacks the information class (see test_job_api.py)
        assert c.WineVersion() is not None and exc.winerror == c.ERROR_INVALID_PARAMETER
    c.AssociateJobCompletionPort(job=job, port=port, key=job)
    assert c.GetQueuedCompletionStatus(port=port, timeout_ms=0) is None  # an empty job: no message
    assert c.IsProcessInJob(process_handle=_winapi.GetCurrentProcess(), job=job) is False
    assert c.QueryJobAccounting(job=job, include_io=False)[0] == 0  # total processes
    c.TerminateJobObject(job=job, exit_code=1)  # an empty job: nothing to kill
    with pytest.raises(OSError) as info:
        # a process handle of 0 names none: refused by the kernel, not the parser
        c.AssignProcessToJobObject(job=job, process_handle=0)
    assert not isinstance(info.value, TypeError)
    with pytest.raises(FileNotFoundError) as info:
        c.CreateProcessInJob(application_name=None, command_line="C:\\no\\such\\program.exe",
                             inherit_handles=False, creation_flags=0, environment_block=None,
                             current_directory=None, startup_flags=0, show_window=0, std_input=0,
                             std_output=0, std_error=0, handle_list=None, job=job,
                             use_job_list=False)
    assert info.value.syscall == "CreateProcessW"


@pytest.mark.skipif(_jobobject.PLATFORM != "linux", reason="spawn is Linux's")
def test_spawn_names_an_unknown_keyword():
    # a misspelt optional argument: every required one is there, so the extra one is named
    with pytest.raises(TypeError, match="'data_limt'"):
        _jobobject.spawn(**SPAWN_REQUIRED, data_limt=1 << 30)


@pytest.mark.skipif(_jobobject.PLATFORM != "linux", reason="spawn is Linux's")
def test_spawn_names_a_missing_required_argument():
    arguments = dict(SPAWN_REQUIRED)
    del arguments["userns_fd"]
    with pytest.raises(TypeError, match="'userns_fd'"):
        _jobobject.spawn(**arguments)
    with pytest.raises(TypeError, match="'argv'"):  # by position and by name
        _jobobject.spawn(SPAWN_REQUIRED["argv"], **SPAWN_REQUIRED)


def test_create_process_in_job_names_a_misspelt_argument(windows_job):
    """Every parameter is required: a misspelt one shows as the one that is missing."""
    job, _ = windows_job
    with pytest.raises(TypeError, match="'use_job_list'"):
        _jobobject.CreateProcessInJob(
            application_name=None, command_line="C:\\no\\such\\program.exe",
            inherit_handles=False, creation_flags=0, environment_block=None,
            current_directory=None, startup_flags=0, show_window=0, std_input=0, std_output=0,
            std_error=0, handle_list=None, job=job, use_joblist=False)
