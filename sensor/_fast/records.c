#include "fast.h"
#include "structmember.h"

/* sensor.records: frozen_record classes (RecordType, in fast.h) built without running their __init__. */

void record_type_clear(RecordType *record) {
    for (Py_ssize_t i = 0; i < record->count; i++) Py_CLEAR(record->slots[i]);
    Py_CLEAR(record->type);
    record->count = 0;
}

/* `count`: the number of fields expected, or -1 for any up to RECORD_MAX_FIELDS. */
int record_type_bind(RecordType *record, PyObject *type, Py_ssize_t count) {
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "a record class is expected");
        return -1;
    }
    PyObject *names = PyObject_GetAttrString(type, "__slots__");
    if (names == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%R: not a slotted record class", type);
        }
        return -1;
    }
    if (PyTuple_Check(names) && count < 0) count = PyTuple_GET_SIZE(names);
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) != count || count > RECORD_MAX_FIELDS) {
        Py_DECREF(names);
        PyErr_Format(PyExc_TypeError, "%R: expected %zd slots", type, count);
        return -1;
    }
    PyObject *slots[RECORD_MAX_FIELDS];
    for (Py_ssize_t i = 0; i < count; i++) {
        slots[i] = PyObject_GetAttr(type, PyTuple_GET_ITEM(names, i));
        if (slots[i] == NULL || Py_TYPE(slots[i])->tp_descr_set == NULL) {
            if (slots[i] != NULL) PyErr_Format(PyExc_TypeError, "%R: a field is not a slot", type);
            for (Py_ssize_t j = 0; j <= i; j++) Py_XDECREF(slots[j]);
            Py_DECREF(names);
            return -1;
        }
    }
    Py_DECREF(names);
    record_type_clear(record);
    record->type = (PyTypeObject *)Py_NewRef(type);
    memcpy(record->slots, slots, count * sizeof(PyObject *));
    for (Py_ssize_t i = 0; i < count; i++) {
        /* a __slots__ entry is a writable object member: its descriptor only stores the pointer */
        const PyMemberDef *member =
            Py_IS_TYPE(slots[i], &PyMemberDescr_Type) ? ((PyMemberDescrObject *)slots[i])->d_member : NULL;
        record->offsets[i] =
            member != NULL && member->type == T_OBJECT_EX && !(member->flags & READONLY) ? member->offset : -1;
    }
    record->count = count;
    return 0;
}

/* A new record from `values` (one per field, stolen; NULL ones mean an error is set). */
PyObject *record_new(const RecordType *record, PyObject **values) {
    PyObject *obj = NULL;
    for (Py_ssize_t i = 0; i < record->count; i++)
        if (values[i] == NULL) goto done;
    obj = record->type->tp_alloc(record->type, 0); /* zeroed: no slot holds anything yet */
    for (Py_ssize_t i = 0; obj != NULL && i < record->count; i++) {
        if (record->offsets[i] >= 0) {
            *(PyObject **)((char *)obj + record->offsets[i]) = values[i]; /* the reference moves in */
            values[i] = NULL;
        } else if (Py_TYPE(record->slots[i])->tp_descr_set(record->slots[i], obj, values[i]) < 0) {
            Py_CLEAR(obj);
        }
    }
done:
    for (Py_ssize_t i = 0; i < record->count; i++) Py_XDECREF(values[i]);
    return obj;
}

#define RECORD_CAPSULE "sensor._fast.RecordType"

static void record_capsule_free(PyObject *capsule) {
    RecordType *record = PyCapsule_GetPointer(capsule, RECORD_CAPSULE);
    record_type_clear(record);
    PyMem_Free(record);
}

static PyObject *record_make(PyObject *capsule, PyObject *const *args, Py_ssize_t nargs) {
    const RecordType *record = PyCapsule_GetPointer(capsule, RECORD_CAPSULE);
    if (record == NULL) return NULL;
    if (nargs != record->count) {
        PyErr_Format(PyExc_TypeError, "%s maker takes %zd positional arguments (%zd given)", record->type->tp_name,
                     record->count, nargs);
        return NULL;
    }
    PyObject *values[RECORD_MAX_FIELDS];
    for (Py_ssize_t i = 0; i < nargs; i++) values[i] = Py_NewRef(args[i]);
    return record_new(record, values);
}

static PyMethodDef record_make_def = {"make", (PyCFunction)(void (*)(void))record_make, METH_FASTCALL,
                                      "make(*fields) -> a new record, every field given in order"};

/* record_maker(cls) -> a function building cls from all its fields, positionally. */
PyObject *record_maker(PyObject *module, PyObject *type) {
    RecordType *record = PyMem_Calloc(1, sizeof *record);
    if (record == NULL) return PyErr_NoMemory();
    if (record_type_bind(record, type, -1) < 0) {
        PyMem_Free(record);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(record, RECORD_CAPSULE, record_capsule_free);
    if (capsule == NULL) {
        record_type_clear(record);
        PyMem_Free(record);
        return NULL;
    }
    PyObject *maker = PyCFunction_New(&record_make_def, capsule);
    Py_DECREF(capsule);
    return maker;
}

