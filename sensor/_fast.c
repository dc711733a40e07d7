/* Compiled fast paths for the per-packet and per-event work of replay and live capture.
 *
 * Each function here does, for the common case, exactly what a pure-Python function in the
 * package does, and returns None whenever the input strays from that common case (malformed
 * bytes, text that needs escaping, rare record types): the caller then runs the Python code,
 * which stays the reference and the only place errors are described. Tests check that both
 * agree on every input the fast path accepts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <time.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * DNS: sensor.decode.dns.parse_message
 */

#define DNS_HEADER 12
#define DNS_MAX_NAME_WIRE 255
#define DNS_MAX_POINTER_HOPS 64
#define DNS_MIN_QUESTION 5
#define DNS_MIN_RR 11
#define DNS_NAME_TEXT 1024 /* 255 wire octets render to fewer characters than this */

typedef struct {
    const uint8_t *data;
    Py_ssize_t size;
} Message;

static inline unsigned get16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }

static inline uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* A byte printable as itself inside a label (dns._NEEDS_ESCAPE's complement). */
static inline int label_byte_plain(uint8_t b) { return b >= 0x21 && b <= 0x7E && b != 0x2E && b != 0x5C; }

/* A byte printable as itself in TXT text (dns._TEXT_NEEDS_ESCAPE's complement). */
static inline int text_byte_plain(uint8_t b) { return b >= 0x20 && b <= 0x7E && b != 0x5C; }

/* Decode the name at `offset` (in-place part bounded by `limit`) as dns._read_name does.
 * With `out`, render it there (NUL-terminated, length in *out_len) and fail on bytes that need
 * escaping; without, only validate. *after receives the offset just after the in-place part.
 * Returns 0 on success, -1 when the Python code must decide. */
static int read_name(const Message *m, Py_ssize_t offset, Py_ssize_t limit, char *out, Py_ssize_t *out_len,
                     Py_ssize_t *after) {
    Py_ssize_t position = offset, end = limit, resume = -1, written = 0;
    int wire_length = 1, hops = 0;
    for (;;) {
        if (position >= end) return -1;
        uint8_t length = m->data[position];
        if (length == 0) {
            position += 1;
            break;
        }
        uint8_t kind = length & 0xC0;
        if (kind == 0xC0) {
            if (position + 1 >= end) return -1;
            Py_ssize_t target = ((Py_ssize_t)(length & 0x3F) << 8) | m->data[position + 1];
            if (target >= position) return -1;
            if (++hops > DNS_MAX_POINTER_HOPS) return -1;
            if (resume < 0) resume = position + 2;
            position = target;
            end = m->size;
            continue;
        }
        if (kind) return -1;
        wire_length += length + 1;
        if (wire_length > DNS_MAX_NAME_WIRE) return -1;
        Py_ssize_t label_end = position + 1 + length;
        if (label_end > end) return -1;
        if (out != NULL) {
            if (written) out[written++] = '.';
            for (Py_ssize_t i = position + 1; i < label_end; i++) {
                uint8_t b = m->data[i];
                if (!label_byte_plain(b)) return -1;
                out[written++] = (char)b;
            }
        }
        position = label_end;
    }
    *after = resume < 0 ? position : resume;
    if (out != NULL) {
        if (written == 0) out[written++] = '.';
        out[written] = '\0';
        *out_len = written;
    }
    return 0;
}

/* A growable text buffer for one record's rendered data. */
typedef struct {
    char *text;
    Py_ssize_t len, cap;
} Text;

static int text_reserve(Text *t, Py_ssize_t more) {
    if (t->len + more + 1 <= t->cap) return 0;
    Py_ssize_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + more + 1) cap *= 2;
    char *grown = PyMem_Realloc(t->text, cap);
    if (grown == NULL) return -1;
    t->text = grown;
    t->cap = cap;
    return 0;
}

static int text_add(Text *t, const char *s, Py_ssize_t n) {
    if (text_reserve(t, n) < 0) return -1;
    memcpy(t->text + t->len, s, n);
    t->len += n;
    return 0;
}

static int text_adds(Text *t, const char *s) { return text_add(t, s, (Py_ssize_t)strlen(s)); }

static int text_addf_uint(Text *t, unsigned long value) {
    char number[24];
    int n = snprintf(number, sizeof number, "%lu", value);
    return text_add(t, number, n);
}

static int text_add_hex(Text *t, const uint8_t *p, Py_ssize_t n) {
    static const char digits[] = "0123456789abcdef";
    if (text_reserve(t, 2 * n) < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        t->text[t->len++] = digits[p[i] >> 4];
        t->text[t->len++] = digits[p[i] & 15];
    }
    return 0;
}

static int text_add_plain(Text *t, const uint8_t *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (!text_byte_plain(p[i])) return 1;
    return text_add(t, (const char *)p, n);
}

static int text_add_base64(Text *t, const uint8_t *p, Py_ssize_t n) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (text_reserve(t, 4 * ((n + 2) / 3)) < 0) return -1;
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        t->text[t->len++] = alphabet[v >> 18];
        t->text[t->len++] = alphabet[(v >> 12) & 63];
        t->text[t->len++] = alphabet[(v >> 6) & 63];
        t->text[t->len++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        t->text[t->len++] = alphabet[v >> 18];
        t->text[t->len++] = alphabet[(v >> 12) & 63];
        t->text[t->len++] = '=';
        t->text[t->len++] = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8);
        t->text[t->len++] = alphabet[v >> 18];
        t->text[t->len++] = alphabet[(v >> 12) & 63];
        t->text[t->len++] = alphabet[(v >> 6) & 63];
        t->text[t->len++] = '=';
    }
    return 0;
}

/* An IPv6 address as ipaddress.IPv6Address.compressed writes it: lower-case hextets without
 * leading zeros, the first longest run of two or more zero hextets as "::". Addresses whose
 * first 80 bits are zero (IPv4-mapped and -compatible forms) are left to Python. */
static int text_add_ipv6(Text *t, const uint8_t *p) {
    int zero_prefix = 1;
    for (int i = 0; i < 10; i++) zero_prefix &= p[i] == 0;
    if (zero_prefix) return 1;
    unsigned hextets[8];
    for (int i = 0; i < 8; i++) hextets[i] = get16(p + 2 * i);
    int best = -1, best_len = 0;
    for (int i = 0; i < 8;) {
        if (hextets[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < 8 && !hextets[j]) j++;
        if (j - i > best_len) {
            best = i;
            best_len = j - i;
        }
        i = j;
    }
    if (best_len < 2) best = -1;
    char buf[48];
    int n = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            buf[n++] = ':';
            buf[n++] = ':';
            i += best_len - 1;
            continue;
        }
        if (n && buf[n - 1] != ':') buf[n++] = ':';
        n += snprintf(buf + n, sizeof buf - n, "%x", hextets[i]);
    }
    return text_add(t, buf, n);
}

static const char *svc_param_name(unsigned key) {
    static const char *names[] = {"mandatory", "alpn", "no-default-alpn", "port", "ipv4hint",
                                  "ech", "ipv6hint", "dohpath", "ohttp"};
    return key < sizeof names / sizeof names[0] ? names[key] : NULL;
}

static int text_add_svc_key(Text *t, unsigned key) {
    const char *name = svc_param_name(key);
    if (name != NULL) return text_adds(t, name);
    if (text_adds(t, "key") < 0) return -1;
    return text_addf_uint(t, key);
}

