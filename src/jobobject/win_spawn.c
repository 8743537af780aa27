/* win_spawn.c: CreateProcessW of a child that is a job member before its first instruction runs.
 * Mirrors _winapi.CreateProcess's arguments (as plain values) so subprocess.Popen can drive it. */
#include "jobobject.h"

#ifndef PROC_THREAD_ATTRIBUTE_JOB_LIST
/* ProcThreadAttributeValue(ProcThreadAttributeJobList = 13, FALSE, TRUE, FALSE); older SDK
 * and MinGW headers lack the name, the value is fixed ABI. */
#  define PROC_THREAD_ATTRIBUTE_JOB_LIST 0x2000D
#endif

/* What a failure of a step that puts the child in the job means: the job's failure, its
 * class named by its code (pgjob._errors.by_code), except ACCESS_DENIED: the job list, like
 * an assignment, is refused to a process in a job that allows no nesting. */
static enum pgjob_meaning
step_meaning(DWORD err)
{
    return err == ERROR_ACCESS_DENIED ? PGJOB_ALREADY_IN_JOB : PGJOB_JOB_ERROR;
}

/* Build an attribute list carrying the handle list and/or the job list; NULL with an
 * exception set on failure (and *error = the failed call's winerror, 0 if it was not a
 * syscall), or with *count == 0 when none is needed. */
static LPPROC_THREAD_ATTRIBUTE_LIST
make_attribute_list(HANDLE *handles, DWORD n_handles, HANDLE *job, DWORD *count, DWORD *error)
{
    LPPROC_THREAD_ATTRIBUTE_LIST attrs;
    SIZE_T size = 0;
    DWORD err;
    const char *failed_call;

    *error = 0;
    *count = (n_handles > 0 ? 1 : 0) + (job != NULL ? 1 : 0);
    if (*count == 0)
        return NULL;
    /* The sizing call always "fails" with ERROR_INSUFFICIENT_BUFFER. */
    InitializeProcThreadAttributeList(NULL, *count, 0, &size);
    attrs = (LPPROC_THREAD_ATTRIBUTE_LIST)PyMem_Malloc(size);
    if (attrs == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (!InitializeProcThreadAttributeList(attrs, *count, 0, &size)) {
        /* Read the code before PyMem_Free, which may call into the heap and reset it. */
        *error = err = GetLastError();
        PyMem_Free(attrs);
        pgjob_oserror_as(step_meaning(err), "InitializeProcThreadAttributeList", err);
        return NULL;
    }
    if (n_handles > 0 &&
        !UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, handles,
                                   n_handles * sizeof(HANDLE), NULL, NULL)) {
        failed_call = "UpdateProcThreadAttribute(PROC_THREAD_ATTRIBUTE_HANDLE_LIST)";
        goto fail;
    }
    if (job != NULL &&
        !UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_JOB_LIST, job, sizeof(HANDLE),
                                   NULL, NULL)) {
        failed_call = "UpdateProcThreadAttribute(PROC_THREAD_ATTRIBUTE_JOB_LIST)";
        goto fail;
    }
    return attrs;

fail:
    *error = err = GetLastError(); /* before the cleanup calls below can overwrite it */
    DeleteProcThreadAttributeList(attrs);
    PyMem_Free(attrs);
    pgjob_oserror_as(step_meaning(err), failed_call, err);
    return NULL;
}

static void
free_attribute_list(LPPROC_THREAD_ATTRIBUTE_LIST attrs)
{
    if (attrs != NULL) {
        DeleteProcThreadAttributeList(attrs);
        PyMem_Free(attrs);
    }
}

/* Read a Python list of handle ints into a PyMem array. */
static int
read_handle_list(PyObject *seq, HANDLE **out, DWORD *n_out)
{
    Py_ssize_t n, i;

    *out = NULL;
    *n_out = 0;
    if (seq == Py_None)
        return 0;
    if (!PyList_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "handle_list must be a list of ints or None");
        return -1;
    }
    n = PyList_Size(seq);
    if (n == 0)
        return 0;
    *out = PyMem_New(HANDLE, n);
    if (*out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < n; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLong(PyList_GetItem(seq, i));
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyMem_Free(*out);
            *out = NULL;
            return -1;
        }
        (*out)[i] = PGJOB_H(v);
    }
    *n_out = (DWORD)n;
    return 0;
}

