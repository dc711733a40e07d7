/* The opening packets of a TCP connection, taken in the decode call itself: a SYN, and a whole
 * ClientHello as the first segment after it (the common case of a TLS connection), or a ClientHello
 * split over the in-order segments after it; and an HTTP connection's next whole requests (see
 * take_requests). What TrafficDecoder.feed_decoded does with them
 * (FlowTable.syn, TrafficDecoder._whole_hello and emit_hello; for a split hello FlowTable.segment's
 * stream and _TlsHelloConsumer, built and fed as the Python code builds and feeds them), without a
 * Python call between the decode and the flow table. Everything else, and these packets wherever a
 * table is at its bound, a segment comes out of order or the stream holds any, goes on to the
 * Python code with nothing changed: a split hello's partial bytes are always the Python consumer's,
 * which takes over wherever this code declines. sensor.decode.dispatch.TrafficDecoder.handshake_py
 * is the reference. */
#include "fast.h"

#define SYN 0x02
#define FIN 0x01
#define RST 0x04
#define TLS_HANDSHAKE 0x16

static RecordType hello_record, flow_record;
static PyObject *legacy_versions, *tls_text, *tcp_text, *tls13_text, *streams_key;
/* the attributes of FlowTable's TcpStream and of _TlsHelloConsumer a split hello's segments touch */
static PyObject *done_name, *ooo_name, *consumer_name, *next_seq_name, *pos_name, *last_ts_name, *buf_name;

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
                             (streams_key = PyUnicode_InternFromString("tcp.streams")) == NULL ||
                             (done_name = PyUnicode_InternFromString("done")) == NULL ||
                             (ooo_name = PyUnicode_InternFromString("ooo")) == NULL ||
                             (consumer_name = PyUnicode_InternFromString("consumer")) == NULL ||
                             (next_seq_name = PyUnicode_InternFromString("next_seq")) == NULL ||
                             (pos_name = PyUnicode_InternFromString("pos")) == NULL ||
                             (last_ts_name = PyUnicode_InternFromString("last_ts")) == NULL ||
                             (buf_name = PyUnicode_InternFromString("buf")) == NULL)) {
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
enum {
    DECODE, STREAMS, HALF_OPEN, FINISHED, UNANCHORED, COUNTS, MAX_STREAMS, MAX_HALF_OPEN, MAX_FINISHED,
    DECODER, STREAM_TYPE, CONSUMER_TYPE, HELLO_CAP, HTTP_TYPE, PARSER_TYPE, HEAD_STATE, NEW_REQUEST, TEXTS, MAX_TEXTS,
    OPENED, STATE_SIZE
};

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

/* The version name of a ClientHello parse_hello parsed (borrowed; None: none), NULL on error. */
static PyObject *hello_version(PyObject *parsed) {
    /* (server_name, alpn, ech, legacy_version, offers_tls13, extension types) */
    if (PyObject_IsTrue(PyTuple_GET_ITEM(parsed, 4))) return tls13_text;
    PyObject *version = PyDict_GetItemWithError(legacy_versions, PyTuple_GET_ITEM(parsed, 3));
    return version != NULL || PyErr_Occurred() ? version : Py_None;
}

/* (emit_hello's record,) of a ClientHello parse_hello parsed, on the connection `key`; NULL on error. */
static PyObject *hello_record_of(PyObject *key, PyObject *ts, PyObject *parsed, PyObject *version) {
    PyObject *src = PyTuple_GET_ITEM(key, 0), *dst = PyTuple_GET_ITEM(key, 1);
    PyObject *flow = record_new(&flow_record, (PyObject *[]){
        address_text((const uint8_t *)PyBytes_AS_STRING(src), PyBytes_GET_SIZE(src)),
        Py_NewRef(PyTuple_GET_ITEM(key, 2)),
        address_text((const uint8_t *)PyBytes_AS_STRING(dst), PyBytes_GET_SIZE(dst)),
        Py_NewRef(PyTuple_GET_ITEM(key, 3)), Py_NewRef(tcp_text)});
    PyObject *hello = record_new(&hello_record, (PyObject *[]){
        Py_NewRef(ts), flow, Py_NewRef(tls_text), Py_NewRef(PyTuple_GET_ITEM(parsed, 0)),
        Py_NewRef(PyTuple_GET_ITEM(parsed, 1)), Py_NewRef(PyTuple_GET_ITEM(parsed, 2)), Py_NewRef(version)});
    return hello != NULL ? tuple_steal(1, (PyObject *[]){hello}) : NULL;
}

/* Split hellos opened here and not yet taken whole, by a hash of their connection's key (up to
 * 255, which stays): only segments that do not start a handshake record and fall on a marked slot
 * are looked up in the streams. A stream the Python code took over leaves its mark until a
 * segment of a connection on its slot finds no stream. */
static uint8_t *opened(PyObject *state, PyObject *src, PyObject *dst, long sport, long dport) {
    const uint8_t *s = (const uint8_t *)PyBytes_AS_STRING(src) + PyBytes_GET_SIZE(src) - 2,
                  *d = (const uint8_t *)PyBytes_AS_STRING(dst) + PyBytes_GET_SIZE(dst) - 2;
    uint32_t h = (uint32_t)get16(s) * 0x9E3779B1u ^ (uint32_t)get16(d) * 0x85EBCA77u ^
                 (uint32_t)sport * 0xC2B2AE3Du ^ (uint32_t)dport;
    return (uint8_t *)PyByteArray_AS_STRING(PyTuple_GET_ITEM(state, OPENED)) + ((h ^ (h >> 16)) & 0xFFFF);
}

static uint8_t *opened_key(PyObject *state, PyObject *key) {
    return opened(state, PyTuple_GET_ITEM(key, 0), PyTuple_GET_ITEM(key, 1), PyLong_AsLong(PyTuple_GET_ITEM(key, 2)),
                  PyLong_AsLong(PyTuple_GET_ITEM(key, 3)));
}

/* FlowTable._first_segment for the start of a ClientHello that runs on in the next segments
 * (parse_stream: NEED_MORE, within _HELLO_CAP): the stream and its _TlsHelloConsumer holding the
 * bytes, in the table as the Python code puts them there. (None,) having done so, NULL on error. */
static PyObject *open_split(PyObject *state, PyObject *key, PyObject *ts, uint32_t seq, PyObject *payload) {
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    PyObject *consumer = PyObject_Vectorcall(PyTuple_GET_ITEM(state, CONSUMER_TYPE),
                                             (PyObject *[]){PyTuple_GET_ITEM(state, DECODER), key}, 2, NULL);
    PyObject *stream = consumer != NULL ? PyObject_Vectorcall(PyTuple_GET_ITEM(state, STREAM_TYPE),
                                                              (PyObject *[]){key, ts}, 2, NULL)
                                        : NULL;
    PyObject *next_seq = stream != NULL ? PyLong_FromUnsignedLong((uint32_t)(seq + (uint32_t)n)) : NULL;
    PyObject *pos = next_seq != NULL ? PyLong_FromSsize_t(n) : NULL;
    int failed = pos == NULL || PyObject_SetAttr(consumer, buf_name, payload) < 0 ||
                 PyObject_SetAttr(stream, consumer_name, consumer) < 0 ||
                 PyObject_SetAttr(stream, next_seq_name, next_seq) < 0 || PyObject_SetAttr(stream, pos_name, pos) < 0 ||
                 PyObject_DelItem(PyTuple_GET_ITEM(state, HALF_OPEN), key) < 0 ||
                 PyObject_SetItem(PyTuple_GET_ITEM(state, STREAMS), key, stream) < 0;
    Py_XDECREF(consumer);
    Py_XDECREF(stream);
    Py_XDECREF(next_seq);
    Py_XDECREF(pos);
    if (failed) return NULL;
    uint8_t *count = opened_key(state, key);
    if (*count < 255) ++*count;
    return PyTuple_Pack(1, Py_None);
}

/* TrafficDecoder._whole_hello and emit_hello's record: (the TlsHello,) having moved the connection
 * from the half-open to the finished keys; or the start of a split ClientHello (open_split). NULL
 * with `*declined` set where the Python code decides (nothing changed), NULL on error. */
static PyObject *take_hello(PyObject *state, PyObject *key, PyObject *ts, uint32_t seq, PyObject *payload,
                            int *declined) {
    PyObject *streams = PyTuple_GET_ITEM(state, STREAMS), *half_open = PyTuple_GET_ITEM(state, HALF_OPEN),
             *finished = PyTuple_GET_ITEM(state, FINISHED);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    *declined = 1;
    int done = PyDict_Contains(finished, key);
    if (done < 0) return NULL;
    if (done || n < 6 || PyDict_GET_SIZE(streams) >= bound(state, MAX_STREAMS)) return NULL;
    PyObject *syn = PyDict_GetItemWithError(half_open, key);
    if (syn == NULL) return NULL;
    unsigned long long packed = PyLong_AsUnsignedLongLong(syn);
    if (packed == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if ((uint32_t)packed != seq) return NULL;
    PyObject *record_layer = hello_message(NULL, payload), *parsed = NULL, *result = NULL;
    if (record_layer == NULL) return NULL;
    long status = PyLong_AsLong(PyTuple_GET_ITEM(record_layer, 0));
    if (status == 0) { /* its first record runs on in the next segment (a split hello); 6 bytes: a ClientHello's */
        if (n <= bound(state, HELLO_CAP)) {
            *declined = 0;
            result = open_split(state, key, ts, seq, payload);
        }
        goto done;
    }
    if (status != 2 || PyDict_GET_SIZE(finished) >= bound(state, MAX_FINISHED)) goto done;
    parsed = parse_hello(NULL, PyTuple_GET_ITEM(record_layer, 1));
    if (parsed == NULL || parsed == Py_None) goto done;
    PyObject *version = hello_version(parsed);
    if (version == NULL) goto done;
    *declined = 0;
    if (PyObject_DelItem(half_open, key) < 0 || PyObject_SetItem(finished, key, ts) < 0) goto done;
    result = hello_record_of(key, ts, parsed, version);
done:
    Py_DECREF(record_layer);
    Py_XDECREF(parsed);
    return result;
}

/* The next in-order segment of a ClientHello split over segments, in `stream` (FlowTable.segment's
 * delivery to its _TlsHelloConsumer): (None,) having added the bytes while the hello runs on
 * (within _HELLO_CAP), or (the TlsHello,) having dropped the stream for the finished keys as
 * FlowTable._drop does; NULL with `*declined` set where the Python code decides (nothing changed:
 * out of order, a stream holding segments or with another consumer, a table at its bound, not a
 * ClientHello), NULL on error. */
static PyObject *take_more(PyObject *state, PyObject *stream, PyObject *key, PyObject *ts, uint32_t seq,
                           PyObject *payload, int *declined) {
    PyObject *finished = PyTuple_GET_ITEM(state, FINISHED), *consumer = NULL, *next_seq = NULL, *buf = NULL,
             *joined = NULL, *record_layer = NULL, *parsed = NULL, *result = NULL, *value;
    *declined = 1;
    if (Py_TYPE(stream) != (PyTypeObject *)PyTuple_GET_ITEM(state, STREAM_TYPE)) return NULL;
    if ((value = PyObject_GetAttr(stream, done_name)) == NULL) return NULL;
    Py_DECREF(value);
    if (value != Py_False) return NULL;
    if ((value = PyObject_GetAttr(stream, ooo_name)) == NULL) return NULL;
    Py_DECREF(value);
    if (value != Py_None) return NULL;
    if ((consumer = PyObject_GetAttr(stream, consumer_name)) == NULL) return NULL;
    if (Py_TYPE(consumer) != (PyTypeObject *)PyTuple_GET_ITEM(state, CONSUMER_TYPE)) goto done;
    if ((next_seq = PyObject_GetAttr(stream, next_seq_name)) == NULL) goto done;
    unsigned long expected = PyLong_AsUnsignedLong(next_seq);
    if (expected == (unsigned long)-1 && PyErr_Occurred()) goto done;
    if (expected != seq || (buf = PyObject_GetAttr(consumer, buf_name)) == NULL || !PyBytes_Check(buf)) goto done;
    Py_ssize_t n = PyBytes_GET_SIZE(payload), size = PyBytes_GET_SIZE(buf) + n;
    if ((joined = PyBytes_FromStringAndSize(NULL, size)) == NULL) goto done;
    memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf));
    memcpy(PyBytes_AS_STRING(joined) + PyBytes_GET_SIZE(buf), PyBytes_AS_STRING(payload), n);
    if ((record_layer = hello_message(NULL, joined)) == NULL) goto done;
    long status = PyLong_AsLong(PyTuple_GET_ITEM(record_layer, 0));
    if (status == 0) { /* runs on still: FlowTable.segment's bookkeeping and the consumer's buffer */
        if (size > bound(state, HELLO_CAP)) goto done;
        PyObject *pos = PyObject_GetAttr(stream, pos_name), *more = pos != NULL ? PyLong_FromSsize_t(n) : NULL,
                 *moved = more != NULL ? PyNumber_Add(pos, more) : NULL,
                 *next = moved != NULL ? PyLong_FromUnsignedLong((uint32_t)(seq + (uint32_t)n)) : NULL;
        *declined = next == NULL;
        if (next != NULL && PyObject_SetAttr(stream, last_ts_name, ts) == 0 &&
            PyObject_SetAttr(stream, next_seq_name, next) == 0 && PyObject_SetAttr(stream, pos_name, moved) == 0 &&
            PyObject_SetAttr(consumer, buf_name, joined) == 0)
            result = PyTuple_Pack(1, Py_None);
        Py_XDECREF(pos);
        Py_XDECREF(more);
        Py_XDECREF(moved);
        Py_XDECREF(next);
        goto done;
    }
    if (status != 2) goto done;
    int known = PyDict_Contains(finished, key);
    if (known != 0 || PyDict_GET_SIZE(finished) >= bound(state, MAX_FINISHED)) goto done;
    parsed = parse_hello(NULL, PyTuple_GET_ITEM(record_layer, 1));
    if (parsed == NULL || parsed == Py_None) goto done;
    PyObject *version = hello_version(parsed);
    if (version == NULL) goto done;
    *declined = 0;
    /* FlowTable._drop: the stream over, its key among the finished ones as of this segment */
    if (PyObject_SetAttr(stream, last_ts_name, ts) < 0 || PyObject_SetAttr(stream, done_name, Py_True) < 0 ||
        PyObject_SetAttr(stream, consumer_name, Py_None) < 0 ||
        PyObject_DelItem(PyTuple_GET_ITEM(state, STREAMS), key) < 0 || PyObject_SetItem(finished, key, ts) < 0)
        goto done;
    result = hello_record_of(key, ts, parsed, version);
    uint8_t *count = opened_key(state, key);
    if (*count > 0 && *count < 255) --*count;
done:
    Py_XDECREF(consumer);
    Py_XDECREF(next_seq);
    Py_XDECREF(buf);
    Py_XDECREF(joined);
    Py_XDECREF(record_layer);
    Py_XDECREF(parsed);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * The next requests of an HTTP connection: an in-order segment on a stream whose _HttpConsumer's
 * parser waits at a request's start with nothing buffered, holding whole plain requests only (the
 * compiled http_request takes each, to the segment's end). What FlowTable.segment, _HttpConsumer.feed
 * and HttpRequestStream.feed do with it: the stream's and the parser's positions moved on, each
 * request's HttpRequest appended to the decoder's records and counted (the consumer's flow made
 * once). Anything else goes on to the Python code with nothing changed.
 */
static PyObject *tunnel_name, *parser_name, *failed_name, *state_name, *pbuf_name, *message_name, *ready_name,
    *header_cap_name, *body_cap_name, *base_name, *scan_from_name, *flow_name, *records_name, *records_http_key,
    *classify_name;

static int http_names(void) {
    if (tunnel_name != NULL) return 0;
    const char *texts[] = {"tunnel", "parser", "_failed", "_state", "_buf", "_message", "_ready", "header_cap",
                           "body_cap", "_base", "_scan_from", "flow", "records", "records.http", "_classify"};
    PyObject **names[] = {&tunnel_name, &parser_name, &failed_name, &state_name, &pbuf_name, &message_name,
                          &ready_name, &header_cap_name, &body_cap_name, &base_name, &scan_from_name, &flow_name,
                          &records_name, &records_http_key, &classify_name};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        PyObject *name = PyUnicode_InternFromString(texts[i]);
        if (name == NULL) return -1;
        *names[i] = name;
    }
    return 0;
}

