/* win_job.c: Job Object lifecycle, limits, membership and accounting, one wrapper per Win32 call.
 * Plain ints in, plain tuples out; every failure is OSError(winerror) naming the call. */
#include "jobobject.h"

#include <stdlib.h>

PyObject *
win_CreateJobObject(PyObject *self, PyObject *args)
{
    PyObject *name_obj;
    wchar_t *name = NULL;
    HANDLE job;
    DWORD err;

    (void)self;
    if (!PyArg_ParseTuple(args, "O:CreateJobObject", &name_obj))
        return NULL;
    if (name_obj != Py_None) {
        if (!PyUnicode_Check(name_obj)) {
            PyErr_SetString(PyExc_TypeError, "job name must be str or None");
            return NULL;
        }
        name = PyUnicode_AsWideCharString(name_obj, NULL); /* rejects embedded NUL */
        if (name == NULL)
            return NULL;
    }
    /* NULL security attributes: the handle is never inheritable, so a child can't keep the
     * job (and with it our kill-on-close) alive after we die. */
    Py_BEGIN_ALLOW_THREADS
    job = CreateJobObjectW(NULL, name);
    err = GetLastError();
    Py_END_ALLOW_THREADS
    PyMem_Free(name);
    if (job == NULL) {
        /* No right to create a job here (a sandbox, a restricted token): not available. */
        return pgjob_oserror_as(err == ERROR_ACCESS_DENIED ? PGJOB_UNSUPPORTED : PGJOB_UNMARKED,
                                "CreateJobObjectW", err);
    }
    if (name != NULL && err == ERROR_ALREADY_EXISTS) {
        /* Opening someone else's job by name would silently share its limits; refuse. */
        CloseHandle(job);
        return pgjob_oserror("CreateJobObjectW", ERROR_ALREADY_EXISTS);
    }
    PGJOB_TRACE("CreateJobObjectW -> %p", (void *)job);
    return PGJOB_FROM_H(job);
}

PyObject *
win_CloseHandle(PyObject *self, PyObject *args)
{
    unsigned long long handle;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTuple(args, PGJOB_HANDLE_FMT ":CloseHandle", &handle))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = CloseHandle(PGJOB_H(handle));
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error("CloseHandle");
    PGJOB_TRACE("CloseHandle(%p)", (void *)PGJOB_H(handle));
    Py_RETURN_NONE;
}

PyObject *
win_SetJobExtendedLimits(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"job", "limit_flags", "process_memory", "job_memory",
                             "active_processes", NULL};
    unsigned long long job, process_memory, job_memory;
    unsigned long flags, active_processes;
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION info;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, PGJOB_HANDLE_FMT "kKKk:SetJobExtendedLimits",
                                     kwlist, &job, &flags, &process_memory, &job_memory,
                                     &active_processes))
        return NULL;
    if ((unsigned long long)(SIZE_T)process_memory != process_memory ||
        (unsigned long long)(SIZE_T)job_memory != job_memory) {
        /* 32-bit Windows: SIZE_T is 32 bits; a silent truncation would set another limit. */
        PyErr_SetString(PyExc_OverflowError, "memory limit does not fit in SIZE_T");
        return NULL;
    }
    ZeroMemory(&info, sizeof(info));
    info.BasicLimitInformation.LimitFlags = (DWORD)flags;
    info.BasicLimitInformation.ActiveProcessLimit = (DWORD)active_processes;
    info.ProcessMemoryLimit = (SIZE_T)process_memory;
    info.JobMemoryLimit = (SIZE_T)job_memory;
    Py_BEGIN_ALLOW_THREADS
    ok = SetInformationJobObject(PGJOB_H(job), JobObjectExtendedLimitInformation, &info,
                                 sizeof(info));
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error("SetInformationJobObject(JobObjectExtendedLimitInformation)");
    PGJOB_TRACE("SetInformationJobObject(%p, ExtendedLimit, flags=0x%lx)", (void *)PGJOB_H(job),
                flags);
    Py_RETURN_NONE;
}

PyObject *
win_QueryJobExtendedLimits(PyObject *self, PyObject *args)
{
    unsigned long long job;
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION info;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTuple(args, PGJOB_HANDLE_FMT ":QueryJobExtendedLimits", &job))
        return NULL;
    ZeroMemory(&info, sizeof(info));
    Py_BEGIN_ALLOW_THREADS
    ok = QueryInformationJobObject(PGJOB_H(job), JobObjectExtendedLimitInformation, &info,
                                   sizeof(info), NULL);
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error("QueryInformationJobObject(JobObjectExtendedLimitInformation)");
    return Py_BuildValue("(kKKkKK)", (unsigned long)info.BasicLimitInformation.LimitFlags,
                         (unsigned long long)info.ProcessMemoryLimit,
                         (unsigned long long)info.JobMemoryLimit,
                         (unsigned long)info.BasicLimitInformation.ActiveProcessLimit,
                         (unsigned long long)info.PeakProcessMemoryUsed,
                         (unsigned long long)info.PeakJobMemoryUsed);
}

