#include "fast.h"

/* ---------------------------------------------------------------------------------------------
 * L2-L4: sensor.decode.packet.PacketDecoder.decode, for unfragmented IPv4 and IPv6 without
 * extension headers carrying TCP or UDP behind Ethernet (with VLAN tags), raw IP, loopback or
 * Linux cooked headers. Anything else (fragments, tunnels, PPPoE, MPLS, other link types, malformed
 * headers) returns None: the Python decoder (the reference) takes it.
 */




uint8_t tunnel_port_bits[65536 / 8]; /* see fast.h; set through set_tunnel_ports */
static unsigned mirror_ports[MAX_MIRROR_PORTS], mirror_kinds[MAX_MIRROR_PORTS], mirror_count;

unsigned tunnel_kind(unsigned port) {
    for (unsigned i = 0; i < mirror_count; i++)
        if (mirror_ports[i] == port) return mirror_kinds[i];
    return TUNNEL_OTHER;
}

/* set_tunnel_ports(ports, vxlan_ports, geneve_ports): every tunnel port, then those of each mirror kind */
PyObject *set_tunnel_ports(PyObject *module, PyObject *args) {
    PyObject *lists[3];
    if (!PyArg_ParseTuple(args, "OOO", &lists[0], &lists[1], &lists[2])) return NULL;
    uint8_t bits[sizeof tunnel_port_bits] = {0};
    unsigned ports[MAX_MIRROR_PORTS], kinds[MAX_MIRROR_PORTS], count = 0;
    for (int which = 0; which < 3; which++) {
        PyObject *seq = PySequence_Fast(lists[which], "set_tunnel_ports: sequences of port numbers");
        if (seq == NULL) return NULL;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            unsigned long port = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
            if (port > 65535 || (which && count == MAX_MIRROR_PORTS)) {
                Py_DECREF(seq);
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "ports are 0 to 65535, at most 64 mirror ports");
                return NULL;
            }
            if (which == 0) {
                bits[port >> 3] |= (uint8_t)(1u << (port & 7));
            } else {
                ports[count] = (unsigned)port;
                kinds[count++] = which == 1 ? TUNNEL_VXLAN : TUNNEL_GENEVE;
            }
        }
        Py_DECREF(seq);
    }
    memcpy(tunnel_port_bits, bits, sizeof bits);
    memcpy(mirror_ports, ports, sizeof ports);
    memcpy(mirror_kinds, kinds, sizeof kinds);
    mirror_count = count;
    Py_RETURN_NONE;
}

/* The bytes object of an address, from a small direct-mapped table of the last ones seen: the hosts
 * of a capture recur, and one object per address makes the flow tables' key tuples hash (a bytes
 * object keeps its hash) and compare (by identity first) cheaply; a new reference, or NULL. */
#define ADDRESS_SLOTS 4096
static PyObject *address_slots[ADDRESS_SLOTS];

static PyObject *address_bytes(const uint8_t *p, Py_ssize_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    PyObject **slot = &address_slots[(h ^ (h >> 16)) & (ADDRESS_SLOTS - 1)], *known = *slot;
    if (known != NULL && PyBytes_GET_SIZE(known) == n && memcmp(PyBytes_AS_STRING(known), p, (size_t)n) == 0)
        return Py_NewRef(known);
    PyObject *made = bytes_at(p, n);
    if (made != NULL) Py_XSETREF(*slot, Py_NewRef(made));
    return made;
}

static PyObject *transport(unsigned proto, const uint8_t *f, Py_ssize_t src, Py_ssize_t alen, Py_ssize_t pos,
                           Py_ssize_t end) {
    unsigned sport, dport, flags = 0;
    uint32_t seq = 0;
    Py_ssize_t start;
    if (proto == TCP) {
        if (end - pos < 20) return NULL;
        Py_ssize_t doff = (f[pos + 12] >> 4) << 2;
        if (doff < 20) return NULL;
        flags = f[pos + 13];
        seq = get32(f + pos + 4);
        start = pos + doff < end ? pos + doff : end;
    } else if (proto == UDP) {
        if (end - pos < 8) return NULL;
        Py_ssize_t ulen = get16(f + pos + 4);
        if (8 <= ulen && ulen < end - pos) end = pos + ulen; /* trailing link-layer padding */
        if (tunnel_datagram(get16(f + pos), get16(f + pos + 2))) return NULL; /* a tunnel: Python */
        start = pos + 8;
    } else {
        return NULL;
    }
    sport = get16(f + pos);
    dport = get16(f + pos + 2);
    return tuple_steal(8, (PyObject *[]){PyLong_FromUnsignedLong(proto), address_bytes(f + src, alen),
                                         address_bytes(f + src + alen, alen), PyLong_FromUnsignedLong(sport),
                                         PyLong_FromUnsignedLong(dport), PyLong_FromUnsignedLong(flags),
                                         PyLong_FromUnsignedLong(seq), bytes_at(f + start, end - start)});
}

