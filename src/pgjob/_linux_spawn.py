"""Linux's half of the spawn: what subprocess passes to _posixsubprocess.fork_exec (caught by
the hook in _spawn_hook.py), handed to _jobobject.spawn; and the thread that clones children
whose PR_SET_PDEATHSIG must outlive the calling thread."""
from __future__ import annotations

import errno
import os
import queue
import sys
import threading
from typing import TYPE_CHECKING

from . import _jobobject as c
from ._errors import UnsupportedError
from ._spawn_hook import FORK_EXEC_ARGS

if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    from typing_extensions import ParamSpec  # typing's own since 3.10

    _T = TypeVar("_T")
    _P = ParamSpec("_P")
    # _jobobject.spawn's 21 leading arguments, as fork_exec got them: a tuple of fixed length,
    # so that mypy can check the arguments _spawn passes after them.
    _SpawnFields = tuple[Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any,
                         Any, Any, Any, Any, Any, Any, Any]
    _SpawnFieldPicker = Callable[[tuple[Any, ...]], _SpawnFields]
    # What a thread hands _SpawnThread's thread: (fn, args, kwargs, box for the result or the
    # exception, event set when box is filled).
    _SpawnRequest = tuple[Callable[..., object], tuple[object, ...], dict[str, object], list[Any],
                          threading.Event]

if TYPE_CHECKING and sys.platform != "linux":
    # Never true at run time. It tells mypy, checking for another platform, that this
    # Linux-only module ends here, instead of reporting each Linux API below as missing
    # (which is why each type: ignore below also names unused-ignore).
    raise ImportError("pgjob._linux_spawn is Linux-only")

# Popen reads "noexec:chdir" from the errpipe as "chdir(cwd) failed" since Python 3.13.
_CHDIR_MARKER = sys.version_info >= (3, 13)


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
_PICK_SPAWN_FIELDS, _PREEXEC_FN = _spawn_fields(FORK_EXEC_ARGS)


def _spawn(fork_exec_args: tuple[Any, ...], pidns_fd: int = -1, userns_fd: int = -1,
           pdeathsig: bool = False, cgroup_fd: int = -1, data_limit: int = -1) -> tuple[int, int]:
    """Call _jobobject.spawn with what subprocess passed to _posixsubprocess.fork_exec;
    (pid, pidfd) of the program. pidns_fd >= 0: it starts in that PID namespace (entering
    userns_fd first if >= 0); else it is a direct child, with PR_SET_PDEATHSIG if pdeathsig.
    cgroup_fd >= 0 (an O_DIRECTORY fd of a cgroup v2): the program is created inside that
    cgroup (clone3 CLONE_INTO_CGROUP, Linux 5.7). data_limit >= 0: the program's RLIMIT_DATA,
    soft and hard, is lowered to it before exec (process_memory_limit). The C layer converts
    the arguments as _posixsubprocess does (paths with the filesystem encoding, None for ids
    left alone)."""
    if len(fork_exec_args) != len(FORK_EXEC_ARGS):
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"Python {sys.version_info[0]}.{sys.version_info[1]} called "
            f"fork_exec with {len(fork_exec_args)} arguments; pgjob knows the "
            f"{len(FORK_EXEC_ARGS)}-argument form of this version")
    if fork_exec_args[_PREEXEC_FN] is not None:
        raise UnsupportedError(
            errno.EINVAL, "preexec_fn is not supported by pgjob on Linux: the child is set up in C "
            "between clone and exec, where running Python is unsafe. Use start_new_session, "
            "process_group, umask, user/group/extra_groups, cwd or env, or do the setup in the "
            "child program itself.")
    # fork_exec's own fields by position, pgjob's by name (several are ints that could swap).
    return c.spawn(*_PICK_SPAWN_FIELDS(fork_exec_args + _MISSING), pidns_fd=pidns_fd,
                   userns_fd=userns_fd, pdeathsig=pdeathsig, chdir_marker=_CHDIR_MARKER,
                   cgroup_fd=cgroup_fd, data_limit=data_limit)


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

    def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if threading.current_thread() is threading.main_thread():
            return fn(*args, **kwargs)
        with self._lock:
            if self._pid != os.getpid():  # first use, or we are a fork of the process that had it
                self._requests = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._requests,),
                                 name="pgjob-spawner", daemon=True).start()
                self._pid = os.getpid()
            requests = self._requests
        done = threading.Event()
        box: list[Any] = [None, None]
        requests.put((fn, args, kwargs, box, done))
        done.wait()
        if box[1] is not None:
            raise box[1]
        result: _T = box[0]  # what fn returned: _serve put it there
        return result

    @staticmethod
    def _serve(requests: queue.SimpleQueue[_SpawnRequest]) -> None:
        while True:
            fn, args, kwargs, box, done = requests.get()
            try:
                box[0] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread
                box[1] = exc
            finally:
                done.set()


_SPAWN_THREAD = _SpawnThread()