PyObject *
win_SetJobCpuRate(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"job", "control_flags", "cpu_rate", NULL};
    unsigned long long job;
    unsigned long control_flags, cpu_rate;
    JOBOBJECT_CPU_RATE_CONTROL_INFORMATION info;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, PGJOB_HANDLE_FMT "kk:SetJobCpuRate", kwlist,
                                     &job, &control_flags, &cpu_rate))
        return NULL;
    ZeroMemory(&info, sizeof(info));
    info.ControlFlags = (DWORD)control_flags;
    info.CpuRate = (DWORD)cpu_rate;
    Py_BEGIN_ALLOW_THREADS
    ok = SetInformationJobObject(PGJOB_H(job), JobObjectCpuRateControlInformation, &info,
                                 sizeof(info));
    Py_END_ALLOW_THREADS
    if (!ok) {
        DWORD err = GetLastError();
        /* Windows 7 (and Wine 8) don't know the CPU-rate information class at all. */
        return pgjob_oserror_as(err == ERROR_INVALID_PARAMETER ? PGJOB_UNSUPPORTED
                                                               : PGJOB_UNMARKED,
                                "SetInformationJobObject(JobObjectCpuRateControlInformation)",
                                err);
    }
    PGJOB_TRACE("SetInformationJobObject(%p, CpuRate=%lu)", (void *)PGJOB_H(job), cpu_rate);
    Py_RETURN_NONE;
}

static enum pgjob_meaning
assign_meaning(DWORD err)
{
    /* ACCESS_DENIED: the process is in a job that allows no nesting or breakaway (or it
     * exited: the caller tells those apart, it can ask the process). INVALID_PARAMETER: the
     * process is gone. */
    return err == ERROR_ACCESS_DENIED ? PGJOB_ALREADY_IN_JOB
           : err == ERROR_INVALID_PARAMETER ? PGJOB_PROCESS_EXITED
           : PGJOB_UNMARKED;
}

PyObject *
win_AssignProcessToJobObject(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"job", "process_handle", NULL};
    unsigned long long job, process;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs,
                                     PGJOB_HANDLE_FMT PGJOB_HANDLE_FMT ":AssignProcessToJobObject",
                                     kwlist, &job, &process))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = AssignProcessToJobObject(PGJOB_H(job), PGJOB_H(process));
    Py_END_ALLOW_THREADS
    if (!ok) {
        DWORD err = GetLastError();
        return pgjob_oserror_as(assign_meaning(err), "AssignProcessToJobObject", err);
    }
    PGJOB_TRACE("AssignProcessToJobObject(%p, %p)", (void *)PGJOB_H(job), (void *)PGJOB_H(process));
    Py_RETURN_NONE;
}

PyObject *
win_IsProcessInJob(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"process_handle", "job", NULL};
    unsigned long long process, job;
    BOOL ok, result = FALSE;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, PGJOB_HANDLE_FMT PGJOB_HANDLE_FMT
                                     ":IsProcessInJob", kwlist, &process, &job))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = IsProcessInJob(PGJOB_H(process), PGJOB_H(job), &result);
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error("IsProcessInJob");
    return PyBool_FromLong(result);
}

PyObject *
win_TerminateJobObject(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"job", "exit_code", NULL};
    unsigned long long job;
    unsigned long exit_code;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, PGJOB_HANDLE_FMT "k:TerminateJobObject",
                                     kwlist, &job, &exit_code))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = TerminateJobObject(PGJOB_H(job), (UINT)exit_code);
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error("TerminateJobObject");
    PGJOB_TRACE("TerminateJobObject(%p, %lu)", (void *)PGJOB_H(job), exit_code);
    Py_RETURN_NONE;
}