/* The PacketDecoder.decode tuple of the IP packet at `off` in f[:n], or NULL (no exception set)
 * where the Python decoder must decide (fragments, extension headers, tunnels, malformed). */
static PyObject *decode_ip(const uint8_t *f, Py_ssize_t n, Py_ssize_t off) {
    if (off < 0 || n < off + 20) return NULL;
    if (f[off] >> 4 == 4) {
        Py_ssize_t ihl = (f[off] & 0x0F) << 2, total = get16(f + off + 2);
        if (ihl < 20 || total < ihl || (get16(f + off + 6) & 0x3FFF)) return NULL; /* bad, or a fragment */
        Py_ssize_t end = off + total < n ? off + total : n;
        return transport(f[off + 9], f, off + 12, 4, off + ihl, end);
    }
    if (f[off] >> 4 == 6) {
        if (n < off + 40) return NULL;
        Py_ssize_t plen = get16(f + off + 4), end = off + 40 + plen;
        if (end > n || plen == 0) end = n;
        return transport(f[off + 6], f, off + 8, 16, off + 40, end); /* extension headers: None */
    }
    return NULL;
}

/* The (linktype, frame) arguments every frame decoder here takes: 0 with `view` held (release it),
 * or -1 with an exception set. */
static int frame_args(PyObject *const *args, Py_ssize_t nargs, const char *usage, unsigned *linktype, Py_buffer *view) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    unsigned long value = PyLong_AsUnsignedLong(args[0]);
    if (value == (unsigned long)-1 && PyErr_Occurred()) return -1;
    *linktype = (unsigned)value;
    return PyObject_GetBuffer(args[1], view, PyBUF_SIMPLE);
}

/* decode_frame(linktype, frame) -> (transport, src, dst, sport, dport, tcp flags, tcp seq, payload) or None */
PyObject *decode_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    unsigned linktype;
    Py_buffer view;
    if (frame_args(args, nargs, "decode_frame(linktype, frame)", &linktype, &view) < 0) return NULL;
    const uint8_t *f = view.buf;
    PyObject *result = decode_ip(f, view.len, network_offset(linktype, f, view.len));
    PyBuffer_Release(&view);
    if (result == NULL && !PyErr_Occurred()) result = Py_NewRef(Py_None);
    return result;
}

/* Tags walked over in the outer and inner Ethernet headers together; more: the Python decoder
 * (which caps the headers it walks) decides. */
#define MIRROR_MAX_TAGS 4

/* The VLAN id of the last tag network_offset walked over to `ip_off` in an Ethernet frame, or None. */
static PyObject *last_vlan(unsigned linktype, const uint8_t *f, Py_ssize_t ip_off) {
    if (linktype != 1 || ip_off <= 14) return Py_NewRef(Py_None);
    return PyLong_FromUnsignedLong(get16(f + ip_off - 4) & 0x0FFF);
}

/* decode_mirrored(linktype, frame) -> (decoded, tunnel, outer src, outer dst, tunnel id, outer VLAN,
 * inner VLAN, erspan) or None. The packet inside one mirror tunnel, as PacketDecoder.decode_py
 * finds it and what it records of the tunnel: VXLAN (on a port set as VXLAN, the I flag set) or
 * GRE version 0 carrying ERSPAN type I or II (`erspan`: the type II header was walked over), over
 * unfragmented IPv4 or IPv6 without extension headers, around an Ethernet frame decode_frame
 * takes. Anything else returns None: the Python decoder decides. */