/* obj.name is `expected` (identity): 1, 0, -1 on error */
static int attr_is(PyObject *obj, PyObject *name, PyObject *expected) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1;
    Py_DECREF(value);
    return value == expected;
}

/* obj.name += n (an int attribute) */
static int attr_add_n(PyObject *obj, PyObject *name, Py_ssize_t n) {
    PyObject *value = PyObject_GetAttr(obj, name), *more = value != NULL ? PyLong_FromSsize_t(n) : NULL;
    PyObject *sum = more != NULL ? PyNumber_Add(value, more) : NULL;
    int status = sum != NULL ? PyObject_SetAttr(obj, name, sum) : -1;
    Py_XDECREF(value);
    Py_XDECREF(more);
    Py_XDECREF(sum);
    return status;
}

/* The parser's whole plain requests filling `payload` to its end (a new list of http_request's
 * answers), None where any part is not one, NULL on error. */
static PyObject *whole_requests(PyObject *parser, PyObject *payload) {
    PyObject *header_cap = PyObject_GetAttr(parser, header_cap_name), *body_cap = NULL, *requests = NULL;
    if (header_cap == NULL || (body_cap = PyObject_GetAttr(parser, body_cap_name)) == NULL ||
        (requests = PyList_New(0)) == NULL)
        goto error;
    Py_ssize_t start = 0, n = PyBytes_GET_SIZE(payload);
    while (start < n) {
        PyObject *at = PyLong_FromSsize_t(start);
        if (at == NULL) goto error;
        PyObject *found = http_request(NULL, (PyObject *[]){payload, at, header_cap, body_cap}, 4);
        Py_DECREF(at);
        if (found == NULL) goto error;
        if (found == Py_None || PyList_Append(requests, found) < 0) {
            int failed = found != Py_None;
            Py_DECREF(found);
            if (failed) goto error;
            Py_SETREF(requests, Py_NewRef(Py_None));
            break;
        }
        Py_ssize_t end = PyLong_AsSsize_t(PyTuple_GET_ITEM(found, 8));
        Py_DECREF(found);
        if (end == -1 && PyErr_Occurred()) goto error;
        if (end <= start) { /* never: a request has a head */
            Py_SETREF(requests, Py_NewRef(Py_None));
            break;
        }
        start = end;
    }
    Py_DECREF(header_cap);
    Py_DECREF(body_cap);
    return requests;
error:
    Py_XDECREF(header_cap);
    Py_XDECREF(body_cap);
    Py_XDECREF(requests);
    return NULL;
}

