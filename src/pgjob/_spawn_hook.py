"""pgjob's one hook into subprocess, for every OS: `Popen._execute_child` run on a copy of its
module's globals in which the single call that creates the child is pgjob's (POSIX:
`_posixsubprocess.fork_exec`, by the name this CPython calls it; Windows:
`_winapi.CreateProcess`). Everything else `_execute_child` does stays CPython's: argument
conversion, pipes, the errpipe protocol, its audit event, its errors. Nothing global is
patched. The backends supply the replacement (`_linux.py`: a fork_exec that calls
`_jobobject.spawn`; `_windows.py`: a `_winapi` whose CreateProcess has the real one check
the arguments and raise its audit event, then calls `_jobobject.CreateProcessInJob`).

The private names this relies on are CPython's and change between versions (3.11 renamed the
fork_exec global and added an argument, 3.14 dropped one). What each version looks like is
written down here, once, and checked at import (`PROBLEM`): a Python that differs gets a
RuntimeWarning and a log line naming its version at `import pgjob`, and `UnsupportedError`
from every `job.popen()` instead of an obscure failure.
"""
from __future__ import annotations

import errno
import sys
import threading
import types
import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._errors import UnsupportedError
from ._log import logger

if TYPE_CHECKING:
    import subprocess

__all__ = ["PROBLEM", "run_execute_child", "fork_exec_replacements", "FORK_EXEC_ARGS"]

# -- POSIX: how each CPython's _execute_child calls fork_exec -------------------------------------

# The positional arguments in order (checked against Lib/subprocess.py of each version), and
# the global name it calls fork_exec by. The entry for the newest version at or below the
# running one applies.
_FORK_EXEC_HEAD = (
    "args", "executables", "close_fds", "fds_to_keep", "cwd", "env", "p2cread", "p2cwrite",
    "c2pread", "c2pwrite", "errread", "errwrite", "errpipe_read", "errpipe_write",
    "restore_signals", "start_new_session")
_FORK_EXEC_SHAPES: tuple[tuple[tuple[int, int], str, tuple[str, ...]], ...] = (
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
# The last version whose subprocess.py (and _winapi.c) the tables here were checked against.
NEWEST_CHECKED = (3, 15)


def fork_exec_shape(version: tuple[object, ...]) -> tuple[str, tuple[str, ...]]:
    """(the global name _execute_child calls fork_exec by, its argument names) for Python
    `version` (a tuple like sys.version_info)."""
    found = _FORK_EXEC_SHAPES[0]
    for shape in _FORK_EXEC_SHAPES:
        if tuple(version[:2]) >= shape[0]:
            found = shape
    return found[1], found[2]


FORK_EXEC_GLOBAL, FORK_EXEC_ARGS = fork_exec_shape(sys.version_info)


def fork_exec_interface_problem(execute_child: types.FunctionType,
                                fork_exec: Callable[..., int],
                                version: tuple[object, ...]) -> Optional[str]:
    """What is wrong with the private interface pgjob hooks into on POSIX, for Python
    `version`; None if it looks as the table says. Checked: the globals _execute_child reads
    and that we replace (the fork_exec name, _USE_POSIX_SPAWN) exist, and, where fork_exec
    has a text signature (3.12+), that it takes the number of arguments we unpack."""
    hook, names = fork_exec_shape(version)
    used = execute_child.__code__.co_names
    for name in (hook, "_USE_POSIX_SPAWN"):
        if name not in used or name not in execute_child.__globals__:
            return (f"subprocess.Popen._execute_child no longer uses {name}, which pgjob "
                    "replaces to start processes in a job")
    signature: Optional[str] = getattr(fork_exec, "__text_signature__", None)
    if signature:
        params = [p.strip() for p in signature.strip("()").split(",")]
        params = [p for p in params if p and p not in ("$module", "/")]
        if len(params) != len(names):
            return (f"_posixsubprocess.fork_exec takes {len(params)} arguments, pgjob knows "
                    f"the {len(names)}-argument form of this version")
    return None


class _PosixsubprocessWithJob:
    """Stands in for the _posixsubprocess module (Python 3.9/3.10 call fork_exec through it):
    every attribute is the real module's, except fork_exec."""

    def __init__(self, fork_exec: Callable[..., int]) -> None:
        import _posixsubprocess
        self._module = _posixsubprocess
        self.fork_exec = fork_exec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def fork_exec_replacements(fork_exec: Callable[..., int]) -> dict[str, Any]:
    """The globals run_execute_child replaces on POSIX so that `fork_exec` creates the child:
    fork_exec under this Python's name for it, and no posix_spawn (it would bypass
    fork_exec)."""
    if FORK_EXEC_GLOBAL == "_fork_exec":
        return {"_fork_exec": fork_exec, "_USE_POSIX_SPAWN": False}
    return {"_posixsubprocess": _PosixsubprocessWithJob(fork_exec), "_USE_POSIX_SPAWN": False}


# -- Windows: _execute_child makes one call, _winapi.CreateProcess, with 9 arguments --------------

# What _winapi.CreateProcess does, in this order: traced under Wine on 3.9.13, 3.11.9, 3.12.10,
# 3.13.11 and 3.14.2 (tests/windows/test_spawn_kernel.py), read in Modules/_winapi.c of 3.9 and
# of main (3.15). _windows.check_with_winapi lets it run up to the handle list, which comes
# after every check but two and before anything is created; the C layer checks those two as
# _winapi does, in its order.
WINAPI_CREATE_PROCESS_ORDER = (
    "the converters of application_name, inherit_handles, creation_flags, current_directory",
    "the audit event (its command_line slot formats the object as a wide string: garbage)",
    "startupinfo.dwFlags, wShowWindow, hStdInput, hStdOutput, hStdError; then their errors",
    "env: keys() and values(); from 3.11.8 and 3.12.2 on (gh-87868) keys(), sorted and "
    "merged, then [name] for each name kept; then the checks of every pair",
    "startupinfo.lpAttributeList['handle_list'], iterated",  # where pgjob stops it
    "the handles' conversion, then command_line's",
    "CreateProcessW",
)


def create_process_interface_problem(execute_child: object) -> Optional[str]:
    """What differs from the one _winapi.CreateProcess call with 9 positional arguments that
    pgjob replaces on Windows (None: nothing). Read from the code object, so nothing runs."""
    code = getattr(execute_child, "__code__", None)
    if code is None or "_winapi" not in code.co_names or "CreateProcess" not in code.co_names:
        return "subprocess.Popen._execute_child no longer calls _winapi.CreateProcess"
    import dis  # only here: the stack arithmetic below is what dis knows per version
    calls = ("CALL", "CALL_FUNCTION", "CALL_METHOD", "PRECALL")
    instructions = list(dis.get_instructions(code))
    counts: list[Optional[int]] = []  # positional argument counts; None: not positional
    for i, ins in enumerate(instructions):
        if ins.argval != "CreateProcess" or ins.opname not in ("LOAD_ATTR", "LOAD_METHOD"):
            continue
        depth = 0  # stack items pushed since the callable (and its NULL, in 3.13+)
        following = instructions[i + 1:]
        if following and following[0].opname == "PUSH_NULL":
            following = following[1:]
        for later in following:
            if later.opname in calls and depth == later.arg:
                counts.append(later.arg)
                break
            if later.opname.startswith("CALL_KW") or later.opname.startswith("CALL_FUNCTION_"):
                counts.append(None)  # keyword or star arguments: not the call we know
                break
            try:
                depth += dis.stack_effect(later.opcode, later.arg, jump=False)
            except ValueError:
                depth += dis.stack_effect(later.opcode, jump=False)
    if counts != [9]:
        return (f"subprocess.Popen._execute_child calls _winapi.CreateProcess with "
                f"{counts or 'no recognisable'} positional arguments, not the 9 pgjob knows")
    return None


# -- the check at import --------------------------------------------------------------------------

def interface_problem() -> Optional[str]:
    """This Python's problem with the hook (None: none), without the version."""
    import subprocess
    # Private: typeshed's Popen has no _execute_child.
    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]
    if sys.platform == "win32":
        return create_process_interface_problem(execute_child)
    try:
        import _posixsubprocess
    except ImportError:
        return "this Python has no _posixsubprocess"
    return fork_exec_interface_problem(execute_child, _posixsubprocess.fork_exec,
                                       sys.version_info)


