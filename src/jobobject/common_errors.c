/* common_errors.c: the single place C turns a failed syscall into an exception.
 * Always OSError (or the subclass OSError itself picks for the code, e.g. FileNotFoundError),
 * carrying the code (winerror or errno) and the syscall's name in .syscall; Python
 * (pgjob._errors.classify) decides what the code means. */
#include "jobobject.h"

#include <string.h>

PyObject *
pgjob_oserror(const char *syscall, unsigned long code)
{
    PyObject *exc, *exc_args;
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
    if (message == NULL)
        return NULL;
    /* OSError(errno, strerror, filename, winerror): with winerror given, OSError derives
     * .errno itself, exactly like PyErr_SetFromWindowsErr. */
    exc_args = Py_BuildValue("(iOOk)", 0, message, Py_None, code);
    Py_DECREF(message);
#else
    exc_args = Py_BuildValue("(is)", (int)code, "");
    if (exc_args != NULL) {
        PyObject *message = PyUnicode_FromFormat("%s failed: %s", syscall, strerror((int)code));
        if (message == NULL) {
            Py_CLEAR(exc_args);
        } else {
            PyTuple_SetItem(exc_args, 1, message); /* steals message */
        }
    }
#endif
    if (exc_args == NULL)
        return NULL;
    PGJOB_TRACE("%s failed: code %lu", syscall, code);
    exc = PyObject_Call(PyExc_OSError, exc_args, NULL);
    Py_DECREF(exc_args);
    if (exc != NULL) {
        PyObject *name = PyUnicode_FromString(syscall);
        /* OSError instances have a __dict__; .syscall is what pgjob._errors.classify reads. */
        if (name == NULL || PyObject_SetAttrString(exc, "syscall", name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(exc);
            return NULL;
        }
        Py_DECREF(name);
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}
