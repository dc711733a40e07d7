#include "fast.h"

/* ---------------------------------------------------------------------------------------------
 * Replay selection: sensor.capture.bpf's filter, applied in-process to classic pcap records.
 * The same packets pass as through libpcap with that filter, except that a packet whose
 * headers are cut short by the snap length, which BPF drops, passes here (the decoder counts it).
 */

/* Bound from where Python defines them (bind_select, at the import of sensor.capture.prefilter):
 * sensor.capture.pcap.MAX_FRAME (a longer record is corruption), sensor.capture.bpf.BULK_SEGMENT
 * and HTTP_PORTS, sensor.decode.dns.LOCAL_NAME_PORTS (mDNS, LLMNR, NetBIOS name service),
 * sensor.capture.workers.SERVICE_PORTS (the server side of a packet, for route_of). */
static Py_ssize_t max_frame = -1; /* -1: not bound yet */
static Py_ssize_t bulk_segment;
static uint8_t http_port_bits[65536 / 8], local_name_port_bits[65536 / 8], service_port_bits[65536 / 8];

static inline int port_in(const uint8_t *bits, unsigned port) { return (bits[port >> 3] >> (port & 7)) & 1; }
static int http_port(unsigned port) { return port_in(http_port_bits, port); }
static int local_name_port(unsigned port) { return port_in(local_name_port_bits, port); }

/* The ports of an iterable of ints as bits; -1 with an exception set when one is not a port. */
static int port_bits(PyObject *ports, uint8_t bits[65536 / 8]) {
    PyObject *iterator = PyObject_GetIter(ports), *item;
    if (iterator == NULL) return -1;
    memset(bits, 0, 65536 / 8);
    while ((item = PyIter_Next(iterator)) != NULL) {
        long port = PyLong_AsLong(item);
        Py_DECREF(item);
        if (port < 0 || port > 65535) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a port is 0 to 65535");
            break;
        }
        bits[port >> 3] |= (uint8_t)(1 << (port & 7));
    }
    Py_DECREF(iterator);
    return PyErr_Occurred() ? -1 : 0;
}

/* bind_select(MAX_FRAME, BULK_SEGMENT, HTTP_PORTS, LOCAL_NAME_PORTS, SERVICE_PORTS); a failed bind
 * keeps the previous one. */
PyObject *bind_select(PyObject *module, PyObject *args) {
    Py_ssize_t frame, bulk;
    PyObject *http, *local, *service;
    uint8_t http_bits[65536 / 8], local_bits[65536 / 8], service_bits[65536 / 8];
    if (!PyArg_ParseTuple(args, "nnOOO", &frame, &bulk, &http, &local, &service)) return NULL;
    if (frame < 16 || frame > (1 << 30) || bulk < 0) {
        PyErr_SetString(PyExc_ValueError, "bind_select: MAX_FRAME or BULK_SEGMENT out of range");
        return NULL;
    }
    if (port_bits(http, http_bits) < 0 || port_bits(local, local_bits) < 0 || port_bits(service, service_bits) < 0)
        return NULL;
    memcpy(http_port_bits, http_bits, sizeof http_bits);
    memcpy(service_port_bits, service_bits, sizeof service_bits);
    memcpy(local_name_port_bits, local_bits, sizeof local_bits);
    max_frame = frame;
    bulk_segment = bulk;
    Py_RETURN_NONE;
}

static int select_bound(void) {
    if (max_frame > 0) return 1;
    PyErr_SetString(PyExc_RuntimeError, "the selector's constants are not bound (bind_select)");
    return 0;
}

static int quic_initial(const uint8_t *f, Py_ssize_t n, Py_ssize_t at) {
    if (at + 5 > n) return 0;
    uint32_t version = get32(f + at + 1);
    return ((f[at] & 0xF0) == 0xC0 && version == 1) || ((f[at] & 0xF0) == 0xD0 && version == 0x6B3343CF);
}

/* The TCP clause of the filter, for a segment at `l4` whose IP length fields leave `ip_payload`
 * bytes for TCP. Returns 1 to keep. A header cut short is kept; a payload too short to open a
 * request opens none. */
