"""The internal interface every OS backend implements, and the plain data types the public API returns.

pgjob.Job (in _job.py) owns the policy: argument checking, logging, the closed state, error
classification at the boundary. A backend (_windows.py, _linux.py, _unprotected.py) owns one
OS object and does what the OS offers; it raises OSError from the C layer or pgjob errors.
"""
from __future__ import annotations

import enum
import numbers
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import types
    from typing import TypeVar

    from ._job import Popen
    from ._records import JobEvent, JobStats

__all__ = ["JobOptions", "EventKind", "JobBackend", "ProcessHandle"]

MECHANISMS = ("job_object", "pid_namespace", "cgroup", "pdeathsig", "none")
# The kernel object namespaces a job name may start with (CreateJobObjectW).
_NAME_PREFIXES = ("Global\\", "Local\\")


class ProcessHandle(int):
    """Marks an int as an OS process handle (Windows) rather than a pid, for Job.assign()."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ProcessHandle({int(self)})"


def _positive_int(name: str, value: object, *, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int or None, not {type(value).__name__}")
    number = int(value)
    if number <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if number >= 2**63:
        raise ValueError(f"{name} is too large: {value}")
    return number


if TYPE_CHECKING:
    # (Only for mypy: a TypeVar bound by name costs 0.75 ms at import, a twentieth of it.)
    _RecordT = TypeVar("_RecordT", bound="_Record")


class _Record:
    """What pgjob's plain records share (JobOptions, JobStats, JobEvent): immutable, compared
    and hashed by their fields (the __slots__, in order) and only with their own type, a repr
    that names the fields, `_asdict()` and `_replace(**changes)` (which goes through the
    constructor, so JobOptions validates again), and pickling. A plain class: a dataclass
    would import dataclasses and with it inspect (more than the rest of `import pgjob`), and
    a NamedTuple costs a millisecond at import and is also a tuple."""

    __slots__: tuple[str, ...] = ()

    def _set_fields(self, *values: object) -> None:
        """For the constructor: the fields, in __slots__ order."""
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def _as_tuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, field) for field in self.__slots__)

    def _asdict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.__slots__}

    def _replace(self: _RecordT, **changes: Any) -> _RecordT:
        return type(self)(**{**self._asdict(), **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Record) or type(other) is not type(self):
            return NotImplemented
        return self._as_tuple() == other._as_tuple()

    def __hash__(self) -> int:
        return hash(self._as_tuple())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._asdict()))


def _rebuild(cls: type[_RecordT], fields: dict[str, Any]) -> _RecordT:
    """Unpickling (and copy) of a _Record: through its own constructor."""
    return cls(**fields)


class JobOptions(_Record):
    """Validated, immutable Job(...) arguments. Bad types raise TypeError, bad values ValueError."""

    __slots__ = ("kill_on_close", "name", "breakaway", "silent_breakaway",
                 "die_on_unhandled_exception", "memory_limit", "process_memory_limit",
                 "process_limit", "cpu_rate", "on_unavailable", "mechanism")

    kill_on_close: bool
    name: Optional[str]
    breakaway: bool
    silent_breakaway: bool
    die_on_unhandled_exception: bool
    memory_limit: Optional[int]
    process_memory_limit: Optional[int]
    process_limit: Optional[int]
    cpu_rate: Optional[float]
    on_unavailable: str
    mechanism: Optional[str]

    def __init__(self, kill_on_close: bool = True, *, name: Optional[str] = None,
                 breakaway: bool = False, silent_breakaway: bool = False,
                 die_on_unhandled_exception: bool = False, memory_limit: Optional[int] = None,
                 process_memory_limit: Optional[int] = None, process_limit: Optional[int] = None,
                 cpu_rate: Optional[float] = None, on_unavailable: str = "log",
                 mechanism: Optional[str] = None) -> None:
        self._set_fields(kill_on_close, name, breakaway, silent_breakaway,
                         die_on_unhandled_exception, memory_limit, process_memory_limit,
                         process_limit, cpu_rate, on_unavailable, mechanism)
        self._validate()

    def _validate(self) -> None:
        for flag in ("kill_on_close", "breakaway", "silent_breakaway", "die_on_unhandled_exception"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be bool, not {type(getattr(self, flag)).__name__}")
        if self.name is not None:
            if not isinstance(self.name, str):
                raise TypeError(f"name must be str or None, not {type(self.name).__name__}")
            # Windows object names: a backslash only ends one of the two namespace prefixes
            # CreateJobObjectW knows ("Global\\", "Local\\"); the name itself has none.
            base = self.name
            for prefix in _NAME_PREFIXES:
                if base.startswith(prefix):
                    base = base[len(prefix):]
                    break
            if "\0" in base or "\\" in base or not base or len(base) > 255:
                raise ValueError("name must be 1-255 characters without NUL or backslash, "
                                 "optionally after a 'Global\\' or 'Local\\' prefix")
        for field in ("memory_limit", "process_memory_limit", "process_limit"):
            object.__setattr__(self, field, _positive_int(field, getattr(self, field)))
        if self.process_limit is not None and self.process_limit > 0xFFFFFFFF:
            raise ValueError(f"process_limit is too large: {self.process_limit}")
        if self.cpu_rate is not None:
            if isinstance(self.cpu_rate, bool) or not isinstance(self.cpu_rate, numbers.Real):
                raise TypeError(f"cpu_rate must be a number (percent of all CPUs) or None, "
                                f"not {type(self.cpu_rate).__name__}")
            rate = float(self.cpu_rate)
            if not (0.01 <= rate <= 100.0):  # also rejects NaN
                raise ValueError(f"cpu_rate must be between 0.01 and 100 (percent), got {self.cpu_rate}")
            object.__setattr__(self, "cpu_rate", rate)
        if self.on_unavailable not in ("log", "raise"):
            raise ValueError(f"on_unavailable must be 'log' or 'raise', got {self.on_unavailable!r}")
        if self.mechanism is not None and self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS} or None, got {self.mechanism!r}")

    @property
    def group_limits(self) -> list[str]:
        """The limits set that cap the job as a whole (on Linux: cgroup v2 controllers)."""
        return [f for f in ("memory_limit", "process_limit", "cpu_rate")
                if getattr(self, f) is not None]

    @property
    def has_limits(self) -> bool:
        return any(v is not None for v in (self.memory_limit, self.process_memory_limit,
                                           self.process_limit, self.cpu_rate))


class EventKind(enum.Enum):
    NEW_PROCESS = "new_process"
    EXIT_PROCESS = "exit_process"
    ABNORMAL_EXIT_PROCESS = "abnormal_exit_process"
    ACTIVE_PROCESS_ZERO = "active_process_zero"
    ACTIVE_PROCESS_LIMIT = "active_process_limit"
    PROCESS_MEMORY_LIMIT = "process_memory_limit"
    JOB_MEMORY_LIMIT = "job_memory_limit"
    END_OF_JOB_TIME = "end_of_job_time"
    END_OF_PROCESS_TIME = "end_of_process_time"
    #: A notification limit (JobObjectNotificationLimitInformation) was exceeded by `pid`.
    NOTIFICATION_LIMIT = "notification_limit"


class JobBackend:
    """One OS containment object. All methods may raise OSError (unclassified) or JobError."""

    #: "job_object", "pid_namespace", "pdeathsig" or "none"
    mechanism: str = "none"

    def execute_child(self, popen: Popen, execute_child: types.FunctionType,
                      args: tuple[Any, ...]) -> None:
        """Start popen's child as a member, from inside Popen._execute_child.

        `execute_child` is the next _execute_child in the Popen's MRO (subprocess.Popen's,
        unbound: never looked up as `subprocess.Popen._execute_child`, which may be pgjob's
        own after `subprocess.Popen = pgjob.Popen`); `args` are the arguments Popen passed
        to it, whatever this Python version's signature is.
        """
        raise NotImplementedError

    def assign(self, pid: int, handle: Optional[int]) -> None:
        """Make a running process (by pid, or by handle on Windows) a member."""
        raise NotImplementedError

    def assign_current(self) -> None:
        """Make the current process a member, so that every child it creates from now on is one."""
        raise NotImplementedError

    def holds_current_process(self) -> bool:
        """True if closing this job would kill the current process (the owner-in-job trap)."""
        return False

    def contains(self, pid: int) -> bool:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def terminate(self, exit_code: int) -> None:
        raise NotImplementedError

    def stats(self) -> JobStats:
        raise NotImplementedError

    def next_event(self, timeout: Optional[float]) -> Optional[JobEvent]:
        """The next event, or None if none came within `timeout` seconds (None: wait forever)."""
        raise NotImplementedError

    def wait(self, timeout: Optional[float]) -> bool:
        """Block until no member is left (True) or `timeout` seconds passed (False)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the OS object; with kill_on_close the OS kills what is left. Idempotent."""
        raise NotImplementedError

    def detach(self) -> Optional[int]:
        """Give up ownership without closing; return the raw OS handle/fd (None if there is none)."""
        raise NotImplementedError