/* One SvcParam as dns._render_svc_param writes it. 0 done, 1 leave to Python, -1 memory error. */
static int render_svc_param(Text *t, unsigned key, const uint8_t *v, Py_ssize_t n) {
    char address[INET6_ADDRSTRLEN];
    int rc;
    switch (key) {
    case 1: /* alpn */
        if (text_adds(t, "alpn=") < 0) return -1;
        for (Py_ssize_t i = 0; i < n;) {
            uint8_t length = v[i];
            if (length == 0 || i + 1 + length > n) return 1;
            if (i && text_add(t, ",", 1) < 0) return -1;
            if ((rc = text_add_plain(t, v + i + 1, length)) != 0) return rc;
            i += 1 + length;
        }
        return 0;
    case 3:
        if (n != 2) break;
        if (text_adds(t, "port=") < 0) return -1;
        return text_addf_uint(t, get16(v));
    case 4:
        if (n == 0 || n % 4) break;
        if (text_adds(t, "ipv4hint=") < 0) return -1;
        for (Py_ssize_t i = 0; i < n; i += 4) {
            if (i && text_add(t, ",", 1) < 0) return -1;
            inet_ntop(AF_INET, v + i, address, sizeof address);
            if (text_adds(t, address) < 0) return -1;
        }
        return 0;
    case 6:
        if (n == 0 || n % 16) break;
        if (text_adds(t, "ipv6hint=") < 0) return -1;
        for (Py_ssize_t i = 0; i < n; i += 16) {
            if (i && text_add(t, ",", 1) < 0) return -1;
            if ((rc = text_add_ipv6(t, v + i)) != 0) return rc;
        }
        return 0;
    case 0:
        if (n % 2) break;
        if (text_adds(t, "mandatory=") < 0) return -1;
        for (Py_ssize_t i = 0; i < n; i += 2) {
            if (i && text_add(t, ",", 1) < 0) return -1;
            if (text_add_svc_key(t, get16(v + i)) < 0) return -1;
        }
        return 0;
    case 5:
        if (text_adds(t, "ech=") < 0) return -1;
        return text_add_base64(t, v, n);
    case 7:
        if (text_adds(t, "dohpath=") < 0) return -1;
        return text_add_plain(t, v, n);
    }
    return text_add_svc_key(t, key);
}

/* One record's data as dns._render_rdata writes it. 0 done, 1 leave to Python, -1 memory error. */
static int render_rdata(const Message *m, unsigned rtype, Py_ssize_t start, Py_ssize_t end, Text *t) {
    const uint8_t *rdata = m->data + start;
    Py_ssize_t n = end - start, after, name_len;
    char name[DNS_NAME_TEXT], address[INET6_ADDRSTRLEN];
    int rc;
    if (rtype == 1 && n == 4) {
        inet_ntop(AF_INET, rdata, address, sizeof address);
        return text_adds(t, address);
    }
    if (rtype == 28 && n == 16) {
        inet_ntop(AF_INET6, rdata, address, sizeof address);
        return text_adds(t, address);
    }
    if (rtype == 2 || rtype == 5 || rtype == 12 || rtype == 39) {
        if (read_name(m, start, end, name, &name_len, &after) < 0 || after != end) return 1;
        return text_add(t, name, name_len);
    }
    if (rtype == 16 || rtype == 99) {
        for (Py_ssize_t i = 0; i < n;) {
            uint8_t length = rdata[i];
            if (i + 1 + length > n) return 1;
            if ((rc = text_add_plain(t, rdata + i + 1, length)) != 0) return rc;
            i += 1 + length;
        }
        return 0;
    }
    if ((rtype == 64 || rtype == 65) && n >= 3) {
        if (text_addf_uint(t, get16(rdata)) < 0) return -1;
        if (read_name(m, start + 2, end, name, &name_len, &after) < 0) return 1;
        if (text_add(t, " ", 1) < 0 || text_add(t, name, name_len) < 0) return -1;
        for (Py_ssize_t position = after; position < end;) {
            if (position + 4 > end) return 1;
            unsigned key = get16(m->data + position), length = get16(m->data + position + 2);
            if (position + 4 + (Py_ssize_t)length > end) return 1;
            if (text_add(t, " ", 1) < 0) return -1;
            if ((rc = render_svc_param(t, key, m->data + position + 4, length)) != 0) return rc;
            position += 4 + length;
        }
        return 0;
    }
    if (rtype == 15 || rtype == 33 || rtype == 6) return 1; /* MX, SRV, SOA: rare, left to Python */
    return text_add_hex(t, rdata, n);
}

/* A str from bytes known to be ASCII (every renderer above writes only ASCII). */
static PyObject *ascii_str(const char *s, Py_ssize_t n) {
    PyObject *text = PyUnicode_New(n, 127);
    if (text != NULL) memcpy(PyUnicode_DATA(text), s, n);
    return text;
}

/* The name as a str, sharing `previous` when it spells the same name (answers usually repeat
 * the question's name through a compression pointer). */
static PyObject *name_str(const char *name, Py_ssize_t n, PyObject *previous) {
    if (previous != NULL && PyUnicode_GET_LENGTH(previous) == n && memcmp(PyUnicode_DATA(previous), name, n) == 0)
        return Py_NewRef(previous);
    return ascii_str(name, n);
}

static PyObject *tuple_steal(Py_ssize_t n, PyObject **items) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL) goto fail;
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(tuple, i, items[i]);
    return tuple;
fail:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(items[i]);
    return NULL;
}

/* Records (sensor.records.frozen_record classes) built here without running their __init__: each
 * field is written through its slot descriptor, which is what that __init__ does, minus a Python
 * call per record. */
#define RECORD_MAX_FIELDS 8
typedef struct {
    PyTypeObject *type;
    PyObject *slots[RECORD_MAX_FIELDS]; /* member descriptors, in field order */
    Py_ssize_t count;
} RecordType;

static void record_type_clear(RecordType *record) {
    for (Py_ssize_t i = 0; i < record->count; i++) Py_CLEAR(record->slots[i]);
    Py_CLEAR(record->type);
    record->count = 0;
}

/* `count`: the number of fields expected, or -1 for any up to RECORD_MAX_FIELDS. */
static int record_type_bind(RecordType *record, PyObject *type, Py_ssize_t count) {
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "a record class is expected");
        return -1;
    }
    PyObject *names = PyObject_GetAttrString(type, "__slots__");
    if (names == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%R: not a slotted record class", type);
        }
        return -1;
    }
    if (PyTuple_Check(names) && count < 0) count = PyTuple_GET_SIZE(names);
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) != count || count > RECORD_MAX_FIELDS) {
        Py_DECREF(names);
        PyErr_Format(PyExc_TypeError, "%R: expected %zd slots", type, count);
        return -1;
    }
    PyObject *slots[RECORD_MAX_FIELDS];
    for (Py_ssize_t i = 0; i < count; i++) {
        slots[i] = PyObject_GetAttr(type, PyTuple_GET_ITEM(names, i));
        if (slots[i] == NULL || Py_TYPE(slots[i])->tp_descr_set == NULL) {
            if (slots[i] != NULL) PyErr_Format(PyExc_TypeError, "%R: a field is not a slot", type);
            for (Py_ssize_t j = 0; j <= i; j++) Py_XDECREF(slots[j]);
            Py_DECREF(names);
            return -1;
        }
    }
    Py_DECREF(names);
    record_type_clear(record);
    record->type = (PyTypeObject *)Py_NewRef(type);
    memcpy(record->slots, slots, count * sizeof(PyObject *));
    record->count = count;
    return 0;
}

