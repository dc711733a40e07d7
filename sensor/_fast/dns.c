#include "fast.h"

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

/* 1 for a byte printable as itself inside a label (dns._NEEDS_ESCAPE's complement). */
static const uint8_t label_plain[256] = {[0x21 ... 0x2D] = 1, [0x2F ... 0x5B] = 1, [0x5D ... 0x7E] = 1};

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
            const uint8_t *label = m->data + position + 1; /* (read once: `out` may alias anything) */
            char *to = out + written;
            unsigned plain = 1;
            for (unsigned i = 0; i < length; i++) { /* checked after the copy: no branch a byte */
                uint8_t b = label[i];
                plain &= label_plain[b];
                to[i] = (char)b;
            }
            if (!plain) return -1;
            written += length;
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

static int text_adds(Text *t, const char *s) { return text_add(t, s, (Py_ssize_t)strlen(s)); }

int text_addf_uint(Text *t, unsigned long value) {
    char number[24];
    int n = snprintf(number, sizeof number, "%lu", value);
    return text_add(t, number, n);
}

int text_add_hex(Text *t, const uint8_t *p, Py_ssize_t n) {
    static const char digits[] = "0123456789abcdef";
    if (text_reserve(t, 2 * n) < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        t->text[t->len++] = digits[p[i] >> 4];
        t->text[t->len++] = digits[p[i] & 15];
    }
    return 0;
}

int text_add_plain(Text *t, const uint8_t *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (!text_byte_plain(p[i])) return 1;
    return text_add(t, (const char *)p, n);
}

/* An IPv6 address as ipaddress.IPv6Address.compressed writes it: lower-case hextets without
 * leading zeros, the first longest run of two or more zero hextets as "::". Addresses whose
 * first 80 bits are zero (IPv4-mapped and -compatible forms) are left to Python. */