PyObject *decode_mirrored(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    unsigned linktype;
    Py_buffer view;
    if (frame_args(args, nargs, "decode_mirrored(linktype, frame)", &linktype, &view) < 0) return NULL;
    const uint8_t *f = view.buf;
    Py_ssize_t n = view.len, off = network_offset(linktype, f, n), pos, end, alen, inner, key_at = -1;
    const char *name;
    unsigned proto;
    int erspan = 0;
    long ident = -1;
    PyObject *result = NULL, *decoded;
    if (off < 0 || n < off + 20) goto python;
    if (f[off] >> 4 == 4) {
        Py_ssize_t ihl = (f[off] & 0x0F) << 2, total = get16(f + off + 2);
        if (ihl < 20 || total < ihl || (get16(f + off + 6) & 0x3FFF)) goto python;
        end = off + total < n ? off + total : n;
        proto = f[off + 9];
        pos = off + ihl;
        alen = 4;
    } else if (f[off] >> 4 == 6) {
        if (n < off + 40) goto python;
        Py_ssize_t plen = get16(f + off + 4);
        end = off + 40 + plen;
        if (end > n || plen == 0) end = n;
        proto = f[off + 6];
        pos = off + 40;
        alen = 16;
    } else {
        goto python;
    }
    Py_ssize_t src = off + (alen == 4 ? 12 : 8);
    if (proto == UDP) {
        if (end - pos < 8) goto python;
        Py_ssize_t ulen = get16(f + pos + 4);
        if (8 <= ulen && ulen < end - pos) end = pos + ulen;
        unsigned sport = get16(f + pos), dport = get16(f + pos + 2);
        if (!tunnel_datagram(sport, dport)) goto python;
        /* the decoder names the tunnel by the destination port first */
        unsigned kind = tunnel_port(dport) ? tunnel_kind(dport) : tunnel_port(sport) ? tunnel_kind(sport) : TUNNEL_OTHER;
        Py_ssize_t at = pos + 8;
        if (kind != TUNNEL_VXLAN || end - at < 8 || !(f[at] & 0x08)) goto python;
        name = "vxlan";
        ident = (long)((get32(f + at + 4)) >> 8);
        inner = at + 8;
    } else if (proto == 47) {
        if (end - pos < 4) goto python;
        unsigned flags = f[pos];
        if ((flags & 0x40) || (f[pos + 1] & 0x07) || get16(f + pos + 2) != 0x88BE) goto python;
        if (flags & 0x20) key_at = pos + ((flags & 0x80) ? 8 : 4);
        inner = pos + 4 + 4 * (!!(flags & 0x80) + !!(flags & 0x20) + !!(flags & 0x10));
        erspan = !!(flags & 0x10); /* a sequence number: an ERSPAN II header follows; without one, type I */
        if (erspan) inner += 8;
        name = "gre";
        if (key_at >= 0 && key_at + 4 <= end) ident = (long)get32(f + key_at);
    } else {
        goto python;
    }
    if (inner >= end) goto python;
    Py_ssize_t inner_off = network_offset(1, f + inner, end - inner);
    if (inner_off < 0 || (off - 14) / 4 * (linktype == 1) + (inner_off - 14) / 4 > MIRROR_MAX_TAGS) goto python;
    decoded = decode_ip(f + inner, end - inner, inner_off);
    if (decoded == NULL) goto done;
    result = tuple_steal(8, (PyObject *[]){decoded, PyUnicode_FromString(name), bytes_at(f + src, alen),
                                           bytes_at(f + src + alen, alen),
                                           ident >= 0 ? PyLong_FromLong(ident) : Py_NewRef(Py_None),
                                           last_vlan(linktype, f, off), last_vlan(1, f + inner, inner_off),
                                           PyBool_FromLong(erspan)});
    goto done;
python:
    result = NULL;
done:
    PyBuffer_Release(&view);
    if (result == NULL && !PyErr_Occurred()) result = Py_NewRef(Py_None);
    return result;
}

/* The text of a 4- or 16-byte address, as socket.inet_ntop gives it: from a direct-mapped table of
 * the last ones made, as address_bytes (one str per recent address, its hash kept for the tables
 * keyed by it). */