def _unavailable(problem: str) -> str:
    return f"job.popen() is unavailable on Python {sys.version.split()[0]}: {problem}"


def _check_at_import() -> Optional[str]:
    problem = interface_problem()
    if problem is not None:
        logger.warning("%s", _unavailable(problem))
        warnings.warn(f"pgjob: {_unavailable(problem)}", RuntimeWarning, stacklevel=3)
    elif sys.version_info[:2] > NEWEST_CHECKED:
        table = "WINAPI_CREATE_PROCESS_ORDER" if sys.platform == "win32" else "fork_exec table"
        logger.debug("Python %d.%d is newer than the last one pgjob's %s was checked against "
                     "(%d.%d); its interface passed the import check",
                     sys.version_info[0], sys.version_info[1], table, *NEWEST_CHECKED)
    return problem


PROBLEM = _check_at_import()


# -- running _execute_child with the replacements -------------------------------------------------

class _Rebuilt(threading.local):
    """Per thread: each _execute_child rebuilt on a namespace of our own, a copy of its
    module's globals. Built once (a dict copy and a new function per spawn left the
    interpreter's global-lookup caches cold every time); per thread, because a namespace
    shared by threads would let one thread's refresh show another thread subprocess's own
    fork_exec for an instant."""

    def __init__(self) -> None:
        # execute_child -> (namespace, rebuilt function)
        self.functions: dict[types.FunctionType,
                             tuple[dict[str, Any], types.FunctionType]] = {}


_REBUILT = _Rebuilt()


def run_execute_child(execute_child: types.FunctionType, popen: subprocess.Popen[Any],
                      args: tuple[Any, ...], replacements: dict[str, Any]) -> None:
    """Run Popen._execute_child (the function `execute_child`, with the arguments Popen gave
    it) for `popen`, with the globals named in `replacements` replaced for this call.
    Re-entrant: an audit hook that starts a process of its own inside the call (subprocess
    raises its audit event before it creates the child) gets its own replacements, and ours
    are back when it returns; after the outermost call the namespace holds subprocess's own
    values again, so it keeps no Popen or job alive."""
    if PROBLEM is not None:
        raise UnsupportedError(errno.EOPNOTSUPP, _unavailable(PROBLEM))
    rebuilt = _REBUILT
    found = rebuilt.functions.get(execute_child)
    if found is None:
        namespace = dict(execute_child.__globals__)
        function = types.FunctionType(execute_child.__code__, namespace, execute_child.__name__,
                                      execute_child.__defaults__, execute_child.__closure__)
        rebuilt.functions[execute_child] = found = (namespace, function)
    namespace, function = found
    outer = {name: namespace.get(name) for name in replacements}
    # The module's globals as they are now (a program may have rebound one since), then ours:
    # the same keys every time, so the interpreter's lookup caches stay valid.
    namespace.update(execute_child.__globals__)
    namespace.update(replacements)
    try:
        function(popen, *args)
    finally:
        namespace.update(outer)