int text_add_ipv6(Text *t, const uint8_t *p) {
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
            if (text_add(t, address, address_chars(v + i, 4, address)) < 0) return -1;
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
    if (rtype == 1 && n == 4) return text_add(t, address, address_chars(rdata, 4, address));
    if (rtype == 28 && n == 16) return text_add(t, address, address_chars(rdata, 16, address));
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

/* The name as a str, sharing `previous` when it spells the same name (answers usually repeat
 * the question's name through a compression pointer). */
static PyObject *name_str(const char *name, Py_ssize_t n, PyObject *previous) {
    if (previous != NULL && PyUnicode_GET_LENGTH(previous) == n && memcmp(PyUnicode_DATA(previous), name, n) == 0)
        return Py_NewRef(previous);
    return ascii_str(name, n);
}

static RecordType dns_message_record, dns_answer_record;
static PyObject *dns_type_names, *dns_rcode_names;
#define CODE_MEMO 256 /* code_name's memo: the names of the codes below this */
static PyObject *type_memo[CODE_MEMO], *rcode_memo[CODE_MEMO];

/* bind_dns(DnsMessage, DnsAnswer, TYPE_NAMES, RCODE_NAMES): what parse_dns builds its result from. */
PyObject *bind_dns(PyObject *module, PyObject *args) {
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
    for (int i = 0; i < CODE_MEMO; i++) {
        Py_CLEAR(type_memo[i]);
        Py_CLEAR(rcode_memo[i]);
    }
    Py_RETURN_NONE;
}

/* names[code], else prefix followed by the number (sensor.decode.dns.type_name and RCODE names); the
 * answers for codes below CODE_MEMO kept (bind_dns forgets them), one look-up per code and table. */
static PyObject *code_name_of(PyObject *names, unsigned code, const char *prefix);

static PyObject *code_name(PyObject *names, unsigned code, const char *prefix) {
    PyObject **memo = names == dns_type_names ? type_memo : names == dns_rcode_names ? rcode_memo : NULL;
    if (memo == NULL || code >= CODE_MEMO) return code_name_of(names, code, prefix);
    if (memo[code] == NULL && (memo[code] = code_name_of(names, code, prefix)) == NULL) return NULL;
    return Py_NewRef(memo[code]);
}

static PyObject *code_name_of(PyObject *names, unsigned code, const char *prefix) {
    PyObject *key = PyLong_FromUnsignedLong(code);
    if (key == NULL) return NULL;
    PyObject *name = PyDict_GetItemWithError(names, key);
    Py_DECREF(key);
    if (name != NULL) return Py_NewRef(name);
    return PyErr_Occurred() ? NULL : PyUnicode_FromFormat("%s%u", prefix, code);
}

/* parse_dns(data) -> the DnsMessage (as sensor.decode.dns.parse_message_py gives it), or None when
 * parse_message_py must handle the message. bind_dns must have been called. */
PyObject *parse_dns(PyObject *module, PyObject *arg) {
    if (!dns_bound()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = dns_message_of(view.buf, view.len);
    PyBuffer_Release(&view);
    if (result == NULL && !PyErr_Occurred()) result = Py_NewRef(Py_None);
    return result;
}

int dns_bound(void) {
    if (dns_message_record.type != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "bind_dns() first");
    return 0;
}

/* The DnsMessage of `size` bytes at `data`, or NULL: with an exception set on error, without one
 * where the Python parser decides. bind_dns first. */
PyObject *dns_message_of(const uint8_t *data, Py_ssize_t size) {
    Message m = {data, size};
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
error:
    result = NULL;
done:
    Py_XDECREF(questions);
    Py_XDECREF(answers);
    PyMem_Free(text.text);
    return result;
}


/* ---------------------------------------------------------------------------------------------
 * sensor.decode.dns.DnsTransactions.on_datagram for a message of one question in the common
 * cases: a query not seen before while there is room, or a response to a waiting query. The
 * rest (retransmissions, unmatched responses, a full table, several questions) returns None
 * before changing anything, and the Python code takes it.
 */

static RecordType dns_query_record, flow_record;
static PyObject *udp_text;

/* bind_dns_pairs(DnsQuery, Flow): what dns_pair builds. */
PyObject *bind_dns_pairs(PyObject *module, PyObject *args) {
    PyObject *query, *flow;
    if (!PyArg_ParseTuple(args, "OO", &query, &flow)) return NULL;
    RecordType query_record = {0}, new_flow_record = {0};
    if (record_type_bind(&query_record, query, 8) < 0 || record_type_bind(&new_flow_record, flow, 5) < 0) {
        record_type_clear(&query_record);
        return NULL;
    }
    if (udp_text == NULL && (udp_text = PyUnicode_InternFromString("udp")) == NULL) {
        record_type_clear(&query_record);
        record_type_clear(&new_flow_record);
        return NULL;
    }
    record_type_clear(&dns_query_record);
    record_type_clear(&flow_record);
    dns_query_record = query_record;
    flow_record = new_flow_record;
    Py_RETURN_NONE;
}

static PyObject *field(const RecordType *record, Py_ssize_t i, PyObject *obj) {
    PyObject *slot = record->slots[i];
    return Py_TYPE(slot)->tp_descr_get(slot, obj, (PyObject *)record->type);
}

/* str.lower() of an ASCII name; the name itself when it has no capitals. NULL + no error: not ASCII. */
static PyObject *ascii_lower(PyObject *name) {
    if (!PyUnicode_Check(name) || !PyUnicode_IS_ASCII(name)) return NULL;
    const char *s = (const char *)PyUnicode_DATA(name);
    Py_ssize_t n = PyUnicode_GET_LENGTH(name), i = 0;
    while (i < n && !(s[i] >= 'A' && s[i] <= 'Z')) i++;
    if (i == n) return Py_NewRef(name);
    PyObject *lower = PyUnicode_New(n, 127);
    if (lower == NULL) return NULL;
    char *d = (char *)PyUnicode_DATA(lower);
    for (i = 0; i < n; i++) d[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    return lower;
}

/* dns_pair(pending, max_pending, ts, src, sport, dst, dport, message, records) -> records added, or None */
PyObject *dns_pair(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9 || !PyDict_CheckExact(args[0]) || !PyList_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "dns_pair(pending, max_pending, ts, src, sport, dst, dport, message, records)");
        return NULL;
    }
    if (dns_query_record.type == NULL || dns_message_record.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_dns() and bind_dns_pairs() first");
        return NULL;
    }
    PyObject *pending = args[0], *ts = args[2], *src = args[3], *sport = args[4], *dst = args[5], *dport = args[6],
             *message = args[7], *records = args[8];
    if (Py_TYPE(message) != dns_message_record.type) Py_RETURN_NONE;
    Py_ssize_t max_pending = PyLong_AsSsize_t(args[1]);
    if (max_pending == -1 && PyErr_Occurred()) return NULL;
    PyObject *id = NULL, *response = NULL, *questions = NULL, *lower = NULL, *key = NULL, *result = NULL;
    if ((id = field(&dns_message_record, 0, message)) == NULL || (response = field(&dns_message_record, 1, message)) == NULL ||
        (questions = field(&dns_message_record, 4, message)) == NULL)
        goto done;
    if (!PyTuple_Check(questions) || PyTuple_GET_SIZE(questions) != 1) goto decline;
    PyObject *question = PyTuple_GET_ITEM(questions, 0);
    if (!PyTuple_Check(question) || PyTuple_GET_SIZE(question) != 2) goto decline;
    PyObject *name = PyTuple_GET_ITEM(question, 0), *qtype = PyTuple_GET_ITEM(question, 1);
    if ((lower = ascii_lower(name)) == NULL) {
        if (PyErr_Occurred()) goto done;
        goto decline;
    }
    int is_response = PyObject_IsTrue(response);
    if (is_response < 0) goto done;
    if (is_response) {
        key = PyTuple_Pack(6, dst, dport, src, sport, id, lower);
        Py_hash_t hash = key != NULL ? PyObject_Hash(key) : -1;
        if (hash == -1) goto done;
        PyObject *query = dict_get_hashed(pending, key, hash); /* borrowed */
        if (query == NULL) {
            if (PyErr_Occurred()) goto done;
            goto decline; /* unmatched: counted by the Python code */
        }
        if (!PyTuple_Check(query) || PyTuple_GET_SIZE(query) != 5) goto decline;
        PyObject *values[8];
        for (Py_ssize_t i = 0; i < 5; i++) values[i] = Py_NewRef(PyTuple_GET_ITEM(query, i));
        values[5] = Py_NewRef(Py_True);
        values[6] = field(&dns_message_record, 3, message);
        values[7] = field(&dns_message_record, 5, message);
        PyObject *record = record_new(&dns_query_record, values);
        if (record == NULL) goto done;
        if (dict_del_hashed(pending, key, hash) < 0 || PyList_Append(records, record) < 0) {
            Py_DECREF(record);
            goto done;
        }
        Py_DECREF(record);
        result = PyLong_FromLong(1);
        goto done;
    }
    key = PyTuple_Pack(6, src, sport, dst, dport, id, lower);
    Py_hash_t hash = key != NULL ? PyObject_Hash(key) : -1;
    if (hash == -1) goto done;
    int known = dict_has_hashed(pending, key, hash);
    if (known < 0) goto done;
    if (known || PyDict_GET_SIZE(pending) >= max_pending) goto decline; /* a retransmission, or an eviction */
    PyObject *flow = record_new(&flow_record, (PyObject *[]){Py_NewRef(src), Py_NewRef(sport), Py_NewRef(dst),
                                                             Py_NewRef(dport), Py_NewRef(udp_text)});
    if (flow == NULL) goto done;
    PyObject *waiting = PyTuple_Pack(5, ts, flow, id, name, qtype);
    Py_DECREF(flow);
    if (waiting == NULL) goto done;
    int stored = dict_set_hashed(pending, key, waiting, hash);
    Py_DECREF(waiting);
    if (stored < 0) goto done;
    result = PyLong_FromLong(0);
    goto done;
decline:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(id);
    Py_XDECREF(response);
    Py_XDECREF(questions);
    Py_XDECREF(lower);
    Py_XDECREF(key);
    return result;
}


/* ---------------------------------------------------------------------------------------------
 * sensor.enrich.dnscache.DnsCache._store_py for the common answers: addresses without a CNAME.
 */

/* The kind of an answer's type name: 1 an address (A, AAAA), 2 CNAME, 0 anything else, -1 not a str. */
static int answer_kind(PyObject *type) {
    if (!PyUnicode_Check(type) || !PyUnicode_IS_ASCII(type)) return -1;
    const char *s = (const char *)PyUnicode_DATA(type);
    Py_ssize_t n = PyUnicode_GET_LENGTH(type);
    if ((n == 1 && s[0] == 'A') || (n == 4 && memcmp(s, "AAAA", 4) == 0)) return 1;
    return n == 5 && memcmp(s, "CNAME", 5) == 0 ? 2 : 0;
}

/* Whether a field of a DnsAnswer is an ASCII str (its lower() is ascii_lower's); -1 on error. */
static int ascii_field(PyObject *answer, Py_ssize_t i) {
    PyObject *value = field(&dns_answer_record, i, answer);
    if (value == NULL) return -1;
    int ascii = PyUnicode_Check(value) && PyUnicode_IS_ASCII(value);
    Py_DECREF(value);
    return ascii;
}

/* Whether every answer is a DnsAnswer whose type is a str, every address's TTL an int a double
 * holds, and, with CNAMEs among them, every owner name and CNAME target an ASCII str: what
 * store_answers takes. 1 without CNAMEs, 2 with, 0 not plain, -1 on error. */
static int plain_answers(PyObject *answers) {
    Py_ssize_t count = PyTuple_GET_SIZE(answers);
    int cnames = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *answer = PyTuple_GET_ITEM(answers, i);
        if (Py_TYPE(answer) != dns_answer_record.type) return 0;
        PyObject *type = field(&dns_answer_record, 1, answer);
        if (type == NULL) return -1;
        int kind = answer_kind(type);
        Py_DECREF(type);
        if (kind < 0) return 0;
        if (kind == 2) {
            int ascii = ascii_field(answer, 2);
            if (ascii <= 0) return ascii;
            cnames = 1;
        }
        if (kind == 1) {
            PyObject *ttl = field(&dns_answer_record, 3, answer);
            if (ttl == NULL) return -1;
            int plain = PyLong_CheckExact(ttl) && !(PyLong_AsDouble(ttl) == -1.0 && PyErr_Occurred());
            Py_DECREF(ttl);
            if (!plain) {
                PyErr_Clear(); /* a number no double holds */
                return 0;
            }
        }
    }
    for (Py_ssize_t i = 0; cnames && i < count; i++) { /* every owner is looked up in the chain */
        PyObject *answer = PyTuple_GET_ITEM(answers, i), *type = field(&dns_answer_record, 1, answer);
        if (type == NULL) return -1;
        int kind = answer_kind(type);
        Py_DECREF(type);
        if (kind == 1 || kind == 2) {
            int ascii = ascii_field(answer, 0);
            if (ascii <= 0) return ascii;
        }
    }
    return 1 + cnames;
}