/* HttpRequestStream.feed's whole requests (the parser at the next request's start, `n` bytes on)
 * and _HttpConsumer._emit's records, appended and counted (its flow made once); 0, -1 on error. */
static int emit_requests(PyObject *state, PyObject *consumer, PyObject *parser, PyObject *key, PyObject *ts,
                         PyObject *requests, PyObject *records, PyObject *flow, Py_ssize_t n) {
    PyObject *zero = PyLong_FromLong(0);
    int failed = zero == NULL || attr_add_n(parser, base_name, n) < 0 || PyObject_SetAttr(parser, scan_from_name, zero) < 0;
    Py_XDECREF(zero);
    if (failed) return -1;
    Py_INCREF(flow);
    if (flow == Py_None) { /* the addresses' texts from addr_text's cache, kept there as addr_text keeps them */
        PyObject *texts = PyTuple_GET_ITEM(state, TEXTS), *src = PyTuple_GET_ITEM(key, 0), *dst = PyTuple_GET_ITEM(key, 1);
        Py_ssize_t max_texts = bound(state, MAX_TEXTS);
        int full = 0;
        PyObject *src_text = cached_text(texts, src, max_texts, &full);
        if (src_text == NULL && full)
            src_text = address_text((const uint8_t *)PyBytes_AS_STRING(src), PyBytes_GET_SIZE(src));
        full = 0;
        PyObject *dst_text = src_text != NULL ? cached_text(texts, dst, max_texts, &full) : NULL;
        if (dst_text == NULL && full)
            dst_text = address_text((const uint8_t *)PyBytes_AS_STRING(dst), PyBytes_GET_SIZE(dst));
        if (dst_text == NULL) {
            Py_XDECREF(src_text);
            Py_DECREF(flow);
            return -1;
        }
        Py_SETREF(flow, record_new(&flow_record, (PyObject *[]){src_text, Py_NewRef(PyTuple_GET_ITEM(key, 2)), dst_text,
                                                               Py_NewRef(PyTuple_GET_ITEM(key, 3)), Py_NewRef(tcp_text)}));
        if (flow == NULL || PyObject_SetAttr(consumer, flow_name, flow) < 0) {
            Py_XDECREF(flow);
            return -1;
        }
    }
    PyObject *counts = PyTuple_GET_ITEM(state, COUNTS);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(requests) && !failed; i++) {
        PyObject *const *field = &PyTuple_GET_ITEM(PyList_GET_ITEM(requests, i), 0);
        PyObject *request = PyObject_Vectorcall(PyTuple_GET_ITEM(state, NEW_REQUEST),
                                                (PyObject *[]){ts, flow, field[0], field[1], field[2], field[3],
                                                               field[4], field[5], field[6], field[7]},
                                                10, NULL);
        failed = request == NULL || PyList_Append(records, request) < 0;
        Py_XDECREF(request);
        PyObject *count = failed ? NULL : PyDict_GetItemWithError(counts, records_http_key);
        if (failed || (count == NULL && PyErr_Occurred())) {
            failed = 1;
            break;
        }
        PyObject *one = PyLong_FromLong(1), *more = one != NULL && count != NULL ? PyNumber_Add(count, one) : Py_XNewRef(one);
        failed = more == NULL || PyDict_SetItem(counts, records_http_key, more) < 0;
        Py_XDECREF(one);
        Py_XDECREF(more);
    }
    Py_DECREF(flow);
    return failed ? -1 : 0;
}