/* A new record from `values` (one per field, stolen; NULL ones mean an error is set). */
static PyObject *record_new(const RecordType *record, PyObject **values) {
    PyObject *obj = NULL;
    for (Py_ssize_t i = 0; i < record->count; i++)
        if (values[i] == NULL) goto done;
    obj = record->type->tp_alloc(record->type, 0);
    for (Py_ssize_t i = 0; obj != NULL && i < record->count; i++)
        if (Py_TYPE(record->slots[i])->tp_descr_set(record->slots[i], obj, values[i]) < 0) Py_CLEAR(obj);
done:
    for (Py_ssize_t i = 0; i < record->count; i++) Py_XDECREF(values[i]);
    return obj;
}

#define RECORD_CAPSULE "sensor._fast.RecordType"

static void record_capsule_free(PyObject *capsule) {
    RecordType *record = PyCapsule_GetPointer(capsule, RECORD_CAPSULE);
    record_type_clear(record);
    PyMem_Free(record);
}

static PyObject *record_make(PyObject *capsule, PyObject *const *args, Py_ssize_t nargs) {
    const RecordType *record = PyCapsule_GetPointer(capsule, RECORD_CAPSULE);
    if (record == NULL) return NULL;
    if (nargs != record->count) {
        PyErr_Format(PyExc_TypeError, "%s maker takes %zd positional arguments (%zd given)", record->type->tp_name,
                     record->count, nargs);
        return NULL;
    }
    PyObject *values[RECORD_MAX_FIELDS];
    for (Py_ssize_t i = 0; i < nargs; i++) values[i] = Py_NewRef(args[i]);
    return record_new(record, values);
}

static PyMethodDef record_make_def = {"make", (PyCFunction)(void (*)(void))record_make, METH_FASTCALL,
                                      "make(*fields) -> a new record, every field given in order"};