PyObject *
win_QueryJobProcessIdList(PyObject *self, PyObject *args)
{
    unsigned long long job;
    JOBOBJECT_BASIC_PROCESS_ID_LIST *list = NULL;
    DWORD capacity = 64, err = 0, i;
    PyObject *result;
    int attempt;

    (void)self;
    if (!PyArg_ParseTuple(args, PGJOB_HANDLE_FMT ":QueryJobProcessIdList", &job))
        return NULL;
    /* Members can join between our calls, so grow until a whole list fits. Each round sizes
     * the buffer from the kernel's own count plus headroom (pywin32 retried with a fixed
     * buffer and spun forever past ~50 members, pywin32#1242); a bounded number of rounds
     * keeps a job that forks faster than we can read from hanging us. */
    for (attempt = 0; attempt < 32; attempt++) {
        size_t size = offsetof(JOBOBJECT_BASIC_PROCESS_ID_LIST, ProcessIdList) +
                      (size_t)capacity * sizeof(ULONG_PTR);
        JOBOBJECT_BASIC_PROCESS_ID_LIST *bigger = PyMem_Realloc(list, size);
        BOOL ok;
        if (bigger == NULL) {
            PyMem_Free(list);
            return PyErr_NoMemory();
        }
        list = bigger;
        ZeroMemory(list, size);
        Py_BEGIN_ALLOW_THREADS
        ok = QueryInformationJobObject(PGJOB_H(job), JobObjectBasicProcessIdList, list,
                                       (DWORD)size, NULL);
        err = ok ? 0 : GetLastError();
        Py_END_ALLOW_THREADS
        if (ok && list->NumberOfProcessIdsInList >= list->NumberOfAssignedProcesses)
            break;
        if (!ok && err != ERROR_MORE_DATA) {
            PyMem_Free(list);
            return pgjob_oserror("QueryInformationJobObject(JobObjectBasicProcessIdList)", err);
        }
        capacity = (list->NumberOfAssignedProcesses > capacity ? list->NumberOfAssignedProcesses
                                                               : capacity) * 2;
        err = ERROR_MORE_DATA;
    }
    if (err == ERROR_MORE_DATA) {
        PyMem_Free(list);
        return pgjob_oserror("QueryInformationJobObject(JobObjectBasicProcessIdList)", err);
    }
    result = PyList_New(list->NumberOfProcessIdsInList);
    for (i = 0; result != NULL && i < list->NumberOfProcessIdsInList; i++) {
        PyObject *pid = PyLong_FromUnsignedLongLong((unsigned long long)list->ProcessIdList[i]);
        if (pid == NULL) {
            Py_CLEAR(result);
            break;
        }
        if (PyList_SetItem(result, i, pid) < 0) { /* (steals `pid` even then) */
            Py_CLEAR(result);
            break;
        }
    }
    PyMem_Free(list);
    return result;
}

PyObject *
win_QueryJobAccounting(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"job", "include_io", NULL};
    unsigned long long job;
    int include_io;
    JOBOBJECT_BASIC_AND_IO_ACCOUNTING_INFORMATION info;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, PGJOB_HANDLE_FMT "p:QueryJobAccounting",
                                     kwlist, &job, &include_io))
        return NULL;
    ZeroMemory(&info, sizeof(info));
    /* BasicInfo is the first member, so the basic class fills the same struct's head. */
    Py_BEGIN_ALLOW_THREADS
    if (include_io)
        ok = QueryInformationJobObject(PGJOB_H(job), JobObjectBasicAndIoAccountingInformation,
                                       &info, sizeof(info), NULL);
    else
        ok = QueryInformationJobObject(PGJOB_H(job), JobObjectBasicAccountingInformation,
                                       &info.BasicInfo, sizeof(info.BasicInfo), NULL);
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error(include_io
            ? "QueryInformationJobObject(JobObjectBasicAndIoAccountingInformation)"
            : "QueryInformationJobObject(JobObjectBasicAccountingInformation)");
    return Py_BuildValue("(kkkLLKK)", (unsigned long)info.BasicInfo.TotalProcesses,
                         (unsigned long)info.BasicInfo.ActiveProcesses,
                         (unsigned long)info.BasicInfo.TotalTerminatedProcesses,
                         (long long)info.BasicInfo.TotalUserTime.QuadPart,
                         (long long)info.BasicInfo.TotalKernelTime.QuadPart,
                         (unsigned long long)info.IoInfo.ReadTransferCount,
                         (unsigned long long)info.IoInfo.WriteTransferCount);
}

PyObject *
win_GetProcessHandleCount(PyObject *self, PyObject *args)
{
    unsigned long long process;
    DWORD count = 0;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTuple(args, PGJOB_HANDLE_FMT ":GetProcessHandleCount", &process))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = GetProcessHandleCount(PGJOB_H(process), &count);
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error("GetProcessHandleCount");
    return PyLong_FromUnsignedLong(count);
}

typedef LONG(NTAPI *query_fn)(HANDLE, ULONG, PVOID, ULONG, PULONG);
typedef ULONG(NTAPI *to_dos_fn)(LONG);
struct counted_string { USHORT length, maximum_length; PWSTR buffer; }; /* UNICODE_STRING */

/* The command line from the process's own memory: its PEB's ProcessParameters->CommandLine
 * (what psutil reads before Windows 8.1, and what Wine, which lacks the information class,
 * offers). The same bitness as ours only; the handle needs
 * PROCESS_QUERY_LIMITED_INFORMATION and PROCESS_VM_READ. */
