# Type stub for pgjob._jobobject, the C extension (src/_jobobject.c's method table).
# Windows functions exist only on Windows, Linux ones only on Linux: sys.platform checks let
# mypy see exactly what the module has on the platform it checks for.
import os
import sys
from typing import Sequence, Union

_StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

TRACE: int
PLATFORM: str  # "windows", "linux" or "other"
VERSION: str  # the package version it was built for: pgjob/__init__.py checks it
LIMITED_API: int  # the stable ABI it was built for (0x03090000: abi3), or 0

if sys.platform == "win32":
    # win_job.c
    def CreateJobObject(name: str | None, /) -> int: ...
    def CloseHandle(handle: int, /) -> None: ...
    def SetJobExtendedLimits(
        job: int, limit_flags: int, process_memory: int, job_memory: int, active_processes: int
    ) -> None: ...
    def QueryJobExtendedLimits(job: int, /) -> tuple[int, int, int, int, int, int]: ...
    def SetJobCpuRate(job: int, control_flags: int, cpu_rate: int) -> None: ...
    def AssignProcessToJobObject(job: int, process_handle: int) -> None: ...
    def IsProcessInJob(process_handle: int, job: int) -> bool: ...
    def TerminateJobObject(job: int, exit_code: int) -> None: ...
    def QueryJobProcessIdList(job: int, /) -> list[int]: ...
    def QueryJobAccounting(
        job: int, include_io: bool
    ) -> tuple[int, int, int, int, int, int, int]: ...
    def GetProcessHandleCount(process_handle: int, /) -> int: ...
    def GetProcessCommandLine(process_handle: int, /) -> str: ...
    def WineVersion() -> str | None: ...
    # win_port.c
    def CreateIoCompletionPort() -> int: ...
    def AssociateJobCompletionPort(job: int, port: int, key: int) -> None: ...
    def GetQueuedCompletionStatus(port: int, timeout_ms: int) -> tuple[int, int, int] | None: ...
    # win_spawn.c
    def CreateProcessInJob(
        application_name: str | None,
        command_line: str,
        inherit_handles: bool,
        creation_flags: int,
        environment_block: str | None,
        current_directory: str | None,
        startup_flags: int,
        show_window: int,
        std_input: int,
        std_output: int,
        std_error: int,
        handle_list: list[int] | None,
        job: int,
        use_job_list: bool,
    ) -> tuple[int, int, int, int, str]: ...
    def ResumeThread(thread_handle: int, /) -> int: ...
    def JobListSupported() -> bool: ...  # False only for ERROR_NOT_SUPPORTED; else raises

    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: int
    JOB_OBJECT_LIMIT_BREAKAWAY_OK: int
    JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK: int
    JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION: int
    JOB_OBJECT_LIMIT_ACTIVE_PROCESS: int
    JOB_OBJECT_LIMIT_JOB_MEMORY: int
    JOB_OBJECT_LIMIT_PROCESS_MEMORY: int
    JOB_OBJECT_CPU_RATE_CONTROL_ENABLE: int
    JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP: int
    JOB_OBJECT_MSG_END_OF_JOB_TIME: int
    JOB_OBJECT_MSG_END_OF_PROCESS_TIME: int
    JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT: int
    JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO: int
    JOB_OBJECT_MSG_NEW_PROCESS: int
    JOB_OBJECT_MSG_EXIT_PROCESS: int
    JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS: int
    JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT: int
    JOB_OBJECT_MSG_JOB_MEMORY_LIMIT: int
    JOB_OBJECT_MSG_NOTIFICATION_LIMIT: int
    CREATE_SUSPENDED: int
    CREATE_BREAKAWAY_FROM_JOB: int
    CREATE_NEW_PROCESS_GROUP: int
    EXTENDED_STARTUPINFO_PRESENT: int
    ERROR_ACCESS_DENIED: int
    ERROR_INVALID_HANDLE: int
    ERROR_INVALID_PARAMETER: int
    ERROR_NOT_SUPPORTED: int
    ERROR_CALL_NOT_IMPLEMENTED: int
    ERROR_INVALID_FUNCTION: int
    ERROR_ALREADY_EXISTS: int
    ERROR_NOT_ENOUGH_QUOTA: int
    ERROR_FILE_NOT_FOUND: int
    ERROR_PATH_NOT_FOUND: int
    ERROR_BAD_EXE_FORMAT: int
    STILL_ACTIVE: int
    WAIT_TIMEOUT: int

if sys.platform == "linux":
    # linux_spawn.c
    def spawn(
        argv: list[_StrOrBytesPath] | tuple[_StrOrBytesPath, ...],
        executables: list[_StrOrBytesPath] | tuple[_StrOrBytesPath, ...],
        env: list[_StrOrBytesPath] | tuple[_StrOrBytesPath, ...] | None,
        cwd: _StrOrBytesPath | None,
        close_fds: object,
        fds_to_keep: tuple[int, ...],
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        errpipe_read: int,
        errpipe_write: int,
        restore_signals: object,
        start_new_session: object,
        process_group: int,
        gid: int | None,
        extra_groups: Sequence[int] | None,
        uid: int | None,
        umask: int,
        pidns_fd: int,
        userns_fd: int,
        pdeathsig: bool,
        chdir_marker: bool,
        cgroup_fd: int = -1,
        data_limit: int = -1,
    ) -> tuple[int, int]: ...
    # linux_job.c
    def start_init(
        clone_flags: int, map_ids: bool, on_owner_exit: int, on_eof: int, arm_pdeathsig: bool,
        helper_path: str | bytes
    ) -> tuple[int, int, int]: ...

    CLONE_NEWPID: int
    CLONE_NEWUSER: int
    PGJOB_INIT_IGNORE: int
    PGJOB_INIT_DRAIN: int
    PGJOB_INIT_KILL: int
    PGJOB_INIT_TERMINATE: int
    PGJOB_INIT_DETACH: int
    EPERM: int
    EACCES: int
    EINVAL: int
    ENOSPC: int
    EUSERS: int
    ENOSYS: int
    ESRCH: int
    EAGAIN: int