/* record_maker(cls) -> a function building cls from all its fields, positionally. */
static PyObject *record_maker(PyObject *module, PyObject *type) {
    RecordType *record = PyMem_Calloc(1, sizeof *record);
    if (record == NULL) return PyErr_NoMemory();
    if (record_type_bind(record, type, -1) < 0) {
        PyMem_Free(record);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(record, RECORD_CAPSULE, record_capsule_free);
    if (capsule == NULL) {
        record_type_clear(record);
        PyMem_Free(record);
        return NULL;
    }
    PyObject *maker = PyCFunction_New(&record_make_def, capsule);
    Py_DECREF(capsule);
    return maker;
}

static RecordType dns_message_record, dns_answer_record;
static PyObject *dns_type_names, *dns_rcode_names;

/* bind_dns(DnsMessage, DnsAnswer, TYPE_NAMES, RCODE_NAMES): what parse_dns builds its result from. */
static PyObject *bind_dns(PyObject *module, PyObject *args) {
    PyObject *message, *answer, *type_names, *rcode_names;
    if (!PyArg_ParseTuple(args, "OOO!O!", &message, &answer, &PyDict_Type, &type_names, &PyDict_Type, &rcode_names))
        return NULL;
    RecordType message_record = {0}, answer_record = {0};
    if (record_type_bind(&message_record, message, 6) < 0 || record_type_bind(&answer_record, answer, 4) < 0) {
        record_type_clear(&message_record);
        return NULL;
    }
    record_type_clear(&dns_message_record); /* all or nothing: a failed bind leaves the previous one */
    record_type_clear(&dns_answer_record);
    dns_message_record = message_record;
    dns_answer_record = answer_record;
    Py_XSETREF(dns_type_names, Py_NewRef(type_names));
    Py_XSETREF(dns_rcode_names, Py_NewRef(rcode_names));
    Py_RETURN_NONE;
}

/* names[code], else prefix followed by the number (sensor.decode.dns.type_name and RCODE names). */
static PyObject *code_name(PyObject *names, unsigned code, const char *prefix) {
    PyObject *key = PyLong_FromUnsignedLong(code);
    if (key == NULL) return NULL;
    PyObject *name = PyDict_GetItemWithError(names, key);
    Py_DECREF(key);
    if (name != NULL) return Py_NewRef(name);
    return PyErr_Occurred() ? NULL : PyUnicode_FromFormat("%s%u", prefix, code);
}

/* parse_dns(data) -> the DnsMessage (as sensor.decode.dns.parse_message_py gives it), or None when
 * parse_message_py must handle the message. bind_dns must have been called. */
static PyObject *parse_dns(PyObject *module, PyObject *arg) {
    if (dns_message_record.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_dns() first");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Message m = {view.buf, view.len};
    PyObject *questions = NULL, *answers = NULL, *result = NULL;
    Text text = {NULL, 0, 0};
    char name[DNS_NAME_TEXT];
    Py_ssize_t name_len, position;
    PyObject *last_name = NULL; /* borrowed from questions or answers */
    if (m.size < DNS_HEADER) goto python;
    unsigned msg_id = get16(m.data), flags = get16(m.data + 2);
    unsigned qdcount = get16(m.data + 4), ancount = get16(m.data + 6), nscount = get16(m.data + 8),
             arcount = get16(m.data + 10);
    if ((Py_ssize_t)qdcount * DNS_MIN_QUESTION + (Py_ssize_t)(ancount + nscount + arcount) * DNS_MIN_RR >
        m.size - DNS_HEADER)
        goto python;
    questions = PyTuple_New(qdcount);
    answers = PyTuple_New(ancount);
    if (questions == NULL || answers == NULL) goto error;
    position = DNS_HEADER;
    for (unsigned i = 0; i < qdcount; i++) {
        if (read_name(&m, position, m.size, name, &name_len, &position) < 0) goto python;
        if (position + 4 > m.size) goto python;
        PyObject *question_name = name_str(name, name_len, last_name);
        last_name = question_name;
        PyObject *question =
            tuple_steal(2, (PyObject *[]){question_name, code_name(dns_type_names, get16(m.data + position), "TYPE")});
        if (question == NULL) goto error;
        PyTuple_SET_ITEM(questions, i, question);
        position += 4;
    }
    unsigned extended_rcode = 0, records = ancount + nscount + arcount;
    for (unsigned index = 0; index < records; index++) {
        int is_answer = index < ancount;
        if (read_name(&m, position, m.size, is_answer ? name : NULL, &name_len, &position) < 0) goto python;
        if (position + 10 > m.size) goto python;
        unsigned rtype = get16(m.data + position);
        uint32_t ttl = get32(m.data + position + 4);
        Py_ssize_t rdata_end = position + 10 + get16(m.data + position + 8);
        position += 10;
        if (rdata_end > m.size) goto python;
        if (is_answer) {
            text.len = 0;
            int rc = render_rdata(&m, rtype, position, rdata_end, &text);
            if (rc < 0) {
                PyErr_NoMemory();
                goto error;
            }
            if (rc > 0) goto python;
            PyObject *answer_name = name_str(name, name_len, last_name);
            last_name = answer_name;
            PyObject *answer = record_new(&dns_answer_record,
                                          (PyObject *[]){answer_name, code_name(dns_type_names, rtype, "TYPE"),
                                                         ascii_str(text.text ? text.text : "", text.len),
                                                         PyLong_FromUnsignedLong(ttl)});
            if (answer == NULL) goto error;
            PyTuple_SET_ITEM(answers, index, answer);
        } else if (rtype == 41 && index >= ancount + nscount) {
            extended_rcode = ttl >> 24; /* EDNS: the upper 8 bits of a 12-bit RCODE */
        }
        position = rdata_end;
    }
    result = record_new(&dns_message_record,
                        (PyObject *[]){PyLong_FromUnsignedLong(msg_id), PyBool_FromLong(flags & 0x8000),
                                       PyLong_FromUnsignedLong((flags >> 11) & 0x0F),
                                       code_name(dns_rcode_names, (extended_rcode << 4) | (flags & 0x0F), "RCODE"),
                                       Py_NewRef(questions), Py_NewRef(answers)});
    goto done;
python:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(questions);
    Py_XDECREF(answers);
    PyMem_Free(text.text);
    PyBuffer_Release(&view);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * L2-L4: sensor.decode.packet.PacketDecoder.decode, for unfragmented IPv4 and IPv6 without
 * extension headers carrying TCP or UDP behind Ethernet (with VLAN tags), raw IP, loopback or
 * Linux cooked headers. Anything else (fragments, tunnels, PPPoE, MPLS, other link types, malformed
 * headers) returns None: the Python decoder (the reference) takes it.
 */

#define TCP 6
#define UDP 17

static Py_ssize_t network_offset(unsigned linktype, const uint8_t *f, Py_ssize_t n) {
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

static PyObject *bytes_at(const uint8_t *p, Py_ssize_t n) { return PyBytes_FromStringAndSize((const char *)p, n); }

/* UDP ports that carry tunnels (sensor.decode.packet.udp_tunnel_ports, set through set_tunnel_ports):
 * decode_frame declines those datagrams to the Python decoder, which decapsulates them. The replay
 * selector looks inside VXLAN and Geneve (the mirror tunnels) and keeps the other kinds whole. */
static uint8_t tunnel_port_bits[65536 / 8];
enum { TUNNEL_OTHER, TUNNEL_VXLAN, TUNNEL_GENEVE };
#define MAX_MIRROR_PORTS 64
static unsigned mirror_ports[MAX_MIRROR_PORTS], mirror_kinds[MAX_MIRROR_PORTS], mirror_count;

static inline int tunnel_port(unsigned port) { return (tunnel_port_bits[port >> 3] >> (port & 7)) & 1; }

static unsigned tunnel_kind(unsigned port) {
    for (unsigned i = 0; i < mirror_count; i++)
        if (mirror_ports[i] == port) return mirror_kinds[i];
    return TUNNEL_OTHER;
}

/* set_tunnel_ports(ports, vxlan_ports, geneve_ports): every tunnel port, then those of each mirror kind */
static PyObject *set_tunnel_ports(PyObject *module, PyObject *args) {
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
static PyObject *decode_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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

/* ---------------------------------------------------------------------------------------------
 * Community ID v1: sensor.output.ecs.community_id. SHA-1 (FIPS 180-4) is written out here: the
 * hash is over 40 bytes at most, and one call from Python beats building the input in Python.
 */

static inline uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* SHA-1 of a message of at most 55 bytes (one padded block). */
static void sha1_short(const uint8_t *msg, size_t n, uint8_t digest[20]) {
    uint8_t block[64] = {0};
    memcpy(block, msg, n);
    block[n] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) block[63 - i] = (uint8_t)(bits >> (8 * i));
    uint32_t w[80], h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
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
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) digest[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

/* community_id(src_ip, src_port, dst_ip, dst_port, protocol, seed) -> "1:<base64 sha1>", or None
 * when an address does not parse (the Python code then decides). */
/* The Community ID of a flow given as address texts, or None when an address or number is out of range. */
static PyObject *community_id_text(const char *src_text, unsigned sport, const char *dst_text, unsigned dport,
                                   unsigned proto, unsigned seed) {
    int family = strchr(src_text, ':') ? AF_INET6 : AF_INET;
    size_t alen = family == AF_INET6 ? 16 : 4;
    uint8_t src[16], dst[16];
    if (inet_pton(family, src_text, src) != 1 || inet_pton(family, dst_text, dst) != 1 || sport > 0xFFFF ||
        dport > 0xFFFF || proto > 0xFF || seed > 0xFFFF)
        Py_RETURN_NONE;
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
    sha1_short(msg, n, digest);
    Text text = {NULL, 0, 0};
    PyObject *result = NULL;
    if (text_add(&text, "1:", 2) == 0 && text_add_base64(&text, digest, 20) == 0)
        result = ascii_str(text.text, text.len);
    else
        PyErr_NoMemory();
    PyMem_Free(text.text);
    return result;
}

static PyObject *community_id(PyObject *module, PyObject *args) {
    const char *src_text, *dst_text;
    unsigned int sport, dport, proto, seed;
    if (!PyArg_ParseTuple(args, "sIsIII", &src_text, &sport, &dst_text, &dport, &proto, &seed)) return NULL;
    return community_id_text(src_text, sport, dst_text, dport, proto, seed);
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
}

static PyObject *iso_time_str(double ts) {
    char text[ISO_TIME_LENGTH];
    iso_time_text(ts, text);
    return ascii_str(text, ISO_TIME_LENGTH);
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
    J_SERVER_NAME, J_ALPN, J_ECH, J_VERSION, J_DNS, J_COUNT
};
static const char *const json_text[J_COUNT] = {
    "ts", "flow", "id", "name", "qtype", "response_seen", "rcode", "answers", "type", "data", "ttl", "protocol",
    "server_name", "alpn", "ech", "version", "dns",
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

/* A flow's fields (new references) as decode makes them: addresses in text, ports of 16 bits, a
 * transport name; with its Community ID. */
typedef struct {
    PyObject *src_ip, *dst_ip, *src_port, *dst_port, *transport, *community;
    int ipv6;
} FlowParts;

static void flow_parts_clear(FlowParts *parts) {
    Py_CLEAR(parts->src_ip);
    Py_CLEAR(parts->dst_ip);
    Py_CLEAR(parts->src_port);
    Py_CLEAR(parts->dst_port);
    Py_CLEAR(parts->transport);
    Py_CLEAR(parts->community);
}

/* 0, 1 when the flow is not as decode makes it (the Python code takes it: no error set), -1 on error. */
static int flow_parts(PyObject *flow, FlowParts *parts) {
    *parts = (FlowParts){0};
    parts->src_ip = PyObject_GetAttr(flow, envelope_str[K_SRC_IP]);
    parts->dst_ip = parts->src_ip ? PyObject_GetAttr(flow, envelope_str[K_DST_IP]) : NULL;
    parts->src_port = parts->dst_ip ? PyObject_GetAttr(flow, envelope_str[K_SRC_PORT]) : NULL;
    parts->dst_port = parts->src_port ? PyObject_GetAttr(flow, envelope_str[K_DST_PORT]) : NULL;
    parts->transport = parts->dst_port ? PyObject_GetAttr(flow, envelope_str[K_TRANSPORT]) : NULL;
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
    parts->community = community_id_text(src_text, sport, dst_text, dport, proto, 0);
    if (parts->community == NULL) goto error;
    if (parts->community == Py_None) goto decline;
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
static PyObject *event_envelope(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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
                                      Py_NewRef(envelope_str[flow.ipv6 ? V_IPV6 : V_IPV4]), Py_NewRef(flow.community)}),
        });
    flow_parts_clear(&flow);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * sensor.output.ecs.EventBuilder.json_line for DNS and TLS events: the document written straight
 * as the JSON line orjson.dumps would make of EventBuilder's dict, without building the dict.
 */

static PyObject *json_dumps; /* orjson.dumps (bind_json): the values the writer does not spell itself */

#define JSON_KEY(t, literal) text_add(t, literal, (Py_ssize_t)sizeof literal - 1)

/* `value` as JSON, as orjson writes it. */
static int json_value(Text *t, PyObject *value) {
    if (value == Py_None) return JSON_KEY(t, "null");
    if (value == Py_True) return JSON_KEY(t, "true");
    if (value == Py_False) return JSON_KEY(t, "false");
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        const char *text = (const char *)PyUnicode_DATA(value);
        Py_ssize_t n = PyUnicode_GET_LENGTH(value), i = 0;
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
            return text_add(t, digits, snprintf(digits, sizeof digits, "%lld", number));
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
static PyObject *field(PyObject *record, int key) { return PyObject_GetAttr(record, json_str[key]); }

/* `{"@timestamp":...,<prefix>,"source":...,"destination":...,"network":...` and the flow's parts;
 * 1 (nothing written) for what the Python envelope takes. */
static int json_envelope(Text *t, PyObject *record, PyObject *prefix, PyObject *protocol, PyObject *domain,
                         FlowParts *flow) {
    PyObject *ts_object = field(record, J_TS), *flow_object = ts_object ? field(record, J_FLOW) : NULL;
    if (flow_object == NULL) {
        Py_XDECREF(ts_object);
        return -1;
    }
    double ts = PyFloat_Check(ts_object) ? PyFloat_AS_DOUBLE(ts_object) : NAN;
    int status = isfinite(ts) && PyBytes_Check(prefix) ? flow_parts(flow_object, flow) : 1;
    Py_DECREF(ts_object);
    Py_DECREF(flow_object);
    if (status != 0) return status;
    char time_text[ISO_TIME_LENGTH];
    iso_time_text(ts, time_text);
    if (JSON_KEY(t, "{\"@timestamp\":\"") < 0 || text_add(t, time_text, ISO_TIME_LENGTH) < 0 ||
        JSON_KEY(t, "\",") < 0 || text_add(t, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix)) < 0 ||
        JSON_KEY(t, ",\"source\":{\"ip\":") < 0 || json_value(t, flow->src_ip) < 0 || JSON_KEY(t, ",\"port\":") < 0 ||
        json_value(t, flow->src_port) < 0 || JSON_KEY(t, "},\"destination\":{\"ip\":") < 0 ||
        json_value(t, flow->dst_ip) < 0 || JSON_KEY(t, ",\"port\":") < 0 || json_value(t, flow->dst_port) < 0 ||
        (domain != Py_None && (JSON_KEY(t, ",\"domain\":") < 0 || json_value(t, domain) < 0)) ||
        JSON_KEY(t, "},\"network\":{\"transport\":") < 0 || json_value(t, flow->transport) < 0 ||
        JSON_KEY(t, ",\"protocol\":") < 0 || json_value(t, protocol) < 0 ||
        (flow->ipv6 ? JSON_KEY(t, ",\"type\":\"ipv6\"") : JSON_KEY(t, ",\"type\":\"ipv4\"")) < 0 ||
        JSON_KEY(t, ",\"community_id\":") < 0 || json_value(t, flow->community) < 0 || JSON_KEY(t, "}") < 0) {
        flow_parts_clear(flow);
        return -1;
    }
    return 0;
}

/* `,"related":{"ip":[source, destination, extra...],"hosts":[host]}}` (no hosts without a host) and
 * the newline;
 * ecs._related_ips: an extra address already listed is not repeated. */
static int json_related(Text *t, const FlowParts *flow, PyObject *const *extra, Py_ssize_t extra_count,
                        PyObject *host) {
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
    if (JSON_KEY(t, "]") < 0 ||
        (host != Py_None && (JSON_KEY(t, ",\"hosts\":[") < 0 || json_value(t, host) < 0 || JSON_KEY(t, "]") < 0)))
        return -1;
    return JSON_KEY(t, "}}\n");
}

static PyObject *json_line_result(Text *t, int status) {
    PyObject *line = status == 0 ? PyBytes_FromStringAndSize(t->text, t->len)
                     : status > 0 ? Py_NewRef(Py_None)
                                  : NULL;
    PyMem_Free(t->text);
    return line;
}

/* dns_event_line(record, registered_domain or None, prefix) -> bytes, or None for what the Python
 * builder takes. `prefix`: `"ecs":...,"event":...,"observer":...` as orjson writes them. */
static PyObject *dns_event_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "dns_event_line takes 3 arguments");
        return NULL;
    }
    PyObject *record = args[0], *registered = args[1];
    Text t = {NULL, 0, 0};
    FlowParts flow = {0};
    PyObject *fields[6] = {NULL}; /* id, name, qtype, response_seen, rcode, answers */
    PyObject *resolved[64];
    Py_ssize_t resolved_count = 0;
    int status = json_envelope(&t, record, args[2], json_str[J_DNS], Py_None, &flow);
    if (status != 0) return json_line_result(&t, status);
    static const int keys[6] = {J_ID, J_NAME, J_QTYPE, J_RESPONSE_SEEN, J_RCODE, J_ANSWERS};
    for (int i = 0; i < 6; i++)
        if ((fields[i] = field(record, keys[i])) == NULL) goto error;
    int answered = PyObject_IsTrue(fields[3]);
    if (answered < 0 || !PyTuple_Check(fields[5]) || !PyLong_CheckExact(fields[0])) goto decline_or_error;
    int named = PyObject_IsTrue(fields[1]), overflow = 0;
    long long dns_id = PyLong_AsLongLongAndOverflow(fields[0], &overflow);
    if (named < 0 || (dns_id == -1 && PyErr_Occurred())) goto error;
    if (overflow || !named) goto decline; /* the root's name is written by the Python builder */
    char id_text[24];
    /* dns.id is an ECS keyword: the number as a string */
    if (JSON_KEY(&t, ",\"dns\":{\"id\":\"") < 0 || text_add(&t, id_text, snprintf(id_text, sizeof id_text, "%lld", dns_id)) < 0 ||
        JSON_KEY(&t, "\"") < 0 ||
        (answered ? JSON_KEY(&t, ",\"type\":\"answer\"") : JSON_KEY(&t, ",\"type\":\"query\"")) < 0 ||
        JSON_KEY(&t, ",\"question\":{\"name\":") < 0 || json_value(&t, fields[1]) < 0 ||
        JSON_KEY(&t, ",\"type\":") < 0 || json_value(&t, fields[2]) < 0 ||
        (registered != Py_None && (JSON_KEY(&t, ",\"registered_domain\":") < 0 || json_value(&t, registered) < 0)) ||
        JSON_KEY(&t, "}") < 0)
        goto error;
    if (answered) {
        if (JSON_KEY(&t, ",\"response_code\":") < 0 || json_value(&t, fields[4]) < 0) goto error;
        Py_ssize_t count = PyTuple_GET_SIZE(fields[5]);
        if (count > 64) goto decline_or_error; /* the Python builder takes long answer lists */
        if (count && JSON_KEY(&t, ",\"answers\":[") < 0) goto error;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *answer = PyTuple_GET_ITEM(fields[5], i), *parts[4] = {NULL};
            static const int answer_keys[4] = {J_NAME, J_TYPE, J_DATA, J_TTL};
            int ok = 1;
            for (int k = 0; k < 4 && ok; k++) ok = (parts[k] = field(answer, answer_keys[k])) != NULL;
            ok = ok && PyUnicode_Check(parts[1]) && PyUnicode_Check(parts[0]) && PyUnicode_Check(parts[2]) &&
                 PyUnicode_GET_LENGTH(parts[0]) > 0 && PyUnicode_GET_LENGTH(parts[2]) > 0; /* else the Python builder */
            /* ecs._is_address: an A answer with a dot, an AAAA answer with a colon (not decode's hex) */
            if (ok && ((PyUnicode_CompareWithASCIIString(parts[1], "A") == 0 &&
                        PyUnicode_FindChar(parts[2], '.', 0, PyUnicode_GET_LENGTH(parts[2]), 1) >= 0) ||
                       (PyUnicode_CompareWithASCIIString(parts[1], "AAAA") == 0 &&
                        PyUnicode_FindChar(parts[2], ':', 0, PyUnicode_GET_LENGTH(parts[2]), 1) >= 0)))
                resolved[resolved_count++] = Py_NewRef(parts[2]);
            ok = ok && (i == 0 || JSON_KEY(&t, ",") == 0) && JSON_KEY(&t, "{\"name\":") == 0 &&
                 json_value(&t, parts[0]) == 0 && JSON_KEY(&t, ",\"type\":") == 0 && json_value(&t, parts[1]) == 0 &&
                 JSON_KEY(&t, ",\"data\":") == 0 && json_value(&t, parts[2]) == 0 && JSON_KEY(&t, ",\"ttl\":") == 0 &&
                 json_value(&t, parts[3]) == 0 && JSON_KEY(&t, "}") == 0;
            for (int k = 0; k < 4; k++) Py_XDECREF(parts[k]);
            if (!ok) {
                if (!PyErr_Occurred()) goto decline;
                goto error;
            }
        }
        if (count && JSON_KEY(&t, "]") < 0) goto error;
        if (resolved_count) {
            if (JSON_KEY(&t, ",\"resolved_ip\":[") < 0) goto error;
            for (Py_ssize_t i = 0; i < resolved_count; i++)
                if ((i && JSON_KEY(&t, ",") < 0) || json_value(&t, resolved[i]) < 0) goto error;
            if (JSON_KEY(&t, "]") < 0) goto error;
        }
    }
    if (JSON_KEY(&t, "}") < 0 || json_related(&t, &flow, resolved, resolved_count, fields[1]) < 0) goto error;
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
    return json_line_result(&t, status);
}