static struct {
    uint8_t address[16], alen;
    PyObject *text;
} text_slots[ADDRESS_SLOTS];

PyObject *address_text(const uint8_t *address, Py_ssize_t alen) {
    alen = alen == 4 ? 4 : 16;
    uint32_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < alen; i++) h = (h ^ address[i]) * 16777619u;
    h = (h ^ (h >> 16)) & (ADDRESS_SLOTS - 1);
    PyObject *known = text_slots[h].text;
    if (known != NULL && text_slots[h].alen == alen && memcmp(text_slots[h].address, address, (size_t)alen) == 0)
        return Py_NewRef(known);
    char text[INET6_ADDRSTRLEN];
    PyObject *made = ascii_str(text, address_chars(address, alen, text));
    if (made != NULL) {
        memcpy(text_slots[h].address, address, (size_t)alen);
        text_slots[h].alen = (uint8_t)alen;
        Py_XSETREF(text_slots[h].text, Py_NewRef(made));
    }
    return made;
}

/* dns_datagram(linktype, frame) -> (src, sport, dst, dport, DnsMessage) or None: a DNS datagram (UDP,
 * either port 53) that decode_frame takes, its addresses as text and its message as parse_dns
 * reads it, in one call; None for every other frame, and where decode_frame or parse_dns declines. */
PyObject *dns_datagram(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (!dns_bound()) return NULL;
    unsigned linktype;
    Py_buffer view;
    if (frame_args(args, nargs, "dns_datagram(linktype, frame)", &linktype, &view) < 0) return NULL;
    const uint8_t *f = view.buf;
    Py_ssize_t n = view.len, off = network_offset(linktype, f, n), src, alen, pos, end;
    PyObject *result = NULL, *message;
    if (off < 0 || n < off + 20) goto none;
    if (f[off] >> 4 == 4) {
        Py_ssize_t ihl = (f[off] & 0x0F) << 2, total = get16(f + off + 2);
        if (ihl < 20 || total < ihl || (get16(f + off + 6) & 0x3FFF) || f[off + 9] != UDP) goto none;
        end = off + total < n ? off + total : n;
        src = off + 12;
        alen = 4;
        pos = off + ihl;
    } else if (f[off] >> 4 == 6) {
        if (n < off + 40 || f[off + 6] != UDP) goto none;
        Py_ssize_t plen = get16(f + off + 4);
        end = off + 40 + plen;
        if (end > n || plen == 0) end = n;
        src = off + 8;
        alen = 16;
        pos = off + 40;
    } else {
        goto none;
    }
    if (end - pos < 8) goto none;
    Py_ssize_t ulen = get16(f + pos + 4);
    if (8 <= ulen && ulen < end - pos) end = pos + ulen; /* trailing link-layer padding */
    unsigned sport = get16(f + pos), dport = get16(f + pos + 2);
    if ((sport != 53 && dport != 53) || tunnel_datagram(sport, dport)) goto none;
    message = dns_message_of(f + pos + 8, end - pos - 8);
    if (message == NULL) goto done; /* an error, or the Python parser decides */
    result = tuple_steal(5, (PyObject *[]){address_text(f + src, alen), PyLong_FromUnsignedLong(sport),
                                           address_text(f + src + alen, alen), PyLong_FromUnsignedLong(dport), message});
    goto done;
none:
    result = NULL;
done:
    PyBuffer_Release(&view);
    if (result == NULL && !PyErr_Occurred()) result = Py_NewRef(Py_None);
    return result;
}

/* decode_packet(linktype, frame) -> dns_datagram's 5-tuple for a DNS datagram it takes, else
 * decode_frame's 8-tuple, else None: the two in one call, for the decoder's every frame. */
PyObject *decode_packet(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *dns = dns_datagram(module, args, nargs);
    if (dns != Py_None) return dns; /* the datagram, or an error */
    Py_DECREF(dns);
    return decode_frame(module, args, nargs);
}