/* (None,) having taken the segment's requests, NULL with `*declined` set where the Python code
 * decides (nothing changed), NULL on error. */
static PyObject *take_requests(PyObject *state, PyObject *stream, PyObject *key, PyObject *ts, uint32_t seq,
                               PyObject *payload, int *declined) {
    PyObject *consumer = NULL, *parser = NULL, *value = NULL, *requests = NULL, *records = NULL, *flow = NULL,
             *result = NULL;
    *declined = 1;
    if (http_names() < 0) return NULL;
    if (Py_TYPE(stream) != (PyTypeObject *)PyTuple_GET_ITEM(state, STREAM_TYPE)) return NULL;
    if ((consumer = PyObject_GetAttr(stream, consumer_name)) == NULL) return NULL;
    if (Py_TYPE(consumer) != (PyTypeObject *)PyTuple_GET_ITEM(state, HTTP_TYPE)) goto done;
    int is;
    if ((is = attr_is(stream, done_name, Py_False)) != 1 || (is = attr_is(stream, ooo_name, Py_None)) != 1 ||
        (is = attr_is(consumer, tunnel_name, Py_None)) != 1)
        goto done;
    if ((value = PyObject_GetAttr(stream, next_seq_name)) == NULL) goto done;
    unsigned long expected = PyLong_AsUnsignedLong(value);
    if ((expected == (unsigned long)-1 && PyErr_Occurred()) || expected != seq) goto done;
    if ((parser = PyObject_GetAttr(consumer, parser_name)) == NULL) goto done;
    if (Py_TYPE(parser) != (PyTypeObject *)PyTuple_GET_ITEM(state, PARSER_TYPE)) goto done;
    if ((is = attr_is(parser, failed_name, Py_False)) != 1 ||
        (is = attr_is(parser, state_name, PyTuple_GET_ITEM(state, HEAD_STATE))) != 1 ||
        (is = attr_is(parser, message_name, Py_None)) != 1)
        goto done;
    Py_SETREF(value, PyObject_GetAttr(parser, pbuf_name));
    if (value == NULL || !PyByteArray_CheckExact(value) || PyByteArray_GET_SIZE(value) != 0) goto done;
    Py_SETREF(value, PyObject_GetAttr(parser, ready_name));
    if (value == NULL || !PyList_CheckExact(value) || PyList_GET_SIZE(value) != 0) goto done;
    if ((requests = whole_requests(parser, payload)) == NULL || requests == Py_None) goto done;
    if ((records = PyObject_GetAttr(PyTuple_GET_ITEM(state, DECODER), records_name)) == NULL ||
        !PyList_Check(records) || (flow = PyObject_GetAttr(consumer, flow_name)) == NULL)
        goto done;
    *declined = 0;
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    /* FlowTable.segment and _deliver: the stream's time and positions */
    PyObject *next = PyLong_FromUnsignedLong((uint32_t)(seq + (uint32_t)n));
    int failed = next == NULL || PyObject_SetAttr(stream, last_ts_name, ts) < 0 ||
                 PyObject_SetAttr(stream, next_seq_name, next) < 0 || attr_add_n(stream, pos_name, n) < 0;
    Py_XDECREF(next);
    if (failed || emit_requests(state, consumer, parser, key, ts, requests, records, flow, n) < 0) goto done;
    result = PyTuple_Pack(1, Py_None);
done:
    Py_XDECREF(consumer);
    Py_XDECREF(parser);
    Py_XDECREF(value);
    Py_XDECREF(requests);
    Py_XDECREF(records);
    Py_XDECREF(flow);
    return result;
}