static int keep_tcp(const uint8_t *f, Py_ssize_t n, Py_ssize_t l4, Py_ssize_t ip_payload) {
    if (l4 + 14 > n) return 1;
    unsigned sport = get16(f + l4), dport = get16(f + l4 + 2), flags = f[l4 + 13];
    Py_ssize_t doff = (f[l4 + 12] >> 4) << 2, payload = ip_payload - doff, at = l4 + doff, have = n - at;
    if (sport == 53 || dport == 53 || (flags & 0x12) == 0x02) return 1;
    if (payload <= 0) return 0;
    const uint8_t *p = f + at;
    if (sport > dport) { /* the client side of almost every connection */
        if (have < 2) return 1;
        int other_record = (p[0] == 0x17 || p[0] == 0x14 || p[0] == 0x15) && p[1] == 0x03;
        if (!other_record && (payload < bulk_segment || http_port(dport))) return 1;
    }
    if (have >= 6 && p[0] == 0x16 && p[1] == 0x03 && p[5] == 1) return 1; /* opens a ClientHello */
    if (have < 4) return 0;
    uint32_t word = get32(p); /* opens an HTTP request */
    return word == 0x47455420 || word == 0x504F5354 || word == 0x50555420 || word == 0x48454144 ||
           word == 0x44454C45 || word == 0x4F505449 || word == 0x50415443 || word == 0x434F4E4E ||
           word == 0x54524143;
}


/* Tunnels nest at most this deep in the selector; deeper ones pass whole (the decoder caps them). */
#define KEEP_DEPTH 4

static int keep_frame_at(unsigned linktype, const uint8_t *f, Py_ssize_t n, int depth);
static int keep_ip(const uint8_t *f, Py_ssize_t n, Py_ssize_t off, int depth);

/* What a tunnel's inner header at `at` is (0x6558: an Ethernet frame, 0x0800/0x86DD: IP) decides. */
static int keep_inner(unsigned kind, const uint8_t *f, Py_ssize_t n, Py_ssize_t at, int depth) {
    if (depth >= KEEP_DEPTH || at >= n) return 1;
    if (kind == 0x6558) return keep_frame_at(1, f + at, n - at, depth + 1);
    if (kind == 0x0800 || kind == 0x86DD) return keep_ip(f, n, at, depth + 1);
    return 1; /* anything else passes whole */
}

/* The header a mirror tunnel's datagram (VXLAN, Geneve) at `l4` carries, as the decoder's steps
 * find it: its kind (0x6558: an Ethernet frame, or an EtherType) in *kind, its offset returned;
 * -1 for a datagram not walked into (GTP-U, Teredo, L2TP); NOT_MIRRORED for one on a VXLAN or
 * Geneve port without that header, which the decoder takes as plain UDP (a client's ephemeral port
 * may be 4789, 8472 or 6081). */
#define NOT_MIRRORED (-2)
static Py_ssize_t udp_tunnel_inner(const uint8_t *f, Py_ssize_t n, Py_ssize_t l4, unsigned *kind) {
    Py_ssize_t at = l4 + 8;
    unsigned tunnel = tunnel_kind(get16(f + l4 + 2));
    if (tunnel == TUNNEL_OTHER) tunnel = tunnel_kind(get16(f + l4));
    if (tunnel == TUNNEL_OTHER) return -1;
    if (at + 8 > n) return NOT_MIRRORED;
    if (tunnel == TUNNEL_VXLAN && (f[at] & 0x08)) {
        *kind = 0x6558;
        return at + 8;
    }
    if (tunnel == TUNNEL_GENEVE && !(f[at] >> 6)) {
        *kind = get16(f + at + 2);
        return at + 8 + (f[at] & 0x3F) * 4;
    }
    return NOT_MIRRORED;
}

/* GRE (sensor.decode.packet._gre): the header bridged Ethernet, ERSPAN or IP inside starts with,
 * as udp_tunnel_inner; -1 for PPTP, source-routed and cut-short headers. */
