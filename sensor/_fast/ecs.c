#include "fast.h"
#include <structmember.h> /* T_OBJECT_EX: a slot of a record class (slot_get) */

/* ---------------------------------------------------------------------------------------------
 * Community ID v1: sensor.output.ecs.community_id. SHA-1 (FIPS 180-4) is written out here, and
 * taken by the CPU's SHA extensions where it has them: the hash is over 40 bytes at most, and one
 * call from Python beats building the input in Python.
 */

static inline uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* One block of SHA-1 into the state `h`, written out (FIPS 180-4). */
static void sha1_block_c(uint32_t h[5], const uint8_t block[64]) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++) w[i] = get32(block + 4 * i);
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* The same block by the CPU's SHA extensions (sha1rnds4: four rounds, a in the highest lane; the
 * schedule by sha1msg1, a xor and sha1msg2, four words ahead), where the CPU has them. */
__attribute__((target("sha,sse4.1"))) static void sha1_block_ni(uint32_t h[5], const uint8_t block[64]) {
    const __m128i swap = _mm_set_epi64x(0x0001020304050607ULL, 0x08090a0b0c0d0e0fULL); /* big-endian, w0 highest */
    __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0x1B);
    const __m128i abcd_in = abcd, e_in = _mm_set_epi32((int)h[4], 0, 0, 0);
    __m128i e[2] = {e_in, e_in}, m[4];
    for (int g = 0; g < 20; g++) { /* rounds 4g to 4g+3 */
        if (g < 4) m[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * g)), swap);
        e[g & 1] = g == 0 ? _mm_add_epi32(e[0], m[0]) : _mm_sha1nexte_epu32(e[g & 1], m[g & 3]);
        e[(g + 1) & 1] = abcd;
        if (g >= 3 && g <= 18) m[(g + 1) & 3] = _mm_sha1msg2_epu32(m[(g + 1) & 3], m[g & 3]);
        switch (g / 5) { /* the round function's number must be a constant */
        case 0: abcd = _mm_sha1rnds4_epu32(abcd, e[g & 1], 0); break;
        case 1: abcd = _mm_sha1rnds4_epu32(abcd, e[g & 1], 1); break;
        case 2: abcd = _mm_sha1rnds4_epu32(abcd, e[g & 1], 2); break;
        default: abcd = _mm_sha1rnds4_epu32(abcd, e[g & 1], 3); break;
        }
        if (g >= 1 && g <= 16) m[(g + 3) & 3] = _mm_sha1msg1_epu32(m[(g + 3) & 3], m[g & 3]);
        if (g >= 2 && g <= 17) m[(g + 2) & 3] = _mm_xor_si128(m[(g + 2) & 3], m[g & 3]);
    }
    __m128i e_out = _mm_sha1nexte_epu32(e[0], e_in);
    _mm_storeu_si128((__m128i *)h, _mm_shuffle_epi32(_mm_add_epi32(abcd, abcd_in), 0x1B));
    h[4] = (uint32_t)_mm_extract_epi32(e_out, 3);
}

static int sha1_ni = -1; /* whether the CPU has them: looked up once */

static void sha1_block(uint32_t h[5], const uint8_t block[64], int portable) {
    if (sha1_ni < 0) {
        __builtin_cpu_init();
        sha1_ni = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
    }
    if (sha1_ni && !portable)
        sha1_block_ni(h, block);
    else
        sha1_block_c(h, block);
}
#else
static void sha1_block(uint32_t h[5], const uint8_t block[64], int portable) { sha1_block_c(h, block); }
#endif

/* SHA-1 of a message of at most 55 bytes (one padded block); `portable`: without the SHA extensions. */
static void sha1_short(const uint8_t *msg, size_t n, uint8_t digest[20], int portable) {
    uint8_t block[64] = {0};
    memcpy(block, msg, n);
    block[n] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) block[63 - i] = (uint8_t)(bits >> (8 * i));
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    sha1_block(h, block, portable);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) digest[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

/* ---------------------------------------------------------------------------------------------
 * A throttle window's event.id: sensor.detect.engine.event_id_py. SHA-256 (FIPS 180-4) over the
 * text built in the same call, by quic.c's compression function (the CPU's SHA extensions where it
 * has them).
 */

static void sha256(const uint8_t *msg, size_t n, uint8_t digest[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t done = 0;
    for (; n - done >= 64; done += 64) sha256_block(h, msg + done);
    uint8_t tail[128] = {0};
    size_t rest = n - done, padded = rest < 56 ? 64 : 128;
    memcpy(tail, msg + done, rest);
    tail[rest] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) tail[padded - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha256_block(h, tail);
    if (padded == 128) sha256_block(h, tail + 64);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) digest[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

/* `value` as "%.6f" writes it (the exact binary value rounded half to even to six decimals), for
 * a magnitude below 2**53; its length, or 0 for any other value (PyOS_double_to_string's then). */
static size_t fixed_6(double value, char text[32]) {
    double magnitude = fabs(value);
    if (!(magnitude < 9007199254740992.0)) return 0; /* (NaN too) */
    int exponent;
    double fraction = frexp(magnitude, &exponent); /* magnitude = fraction * 2**exponent, fraction in [0.5, 1) */
    unsigned __int128 scaled = (unsigned __int128)(uint64_t)ldexp(fraction, 53) * 1000000u, rounded;
    int shift = 53 - exponent; /* magnitude * 10**6 = scaled / 2**shift, shift >= 0 */
    if (magnitude == 0.0 || shift >= 120) {
        rounded = 0; /* below 2**-46: far below half a millionth */
    } else if (shift == 0) {
        rounded = scaled;
    } else {
        unsigned __int128 rest = scaled & (((unsigned __int128)1 << shift) - 1), half = (unsigned __int128)1 << (shift - 1);
        rounded = scaled >> shift;
        if (rest > half || (rest == half && (rounded & 1))) rounded++;
    }
    uint64_t whole = (uint64_t)(rounded / 1000000u), millionths = (uint64_t)(rounded % 1000000u);
    char digits[24];
    int at = (int)sizeof digits;
    do digits[--at] = (char)('0' + whole % 10); while ((whole /= 10) != 0);
    size_t length = 0;
    if (signbit(value)) text[length++] = '-';
    memcpy(text + length, digits + at, sizeof digits - (size_t)at);
    length += sizeof digits - (size_t)at;
    text[length++] = '.';
    for (int i = 5; i >= 0; i--, millionths /= 10) text[length + (size_t)i] = (char)('0' + millionths % 10);
    return length + 6;
}

/* window_event_id(rule, source, subject, start) -> the first 40 hex digits of the SHA-256 of
 * "rule|source|subject|start" (start as "%.6f" formats it, UTF-8), or None for what the Python
 * reference takes (not three str and a float, text UTF-8 cannot encode). */
PyObject *window_event_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "window_event_id takes 4 arguments");
        return NULL;
    }
    if (!PyUnicode_CheckExact(args[0]) || !PyUnicode_CheckExact(args[1]) || !PyUnicode_CheckExact(args[2]) ||
        !PyFloat_CheckExact(args[3]))
        Py_RETURN_NONE;
    const char *parts[3];
    Py_ssize_t sizes[3], total = 0;
    for (int i = 0; i < 3; i++) {
        if ((parts[i] = PyUnicode_AsUTF8AndSize(args[i], &sizes[i])) == NULL) { /* a lone surrogate */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        total += sizes[i] + 1;
    }
    char fixed[32], *start = fixed;
    size_t start_size = fixed_6(PyFloat_AS_DOUBLE(args[3]), fixed);
    if (start_size == 0 && (start = PyOS_double_to_string(PyFloat_AS_DOUBLE(args[3]), 'f', 6, 0, NULL)) == NULL)
        return NULL;
    if (start != fixed) start_size = strlen(start);
    uint8_t small[512], *text = small;
    if ((size_t)total + start_size > sizeof small && (text = PyMem_Malloc((size_t)total + start_size)) == NULL) {
        if (start != fixed) PyMem_Free(start);
        return PyErr_NoMemory();
    }
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        memcpy(text + at, parts[i], (size_t)sizes[i]);
        at += (size_t)sizes[i];
        text[at++] = '|';
    }
    memcpy(text + at, start, start_size);
    at += start_size;
    if (start != fixed) PyMem_Free(start);
    uint8_t digest[32];
    sha256(text, at, digest);
    if (text != small) PyMem_Free(text);
    PyObject *id = PyUnicode_New(40, 127);
    if (id == NULL) return NULL;
    static const char hex[] = "0123456789abcdef";
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(id);
    for (int i = 0; i < 20; i++) {
        out[2 * i] = (Py_UCS1)hex[digest[i] >> 4];
        out[2 * i + 1] = (Py_UCS1)hex[digest[i] & 15];
    }
    return id;
}

/* An IPv4 address in the form decode writes it (four numbers up to 255, no leading zero): 1, else 0
 * (inet_pton then decides). */
