/* The decode of a replay worker that is handed the other worker's DNS answers too: those it
 * learns from go straight into its DnsCache (sensor.decode.dispatch.shared_decode_py is the
 * reference). Apart from packet.c, whose decode it wraps, as it also asks select.c for the route. */
#include "fast.h"

/* Another worker's DNS `message` seen at `ts`, learned by `cache` as DnsCache.learn(ts, message,
 * counted=False) learns it: 1, or 0 having stored nothing where the Python code decides (a sweep
 * is due, which it counts; what the compiled dns_learn declines); -1 on error. */
static int learn_shared(PyObject *state, PyObject *cache, double ts, PyObject *message) {
    static PyObject *sweep_name, *entries_name, *move_name, *max_name;
    if (sweep_name == NULL && ((sweep_name = PyUnicode_InternFromString("_sweep_at")) == NULL ||
                               (entries_name = PyUnicode_InternFromString("_entries")) == NULL ||
                               (move_name = PyUnicode_InternFromString("_move_to_end")) == NULL ||
                               (max_name = PyUnicode_InternFromString("max_entries")) == NULL)) {
        sweep_name = NULL;
        return -1;
    }
    PyObject *sweep_at = PyObject_GetAttr(cache, sweep_name);
    if (sweep_at == NULL) return -1;
    double sweep = PyFloat_AsDouble(sweep_at);
    Py_DECREF(sweep_at);
    if (sweep == -1.0 && PyErr_Occurred()) return -1;
    if (ts >= sweep) return 0;
    PyObject *entries = PyObject_GetAttr(cache, entries_name), *move = PyObject_GetAttr(cache, move_name),
             *cap = PyObject_GetAttr(cache, max_name), *stored = NULL;
    Py_ssize_t max_entries = cap != NULL ? PyLong_AsSsize_t(cap) : -1;
    int failed = entries == NULL || move == NULL || (max_entries == -1 && PyErr_Occurred());
    if (!failed)
        stored = learn_message(entries, move, ts, message, PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(state, 2)),
                               PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(state, 3)));
    failed = failed || stored == NULL;
    if (!failed && stored != Py_None) { /* the oldest let go past the cap, uncounted (DnsCache._stored) */
        while (!failed && PyDict_GET_SIZE(entries) > max_entries) {
            PyObject *keys = PyObject_GetIter(entries), *oldest = keys != NULL ? PyIter_Next(keys) : NULL;
            failed = oldest == NULL || PyObject_DelItem(entries, oldest) < 0;
            Py_XDECREF(oldest);
            Py_XDECREF(keys);
        }
    }
    int learned = failed ? -1 : stored != Py_None;
    Py_XDECREF(entries);
    Py_XDECREF(move);
    Py_XDECREF(cap);
    Py_XDECREF(stored);
    return learned;
}

/* A DNS datagram inside a mirror tunnel (decode_mirrored's), as dns_datagram's 5-tuple; None when
 * it is none or the Python parser decides. */
static PyObject *mirrored_datagram(PyObject *const *args) {
    PyObject *mirrored = decode_mirrored(NULL, args, 2);
    if (mirrored == NULL || mirrored == Py_None) return mirrored;
    PyObject *decoded = PyTuple_GET_ITEM(mirrored, 0), *result = NULL, *message;
    unsigned long sport = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(decoded, 3)),
                  dport = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(decoded, 4));
    PyObject *src = PyTuple_GET_ITEM(decoded, 1), *dst = PyTuple_GET_ITEM(decoded, 2),
             *payload = PyTuple_GET_ITEM(decoded, 7);
    if (PyLong_AsUnsignedLong(PyTuple_GET_ITEM(decoded, 0)) != UDP || (sport != 53 && dport != 53) ||
        !PyBytes_Check(payload) || PyErr_Occurred())
        goto done;
    message = dns_message_of((const uint8_t *)PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload));
    if (message != NULL)
        result = tuple_steal(5, (PyObject *[]){address_text((const uint8_t *)PyBytes_AS_STRING(src), PyBytes_GET_SIZE(src)),
                                               PyLong_FromUnsignedLong(sport),
                                               address_text((const uint8_t *)PyBytes_AS_STRING(dst), PyBytes_GET_SIZE(dst)),
                                               PyLong_FromUnsignedLong(dport), message});
