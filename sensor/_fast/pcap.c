#include "fast.h"

/* pcap_records(buffer, start, linktype, big_endian, nanoseconds, high) -> (records, next, empty, late, high)
 * sensor.capture.pcap.CaptureFile._pcap's record loop: (timestamp, linktype, frame) for every
 * record wholly in `buffer` from `start`, and where the first record not wholly there begins; also
 * how many of those records were empty, how many were stamped more than TIME_JUMP seconds before
 * the latest time stamp so far (`high` on entry, the new one returned). */
static double time_jump = -1.0; /* sensor.capture.pcap.TIME_JUMP (bind_pcap); -1: not bound yet */

/* bind_pcap(TIME_JUMP) */
PyObject *bind_pcap(PyObject *module, PyObject *arg) {
    double value = PyFloat_AsDouble(arg);
    if (value == -1.0 && PyErr_Occurred()) return NULL;
    if (!(value > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "bind_pcap: TIME_JUMP is a positive number of seconds");
        return NULL;
    }
    time_jump = value;
    Py_RETURN_NONE;
}

PyObject *pcap_records(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, empty = 0, late = 0;
    PyObject *linktype;
    int big, nano;
    double high;
    if (time_jump < 0) {
        PyErr_SetString(PyExc_RuntimeError, "TIME_JUMP is not bound (bind_pcap)");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*nOppd", &view, &pos, &linktype, &big, &nano, &high)) return NULL;
    const uint8_t *buf = view.buf;
    Py_ssize_t len = view.len;
    double scale = nano ? 1e-9 : 1e-6;
    PyObject *records = PyList_New(0);
    if (records == NULL || pos < 0) goto fail;
    while (pos + 16 <= len) {
        uint32_t incl = record_u32(buf + pos + 8, big);
        if (pos + 16 + (Py_ssize_t)incl > len) break;
        double ts = (double)record_u32(buf + pos, big) + (double)record_u32(buf + pos + 4, big) * scale;
        if (incl == 0) empty++;
        if (ts > high) high = ts;
        else if (ts < high - time_jump) late++;
        PyObject *record = tuple_steal(3, (PyObject *[]){PyFloat_FromDouble(ts), Py_NewRef(linktype),
                                                         bytes_at(buf + pos + 16, incl)});
        if (record == NULL || PyList_Append(records, record) < 0) {
            Py_XDECREF(record);
            goto fail;
        }
        Py_DECREF(record);
        pos += 16 + incl;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nnnnd)", records, pos, empty, late, high);
fail:
    Py_XDECREF(records);
    PyBuffer_Release(&view);
    return NULL;
}

