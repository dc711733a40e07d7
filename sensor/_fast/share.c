/* The decode of a replay worker that is handed the other worker's DNS answers too: those it
 * learns from go straight into its DnsCache, walked from the wire where dns.c's dns_learn_wire
 * can (sensor.decode.dispatch.shared_decode_py is the reference). Apart from packet.c, whose
 * decode it wraps, as it also asks select.c for the route. */
#include "fast.h"

/* Another worker's DNS answer seen at `ts`, learned by `cache` as DnsCache.learn(ts, message,
 * counted=False) learns it: from its `message`, or without one from the `size` bytes at `wire`
 * (dns_learn_wire). 1, or 0 having stored nothing where the Python code decides (a sweep is due,
 * which it counts; what the compiled dns_learn or dns_learn_wire declines); -1 on error. */
static int learn_shared(PyObject *state, PyObject *cache, double ts, PyObject *message, const uint8_t *wire,
                        Py_ssize_t size) {
    static PyObject *sweep_name, *max_name;
    if (sweep_name == NULL && ((sweep_name = PyUnicode_InternFromString("_sweep_at")) == NULL ||
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
    PyObject *entries = PyTuple_GET_ITEM(state, 4), *move = PyTuple_GET_ITEM(state, 5),
             *cap = PyObject_GetAttr(cache, max_name);
    Py_ssize_t max_entries = cap != NULL ? PyLong_AsSsize_t(cap) : -1, stored = -1;
    double min_ttl = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(state, 2)), max_ttl = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(state, 3));
    if (!(max_entries == -1 && PyErr_Occurred())) {
        if (message != NULL) {
            PyObject *count = learn_message(entries, move, ts, message, min_ttl, max_ttl);
            stored = count == NULL ? -1 : count == Py_None ? DNS_WIRE_DECLINED : PyLong_AsSsize_t(count);
            Py_XDECREF(count);
        } else {
            stored = dns_learn_wire(entries, move, ts, wire, size, min_ttl, max_ttl);
        }
    }
    int failed = stored == -1;
    if (stored > 0) { /* the oldest let go past the cap, uncounted (DnsCache._stored) */
        while (!failed && PyDict_GET_SIZE(entries) > max_entries) {
            PyObject *keys = PyObject_GetIter(entries), *oldest = keys != NULL ? PyIter_Next(keys) : NULL;
            failed = oldest == NULL || PyObject_DelItem(entries, oldest) < 0;
            Py_XDECREF(oldest);
            Py_XDECREF(keys);
        }
    }
    Py_XDECREF(cap);
    return failed ? -1 : stored >= 0;
}

/* Another worker's DNS datagram inside a mirror tunnel (decode_mirrored's), learned from as
 * feed_shared's side decoder learns it: its 5-tuple (as dns_datagram's) with None for the message;
 * None where it is none, has nothing to learn or the Python code decides. */
static PyObject *mirrored_shared(PyObject *state, PyObject *cache, double ts, PyObject *const *args) {
    PyObject *mirrored = decode_mirrored(NULL, args, 2);
    if (mirrored == NULL || mirrored == Py_None) return mirrored;
    PyObject *decoded = PyTuple_GET_ITEM(mirrored, 0), *result = NULL, *message = NULL;
    unsigned long sport = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(decoded, 3)),
                  dport = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(decoded, 4));
    PyObject *src = PyTuple_GET_ITEM(decoded, 1), *dst = PyTuple_GET_ITEM(decoded, 2),
             *payload = PyTuple_GET_ITEM(decoded, 7);
    if (PyLong_AsUnsignedLong(PyTuple_GET_ITEM(decoded, 0)) != UDP || (sport != 53 && dport != 53) ||
        !PyBytes_Check(payload) || PyErr_Occurred())
        goto done;
    const uint8_t *wire = (const uint8_t *)PyBytes_AS_STRING(payload);
    Py_ssize_t size = PyBytes_GET_SIZE(payload);
    int learned = learn_shared(state, cache, ts, NULL, wire, size);
    if (learned == 0) { /* the walk declined: the message's */
        if ((message = dns_message_of(wire, size)) == NULL) goto done;
        Py_ssize_t answers = message_answer_count(message);
        learned = answers <= 0 ? (int)answers : learn_shared(state, cache, ts, message, NULL, 0);
    }
    if (learned > 0)
        result = tuple_steal(5, (PyObject *[]){address_text((const uint8_t *)PyBytes_AS_STRING(src), PyBytes_GET_SIZE(src)),
                                               PyLong_FromUnsignedLong(sport),
                                               address_text((const uint8_t *)PyBytes_AS_STRING(dst), PyBytes_GET_SIZE(dst)),
                                               PyLong_FromUnsignedLong(dport), Py_NewRef(Py_None)});