done:
    Py_DECREF(mirrored);
    if (result == NULL && !PyErr_Occurred()) result = Py_NewRef(Py_None);
    return result;
}

/* The decode of a replay worker handed the other worker's DNS answers too (see share_decoder). Its
 * `state`: (shared route, DnsCache or None, min_ttl, max_ttl). */
static PyObject *shared_decode(PyObject *state, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(linktype, frame, ts)");
        return NULL;
    }
    PyObject *found = decode_packet(NULL, args, 2), *cache = PyTuple_GET_ITEM(state, 1), *datagram;
    if (found == NULL || cache == Py_None || (found != Py_None && PyTuple_GET_SIZE(found) != 5)) return found;
    /* feed's tests, in its order: a datagram's message something to learn (else the owner's,
     * whichever worker this is), then the route */
    Py_ssize_t answers = found != Py_None ? message_answer_count(PyTuple_GET_ITEM(found, 4)) : 1;
    if (answers <= 0) {
        if (answers == 0) return found;
        Py_DECREF(found);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) goto error;
    int route = frame_route((unsigned)PyLong_AsUnsignedLong(args[0]), view.buf, view.len);
    PyBuffer_Release(&view);
    if (route != PyLong_AsLong(PyTuple_GET_ITEM(state, 0))) return found;
    double ts = PyFloat_AsDouble(args[2]);
    if (ts == -1.0 && PyErr_Occurred()) goto error;
    if (found != Py_None) {
        datagram = Py_NewRef(found);
    } else { /* shared from inside a mirror tunnel: what feed_shared's side decoder learns of it */
        if ((datagram = mirrored_datagram(args)) == NULL) goto error;
        if (datagram == Py_None) {
            Py_DECREF(datagram);
            return found;
        }
    }
    PyObject *message = PyTuple_GET_ITEM(datagram, 4);
    answers = message_answer_count(message);
    int learned = answers <= 0 ? (int)answers : learn_shared(state, cache, ts, message);
    if (learned <= 0) {
        Py_DECREF(datagram);
        if (learned < 0) goto error;
        return found;
    }
    Py_DECREF(found);
    /* `datagram` is new here (decode_packet's or mirrored_datagram's): its message becomes None,
     * the sign of another worker's answer learned */
    Py_DECREF(message);
    PyTuple_SET_ITEM(datagram, 4, Py_NewRef(Py_None));
    return datagram;
error:
    Py_DECREF(found);
    return NULL;
}

static PyMethodDef shared_decode_def = {
    "decode", (PyCFunction)(void (*)(void))shared_decode, METH_FASTCALL,
    "decode(linktype, frame, ts) -> decode_packet's answer; for another worker's DNS answer it learned from, "
    "that 5-tuple with None for the message"};

/* share_decoder(shared_route, cache, min_ttl, max_ttl) -> decode(linktype, frame, ts): decode_packet's
 * answer, except that a DNS datagram whose message a cache learns from and whose route (select_route)
 * is `shared_route` (another replay worker's answer), also one inside a mirror tunnel (VXLAN,
 * ERSPAN: decode_mirrored's), is stored in `cache` (a DnsCache, or None for never) as
 * DnsCache.learn(ts, message, counted=False) stores it, where the compiled dns_learn takes it and
 * no sweep is due: then its 5-tuple (the tunnelled datagram's) comes with None for the message.
 * sensor.decode.dispatch.shared_decode_py is the reference. */
PyObject *share_decoder(PyObject *module, PyObject *args) {
    int route;
    PyObject *cache;
    double min_ttl, max_ttl;
    if (!PyArg_ParseTuple(args, "iOdd", &route, &cache, &min_ttl, &max_ttl)) return NULL;
    PyObject *state = Py_BuildValue("(iOdd)", route, cache, min_ttl, max_ttl);
    if (state == NULL) return NULL;
    PyObject *decode = PyCFunction_New(&shared_decode_def, state);
    Py_DECREF(state);
    return decode;
}
