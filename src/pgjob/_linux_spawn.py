"""The spawn adapter: Popen._execute_child runs with its one call to
_posixsubprocess.fork_exec routed to _jobobject.spawn (see _linux.py's docstring), and the
thread that clones children whose PR_SET_PDEATHSIG must outlive the calling thread."""
from __future__ import annotations

import errno
import os
import queue
import sys
import threading
import types
import warnings
from typing import TYPE_CHECKING, Optional

from . import _jobobject as c
from ._errors import UnsupportedError
from ._log import logger

if TYPE_CHECKING:
    import subprocess
    from typing import Any, Callable, TypeVar

    from typing_extensions import TypeVarTuple, Unpack  # typing's own since 3.11

    _T = TypeVar("_T")
    _Ts = TypeVarTuple("_Ts")
    # _jobobject.spawn's 21 leading arguments, as fork_exec got them: a tuple of fixed length,
    # so that mypy can count the arguments _spawn passes after them.
    _SpawnFields = tuple[Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any,
                         Any, Any, Any, Any, Any, Any, Any]
    _SpawnFieldPicker = Callable[[tuple[Any, ...]], _SpawnFields]
    # What a thread hands _SpawnThread's thread: (fn, args, box for the result or the
    # exception, event set when box is filled).
    _SpawnRequest = tuple[Callable[..., object], tuple[object, ...], list[Any], threading.Event]

if TYPE_CHECKING and sys.platform != "linux":
    # Never true at run time. It tells mypy, checking for another platform, that this
    # Linux-only module ends here, instead of reporting each Linux API below as missing
    # (which is why each type: ignore below also names unused-ignore).
    raise ImportError("pgjob._linux_spawn is Linux-only")

# Popen reads "noexec:chdir" from the errpipe as "chdir(cwd) failed" since Python 3.13.
_CHDIR_MARKER = sys.version_info >= (3, 13)

# -- running Popen._execute_child with our spawn ------------------------------------------------

# How each CPython's Popen._execute_child calls _posixsubprocess.fork_exec: the positional
# arguments in order (checked against Lib/subprocess.py of each version), and the global name
# it calls it by. The entry for the newest version at or below the running one applies.
_FORK_EXEC_HEAD = (
    "args", "executables", "close_fds", "fds_to_keep", "cwd", "env", "p2cread", "p2cwrite",
    "c2pread", "c2pwrite", "errread", "errwrite", "errpipe_read", "errpipe_write",
    "restore_signals", "start_new_session")
_FORK_EXEC_SHAPES = (
    # 3.9, 3.10: 21 arguments, called as _posixsubprocess.fork_exec
    ((3, 9), "_posixsubprocess",
     _FORK_EXEC_HEAD + ("gid", "groups", "uid", "umask", "preexec_fn")),
    # 3.11 - 3.13: 23, process_group added, allow_vfork (_USE_VFORK) at the end
    ((3, 11), "_fork_exec",
     _FORK_EXEC_HEAD + ("process_group", "gid", "groups", "uid", "umask", "preexec_fn",
                        "allow_vfork")),
    # 3.14, 3.15: 22, allow_vfork dropped (subprocess._USE_VFORK is gone)
    ((3, 14), "_fork_exec",
     _FORK_EXEC_HEAD + ("process_group", "gid", "groups", "uid", "umask", "preexec_fn")),
)
_NEWEST_CHECKED = (3, 15)  # the last version whose subprocess.py the table was checked against


def _fork_exec_shape(version: tuple[object, ...]) -> tuple[str, tuple[str, ...]]:
    """(name _execute_child calls fork_exec by, argument names) for Python `version`."""
    found: tuple[tuple[int, int], str, tuple[str, ...]] = _FORK_EXEC_SHAPES[0]
    for shape in _FORK_EXEC_SHAPES:
        if tuple(version[:2]) >= shape[0]:
            found = shape
    return found[1], found[2]


def _fork_exec_interface_problem(execute_child: types.FunctionType, fork_exec: Callable[..., int],
                                 version: tuple[object, ...]) -> Optional[str]:
    """What is wrong with the private interface pgjob hooks into, for Python `version`; None if
    it looks as the table says. Checked: the globals _execute_child reads and that we replace
    (the fork_exec name, _USE_POSIX_SPAWN) exist, and, where fork_exec has a text signature
    (3.12+), that it takes the number of arguments we unpack."""
    hook, names = _fork_exec_shape(version)
    where = f"Python {version[0]}.{version[1]}"
    used = execute_child.__code__.co_names
    for name in (hook, "_USE_POSIX_SPAWN"):
        if name not in used or name not in execute_child.__globals__:
            return (f"{where}: subprocess.Popen._execute_child no longer uses {name}, which "
                    f"pgjob replaces to start processes in a job")
    signature: Optional[str] = getattr(fork_exec, "__text_signature__", None)
    if signature:
        params = [p.strip() for p in signature.strip("()").split(",")]
        params = [p for p in params if p and p not in ("$module", "/")]
        if len(params) != len(names):
            return (f"{where}: _posixsubprocess.fork_exec takes {len(params)} arguments, "
                    f"pgjob knows the {len(names)}-argument form of this version")
    return None


