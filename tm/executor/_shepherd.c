/* The executor's zygote as a Python module: serve(fd, ignored) runs the loop of _zygote.c in
 * the interpreter that imported it (tm/executor/zygote.py), where the standalone zygote
 * (_zygote_main.c) is not built. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>

#include "_shepherd.h"

static int interrupted(void) {
    return PyErr_CheckSignals() < 0; /* ^C: KeyboardInterrupt, as the Python loop */
}

static PyObject *serve(PyObject *self, PyObject *args) {
    (void)self;
    int sock;
    unsigned long ignored;
    if (!PyArg_ParseTuple(args, "ik", &sock, &ignored))
        return NULL;
    int done = zygote_serve(sock, ignored, interrupted);
    if (done == -2)
        return NULL; /* the exception PyErr_CheckSignals set */
    if (done < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS,
     "serve(fd, ignored_mask): the zygote's loop on fd, until its end."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_shepherd",
    "The executor's zygote and the jobs' shepherds, compiled (see tm/executor/zygote.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__shepherd(void) { return PyModule_Create(&module); }