/* An answer's field lowered (an ASCII str, as plain_answers found), with `strip` its trailing dots cut. */
static PyObject *lowered_field(PyObject *answer, Py_ssize_t i, int strip) {
    PyObject *value = field(&dns_answer_record, i, answer);
    if (value == NULL) return NULL;
    PyObject *lower = ascii_lower(value);
    Py_DECREF(value);
    if (lower == NULL || !strip) return lower;
    const char *text = (const char *)PyUnicode_DATA(lower);
    Py_ssize_t n = PyUnicode_GET_LENGTH(lower), kept = n;
    while (kept > 0 && text[kept - 1] == '.') kept--;
    if (kept == n) return lower;
    PyObject *cut = PyUnicode_Substring(lower, 0, kept);
    Py_DECREF(lower);
    return cut;
}

/* One step of sensor.enrich.dnscache._chain: the path to `target` through `owner`, if the owner's
 * is known (1, or 0 when not yet); -1 on error. */
static int chain_step(PyObject *paths, PyObject *owner, PyObject *target) {
    PyObject *path = PyDict_GetItemWithError(paths, owner);
    if (path == NULL) return PyErr_Occurred() ? -1 : 0;
    int known = PyDict_Contains(paths, target);
    if (known < 0) return -1;
    if (!known && PyTuple_GET_SIZE(path) < 16) {
        Py_ssize_t n = PyTuple_GET_SIZE(path);
        PyObject *longer = PyTuple_New(n + 1);
        if (longer == NULL) return -1;
        for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(longer, i, Py_NewRef(PyTuple_GET_ITEM(path, i)));
        PyTuple_SET_ITEM(longer, n, Py_NewRef(target));
        int failed = PyDict_SetItem(paths, target, longer) < 0;
        Py_DECREF(longer);
        if (failed) return -1;
    }
    return 1;
}

/* _chain's passes over the CNAMEs whose owner was not reachable yet (`pending`, a list of
 * (owner, target) pairs, taken), until nothing new is reachable: 0, or -1 on error. */
static int follow_chains(PyObject *paths, PyObject *pending) {
    while (PyList_GET_SIZE(pending)) {
        PyObject *deferred = PyList_New(0);
        if (deferred == NULL) goto error;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
            PyObject *pair = PyList_GET_ITEM(pending, i);
            int step = chain_step(paths, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
            if (step < 0 || (step == 0 && PyList_Append(deferred, pair) < 0)) {
                Py_DECREF(deferred);
                goto error;
            }
        }
        int stuck = PyList_GET_SIZE(deferred) == PyList_GET_SIZE(pending);
        Py_SETREF(pending, deferred);
        if (stuck) break;
    }
    Py_DECREF(pending);
    return 0;
error:
    Py_DECREF(pending);
    return -1;
}

/* sensor.enrich.dnscache._chain(answers, asked): every owner name's path of names from the
 * question's (`asked`, a 1-tuple of it lowered), for answers plain_answers found plain; NULL on error. */
static PyObject *cname_paths(PyObject *answers, PyObject *asked) {
    PyObject *paths = PyDict_New(), *pending = PyList_New(0);
    if (paths == NULL || pending == NULL || PyDict_SetItem(paths, PyTuple_GET_ITEM(asked, 0), asked) < 0) goto error;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(answers); i++) {
        PyObject *answer = PyTuple_GET_ITEM(answers, i), *type = field(&dns_answer_record, 1, answer);
        if (type == NULL) goto error;
        int kind = answer_kind(type);
        Py_DECREF(type);
        if (kind != 2) continue;
        PyObject *owner = lowered_field(answer, 0, 0), *target = owner != NULL ? lowered_field(answer, 2, 1) : NULL;
        int step = target != NULL ? chain_step(paths, owner, target) : -1;
        PyObject *pair = step == 0 ? PyTuple_Pack(2, owner, target) : NULL;
        int failed = step < 0 || (step == 0 && (pair == NULL || PyList_Append(pending, pair) < 0));
        Py_XDECREF(pair);
        Py_XDECREF(owner);
        Py_XDECREF(target);
        if (failed) goto error;
    }
    if (follow_chains(paths, pending) < 0) {
        pending = NULL;
        goto error;
    }
    return paths;
error:
    Py_XDECREF(paths);
    Py_XDECREF(pending);
    return NULL;
}

/* entries[address] = (expiry, names), moved to the end of the OrderedDict `entries` (`move`: its
 * move_to_end): 0, or -1 on error. */