static int ipv4_plain(const char *text, uint8_t address[4]) {
    for (int part = 0; part < 4; part++) {
        if (part && *text++ != '.') return 0;
        if (*text < '0' || *text > '9') return 0;
        unsigned value = (unsigned)(*text++ - '0');
        for (int digits = 1; *text >= '0' && *text <= '9'; digits++) {
            if (digits == 3 || value == 0) return 0;
            value = value * 10 + (unsigned)(*text++ - '0');
        }
        if (value > 255) return 0;
        address[part] = (uint8_t)value;
    }
    return *text == '\0';
}

static int address_of(int family, const char *text, uint8_t address[16]) {
    return (family == AF_INET && ipv4_plain(text, address)) || inet_pton(family, text, address) == 1;
}

#define COMMUNITY_LENGTH 30 /* "1:" and the base64 of a SHA-1 */

/* The Community ID of a flow given as address texts into `out`: 1, or 0 when an address or number
 * is out of range. `portable`: SHA-1 without the CPU's SHA extensions. */
static int community_id_chars(const char *src_text, unsigned sport, const char *dst_text, unsigned dport,
                              unsigned proto, unsigned seed, int portable, char out[COMMUNITY_LENGTH]) {
    int family = strchr(src_text, ':') ? AF_INET6 : AF_INET;
    size_t alen = family == AF_INET6 ? 16 : 4;
    uint8_t src[16], dst[16];
    if (!address_of(family, src_text, src) || !address_of(family, dst_text, dst) || sport > 0xFFFF ||
        dport > 0xFFFF || proto > 0xFF || seed > 0xFFFF)
        return 0;
    int order = memcmp(src, dst, alen);
    if (order > 0 || (order == 0 && sport > dport)) { /* the smaller endpoint goes first */
        uint8_t swap[16];
        memcpy(swap, src, alen), memcpy(src, dst, alen), memcpy(dst, swap, alen);
        unsigned port = sport;
        sport = dport, dport = port;
    }
    uint8_t msg[2 + 16 + 16 + 6], digest[20];
    size_t n = 0;
    msg[n++] = (uint8_t)(seed >> 8), msg[n++] = (uint8_t)seed;
    memcpy(msg + n, src, alen), n += alen;
    memcpy(msg + n, dst, alen), n += alen;
    msg[n++] = (uint8_t)proto, msg[n++] = 0;
    msg[n++] = (uint8_t)(sport >> 8), msg[n++] = (uint8_t)sport;
    msg[n++] = (uint8_t)(dport >> 8), msg[n++] = (uint8_t)dport;
    sha1_short(msg, n, digest, portable);
    char text[COMMUNITY_LENGTH + 8];
    Text t = {text, 2, sizeof text}; /* room enough: text_add_base64 writes in place, never grows it */
    memcpy(text, "1:", 2);
    text_add_base64(&t, digest, 20);
    memcpy(out, text, COMMUNITY_LENGTH);
    return 1;
}

/* community_id(src_ip, src_port, dst_ip, dst_port, protocol, seed[, portable]) -> "1:<base64 sha1>",
 * or None when an address does not parse (the Python code then decides). `portable`: the SHA-1
 * written out, not the CPU's SHA extensions (tests hold the two equal). */
PyObject *community_id(PyObject *module, PyObject *args) {
    const char *src_text, *dst_text;
    unsigned int sport, dport, proto, seed;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "sIsIII|p", &src_text, &sport, &dst_text, &dport, &proto, &seed, &portable)) return NULL;
    char text[COMMUNITY_LENGTH];
    if (!community_id_chars(src_text, sport, dst_text, dport, proto, seed, portable, text)) Py_RETURN_NONE;
    return ascii_str(text, COMMUNITY_LENGTH);
}

/* ---------------------------------------------------------------------------------------------
 * sensor.output.ecs.EventBuilder._envelope: the fields every event document has.
 */

/* sensor.output.ecs.iso_time: UTC ISO 8601 with microseconds, clamped to years 1 to 9999. */
#define FIRST_SECOND (-62135596800.0) /* 0001-01-01T00:00:00Z */
#define LAST_SECOND 253402300799.0    /* 9999-12-31T23:59:59Z */

#define ISO_TIME_LENGTH 27

static void iso_time_text(double ts, char text[ISO_TIME_LENGTH]) {
    double second = floor(ts);
    if (!(second >= FIRST_SECOND)) {
        memcpy(text, "0001-01-01T00:00:00.000000Z", ISO_TIME_LENGTH);
        return;
    }
    if (second > LAST_SECOND) {
        memcpy(text, "9999-12-31T23:59:59.999999Z", ISO_TIME_LENGTH);
        return;
    }
    volatile double scaled = (ts - second) * 1000000.0; /* volatile: rounded as Python rounds, never fused */
    long micros = (long)(scaled + 0.5);
    if (micros > 999999) micros = 999999;
    /* the date and time of the last second written, kept: a capture's records come seconds apart */
    static double kept_second = NAN;
    static char kept[ISO_TIME_LENGTH];
    if (second == kept_second) {
        memcpy(text, kept, 20);
        for (int i = 25; i >= 20; i--, micros /= 10) text[i] = (char)('0' + micros % 10);
        text[26] = 'Z';
        return;
    }
    /* The proleptic Gregorian date of a day count from 1970-01-01 (H. Hinnant's civil_from_days),
     * as Python's datetime counts. */
    long long whole = (long long)second, days = whole >= 0 ? whole / 86400 : -((-whole + 86399) / 86400);
    long long in_day = whole - days * 86400;
    days += 719468;
    long long era = (days >= 0 ? days : days - 146096) / 146097;
    long long day_of_era = days - era * 146097;
    long long year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
    long long day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    long long mp = (5 * day_of_year + 2) / 153;
    long long day = day_of_year - (153 * mp + 2) / 5 + 1, month = mp < 10 ? mp + 3 : mp - 9;
    long long year = year_of_era + era * 400 + (month <= 2);
    long fields[7] = {(long)year, (long)month, (long)day, (long)(in_day / 3600), (long)(in_day / 60 % 60),
                      (long)(in_day % 60), micros};
    static const int widths[7] = {4, 2, 2, 2, 2, 2, 6};
    static const char after[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    int n = 0;
    for (int f = 0; f < 7; f++) {
        for (int i = widths[f] - 1; i >= 0; i--, fields[f] /= 10) text[n + i] = (char)('0' + fields[f] % 10);
        n += widths[f];
        text[n++] = after[f];
    }
    kept_second = second;
    memcpy(kept, text, ISO_TIME_LENGTH);
}

static PyObject *iso_time_str(double ts) {
    char text[ISO_TIME_LENGTH];
    iso_time_text(ts, text);
    return ascii_str(text, ISO_TIME_LENGTH);
}

/* iso_time(ts) -> sensor.output.ecs.iso_time_py(ts), or None for what is not a finite float (the
 * reference raises for NaN and infinities, and takes ints whole). */
PyObject *iso_time(PyObject *module, PyObject *ts) {
    if (!PyFloat_CheckExact(ts) || !isfinite(PyFloat_AS_DOUBLE(ts))) Py_RETURN_NONE;
    return iso_time_str(PyFloat_AS_DOUBLE(ts));
}

enum {
    K_TIMESTAMP, K_ECS, K_VERSION, K_EVENT, K_KIND, K_CATEGORY, K_TYPE, K_DATASET, K_MODULE, K_OBSERVER, K_SOURCE,
    K_DESTINATION, K_NETWORK, K_IP, K_PORT, K_TRANSPORT, K_PROTOCOL, K_COMMUNITY_ID, K_SRC_IP, K_SRC_PORT,
    K_DST_IP, K_DST_PORT, V_EVENT, V_NETWORK, V_CONNECTION, V_IPV4, V_IPV6, K_DATA_STREAM, K_COUNT
};
static const char *const envelope_text[K_COUNT] = {
    "@timestamp", "ecs", "version", "event", "kind", "category", "type", "dataset", "module", "observer", "source",
    "destination", "network", "ip", "port", "transport", "protocol", "community_id", "src_ip", "src_port",
    "dst_ip", "dst_port", "event", "network", "connection", "ipv4", "ipv6", "data_stream",
};
static PyObject *envelope_str[K_COUNT]; /* interned at module init */

enum {
    J_TS, J_FLOW, J_ID, J_NAME, J_QTYPE, J_RESPONSE_SEEN, J_RCODE, J_ANSWERS, J_TYPE, J_DATA, J_TTL, J_PROTOCOL,
    J_SERVER_NAME, J_ALPN, J_ECH, J_VERSION, J_DNS, J_HTTP, J_COUNT
};
static const char *const json_text[J_COUNT] = {
    "ts", "flow", "id", "name", "qtype", "response_seen", "rcode", "answers", "type", "data", "ttl", "protocol",
    "server_name", "alpn", "ech", "version", "dns", "http",
};
static PyObject *json_str[J_COUNT]; /* interned at module init */

/* A new dict from pairs of (key index, value); values are stolen, NULL ones mean an error is set. */
static PyObject *dict_steal(int n, const int *keys, PyObject **values) {
    PyObject *dict = NULL;
    for (int i = 0; i < n; i++)
        if (values[i] == NULL) goto done;
    dict = PyDict_New();
    for (int i = 0; dict != NULL && i < n; i++)
        if (PyDict_SetItem(dict, envelope_str[keys[i]], values[i]) < 0) Py_CLEAR(dict);
done:
    for (int i = 0; i < n; i++) Py_XDECREF(values[i]);
    return dict;
}

static PyObject *list_of(int n, PyObject **items) { /* new references to items */
    PyObject *list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) PyList_SET_ITEM(list, i, Py_NewRef(items[i]));
    return list;
}