/* ---------------------------------------------------------------------------------------------
 * mirrored_found(packets, counts, texts, fallback, max_flows, max_texts, linktype, frame, ts): the
 * decode TrafficDecoder.declined_found gives (its reference) for a packet of a mirror tunnel that
 * decode_mirrored takes, in one call: the tunnel counted into `counts` and the flow remembered in
 * packets.tunnels as PacketDecoder.decode_declined and _remember do, an address's text cached in
 * `texts` (sensor.decode.packet.ADDRESS_TEXTS) as addr_text caches it; a DNS datagram whose message
 * parse_dns reads comes as decode_packet gives it (addresses as text, its message). Where the
 * tunnel table's sweep is due, a new flow's tunnel is not yet known (packets._last_tunnel,
 * packets._tunnel_values), a table is at its bound, or decode_mirrored declines: fallback(linktype,
 * frame, ts) answers, nothing changed before.
 */
static PyObject *s_tunnels, *s_next_sweep, *s_period, *s_last_tunnel, *s_tunnel_values, *s_move_to_end;

static int mirror_names(void) {
    if (s_tunnels != NULL) return 0;
    s_tunnels = PyUnicode_InternFromString("tunnels");
    s_next_sweep = PyUnicode_InternFromString("_next_sweep");
    s_period = PyUnicode_InternFromString("_period");
    s_last_tunnel = PyUnicode_InternFromString("_last_tunnel");
    s_tunnel_values = PyUnicode_InternFromString("_tunnel_values");
    s_move_to_end = PyUnicode_InternFromString("move_to_end");
    return s_tunnels && s_next_sweep && s_period && s_last_tunnel && s_tunnel_values && s_move_to_end ? 0 : -1;
}

static double float_attr(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1.0;
    double result = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return result;
}

/* texts[address] or its text, made and cached (a new reference); NULL with *full set where the
 * cache is over `max_texts` (addr_text would clear it: the fallback does that) */
PyObject *cached_text(PyObject *texts, PyObject *address, Py_ssize_t max_texts, int *full) {
    PyObject *text = PyDict_GetItemWithError(texts, address);
    if (text != NULL) return Py_NewRef(text);
    if (PyErr_Occurred()) return NULL;
    if (PyDict_GET_SIZE(texts) > max_texts) {
        *full = 1;
        return NULL;
    }
    text = address_text((const uint8_t *)PyBytes_AS_STRING(address), PyBytes_GET_SIZE(address));
    if (text != NULL && PyDict_SetItem(texts, address, text) < 0) Py_CLEAR(text);
    return text;
}

/* does packets._last_tunnel hold this tunnel: ([(name, src, dst, ident)], outer VLAN, inner VLAN, value)? */
static int same_tunnel(PyObject *last, PyObject *found) {
    if (!PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 4) return 0;
    PyObject *layers = PyTuple_GET_ITEM(last, 0);
    if (!PyList_Check(layers) || PyList_GET_SIZE(layers) != 1) return 0;
    PyObject *layer = PyList_GET_ITEM(layers, 0);
    if (!PyTuple_Check(layer) || PyTuple_GET_SIZE(layer) != 4) return 0;
    for (Py_ssize_t i = 0; i < 4; i++) { /* name, src, dst, ident: found[1:5] */
        int equal = PyObject_RichCompareBool(PyTuple_GET_ITEM(layer, i), PyTuple_GET_ITEM(found, 1 + i), Py_EQ);
        if (equal <= 0) return equal;
    }
    for (Py_ssize_t i = 1; i < 3; i++) { /* the VLANs: found[5:7] */
        int equal = PyObject_RichCompareBool(PyTuple_GET_ITEM(last, i), PyTuple_GET_ITEM(found, 4 + i), Py_EQ);
        if (equal <= 0) return equal;
    }
    return 1;
}

static int count_up(PyObject *counts, PyObject *name) {
    PyObject *now = PyDict_GetItemWithError(counts, name);
    if (now == NULL && PyErr_Occurred()) return -1;
    PyObject *one = PyLong_FromLong(1);
    if (one == NULL) return -1;
    PyObject *next = now != NULL ? PyNumber_Add(now, one) : Py_NewRef(one);
    Py_DECREF(one);
    if (next == NULL) return -1;
    int status = PyDict_SetItem(counts, name, next);
    Py_DECREF(next);
    return status;
}