static int store_entry(PyObject *entries, PyObject *move, PyObject *address, double expiry, PyObject *names) {
    PyObject *entry = tuple_steal(2, (PyObject *[]){PyFloat_FromDouble(expiry), Py_NewRef(names)});
    Py_ssize_t size = PyDict_GET_SIZE(entries); /* unchanged by the store: the address was known */
    int failed = entry == NULL || PyObject_SetItem(entries, address, entry) < 0;
    Py_XDECREF(entry);
    if (!failed && PyDict_GET_SIZE(entries) == size) { /* a new key is stored at the end already */
        PyObject *moved = PyObject_CallOneArg(move, address);
        failed = moved == NULL;
        Py_XDECREF(moved);
    }
    return failed ? -1 : 0;
}

/* Store every address of plain `answers` as (expiry, names) in the OrderedDict `entries`, each
 * moved to its end (`move`: its move_to_end); names: `asked`, or with CNAMEs its path in the chain
 * from `asked` to the address record's owner (DnsCache._store_py's second pass, which leaves
 * what its first stored as the second alone would). The number stored, or -1 on error. */
static Py_ssize_t store_answers(PyObject *entries, PyObject *move, double ts, PyObject *asked, PyObject *answers,
                                int cnames, double min_ttl, double max_ttl) {
    Py_ssize_t count = PyTuple_GET_SIZE(answers), stored = 0;
    PyObject *paths = NULL;
    if (cnames && (paths = cname_paths(answers, asked)) == NULL) return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *answer = PyTuple_GET_ITEM(answers, i), *type = field(&dns_answer_record, 1, answer);
        if (type == NULL) goto error;
        int kind = answer_kind(type);
        Py_DECREF(type);
        if (kind != 1) continue;
        PyObject *names = asked;
        if (paths != NULL) {
            PyObject *owner = lowered_field(answer, 0, 0);
            if (owner == NULL) goto error;
            PyObject *path = PyDict_GetItemWithError(paths, owner);
            Py_DECREF(owner);
            if (path == NULL && PyErr_Occurred()) goto error;
            if (path != NULL) names = path;
        }
        PyObject *address = field(&dns_answer_record, 2, answer), *ttl_obj = field(&dns_answer_record, 3, answer);
        double ttl = ttl_obj != NULL ? PyLong_AsDouble(ttl_obj) : -1.0;
        Py_XDECREF(ttl_obj);
        if (address == NULL || PyErr_Occurred()) {
            Py_XDECREF(address);
            goto error;
        }
        int failed = store_entry(entries, move, address, ts + (ttl < min_ttl ? min_ttl : ttl > max_ttl ? max_ttl : ttl),
                                 names) < 0;
        Py_DECREF(address);
        if (failed) goto error;
        stored++;
    }
    Py_XDECREF(paths);
    return stored;
error:
    Py_XDECREF(paths);
    return -1;
}

/* What sensor.enrich.dnscache.DnsCache._learn_py stores of a DnsMessage, for each of its questions
 * the address answers as (expiry, (the question's name lowered,)) in the OrderedDict `entries`:
 * how many, or None having stored nothing where the Python code decides (a CNAME chain, anything
 * unusual); NULL on error. */
PyObject *learn_message(PyObject *entries, PyObject *move, double ts, PyObject *message, double min_ttl,
                        double max_ttl) {
    if (dns_message_record.type == NULL || Py_TYPE(message) != dns_message_record.type || !PyDict_Check(entries))
        Py_RETURN_NONE;
    PyObject *response = field(&dns_message_record, 1, message), *questions = field(&dns_message_record, 4, message),
             *answers = field(&dns_message_record, 5, message), *lowered = NULL, *result = NULL;
    if (response == NULL || questions == NULL || answers == NULL) goto done;
    if (!PyTuple_Check(questions) || !PyTuple_Check(answers)) goto python;
    int is_response = PyObject_IsTrue(response);
    if (is_response < 0) goto done;
    if (PyTuple_GET_SIZE(answers) == 0 || !is_response) {
        result = PyLong_FromLong(0);
        goto done;
    }
    int plain = plain_answers(answers);
    if (plain < 0) goto done;
    if (!plain) goto python;
    Py_ssize_t count = PyTuple_GET_SIZE(questions), stored = 0;
    if ((lowered = PyTuple_New(count)) == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) { /* every name first: nothing is stored unless all are plain */
        PyObject *question = PyTuple_GET_ITEM(questions, i);
        if (!PyTuple_Check(question) || PyTuple_GET_SIZE(question) < 1) goto python;
        PyObject *lower = ascii_lower(PyTuple_GET_ITEM(question, 0));
        if (lower == NULL) {
            if (PyErr_Occurred()) goto done;
            goto python;
        }
        PyObject *asked = PyTuple_Pack(1, lower);
        Py_DECREF(lower);
        if (asked == NULL) goto done;
        PyTuple_SET_ITEM(lowered, i, asked);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t added = store_answers(entries, move, ts, PyTuple_GET_ITEM(lowered, i), answers, plain == 2, min_ttl,
                                         max_ttl);
        if (added < 0) goto done;
        stored += added;
    }
    result = PyLong_FromSsize_t(stored);
    goto done;
python:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(response);
    Py_XDECREF(questions);
    Py_XDECREF(answers);
    Py_XDECREF(lowered);
    return result;
}

/* The number of answers of a DnsMessage that is a response (`message.answers and
 * message.is_response`: the ones a DNS cache learns from), else 0; -1 on error. */
Py_ssize_t message_answer_count(PyObject *message) {
    if (dns_message_record.type == NULL || Py_TYPE(message) != dns_message_record.type) return 0;
    PyObject *response = field(&dns_message_record, 1, message), *answers = field(&dns_message_record, 5, message);
    Py_ssize_t count = -1;
    if (response != NULL && answers != NULL) {
        int is_response = PyObject_IsTrue(response);
        count = is_response < 0 ? -1 : is_response && PyTuple_Check(answers) ? PyTuple_GET_SIZE(answers) : 0;
    }
    Py_XDECREF(response);
    Py_XDECREF(answers);
    return count;
}

/* dns_learn(entries, move_to_end, ts, message, min_ttl, max_ttl) -> learn_message's answer */
PyObject *dns_learn(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "dns_learn(entries, move_to_end, ts, message, min_ttl, max_ttl)");
        return NULL;
    }
    double ts = PyFloat_AsDouble(args[2]), min_ttl = PyFloat_AsDouble(args[4]), max_ttl = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred()) return NULL;
    return learn_message(args[0], args[1], ts, args[3], min_ttl, max_ttl);
}

/* ---------------------------------------------------------------------------------------------
 * What learn_message stores of the DnsMessage dns_message_of reads, read straight from the wire:
 * for another replay worker's answers, only ever learned from (sensor/_fast/share.c).
 */