/* Where the fields of a record class sit. Records are slotted dataclasses (sensor.records): a field
 * is a member descriptor of the class, read straight from its slot instead of through
 * PyObject_GetAttr's lookup; the class's slots are looked up once, again after the class changes
 * (its version tag). Anything else (no slot, an empty one, a class with its own attribute lookup)
 * is PyObject_GetAttr's. */
#define SLOT_CLASSES 8
/* the names event_lines reads beyond the line writers' (interned at its first call) */
enum { E_TUNNEL, E_HOST, E_COUNT };
static const char *const event_text[E_COUNT] = {"tunnel", "host"};
static PyObject *event_str[E_COUNT];
/* slot_get's `index`: a record's fields (J_...), a flow's five, then event_lines' own (E_...) */
#define SLOT_FLOW J_COUNT
#define SLOT_EVENT (J_COUNT + 5)
#define SLOT_NAMES (SLOT_EVENT + E_COUNT)
typedef struct {
    PyTypeObject *type; /* a strong reference: the address names no other class while kept */
    unsigned int version;
    Py_ssize_t offsets[SLOT_NAMES]; /* -1: not looked up yet, 0: not a plain slot */
} SlotClass;
static SlotClass slot_classes[SLOT_CLASSES];
static int slot_next;

/* The entry of `type`, made in the place of the oldest one if need be (*evicted: its class, to be
 * let go by the caller once done with the entry: letting a class go may run Python code). */
static SlotClass *slot_class(PyTypeObject *type, PyTypeObject **evicted) {
    for (int i = 0; i < SLOT_CLASSES; i++)
        if (slot_classes[i].type == type) {
            SlotClass *known = &slot_classes[i];
            if (known->version != type->tp_version_tag) { /* changed since */
                known->version = type->tp_version_tag;
                for (int k = 0; k < SLOT_NAMES; k++) known->offsets[k] = -1;
            }
            return known;
        }
    SlotClass *known = &slot_classes[slot_next];
    slot_next = (slot_next + 1) % SLOT_CLASSES;
    *evicted = known->type;
    known->type = (PyTypeObject *)Py_NewRef(type);
    known->version = type->tp_version_tag;
    for (int k = 0; k < SLOT_NAMES; k++) known->offsets[k] = -1;
    return known;
}

/* obj.name as a new reference; `name` interned and kept by the module, `index` its place in a
 * SlotClass. */
static PyObject *slot_get(PyObject *obj, PyObject *name, int index) {
    PyTypeObject *type = Py_TYPE(obj);
    if (type->tp_getattro == PyObject_GenericGetAttr && (type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        PyTypeObject *evicted = NULL;
        SlotClass *known = slot_class(type, &evicted);
        Py_ssize_t offset = known->offsets[index];
        if (offset < 0) {
            PyObject *descriptor = _PyType_Lookup(type, name); /* borrowed */
            offset = 0;
            if (descriptor != NULL && Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
                PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
                if (member->type == T_OBJECT_EX && member->offset > 0) offset = member->offset;
            }
            known->offsets[index] = offset;
        }
        PyObject *value = offset > 0 ? *(PyObject **)((char *)obj + offset) : NULL;
        if (value != NULL) Py_INCREF(value);
        Py_XDECREF(evicted);
        if (value != NULL) return value;
    }
    return PyObject_GetAttr(obj, name);
}

/* A flow's fields (new references) as decode makes them: addresses in text, ports of 16 bits, a
 * transport name; with its Community ID. */
typedef struct {
    PyObject *src_ip, *dst_ip, *src_port, *dst_port, *transport;
    char community[COMMUNITY_LENGTH];
    int ipv6;
} FlowParts;

static void flow_parts_clear(FlowParts *parts) {
    Py_CLEAR(parts->src_ip);
    Py_CLEAR(parts->dst_ip);
    Py_CLEAR(parts->src_port);
    Py_CLEAR(parts->dst_port);
    Py_CLEAR(parts->transport);
}

/* 0, 1 when the flow is not as decode makes it (the Python code takes it: no error set), -1 on error. */
static int flow_parts(PyObject *flow, FlowParts *parts) {
    *parts = (FlowParts){0};
    parts->src_ip = slot_get(flow, envelope_str[K_SRC_IP], SLOT_FLOW);
    parts->dst_ip = parts->src_ip ? slot_get(flow, envelope_str[K_DST_IP], SLOT_FLOW + 1) : NULL;
    parts->src_port = parts->dst_ip ? slot_get(flow, envelope_str[K_SRC_PORT], SLOT_FLOW + 2) : NULL;
    parts->dst_port = parts->src_port ? slot_get(flow, envelope_str[K_DST_PORT], SLOT_FLOW + 3) : NULL;
    parts->transport = parts->dst_port ? slot_get(flow, envelope_str[K_TRANSPORT], SLOT_FLOW + 4) : NULL;
    if (parts->transport == NULL) goto error;
    if (!PyUnicode_Check(parts->src_ip) || !PyUnicode_Check(parts->dst_ip) || !PyUnicode_Check(parts->transport) ||
        !PyLong_CheckExact(parts->src_port) || !PyLong_CheckExact(parts->dst_port))
        goto decline;
    const char *src_text = PyUnicode_AsUTF8(parts->src_ip), *dst_text = src_text ? PyUnicode_AsUTF8(parts->dst_ip) : NULL;
    if (dst_text == NULL) goto error;
    unsigned long sport = PyLong_AsUnsignedLong(parts->src_port), dport = PyLong_AsUnsignedLong(parts->dst_port);
    if (PyErr_Occurred() || sport > 0xFFFF || dport > 0xFFFF) goto decline;
    unsigned proto = PyUnicode_CompareWithASCIIString(parts->transport, "tcp") == 0   ? 6
                     : PyUnicode_CompareWithASCIIString(parts->transport, "udp") == 0 ? 17
                                                                                     : 0;
    if (!community_id_chars(src_text, sport, dst_text, dport, proto, 0, 0, parts->community)) goto decline;
    parts->ipv6 = strchr(src_text, ':') != NULL;
    return 0;
decline:
    PyErr_Clear();
    flow_parts_clear(parts);
    return 1;
error:
    flow_parts_clear(parts);
    return -1;
}

/* event_envelope(ts, dataset, flow, protocol, observer, ecs_version, module, data_stream) -> dict, or
 * None for a flow whose fields are not what decode makes (addresses in text, ports of 16 bits, a
 * transport name), or a time that is not a number: the Python envelope takes those. */
PyObject *event_envelope(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "event_envelope takes 8 arguments");
        return NULL;
    }
    double ts = PyFloat_AsDouble(args[0]);
    if (!isfinite(ts) || (ts == -1.0 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    FlowParts flow;
    int status = flow_parts(args[2], &flow);
    if (status != 0) return status > 0 ? Py_NewRef(Py_None) : NULL;
    PyObject *type_values[2] = {envelope_str[K_PROTOCOL], envelope_str[V_CONNECTION]};
    PyObject *category_values[1] = {envelope_str[V_NETWORK]};
    PyObject *result = dict_steal(
        8,
        (const int[]){K_TIMESTAMP, K_ECS, K_DATA_STREAM, K_EVENT, K_OBSERVER, K_SOURCE, K_DESTINATION, K_NETWORK},
        (PyObject *[]){
            iso_time_str(ts),
            dict_steal(1, (const int[]){K_VERSION}, (PyObject *[]){Py_NewRef(args[5])}),
            Py_NewRef(args[7]),
            dict_steal(5, (const int[]){K_KIND, K_CATEGORY, K_TYPE, K_DATASET, K_MODULE},
                       (PyObject *[]){Py_NewRef(envelope_str[V_EVENT]), list_of(1, category_values),
                                      list_of(2, type_values), Py_NewRef(args[1]), Py_NewRef(args[6])}),
            Py_NewRef(args[4]),
            dict_steal(2, (const int[]){K_IP, K_PORT}, (PyObject *[]){Py_NewRef(flow.src_ip), Py_NewRef(flow.src_port)}),
            dict_steal(2, (const int[]){K_IP, K_PORT}, (PyObject *[]){Py_NewRef(flow.dst_ip), Py_NewRef(flow.dst_port)}),
            dict_steal(4, (const int[]){K_TRANSPORT, K_PROTOCOL, K_TYPE, K_COMMUNITY_ID},
                       (PyObject *[]){Py_NewRef(flow.transport), Py_NewRef(args[3]),
                                      Py_NewRef(envelope_str[flow.ipv6 ? V_IPV6 : V_IPV4]),
                                      ascii_str(flow.community, COMMUNITY_LENGTH)}),
        });
    flow_parts_clear(&flow);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * sensor.output.ecs.EventBuilder.json_line for DNS and TLS events: the document written straight
 * as the JSON line orjson.dumps would make of EventBuilder's dict, without building the dict.
 */

static PyObject *json_dumps; /* orjson.dumps (bind_json): the values the writer does not spell itself */
static inline int pruned_empty(PyObject *item);

#define JSON_KEY(t, literal) text_add(t, literal, (Py_ssize_t)sizeof literal - 1)

/* `value` as JSON, as orjson writes it. */
static int json_value(Text *t, PyObject *value) {
    if (value == Py_None) return JSON_KEY(t, "null");
    if (value == Py_True) return JSON_KEY(t, "true");
    if (value == Py_False) return JSON_KEY(t, "false");
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        const char *text = (const char *)PyUnicode_DATA(value);
        Py_ssize_t n = PyUnicode_GET_LENGTH(value), i = 0;
        /* eight characters at a time (ASCII: every byte below 0x80): any control character, quote
         * or backslash among them stops the word loop where the byte loop finds it */
        for (; i + 8 <= n; i += 8) {
            uint64_t word;
            memcpy(&word, text + i, 8);
            const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
            uint64_t quote = word ^ (ones * '"'), slash = word ^ (ones * '\\');
            if (((word - ones * 0x20) | (quote - ones) | (slash - ones)) & highs) break;
        }
        while (i < n && (unsigned char)text[i] >= 0x20 && text[i] != '"' && text[i] != '\\') i++;
        if (i == n) { /* nothing to escape */
            if (text_reserve(t, n + 2) < 0) return -1;
            t->text[t->len++] = '"';
            memcpy(t->text + t->len, text, n);
            t->len += n;
            t->text[t->len++] = '"';
            return 0;
        }
    } else if (PyLong_CheckExact(value)) {
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (number == -1 && PyErr_Occurred()) return -1;
        if (!overflow) {
            char digits[24];
            int at = (int)sizeof digits;
            unsigned long long magnitude = number < 0 ? 0ULL - (unsigned long long)number : (unsigned long long)number;
            do digits[--at] = (char)('0' + magnitude % 10); while ((magnitude /= 10) != 0);
            if (number < 0) digits[--at] = '-';
            return text_add(t, digits + at, (Py_ssize_t)sizeof digits - at);
        }
    }
    if (json_dumps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_json() first");
        return -1;
    }
    PyObject *encoded = PyObject_CallOneArg(json_dumps, value);
    if (encoded == NULL) return -1;
    int status = PyBytes_Check(encoded) ? text_add(t, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded)) : -1;
    if (status < 0 && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "orjson.dumps gave no bytes");
    Py_DECREF(encoded);
    return status;
}