static Py_ssize_t gre_inner(const uint8_t *f, Py_ssize_t n, Py_ssize_t at, unsigned *kind) {
    if (at + 4 > n) return -1;
    unsigned flags = f[at], protocol = get16(f + at + 2);
    if ((flags & 0x40) || (f[at + 1] & 0x07)) return -1;
    Py_ssize_t pos = at + 4 + 4 * (!!(flags & 0x80) + !!(flags & 0x20) + !!(flags & 0x10));
    *kind = 0x6558;
    if (protocol == 0x88BE) return pos + ((flags & 0x10) ? 8 : 0); /* ERSPAN I/II */
    if (protocol == 0x22EB) { /* ERSPAN III: frame type 0 is Ethernet */
        if (pos + 12 > n || ((f[pos + 10] >> 2) & 0x1F)) return -1;
        return pos + ((f[pos + 11] & 1) ? 20 : 12);
    }
    *kind = protocol;
    return pos;
}

static int keep_udp(const uint8_t *f, Py_ssize_t n, Py_ssize_t l4, int depth) {
    if (l4 + 4 > n) return 1;
    unsigned sport = get16(f + l4), dport = get16(f + l4 + 2), kind;
    if (sport == 53 || dport == 53 || local_name_port(sport) || local_name_port(dport)) return 1;
    if (tunnel_datagram(sport, dport)) {
        Py_ssize_t at = udp_tunnel_inner(f, n, l4, &kind);
        return at < 0 ? 1 : keep_inner(kind, f, n, at, depth); /* else passes whole */
    }
    return quic_initial(f, n, l4 + 8);
}

/* GRE: bridged Ethernet, ERSPAN and IP inside are selected as bare frames; the rest passes whole. */
static int keep_gre(const uint8_t *f, Py_ssize_t n, Py_ssize_t at, int depth) {
    unsigned kind;
    Py_ssize_t inner = gre_inner(f, n, at, &kind);
    return inner < 0 ? 1 : keep_inner(kind, f, n, inner, depth);
}

/* IP-in-IP and IPv6-in-IP are selected as the inner packet, GRE by what it carries
 * (sensor.decode.packet.IP_TUNNELS); other protocols drop. */
static int keep_ip_payload(unsigned proto, const uint8_t *f, Py_ssize_t n, Py_ssize_t at, int depth) {
    if (proto == 4 || proto == 41) return depth >= KEEP_DEPTH ? 1 : keep_ip(f, n, at, depth + 1);
    if (proto == 47) return depth >= KEEP_DEPTH ? 1 : keep_gre(f, n, at, depth);
    return 0;
}

static int keep_ip(const uint8_t *f, Py_ssize_t n, Py_ssize_t off, int depth) {
    if (off + 1 > n) return 1;
    if (f[off] >> 4 == 4) {
        if (off + 20 > n) return 1;
        Py_ssize_t ihl = (f[off] & 0x0F) << 2;
        if (get16(f + off + 6) & 0x3FFF) return 1; /* a fragment: reassembly decides */
        if (f[off + 9] == UDP) return keep_udp(f, n, off + ihl, depth);
        if (f[off + 9] == TCP) return keep_tcp(f, n, off + ihl, (Py_ssize_t)get16(f + off + 2) - ihl);
        return keep_ip_payload(f[off + 9], f, n, off + ihl, depth);
    }
    if (f[off] >> 4 == 6) {
        if (off + 40 > n) return 1;
        unsigned next = f[off + 6];
        if (next == 0 || next == 43 || next == 44 || next == 60 || next == 51) return 1; /* extension headers */
        if (next == UDP) return keep_udp(f, n, off + 40, depth);
        if (next == TCP) return keep_tcp(f, n, off + 40, (Py_ssize_t)get16(f + off + 4));
        return keep_ip_payload(next, f, n, off + 40, depth);
    }
    return 0;
}