/* FlowTable._first_segment for a connection's first bytes, after its SYN, in order, that the
 * decoder's classifier gives an _HttpConsumer and that hold whole plain requests only: the stream
 * made with that consumer, its requests taken as in take_requests. (None,), NULL with `*declined`
 * set where the Python code decides (nothing changed), NULL on error. */
static PyObject *take_first_requests(PyObject *state, PyObject *key, PyObject *ts, uint32_t seq, PyObject *payload,
                                     int *declined) {
    PyObject *streams = PyTuple_GET_ITEM(state, STREAMS), *half_open = PyTuple_GET_ITEM(state, HALF_OPEN),
             *decoder = PyTuple_GET_ITEM(state, DECODER), *consumer = NULL, *parser = NULL, *requests = NULL,
             *records = NULL, *stream = NULL, *result = NULL;
    *declined = 1;
    if (http_names() < 0) return NULL;
    int done = PyDict_Contains(PyTuple_GET_ITEM(state, FINISHED), key);
    if (done != 0 || PyDict_GET_SIZE(streams) >= bound(state, MAX_STREAMS)) return NULL;
    PyObject *syn = PyDict_GetItemWithError(half_open, key);
    if (syn == NULL) return NULL;
    unsigned long long packed = PyLong_AsUnsignedLongLong(syn);
    if ((packed == (unsigned long long)-1 && PyErr_Occurred()) || (uint32_t)packed != seq) return NULL;
    consumer = PyObject_CallMethodObjArgs(decoder, classify_name, key, payload, NULL);
    if (consumer == NULL || Py_TYPE(consumer) != (PyTypeObject *)PyTuple_GET_ITEM(state, HTTP_TYPE)) goto done;
    if ((parser = PyObject_GetAttr(consumer, parser_name)) == NULL ||
        Py_TYPE(parser) != (PyTypeObject *)PyTuple_GET_ITEM(state, PARSER_TYPE))
        goto done;
    if ((requests = whole_requests(parser, payload)) == NULL || requests == Py_None) goto done;
    if ((records = PyObject_GetAttr(decoder, records_name)) == NULL || !PyList_Check(records)) goto done;
    *declined = 0;
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    stream = PyObject_Vectorcall(PyTuple_GET_ITEM(state, STREAM_TYPE), (PyObject *[]){key, ts}, 2, NULL);
    PyObject *next = stream != NULL ? PyLong_FromUnsignedLong((uint32_t)(seq + (uint32_t)n)) : NULL;
    PyObject *pos = next != NULL ? PyLong_FromSsize_t(n) : NULL;
    int failed = pos == NULL || PyObject_DelItem(half_open, key) < 0 ||
                 PyObject_SetAttr(stream, consumer_name, consumer) < 0 ||
                 PyObject_SetAttr(stream, next_seq_name, next) < 0 || PyObject_SetAttr(stream, pos_name, pos) < 0 ||
                 PyObject_SetItem(streams, key, stream) < 0;
    Py_XDECREF(next);
    Py_XDECREF(pos);
    if (failed || emit_requests(state, consumer, parser, key, ts, requests, records, Py_None, n) < 0) goto done;
    result = PyTuple_Pack(1, Py_None);
done:
    Py_XDECREF(consumer);
    Py_XDECREF(parser);
    Py_XDECREF(requests);
    Py_XDECREF(records);
    Py_XDECREF(stream);
    return result;
}