/* The attribute of a record as a new reference, by its interned name. */
static PyObject *field(PyObject *record, int key) { return slot_get(record, json_str[key], key); }

static int bytes_add(Text *t, PyObject *bytes) {
    return text_add(t, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* What an alert document (sensor.output.ecs.AlertBuilder) writes around its record's event: its
 * time, its own event object, related hosts, phi_egress members, message and rule. The Python
 * builder gives each part written (bytes) or its value. */
typedef struct {
    PyObject *stamp;                   /* @timestamp (str) */
    PyObject *head0, *head1, *head2;   /* bytes: up to event.severity, from event.dataset to event.start,
                                          from the end of event to the end of observer */
    PyObject *score, *event_id, *first, *last;
    PyObject *hosts;                   /* tuple of str: related.hosts */
    /* phi_egress's members: severity, alert_key, count, source_record, destination and summary (also
     * the message); the PHI host's member as written (bytes, or empty); the window's destinations (a
     * list of sensor.detect.engine.Destination, or None); vendor and BAA as written (bytes) */
    PyObject *severity, *alert_key, *count, *source_record, *destination, *summary;
    PyObject *phi_host, *destinations, *vendor_baa;
    PyObject *rule;                    /* bytes: the rule object */
    /* a tunnelled flow's: `,"vlan":...,"inner":...` at the end of network (bytes, or empty), and
     * phi_egress's `"tunnel":{...}` (bytes, empty where pruned away; None for a flow not tunnelled) */
    PyObject *network_tail, *tunnel;
} AlertParts;

static PyObject *destination_str[5]; /* host, count, first_seen, last_seen, health_data (interned) */
static const char *const destination_text[5] = {"host", "count", "first_seen", "last_seen", "health_data"};

/* phi_egress's members of an alert (no braces); 1 (declined) for a destination the document would
 * write otherwise (an empty host, count or flag, a time that is not a finite float). */
static int json_members(Text *t, const AlertParts *a) {
    if (JSON_KEY(t, "\"severity\":") < 0 || json_value(t, a->severity) < 0 || JSON_KEY(t, ",\"alert_key\":") < 0 ||
        json_value(t, a->alert_key) < 0 || JSON_KEY(t, ",\"count\":") < 0 || json_value(t, a->count) < 0 ||
        JSON_KEY(t, ",\"first_seen\":") < 0 || json_value(t, a->first) < 0 || JSON_KEY(t, ",\"last_seen\":") < 0 ||
        json_value(t, a->last) < 0 || JSON_KEY(t, ",\"source_record\":") < 0 || json_value(t, a->source_record) < 0 ||
        JSON_KEY(t, ",\"destination\":") < 0 || json_value(t, a->destination) < 0 ||
        JSON_KEY(t, ",\"summary\":") < 0 || json_value(t, a->summary) < 0 || bytes_add(t, a->phi_host) < 0)
        return -1;
    Py_ssize_t count = a->destinations == Py_None ? 0 : PyList_GET_SIZE(a->destinations);
    if (count && JSON_KEY(t, ",\"destinations\":[") < 0) return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(a->destinations, i), *values[5] = {NULL};
        int status = 0;
        for (int k = 0; k < 5 && status == 0; k++)
            status = (values[k] = PyObject_GetAttr(entry, destination_str[k])) == NULL ? -1 : 0;
        for (int k = 0; k < 5 && status == 0; k++)
            if (k == 2 || k == 3) {
                if (!PyFloat_CheckExact(values[k]) || !isfinite(PyFloat_AS_DOUBLE(values[k]))) status = 1;
            } else if (pruned_empty(values[k]) || (k == 0 && !PyUnicode_CheckExact(values[k])))
                status = 1;
        if (status == 0) {
            char first[ISO_TIME_LENGTH], last[ISO_TIME_LENGTH];
            iso_time_text(PyFloat_AS_DOUBLE(values[2]), first);
            iso_time_text(PyFloat_AS_DOUBLE(values[3]), last);
            status = ((i && JSON_KEY(t, ",") < 0) || JSON_KEY(t, "{\"host\":") < 0 || json_value(t, values[0]) < 0 ||
                      JSON_KEY(t, ",\"count\":") < 0 || json_value(t, values[1]) < 0 ||
                      JSON_KEY(t, ",\"first_seen\":\"") < 0 || text_add(t, first, ISO_TIME_LENGTH) < 0 ||
                      JSON_KEY(t, "\",\"last_seen\":\"") < 0 || text_add(t, last, ISO_TIME_LENGTH) < 0 ||
                      JSON_KEY(t, "\",\"health_data\":") < 0 || json_value(t, values[4]) < 0 || JSON_KEY(t, "}") < 0)
                         ? -1
                         : 0;
        }
        for (int k = 0; k < 5; k++) Py_XDECREF(values[k]);
        if (status != 0) return status;
    }
    if (count && JSON_KEY(t, "]") < 0) return -1;
    return bytes_add(t, a->vendor_baa);
}

/* `{"@timestamp":...,<prefix>,"source":...,"destination":...,"network":...` and the flow's parts;
 * 1 (nothing written) for what the Python envelope takes. An alert's (`alert` not NULL) time and
 * event object take the place of the record's time and the prefix. */
static int json_envelope(Text *t, PyObject *record, PyObject *prefix, PyObject *protocol, PyObject *domain,
                         FlowParts *flow, const AlertParts *alert) {
    PyObject *ts_object = field(record, J_TS), *flow_object = ts_object ? field(record, J_FLOW) : NULL;
    if (flow_object == NULL) {
        Py_XDECREF(ts_object);
        return -1;
    }
    double ts = PyFloat_Check(ts_object) ? PyFloat_AS_DOUBLE(ts_object) : NAN;
    int status = (alert != NULL || (isfinite(ts) && PyBytes_Check(prefix))) ? flow_parts(flow_object, flow) : 1;
    Py_DECREF(ts_object);
    Py_DECREF(flow_object);
    if (status != 0) return status;
    if (alert != NULL && pruned_empty(flow->transport)) { /* an alert leaves it out: the Python builder */
        flow_parts_clear(flow);
        return 1;
    }
    char time_text[ISO_TIME_LENGTH];
    if (alert == NULL) iso_time_text(ts, time_text);
    if ((alert == NULL
             ? (JSON_KEY(t, "{\"@timestamp\":\"") < 0 || text_add(t, time_text, ISO_TIME_LENGTH) < 0 ||
                JSON_KEY(t, "\",") < 0 || text_add(t, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix)) < 0)
             : (JSON_KEY(t, "{\"@timestamp\":") < 0 || json_value(t, alert->stamp) < 0 || JSON_KEY(t, ",") < 0 ||
                bytes_add(t, alert->head0) < 0 || json_value(t, alert->score) < 0 || JSON_KEY(t, ",\"id\":") < 0 ||
                json_value(t, alert->event_id) < 0 || bytes_add(t, alert->head1) < 0 ||
                json_value(t, alert->first) < 0 || JSON_KEY(t, ",\"end\":") < 0 || json_value(t, alert->last) < 0 ||
                bytes_add(t, alert->head2) < 0)) ||
        JSON_KEY(t, ",\"source\":{\"ip\":") < 0 || json_value(t, flow->src_ip) < 0 || JSON_KEY(t, ",\"port\":") < 0 ||
        json_value(t, flow->src_port) < 0 || JSON_KEY(t, "},\"destination\":{\"ip\":") < 0 ||
        json_value(t, flow->dst_ip) < 0 || JSON_KEY(t, ",\"port\":") < 0 || json_value(t, flow->dst_port) < 0 ||
        (domain != Py_None && (JSON_KEY(t, ",\"domain\":") < 0 || json_value(t, domain) < 0)) ||
        JSON_KEY(t, "},\"network\":{\"transport\":") < 0 || json_value(t, flow->transport) < 0 ||
        JSON_KEY(t, ",\"protocol\":") < 0 || json_value(t, protocol) < 0 ||
        (flow->ipv6 ? JSON_KEY(t, ",\"type\":\"ipv6\"") : JSON_KEY(t, ",\"type\":\"ipv4\"")) < 0 ||
        JSON_KEY(t, ",\"community_id\":\"") < 0 || text_add(t, flow->community, COMMUNITY_LENGTH) < 0 ||
        JSON_KEY(t, "\"") < 0 ||
        (alert != NULL && bytes_add(t, alert->network_tail) < 0) || JSON_KEY(t, "}") < 0) {
        flow_parts_clear(flow);
        return -1;
    }
    return 0;
}

