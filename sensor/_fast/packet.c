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
        if (tunnel_port(get16(f + pos)) || tunnel_port(get16(f + pos + 2))) return NULL; /* a tunnel: Python */
        start = pos + 8;
    } else {
        return NULL;
    }
    sport = get16(f + pos);
    dport = get16(f + pos + 2);
    return tuple_steal(8, (PyObject *[]){PyLong_FromUnsignedLong(proto), bytes_at(f + src, alen),
                                         bytes_at(f + src + alen, alen), PyLong_FromUnsignedLong(sport),
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

/* The text of a 4- or 16-byte address, as socket.inet_ntop gives it. */
PyObject *address_text(const uint8_t *address, Py_ssize_t alen) {
    char text[INET6_ADDRSTRLEN];
    return ascii_str(text, address_chars(address, alen == 4 ? 4 : 16, text));
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
    if ((sport != 53 && dport != 53) || tunnel_port(sport) || tunnel_port(dport)) goto none;
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