static int keep_frame_at(unsigned linktype, const uint8_t *f, Py_ssize_t n, int depth) {
    switch (linktype) {
    case 1: { /* Ethernet, with up to two VLAN tags as the filter nests them */
        Py_ssize_t off = 12;
        for (int tags = 0; tags <= 2; tags++) {
            if (off + 2 > n) return 0;
            unsigned ethertype = get16(f + off);
            if (ethertype == 0x0800 || ethertype == 0x86DD) return keep_ip(f, n, off + 2, depth);
            /* PPPoE sessions, MPLS and 802.3 (LLC) frames pass whole */
            if (ethertype == 0x8864 || ethertype == 0x8847 || ethertype == 0x8848 || ethertype <= 1500) return 1;
            if (tags == 2 || (ethertype != 0x8100 && ethertype != 0x88A8 && ethertype != 0x9100)) return 0;
            off += 4;
        }
        return 0;
    }
    case 12: case 14: case 101: case 228: case 229: /* raw IP */
        return keep_ip(f, n, 0, depth);
    case 0: case 108: /* BSD loopback */
        return keep_ip(f, n, 4, depth);
    case 113: /* Linux cooked v1 */
        return n >= 16 && (get16(f + 14) == 0x0800 || get16(f + 14) == 0x86DD) && keep_ip(f, n, 16, depth);
    case 276: /* Linux cooked v2 */
        return n >= 20 && (get16(f) == 0x0800 || get16(f) == 0x86DD) && keep_ip(f, n, 20, depth);
    }
    return 1; /* a link type the filter does not know (PPP, NFLOG, ...): the decoder selects */
}

static int keep_frame(unsigned linktype, const uint8_t *f, Py_ssize_t n) { return keep_frame_at(linktype, f, n, 0); }

typedef struct {
    char *data;
    Py_ssize_t len, capacity;
} Output;

static int output_add(Output *out, const uint8_t *p, Py_ssize_t n) {
    if (out->len + n > out->capacity) {
        Py_ssize_t capacity = out->capacity ? out->capacity : 1 << 20;
        while (capacity < out->len + n) capacity *= 2;
        char *grown = PyMem_RawRealloc(out->data, capacity);
        if (grown == NULL) return -1;
        out->data = grown;
        out->capacity = capacity;
    }
    memcpy(out->data + out->len, p, n);
    out->len += n;
    return 0;
}

/* The replay worker (0 or 1) that decodes a frame, so that a host's flows, DNS and alert windows
 * stay in one process: the parity of the last byte of its client's address. The client is the side
 * not on a service port (SERVICE_PORTS) when exactly one side is, else the side with the higher
 * port; equal ports take the parity of both addresses. Tunnels the selector walks into (VXLAN,
 * Geneve, GRE, IP-in-IP) are decided by the packet inside. Fragments, other tunnels, and
 * whatever has no TCP or UDP ports in reach go to worker 0, where fragments are reassembled.
 * A DNS answer (SHARED_ANSWER) is also handed to the other worker, whose attribution cache learns
 * from it too. sensor.capture.workers.route_of_py is the reference. */
#define SHARED_ANSWER 2 /* in a route: the frame is a DNS answer both workers learn from */
static int worker_at(const uint8_t *f, Py_ssize_t n, Py_ssize_t off, int depth);

static int worker_of_frame(unsigned linktype, const uint8_t *f, Py_ssize_t n, int depth) {
    Py_ssize_t off = network_offset(linktype, f, n);
    return off < 0 ? 0 : worker_at(f, n, off, depth);
}

/* The worker of the packet a tunnel carries: `kind` (0x6558 an Ethernet frame, else an EtherType) at `at`. */
static int worker_inner(unsigned kind, const uint8_t *f, Py_ssize_t n, Py_ssize_t at, int depth) {
    if (at < 0 || depth >= KEEP_DEPTH || at >= n) return 0;
    if (kind == 0x6558) return worker_of_frame(1, f + at, n - at, depth + 1);
    if (kind == 0x0800 || kind == 0x86DD) return worker_at(f, n, at, depth + 1);
    return 0;
}

static int service_port(unsigned port) { return port_in(service_port_bits, port); }

/* The end of the DNS name at `pos` (a compression pointer ends it), or -1 past `end`. */
static Py_ssize_t skip_name(const uint8_t *f, Py_ssize_t pos, Py_ssize_t end) {
    while (pos < end) {
        unsigned length = f[pos];
        if (length == 0) return pos + 1;
        if ((length & 0xC0) == 0xC0) return pos + 2 <= end ? pos + 2 : -1;
        if (length & 0xC0) return -1;
        pos += 1 + length;
    }
    return -1;
}

