/* sensor._fast: compiled fast paths for the per-packet and per-event work of replay and live capture.
 *
 * Each entry point does, for the common case, exactly what a pure-Python function in the package
 * does, and returns None whenever the input strays from that common case (malformed bytes, text
 * that needs escaping, rare record types): the caller then runs the Python code, which stays the
 * reference and the only place errors are described. Tests check that both agree on every input
 * the fast path accepts. sensor/compiled.py names each entry point's Python reference.
 *
 * One source file per Python module mirrored: dns.c (sensor.decode.dns), tls.c (sensor.decode.tls),
 * packet.c (sensor.decode.packet), records.c (sensor.records), ecs.c (sensor.output.ecs),
 * redact.c (sensor.phi.redact), phi.c (sensor.phi.layers and sensor.phi.lexicon), http.c (sensor.decode.http), quic.c (sensor.decode.quic), pcap.c (sensor.capture.pcap), select.c (sensor.capture.prefilter's selector with
 * sensor.capture.bpf's filter), share.c (a replay worker's decode that learns the other's DNS answers),
 * handshake.c (sensor.decode.dispatch's SYNs and first ClientHellos, whole or split), detect.c (sensor.detect.engine),
 * text.c (text and str helpers), module.c (the method table).
 * This header holds what more than one of them uses.
 */
#ifndef SENSOR_FAST_H
#define SENSOR_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <time.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>

/* A dict (exactly a dict: not an OrderedDict, whose order these would bypass) looked up, changed or
 * asked with the hash of `key` computed once: the flow and query tables' keys are tuples, which keep
 * no hash of their own. CPython's own calls where they are exported, else the plain ones. */
#if PY_VERSION_HEX < 0x030D0000
#define dict_get_hashed(d, key, hash) _PyDict_GetItem_KnownHash(d, key, hash)
#define dict_set_hashed(d, key, value, hash) _PyDict_SetItem_KnownHash(d, key, value, hash)
#define dict_del_hashed(d, key, hash) _PyDict_DelItem_KnownHash(d, key, hash)
#define dict_has_hashed(d, key, hash) _PyDict_Contains_KnownHash(d, key, hash)
#else
#define dict_get_hashed(d, key, hash) ((void)(hash), PyDict_GetItemWithError(d, key))
#define dict_set_hashed(d, key, value, hash) ((void)(hash), PyDict_SetItem(d, key, value))
#define dict_del_hashed(d, key, hash) ((void)(hash), PyDict_DelItem(d, key))
#define dict_has_hashed(d, key, hash) ((void)(hash), PyDict_Contains(d, key))
#endif

/* Shared between the files of the extension, never exported from it. */
#define FAST_INTERNAL __attribute__((visibility("hidden")))

static inline unsigned get16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }

static inline uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint32_t record_u32(const uint8_t *p, int big) {
    return big ? get32(p) : ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}


/* A growable text buffer for one record's rendered data. */
typedef struct {
    char *text;
    Py_ssize_t len, cap;
} Text;

static inline int text_reserve(Text *t, Py_ssize_t more) {
    if (t->len + more + 1 <= t->cap) return 0;
    Py_ssize_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + more + 1) cap *= 2;
    char *grown = PyMem_Realloc(t->text, cap);
    if (grown == NULL) return -1;
    t->text = grown;
    t->cap = cap;
    return 0;
}

static inline int text_add(Text *t, const char *s, Py_ssize_t n) {
    if (text_reserve(t, n) < 0) return -1;
    memcpy(t->text + t->len, s, n);
    t->len += n;
    return 0;
}

/* Records (sensor.records.frozen_record classes) built here without running their __init__: each
 * field is written where its slot descriptor would write it, which is what that __init__ does,
 * minus a Python call per record and a descriptor call per field. */