PyObject *mirrored_found(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "mirrored_found(packets, counts, texts, fallback, max_flows, max_texts, linktype, frame, ts)");
        return NULL;
    }
    PyObject *packets = args[0], *counts = args[1], *texts = args[2], *fallback = args[3];
    if (!PyDict_CheckExact(counts) || !PyDict_CheckExact(texts) || mirror_names() < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "mirrored_found: counts and texts are dicts");
        return NULL;
    }
    Py_ssize_t max_flows = PyLong_AsSsize_t(args[4]), max_texts = PyLong_AsSsize_t(args[5]);
    double ts = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred()) return NULL;
    PyObject *found = decode_mirrored(module, args + 6, 2);
    if (found == NULL) return NULL;
    PyObject *tunnels = NULL, *key = NULL, *src = NULL, *dst = NULL, *last = NULL, *result = NULL, *name = NULL;
    PyObject *known = NULL;
    if (found == Py_None) goto python;
    double next_sweep = float_attr(packets, s_next_sweep), period = float_attr(packets, s_period);
    if (PyErr_Occurred()) goto error;
    if (ts >= next_sweep) goto python; /* the table's sweep: _remember does it */
    PyObject *decoded = PyTuple_GET_ITEM(found, 0);
    int full = 0;
    src = cached_text(texts, PyTuple_GET_ITEM(decoded, 1), max_texts, &full);
    if (src == NULL) goto maybe_python;
    dst = cached_text(texts, PyTuple_GET_ITEM(decoded, 2), max_texts, &full);
    if (dst == NULL) goto maybe_python;
    tunnels = PyObject_GetAttr(packets, s_tunnels);
    if (tunnels == NULL) goto error;
    if (!PyDict_Check(tunnels)) goto python;
    key = PyTuple_Pack(4, src, PyTuple_GET_ITEM(decoded, 3), dst, PyTuple_GET_ITEM(decoded, 4));
    if (key == NULL) goto error;
    PyObject *seen = PyDict_GetItemWithError(tunnels, key); /* a lookup: the OrderedDict's own dict */
    PyObject *value = NULL;
    if (seen == NULL) {
        if (PyErr_Occurred()) goto error;
        if (PyDict_GET_SIZE(tunnels) >= max_flows) goto python;
        last = PyObject_GetAttr(packets, s_last_tunnel);
        if (last == NULL) goto error;
        int same = same_tunnel(last, found);
        if (same < 0) goto error;
        if (same) {
            value = PyTuple_GET_ITEM(last, 3);
        } else { /* packets._tunnel_values[(layers, outer VLAN, inner VLAN)], as _tunnel_value finds it */
            PyObject *layer = PyTuple_GetSlice(found, 1, 5), *layers = NULL, *shared = NULL, *values = NULL;
            if (layer != NULL) layers = PyTuple_Pack(1, layer);
            if (layers != NULL) shared = PyTuple_Pack(3, layers, PyTuple_GET_ITEM(found, 5), PyTuple_GET_ITEM(found, 6));
            if (shared != NULL) values = PyObject_GetAttr(packets, s_tunnel_values);
            if (values != NULL && PyDict_Check(values)) value = PyDict_GetItemWithError(values, shared);
            Py_XINCREF(value);
            known = value; /* the reference held till the end */
            Py_XDECREF(layer);
            Py_XDECREF(layers);
            Py_XDECREF(shared);
            Py_XDECREF(values);
            if (PyErr_Occurred()) goto error;
            if (value == NULL) goto python;
        }
    } else if (!PyTuple_Check(seen) || PyTuple_GET_SIZE(seen) != 2 || !PyFloat_Check(PyTuple_GET_ITEM(seen, 1))) {
        goto python;
    }
    /* taken: what decode_declined counts, then what _remember keeps */
    name = PyUnicode_FromFormat("decap.%U", PyTuple_GET_ITEM(found, 1));
    if (name == NULL || count_up(counts, name) < 0) goto error;
    if (PyObject_IsTrue(PyTuple_GET_ITEM(found, 7))) {
        Py_SETREF(name, PyUnicode_FromString("decap.erspan"));
        if (name == NULL || count_up(counts, name) < 0) goto error;
    }
    if (seen != NULL) {
        if (PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(seen, 1)) < ts - period) { /* refreshed at most once a period */
            PyObject *entry = PyTuple_Pack(2, PyTuple_GET_ITEM(seen, 0), args[8]);
            int status = entry == NULL ? -1 : PyObject_SetItem(tunnels, key, entry);
            Py_XDECREF(entry);
            if (status < 0) goto error;
            PyObject *moved = PyObject_CallMethodOneArg(tunnels, s_move_to_end, key);
            if (moved == NULL) goto error;
            Py_DECREF(moved);
        }
    } else {
        PyObject *entry = PyTuple_Pack(2, value, args[8]);
        int status = entry == NULL ? -1 : PyObject_SetItem(tunnels, key, entry); /* through the OrderedDict */
        Py_XDECREF(entry);
        if (status < 0) goto error;
    }
    PyObject *payload = PyTuple_GET_ITEM(decoded, 7);
    long sport = PyLong_AsLong(PyTuple_GET_ITEM(decoded, 3)), dport = PyLong_AsLong(PyTuple_GET_ITEM(decoded, 4));
    if (PyLong_AsLong(PyTuple_GET_ITEM(decoded, 0)) == UDP && (sport == 53 || dport == 53)) {
        PyObject *message = parse_dns(module, payload);
        if (message == NULL) goto error;
        if (message != Py_None) {
            result = PyTuple_Pack(5, src, PyTuple_GET_ITEM(decoded, 3), dst, PyTuple_GET_ITEM(decoded, 4), message);
            Py_DECREF(message);
            goto done;
        }
        Py_DECREF(message); /* the Python parser decides: as the packet came */
    }
    result = Py_NewRef(decoded);
    goto done;