#define WIRE_MAX_ANSWERS 64
#define WIRE_NAMES 8192  /* the lowered names of a walk's question and answers, one after another */
#define WIRE_NAME_ROOM 256 /* read_name writes at most this much (255 wire octets), NUL and all */

enum { WIRE_OTHER, WIRE_ADDRESS, WIRE_CNAME };

typedef struct {
    int kind;
    uint32_t ttl;
    Py_ssize_t rdata, rdata_end;
    Py_ssize_t owner, owner_len, target, target_len; /* the owner's and a CNAME's target's text in the names */
} WireAnswer;

/* The name at `offset` (in-place part bounded by `limit`) read by read_name into `names` at *used,
 * lowered: its text's start there (*used moved past it, except where it spells the previous
 * name at `previous`, shared then), or -1 where read_name fails or the names are full. */
static Py_ssize_t wire_name(const Message *m, Py_ssize_t offset, Py_ssize_t limit, char *names, Py_ssize_t *used,
                            Py_ssize_t previous, Py_ssize_t previous_len, Py_ssize_t *len, Py_ssize_t *after) {
    Py_ssize_t at = *used;
    if (WIRE_NAMES - at < WIRE_NAME_ROOM || read_name(m, offset, limit, names + at, len, after) < 0) return -1;
    for (Py_ssize_t i = at; i < at + *len; i++)
        if (names[i] >= 'A' && names[i] <= 'Z') names[i] += 32;
    if (previous >= 0 && previous_len == *len && memcmp(names + previous, names + at, *len) == 0) return previous;
    *used = at + *len;
    return at;
}

/* The names a walk read whole where they lie (no pointer in them): where, and their text. */
#define WIRE_SEEN 8
typedef struct {
    Py_ssize_t offset, at, len;
} WireSeen;

/* wire_name, but a name that is only a pointer to one of `seen` (its `count`) is not read again:
 * read_name would read the same text from there. A name read whole where it lies joins them. */
static Py_ssize_t wire_name_seen(const Message *m, Py_ssize_t offset, Py_ssize_t limit, char *names, Py_ssize_t *used,
                                 Py_ssize_t previous, Py_ssize_t previous_len, Py_ssize_t *len, Py_ssize_t *after,
                                 WireSeen *seen, int *count) {
    if (offset + 1 < limit && (m->data[offset] & 0xC0) == 0xC0) {
        Py_ssize_t target = ((Py_ssize_t)(m->data[offset] & 0x3F) << 8) | m->data[offset + 1];
        for (int i = 0; i < *count; i++)
            if (seen[i].offset == target && target < offset) {
                *len = seen[i].len;
                *after = offset + 2;
                return seen[i].at;
            }
    }
    Py_ssize_t at = wire_name(m, offset, limit, names, used, previous, previous_len, len, after);
    /* whole where it lies: its labels and the root octet, two more than its text */
    if (at >= 0 && *after - offset == *len + 2 && *count < WIRE_SEEN) seen[(*count)++] = (WireSeen){offset, at, *len};
    return at;
}

/* The str of a text in the names, `*last` (a str made before, whose text starts at `*last_at`)
 * when it is that text; NULL on error. `*last` holds the new str's reference. */
static PyObject *wire_str(const char *names, Py_ssize_t at, Py_ssize_t len, PyObject **last, Py_ssize_t *last_at) {
    if (*last != NULL && *last_at == at && PyUnicode_GET_LENGTH(*last) == len) return *last;
    PyObject *text = ascii_str(names + at, len);
    if (text == NULL) return NULL;
    Py_XSETREF(*last, text);
    *last_at = at;
    return text;
}

/* Every CNAME's path of names from the question's (`asked`, a 1-tuple of it lowered), as
 * cname_paths finds it from the message; NULL on error. */
static PyObject *wire_paths(const char *names, const WireAnswer *answers, unsigned count, PyObject *asked) {
    PyObject *paths = PyDict_New(), *pending = PyList_New(0), *owner_str = NULL;
    Py_ssize_t owner_at = -1;
    if (paths == NULL || pending == NULL || PyDict_SetItem(paths, PyTuple_GET_ITEM(asked, 0), asked) < 0) goto error;
    for (unsigned i = 0; i < count; i++) {
        const WireAnswer *answer = &answers[i];
        if (answer->kind != WIRE_CNAME) continue;
        PyObject *owner = wire_str(names, answer->owner, answer->owner_len, &owner_str, &owner_at);
        Py_ssize_t kept = answer->target_len; /* _chain's target.rstrip(".") */
        while (kept > 0 && names[answer->target + kept - 1] == '.') kept--;
        PyObject *target = owner != NULL ? ascii_str(names + answer->target, kept) : NULL;
        int step = target != NULL ? chain_step(paths, owner, target) : -1;
        PyObject *pair = step == 0 ? PyTuple_Pack(2, owner, target) : NULL;
        int failed = step < 0 || (step == 0 && (pair == NULL || PyList_Append(pending, pair) < 0));
        Py_XDECREF(pair);
        Py_XDECREF(target);
        if (failed) goto error;
    }
    Py_XDECREF(owner_str);
    if (follow_chains(paths, pending) < 0) {
        Py_DECREF(paths);
        return NULL;
    }
    return paths;
error:
    Py_XDECREF(owner_str);
    Py_XDECREF(paths);
    Py_XDECREF(pending);
    return NULL;
}

/* learn_message(entries, move, ts, dns_message_of(data, size), min_ttl, max_ttl) for a response
 * with answers, without building the message: the number stored; DNS_WIRE_DECLINED having changed
 * nothing where dns_message_of would not read it, where it is no response with answers, and for
 * what this walk leaves to the message (not one question, more than WIRE_MAX_ANSWERS answers or
 * names than WIRE_NAMES holds, an address record whose data is not an address); -1 on error.
 * Every record is read as dns_message_of reads it (read_name, render_rdata) before anything is
 * stored. */