/* tls_event_line(record, destination_domain or None, prefix) -> bytes, or None for what the Python
 * builder takes. */
static PyObject *tls_event_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "tls_event_line takes 3 arguments");
        return NULL;
    }
    PyObject *record = args[0], *fields[5] = {NULL}; /* protocol, server_name, alpn, ech, version */
    static const int keys[5] = {J_PROTOCOL, J_SERVER_NAME, J_ALPN, J_ECH, J_VERSION};
    Text t = {NULL, 0, 0};
    FlowParts flow = {0};
    int status;
    for (int i = 0; i < 5; i++)
        if ((fields[i] = field(record, keys[i])) == NULL) goto error;
    if (!PyTuple_Check(fields[2])) goto decline;
    status = json_envelope(&t, record, args[2], fields[0], args[1], &flow);
    if (status != 0) goto done;
    int named = PyObject_IsTrue(fields[1]), versioned = PyObject_IsTrue(fields[4]);
    if (named < 0 || versioned < 0) goto error;
    /* ECS leaves out what is not known: no empty tls.client, no empty tls */
    if ((named || versioned) && JSON_KEY(&t, ",\"tls\":{") < 0) goto error;
    if (named && (JSON_KEY(&t, "\"client\":{\"server_name\":") < 0 || json_value(&t, fields[1]) < 0 ||
                  JSON_KEY(&t, "}") < 0))
        goto error;
    if (versioned && ((named && JSON_KEY(&t, ",") < 0) || JSON_KEY(&t, "\"version\":") < 0 ||
                      json_value(&t, fields[4]) < 0 || JSON_KEY(&t, ",\"version_protocol\":\"tls\"") < 0))
        goto error;
    if (((named || versioned) && JSON_KEY(&t, "}") < 0) || JSON_KEY(&t, ",\"phi_egress\":{\"tls\":{") < 0) goto error;
    Py_ssize_t alpn_count = PyTuple_GET_SIZE(fields[2]);
    if (alpn_count && JSON_KEY(&t, "\"alpn\":[") < 0) goto error;
    for (Py_ssize_t i = 0; i < alpn_count; i++)
        if ((i && JSON_KEY(&t, ",") < 0) || json_value(&t, PyTuple_GET_ITEM(fields[2], i)) < 0) goto error;
    if ((alpn_count && JSON_KEY(&t, "],") < 0) || JSON_KEY(&t, "\"ech\":") < 0 || json_value(&t, fields[3]) < 0 ||
        JSON_KEY(&t, "}}") < 0 ||
        json_related(&t, &flow, NULL, 0, named ? fields[1] : Py_None) < 0)
        goto error;
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
    return json_line_result(&t, status);
}