/* `,"related":{"ip":[source, destination, extra...],"hosts":[hosts...]}` (no hosts without one);
 * ecs._related_ips: an extra address already listed is not repeated. */
static int json_related(Text *t, const FlowParts *flow, PyObject *const *extra, Py_ssize_t extra_count,
                        PyObject *const *hosts, Py_ssize_t host_count) {
    PyObject *ips[2 + 64];
    Py_ssize_t count = 0;
    ips[count++] = flow->src_ip;
    ips[count++] = flow->dst_ip;
    for (Py_ssize_t i = 0; i < extra_count && count < (Py_ssize_t)(sizeof ips / sizeof *ips); i++) {
        int seen = 0;
        for (Py_ssize_t j = 0; j < count && !seen; j++) {
            seen = PyObject_RichCompareBool(ips[j], extra[i], Py_EQ);
            if (seen < 0) return -1;
        }
        if (!seen) ips[count++] = extra[i];
    }
    if (JSON_KEY(t, ",\"related\":{\"ip\":[") < 0) return -1;
    for (Py_ssize_t i = 0; i < count; i++)
        if ((i && JSON_KEY(t, ",") < 0) || json_value(t, ips[i]) < 0) return -1;
    if (JSON_KEY(t, "]") < 0 || (host_count && JSON_KEY(t, ",\"hosts\":[") < 0)) return -1;
    for (Py_ssize_t i = 0; i < host_count; i++)
        if ((i && JSON_KEY(t, ",") < 0) || json_value(t, hosts[i]) < 0) return -1;
    return (host_count && JSON_KEY(t, "]") < 0) ? -1 : JSON_KEY(t, "}");
}

/* `,"phi_egress":{...}` of an alert whose event has none of its own but a tunnel's. */
static int json_egress(Text *t, const AlertParts *alert) {
    if (JSON_KEY(t, ",\"phi_egress\":{") < 0 ||
        (alert->tunnel != Py_None && PyBytes_GET_SIZE(alert->tunnel) &&
         (bytes_add(t, alert->tunnel) < 0 || JSON_KEY(t, ",") < 0)))
        return -1;
    int status = json_members(t, alert);
    return status != 0 ? status : JSON_KEY(t, "}");
}

/* The end of a document: an event's `}` and newline; an alert's related hosts first, then its message,
 * rule and (`members` not 0: a document whose event has no phi_egress) phi_egress; that of a
 * tunnelled flow (its tunnel, in the event's phi_egress) before the message. */
static int json_end(Text *t, const FlowParts *flow, PyObject *const *extra, Py_ssize_t extra_count, PyObject *host,
                    const AlertParts *alert, int members) {
    if (alert == NULL)
        return (json_related(t, flow, extra, extra_count, &host, host != Py_None) < 0 || JSON_KEY(t, "}\n") < 0) ? -1
                                                                                                                : 0;
    if (json_related(t, flow, extra, extra_count, &PyTuple_GET_ITEM(alert->hosts, 0), PyTuple_GET_SIZE(alert->hosts)) < 0)
        return -1;
    int early = members && alert->tunnel != Py_None, status;
    if (early && (status = json_egress(t, alert)) != 0) return status;
    if (JSON_KEY(t, ",\"message\":") < 0 || json_value(t, alert->summary) < 0 || JSON_KEY(t, ",\"rule\":") < 0 ||
        bytes_add(t, alert->rule) < 0)
        return -1;
    if (members && !early && (status = json_egress(t, alert)) != 0) return status;
    return JSON_KEY(t, "}\n");
}

static PyObject *json_line_result(Text *t, int status) {
    PyObject *line = status == 0 ? PyBytes_FromStringAndSize(t->text, t->len)
                     : status > 0 ? Py_NewRef(Py_None)
                                  : NULL;
    PyMem_Free(t->text);
    return line;
}

/* The line of a DNS event, or (`alert` not NULL) of an alert document on one (see dns_event_line),
 * added to `t`: 0, 1 (declined: what was added is to be dropped) or -1 (an error). */