Py_ssize_t dns_learn_wire(PyObject *entries, PyObject *move, double ts, const uint8_t *data, Py_ssize_t size,
                          double min_ttl, double max_ttl) {
    Message m = {data, size};
    WireAnswer answers[WIRE_MAX_ANSWERS];
    char names[WIRE_NAMES], address[INET6_ADDRSTRLEN];
    Py_ssize_t used = 0, asked_len, position, result = DNS_WIRE_DECLINED, previous = -1, previous_len = 0;
    Text text = {NULL, 0, 0};
    if (size < DNS_HEADER || !PyDict_Check(entries)) return DNS_WIRE_DECLINED;
    unsigned flags = get16(data + 2), qdcount = get16(data + 4), ancount = get16(data + 6),
             nscount = get16(data + 8), arcount = get16(data + 10), records = ancount + nscount + arcount;
    if (!(flags & 0x8000) || qdcount != 1 || ancount == 0 || ancount > WIRE_MAX_ANSWERS ||
        (Py_ssize_t)qdcount * DNS_MIN_QUESTION + (Py_ssize_t)records * DNS_MIN_RR > size - DNS_HEADER)
        return DNS_WIRE_DECLINED;
    WireSeen seen[WIRE_SEEN];
    int seen_count = 0;
    if (wire_name_seen(&m, DNS_HEADER, size, names, &used, -1, 0, &asked_len, &position, seen, &seen_count) < 0 ||
        position + 4 > size)
        return DNS_WIRE_DECLINED;
    position += 4;
    int cnames = 0;
    for (unsigned index = 0; index < records; index++) {
        WireAnswer *answer = &answers[index];
        Py_ssize_t after, rdata_len;
        if (index >= ancount) { /* authority, additional: their names only checked, as the parser does */
            if (read_name(&m, position, size, NULL, &rdata_len, &position) < 0 || position + 10 > size) goto done;
            position += 10 + get16(data + position + 8);
            if (position > size) goto done;
            continue;
        }
        answer->owner = wire_name_seen(&m, position, size, names, &used, previous, previous_len, &answer->owner_len,
                                       &position, seen, &seen_count);
        if (answer->owner < 0 || position + 10 > size) goto done;
        previous = answer->owner;
        previous_len = answer->owner_len;
        unsigned rtype = get16(data + position);
        answer->kind = WIRE_OTHER;
        answer->ttl = get32(data + position + 4);
        answer->rdata = position + 10;
        answer->rdata_end = position = answer->rdata + get16(data + position + 8);
        if (position > size) goto done;
        rdata_len = answer->rdata_end - answer->rdata;
        if (rtype == 1 || rtype == 28) { /* A, AAAA: an address, else its data in hex (the message's) */
            if (rdata_len != (rtype == 1 ? 4 : 16)) goto done;
            answer->kind = WIRE_ADDRESS;
        } else if (rtype == 5) { /* CNAME: its target as render_rdata reads it */
            answer->target = wire_name_seen(&m, answer->rdata, answer->rdata_end, names, &used, -1, 0,
                                            &answer->target_len, &after, seen, &seen_count);
            if (answer->target < 0 || after != answer->rdata_end) goto done;
            answer->kind = cnames = WIRE_CNAME;
        } else { /* rendered only to know that dns_message_of renders it */
            text.len = 0;
            int rc = render_rdata(&m, rtype, answer->rdata, answer->rdata_end, &text);
            if (rc < 0) {
                PyErr_NoMemory();
                result = -1;
                goto done;
            }
            if (rc > 0) goto done;
        }
    }
    /* read as the parser reads it: now stored as learn_message stores it */
    result = -1;
    PyObject *asked_name = ascii_str(names, asked_len), *asked = asked_name != NULL ? PyTuple_Pack(1, asked_name) : NULL,
             *paths = NULL, *owner = NULL, *names_of = asked;
    Py_ssize_t owner_at = -1, stored = 0;
    Py_XDECREF(asked_name);
    if (asked == NULL || (cnames && (paths = wire_paths(names, answers, ancount, asked)) == NULL)) goto stored;
    for (unsigned i = 0; i < ancount; i++) {
        const WireAnswer *answer = &answers[i];
        if (answer->kind != WIRE_ADDRESS) continue;
        if (paths != NULL) {
            PyObject *before = owner;
            if (wire_str(names, answer->owner, answer->owner_len, &owner, &owner_at) == NULL) goto stored;
            if (owner != before) { /* the same owner keeps its path */
                names_of = PyDict_GetItemWithError(paths, owner);
                if (names_of == NULL && PyErr_Occurred()) goto stored;
                if (names_of == NULL) names_of = asked;
            }
        }
        uint32_t ttl = answer->ttl;
        PyObject *key = ascii_str(address, address_chars(data + answer->rdata, answer->rdata_end - answer->rdata, address));
        int failed = key == NULL || store_entry(entries, move, key, ts + (ttl < min_ttl ? min_ttl : ttl > max_ttl ? max_ttl : ttl),
                                                names_of) < 0;
        Py_XDECREF(key);
        if (failed) goto stored;
        stored++;
    }
    result = stored;
stored:
    Py_XDECREF(asked);
    Py_XDECREF(paths);
    Py_XDECREF(owner);
done:
    PyMem_Free(text.text);
    return result;
}

/* dns_learn_wire(entries, move_to_end, ts, data, min_ttl, max_ttl) -> the number stored, or None where the
 * message path decides (see the function of that name). */
PyObject *dns_learn_wire_py(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "dns_learn_wire(entries, move_to_end, ts, data, min_ttl, max_ttl)");
        return NULL;
    }
    double ts = PyFloat_AsDouble(args[2]), min_ttl = PyFloat_AsDouble(args[4]), max_ttl = PyFloat_AsDouble(args[5]);
    Py_buffer view;
    if (PyErr_Occurred() || PyObject_GetBuffer(args[3], &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t stored = dns_learn_wire(args[0], args[1], ts, view.buf, view.len, min_ttl, max_ttl);
    PyBuffer_Release(&view);
    if (stored == DNS_WIRE_DECLINED) Py_RETURN_NONE;
    return stored < 0 ? NULL : PyLong_FromSsize_t(stored);
}

/* ---------------------------------------------------------------------------------------------
 * sensor.decode.dispatch.TrafficDecoder.feed's branch for a DNS datagram (decode_packet's answer
 * (src, sport, dst, dport, message)), in the decode call: the message counted, paired (dns_pair,
 * else the bound on_datagram_py) into the decoder's records, learned by its learn_dns and the
 * waiting queries' expiry looked at, answered (); another worker's answer the bound decode learned
 * from (None for its message) counted as shared, answered (). Declined (the answer as it came, nothing
 * changed) for a response that is another replay worker's (feed's shared path) and for anything
 * but a DnsMessage.
 */

static PyObject *records_name, *learn_dns_name, *route_of_name, *shared_route_name, *next_expiry_name,
    *expire_name, *sweep_at_name, *entries_name, *move_name, *max_entries_name, *stored_name_method,
    *counters_name, *values_name, *messages_key, *records_dns_key, *stored_key, *shared_frames_name,
    *shared_bytes_name, *flows_name, *next_sweep_name, *sweep_name, *records_tls_key, *one;

/* counts[key] = counts.get(key, 0) + amount */
static int count_add(PyObject *counts, PyObject *key, PyObject *amount) {
    PyObject *old = PyDict_GetItemWithError(counts, key), *sum;
    if (old == NULL && PyErr_Occurred()) return -1;
    sum = old != NULL ? PyNumber_Add(old, amount) : Py_NewRef(amount);
    if (sum == NULL) return -1;
    int failed = PyDict_SetItem(counts, key, sum);
    Py_DECREF(sum);
    return failed;
}

/* obj.name += amount */
static int attr_add(PyObject *obj, PyObject *name, PyObject *amount) {
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL) return -1;
    PyObject *sum = PyNumber_Add(old, amount);
    Py_DECREF(old);
    if (sum == NULL) return -1;
    int failed = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return failed;
}

