/* common_errors.c: the single place C turns a failed syscall into an exception.
 * Always OSError (or the subclass OSError itself picks for the code, e.g. FileNotFoundError),
 * carrying the code (winerror or errno), the syscall's name in .syscall and, where the call
 * site knows it, what the failure means in ._pgjob_meaning: the pgjob._errors class that
 * Job._use raises from it (see enum pgjob_meaning). */
#include "jobobject.h"

#include <string.h>

/* The pgjob._errors class named by `meaning` (a new reference; None for
 * PGJOB_NOT_A_JOB_ERROR), or NULL with an exception set. */
static PyObject *
meaning_class(enum pgjob_meaning meaning)
{
    static const char *const names[] = {
        [PGJOB_JOB_ERROR] = "JobError",
        [PGJOB_ALREADY_IN_JOB] = "AlreadyInJobError",
        [PGJOB_PROCESS_EXITED] = "ProcessExitedError",
        [PGJOB_UNSUPPORTED] = "UnsupportedError",
        [PGJOB_LIMIT_EXCEEDED] = "LimitExceededError",
    };
    PyObject *module, *cls;
    if (meaning == PGJOB_NOT_A_JOB_ERROR) {
        Py_INCREF(Py_None);
        return Py_None;
    }
    /* An error path only: the import is a dictionary lookup once pgjob is imported. */
    module = PyImport_ImportModule("pgjob._errors");
    if (module == NULL)
        return NULL;
    cls = PyObject_GetAttrString(module, names[meaning]);
    Py_DECREF(module);
    return cls;
}

PyObject *
pgjob_oserror_as(enum pgjob_meaning meaning, const char *syscall, unsigned long code)
{
    return pgjob_oserror_file(meaning, syscall, code, NULL);
}

PyObject *
pgjob_oserror_file(enum pgjob_meaning meaning, const char *syscall, unsigned long code,
                   const char *filename)
{
    PyObject *exc, *exc_args, *file;
    if (filename != NULL) {
        if ((file = PyUnicode_DecodeFSDefault(filename)) == NULL)
            return NULL;
    } else {
        Py_INCREF(Py_None);
        file = Py_None;
    }
#ifdef MS_WINDOWS
    wchar_t *text = NULL;
    DWORD len = FormatMessageW(
        FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
        NULL, (DWORD)code, MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT), (LPWSTR)&text, 0, NULL);
    /* Drop the trailing CR/LF and period FormatMessage appends. */
    while (len > 0 && (text[len - 1] == L'\r' || text[len - 1] == L'\n' || text[len - 1] == L'.'))
        len--;
    PyObject *message;
    PyObject *system_text = len ? PyUnicode_FromWideChar(text, (Py_ssize_t)len) : NULL;
    if (system_text != NULL) {
        message = PyUnicode_FromFormat("%s failed: %U", syscall, system_text);
        Py_DECREF(system_text);
    } else {
        PyErr_Clear(); /* no system text is not an error of ours */
        message = PyUnicode_FromFormat("%s failed: error %lu", syscall, code);
    }
    if (text != NULL)
        LocalFree(text);
    /* OSError(errno, strerror, filename, winerror): with winerror given, OSError derives
     * .errno itself, exactly like PyErr_SetFromWindowsErr. */
    exc_args = message == NULL ? NULL : Py_BuildValue("(iOOk)", 0, message, file, code);
    Py_XDECREF(message);
#else
    PyObject *message = PyUnicode_FromFormat("%s failed: %s", syscall, strerror((int)code));
    exc_args = message == NULL ? NULL : Py_BuildValue("(iOO)", (int)code, message, file);
    Py_XDECREF(message);
#endif
    Py_DECREF(file);
    if (exc_args == NULL)
        return NULL;
    PGJOB_TRACE("%s failed: code %lu", syscall, code);
    exc = PyObject_Call(PyExc_OSError, exc_args, NULL);
    Py_DECREF(exc_args);
    if (exc != NULL) {
        /* OSError instances have a __dict__: .syscall names the call in messages. */
        PyObject *name = PyUnicode_FromString(syscall);
        if (name == NULL || PyObject_SetAttrString(exc, "syscall", name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(exc);
            return NULL;
        }
        Py_DECREF(name);
        if (meaning != PGJOB_UNMARKED) {
            /* The meaning refines the error; failing to attach it (out of memory) must not
             * replace the error itself: it is then raised unmarked, as a JobError (or left
             * as it is while spawning), which is what pgjob._errors.classify makes of it. */
            PyObject *cls = meaning_class(meaning);
            if (cls == NULL || PyObject_SetAttrString(exc, "_pgjob_meaning", cls) < 0)
                PyErr_Clear();
            Py_XDECREF(cls);
        }
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}