static int dns_write(Text *t, PyObject *record, PyObject *registered, PyObject *prefix, const AlertParts *alert) {
    FlowParts flow = {0};
    PyObject *fields[6] = {NULL}; /* id, name, qtype, response_seen, rcode, answers */
    PyObject *resolved[64];
    Py_ssize_t resolved_count = 0;
    int status = json_envelope(t, record, prefix, json_str[J_DNS], Py_None, &flow, alert);
    if (status != 0) return status;
    static const int keys[6] = {J_ID, J_NAME, J_QTYPE, J_RESPONSE_SEEN, J_RCODE, J_ANSWERS};
    for (int i = 0; i < 6; i++)
        if ((fields[i] = field(record, keys[i])) == NULL) goto error;
    int answered = PyObject_IsTrue(fields[3]);
    if (answered < 0 || !PyTuple_Check(fields[5]) || !PyLong_CheckExact(fields[0])) goto decline_or_error;
    int named = PyObject_IsTrue(fields[1]), overflow = 0;
    long long dns_id = PyLong_AsLongLongAndOverflow(fields[0], &overflow);
    if (named < 0 || (dns_id == -1 && PyErr_Occurred())) goto error;
    if (overflow || !named) goto decline; /* the root's name is written by the Python builder */
    /* an alert document leaves out what is empty: the Python builder writes those */
    if (alert != NULL && (pruned_empty(fields[2]) || (answered && pruned_empty(fields[4])))) goto decline;
    /* dns.id is an ECS keyword: the number as a string (json_value's digits, quoted) */
    if (JSON_KEY(t, ",\"dns\":{\"id\":\"") < 0 || json_value(t, fields[0]) < 0 || JSON_KEY(t, "\"") < 0 ||
        (answered ? JSON_KEY(t, ",\"type\":\"answer\"") : JSON_KEY(t, ",\"type\":\"query\"")) < 0 ||
        JSON_KEY(t, ",\"question\":{\"name\":") < 0 || json_value(t, fields[1]) < 0 ||
        JSON_KEY(t, ",\"type\":") < 0 || json_value(t, fields[2]) < 0 ||
        (registered != Py_None && (JSON_KEY(t, ",\"registered_domain\":") < 0 || json_value(t, registered) < 0)) ||
        JSON_KEY(t, "}") < 0)
        goto error;
    if (answered) {
        if (JSON_KEY(t, ",\"response_code\":") < 0 || json_value(t, fields[4]) < 0) goto error;
        Py_ssize_t count = PyTuple_GET_SIZE(fields[5]);
        if (count > 64) goto decline_or_error; /* the Python builder takes long answer lists */
        if (count && JSON_KEY(t, ",\"answers\":[") < 0) goto error;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *answer = PyTuple_GET_ITEM(fields[5], i), *parts[4] = {NULL};
            static const int answer_keys[4] = {J_NAME, J_TYPE, J_DATA, J_TTL};
            int ok = 1;
            for (int k = 0; k < 4 && ok; k++) ok = (parts[k] = field(answer, answer_keys[k])) != NULL;
            ok = ok && PyUnicode_Check(parts[1]) && PyUnicode_Check(parts[0]) && PyUnicode_Check(parts[2]) &&
                 PyUnicode_GET_LENGTH(parts[0]) > 0 && PyUnicode_GET_LENGTH(parts[2]) > 0 && /* else the Python builder */
                 (alert == NULL || (PyUnicode_GET_LENGTH(parts[1]) > 0 && !pruned_empty(parts[3])));
            /* ecs._is_address: an A answer with a dot, an AAAA answer with a colon (not decode's hex) */
            if (ok && ((PyUnicode_CompareWithASCIIString(parts[1], "A") == 0 &&
                        PyUnicode_FindChar(parts[2], '.', 0, PyUnicode_GET_LENGTH(parts[2]), 1) >= 0) ||
                       (PyUnicode_CompareWithASCIIString(parts[1], "AAAA") == 0 &&
                        PyUnicode_FindChar(parts[2], ':', 0, PyUnicode_GET_LENGTH(parts[2]), 1) >= 0)))
                resolved[resolved_count++] = Py_NewRef(parts[2]);
            ok = ok && (i == 0 || JSON_KEY(t, ",") == 0) && JSON_KEY(t, "{\"name\":") == 0 &&
                 json_value(t, parts[0]) == 0 && JSON_KEY(t, ",\"type\":") == 0 && json_value(t, parts[1]) == 0 &&
                 JSON_KEY(t, ",\"data\":") == 0 && json_value(t, parts[2]) == 0 && JSON_KEY(t, ",\"ttl\":") == 0 &&
                 json_value(t, parts[3]) == 0 && JSON_KEY(t, "}") == 0;
            for (int k = 0; k < 4; k++) Py_XDECREF(parts[k]);
            if (!ok) {
                if (!PyErr_Occurred()) goto decline;
                goto error;
            }
        }
        if (count && JSON_KEY(t, "]") < 0) goto error;
        if (resolved_count) {
            if (JSON_KEY(t, ",\"resolved_ip\":[") < 0) goto error;
            for (Py_ssize_t i = 0; i < resolved_count; i++)
                if ((i && JSON_KEY(t, ",") < 0) || json_value(t, resolved[i]) < 0) goto error;
            if (JSON_KEY(t, "]") < 0) goto error;
        }
    }
    if (JSON_KEY(t, "}") < 0 ||
        (status = json_end(t, &flow, resolved, resolved_count, fields[1], alert, alert != NULL)) < 0)
        goto error;
    if (status > 0) goto decline;
    status = 0;
    goto done;
decline_or_error:
    if (PyErr_Occurred()) goto error;
decline:
    status = 1;
    goto done;
error:
    status = -1;
done:
    for (int i = 0; i < 6; i++) Py_XDECREF(fields[i]);
    for (Py_ssize_t i = 0; i < resolved_count; i++) Py_DECREF(resolved[i]);
    flow_parts_clear(&flow);
    return status;
}

static PyObject *dns_line(PyObject *record, PyObject *registered, PyObject *prefix, const AlertParts *alert) {
    Text t = {NULL, 0, 0};
    return json_line_result(&t, dns_write(&t, record, registered, prefix, alert));
}

/* dns_event_line(record, registered_domain or None, prefix) -> bytes, or None for what the Python
 * builder takes. `prefix`: `"ecs":...,"event":...,"observer":...` as orjson writes them. */
PyObject *dns_event_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "dns_event_line takes 3 arguments");
        return NULL;
    }
    return dns_line(args[0], args[1], args[2], NULL);
}

static int tls_write(Text *t, PyObject *record, PyObject *domain, PyObject *prefix, const AlertParts *alert);

/* `n` bytes put into `t` at `at`. */
static int text_insert(Text *t, Py_ssize_t at, const char *s, Py_ssize_t n) {
    if (text_reserve(t, n) < 0) return -1;
    memmove(t->text + at + n, t->text + at, (size_t)(t->len - at));
    memcpy(t->text + at, s, (size_t)n);
    t->len += n;
    return 0;
}

/* Where `key` last starts in t's text from `from` on, or -1. */
static Py_ssize_t text_rfind(const Text *t, Py_ssize_t from, const char *key, Py_ssize_t n) {
    for (Py_ssize_t at = t->len - n; at >= from; at--)
        if (memcmp(t->text + at, key, (size_t)n) == 0) return at;
    return -1;
}

/* EventBuilder._with_tunnel on the line just written to `t` from `mark`: the tunnel's network
 * fields (`network`, bytes) after the Community ID, the end of `network`; its `"tunnel":...`
 * (`own`) at the end of the TLS event's phi_egress, before `related`, or for DNS as a new last
 * field. No key searched for can be found inside a string (a quote there is escaped). 1 for a
 * line not as expected (json_line's then). */
static int tunnel_splice(Text *t, Py_ssize_t mark, PyObject *network, PyObject *own, int has_own) {
    static const char community[] = ",\"community_id\":\"";
    Py_ssize_t key = sizeof community - 1, at = -1;
    for (Py_ssize_t i = mark; at < 0 && i + key <= t->len; i++)
        if (memcmp(t->text + i, community, (size_t)key) == 0) at = i;
    if (at < 0 || at + key + COMMUNITY_LENGTH + 2 > t->len || t->text[at + key + COMMUNITY_LENGTH] != '"' ||
        t->text[at + key + COMMUNITY_LENGTH + 1] != '}')
        return 1;
    if (PyBytes_GET_SIZE(network) &&
        text_insert(t, at + key + COMMUNITY_LENGTH + 1, PyBytes_AS_STRING(network), PyBytes_GET_SIZE(network)) < 0)
        return -1;
    if (!has_own) { /* `,"phi_egress":{own}` before the document's closing brace */
        t->len -= 2;
        return (JSON_KEY(t, ",\"phi_egress\":{") < 0 || bytes_add(t, own) < 0 || JSON_KEY(t, "}}\n") < 0) ? -1 : 0;
    }
    Py_ssize_t related = text_rfind(t, mark, ",\"related\":{", 12);
    if (related <= mark) return 1;
    return (text_insert(t, related - 1, PyBytes_AS_STRING(own), PyBytes_GET_SIZE(own)) < 0 ||
            text_insert(t, related - 1, ",", 1) < 0)
               ? -1
               : 0;
}

/* The line of an HTTP request's event: the envelope, the request's own fields as the Python builder
 * writes them (`fields`: `,"url":...,"http":...,"user_agent":...`) and related; as dns_write. */
static int http_write(Text *t, PyObject *record, PyObject *prefix, PyObject *fields, PyObject *domain, PyObject *host) {
    FlowParts flow = {0};
    int status = json_envelope(t, record, prefix, json_str[J_HTTP], domain, &flow, NULL);
    if (status != 0) return status;
    int named = PyObject_IsTrue(host);
    status = named < 0 || bytes_add(t, fields) < 0 ? -1 : json_end(t, &flow, NULL, 0, named ? host : Py_None, NULL, 0);
    flow_parts_clear(&flow);
    return status;
}

/* The event of one record for event_lines: 0 written to `t`, 1 for what EventBuilder.json_line
 * takes (nothing written), -1 on error. */
