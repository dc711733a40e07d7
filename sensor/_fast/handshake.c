/* The opening packets of a TCP connection, taken in the decode call itself: a SYN, and a whole
 * ClientHello as the first segment after it (the common case of a TLS connection). What
 * TrafficDecoder.feed_decoded does with them (FlowTable.syn, TrafficDecoder._whole_hello and
 * emit_hello), without a Python call between the decode and the flow table; everything else,
 * and these packets wherever a table is at its bound or something is held for the connection,
 * goes on to the Python code with nothing changed. sensor.decode.dispatch.TrafficDecoder.handshake_py
 * is the reference. */
#include "fast.h"

#define SYN 0x02
#define FIN 0x01
#define RST 0x04
#define TLS_HANDSHAKE 0x16

static RecordType hello_record, flow_record;
static PyObject *legacy_versions, *tls_text, *tcp_text, *tls13_text, *streams_key;

/* bind_handshakes(TlsHello, Flow, LEGACY_VERSIONS): the records handshake_decoder builds, and the
 * version names of a ClientHello that does not offer TLS 1.3 (sensor.decode.tls._LEGACY_VERSIONS). */
PyObject *bind_handshakes(PyObject *module, PyObject *args) {
    PyObject *hello, *flow, *versions;
    if (!PyArg_ParseTuple(args, "OOO!", &hello, &flow, &PyDict_Type, &versions)) return NULL;
    RecordType hello_bound = {0}, flow_bound = {0};
    if (record_type_bind(&hello_bound, hello, 7) < 0 || record_type_bind(&flow_bound, flow, 5) < 0) {
        record_type_clear(&hello_bound);
        return NULL;
    }
    if (tls_text == NULL && ((tls_text = PyUnicode_InternFromString("tls")) == NULL ||
                             (tcp_text = PyUnicode_InternFromString("tcp")) == NULL ||
                             (tls13_text = PyUnicode_InternFromString("1.3")) == NULL ||
                             (streams_key = PyUnicode_InternFromString("tcp.streams")) == NULL)) {
        tls_text = NULL;
        record_type_clear(&hello_bound);
        record_type_clear(&flow_bound);
        return NULL;
    }
    record_type_clear(&hello_record);
    record_type_clear(&flow_record);
    hello_record = hello_bound;
    flow_record = flow_bound;
    Py_XSETREF(legacy_versions, Py_NewRef(versions));
    Py_RETURN_NONE;
}

/* The bound tables (a state tuple, see handshake_decoder) */
enum { DECODE, STREAMS, HALF_OPEN, FINISHED, UNANCHORED, COUNTS, MAX_STREAMS, MAX_HALF_OPEN, MAX_FINISHED, STATE_SIZE };

static Py_ssize_t bound(PyObject *state, int index) { return PyLong_AsSsize_t(PyTuple_GET_ITEM(state, index)); }

/* FlowTable.syn for a SYN: () having recorded it, NULL with `*declined` set where the Python code
 * decides (nothing changed), NULL on error. */
static PyObject *take_syn(PyObject *state, PyObject *key, double ts, uint32_t seq, int *declined) {
    PyObject *streams = PyTuple_GET_ITEM(state, STREAMS), *half_open = PyTuple_GET_ITEM(state, HALF_OPEN),
             *finished = PyTuple_GET_ITEM(state, FINISHED), *unanchored = PyTuple_GET_ITEM(state, UNANCHORED),
             *counts = PyTuple_GET_ITEM(state, COUNTS);
    int known = PyDict_Contains(streams, key);
    if (known < 0) return NULL;
    if (known) return PyTuple_New(0); /* a retransmitted SYN: the stream goes on */
    int held = PyDict_GET_SIZE(unanchored) ? PyDict_Contains(unanchored, key) : 0;
    int open = PyDict_Contains(half_open, key);
    if (held < 0 || open < 0) return NULL;
    /* segments held before their SYN, an eviction, or a time that does not fit the packed value */
    if (held || (!open && PyDict_GET_SIZE(half_open) >= bound(state, MAX_HALF_OPEN)) || !(ts >= 0 && ts < 4294967296.0)) {
        *declined = 1;
        return NULL;
    }
    int done = PyDict_Contains(finished, key);
    if (done < 0 || (done && PyObject_DelItem(finished, key) < 0)) return NULL;
    if (!open) {
        PyObject *count = PyDict_GetItemWithError(counts, streams_key);
        if (count == NULL && PyErr_Occurred()) return NULL;
        PyObject *one = PyLong_FromLong(1), *more = one != NULL && count != NULL ? PyNumber_Add(count, one) : Py_XNewRef(one);
        int failed = more == NULL || PyDict_SetItem(counts, streams_key, more) < 0;
        Py_XDECREF(one);
        Py_XDECREF(more);
        if (failed) return NULL;
    }
    /* (whole seconds << 32) | the next sequence number, as FlowTable.syn packs it */
    PyObject *packed = PyLong_FromUnsignedLongLong(((unsigned long long)ts << 32) | (uint32_t)(seq + 1));
    int failed = packed == NULL || PyObject_SetItem(half_open, key, packed) < 0;
    Py_XDECREF(packed);
    return failed ? NULL : PyTuple_New(0);
}