/* Whether the DNS message at f[at..end) is a response with a question whose answer section holds
 * an address (A or AAAA) before anything cut short: what an attribution cache learns from. */
static int answers_address(const uint8_t *f, Py_ssize_t at, Py_ssize_t end) {
    if (at + 12 > end || !(f[at + 2] & 0x80)) return 0;
    unsigned questions = get16(f + at + 4), answers = get16(f + at + 6);
    if (!questions || !answers) return 0;
    Py_ssize_t pos = at + 12;
    for (unsigned i = 0; i < questions + answers; i++) {
        pos = skip_name(f, pos, end);
        if (pos < 0) return 0;
        if (i < questions) {
            pos += 4;
            continue;
        }
        if (pos + 10 > end) return 0;
        unsigned type = get16(f + pos);
        if (type == 1 || type == 28) return 1;
        pos += 10 + get16(f + pos + 8);
    }
    return 0;
}

static int worker_at(const uint8_t *f, Py_ssize_t n, Py_ssize_t off, int depth) {
    Py_ssize_t pos, end;
    const uint8_t *src, *dst;
    unsigned proto, kind = 0;
    if (n < off + 20) return 0;
    if (f[off] >> 4 == 4) {
        Py_ssize_t ihl = (f[off] & 0x0F) << 2, total = get16(f + off + 2);
        if (ihl < 20 || total < ihl || (get16(f + off + 6) & 0x3FFF)) return 0;
        proto = f[off + 9];
        src = f + off + 12;
        dst = f + off + 16;
        pos = off + ihl;
        end = off + total < n ? off + total : n;
    } else if (f[off] >> 4 == 6) {
        if (n < off + 40) return 0;
        Py_ssize_t plen = get16(f + off + 4);
        end = off + 40 + plen;
        if (end > n || plen == 0) end = n;
        proto = f[off + 6];
        src = f + off + 8;
        dst = f + off + 24;
        pos = off + 40;
        while (proto == 0 || proto == 43 || proto == 60 || proto == 135 || proto == 139 || proto == 140 ||
               proto == 44 || proto == 51) {
            if (pos + 8 > end) return 0;
            if (proto == 44) {
                if (get16(f + pos + 2) & 0xFFF9) return 0; /* not an atomic fragment */
                proto = f[pos];
                pos += 8;
                continue;
            }
            Py_ssize_t length = proto == 51 ? (f[pos + 1] + 2) * 4 : (f[pos + 1] + 1) * 8;
            proto = f[pos];
            pos += length;
        }
        src += 12; /* the last byte of each address decides, as for IPv4 */
        dst += 12;
    } else {
        return 0;
    }
    Py_ssize_t inner;
    if (proto == 4 || proto == 41) return worker_inner(0x0800, f, end, pos, depth);
    if (proto == 47) {
        inner = gre_inner(f, end, pos, &kind);
        return worker_inner(kind, f, end, inner, depth);
    }
    if ((proto != TCP && proto != UDP) || pos + 4 > end) return 0;
    unsigned sport = get16(f + pos), dport = get16(f + pos + 2);
    if (proto == UDP && tunnel_datagram(sport, dport)) {
        inner = udp_tunnel_inner(f, end, pos, &kind);
        if (inner != NOT_MIRRORED) return worker_inner(kind, f, end, inner, depth);
    }
    int source_serves = service_port(sport), destination_serves = service_port(dport), worker;
    if (source_serves != destination_serves) worker = (source_serves ? dst : src)[3] & 1;
    else if (sport != dport) worker = (sport > dport ? src : dst)[3] & 1;
    else worker = (src[3] ^ dst[3]) & 1;
    /* a DNS response that answers an address (the decoder takes UDP to or from port 53 as DNS),
     * or a DNS server's side of a TCP connection (the other worker reassembles it) */
    if (proto == TCP ? sport == 53 : (sport == 53 || dport == 53) && answers_address(f, pos + 8, end))
        worker |= SHARED_ANSWER;
    return worker;
}