maybe_python:
    if (!full) goto error;
python:
    Py_CLEAR(result);
    result = PyObject_Vectorcall(fallback, args + 6, 3, NULL);
    goto done;
error:
    Py_CLEAR(result);
done:
    Py_XDECREF(known);
    Py_XDECREF(name);
    Py_XDECREF(last);
    Py_XDECREF(key);
    Py_XDECREF(tunnels);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_DECREF(found);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * A frame the compiled decode declined (a tunnelled packet, mostly), handed to the decode of
 * declined frames (the compiled steps around mirrored_found) in the same call, rather than after
 * a return to TrafficDecoder.feed_found: (decode, declined, route_of, shared_route) in the state. */
static PyObject *declined_decode(PyObject *state, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(linktype, frame, ts)");
        return NULL;
    }
    PyObject *found = PyObject_Vectorcall(PyTuple_GET_ITEM(state, 0), args, 3, NULL);
    if (found != Py_None) return found;
    PyObject *route_of = PyTuple_GET_ITEM(state, 2);
    if (route_of != Py_None) { /* another replay worker's frame: feed_found hands it to feed_shared */
        PyObject *route = PyObject_Vectorcall(route_of, args, 2, NULL);
        if (route == NULL) {
            Py_DECREF(found);
            return NULL;
        }
        int shared = PyObject_RichCompareBool(route, PyTuple_GET_ITEM(state, 3), Py_EQ);
        Py_DECREF(route);
        if (shared != 0) {
            if (shared < 0) Py_CLEAR(found);
            return found;
        }
    }
    Py_DECREF(found);
    found = PyObject_Vectorcall(PyTuple_GET_ITEM(state, 1), args, 3, NULL);
    if (found == Py_None) { /* nothing decoded: nothing for feed_found to do */
        Py_DECREF(found);
        return PyTuple_New(0);
    }
    return found;
}

static PyMethodDef declined_decode_def = {
    "decode", (PyCFunction)(void (*)(void))declined_decode, METH_FASTCALL,
    "decode(linktype, frame, ts) -> decode's answer; for a frame it declined, declined's (() for None), or None "
    "where route_of gives shared_route"};

/* declined_decoder(decode, declined, route_of, shared_route) -> decode(linktype, frame, ts): decode's
 * answer where not None; else None where route_of (or None for never) gives the frame `shared_route`
 * (another replay worker's), else declined(linktype, frame, ts)'s answer, () for its None.
 * sensor.decode.dispatch.TrafficDecoder.declined_step_py is the reference. */