#define RECORD_MAX_FIELDS 12
typedef struct {
    PyTypeObject *type;
    PyObject *slots[RECORD_MAX_FIELDS]; /* member descriptors, in field order */
    Py_ssize_t offsets[RECORD_MAX_FIELDS]; /* where a plain object slot lives in an instance, else -1 */
    Py_ssize_t count;
} RecordType;

static inline Py_ssize_t network_offset(unsigned linktype, const uint8_t *f, Py_ssize_t n) {
    switch (linktype) {
    case 1: { /* Ethernet */
        Py_ssize_t off = 12;
        unsigned ethertype = n >= 14 ? get16(f + 12) : 0;
        while ((ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100) && n >= off + 6) {
            off += 4;
            ethertype = get16(f + off);
        }
        off += 2;
        return ethertype == 0x0800 || ethertype == 0x86DD ? off : -1;
    }
    case 12: case 14: case 101: case 228: case 229: /* raw IP */
        return 0;
    case 0: case 108: /* BSD loopback */
        return 4;
    case 113: /* Linux cooked v1 */
        return n >= 16 && (get16(f + 14) == 0x0800 || get16(f + 14) == 0x86DD) ? 16 : -1;
    case 276: /* Linux cooked v2 */
        return n >= 20 && (get16(f) == 0x0800 || get16(f) == 0x86DD) ? 20 : -1;
    }
    return -1;
}

static inline PyObject *bytes_at(const uint8_t *p, Py_ssize_t n) { return PyBytes_FromStringAndSize((const char *)p, n); }

#define TCP 6
#define UDP 17

/* UDP ports that carry tunnels (sensor.decode.packet.udp_tunnel_ports, set through set_tunnel_ports):
 * decode_frame declines those datagrams to the Python decoder, which decapsulates them. The replay
 * selector looks inside VXLAN and Geneve (the mirror tunnels) and keeps the other kinds whole. */
FAST_INTERNAL extern uint8_t tunnel_port_bits[65536 / 8];
enum { TUNNEL_OTHER, TUNNEL_VXLAN, TUNNEL_GENEVE };
#define MAX_MIRROR_PORTS 64

static inline int tunnel_port(unsigned port) { return (tunnel_port_bits[port >> 3] >> (port & 7)) & 1; }

/* Whether a UDP datagram is a tunnel's (sensor.decode.packet.is_tunnel_datagram): one of its ports is
 * a tunnel port, unless the lower port is DNS's or QUIC's (53, 443) and not a tunnel port; then it is
 * that service's, as tshark decides by the lower port first (a client's ephemeral port may be 4789). */
static inline int tunnel_datagram(unsigned sport, unsigned dport) {
    if (!tunnel_port(sport) && !tunnel_port(dport)) return 0;
    unsigned low = sport < dport ? sport : dport;
    return (low != 53 && low != 443) || tunnel_port(low);
}

/* text.c */
FAST_INTERNAL int text_add_base64(Text *t, const uint8_t *p, Py_ssize_t n);
FAST_INTERNAL PyObject *ascii_str(const char *s, Py_ssize_t n);
/* A 4- or 16-byte address as socket.inet_ntop (glibc's) writes it, into INET6_ADDRSTRLEN bytes: its length */
FAST_INTERNAL Py_ssize_t address_chars(const uint8_t *address, Py_ssize_t alen, char *out);
FAST_INTERNAL PyObject *tuple_steal(Py_ssize_t n, PyObject **items);

/* records.c */
FAST_INTERNAL void record_type_clear(RecordType *record);
FAST_INTERNAL int record_type_bind(RecordType *record, PyObject *type, Py_ssize_t count);
FAST_INTERNAL PyObject *record_new(const RecordType *record, PyObject **values);

/* packet.c */
FAST_INTERNAL unsigned tunnel_kind(unsigned port);
FAST_INTERNAL PyObject *address_text(const uint8_t *address, Py_ssize_t alen);