static int event_write(Text *t, PyObject *record, PyObject *const *args) {
    PyTypeObject *type = Py_TYPE(record);
    if (type != (PyTypeObject *)args[1] && type != (PyTypeObject *)args[2] && type != (PyTypeObject *)args[10]) return 1;
    PyObject *flow = field(record, J_FLOW), *parts = NULL;
    if (flow == NULL) return -1;
    if (Py_IS_TYPE(flow, (PyTypeObject *)args[8])) { /* a tunnelled flow: its tunnel's parts (_tunnel_parts) */
        PyObject *tunnel = slot_get(flow, event_str[E_TUNNEL], SLOT_EVENT + E_TUNNEL);
        parts = tunnel ? PyObject_CallOneArg(args[9], tunnel) : NULL;
        Py_XDECREF(tunnel);
        if (parts == NULL) {
            Py_DECREF(flow);
            return -1;
        }
    }
    int plain = Py_IS_TYPE(flow, (PyTypeObject *)args[3]) ||
                (parts != NULL && PyTuple_CheckExact(parts) && PyTuple_GET_SIZE(parts) == 2 &&
                 PyBytes_CheckExact(PyTuple_GET_ITEM(parts, 0)) && PyBytes_CheckExact(PyTuple_GET_ITEM(parts, 1)));
    Py_DECREF(flow);
    if (!plain) {
        Py_XDECREF(parts);
        return 1;
    }
    Py_ssize_t mark = t->len;
    int status;
    if (type == (PyTypeObject *)args[1]) { /* `registered_domain(name) or None` */
        PyObject *prefix = PyDict_GetItemWithError(args[6], json_str[J_DNS]), *name = field(record, J_NAME);
        PyObject *registered = name && prefix ? PyObject_CallOneArg(args[4], name) : NULL;
        Py_XDECREF(name);
        if (registered == NULL) {
            Py_XDECREF(parts);
            return PyErr_Occurred() ? -1 : 1;
        }
        int truth = PyObject_IsTrue(registered);
        status = truth < 0 ? -1 : dns_write(t, record, truth ? registered : Py_None, prefix, NULL);
        Py_DECREF(registered);
    } else if (type == (PyTypeObject *)args[10]) { /* (fields, destination.domain) of http_fields */
        PyObject *prefix = PyDict_GetItemWithError(args[6], json_str[J_HTTP]);
        PyObject *own = prefix ? PyObject_CallOneArg(args[11], record) : NULL, *host = NULL;
        if (own == NULL) {
            Py_XDECREF(parts);
            return PyErr_Occurred() ? -1 : 1;
        }
        if (PyTuple_CheckExact(own) && PyTuple_GET_SIZE(own) == 2 && PyBytes_CheckExact(PyTuple_GET_ITEM(own, 0)) &&
            (PyTuple_GET_ITEM(own, 1) == Py_None || PyUnicode_CheckExact(PyTuple_GET_ITEM(own, 1))))
            status = (host = slot_get(record, event_str[E_HOST], SLOT_EVENT + E_HOST)) == NULL
                         ? -1
                         : http_write(t, record, prefix, PyTuple_GET_ITEM(own, 0), PyTuple_GET_ITEM(own, 1), host);
        else
            status = 1;
        Py_XDECREF(host);
        Py_DECREF(own);
    } else { /* the server name, unless it is an ECH cover name (is_cover_name) */
        PyObject *protocol = field(record, J_PROTOCOL), *name = NULL, *ech = NULL, *cover = NULL;
        PyObject *prefix = protocol ? PyDict_GetItemWithError(args[6], protocol) : NULL, *domain = Py_None;
        Py_XDECREF(protocol);
        if (prefix == NULL) {
            Py_XDECREF(parts);
            return PyErr_Occurred() ? -1 : 1;
        }
        int named = (name = field(record, J_SERVER_NAME)) == NULL ? -1 : PyObject_IsTrue(name), covered = 0;
        if (named > 0) {
            int encrypted = (ech = field(record, J_ECH)) == NULL ? -1 : PyObject_IsTrue(ech);
            covered = encrypted <= 0 ? encrypted
                                     : (cover = PyObject_CallOneArg(args[5], name)) == NULL ? -1 : PyObject_IsTrue(cover);
            if (covered == 0) domain = name;
        }
        status = named < 0 || covered < 0 ? -1 : tls_write(t, record, domain, prefix, NULL);
        Py_XDECREF(name);
        Py_XDECREF(ech);
        Py_XDECREF(cover);
    }
    if (status == 0 && parts != NULL) /* (a TLS event has a phi_egress of its own) */
        status = tunnel_splice(t, mark, PyTuple_GET_ITEM(parts, 0), PyTuple_GET_ITEM(parts, 1), type == (PyTypeObject *)args[2]);
    Py_XDECREF(parts);
    if (status > 0) t->len = mark;
    return status;
}

/* event_lines(records, DnsQuery, TlsHello, Flow, registered_domain, is_cover_name, prefixes, json_line,
 * TunnelledFlow, tunnel_parts, HttpRequest, http_fields) -> bytes: sensor.output.ecs.EventBuilder.json_lines,
 * the events of a list of records as JSON lines in one block, in order. DNS and TLS events are
 * written here as dns_event_line and tls_event_line write them (`prefixes`: protocol -> the line
 * prefix), HTTP events with the request's own fields as http_fields writes them; those of a
 * tunnelled flow with its tunnel's parts (EventBuilder._tunnel_parts) spliced in as json_line does.
 * json_line gives each other record's line (and those the writers decline). */
PyObject *event_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12 || !PyList_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2]) ||
        !PyType_Check(args[3]) || !PyDict_Check(args[6]) || !PyType_Check(args[8]) || !PyType_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError, "event_lines takes a list of records, 3 classes, 2 callables, a dict, "
                                         "a callable, a class, a callable, a class and a callable");
        return NULL;
    }
    for (int i = 0; i < E_COUNT; i++)
        if (event_str[i] == NULL && (event_str[i] = PyUnicode_InternFromString(event_text[i])) == NULL) return NULL;
    /* one buffer kept from block to block (a callback that comes back here takes one of its own) */
    static Text kept = {NULL, 0, 0};
    static int busy = 0;
    Text own = {NULL, 0, 0}, *t = busy ? &own : &kept;
    int was_busy = busy;
    busy = 1;
    t->len = 0;
    PyObject *records = args[0], *block = NULL;
    int status = 0;
    for (Py_ssize_t i = 0; status >= 0 && i < PyList_GET_SIZE(records); i++) {
        PyObject *record = Py_NewRef(PyList_GET_ITEM(records, i));
        status = event_write(t, record, args);
        if (status > 0) { /* json_line's */
            PyObject *line = PyObject_CallOneArg(args[7], record);
            status = line == NULL ? -1 : PyBytes_Check(line) ? bytes_add(t, line) : -1;
            if (line != NULL && !PyBytes_Check(line)) PyErr_SetString(PyExc_TypeError, "json_line gave no bytes");
            Py_XDECREF(line);
        }
        Py_DECREF(record);
    }
    if (status >= 0) block = PyBytes_FromStringAndSize(t->text, t->len);
    else if (!PyErr_Occurred()) PyErr_NoMemory();
    busy = was_busy;
    if (t == &own || t->cap > (8 << 20)) { /* not kept: another's, or grown for a rare huge block */
        PyMem_Free(t->text);
        *t = (Text){NULL, 0, 0};
    }
    return block;
}

/* The line of a TLS or QUIC event, or (`alert` not NULL) of an alert document on one (see
 * tls_event_line), added to `t`: as dns_write. */
static int tls_write(Text *t, PyObject *record, PyObject *domain, PyObject *prefix, const AlertParts *alert) {
    PyObject *fields[5] = {NULL}; /* protocol, server_name, alpn, ech, version */
    static const int keys[5] = {J_PROTOCOL, J_SERVER_NAME, J_ALPN, J_ECH, J_VERSION};
    FlowParts flow = {0};
    int status;
    for (int i = 0; i < 5; i++)
        if ((fields[i] = field(record, keys[i])) == NULL) goto error;
    if (!PyTuple_Check(fields[2])) goto decline;
    if (alert != NULL) /* an alert document leaves out empty ALPN names: the Python builder writes those */
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields[2]); i++)
            if (pruned_empty(PyTuple_GET_ITEM(fields[2], i))) goto decline;
    status = json_envelope(t, record, prefix, fields[0], domain, &flow, alert);
    if (status != 0) goto done;
    int named = PyObject_IsTrue(fields[1]), versioned = PyObject_IsTrue(fields[4]);
    if (named < 0 || versioned < 0) goto error;
    /* ECS leaves out what is not known: no empty tls.client, no empty tls */
    if ((named || versioned) && JSON_KEY(t, ",\"tls\":{") < 0) goto error;
    if (named && (JSON_KEY(t, "\"client\":{\"server_name\":") < 0 || json_value(t, fields[1]) < 0 ||
                  JSON_KEY(t, "}") < 0))
        goto error;
    if (versioned && ((named && JSON_KEY(t, ",") < 0) || JSON_KEY(t, "\"version\":") < 0 ||
                      json_value(t, fields[4]) < 0 || JSON_KEY(t, ",\"version_protocol\":\"tls\"") < 0))
        goto error;
    if (((named || versioned) && JSON_KEY(t, "}") < 0) || JSON_KEY(t, ",\"phi_egress\":{\"tls\":{") < 0) goto error;
    Py_ssize_t alpn_count = PyTuple_GET_SIZE(fields[2]);
    if (alpn_count && JSON_KEY(t, "\"alpn\":[") < 0) goto error;
    for (Py_ssize_t i = 0; i < alpn_count; i++)
        if ((i && JSON_KEY(t, ",") < 0) || json_value(t, PyTuple_GET_ITEM(fields[2], i)) < 0) goto error;
    if ((alpn_count && JSON_KEY(t, "],") < 0) || JSON_KEY(t, "\"ech\":") < 0 || json_value(t, fields[3]) < 0 ||
        JSON_KEY(t, "}") < 0)
        goto error;
    if (alert != NULL && alert->tunnel != Py_None && PyBytes_GET_SIZE(alert->tunnel) &&
        (JSON_KEY(t, ",") < 0 || bytes_add(t, alert->tunnel) < 0))
        goto error;
    if (alert != NULL && (JSON_KEY(t, ",") < 0 || (status = json_members(t, alert)) < 0)) goto error;
    if (alert != NULL && status > 0) goto decline;
    if (JSON_KEY(t, "}") < 0 || json_end(t, &flow, NULL, 0, named ? fields[1] : Py_None, alert, 0) < 0) goto error;
    status = 0;
    goto done;