/* Optional str argument -> PyMem wide string (embedded NULs allowed only where `allow_nul`). */
static int
optional_wide(PyObject *obj, const char *what, int allow_nul, wchar_t **out)
{
    *out = NULL;
    if (obj == Py_None)
        return 0;
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be str or None", what);
        return -1;
    }
    if (allow_nul) {
        Py_ssize_t size = PyUnicode_AsWideChar(obj, NULL, 0);
        if (size < 0)
            return -1;
        *out = PyMem_New(wchar_t, size);
        if (*out == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (PyUnicode_AsWideChar(obj, *out, size) < 0) {
            PyMem_Free(*out);
            *out = NULL;
            return -1;
        }
        return 0;
    }
    {
        wchar_t *tmp = PyUnicode_AsWideCharString(obj, NULL);
        Py_ssize_t len;
        if (tmp == NULL)
            return -1;
        /* Copy into PyMem so every buffer here is freed the same way. */
        len = (Py_ssize_t)wcslen(tmp) + 1;
        *out = PyMem_New(wchar_t, len);
        if (*out != NULL)
            memcpy(*out, tmp, (size_t)len * sizeof(wchar_t));
        PyMem_Free(tmp);
        if (*out == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

/* Mark the pending OSError as raised by a CreateProcessW call that carried
 * PROC_THREAD_ATTRIBUTE_JOB_LIST (.job_list = True), so Python can tell a refused job list
 * from any other failure without reading the syscall's name. */
static void
mark_job_list_failure(void)
{
#if PY_VERSION_HEX >= 0x030C0000 && (!defined(Py_LIMITED_API) || Py_LIMITED_API + 0 >= 0x030C0000)
    PyObject *exc = PyErr_GetRaisedException();
    if (exc != NULL && PyObject_SetAttrString(exc, "job_list", Py_True) < 0) {
        Py_DECREF(exc);
        return; /* the new error (out of memory) replaces the old one */
    }
    PyErr_SetRaisedException(exc);
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && PyObject_SetAttrString(value, "job_list", Py_True) < 0) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return;
    }
    PyErr_Restore(type, value, tb);
#endif
}

PyObject *
win_CreateProcessInJob(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "application_name", "command_line", "inherit_handles", "creation_flags",
        "environment_block", "current_directory", "startup_flags", "show_window", "std_input",
        "std_output", "std_error", "handle_list", "job", "use_job_list", NULL};
    PyObject *app_obj, *cmd_obj, *env_obj, *cwd_obj, *handle_list_obj;
    int inherit_handles, use_job_list;
    unsigned long creation_flags, startup_flags;
    unsigned int show_window;
    unsigned long long std_input, std_output, std_error, job;
    wchar_t *app = NULL, *cmd = NULL, *env = NULL, *cwd = NULL;
    HANDLE *handles = NULL, job_handle;
    DWORD n_handles = 0, n_attrs = 0, flags, err = 0;
    LPPROC_THREAD_ATTRIBUTE_LIST attrs = NULL;
    STARTUPINFOEXW si;
    PROCESS_INFORMATION pi;
    BOOL ok, in_job = FALSE;
    const char *path = "suspended", *failed_call = NULL;
    enum pgjob_meaning meaning = PGJOB_UNMARKED;
    PyObject *result = NULL;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs,
                                     "OOpkOOkI" PGJOB_HANDLE_FMT PGJOB_HANDLE_FMT PGJOB_HANDLE_FMT
                                     "O" PGJOB_HANDLE_FMT "p:CreateProcessInJob", kwlist,
                                     &app_obj, &cmd_obj, &inherit_handles, &creation_flags,
                                     &env_obj, &cwd_obj, &startup_flags, &show_window, &std_input,
                                     &std_output, &std_error, &handle_list_obj, &job,
                                     &use_job_list))
        return NULL;
    if (!PyUnicode_Check(cmd_obj)) {
        PyErr_SetString(PyExc_TypeError, "command_line must be str");
        return NULL;
    }
    job_handle = PGJOB_H(job);
    /* _winapi.CreateProcess's order: the handle list, then the command line (a NUL in it is
     * ValueError); Python has had _winapi check everything it checks before those. */
    if (read_handle_list(handle_list_obj, &handles, &n_handles) < 0 ||
        optional_wide(app_obj, "application_name", 0, &app) < 0 ||
        optional_wide(cmd_obj, "command_line", 0, &cmd) < 0 ||
        optional_wide(env_obj, "environment_block", 1, &env) < 0 ||
        optional_wide(cwd_obj, "current_directory", 0, &cwd) < 0)
        goto done;
    attrs = make_attribute_list(handles, n_handles, use_job_list ? &job_handle : NULL, &n_attrs,
                                &err);
    if (attrs == NULL && PyErr_Occurred())
        goto done;

    /* The caller's own flags may already hold EXTENDED_STARTUPINFO_PRESENT (Popen passes
     * creationflags through): CreateProcessW then reads a STARTUPINFOEXW, so cb must say so
     * whether or not we have an attribute list, as _winapi.CreateProcess always does. */
    flags = (DWORD)creation_flags | CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT |
            (attrs != NULL ? EXTENDED_STARTUPINFO_PRESENT : 0);
    ZeroMemory(&si, sizeof(si));
    si.StartupInfo.cb = (flags & EXTENDED_STARTUPINFO_PRESENT) ? sizeof(si)
                                                                : sizeof(si.StartupInfo);
    si.StartupInfo.dwFlags = (DWORD)startup_flags;
    si.StartupInfo.wShowWindow = (WORD)show_window;
    si.StartupInfo.hStdInput = PGJOB_H(std_input);
    si.StartupInfo.hStdOutput = PGJOB_H(std_output);
    si.StartupInfo.hStdError = PGJOB_H(std_error);
    si.lpAttributeList = attrs;
    ZeroMemory(&pi, sizeof(pi));
    PGJOB_TRACE("CreateProcessW: cb=%lu flags=0x%lx attributes=%lu (handle list %lu, job list %d)",
                (unsigned long)si.StartupInfo.cb, (unsigned long)flags, (unsigned long)n_attrs,
                (unsigned long)n_handles, use_job_list);

    /* Always born suspended: even with JOB_LIST we verify membership before the child runs,
     * because an implementation may accept the attribute and ignore it. */
    Py_BEGIN_ALLOW_THREADS
    ok = CreateProcessW(app, cmd, NULL, NULL, inherit_handles ? TRUE : FALSE, flags, env, cwd,
                        &si.StartupInfo, &pi);
    if (!ok) {
        err = GetLastError();
        failed_call = "CreateProcessW";
        meaning = err == ERROR_NOT_ENOUGH_QUOTA ? PGJOB_LIMIT_EXCEEDED : PGJOB_NOT_A_JOB_ERROR;
    } else {
        if (use_job_list && !IsProcessInJob(pi.hProcess, job_handle, &in_job))
            in_job = FALSE;
        if (in_job) {
            path = "job_list";
        } else {
            path = "suspended";
            if (!AssignProcessToJobObject(job_handle, pi.hProcess)) {
                err = GetLastError();
                failed_call = "AssignProcessToJobObject";
                meaning = step_meaning(err);
            }
        }
        if (failed_call == NULL && !(creation_flags & CREATE_SUSPENDED) &&
            ResumeThread(pi.hThread) == (DWORD)-1) {
            err = GetLastError();
            failed_call = "ResumeThread";
            meaning = step_meaning(err);
        }
        if (failed_call != NULL) {
            /* Never leave a half-born child behind: a suspended process outside the job would
             * be an orphan that can't even notice its parent died. */
            TerminateProcess(pi.hProcess, 1);
            WaitForSingleObject(pi.hProcess, 5000);
            CloseHandle(pi.hThread);
            CloseHandle(pi.hProcess);
        }
    }
    Py_END_ALLOW_THREADS

    if (failed_call != NULL) {
        /* CreateProcessW's failure is the program's (a missing executable is
         * FileNotFoundError, as in subprocess), but for the job's process quota; a failure
         * of the steps that put the child in the job is the job's. */
        pgjob_oserror_as(meaning, failed_call, err);
        if (!ok && use_job_list)
            mark_job_list_failure();
        goto done;
    }
    PGJOB_TRACE("CreateProcessW pid=%lu via %s%s", (unsigned long)pi.dwProcessId, path,
                (creation_flags & CREATE_SUSPENDED) ? " (left suspended)" : ", resumed");
    result = Py_BuildValue("(KKkks)", (unsigned long long)(uintptr_t)pi.hProcess,
                           (unsigned long long)(uintptr_t)pi.hThread,
                           (unsigned long)pi.dwProcessId, (unsigned long)pi.dwThreadId, path);
    if (result == NULL) {
        /* Can't hand the handles to Python: don't leak a running, unowned child's handles. */
        CloseHandle(pi.hThread);
        CloseHandle(pi.hProcess);
    }