/* DnsCache.learn(ts, message, counted=True) of the `cache` for a response with answers, where its
 * sweep is not due and the compiled learn_message takes the message: 1; 0 having changed nothing
 * (the caller calls learn); -1 on error. */
static int learn_counted(PyObject *cache, double ts, PyObject *message, double min_ttl, double max_ttl) {
    PyObject *sweep_at = PyObject_GetAttr(cache, sweep_at_name);
    if (sweep_at == NULL) return -1;
    double sweep = PyFloat_AsDouble(sweep_at);
    Py_DECREF(sweep_at);
    if (sweep == -1.0 && PyErr_Occurred()) return -1;
    if (ts >= sweep) return 0;
    PyObject *entries = PyObject_GetAttr(cache, entries_name), *move = NULL, *stored = NULL, *cap = NULL,
             *counters = NULL, *counts = NULL;
    int result = -1;
    if (entries == NULL || (move = PyObject_GetAttr(cache, move_name)) == NULL) goto done;
    if ((stored = learn_message(entries, move, ts, message, min_ttl, max_ttl)) == NULL) goto done;
    if (stored == Py_None) {
        result = 0;
        goto done;
    }
    int any = PyObject_IsTrue(stored);
    if (any <= 0) {
        result = any < 0 ? -1 : 1;
        goto done;
    }
    if ((cap = PyObject_GetAttr(cache, max_entries_name)) == NULL) goto done;
    Py_ssize_t max_entries = PyLong_AsSsize_t(cap);
    if (max_entries == -1 && PyErr_Occurred()) goto done;
    if (PyObject_Length(entries) > max_entries) { /* the oldest to let go: _stored does it, counted */
        PyObject *done_ = PyObject_CallMethodObjArgs(cache, stored_name_method, stored, Py_True, NULL);
        if (done_ == NULL) goto done;
        Py_DECREF(done_);
        result = 1;
        goto done;
    }
    if ((counters = PyObject_GetAttr(cache, counters_name)) == NULL ||
        (counts = PyObject_GetAttr(counters, values_name)) == NULL)
        goto done;
    if (!PyDict_Check(counts)) {
        PyErr_SetString(PyExc_TypeError, "DnsCache.counters.values is not a dict");
        goto done;
    }
    result = count_add(counts, stored_key, stored) < 0 ? -1 : 1;
done:
    Py_XDECREF(entries);
    Py_XDECREF(move);
    Py_XDECREF(stored);
    Py_XDECREF(cap);
    Py_XDECREF(counters);
    Py_XDECREF(counts);
    return result;
}

/* decoder._expire_dns(ts) when ts >= decoder._next_dns_expiry: 0, or -1 on error */
static int dns_expiry(PyObject *decoder, PyObject *ts) {
    PyObject *expiry = PyObject_GetAttr(decoder, next_expiry_name);
    if (expiry == NULL) return -1;
    int due = PyObject_RichCompareBool(ts, expiry, Py_GE);
    Py_DECREF(expiry);
    if (due <= 0) return due;
    PyObject *none = PyObject_CallMethodObjArgs(decoder, expire_name, ts, NULL);
    Py_XDECREF(none);
    return none == NULL ? -1 : 0;
}

/* feed_found's branch for the handshake decode's (TlsHello,) or (None,): the record appended to
 * the decoder's records and counted, the flow table's sweep and the waiting queries' expiry
 * looked at; () (`found` taken), or `found` as it came where the records are no list. */
static PyObject *hello_taken(PyObject *state, PyObject *found, PyObject *ts) {
    PyObject *decoder = PyTuple_GET_ITEM(state, 1), *hello = PyTuple_GET_ITEM(found, 0), *flows = NULL,
             *next_sweep = NULL, *result = NULL;
    if (hello != Py_None) {
        PyObject *records = PyObject_GetAttr(decoder, records_name);
        if (records == NULL) goto done;
        if (!PyList_Check(records)) {
            Py_DECREF(records);
            return found;
        }
        int failed = PyList_Append(records, hello) < 0 || count_add(PyTuple_GET_ITEM(state, 4), records_tls_key, one) < 0;
        Py_DECREF(records);
        if (failed) goto done;
    }
    if ((flows = PyObject_GetAttr(decoder, flows_name)) == NULL || (next_sweep = PyObject_GetAttr(flows, next_sweep_name)) == NULL)
        goto done;
    int due = PyObject_RichCompareBool(ts, next_sweep, Py_GE);
    if (due < 0) goto done;
    if (due) {
        PyObject *none = PyObject_CallMethodObjArgs(flows, sweep_name, ts, NULL);
        if (none == NULL) goto done;
        Py_DECREF(none);
    }
    if (dns_expiry(decoder, ts) < 0) goto done;
    result = PyTuple_New(0);
done:
    Py_DECREF(found);
    Py_XDECREF(flows);
    Py_XDECREF(next_sweep);
    return result;
}

