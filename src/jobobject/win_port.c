/* win_port.c: a job's notifications through an I/O completion port (new process, exit,
 * abnormal exit, no active process left, limit hits), read with a timeout and the GIL released. */
#include "jobobject.h"

PyObject *
win_CreateIoCompletionPort(PyObject *self, PyObject *unused)
{
    HANDLE port;

    (void)self;
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    Py_END_ALLOW_THREADS
    if (port == NULL)
        return pgjob_last_error("CreateIoCompletionPort");
    PGJOB_TRACE("CreateIoCompletionPort -> %p", (void *)port);
    return PGJOB_FROM_H(port);
}

PyObject *
win_AssociateJobCompletionPort(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"job", "port", "key", NULL};
    unsigned long long job, port, key;
    JOBOBJECT_ASSOCIATE_COMPLETION_PORT info;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, PGJOB_HANDLE_FMT PGJOB_HANDLE_FMT
                                     "K:AssociateJobCompletionPort", kwlist, &job, &port, &key))
        return NULL;
    info.CompletionKey = (PVOID)(uintptr_t)key;
    info.CompletionPort = PGJOB_H(port);
    Py_BEGIN_ALLOW_THREADS
    ok = SetInformationJobObject(PGJOB_H(job), JobObjectAssociateCompletionPortInformation, &info,
                                 sizeof(info));
    Py_END_ALLOW_THREADS
    if (!ok)
        return pgjob_last_error("SetInformationJobObject(JobObjectAssociateCompletionPortInformation)");
    PGJOB_TRACE("associated job %p with port %p", (void *)PGJOB_H(job), (void *)PGJOB_H(port));
    Py_RETURN_NONE;
}

PyObject *
win_GetQueuedCompletionStatus(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"port", "timeout_ms", NULL};
    unsigned long long port;
    unsigned long timeout_ms;
    DWORD message = 0, err = 0;
    ULONG_PTR key = 0;
    LPOVERLAPPED value = NULL;
    BOOL ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, PGJOB_HANDLE_FMT "k:GetQueuedCompletionStatus",
                                     kwlist, &port, &timeout_ms))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = GetQueuedCompletionStatus(PGJOB_H(port), &message, &key, &value, (DWORD)timeout_ms);
    err = ok ? 0 : GetLastError();
    Py_END_ALLOW_THREADS
    if (!ok) {
        if (err == WAIT_TIMEOUT)
            Py_RETURN_NONE;
        return pgjob_oserror("GetQueuedCompletionStatus", err);
    }
    /* For job messages the OVERLAPPED pointer slot carries the pid (or limit value). */
    return Py_BuildValue("(kKK)", (unsigned long)message, (unsigned long long)key,
                         (unsigned long long)(uintptr_t)value);
}