done:
    free_attribute_list(attrs);
    PyMem_Free(handles);
    PyMem_Free(app);
    PyMem_Free(cmd);
    PyMem_Free(env);
    PyMem_Free(cwd);
    return result;
}

PyObject *
win_JobListSupported(PyObject *self, PyObject *unused)
{
    HANDLE probe = INVALID_HANDLE_VALUE;
    LPPROC_THREAD_ATTRIBUTE_LIST attrs;
    DWORD count, err;

    (void)self;
    (void)unused;
    attrs = make_attribute_list(NULL, 0, &probe, &count, &err);
    if (attrs == NULL) {
        /* Windows before 10 rejects the attribute id with ERROR_NOT_SUPPORTED: that is the
         * answer "unsupported". Any other failure (out of memory...) says nothing about the
         * attribute and is raised, so that nobody caches it as an answer. */
        if (err == ERROR_NOT_SUPPORTED) {
            PyErr_Clear();
            Py_RETURN_FALSE;
        }
        return NULL;
    }
    free_attribute_list(attrs);
    Py_RETURN_TRUE;
}

PyObject *
win_ResumeThread(PyObject *self, PyObject *args)
{
    unsigned long long thread;
    DWORD previous;

    (void)self;
    if (!PyArg_ParseTuple(args, PGJOB_HANDLE_FMT ":ResumeThread", &thread))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    previous = ResumeThread(PGJOB_H(thread));
    Py_END_ALLOW_THREADS
    if (previous == (DWORD)-1)
        return pgjob_last_error("ResumeThread");
    PGJOB_TRACE("ResumeThread(%p): suspend count was %lu", (void *)PGJOB_H(thread),
                (unsigned long)previous);
    return PyLong_FromUnsignedLong(previous);
}