/* TrafficDecoder._whole_hello and emit_hello's record: (the TlsHello,) having moved the connection
 * from the half-open to the finished keys; NULL with `*declined` set where the Python code decides
 * (nothing changed), NULL on error. */
static PyObject *take_hello(PyObject *state, PyObject *key, PyObject *ts, uint32_t seq, PyObject *payload,
                            int *declined) {
    PyObject *streams = PyTuple_GET_ITEM(state, STREAMS), *half_open = PyTuple_GET_ITEM(state, HALF_OPEN),
             *finished = PyTuple_GET_ITEM(state, FINISHED);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(payload);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    *declined = 1;
    if (n < 5 || 5 + (Py_ssize_t)get16(p + 3) > n) return NULL; /* a hello split over segments */
    int known = PyDict_Contains(streams, key), done = PyDict_Contains(finished, key);
    if (known < 0 || done < 0) return NULL;
    if (known || done || PyDict_GET_SIZE(streams) >= bound(state, MAX_STREAMS) ||
        PyDict_GET_SIZE(finished) >= bound(state, MAX_FINISHED))
        return NULL;
    PyObject *syn = PyDict_GetItemWithError(half_open, key);
    if (syn == NULL) return NULL;
    unsigned long long packed = PyLong_AsUnsignedLongLong(syn);
    if (packed == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if ((uint32_t)packed != seq) return NULL;
    PyObject *record_layer = hello_message(NULL, payload), *parsed = NULL, *result = NULL;
    if (record_layer == NULL) return NULL;
    if (PyLong_AsLong(PyTuple_GET_ITEM(record_layer, 0)) != 2) goto done;
    parsed = parse_hello(NULL, PyTuple_GET_ITEM(record_layer, 1));
    if (parsed == NULL || parsed == Py_None) goto done;
    /* (server_name, alpn, ech, legacy_version, offers_tls13, extension types) */
    PyObject *version = PyObject_IsTrue(PyTuple_GET_ITEM(parsed, 4))
                            ? tls13_text
                            : PyDict_GetItemWithError(legacy_versions, PyTuple_GET_ITEM(parsed, 3));
    if (version == NULL && PyErr_Occurred()) goto done;
    *declined = 0;
    if (PyObject_DelItem(half_open, key) < 0 || PyObject_SetItem(finished, key, ts) < 0) goto done;
    PyObject *src = PyTuple_GET_ITEM(key, 0), *dst = PyTuple_GET_ITEM(key, 1);
    PyObject *flow = record_new(&flow_record, (PyObject *[]){
        address_text((const uint8_t *)PyBytes_AS_STRING(src), PyBytes_GET_SIZE(src)),
        Py_NewRef(PyTuple_GET_ITEM(key, 2)),
        address_text((const uint8_t *)PyBytes_AS_STRING(dst), PyBytes_GET_SIZE(dst)),
        Py_NewRef(PyTuple_GET_ITEM(key, 3)), Py_NewRef(tcp_text)});
    PyObject *hello = record_new(&hello_record, (PyObject *[]){
        Py_NewRef(ts), flow, Py_NewRef(tls_text), Py_NewRef(PyTuple_GET_ITEM(parsed, 0)),
        Py_NewRef(PyTuple_GET_ITEM(parsed, 1)), Py_NewRef(PyTuple_GET_ITEM(parsed, 2)),
        Py_NewRef(version != NULL ? version : Py_None)});
    result = hello != NULL ? tuple_steal(1, (PyObject *[]){hello}) : NULL;
done:
    Py_DECREF(record_layer);
    Py_XDECREF(parsed);
    return result;
}

static PyObject *handshake_decode(PyObject *state, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(linktype, frame, ts)");
        return NULL;
    }
    PyObject *found = PyObject_Vectorcall(PyTuple_GET_ITEM(state, DECODE), args, nargs, NULL);
    if (found == NULL || !PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 8) return found;
    /* (transport, src, dst, sport, dport, tcp flags, tcp seq, payload) */
    PyObject *const *item = &PyTuple_GET_ITEM(found, 0);
    long proto = PyLong_AsLong(item[0]), sport = PyLong_AsLong(item[3]), dport = PyLong_AsLong(item[4]),
         flags = PyLong_AsLong(item[5]);
    PyObject *payload = item[7];
    if (proto != TCP || sport == 53 || dport == 53 || !PyBytes_Check(payload) || PyErr_Occurred()) goto declined;
    Py_ssize_t size = PyBytes_GET_SIZE(payload);
    int syn = (flags & SYN) && size == 0;
    if (!syn && ((flags & (SYN | FIN | RST)) || size == 0 || PyBytes_AS_STRING(payload)[0] != TLS_HANDSHAKE))
        goto declined;
    unsigned long seq = PyLong_AsUnsignedLong(item[6]);
    double ts = PyFloat_AsDouble(args[2]);
    if ((seq == (unsigned long)-1 || ts == -1.0) && PyErr_Occurred()) goto error;
    PyObject *key = PyTuple_Pack(4, item[1], item[2], item[3], item[4]), *result;
    if (key == NULL) goto error;
    int declined = 0;
    result = syn ? take_syn(state, key, ts, (uint32_t)seq, &declined)
                 : take_hello(state, key, args[2], (uint32_t)seq, payload, &declined);
    Py_DECREF(key);
    if (result != NULL) {
        Py_DECREF(found);
        return result;
    }
    if (!declined || PyErr_Occurred()) goto error;
declined:
    if (PyErr_Occurred()) goto error;
    return found;
error:
    Py_DECREF(found);
    return NULL;
}

