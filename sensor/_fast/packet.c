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

/* decode_frame(linktype, frame) -> (transport, src, dst, sport, dport, tcp flags, tcp seq, payload) or None */
PyObject *decode_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode_frame(linktype, frame)");
        return NULL;
    }
    unsigned long linktype = PyLong_AsUnsignedLong(args[0]);
    if (linktype == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *f = view.buf;
    Py_ssize_t n = view.len, off = network_offset((unsigned)linktype, f, n);
    PyObject *result = NULL;
    if (off < 0 || n < off + 20) goto python;
    if (f[off] >> 4 == 4) {
        Py_ssize_t ihl = (f[off] & 0x0F) << 2, total = get16(f + off + 2);
        if (ihl < 20 || total < ihl || (get16(f + off + 6) & 0x3FFF)) goto python; /* bad, or a fragment */
        Py_ssize_t end = off + total < n ? off + total : n;
        result = transport(f[off + 9], f, off + 12, 4, off + ihl, end);
    } else if (f[off] >> 4 == 6) {
        if (n < off + 40) goto python;
        Py_ssize_t plen = get16(f + off + 4), end = off + 40 + plen;
        if (end > n || plen == 0) end = n;
        result = transport(f[off + 6], f, off + 8, 16, off + 40, end); /* extension headers: None */
    }
    if (result != NULL || PyErr_Occurred()) goto done;
python:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return result;
}