decline:
    status = 1;
    goto done;
error:
    status = -1;
done:
    for (int i = 0; i < 5; i++) Py_XDECREF(fields[i]);
    flow_parts_clear(&flow);
    return status;
}

static PyObject *tls_line(PyObject *record, PyObject *domain, PyObject *prefix, const AlertParts *alert) {
    Text t = {NULL, 0, 0};
    return json_line_result(&t, tls_write(&t, record, domain, prefix, alert));
}

/* tls_event_line(record, destination_domain or None, prefix) -> bytes, or None for what the Python
 * builder takes. */
PyObject *tls_event_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "tls_event_line takes 3 arguments");
        return NULL;
    }
    return tls_line(args[0], args[1], args[2], NULL);
}

/* The line of an alert document on an HTTP request: the envelope, the request's own fields as
 * the Python builder wrote them (`middle`: `,"url":...,"http":...,"user_agent":...`), related,
 * message, rule and phi_egress (a tunnelled flow's before the message, as a lookup's). */
static PyObject *http_alert_line(PyObject *record, PyObject *domain, PyObject *middle, const AlertParts *alert) {
    Text t = {NULL, 0, 0};
    FlowParts flow = {0};
    int status = json_envelope(&t, record, NULL, json_str[J_HTTP], domain, &flow, alert);
    if (status == 0) {
        status = bytes_add(&t, middle) < 0 ? -1 : json_end(&t, &flow, NULL, 0, Py_None, alert, 1);
        flow_parts_clear(&flow);
    }
    return json_line_result(&t, status);
}

/* alert_line(kind, record, domain, stamp, head0, score, event_id, head1, first, last, head2, hosts,
 * severity, alert_key, count, source_record, destination, summary, phi_host, destinations,
 * vendor_baa, rule, network_tail, tunnel, middle) -> sensor.output.ecs.AlertBuilder.line_py's
 * line of an alert document on a DNS lookup (DnsQuery, `kind` 0), a TLS or QUIC hello (TlsHello,
 * 1) or an HTTP request (HttpRequest, 2, its own fields written in `middle`, bytes; else None),
 * or None for what the Python builder takes. `domain`: a lookup's registered domain, a hello's or
 * request's destination.domain (or None); the other parts as AlertParts says. */
PyObject *alert_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 25) {
        PyErr_SetString(PyExc_TypeError, "alert_line takes 25 arguments");
        return NULL;
    }
    AlertParts alert = {
        .stamp = args[3], .head0 = args[4], .score = args[5], .event_id = args[6], .head1 = args[7],
        .first = args[8], .last = args[9], .head2 = args[10], .hosts = args[11], .severity = args[12],
        .alert_key = args[13], .count = args[14], .source_record = args[15], .destination = args[16],
        .summary = args[17], .phi_host = args[18], .destinations = args[19], .vendor_baa = args[20], .rule = args[21],
        .network_tail = args[22], .tunnel = args[23],
    };
    if (!PyBytes_Check(alert.head0) || !PyBytes_Check(alert.head1) || !PyBytes_Check(alert.head2) ||
        !PyTuple_Check(alert.hosts) || !PyBytes_Check(alert.phi_host) || !PyBytes_Check(alert.vendor_baa) ||
        !PyBytes_Check(alert.rule) || (alert.destinations != Py_None && !PyList_CheckExact(alert.destinations)) ||
        !PyBytes_Check(alert.network_tail) || (alert.tunnel != Py_None && !PyBytes_Check(alert.tunnel)))
        Py_RETURN_NONE;
    long kind = PyLong_Check(args[0]) ? PyLong_AsLong(args[0]) : -1;
    if (kind == -1 && PyErr_Occurred()) return NULL;
    if (kind == 2) {
        if (!PyBytes_Check(args[24])) Py_RETURN_NONE;
        return http_alert_line(args[1], args[2], args[24], &alert);
    }
    if ((kind != 0 && kind != 1) || args[24] != Py_None) Py_RETURN_NONE;
    return kind ? tls_line(args[1], args[2], NULL, &alert) : dns_line(args[1], args[2], NULL, &alert);
}

/* ---------------------------------------------------------------------------------------------
 * prune: sensor.output.ecs.prune_py, without None, "", [] and {}. A dict or list in which nothing
 * is left out is given back as it is, not copied (the reference copies every one: equal values).
 * Declines (None) a value holding any other type than str, int, float, bool, None, tuple, dict and
 * list, a key that is not a str, or nesting deeper than PRUNE_DEPTH: those keep the reference's
 * semantics (a subclass's own items() or __ne__, a key's own __hash__, its recursion limit).
 */

#define PRUNE_DEPTH 64

/* 1 when the pruned value is left out, 0 when kept. */
static inline int pruned_empty(PyObject *item) {
    if (item == Py_None) return 1;
    if (PyUnicode_CheckExact(item)) return PyUnicode_GET_LENGTH(item) == 0;
    if (PyDict_CheckExact(item)) return PyDict_GET_SIZE(item) == 0;
    if (PyList_CheckExact(item)) return PyList_GET_SIZE(item) == 0;
    return 0;
}

/* A new dict of the first `count` items of `dict`. */
static PyObject *dict_head(PyObject *dict, Py_ssize_t count) {
    PyObject *out = PyDict_New(), *key, *item;
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; out != NULL && i < count && PyDict_Next(dict, &pos, &key, &item); i++)
        if (PyDict_SetItem(out, key, item) < 0) Py_CLEAR(out);
    return out;
}

/* A new reference to the pruned value; NULL with no error set to decline, NULL with one on error. */
static PyObject *prune_value(PyObject *value, int depth) {
    if (PyUnicode_CheckExact(value) || PyLong_CheckExact(value) || PyFloat_CheckExact(value) ||
        PyBool_Check(value) || value == Py_None || PyTuple_CheckExact(value))
        return Py_NewRef(value);
    if (depth >= PRUNE_DEPTH) return NULL;
    PyObject *out = NULL; /* made at the first item that changes */
    if (PyDict_CheckExact(value)) {
        PyObject *key, *item;
        Py_ssize_t pos = 0;
        for (Py_ssize_t index = 0; PyDict_Next(value, &pos, &key, &item); index++) {
            if (!PyUnicode_CheckExact(key)) goto fail;
            PyObject *kept = prune_value(item, depth + 1);
            if (kept == NULL) goto fail;
            int drop = pruned_empty(kept);
            if (out == NULL && (drop || kept != item) && (out = dict_head(value, index)) == NULL) {
                Py_DECREF(kept);
                goto fail;
            }
            int status = out != NULL && !drop ? PyDict_SetItem(out, key, kept) : 0;
            Py_DECREF(kept);
            if (status < 0) goto fail;
        }
        return out != NULL ? out : Py_NewRef(value);
    }
    if (PyList_CheckExact(value)) {
        for (Py_ssize_t index = 0; index < PyList_GET_SIZE(value); index++) {
            PyObject *item = PyList_GET_ITEM(value, index), *kept = prune_value(item, depth + 1);
            if (kept == NULL) goto fail;
            int drop = pruned_empty(kept);
            if (out == NULL && (drop || kept != item) && (out = PyList_GetSlice(value, 0, index)) == NULL) {
                Py_DECREF(kept);
                goto fail;
            }
            int status = out != NULL && !drop ? PyList_Append(out, kept) : 0;
            Py_DECREF(kept);
            if (status < 0) goto fail;
        }
        return out != NULL ? out : Py_NewRef(value);
    }
    return NULL;
fail:
    Py_XDECREF(out);
    return NULL;
}

/* prune(value) -> value without the empty values ECS documents leave out, or None to decline. */
PyObject *prune(PyObject *module, PyObject *value) {
    PyObject *out = prune_value(value, 0);
    if (out == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return out;
}

/* bind_json(orjson.dumps): what the line writers call for the values they do not spell themselves. */
PyObject *bind_json(PyObject *module, PyObject *dumps) {
    if (!PyCallable_Check(dumps)) {
        PyErr_SetString(PyExc_TypeError, "a callable is expected");
        return NULL;
    }
    Py_XSETREF(json_dumps, Py_NewRef(dumps));
    Py_RETURN_NONE;
}

int ecs_init(void) {
    for (int i = 0; i < K_COUNT; i++)
        if (envelope_str[i] == NULL && (envelope_str[i] = PyUnicode_InternFromString(envelope_text[i])) == NULL)
            return -1;
    for (int i = 0; i < J_COUNT; i++)
        if (json_str[i] == NULL && (json_str[i] = PyUnicode_InternFromString(json_text[i])) == NULL) return -1;
    for (int i = 0; i < 5; i++)
        if (destination_str[i] == NULL && (destination_str[i] = PyUnicode_InternFromString(destination_text[i])) == NULL)
            return -1;
    return 0;
}