static PyMethodDef handshake_decode_def = {
    "decode", (PyCFunction)(void (*)(void))handshake_decode, METH_FASTCALL,
    "decode(linktype, frame, ts) -> the bound decode's answer; () for a SYN it recorded, (TlsHello,) for a "
    "whole first ClientHello it took"};

/* handshake_decoder(decode, streams, half_open, finished, unanchored, counts, max_streams, max_half_open,
 * max_finished) -> decode(linktype, frame, ts): the answer of `decode` (decode_packet's or a
 * share_decoder's), except that a SYN without payload that FlowTable.syn would record is recorded
 * in the given tables of a FlowTable (and `counts`, its counters' dict) and answered (), and a whole
 * ClientHello in the first segment after its SYN that TrafficDecoder._whole_hello would take is
 * taken so and answered (its TlsHello record,) for the caller to append. Neither on DNS's port.
 * bind_handshakes first. sensor.decode.dispatch.TrafficDecoder.handshake_py is the reference. */
PyObject *handshake_decoder(PyObject *module, PyObject *args) {
    if (hello_record.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_handshakes() first");
        return NULL;
    }
    PyObject *decode, *streams, *half_open, *finished, *unanchored, *counts;
    Py_ssize_t max_streams, max_half_open, max_finished;
    if (!PyArg_ParseTuple(args, "OO!O!O!O!O!nnn", &decode, &PyDict_Type, &streams, &PyDict_Type, &half_open,
                          &PyDict_Type, &finished, &PyDict_Type, &unanchored, &PyDict_Type, &counts, &max_streams,
                          &max_half_open, &max_finished))
        return NULL;
    if (!PyCallable_Check(decode)) {
        PyErr_SetString(PyExc_TypeError, "handshake_decoder: decode is not callable");
        return NULL;
    }
    PyObject *state = Py_BuildValue("(OOOOOOnnn)", decode, streams, half_open, finished, unanchored, counts,
                                    max_streams, max_half_open, max_finished);
    if (state == NULL) return NULL;
    PyObject *handshakes = PyCFunction_New(&handshake_decode_def, state);
    Py_DECREF(state);
    return handshakes;
}
