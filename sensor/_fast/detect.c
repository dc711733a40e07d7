#include "fast.h"

/* ---------------------------------------------------------------------------------------------
 * detect_front: the commonest answer of sensor.detect.engine.DetectionEngine.on_record_py without
 * a Python frame. Most records are DNS lookups and TLS or QUIC hellos naming a destination no
 * catalog knows, on which no enabled rule may fire: on_record_py finds the name in the day's table
 * of names (`_by_name`, whose entries say so with None for the rules) and answers no documents.
 * The front answers those records the same way, and hands every other record, unchanged, to
 * on_record_py: a record of another kind, a time at or past the next sweep or outside the day
 * remembered, an ECH hello, a name not remembered yet or one a rule may fire on. It changes nothing.
 */

enum { F_KINDS, F_NAMED, F_TIMES, F_FALLBACK, F_DNS, F_HELLO, F_COUNT };
static PyObject *str_ts, *str_name, *str_ech, *str_server_name;

static int front_strings(void) {
    if (str_server_name != NULL) return 0;
    return (str_ts = PyUnicode_InternFromString("ts")) == NULL || (str_name = PyUnicode_InternFromString("name")) == NULL ||
                   (str_ech = PyUnicode_InternFromString("ech")) == NULL ||
                   (str_server_name = PyUnicode_InternFromString("server_name")) == NULL
               ? -1
               : 0;
}

static PyObject *front(PyObject *bound, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *kinds = PyTuple_GET_ITEM(bound, F_KINDS), *named = PyTuple_GET_ITEM(bound, F_NAMED);
    PyObject *times = PyTuple_GET_ITEM(bound, F_TIMES), *record, *kind, *name, *entry;
    if (nargs != 1) goto python;
    record = args[0];
    kind = PyDict_GetItemWithError(kinds, (PyObject *)Py_TYPE(record));
    int dns = kind != NULL && kind == PyTuple_GET_ITEM(bound, F_DNS);
    if (!dns && (kind == NULL || kind != PyTuple_GET_ITEM(bound, F_HELLO))) goto python_or_error;
    if (PyByteArray_GET_SIZE(times) != 3 * sizeof(double)) goto python;
    double bounds[3]; /* the next sweep, the start and the end of the day remembered */
    memcpy(bounds, PyByteArray_AS_STRING(times), sizeof bounds);
    PyObject *ts_object = PyObject_GetAttr(record, str_ts);
    if (ts_object == NULL) return NULL;
    /* no sweep due (on_record_py's first step), a time of the day remembered (NaN: neither) */
    int in_day = 0;
    if (PyFloat_CheckExact(ts_object)) {
        double ts = PyFloat_AS_DOUBLE(ts_object);
        in_day = ts < bounds[0] && bounds[1] <= ts && ts < bounds[2];
    }
    Py_DECREF(ts_object);
    if (!in_day) goto python;
    if (dns) {
        name = PyObject_GetAttr(record, str_name);
    } else { /* a hello naming its server in the clear: no ECH */
        PyObject *ech = PyObject_GetAttr(record, str_ech);
        if (ech == NULL) return NULL;
        int clear = ech == Py_False;
        Py_DECREF(ech);
        if (!clear) goto python;
        name = PyObject_GetAttr(record, str_server_name);
    }
    if (name == NULL) return NULL;
    entry = PyUnicode_CheckExact(name) && PyUnicode_GET_LENGTH(name) > 0 ? PyDict_GetItemWithError(named, name) : NULL;
    Py_DECREF(name); /* (the entry stays the table's) */
    if (entry == NULL) goto python_or_error;
    /* (normalized name, enrichment, rules): None for the rules, and for a hello a name that
     * normalizes to something (else on_record_py asks DNS attribution) */
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3 || PyTuple_GET_ITEM(entry, 2) != Py_None) goto python;
    if (!dns) {
        PyObject *normal = PyTuple_GET_ITEM(entry, 0);
        if (!PyUnicode_CheckExact(normal) || PyUnicode_GET_LENGTH(normal) == 0) goto python;
    }
    return PyList_New(0);
python_or_error:
    if (PyErr_Occurred()) return NULL;
python:
    return PyObject_Vectorcall(PyTuple_GET_ITEM(bound, F_FALLBACK), args, (size_t)nargs, NULL);
}

static PyMethodDef front_def = {"on_record", (PyCFunction)(void (*)(void))front, METH_FASTCALL,
                                "on_record(record) -> the documents on_record_py gives"};

/* detect_front(kinds, named, times, on_record_py, dns_kind, hello_kind) -> an engine's on_record:
 * the engine's table of record kinds by class and its table of names (dicts, kept the same
 * objects), its next sweep and the bounds of the day remembered (a bytearray of three doubles,
 * which the engine writes as they change), its on_record_py (bound) and the kinds of a lookup and
 * of a hello. A lookup or hello no rule may fire on is answered here, anything else by on_record_py. */
PyObject *detect_front(PyObject *module, PyObject *args) {
    PyObject *kinds, *named, *times, *fallback, *dns, *hello;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO", &PyDict_Type, &kinds, &PyDict_Type, &named, &PyByteArray_Type, &times,
                          &fallback, &dns, &hello))
        return NULL;
    if (!PyDict_CheckExact(kinds) || !PyDict_CheckExact(named) || !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "detect_front: two dicts, a bytearray and a callable");
        return NULL;
    }
    if (front_strings() < 0) return NULL;
    PyObject *bound = PyTuple_Pack(F_COUNT, kinds, named, times, fallback, dns, hello);
    if (bound == NULL) return NULL;
    PyObject *on_record = PyCFunction_New(&front_def, bound);
    Py_DECREF(bound);
    return on_record;
}