done:
    Py_XDECREF(message);
    Py_DECREF(mirrored);
    if (result == NULL && !PyErr_Occurred()) result = Py_NewRef(Py_None);
    return result;
}

/* Where dns_datagram (packet.c) finds a DNS datagram, its tests in its order: 1 with the datagram
 * located in `d`, else 0 (dns_datagram answers None: decode_packet answers as decode_frame). */
typedef struct {
    Py_ssize_t src, alen, message, end;
    unsigned sport, dport;
} Datagram;

static int locate_datagram(unsigned linktype, const uint8_t *f, Py_ssize_t n, Datagram *d) {
    Py_ssize_t off = network_offset(linktype, f, n), pos, end;
    if (off < 0 || n < off + 20) return 0;
    if (f[off] >> 4 == 4) {
        Py_ssize_t ihl = (f[off] & 0x0F) << 2, total = get16(f + off + 2);
        if (ihl < 20 || total < ihl || (get16(f + off + 6) & 0x3FFF) || f[off + 9] != UDP) return 0;
        end = off + total < n ? off + total : n;
        d->src = off + 12;
        d->alen = 4;
        pos = off + ihl;
    } else if (f[off] >> 4 == 6) {
        if (n < off + 40 || f[off + 6] != UDP) return 0;
        Py_ssize_t plen = get16(f + off + 4);
        end = off + 40 + plen;
        if (end > n || plen == 0) end = n;
        d->src = off + 8;
        d->alen = 16;
        pos = off + 40;
    } else {
        return 0;
    }
    if (end - pos < 8) return 0;
    Py_ssize_t ulen = get16(f + pos + 4);
    if (8 <= ulen && ulen < end - pos) end = pos + ulen;
    d->sport = get16(f + pos);
    d->dport = get16(f + pos + 2);
    if ((d->sport != 53 && d->dport != 53) || tunnel_datagram(d->sport, d->dport)) return 0;
    d->message = pos + 8;
    d->end = end;
    return 1;
}

#define ROUTE_UNKNOWN (-2) /* frame_route answers -1 before bind_select */

/* shared_decode's answer from decode_packet's `found` (taken): `route` the frame's, or ROUTE_UNKNOWN. */
static PyObject *shared_found(PyObject *state, PyObject *const *args, PyObject *found, int route) {
    PyObject *cache = PyTuple_GET_ITEM(state, 1);
    if (found == NULL || (found != Py_None && PyTuple_GET_SIZE(found) != 5)) return found;
    /* feed's tests, in its order: a datagram's message something to learn (else the owner's,
     * whichever worker this is), then the route */
    Py_ssize_t answers = found != Py_None ? message_answer_count(PyTuple_GET_ITEM(found, 4)) : 1;
    if (answers <= 0) {
        if (answers == 0) return found;
        Py_DECREF(found);
        return NULL;
    }
    if (route == ROUTE_UNKNOWN) {
        Py_buffer view;
        if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) goto error;
        route = frame_route((unsigned)PyLong_AsUnsignedLong(args[0]), view.buf, view.len);
        PyBuffer_Release(&view);
    }
    if (route != PyLong_AsLong(PyTuple_GET_ITEM(state, 0))) return found;
    double ts = PyFloat_AsDouble(args[2]);
    if (ts == -1.0 && PyErr_Occurred()) goto error;
    if (found == Py_None) { /* shared from inside a mirror tunnel: what feed_shared's side decoder learns of it */
        PyObject *datagram = mirrored_shared(state, cache, ts, args);
        if (datagram == Py_None) {
            Py_DECREF(datagram);
            return found;
        }
        Py_DECREF(found);
        return datagram;
    }
    PyObject *message = PyTuple_GET_ITEM(found, 4);
    int learned = learn_shared(state, cache, ts, message, NULL, 0);
    if (learned <= 0) {
        if (learned < 0) goto error;
        return found;
    }
    /* `found` is new here (decode_packet's): its message becomes None, the sign of another
     * worker's answer learned */
    PyTuple_SET_ITEM(found, 4, Py_NewRef(Py_None));
    Py_DECREF(message);
    return found;
