/* _jobobject.c: the pgjob._jobobject extension module: method table, constants, init.
 * The syscall wrappers live one API family per file in src/jobobject/; see jobobject.h. */
#include "jobobject.h"

/* A function taking keywords has the METH_KEYWORDS C signature (self, args, kwargs); the table's
 * slot is a PyCFunction. Casting through void (*)(void) tells -Wcast-function-type it is meant. */
#define PGJOB_KEYWORDS_FN(fn) ((PyCFunction)(void (*)(void))(fn))

static PyMethodDef jobobject_methods[] = {
#ifdef MS_WINDOWS
    /* win_job.c */
    {"CreateJobObject", win_CreateJobObject, METH_VARARGS,
     "CreateJobObject($module, name, /)\n--\n\n"
     "A new, non-inheritable job handle; name is a str or None."},
    {"CloseHandle", win_CloseHandle, METH_VARARGS, "CloseHandle($module, handle, /)\n--\n\n"},
    {"SetJobExtendedLimits", PGJOB_KEYWORDS_FN(win_SetJobExtendedLimits),
     METH_VARARGS | METH_KEYWORDS,
     "SetJobExtendedLimits($module, job, limit_flags, process_memory, job_memory,\n"
     "                     active_processes)\n--\n\n"},
    {"QueryJobExtendedLimits", win_QueryJobExtendedLimits, METH_VARARGS,
     "QueryJobExtendedLimits($module, job, /)\n--\n\n"
     "-> (limit_flags, process_memory, job_memory, active_processes, peak_process_memory,"
     " peak_job_memory)"},
    {"SetJobCpuRate", PGJOB_KEYWORDS_FN(win_SetJobCpuRate), METH_VARARGS | METH_KEYWORDS,
     "SetJobCpuRate($module, job, control_flags, cpu_rate)\n--\n\n"
     "cpu_rate in 1/100 of a percent."},
    {"AssignProcessToJobObject", PGJOB_KEYWORDS_FN(win_AssignProcessToJobObject),
     METH_VARARGS | METH_KEYWORDS,
     "AssignProcessToJobObject($module, job, process_handle)\n--\n\n"},
    {"IsProcessInJob", PGJOB_KEYWORDS_FN(win_IsProcessInJob), METH_VARARGS | METH_KEYWORDS,
     "IsProcessInJob($module, process_handle, job)\n--\n\n"
     "-> bool; job 0 asks: in any job?"},
    {"TerminateJobObject", PGJOB_KEYWORDS_FN(win_TerminateJobObject), METH_VARARGS | METH_KEYWORDS,
     "TerminateJobObject($module, job, exit_code)\n--\n\n"},
    {"QueryJobProcessIdList", win_QueryJobProcessIdList, METH_VARARGS,
     "QueryJobProcessIdList($module, job, /)\n--\n\n-> list[int]"},
    {"QueryJobAccounting", PGJOB_KEYWORDS_FN(win_QueryJobAccounting), METH_VARARGS | METH_KEYWORDS,
     "QueryJobAccounting($module, job, include_io)\n--\n\n"
     "-> (total_processes, active_processes, terminated_processes, user_time_100ns,"
     " kernel_time_100ns, read_bytes, write_bytes)\n\n"
     "Without include_io the basic class is queried and the byte counts are 0."},
    {"GetProcessHandleCount", win_GetProcessHandleCount, METH_VARARGS,
     "GetProcessHandleCount($module, process_handle, /)\n--\n\n-> int"},
    {"GetProcessCommandLine", win_GetProcessCommandLine, METH_VARARGS,
     "GetProcessCommandLine($module, process_handle, /)\n--\n\n"
     "-> str: the command line the process was started with (Windows 8.1+)."},
    {"WineVersion", win_WineVersion, METH_NOARGS,
     "WineVersion($module, /)\n--\n\n"
     "-> str | None: ntdll!wine_get_version(), None on real Windows."},
    /* win_port.c */
    {"CreateIoCompletionPort", win_CreateIoCompletionPort, METH_NOARGS,
     "CreateIoCompletionPort($module, /)\n--\n\n-> int: a new completion port handle."},
    {"AssociateJobCompletionPort", PGJOB_KEYWORDS_FN(win_AssociateJobCompletionPort),
     METH_VARARGS | METH_KEYWORDS,
     "AssociateJobCompletionPort($module, job, port, key)\n--\n\n"},
    {"GetQueuedCompletionStatus", PGJOB_KEYWORDS_FN(win_GetQueuedCompletionStatus),
     METH_VARARGS | METH_KEYWORDS,
     "GetQueuedCompletionStatus($module, port, timeout_ms)\n--\n\n"
     "-> (message, key, value), or None on timeout"},
    /* win_spawn.c */
    {"CreateProcessInJob", PGJOB_KEYWORDS_FN(win_CreateProcessInJob), METH_VARARGS | METH_KEYWORDS,
     "CreateProcessInJob($module, application_name, command_line, inherit_handles,\n"
     "                   creation_flags, environment_block, current_directory, startup_flags,\n"
     "                   show_window, std_input, std_output, std_error, handle_list, job,\n"
     "                   use_job_list)\n--\n\n"
     "-> (process_handle, thread_handle, pid, tid, path)\n\n"
     "The child is a member of `job` before its first instruction runs; `path` is 'job_list'\n"
     "or 'suspended'. It stays suspended only if creation_flags has CREATE_SUSPENDED.\n"
     "An OSError from a CreateProcessW call that carried the job list has .job_list = True."},
    {"ResumeThread", win_ResumeThread, METH_VARARGS,
     "ResumeThread($module, thread_handle, /)\n--\n\n-> int: the previous suspend count."},
    {"JobListSupported", win_JobListSupported, METH_NOARGS,
     "JobListSupported($module, /)\n--\n\n"
     "-> bool: does UpdateProcThreadAttribute accept PROC_THREAD_ATTRIBUTE_JOB_LIST?\n\n"
     "False only for the system's ERROR_NOT_SUPPORTED; any other failure is raised."},
#endif
#ifdef __linux__
    /* linux_spawn.c */
    {"spawn", PGJOB_KEYWORDS_FN(linux_spawn), METH_VARARGS | METH_KEYWORDS,
     "spawn($module, argv, executables, env, cwd, close_fds, fds_to_keep, p2cread, p2cwrite,\n"
     "      c2pread, c2pwrite, errread, errwrite, errpipe_read, errpipe_write,\n"
     "      restore_signals, start_new_session, process_group, gid, extra_groups, uid, umask,\n"
     "      pidns_fd, userns_fd, pdeathsig, chdir_marker, cgroup_fd=-1, data_limit=-1)\n"
     "--\n\n"
     "-> (pid, pidfd)\n\n"
     "pidns_fd >= 0: the program starts in that PID namespace (after entering userns_fd if\n"
     ">= 0) as a child of the caller. -1: a direct CLONE_VM|CLONE_VFORK child, with\n"
     "PR_SET_PDEATHSIG(SIGKILL) if pdeathsig. cgroup_fd >= 0: created in that cgroup v2\n"
     "(clone3 CLONE_INTO_CGROUP). data_limit >= 0: the program's RLIMIT_DATA, soft and hard,\n"
     "is lowered to it before exec. The lists are copied before the GIL is\n"
     "released; fds_to_keep is a sorted tuple of distinct fds >= 0, as for fork_exec.\n"
     "The pidfd is above 2 and close-on-exec."},
    /* linux_job.c */
    {"start_init", PGJOB_KEYWORDS_FN(linux_start_init), METH_VARARGS | METH_KEYWORDS,
     "start_init($module, clone_flags, map_ids, on_owner_exit, on_eof, arm_pdeathsig,\n"
     "           helper_path)\n--\n\n"
     "-> (pid, pidfd, control_fd)\n\n"
     "Start `helper_path init` (clone CLONE_VM|CLONE_VFORK + execve) as the init of a new PID\n"
     "namespace; returns once it runs the helper."},
#endif
    {NULL, NULL, 0, NULL},
};