/* feed_decoded's QUIC branch for a datagram that starts with a QUIC Initial, where its expiry of waiting
 * queries is not due: a server's datagram to a known client counted (QuicClientHelloTracker.skip_server),
 * any other fed to the decoder's tracker and a ClientHello it completes emitted (emit_hello). 1 having
 * done so, 0 having changed nothing, -1 on error. */
static int quic_datagram(PyObject *state, PyObject *const *item, PyObject *ts) {
    enum { NEXT_DNS_EXPIRY, QUIC, NEXT_EXPIRY, CONNECTIONS, COUNTS_NAME, SERVER_DATAGRAMS, FEED, EMIT_HELLO, UDP_TEXT,
           QUIC_TEXT, NAMES };
    static PyObject *names[NAMES];
    static const char *const texts[NAMES] = {"_next_dns_expiry", "quic", "_next_expiry", "_connections", "_counts",
                                             "quic.server_datagrams", "feed", "emit_hello", "udp", "quic"};
    if (names[0] == NULL)
        for (int i = 0; i < NAMES; i++)
            if ((names[i] = PyUnicode_InternFromString(texts[i])) == NULL) return -1;
    PyObject *decoder = PyTuple_GET_ITEM(state, DECODER), *tracker = NULL, *connections = NULL, *key = NULL,
             *reverse = NULL, *counts = NULL;
    int result = -1, due;
    PyObject *expiry = PyObject_GetAttr(decoder, names[NEXT_DNS_EXPIRY]);
    if (expiry == NULL) return -1;
    due = PyObject_RichCompareBool(ts, expiry, Py_GE);
    Py_DECREF(expiry);
    if (due) return due < 0 ? -1 : 0;
    if ((tracker = PyObject_GetAttr(decoder, names[QUIC])) == NULL ||
        (key = PyTuple_Pack(4, item[1], item[2], item[3], item[4])) == NULL ||
        (reverse = PyTuple_Pack(4, item[2], item[1], item[4], item[3])) == NULL)
        goto done;
    /* skip_server, where its tables are as the tracker makes them */
    if ((expiry = PyObject_GetAttr(tracker, names[NEXT_EXPIRY])) == NULL) goto done;
    due = PyObject_RichCompareBool(ts, expiry, Py_GE);
    Py_DECREF(expiry);
    if (due < 0 || (connections = PyObject_GetAttr(tracker, names[CONNECTIONS])) == NULL) goto done;
    int known = 0, server = 0;
    if (!due && PyDict_Check(connections) && (known = PyDict_Contains(connections, key)) == 0)
        server = PyDict_Contains(connections, reverse);
    if (known < 0 || server < 0) goto done;
    if (server) {
        if ((counts = PyObject_GetAttr(tracker, names[COUNTS_NAME])) == NULL) goto done;
        PyObject *count = PyDict_GetItemWithError(counts, names[SERVER_DATAGRAMS]);
        if (count == NULL && PyErr_Occurred()) goto done;
        PyObject *one = PyLong_FromLong(1), *more = one != NULL && count != NULL ? PyNumber_Add(count, one) : Py_XNewRef(one);
        int failed = more == NULL || PyObject_SetItem(counts, names[SERVER_DATAGRAMS], more) < 0;
        Py_XDECREF(one);
        Py_XDECREF(more);
        result = failed ? -1 : 1;
        goto done;
    }
    PyObject *hello = PyObject_VectorcallMethod(names[FEED], (PyObject *[]){tracker, key, item[7], reverse, ts},
                                                5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (hello == NULL) goto done;
    if (hello != Py_None) { /* make_flow's Flow, its address texts as addr_text gives them */
        PyObject *src = item[1], *dst = item[2];
        PyObject *flow = record_new(&flow_record, (PyObject *[]){
            address_text((const uint8_t *)PyBytes_AS_STRING(src), PyBytes_GET_SIZE(src)), Py_NewRef(item[3]),
            address_text((const uint8_t *)PyBytes_AS_STRING(dst), PyBytes_GET_SIZE(dst)), Py_NewRef(item[4]),
            Py_NewRef(names[UDP_TEXT])});
        PyObject *none = flow == NULL ? NULL : PyObject_VectorcallMethod(
            names[EMIT_HELLO], (PyObject *[]){decoder, ts, flow, names[QUIC_TEXT], hello},
            5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_XDECREF(flow);
        Py_DECREF(hello);
        if (none == NULL) goto done;
        Py_DECREF(none);
    } else
        Py_DECREF(hello);
    result = 1;
done:
    Py_XDECREF(tracker);
    Py_XDECREF(connections);
    Py_XDECREF(key);
    Py_XDECREF(reverse);
    Py_XDECREF(counts);
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
    if (proto == UDP && sport != 53 && dport != 53 && PyBytes_Check(payload) && PyBytes_Check(item[1]) &&
        PyBytes_Check(item[2]) && !PyErr_Occurred() &&
        quic_initial_start((const uint8_t *)PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))) {
        int taken = quic_datagram(state, item, args[2]);
        if (taken < 0) goto error;
        if (!taken) return found;
        Py_DECREF(found);
        return PyTuple_New(0);
    }
    if (proto != TCP || !PyBytes_Check(payload) || PyErr_Occurred()) goto declined;
    int bare = PyBytes_GET_SIZE(payload) == 0 && !(flags & (SYN | FIN | RST));
    if (sport == 53 || dport == 53) {
        /* DNS's port: only a SYN or a bare ACK, and only where it cannot be another replay worker's
         * (feed_found's test, with a route_of) */
        if (!bare && !((flags & SYN) && PyBytes_GET_SIZE(payload) == 0)) goto declined;
        static PyObject *route_of_name;
        if (route_of_name == NULL && (route_of_name = PyUnicode_InternFromString("_route_of")) == NULL) goto error;
        PyObject *route_of = PyObject_GetAttr(PyTuple_GET_ITEM(state, DECODER), route_of_name);
        if (route_of == NULL) goto error;
        Py_DECREF(route_of);
        if (route_of != Py_None) return found;
    }
    if (bare) { /* a bare ACK: feed_decoded only looks at the sweep and the expiry, as for (None,) */
        Py_DECREF(found);
        return PyTuple_Pack(1, Py_None);
    }
    if (!PyBytes_Check(item[1]) || !PyBytes_Check(item[2]) || PyBytes_GET_SIZE(item[1]) < 2 ||
        PyBytes_GET_SIZE(item[2]) < 2)
        goto declined;
    Py_ssize_t size = PyBytes_GET_SIZE(payload);
    int syn = (flags & SYN) && size == 0, handshake = 0, marked = 0, request = 0;
    if (!syn) {
        if ((flags & (SYN | FIN | RST)) || size == 0) goto declined;
        uint8_t first = (uint8_t)PyBytes_AS_STRING(payload)[0];
        handshake = first == TLS_HANDSHAKE;
        /* other bytes are looked up only where a split hello may have been opened here, or where
         * they may start an HTTP request (a method's first letter) */
        marked = !handshake && *opened(state, item[1], item[2], sport, dport);
        request = first >= 'A' && first <= 'Z';
        if (!handshake && !marked && !request) goto declined;
    }
    unsigned long seq = PyLong_AsUnsignedLong(item[6]);
    double ts = PyFloat_AsDouble(args[2]);
    if ((seq == (unsigned long)-1 || ts == -1.0) && PyErr_Occurred()) goto error;
    PyObject *key = PyTuple_Pack(4, item[1], item[2], item[3], item[4]), *result = NULL;
    if (key == NULL) goto error;
    int declined = 1;
    if (syn) {
        declined = 0;
        result = take_syn(state, key, ts, (uint32_t)seq, &declined);
    } else {
        PyObject *stream = PyDict_GetItemWithError(PyTuple_GET_ITEM(state, STREAMS), key);
        if (stream != NULL) {
            if (request) result = take_requests(state, stream, key, args[2], (uint32_t)seq, payload, &declined);
            if (result == NULL && declined && !PyErr_Occurred() && (handshake || marked))
                result = take_more(state, stream, key, args[2], (uint32_t)seq, payload, &declined);
        } else if (handshake && !PyErr_Occurred())
            result = take_hello(state, key, args[2], (uint32_t)seq, payload, &declined);
        else if (request && !PyErr_Occurred()) {
            result = take_first_requests(state, key, args[2], (uint32_t)seq, payload, &declined);
            if (result == NULL && declined && marked && !PyErr_Occurred()) { /* as below */
                uint8_t *count = opened_key(state, key);
                if (*count > 0 && *count < 255) --*count;
            }
        }
        else if (marked && !PyErr_Occurred()) { /* its stream is gone (the Python code took it over): a filter that heals */
            uint8_t *count = opened_key(state, key);
            if (*count > 0 && *count < 255) --*count;
        }
    }
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
    "ClientHello it took whole, (None,) for a segment of a split one or an HTTP connection's whole requests it took"};

/* handshake_decoder(decode, streams, half_open, finished, unanchored, counts, max_streams, max_half_open,
 * max_finished, decoder, stream_type, consumer_type, hello_cap, http_type, parser_type, head_state, new_request,
 * texts, max_texts) -> decode(linktype, frame, ts): the answer
 * of `decode` (decode_packet's or a share_decoder's), except that a SYN without payload that
 * FlowTable.syn would record is recorded in the given tables of a FlowTable (and `counts`, its
 * counters' dict) and answered (), a whole ClientHello in the first segment after its SYN that
 * TrafficDecoder._whole_hello would take is taken so and answered (its TlsHello record,) for the
 * caller to append, and the in-order segments of a ClientHello split over segments (up to
 * `hello_cap` bytes) are fed to a `stream_type` stream and its `consumer_type(decoder, key)` as
 * FlowTable.segment feeds them, answered (None,) while it runs on and (its TlsHello record,) once
 * whole. An in-order segment of whole plain requests on an `http_type` consumer's stream whose
 * `parser_type` parser waits in `head_state`, or the first after a SYN that decoder._classify gives
 * such a consumer, is taken as FlowTable.segment takes it, each request's `new_request` record
 * appended to decoder.records (its flow's addresses from addr_text's cache `texts`, up to
 * `max_texts`), answered (None,). A bare ACK is answered (None,) (feed_decoded only looks at the sweep
 * and the expiry for it); a datagram that starts with a QUIC Initial is taken as feed_decoded takes it
 * (quic_datagram), answered (). On DNS's port only a SYN or a bare ACK, and only where the decoder has no
 * replay worker's route. bind_handshakes first.
 * sensor.decode.dispatch.TrafficDecoder.handshake_py is the reference. */
PyObject *handshake_decoder(PyObject *module, PyObject *args) {
    if (hello_record.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_handshakes() first");
        return NULL;
    }
    PyObject *decode, *streams, *half_open, *finished, *unanchored, *counts, *decoder, *stream_type, *consumer_type;
    PyObject *http_type, *parser_type, *head_state, *new_request, *texts;
    Py_ssize_t max_streams, max_half_open, max_finished, hello_cap, max_texts;
    if (!PyArg_ParseTuple(args, "OO!O!O!O!O!nnnOO!O!nO!O!OOO!n", &decode, &PyDict_Type, &streams, &PyDict_Type,
                          &half_open, &PyDict_Type, &finished, &PyDict_Type, &unanchored, &PyDict_Type, &counts,
                          &max_streams, &max_half_open, &max_finished, &decoder, &PyType_Type, &stream_type,
                          &PyType_Type, &consumer_type, &hello_cap, &PyType_Type, &http_type, &PyType_Type,
                          &parser_type, &head_state, &new_request, &PyDict_Type, &texts, &max_texts))
        return NULL;
    if (!PyCallable_Check(decode)) {
        PyErr_SetString(PyExc_TypeError, "handshake_decoder: decode is not callable");
        return NULL;
    }
    PyObject *marks = PyByteArray_FromStringAndSize(NULL, 65536);
    if (marks == NULL) return NULL;
    memset(PyByteArray_AS_STRING(marks), 0, 65536);
    PyObject *state = Py_BuildValue("(OOOOOOnnnOOOnOOOOOnN)", decode, streams, half_open, finished, unanchored, counts,
                                    max_streams, max_half_open, max_finished, decoder, stream_type, consumer_type,
                                    hello_cap, http_type, parser_type, head_state, new_request, texts, max_texts, marks);
    if (state == NULL) return NULL;
    PyObject *handshakes = PyCFunction_New(&handshake_decode_def, state);
    Py_DECREF(state);
    return handshakes;
}