def _check_fork_exec_interface() -> Optional[str]:
    """Run once at import: pgjob says at once, naming the Python version, when this Python's
    subprocess internals are not the ones it knows, instead of failing on the first spawn. The
    problem is logged and warned about (RuntimeWarning) here, and every job.popen() on Linux then
    raises UnsupportedError with the same text. A version newer than the table's last checked
    one is used with the newest shape if it passes the check, and logged at debug level."""
    import subprocess
    try:
        import _posixsubprocess
    except ImportError:
        return f"Python {sys.version_info[0]}.{sys.version_info[1]} has no _posixsubprocess"
    problem = _fork_exec_interface_problem(
        # Private: typeshed's Popen has no _execute_child.
        subprocess.Popen._execute_child,  # type: ignore[attr-defined, unused-ignore]
        _posixsubprocess.fork_exec, sys.version_info)
    if problem is not None:
        logger.warning("%s: job.popen() is unavailable on this Python", problem)
        warnings.warn(f"pgjob: {problem}: job.popen() is unavailable on this Python",
                      RuntimeWarning, stacklevel=2)
    elif sys.version_info[:2] > _NEWEST_CHECKED:
        logger.debug("Python %d.%d is newer than the last one pgjob's fork_exec table was checked "
                     "against (%d.%d); its interface passed the import check",
                     sys.version_info[0], sys.version_info[1], *_NEWEST_CHECKED)
    return problem


_FORK_EXEC_HOOK, _FORK_EXEC_ARGS = _fork_exec_shape(sys.version_info)
_INTERFACE_PROBLEM = _check_fork_exec_interface()


class _PosixsubprocessWithJob:
    """Stands in for the _posixsubprocess module (Python 3.9/3.10 call it by module name):
    every attribute is the real module's, except fork_exec."""

    def __init__(self, fork_exec: Callable[..., int]) -> None:
        import _posixsubprocess
        self._module = _posixsubprocess
        self.fork_exec = fork_exec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class _Routed(threading.local):
    """Per thread: Popen._execute_child rebuilt on a namespace of our own (a copy of
    subprocess's globals with fork_exec routed), and the fork_exec of the call running in
    this thread. Building that function and namespace is a dict copy and a new function per
    spawn, and a new dict every time leaves the interpreter's global-lookup caches cold; per
    thread, because a namespace shared by threads would let one thread's refresh (below) show
    another thread subprocess's own fork_exec for an instant."""

    def __init__(self) -> None:
        # execute_child -> (namespace, rebuilt function)
        self.functions: dict[types.FunctionType,
                             tuple[dict[str, Any], types.FunctionType]] = {}
        self.fork_exec: Optional[Callable[..., int]] = None


_ROUTED = _Routed()


def _routed_fork_exec(*args: Any) -> int:
    """What the rebuilt _execute_child calls instead of fork_exec: the current call's hook."""
    # Not None here: run_execute_child sets it before the rebuilt _execute_child can call us
    # (a cast would cost a call per spawn).
    return _ROUTED.fork_exec(*args)  # type: ignore[misc, unused-ignore]


_POSIXSUBPROCESS_ROUTED = _PosixsubprocessWithJob(_routed_fork_exec)


def run_execute_child(execute_child: types.FunctionType, fork_exec: Callable[..., int],
                      popen: subprocess.Popen[Any], args: tuple[Any, ...]) -> None:
    """Run Popen._execute_child (the function `execute_child`) for `popen` with its fork_exec
    call going to `fork_exec`. Re-entrant: an audit hook that starts a process of its own
    inside the call (subprocess raises its audit event before fork_exec) gets its own hook,
    and ours is back when it returns."""
    if _INTERFACE_PROBLEM is not None:
        raise UnsupportedError(errno.EOPNOTSUPP, f"{_INTERFACE_PROBLEM}: job.popen() is "
                               "unavailable on this Python")
    routed = _ROUTED
    found = routed.functions.get(execute_child)
    if found is None:
        namespace = dict(execute_child.__globals__)
        function = types.FunctionType(execute_child.__code__, namespace, execute_child.__name__,
                                      execute_child.__defaults__, execute_child.__closure__)
        routed.functions[execute_child] = found = (namespace, function)
    namespace, function = found
    # subprocess's globals as they are now (a program may have rebound one since), then ours:
    # the same keys every time, so the interpreter's lookup caches stay valid.
    namespace.update(execute_child.__globals__)
    namespace["_USE_POSIX_SPAWN"] = False  # posix_spawn would bypass fork_exec
    outer, routed.fork_exec = routed.fork_exec, fork_exec
    if _FORK_EXEC_HOOK == "_fork_exec":
        namespace["_fork_exec"] = fork_exec
    else:
        namespace["_posixsubprocess"] = _POSIXSUBPROCESS_ROUTED
    try:
        function(popen, *args)
    finally:
        # Back to the outer call's hook, or to none: the namespace must not keep this call's
        # hook (and through it the Popen and the job) alive.
        routed.fork_exec = outer
        if _FORK_EXEC_HOOK == "_fork_exec":
            namespace["_fork_exec"] = _routed_fork_exec if outer is None else outer