PyObject *declined_decoder(PyObject *module, PyObject *args) {
    PyObject *decode, *declined, *route_of, *shared_route;
    if (!PyArg_ParseTuple(args, "OOOO", &decode, &declined, &route_of, &shared_route)) return NULL;
    if (!PyCallable_Check(decode) || !PyCallable_Check(declined) || (route_of != Py_None && !PyCallable_Check(route_of))) {
        PyErr_SetString(PyExc_TypeError, "declined_decoder: decode, declined and route_of are callables");
        return NULL;
    }
    PyObject *state = PyTuple_Pack(4, decode, declined, route_of, shared_route);
    if (state == NULL) return NULL;
    PyObject *result = PyCFunction_New(&declined_decode_def, state);
    Py_DECREF(state);
    return result;
}

/* replay_alerts(batch, decode, feed_found, decoder, on_record, ship): an alerts replay's loop over one
 * batch of (ts, linktype, frame), files.alerts_batch_py: each frame through the compiled decode, its
 * answer (but ()) to feed_found, and the records the decoder then holds, taken from it, to on_record,
 * whose alerts go to ship. The loop's own work per packet, without the interpreter's. */
PyObject *replay_alerts(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    static PyObject *records_name;
    if (nargs != 6 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "replay_alerts(batch, decode, feed_found, decoder, on_record, ship)");
        return NULL;
    }
    if (records_name == NULL && (records_name = PyUnicode_InternFromString("records")) == NULL) return NULL;
    PyObject *batch = args[0], *decode = args[1], *feed_found = args[2], *decoder = args[3];
    PyObject *on_record = args[4], *ship = args[5];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); i++) {
        PyObject *item = PyList_GET_ITEM(batch, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "replay_alerts: a batch holds (ts, linktype, frame)");
            return NULL;
        }
        Py_INCREF(item); /* the batch is a caller's list: held while Python code runs */
        PyObject *ts = PyTuple_GET_ITEM(item, 0), *linktype = PyTuple_GET_ITEM(item, 1);
        PyObject *frame = PyTuple_GET_ITEM(item, 2);
        PyObject *call[4] = {linktype, frame, ts, NULL};
        PyObject *found = PyObject_Vectorcall(decode, call, 3, NULL);
        if (found == NULL) {
            Py_DECREF(item);
            return NULL;
        }
        if (found == Py_None || (PyTuple_Check(found) ? PyTuple_GET_SIZE(found) != 0 : PyObject_IsTrue(found))) {
            PyObject *whole[4] = {ts, linktype, frame, found};
            PyObject *done = PyObject_Vectorcall(feed_found, whole, 4, NULL);
            if (done == NULL) {
                Py_DECREF(found);
                Py_DECREF(item);
                return NULL;
            }
            Py_DECREF(done);
        }
        Py_DECREF(found);
        Py_DECREF(item);
        PyObject *records = PyObject_GetAttr(decoder, records_name);
        if (records == NULL) return NULL;
        int any = PyList_Check(records) ? PyList_GET_SIZE(records) != 0 : PyObject_IsTrue(records);
        if (any <= 0) {
            Py_DECREF(records);
            if (any < 0) return NULL;
            continue;
        }
        PyObject *fresh = PyList_New(0);
        if (fresh == NULL || PyObject_SetAttr(decoder, records_name, fresh) < 0) {
            Py_XDECREF(fresh);
            Py_DECREF(records);
            return NULL;
        }
        Py_DECREF(fresh);
        PyObject *iter = PyObject_GetIter(records);
        Py_DECREF(records);
        if (iter == NULL) return NULL;
        PyObject *record;
        while ((record = PyIter_Next(iter)) != NULL) {
            PyObject *alerts = PyObject_Vectorcall(on_record, &record, 1, NULL);
            Py_DECREF(record);
            if (alerts == NULL) break;
            int truth = PyObject_IsTrue(alerts);
            if (truth > 0) {
                PyObject *shipped = PyObject_Vectorcall(ship, &alerts, 1, NULL);
                Py_XDECREF(shipped);
                if (shipped == NULL) truth = -1;
            }
            Py_DECREF(alerts);
            if (truth < 0) break;
        }
        Py_DECREF(iter);
        if (PyErr_Occurred()) return NULL;
    }
    Py_RETURN_NONE;
}