error:
    Py_DECREF(found);
    return NULL;
}

/* The decode of a replay worker handed the other worker's DNS answers too (see share_decoder). Its
 * `state`: (shared route, DnsCache or None, min_ttl, max_ttl, the cache's _entries and
 * _move_to_end). Another worker's answer in a plain datagram is walked from the wire into the
 * cache (dns_learn_wire), its route found first; the rest, and what the walk declines, is
 * decode_packet's. */
static PyObject *shared_decode(PyObject *state, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(linktype, frame, ts)");
        return NULL;
    }
    PyObject *cache = PyTuple_GET_ITEM(state, 1);
    if (cache == Py_None) return decode_packet(NULL, args, 2);
    if (!dns_bound()) return NULL; /* decode_packet's error */
    unsigned long linktype = PyLong_AsUnsignedLong(args[0]);
    Py_buffer view;
    if ((linktype == (unsigned long)-1 && PyErr_Occurred()) || PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *f = view.buf;
    Datagram d;
    if (!locate_datagram((unsigned)linktype, f, view.len, &d)) {
        PyBuffer_Release(&view);
        return shared_found(state, args, decode_frame(NULL, args, 2), ROUTE_UNKNOWN);
    }
    const uint8_t *wire = f + d.message;
    Py_ssize_t size = d.end - d.message;
    int route = ROUTE_UNKNOWN;
    if (size >= 12 && (wire[2] & 0x80) && get16(wire + 6)) { /* a response with answers */
        route = frame_route((unsigned)linktype, f, view.len);
        if (route == PyLong_AsLong(PyTuple_GET_ITEM(state, 0))) {
            double ts = PyFloat_AsDouble(args[2]);
            int learned = ts == -1.0 && PyErr_Occurred() ? -1 : learn_shared(state, cache, ts, NULL, wire, size);
            if (learned != 0) {
                PyObject *result = learned < 0 ? NULL
                                               : tuple_steal(5, (PyObject *[]){address_text(f + d.src, d.alen),
                                                                               PyLong_FromUnsignedLong(d.sport),
                                                                               address_text(f + d.src + d.alen, d.alen),
                                                                               PyLong_FromUnsignedLong(d.dport),
                                                                               Py_NewRef(Py_None)});
                PyBuffer_Release(&view);
                return result;
            }
        }
    }
    PyBuffer_Release(&view);
    return shared_found(state, args, decode_packet(NULL, args, 2), route);
}

static PyMethodDef shared_decode_def = {
    "decode", (PyCFunction)(void (*)(void))shared_decode, METH_FASTCALL,
    "decode(linktype, frame, ts) -> decode_packet's answer; for another worker's DNS answer it learned from, "
    "that 5-tuple with None for the message"};

/* share_decoder(shared_route, cache, min_ttl, max_ttl) -> decode(linktype, frame, ts): decode_packet's
 * answer, except that a DNS datagram whose message a cache learns from and whose route (select_route)
 * is `shared_route` (another replay worker's answer), also one inside a mirror tunnel (VXLAN,
 * ERSPAN: decode_mirrored's), is stored in `cache` (a DnsCache, or None for never) as
 * DnsCache.learn(ts, message, counted=False) stores it, where the compiled dns_learn_wire or
 * dns_learn takes it and no sweep is due: then its 5-tuple (the tunnelled datagram's) comes with None for the message.
 * sensor.decode.dispatch.shared_decode_py is the reference. */
PyObject *share_decoder(PyObject *module, PyObject *args) {
    int route;
    PyObject *cache;
    double min_ttl, max_ttl;
    if (!PyArg_ParseTuple(args, "iOdd", &route, &cache, &min_ttl, &max_ttl)) return NULL;
    PyObject *entries = Py_None, *move = Py_None, *state; /* set once, in DnsCache.__init__ */
    if (cache != Py_None &&
        ((entries = PyObject_GetAttrString(cache, "_entries")) == NULL ||
         (move = PyObject_GetAttrString(cache, "_move_to_end")) == NULL)) {
        Py_XDECREF(entries);
        return NULL;
    }
    state = Py_BuildValue(cache != Py_None ? "(iOddNN)" : "(iOddOO)", route, cache, min_ttl, max_ttl, entries, move);
    if (state == NULL) return NULL;
    PyObject *decode = PyCFunction_New(&shared_decode_def, state);
    Py_DECREF(state);
    return decode;
}