def _spawn_fields(names: tuple[str, ...]) -> tuple[_SpawnFieldPicker, int]:
    """(picker, preexec_fn index) for the fork_exec argument names of this Python: the picker
    takes fork_exec's arguments plus _MISSING and returns _jobobject.spawn's leading ones."""
    import operator
    wanted = ("args", "executables", "env", "cwd", "close_fds", "fds_to_keep", "p2cread",
              "p2cwrite", "c2pread", "c2pwrite", "errread", "errwrite", "errpipe_read",
              "errpipe_write", "restore_signals", "start_new_session", "process_group", "gid",
              "groups", "uid", "umask")
    # A name this Python does not pass (process_group before 3.11) reads _MISSING's value.
    index = [names.index(n) if n in names else len(names) for n in wanted]
    return operator.itemgetter(*index), names.index("preexec_fn")


_MISSING = (-1,)  # process_group where fork_exec has none: leave the group alone
_PICK_SPAWN_FIELDS, _PREEXEC_FN = _spawn_fields(_FORK_EXEC_ARGS)


def _spawn(fork_exec_args: tuple[Any, ...], pidns_fd: int, userns_fd: int, pdeathsig: bool,
           cgroup_fd: int = -1, data_limit: int = -1) -> tuple[int, int]:
    """Call _jobobject.spawn with what subprocess passed to _posixsubprocess.fork_exec;
    (pid, pidfd) of the program. cgroup_fd >= 0 (an O_DIRECTORY fd of a cgroup v2): the program
    is created inside that cgroup (clone3 CLONE_INTO_CGROUP, Linux 5.7). data_limit >= 0: the
    program's RLIMIT_DATA, soft and hard, is lowered to it before exec (process_memory_limit).
    The C layer converts the arguments as _posixsubprocess does (paths with the filesystem
    encoding, None for ids left alone)."""
    if len(fork_exec_args) != len(_FORK_EXEC_ARGS):
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"Python {sys.version_info[0]}.{sys.version_info[1]} called "
            f"fork_exec with {len(fork_exec_args)} arguments; pgjob knows the "
            f"{len(_FORK_EXEC_ARGS)}-argument form of this version")
    if fork_exec_args[_PREEXEC_FN] is not None:
        raise UnsupportedError(
            errno.EINVAL, "preexec_fn is not supported by pgjob on Linux: the child is set up in C "
            "between clone and exec, where running Python is unsafe. Use start_new_session, "
            "process_group, umask, user/group/extra_groups, cwd or env, or do the setup in the "
            "child program itself.")
    return c.spawn(*_PICK_SPAWN_FIELDS(fork_exec_args + _MISSING), pidns_fd, userns_fd,
                   pdeathsig, _CHDIR_MARKER, cgroup_fd, data_limit)


class _SpawnThread:
    """PR_SET_PDEATHSIG fires when the parent *thread* exits (golang/go#27505), so a pdeathsig
    child (or a namespace's init) made from a worker thread would die with that thread. Such
    clones run here, on one thread that lives as long as the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[_SpawnRequest] = queue.SimpleQueue()
        self._pid = -1

    def after_fork_in_child(self) -> None:
        """The thread is not in the child, and its lock may have been held by another thread
        at the fork: start afresh (call() starts a new thread on first use)."""
        self._lock = threading.Lock()
        self._requests = queue.SimpleQueue()
        self._pid = -1

    def call(self, fn: Callable[[Unpack[_Ts]], _T], *args: Unpack[_Ts]) -> _T:
        if threading.current_thread() is threading.main_thread():
            return fn(*args)
        with self._lock:
            if self._pid != os.getpid():  # first use, or we are a fork of the process that had it
                self._requests = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._requests,),
                                 name="pgjob-spawner", daemon=True).start()
                self._pid = os.getpid()
            requests = self._requests
        done = threading.Event()
        box: list[Any] = [None, None]
        requests.put((fn, args, box, done))
        done.wait()
        if box[1] is not None:
            raise box[1]
        result: _T = box[0]  # what fn returned: _serve put it there
        return result

    @staticmethod
    def _serve(requests: queue.SimpleQueue[_SpawnRequest]) -> None:
        while True:
            fn, args, box, done = requests.get()
            try:
                box[0] = fn(*args)
            except BaseException as exc:  # handed to the caller's thread
                box[1] = exc
            finally:
                done.set()


_SPAWN_THREAD = _SpawnThread()