static PyObject *
command_line_from_peb(HANDLE process, query_fn query, to_dos_fn to_dos)
{
    struct { PVOID reserved1; PVOID peb; ULONG_PTR reserved2[2]; ULONG_PTR pid, parent; } basic;
    const SIZE_T parameters_at = 4 * sizeof(PVOID);                 /* PEB.ProcessParameters */
    const SIZE_T command_line_at = 16 + 12 * sizeof(PVOID);  /* ->CommandLine: 0x70, x86 0x40 */
    struct counted_string text;
    PVOID parameters;
    wchar_t *buffer;
    PyObject *result;
    LONG status = query(process, 0 /* ProcessBasicInformation */, &basic, sizeof(basic), NULL);

    if (status < 0)
        return pgjob_oserror("NtQueryInformationProcess(ProcessBasicInformation)", to_dos(status));
    if (!ReadProcessMemory(process, (char *)basic.peb + parameters_at, &parameters,
                           sizeof(parameters), NULL)
            || !ReadProcessMemory(process, (char *)parameters + command_line_at, &text,
                                  sizeof(text), NULL))
        return pgjob_last_error("ReadProcessMemory(PEB)");
    if ((buffer = PyMem_Malloc(text.length + sizeof(wchar_t))) == NULL)
        return PyErr_NoMemory();
    if (!ReadProcessMemory(process, text.buffer, buffer, text.length, NULL)) {
        PyMem_Free(buffer);
        return pgjob_last_error("ReadProcessMemory(CommandLine)");
    }
    result = PyUnicode_FromWideChar(buffer, text.length / sizeof(wchar_t));
    PyMem_Free(buffer);
    return result;
}

/* GetProcessCommandLine(process_handle) -> str: the command line the process was started
 * with: NtQueryInformationProcess(ProcessCommandLineInformation) on Windows 8.1 and later,
 * else (Wine) read from the process's PEB. The handle needs
 * PROCESS_QUERY_LIMITED_INFORMATION, and PROCESS_VM_READ for the PEB. */
PyObject *
win_GetProcessCommandLine(PyObject *self, PyObject *args)
{
    const ULONG process_command_line_information = 60;
    const char *query_name = "NtQueryInformationProcess(ProcessCommandLineInformation)";
    unsigned long long process;
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    struct counted_string *text;
    query_fn query;
    to_dos_fn to_dos;
    ULONG size = 0;
    LONG status;
    PyObject *result;

    (void)self;
    if (!PyArg_ParseTuple(args, PGJOB_HANDLE_FMT ":GetProcessCommandLine", &process))
        return NULL;
    if (ntdll == NULL)
        return pgjob_last_error("GetModuleHandleW(ntdll.dll)");
    query = (query_fn)(void (*)(void))GetProcAddress(ntdll, "NtQueryInformationProcess");
    to_dos = (to_dos_fn)(void (*)(void))GetProcAddress(ntdll, "RtlNtStatusToDosError");
    if (query == NULL || to_dos == NULL)
        return pgjob_last_error("GetProcAddress(ntdll.dll, NtQueryInformationProcess)");
    /* The first call says how much it needs (STATUS_INFO_LENGTH_MISMATCH); the command line
     * can't change in between: it is the one the process was created with. */
    Py_BEGIN_ALLOW_THREADS
    status = query(PGJOB_H(process), process_command_line_information, NULL, 0, &size);
    Py_END_ALLOW_THREADS
    if (status == (LONG)0xC0000003L) /* STATUS_INVALID_INFO_CLASS: before 8.1, and Wine */
        return command_line_from_peb(PGJOB_H(process), query, to_dos);
    if (size < sizeof(*text))
        return pgjob_oserror(query_name, to_dos(status));
    if ((text = PyMem_Malloc(size)) == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    status = query(PGJOB_H(process), process_command_line_information, text, size, &size);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyMem_Free(text);
        return pgjob_oserror(query_name, to_dos(status));
    }
    result = PyUnicode_FromWideChar(text->buffer, text->length / sizeof(WCHAR));
    PyMem_Free(text);
    return result;
}

PyObject *
win_WineVersion(PyObject *self, PyObject *unused)
{
    typedef const char *(__cdecl *wine_get_version_fn)(void);
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    FARPROC proc;

    (void)self;
    (void)unused;
    if (ntdll == NULL)
        Py_RETURN_NONE;
    proc = GetProcAddress(ntdll, "wine_get_version");
    if (proc == NULL)
        Py_RETURN_NONE; /* real Windows */
    return PyUnicode_FromString(((wine_get_version_fn)(void (*)(void))proc)());
}