/* state: (decode, decoder, pending, max_pending, counts, on_datagram_py, DnsCache.learn, min_ttl, max_ttl) */
static PyObject *dns_step_decode(PyObject *state, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(linktype, frame, ts)");
        return NULL;
    }
    PyObject *found = PyObject_Vectorcall(PyTuple_GET_ITEM(state, 0), args, nargs, NULL);
    if (found == NULL || !PyTuple_Check(found)) return found;
    if (PyTuple_GET_SIZE(found) == 1) return hello_taken(state, found, args[2]);
    if (PyTuple_GET_SIZE(found) != 5) return found;
    PyObject *message = PyTuple_GET_ITEM(found, 4);
    if (message == Py_None) { /* another worker's answer, learned from by the decode: counted as shared */
        Py_ssize_t size = PyObject_Length(args[1]);
        PyObject *bytes = size >= 0 ? PyLong_FromSsize_t(size) : NULL;
        int failed = bytes == NULL || attr_add(PyTuple_GET_ITEM(state, 1), shared_frames_name, one) < 0 ||
                     attr_add(PyTuple_GET_ITEM(state, 1), shared_bytes_name, bytes) < 0;
        Py_XDECREF(bytes);
        Py_DECREF(found);
        return failed ? NULL : PyTuple_New(0);
    }
    if (dns_message_record.type == NULL || Py_TYPE(message) != dns_message_record.type) return found;
    PyObject *decoder = PyTuple_GET_ITEM(state, 1), *counts = PyTuple_GET_ITEM(state, 4), *ts = args[2];
    PyObject *records = NULL, *added = NULL, *learn = NULL, *result = NULL;
    Py_ssize_t answers = message_answer_count(message);
    if (answers < 0) goto done;
    if (answers > 0) { /* feed's first test: another worker's answer, by its route */
        PyObject *route_of = PyObject_GetAttr(decoder, route_of_name);
        if (route_of == NULL) goto done;
        if (route_of != Py_None) {
            PyObject *route = PyObject_CallFunctionObjArgs(route_of, args[0], args[1], NULL), *shared = NULL;
            int same = route != NULL && (shared = PyObject_GetAttr(decoder, shared_route_name)) != NULL
                           ? PyObject_RichCompareBool(route, shared, Py_EQ)
                           : -1;
            Py_XDECREF(route);
            Py_XDECREF(shared);
            Py_DECREF(route_of);
            if (same < 0) goto done;
            if (same) return found;
        } else {
            Py_DECREF(route_of);
        }
    }
    if ((records = PyObject_GetAttr(decoder, records_name)) == NULL) goto done;
    if (!PyList_Check(records)) {
        Py_DECREF(records);
        return found;
    }
    if (count_add(counts, messages_key, one) < 0) goto done;
    PyObject *const *item = &PyTuple_GET_ITEM(found, 0);
    PyObject *pair_args[9] = {PyTuple_GET_ITEM(state, 2), PyTuple_GET_ITEM(state, 3), ts, item[0], item[1], item[2],
                              item[3], message, records};
    if ((added = dns_pair(NULL, pair_args, 9)) == NULL) goto done;
    if (added == Py_None) {
        Py_DECREF(added);
        if ((added = PyObject_Vectorcall(PyTuple_GET_ITEM(state, 5), pair_args + 2, 7, NULL)) == NULL) goto done;
    }
    int some = PyObject_IsTrue(added);
    if (some < 0 || (some && count_add(counts, records_dns_key, added) < 0)) goto done;
    if (answers > 0) {
        if ((learn = PyObject_GetAttr(decoder, learn_dns_name)) == NULL) goto done;
        if (learn != Py_None) {
            int learned = 0;
            if (PyMethod_Check(learn) && PyMethod_GET_FUNCTION(learn) == PyTuple_GET_ITEM(state, 6)) {
                double when = PyFloat_AsDouble(ts);
                if (when == -1.0 && PyErr_Occurred()) goto done;
                learned = learn_counted(PyMethod_GET_SELF(learn), when, message,
                                        PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(state, 7)),
                                        PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(state, 8)));
                if (learned < 0) goto done;
            }
            if (!learned) {
                PyObject *none = PyObject_CallFunctionObjArgs(learn, ts, message, Py_True, NULL);
                if (none == NULL) goto done;
                Py_DECREF(none);
            }
        }
    }
    if (dns_expiry(decoder, ts) < 0) goto done;
    result = PyTuple_New(0);
done:
    Py_DECREF(found);
    Py_XDECREF(records);
    Py_XDECREF(added);
    Py_XDECREF(learn);
    return result;
}

static PyMethodDef dns_step_decode_def = {
    "decode", (PyCFunction)(void (*)(void))dns_step_decode, METH_FASTCALL,
    "decode(linktype, frame, ts) -> the bound decode's answer; () for a DNS datagram it took as feed takes it"};

/* dns_step_decoder(decode, decoder, pending, max_pending, counts, on_datagram_py, learn_function, min_ttl,
 * max_ttl) -> decode(linktype, frame, ts): the answer of `decode` (a TrafficDecoder's compiled one),
 * except that a DNS datagram's (src, sport, dst, dport, DnsMessage) is taken as
 * TrafficDecoder.feed takes it (see dns_step_decode) and answered (), and so is one with None for its
 * message (another worker's answer a share_decoder learned from: counted as shared), and so is a
 * handshake_decoder's (TlsHello,) or (None,), whose record is appended as feed_found appends it (its
 * first branch, the reference of hello_taken). `learn_function`:
 * DnsCache.learn, whose stores for a learn_dns bound to it are made here (min_ttl, max_ttl its
 * bounds). bind_dns() and bind_dns_pairs() first. */
PyObject *dns_step_decoder(PyObject *module, PyObject *args) {
    PyObject *decode, *decoder, *pending, *max_pending, *counts, *on_datagram, *learn_function;
    double min_ttl, max_ttl;
    if (!PyArg_ParseTuple(args, "OOO!O!O!OOdd", &decode, &decoder, &PyDict_Type, &pending, &PyLong_Type, &max_pending,
                          &PyDict_Type, &counts, &on_datagram, &learn_function, &min_ttl, &max_ttl))
        return NULL;
    if (dns_query_record.type == NULL || dns_message_record.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_dns() and bind_dns_pairs() first");
        return NULL;
    }
    if (one == NULL) {
        const char *texts[] = {"records", "learn_dns", "_route_of", "_shared_route", "_next_dns_expiry", "_expire_dns",
                               "_sweep_at", "_entries", "_move_to_end", "max_entries", "_stored", "counters",
                               "values", "dns.messages", "records.dns", "dnscache.stored", "shared_frames",
                               "shared_bytes", "flows", "next_sweep", "sweep", "records.tls"};
        PyObject **names[] = {&records_name, &learn_dns_name, &route_of_name, &shared_route_name, &next_expiry_name,
                              &expire_name, &sweep_at_name, &entries_name, &move_name, &max_entries_name,
                              &stored_name_method, &counters_name, &values_name, &messages_key, &records_dns_key,
                              &stored_key, &shared_frames_name, &shared_bytes_name, &flows_name, &next_sweep_name,
                              &sweep_name, &records_tls_key};
        for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
            if ((*names[i] = PyUnicode_InternFromString(texts[i])) == NULL) return NULL;
        if ((one = PyLong_FromLong(1)) == NULL) return NULL;
    }
    PyObject *state = Py_BuildValue("(OOOOOOOdd)", decode, decoder, pending, max_pending, counts, on_datagram,
                                    learn_function, min_ttl, max_ttl);
    if (state == NULL) return NULL;
    PyObject *step = PyCFunction_New(&dns_step_decode_def, state);
    Py_DECREF(state);
    return step;
}