/* The route of a frame: its worker, with SHARED_ANSWER when the other worker learns from it too. */
static int route_of(unsigned linktype, const uint8_t *f, Py_ssize_t n) { return worker_of_frame(linktype, f, n, 0); }

int frame_route(unsigned linktype, const uint8_t *f, Py_ssize_t n) { return max_frame > 0 ? route_of(linktype, f, n) : -1; }

/* select_worker(linktype, frame) -> the replay worker of a frame, for the split's Python path and tests */
PyObject *select_worker(PyObject *module, PyObject *args) {
    unsigned int linktype;
    Py_buffer view;
    if (!select_bound() || !PyArg_ParseTuple(args, "Iy*", &linktype, &view)) return NULL;
    int worker = route_of(linktype, view.buf, view.len) & 1;
    PyBuffer_Release(&view);
    return PyLong_FromLong(worker);
}

/* select_route(linktype, frame) -> its worker (0 or 1), plus 2 when both workers learn from it (a DNS answer) */
PyObject *select_route(PyObject *module, PyObject *args) {
    unsigned int linktype;
    Py_buffer view;
    if (!select_bound() || !PyArg_ParseTuple(args, "Iy*", &linktype, &view)) return NULL;
    int route = route_of(linktype, view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(route);
}

/* Blocks this size keep the copy out of the page cache within the CPU's L2 cache, where the scan
 * then finds it (5% less time over the bench capture than 1 MiB blocks, 15% less than 2 MiB); a
 * record larger than a block is read whole into the room after it. */
#define SELECT_BLOCK (1 << 18)
enum { SELECT_MORE, SELECT_END, SELECT_TRUNCATED, SELECT_CORRUPT, SELECT_READ_ERROR, SELECT_NO_MEMORY };

/* Up to `want` bytes of `fd` at `offset` (fewer only at the end of the file), or -1 with errno. */
static Py_ssize_t read_at(int fd, uint8_t *into, Py_ssize_t want, long long offset) {
    Py_ssize_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, into + got, want - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) break;
        got += n;
    }
    return got;
}

/* select_pcap_file(fd, offset, linktype, big_endian, enough, split, wanted, stop_at)
 *   -> (kept for worker 0 (all when not split), kept for worker 1, next offset, state, detail)
 * Reads the classic pcap records of file `fd` from `offset` (a record boundary) block by block
 * and keeps, headers and all, those that pass keep_frame, until at least `enough` bytes are kept,
 * the file ends, or (when `stop_at` >= 0) the next record would start at or after `stop_at`.
 * With `split`, each kept record goes to its worker (route_of), a DNS answer to both, and only
 * workers in the `wanted` bit mask keep theirs. Runs without the GIL: the thread calling it does not hold up the decoder.
 * state: 0 more to read from the next offset; 1 the end; 2 the last record is cut short (detail:
 * bytes left over); 3 a corrupt record at the next offset (detail: its length); 4 a read error
 * (detail: errno). */