/* dns.c */
FAST_INTERNAL int dns_bound(void);
FAST_INTERNAL PyObject *dns_message_of(const uint8_t *data, Py_ssize_t size);
FAST_INTERNAL PyObject *learn_message(PyObject *entries, PyObject *move, double ts, PyObject *message, double min_ttl,
                                      double max_ttl);
FAST_INTERNAL Py_ssize_t message_answer_count(PyObject *message);
#define DNS_WIRE_DECLINED (-2)
FAST_INTERNAL Py_ssize_t dns_learn_wire(PyObject *entries, PyObject *move, double ts, const uint8_t *data, Py_ssize_t size,
                                        double min_ttl, double max_ttl);

/* select.c: a frame's route (sensor.capture.workers.route_of_py), or -1 before bind_select */
FAST_INTERNAL int frame_route(unsigned linktype, const uint8_t *f, Py_ssize_t n);

/* ecs.c: interns the key strings (at module init) */
FAST_INTERNAL int ecs_init(void);

/* The entry points (module.c's method table; sensor/compiled.py their Python references). */
FAST_INTERNAL PyObject *record_maker(PyObject *module, PyObject *type);
FAST_INTERNAL PyObject *bind_dns(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *parse_dns(PyObject *module, PyObject *arg);
FAST_INTERNAL PyObject *bind_dns_pairs(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *dns_pair(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *dns_learn(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *dns_learn_wire_py(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *dns_step_decoder(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *parse_hello(PyObject *module, PyObject *arg);
FAST_INTERNAL PyObject *hello_message(PyObject *module, PyObject *arg);
FAST_INTERNAL PyObject *set_tunnel_ports(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *decode_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *dns_datagram(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *decode_packet(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *share_decoder(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *bind_handshakes(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *handshake_decoder(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *decode_mirrored(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mirrored_found(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *cached_text(PyObject *texts, PyObject *address, Py_ssize_t max_texts, int *full);
FAST_INTERNAL PyObject *declined_decoder(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *replay_alerts(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *community_id(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *event_envelope(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *bind_json(PyObject *module, PyObject *dumps);
FAST_INTERNAL PyObject *prune(PyObject *module, PyObject *value);
FAST_INTERNAL PyObject *iso_time(PyObject *module, PyObject *ts);
FAST_INTERNAL PyObject *bind_hints(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *identifier_hints(PyObject *module, PyObject *text);
FAST_INTERNAL PyObject *bind_query(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *redact_query(PyObject *module, PyObject *args);
/* phi.c */
FAST_INTERNAL PyObject *bind_phi(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *plain_text(PyObject *module, PyObject *text);
FAST_INTERNAL PyObject *bytes_text(PyObject *module, PyObject *data);
FAST_INTERNAL PyObject *peel_form(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *term_may_occur(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *peel_json(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *bind_scan(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *bind_gates(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *gate_hints(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *scan_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *bind_request(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *scan_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *dns_event_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *tls_event_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *event_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *alert_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *window_event_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *detect_front(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *bind_pcap(PyObject *module, PyObject *arg);
FAST_INTERNAL PyObject *pcap_records(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *bind_select(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *select_pcap_file(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *pcap_resync(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *select_worker(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *select_route(PyObject *module, PyObject *args);
FAST_INTERNAL PyObject *http_head(PyObject *module, PyObject *arg);
FAST_INTERNAL PyObject *http_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* One SHA-256 compression (FIPS 180-4) of a 64-byte block into the state h (quic.c): the Initial keys' HMACs and
 * the throttle windows' ids (ecs.c). */
FAST_INTERNAL void sha256_block(uint32_t h[8], const uint8_t block[64]);
FAST_INTERNAL PyObject *quic_crypto_chunks(PyObject *module, PyObject *arg);
FAST_INTERNAL int quic_initial_start(const uint8_t *p, Py_ssize_t n);
FAST_INTERNAL PyObject *quic_absorb(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *quic_initial_keys(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *quic_unprotect(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *quic_long_header(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
