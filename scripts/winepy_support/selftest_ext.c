/* Toolchain self-test for the Wine harness (scripts/winepy --selftest): a tiny extension
 * that exercises argument parsing, PyLong, wide strings, exceptions and struct-layout
 * dependent macros, so a wrong pyconfig.h shows up as a wrong answer, not a mystery. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <windows.h>

static PyObject *parse(PyObject *Py_UNUSED(self), PyObject *args)
{
    int i;
    const char *s;
    Py_ssize_t slen, n = -1;
    if (!PyArg_ParseTuple(args, "is#|n", &i, &s, &slen, &n))
        return NULL;
    return Py_BuildValue("(is#n)", i, s, slen, n);
}

static PyObject *wide(PyObject *Py_UNUSED(self), PyObject *arg)
{
    Py_ssize_t len;
    wchar_t *w = PyUnicode_AsWideCharString(arg, &len);
    if (w == NULL)
        return NULL;
    /* Round-trip through a Win32 W API to prove wchar_t == WCHAR (UTF-16). */
    int chars = lstrlenW(w);
    PyObject *back = PyUnicode_FromWideChar(w, len);
    PyMem_Free(w);
    if (back == NULL)
        return NULL;
    return Py_BuildValue("(niN)", len, chars, back);
}

static PyObject *bigint(PyObject *Py_UNUSED(self), PyObject *arg)
{
    long long v = PyLong_AsLongLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred())
        return NULL;
    return Py_BuildValue("(NN)", PyLong_FromLongLong(v + 1), PyLong_FromSsize_t(s));
}

static PyObject *layout(PyObject *Py_UNUSED(self), PyObject *arg)
{
    /* Py_TYPE()->tp_* and the list/tuple macros read fixed offsets: garbage here means
     * the header layout disagrees with the DLL's. */
    PyTypeObject *tp = Py_TYPE(arg);
    Py_ssize_t n = PyList_Check(arg) ? PyList_GET_SIZE(arg) : -1;
    PyObject *first = n > 0 ? PyList_GET_ITEM(arg, 0) : Py_None;
    return Py_BuildValue("(snnOnnn)", tp->tp_name, tp->tp_basicsize, n, first,
                         (Py_ssize_t)sizeof(PyObject), (Py_ssize_t)sizeof(Py_ssize_t),
                         (Py_ssize_t)sizeof(long));
}

static PyObject *fail(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(arg))
{
    PyErr_SetString(PyExc_ValueError, "selftest failure path");
    return NULL;
}

static PyObject *pid(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLong(GetCurrentProcessId());
}

static PyObject *crash(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
    /* For checking what a segfaulting extension looks like from winepy. */
    volatile int *p = NULL;
    *p = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, NULL},
    {"wide", wide, METH_O, NULL},
    {"bigint", bigint, METH_O, NULL},
    {"layout", layout, METH_O, NULL},
    {"fail", fail, METH_O, NULL},
    {"pid", pid, METH_NOARGS, NULL},
    {"crash", crash, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_winepy_selftest", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__winepy_selftest(void)
{
    return PyModule_Create(&module);
}