#define ADD_INT(name)                                                    \
    do {                                                                 \
        if (PyModule_AddIntConstant(module, #name, (long)(name)) < 0)    \
            return -1;                                                   \
    } while (0)

/* The package version this extension was built for (setup.py and scripts/build_windows_ext
 * pass pyproject.toml's): pgjob/__init__.py refuses to run with an extension of another
 * version, a stale build whose functions may take other arguments. */
#ifndef PGJOB_VERSION
#  error "PGJOB_VERSION must be defined (-DPGJOB_VERSION=0.1.0): build with setup.py"
#endif
#define PGJOB_STRINGIFY_(x) #x
#define PGJOB_STRINGIFY(x) PGJOB_STRINGIFY_(x)

static int
jobobject_exec(PyObject *module)
{
    pgjob_trace_init();
    if (PyModule_AddIntConstant(module, "TRACE", pgjob_trace_enabled) < 0)
        return -1;
    if (PyModule_AddStringConstant(module, "VERSION", PGJOB_STRINGIFY(PGJOB_VERSION)) < 0)
        return -1;
#ifdef Py_LIMITED_API
    /* The stable ABI this build targets (0x03090000 in an abi3 wheel), else 0: tests check
     * that the file a Python imported is the build they meant to test. */
    if (PyModule_AddIntConstant(module, "LIMITED_API", Py_LIMITED_API) < 0)
        return -1;
#else
    if (PyModule_AddIntConstant(module, "LIMITED_API", 0) < 0)
        return -1;
#endif
#ifdef MS_WINDOWS
    if (PyModule_AddStringConstant(module, "PLATFORM", "windows") < 0)
        return -1;
    /* Basic/extended limit flags */
    ADD_INT(JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE);
    ADD_INT(JOB_OBJECT_LIMIT_BREAKAWAY_OK);
    ADD_INT(JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK);
    ADD_INT(JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION);
    ADD_INT(JOB_OBJECT_LIMIT_ACTIVE_PROCESS);
    ADD_INT(JOB_OBJECT_LIMIT_JOB_MEMORY);
    ADD_INT(JOB_OBJECT_LIMIT_PROCESS_MEMORY);
    /* CPU rate control */
    ADD_INT(JOB_OBJECT_CPU_RATE_CONTROL_ENABLE);
    ADD_INT(JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP);
    /* Completion-port messages */
    ADD_INT(JOB_OBJECT_MSG_END_OF_JOB_TIME);
    ADD_INT(JOB_OBJECT_MSG_END_OF_PROCESS_TIME);
    ADD_INT(JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT);
    ADD_INT(JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO);
    ADD_INT(JOB_OBJECT_MSG_NEW_PROCESS);
    ADD_INT(JOB_OBJECT_MSG_EXIT_PROCESS);
    ADD_INT(JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS);
    ADD_INT(JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT);
    ADD_INT(JOB_OBJECT_MSG_JOB_MEMORY_LIMIT);
    ADD_INT(JOB_OBJECT_MSG_NOTIFICATION_LIMIT);
    /* Creation flags the Python layer reasons about */
    ADD_INT(CREATE_SUSPENDED);
    ADD_INT(CREATE_BREAKAWAY_FROM_JOB);
    ADD_INT(CREATE_NEW_PROCESS_GROUP);
    ADD_INT(EXTENDED_STARTUPINFO_PRESENT);
    /* Error codes the Python layer reasons about (pgjob._errors.by_code, the backend) */
    ADD_INT(ERROR_ACCESS_DENIED);
    ADD_INT(ERROR_INVALID_HANDLE);
    ADD_INT(ERROR_INVALID_PARAMETER);
    ADD_INT(ERROR_NOT_SUPPORTED);
    ADD_INT(ERROR_CALL_NOT_IMPLEMENTED);
    ADD_INT(ERROR_INVALID_FUNCTION);
    ADD_INT(ERROR_ALREADY_EXISTS);
    ADD_INT(ERROR_NOT_ENOUGH_QUOTA);
    ADD_INT(ERROR_FILE_NOT_FOUND);
    ADD_INT(ERROR_PATH_NOT_FOUND);
    ADD_INT(ERROR_BAD_EXE_FORMAT);
    ADD_INT(STILL_ACTIVE);
    ADD_INT(WAIT_TIMEOUT);
#endif
#ifdef __linux__
    if (PyModule_AddStringConstant(module, "PLATFORM", "linux") < 0)
        return -1;
    /* Namespace flags Python chooses between */
    ADD_INT(CLONE_NEWPID);
    ADD_INT(CLONE_NEWUSER);
    /* What the init does when the owner goes, and the commands it takes */
    ADD_INT(PGJOB_INIT_IGNORE);
    ADD_INT(PGJOB_INIT_DRAIN);
    ADD_INT(PGJOB_INIT_KILL);
    ADD_INT(PGJOB_INIT_TERMINATE);
    ADD_INT(PGJOB_INIT_DETACH);
    /* Error codes the C layer marks (linux_job.c), for tests and callers */
    ADD_INT(EPERM);
    ADD_INT(EACCES);
    ADD_INT(EINVAL);
    ADD_INT(ENOSPC);
    ADD_INT(EUSERS);
    ADD_INT(ENOSYS);
    ADD_INT(ESRCH);
    ADD_INT(EAGAIN);
#endif
#if !defined(MS_WINDOWS) && !defined(__linux__)
    if (PyModule_AddStringConstant(module, "PLATFORM", "other") < 0)
        return -1;
#endif
    return 0;
}

static PyModuleDef_Slot jobobject_slots[] = {
    {Py_mod_exec, (void *)jobobject_exec},
#if PY_VERSION_HEX >= 0x030C0000 && (!defined(Py_LIMITED_API) || Py_LIMITED_API + 0 >= 0x030C0000)
    /* No module-level mutable state: each interpreter can load its own copy. (Not in the
     * abi3 build: the 3.9 limited API has no such slot, so there the module loads only into
     * subinterpreters that share the main GIL; docs/packaging.md.) */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    /* No Py_mod_gil slot: no free-threaded interpreter has ever run pgjob's suite, so a
     * free-threaded CPython re-enables the GIL when it imports this module (and warns), as it
     * does for every module that does not declare otherwise. Declaring Py_MOD_GIL_NOT_USED
     * waits for a free-threaded build in the test matrix (docs/packaging.md). */
    {0, NULL},
};

static struct PyModuleDef jobobject_module = {
    PyModuleDef_HEAD_INIT,
    "pgjob._jobobject",
    "pgjob's C core: thin wrappers over the OS calls that keep a process tree together.",
    0,
    jobobject_methods,
    jobobject_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__jobobject(void)
{
    return PyModuleDef_Init(&jobobject_module);
}