PyObject *select_pcap_file(PyObject *module, PyObject *args) {
    int fd, big, split, wanted, stopped = 0;
    long long offset, stop_at;
    unsigned int linktype;
    Py_ssize_t enough;
    if (!PyArg_ParseTuple(args, "iLIpnpiL", &fd, &offset, &linktype, &big, &enough, &split, &wanted, &stop_at))
        return NULL;
    if (!select_bound()) return NULL;
    uint8_t *block = PyMem_RawMalloc(SELECT_BLOCK + 16 + max_frame);
    if (block == NULL) return PyErr_NoMemory();
    Output outs[2] = {{NULL, 0, 0}, {NULL, 0, 0}};
    int state = SELECT_MORE;
    long long detail = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t want = SELECT_BLOCK;
    while (state == SELECT_MORE && outs[0].len + outs[1].len < enough) {
        Py_ssize_t got = read_at(fd, block, want, offset);
        if (got < 0) {
            state = SELECT_READ_ERROR;
            detail = errno;
            break;
        }
        Py_ssize_t pos = 0;
        while (pos + 16 <= got) {
            if (stop_at >= 0 && offset + pos >= stop_at) {
                stopped = 1;
                break;
            }
            uint32_t incl = record_u32(block + pos + 8, big);
            if (incl > max_frame) {
                state = SELECT_CORRUPT;
                detail = incl;
                break;
            }
            if (pos + 16 + (Py_ssize_t)incl > got) break;
            const uint8_t *frame = block + pos + 16;
            if (incl == 0 || keep_frame(linktype, frame, incl)) {  /* empty records: counted by the reader */
                int route = split && incl ? route_of(linktype, frame, incl) : 0, worker = route & 1;
                if (((wanted >> worker) & 1) && output_add(&outs[worker], block + pos, 16 + incl) < 0) {
                    state = SELECT_NO_MEMORY;
                    break;
                }
                if ((route & SHARED_ANSWER) && ((wanted >> (worker ^ 1)) & 1) &&
                    output_add(&outs[worker ^ 1], block + pos, 16 + incl) < 0) {
                    state = SELECT_NO_MEMORY;
                    break;
                }
            }
            pos += 16 + incl;
        }
        offset += pos;
        if (state != SELECT_MORE || stopped) break;
        if (got < want) { /* the file ends in this block */
            state = pos == got ? SELECT_END : SELECT_TRUNCATED;
            detail = got - pos;
        } else { /* pos == 0: one record larger than a block (at most max_frame): read it whole */
            want = pos ? SELECT_BLOCK : 16 + (Py_ssize_t)record_u32(block + 8, big);
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(block);
    PyObject *result = NULL;
    if (state == SELECT_NO_MEMORY) {
        PyErr_NoMemory();
    } else {
        PyObject *first = PyBytes_FromStringAndSize(outs[0].data ? outs[0].data : "", outs[0].len);
        PyObject *second = PyBytes_FromStringAndSize(outs[1].data ? outs[1].data : "", outs[1].len);
        if (first != NULL && second != NULL) {
            result = Py_BuildValue("(NNLiL)", first, second, offset, state, detail);
        } else {
            Py_XDECREF(first);
            Py_XDECREF(second);
        }
    }
    PyMem_RawFree(outs[0].data);
    PyMem_RawFree(outs[1].data);
    return result;
}

/* pcap_resync(fd, offset, big_endian) -> the first offset at or after `offset` (within 256 KiB)
 * where RESYNC_CHAIN consecutive record headers chain plausibly, or -1. A guess, so that a second
 * thread can select the rest of a file while the first is still on its way there: the first
 * thread confirms it by landing exactly on it, or the guess is dropped. */
#define RESYNC_SPAN (256 << 10)
#define RESYNC_WINDOW (4 << 20)
#define RESYNC_CHAIN 32

static int plausible_header(const uint8_t *h, int big, uint32_t first_second) {
    uint32_t second = record_u32(h, big), frac = record_u32(h + 4, big);
    uint32_t incl = record_u32(h + 8, big), orig = record_u32(h + 12, big);
    uint32_t spread = second > first_second ? second - first_second : first_second - second;
    return incl <= 262144 && orig >= incl && orig <= max_frame && frac < 1000000000u && spread <= 7 * 86400;
}

PyObject *pcap_resync(PyObject *module, PyObject *args) {
    int fd, big;
    long long offset;
    if (!PyArg_ParseTuple(args, "iLp", &fd, &offset, &big) || !select_bound()) return NULL;
    uint8_t *window = PyMem_RawMalloc(RESYNC_WINDOW);
    if (window == NULL) return PyErr_NoMemory();
    long long found = -1;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t got = read_at(fd, window, RESYNC_WINDOW, offset);
    for (Py_ssize_t start = 0; got > 0 && start < RESYNC_SPAN && found < 0; start++) {
        Py_ssize_t pos = start;
        int chained = 0;
        uint32_t first_second = start + 16 <= got ? record_u32(window + start, big) : 0;
        while (chained < RESYNC_CHAIN && pos + 16 <= got && plausible_header(window + pos, big, first_second)) {
            pos += 16 + (Py_ssize_t)record_u32(window + pos + 8, big);
            chained++;
        }
        if (chained == RESYNC_CHAIN && pos <= got) found = offset + start;
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(window);
    return PyLong_FromLongLong(found);
}