/* bind_json(orjson.dumps): what the line writers call for the values they do not spell themselves. */
static PyObject *bind_json(PyObject *module, PyObject *dumps) {
    if (!PyCallable_Check(dumps)) {
        PyErr_SetString(PyExc_TypeError, "a callable is expected");
        return NULL;
    }
    Py_XSETREF(json_dumps, Py_NewRef(dumps));
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------------
 * TLS: sensor.decode.tls.parse_client_hello_message, for undamaged hellos whose server name and
 * ALPN names are ASCII. Damaged extension blocks (which the Python code reads around) and
 * everything that is no ClientHello return None.
 */

/* -> (server_name or None, alpn, ech, legacy_version, offers_tls13, extension types) or None */
static PyObject *parse_hello(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *m = view.buf;
    Py_ssize_t n = view.len, pos, end;
    PyObject *result = NULL, *server_name = NULL, *alpn = NULL, *types = NULL;
    int sni_seen = 0, offers_tls13 = 0, ech = 0;
    if (n < 4 || m[0] != 1) goto python;
    end = 4 + (((Py_ssize_t)m[1] << 16) | ((Py_ssize_t)m[2] << 8) | m[3]);
    if (end > n || end < 4 + 41) goto python;
    unsigned legacy_version = get16(m + 4);
    if (legacy_version >> 8 != 3) goto python;
    pos = 4 + 2 + 32;
    if (m[pos] > 32) goto python;
    pos += 1 + m[pos];
    if (pos + 2 > end) goto python;
    unsigned suites = get16(m + pos);
    if (suites < 2 || suites % 2) goto python;
    pos += 2 + suites;
    if (pos + 1 > end) goto python;
    unsigned compression = m[pos];
    pos += 1 + compression;
    if (compression < 1 || pos > end) goto python;
    types = PyList_New(0);
    alpn = PyTuple_New(0);
    if (types == NULL || alpn == NULL) goto error;
    server_name = Py_NewRef(Py_None);
    if (pos < end) {
        if (pos + 2 > end) goto python;
        Py_ssize_t block_end = pos + 2 + get16(m + pos);
        if (block_end > end) goto python; /* damaged: the Python code reads around it */
        pos += 2;
        while (pos + 4 <= block_end) {
            unsigned type = get16(m + pos);
            Py_ssize_t length = get16(m + pos + 2), data = pos + 4;
            pos = data + length;
            if (pos > block_end) goto python;
            PyObject *number = PyLong_FromUnsignedLong(type);
            if (number == NULL || PyList_Append(types, number) < 0) {
                Py_XDECREF(number);
                goto error;
            }
            Py_DECREF(number);
            const uint8_t *d = m + data;
            if (type == 0 && !sni_seen) { /* server_name: the first host_name entry */
                sni_seen = 1;
                if (length < 2 || 2 + (Py_ssize_t)get16(d) != length) goto python;
                Py_ssize_t i = 2;
                int found = 0;
                while (i + 3 <= length && !found) {
                    unsigned name_type = d[i];
                    Py_ssize_t name_length = get16(d + i + 1);
                    i += 3;
                    if (i + name_length > length) goto python;
                    if (name_type == 0) {
                        found = 1;
                        if (name_length == 0) break;
                        PyObject *name = PyUnicode_New(name_length, 127);
                        if (name == NULL) goto error;
                        uint8_t *out = PyUnicode_DATA(name);
                        for (Py_ssize_t k = 0; k < name_length; k++) {
                            uint8_t b = d[i + k];
                            if (b >= 0x80) {
                                Py_DECREF(name);
                                goto python;
                            }
                            out[k] = b >= 'A' && b <= 'Z' ? b + 32 : b;
                        }
                        Py_SETREF(server_name, name);
                    }
                    i += name_length;
                }
                if (!found && i != length) goto python;
            } else if (type == 16 && PyTuple_GET_SIZE(alpn) == 0) {
                if (length < 2 || 2 + (Py_ssize_t)get16(d) != length) goto python;
                PyObject *names = PyList_New(0);
                if (names == NULL) goto error;
                for (Py_ssize_t i = 2; i < length;) {
                    Py_ssize_t name_length = d[i++];
                    int ascii = 1;
                    for (Py_ssize_t k = 0; k < name_length && i + k < length; k++) ascii &= d[i + k] < 0x80;
                    if (name_length == 0 || i + name_length > length || !ascii) {
                        Py_DECREF(names);
                        goto python;
                    }
                    PyObject *name = ascii_str((const char *)d + i, name_length);
                    if (name == NULL || PyList_Append(names, name) < 0) {
                        Py_XDECREF(name);
                        Py_DECREF(names);
                        goto error;
                    }
                    Py_DECREF(name);
                    i += name_length;
                }
                PyObject *tuple = PyList_AsTuple(names);
                Py_DECREF(names);
                if (tuple == NULL) goto error;
                Py_SETREF(alpn, tuple);
            } else if (type == 43) { /* supported_versions */
                if (length == 0 || d[0] % 2 || 1 + d[0] != length) goto python;
                for (Py_ssize_t i = 1; i + 1 < length; i += 2) {
                    unsigned version = get16(d + i);
                    offers_tls13 |= version == 0x0304 || version >> 8 == 0x7F;
                }
            } else if (type == 0xFE0D) {
                ech = 1;
            }
        }
        if (pos != block_end) goto python;
    }
    PyObject *type_tuple = PyList_AsTuple(types);
    if (type_tuple == NULL) goto error;
    result = tuple_steal(6, (PyObject *[]){Py_NewRef(server_name), Py_NewRef(alpn), PyBool_FromLong(ech),
                                           PyLong_FromUnsignedLong(legacy_version), PyBool_FromLong(offers_tls13),
                                           type_tuple});
    goto done;
python:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(server_name);
    Py_XDECREF(alpn);
    Py_XDECREF(types);
    PyBuffer_Release(&view);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * Replay selection: sensor.capture.bpf's filter, applied in-process to classic pcap records.
 * The same packets pass as through libpcap with that filter, except that a packet whose
 * headers are cut short by the snap length, which BPF drops, passes here (the decoder counts it).
 */

#define MAX_FRAME (262144 * 4) /* sensor.capture.pcap.MAX_FRAME: a longer record is corruption */
#define BULK_SEGMENT 1000       /* sensor.capture.bpf.BULK_SEGMENT */

static int http_port(unsigned port) {
    return port == 80 || port == 8000 || port == 8008 || port == 8080 || port == 8888 || port == 3128;
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
        if (!other_record && (payload < BULK_SEGMENT || http_port(dport))) return 1;
    }
    if (have >= 6 && p[0] == 0x16 && p[1] == 0x03 && p[5] == 1) return 1; /* opens a ClientHello */
    if (have < 4) return 0;
    uint32_t word = get32(p); /* opens an HTTP request */
    return word == 0x47455420 || word == 0x504F5354 || word == 0x50555420 || word == 0x48454144 ||
           word == 0x44454C45 || word == 0x4F505449 || word == 0x50415443 || word == 0x434F4E4E ||
           word == 0x54524143;
}

/* mDNS, LLMNR, NetBIOS name service: sensor.decode.dns.LOCAL_NAME_PORTS */
static int local_name_port(unsigned port) { return port == 5353 || port == 5355 || port == 137; }

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

static int keep_udp(const uint8_t *f, Py_ssize_t n, Py_ssize_t l4, int depth) {
    if (l4 + 4 > n) return 1;
    unsigned sport = get16(f + l4), dport = get16(f + l4 + 2);
    if (sport == 53 || dport == 53 || local_name_port(sport) || local_name_port(dport)) return 1;
    if (tunnel_port(sport) || tunnel_port(dport)) {
        Py_ssize_t at = l4 + 8;
        unsigned kind = tunnel_kind(dport);
        if (kind == TUNNEL_OTHER) kind = tunnel_kind(sport);
        if (kind == TUNNEL_VXLAN && at + 8 <= n && (f[at] & 0x08)) return keep_inner(0x6558, f, n, at + 8, depth);
        if (kind == TUNNEL_GENEVE && at + 8 <= n && !(f[at] >> 6))
            return keep_inner(get16(f + at + 2), f, n, at + 8 + (f[at] & 0x3F) * 4, depth);
        return 1; /* GTP-U, Teredo, or a header the decoder will not take as a tunnel: whole */
    }
    return quic_initial(f, n, l4 + 8);
}

/* GRE (sensor.decode.packet._gre): bridged Ethernet, ERSPAN and IP inside are selected as bare
 * frames; PPTP, source-routed and other payloads pass whole. */
static int keep_gre(const uint8_t *f, Py_ssize_t n, Py_ssize_t at, int depth) {
    if (at + 4 > n) return 1;
    unsigned flags = f[at], protocol = get16(f + at + 2);
    if ((flags & 0x40) || (f[at + 1] & 0x07)) return 1;
    Py_ssize_t pos = at + 4 + 4 * (!!(flags & 0x80) + !!(flags & 0x20) + !!(flags & 0x10));
    if (protocol == 0x88BE) return keep_inner(0x6558, f, n, pos + ((flags & 0x10) ? 8 : 0), depth); /* ERSPAN I/II */
    if (protocol == 0x22EB) { /* ERSPAN III: frame type 0 is Ethernet */
        if (pos + 12 > n || ((f[pos + 10] >> 2) & 0x1F)) return 1;
        return keep_inner(0x6558, f, n, pos + ((f[pos + 11] & 1) ? 20 : 12), depth);
    }
    return keep_inner(protocol, f, n, pos, depth);
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

static inline uint32_t record_u32(const uint8_t *p, int big) {
    return big ? get32(p) : ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

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

/* The replay worker (0 or 1) that decodes a frame: the parity of its client's address (the side
 * with the higher port), as sensor.pipeline.Pipeline.replay splits them, so that a host's flows,
 * DNS and alert windows stay in one process. Fragments, tunnels (their inner addresses are not
 * looked at here), and whatever has no TCP or UDP ports in reach, go to worker 0, where fragments
 * are reassembled. */
static int worker_of(unsigned linktype, const uint8_t *f, Py_ssize_t n) {
    Py_ssize_t off = network_offset(linktype, f, n), pos, end;
    const uint8_t *src, *dst;
    unsigned proto;
    if (off < 0 || n < off + 20) return 0;
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
    if ((proto != TCP && proto != UDP) || pos + 4 > end) return 0;
    if (proto == UDP && (tunnel_port(get16(f + pos)) || tunnel_port(get16(f + pos + 2)))) return 0;
    return ((get16(f + pos) > get16(f + pos + 2) ? src : dst)[3]) & 1;
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
 * With `split`, each kept record goes to its worker (worker_of), and only workers in the `wanted`
 * bit mask keep theirs. Runs without the GIL: the thread calling it does not hold up the decoder.
 * state: 0 more to read from the next offset; 1 the end; 2 the last record is cut short (detail:
 * bytes left over); 3 a corrupt record at the next offset (detail: its length); 4 a read error
 * (detail: errno). */
static PyObject *select_pcap_file(PyObject *module, PyObject *args) {
    int fd, big, split, wanted, stopped = 0;
    long long offset, stop_at;
    unsigned int linktype;
    Py_ssize_t enough;
    if (!PyArg_ParseTuple(args, "iLIpnpiL", &fd, &offset, &linktype, &big, &enough, &split, &wanted, &stop_at))
        return NULL;
    uint8_t *block = PyMem_RawMalloc(SELECT_BLOCK + 16 + MAX_FRAME);
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
            if (incl > MAX_FRAME) {
                state = SELECT_CORRUPT;
                detail = incl;
                break;
            }
            if (pos + 16 + (Py_ssize_t)incl > got) break;
            const uint8_t *frame = block + pos + 16;
            if (incl == 0 || keep_frame(linktype, frame, incl)) {  /* empty records: counted by the reader */
                int worker = split && incl ? worker_of(linktype, frame, incl) : 0;
                if (((wanted >> worker) & 1) && output_add(&outs[worker], block + pos, 16 + incl) < 0) {
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
        } else { /* pos == 0: one record larger than a block (at most MAX_FRAME): read it whole */
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
    return incl <= 262144 && orig >= incl && orig <= MAX_FRAME && frac < 1000000000u && spread <= 7 * 86400;
}

static PyObject *pcap_resync(PyObject *module, PyObject *args) {
    int fd, big;
    long long offset;
    if (!PyArg_ParseTuple(args, "iLp", &fd, &offset, &big)) return NULL;
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

/* pcap_records(buffer, start, linktype, big_endian, nanoseconds, high) -> (records, next, empty, late, high)
 * sensor.capture.pcap.CaptureFile._pcap's record loop: (timestamp, linktype, frame) for every
 * record wholly in `buffer` from `start`, and where the first record not wholly there begins; also
 * how many of those records were empty, how many were stamped more than TIME_JUMP seconds before
 * the latest time stamp so far (`high` on entry, the new one returned). */
#define TIME_JUMP 3600.0
static PyObject *pcap_records(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, empty = 0, late = 0;
    PyObject *linktype;
    int big, nano;
    double high;
    if (!PyArg_ParseTuple(args, "y*nOppd", &view, &pos, &linktype, &big, &nano, &high)) return NULL;
    const uint8_t *buf = view.buf;
    Py_ssize_t len = view.len;
    double scale = nano ? 1e-9 : 1e-6;
    PyObject *records = PyList_New(0);
    if (records == NULL || pos < 0) goto fail;
    while (pos + 16 <= len) {
        uint32_t incl = record_u32(buf + pos + 8, big);
        if (pos + 16 + (Py_ssize_t)incl > len) break;
        double ts = (double)record_u32(buf + pos, big) + (double)record_u32(buf + pos + 4, big) * scale;
        if (incl == 0) empty++;
        if (ts > high) high = ts;
        else if (ts < high - TIME_JUMP) late++;
        PyObject *record = tuple_steal(3, (PyObject *[]){PyFloat_FromDouble(ts), Py_NewRef(linktype),
                                                         bytes_at(buf + pos + 16, incl)});
        if (record == NULL || PyList_Append(records, record) < 0) {
            Py_XDECREF(record);
            goto fail;
        }
        Py_DECREF(record);
        pos += 16 + incl;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nnnnd)", records, pos, empty, late, high);
fail:
    Py_XDECREF(records);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse_hello", parse_hello, METH_O,
     "parse_hello(message) -> (server_name, alpn, ech, legacy_version, offers_tls13, extensions), or None"},
    {"community_id", community_id, METH_VARARGS,
     "community_id(src_ip, src_port, dst_ip, dst_port, protocol, seed) -> Community ID v1, or None"},
    {"set_tunnel_ports", set_tunnel_ports, METH_VARARGS,
     "set_tunnel_ports(ports, vxlan_ports, geneve_ports): the UDP ports whose datagrams are tunnels"},
    {"decode_frame", (PyCFunction)(void (*)(void))decode_frame, METH_FASTCALL,
     "decode_frame(linktype, frame) -> the PacketDecoder.decode tuple, or None to let the Python decoder decide"},
    {"pcap_records", pcap_records, METH_VARARGS,
     "pcap_records(buffer, start, linktype, big_endian, nanoseconds, high)"
     " -> ([(ts, linktype, frame), ...], next, empty, late, high)"},
    {"pcap_resync", pcap_resync, METH_VARARGS,
     "pcap_resync(fd, offset, big_endian) -> a likely record boundary at or after offset, or -1"},
    {"select_pcap_file", select_pcap_file, METH_VARARGS,
     "select_pcap_file(fd, offset, linktype, big_endian, enough, split, wanted, stop_at)"
     " -> (kept for worker 0, kept for worker 1, next offset, state, detail)"},
    {"event_envelope", (PyCFunction)(void (*)(void))event_envelope, METH_FASTCALL,
     "event_envelope(ts, dataset, flow, protocol, observer, ecs_version, module, data_stream) -> the fields every "
     "event has"},
    {"bind_json", bind_json, METH_O, "bind_json(orjson.dumps)"},
    {"dns_event_line", (PyCFunction)(void (*)(void))dns_event_line, METH_FASTCALL,
     "dns_event_line(record, registered_domain or None, prefix) -> the event as a JSON line, or None"},
    {"tls_event_line", (PyCFunction)(void (*)(void))tls_event_line, METH_FASTCALL,
     "tls_event_line(record, destination_domain or None, prefix) -> the event as a JSON line, or None"},
    {"record_maker", record_maker, METH_O, "record_maker(cls) -> make(*fields), cls built from every field in order"},
    {"bind_dns", bind_dns, METH_VARARGS, "bind_dns(DnsMessage, DnsAnswer, TYPE_NAMES, RCODE_NAMES)"},
    {"parse_dns", parse_dns, METH_O, "parse_dns(data) -> DnsMessage, or None to let the Python parser decide"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sensor._fast", "Compiled fast paths for the decode stage.", -1, methods,
};

PyMODINIT_FUNC PyInit__fast(void) {
    for (int i = 0; i < K_COUNT; i++)
        if (envelope_str[i] == NULL && (envelope_str[i] = PyUnicode_InternFromString(envelope_text[i])) == NULL)
            return NULL;
    for (int i = 0; i < J_COUNT; i++)
        if (json_str[i] == NULL && (json_str[i] = PyUnicode_InternFromString(json_text[i])) == NULL) return NULL;
    return PyModule_Create(&module);
}
