#include "fast.h"

#include <ctype.h>
#include <strings.h>

/* ---------------------------------------------------------------------------------------------
 * HTTP: sensor.decode.http.parse_head_py, the request line and header lines of one request head.
 * Heads the Python code would reject, and obs-folded header lines, return None: the Python code
 * then raises its error or joins the fold.
 */

/* RFC 9110 tchar */
static const uint8_t token_char[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1,
    ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1,
    ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1,
    ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1,
    ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

#define MAX_TOKEN_METHOD 32 /* sensor.decode.http.MAX_TOKEN_METHOD */

static int all_token(const uint8_t *p, Py_ssize_t n) {
    if (n <= 0) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!token_char[p[i]]) return 0;
    return 1;
}

/* _text: UTF-8, else Latin-1 */
static PyObject *text_of(const uint8_t *p, Py_ssize_t n) {
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, NULL);
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        s = PyUnicode_DecodeLatin1((const char *)p, n, NULL);
    }
    return s;
}

/* the head h[0:n] -> (method, target, version, ((name, value), ...)) or None */
static PyObject *head_fields(const uint8_t *h, Py_ssize_t n) {
    const uint8_t *nl = memchr(h, '\n', n);
    Py_ssize_t line_end = nl ? nl - h : n;

    /* the request line: line.rstrip(b"\r \t"), method up to the first space, version after the last */
    Py_ssize_t e = line_end;
    while (e > 0 && (h[e - 1] == '\r' || h[e - 1] == ' ' || h[e - 1] == '\t')) e--;
    const uint8_t *sp1 = memchr(h, ' ', e);
    if (sp1 == NULL) Py_RETURN_NONE;
    Py_ssize_t method_len = sp1 - h, rest = method_len + 1, sp2 = e - 1;
    while (sp2 >= rest && h[sp2] != ' ') sp2--;
    if (sp2 < rest || method_len > MAX_TOKEN_METHOD || !all_token(h, method_len)) Py_RETURN_NONE;
    Py_ssize_t version_at = sp2 + 1, version_len = e - version_at;
    if (version_len != 8 || memcmp(h + version_at, "HTTP/1.", 7) != 0 || h[version_at + 7] < '0' ||
        h[version_at + 7] > '9')
        Py_RETURN_NONE;
    Py_ssize_t t0 = rest, t1 = sp2; /* raw_target.strip(b" ") */
    while (t0 < t1 && h[t0] == ' ') t0++;
    while (t1 > t0 && h[t1 - 1] == ' ') t1--;
    if (t0 == t1) Py_RETURN_NONE;
    for (Py_ssize_t i = t0; i < t1; i++) { /* no controls but tab */
        uint8_t c = h[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F) Py_RETURN_NONE;
    }

    PyObject *method = NULL, *target = NULL, *version = NULL, *headers = NULL, *result = NULL;
    headers = PyList_New(0);
    if (headers == NULL) return NULL;
    Py_ssize_t pos = nl ? line_end + 1 : n;
    int more = nl != NULL;
    while (more) { /* each header line: name ":" value, the value stripped of spaces and tabs */
        const uint8_t *next = memchr(h + pos, '\n', n - pos);
        Py_ssize_t end = next ? next - h : n;
        more = next != NULL;
        Py_ssize_t stop = end;
        if (stop > pos && h[stop - 1] == '\r') stop--;
        if (stop > pos && (h[pos] == ' ' || h[pos] == '\t')) goto python; /* obs-fold */
        const uint8_t *colon = memchr(h + pos, ':', stop - pos);
        if (colon == NULL || !all_token(h + pos, colon - h - pos)) goto python;
        Py_ssize_t v0 = colon - h + 1, v1 = stop;
        while (v0 < v1 && (h[v0] == ' ' || h[v0] == '\t')) v0++;
        while (v1 > v0 && (h[v1 - 1] == ' ' || h[v1 - 1] == '\t')) v1--;
        PyObject *pair[2] = {ascii_str((const char *)h + pos, colon - h - pos), NULL};
        if (pair[0] == NULL) goto error;
        pair[1] = text_of(h + v0, v1 - v0);
        if (pair[1] == NULL) {
            Py_DECREF(pair[0]);
            goto error;
        }
        PyObject *item = tuple_steal(2, pair);
        if (item == NULL || PyList_Append(headers, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);
        pos = end + 1;
    }
    method = ascii_str((const char *)h, method_len);
    target = text_of(h + t0, t1 - t0);
    version = ascii_str((const char *)h + version_at + 5, 3);
    PyObject *header_tuple = PyList_AsTuple(headers);
    if (method == NULL || target == NULL || version == NULL || header_tuple == NULL) {
        Py_XDECREF(header_tuple);
        goto error;
    }
    PyObject *items[4] = {method, target, version, header_tuple};
    method = target = version = NULL;
    result = tuple_steal(4, items);
    Py_DECREF(headers);
    return result;
python:
    Py_DECREF(headers);
    Py_RETURN_NONE;
error:
    Py_XDECREF(method);
    Py_XDECREF(target);
    Py_XDECREF(version);
    Py_DECREF(headers);
    return NULL;
}

PyObject *http_head(PyObject *module, PyObject *arg) {
    if (!PyBytes_Check(arg)) Py_RETURN_NONE;
    return head_fields((const uint8_t *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
}

/* Is the str `name` (ASCII, a header name) `lower` in any case? */
static int name_is(PyObject *name, const char *lower, Py_ssize_t n) {
    Py_ssize_t size;
    const char *s = PyUnicode_AsUTF8AndSize(name, &size);
    return s != NULL && size == n && strncasecmp(s, lower, n) == 0;
}

/* _host_without_port for a value of printable ASCII without spaces (else -1: declined); NULL on error */
static int host_of(PyObject *value, PyObject **host) {
    Py_ssize_t n;
    const char *v = PyUnicode_AsUTF8AndSize(value, &n);
    if (v == NULL) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((uint8_t)v[i] <= 0x20 || (uint8_t)v[i] >= 0x7F) return -1;
    Py_ssize_t start = 0, end = n;
    if (n && v[0] == '[') { /* literal, bracket, _port = value[1:].partition("]") */
        const char *bracket = memchr(v + 1, ']', n - 1);
        start = 1;
        end = bracket ? bracket - v : 1;
    } else { /* name, colon, port = value.rpartition(":"): the name when the port is digits or empty */
        const char *colon = NULL;
        for (Py_ssize_t i = n; i > 0; i--)
            if (v[i - 1] == ':') {
                colon = v + i - 1;
                break;
            }
        if (colon != NULL) {
            int digits = 1;
            for (const char *c = colon + 1; c < v + n; c++)
                if (*c < '0' || *c > '9') digits = 0;
            if (digits) end = colon - v;
        }
    }
    if (end <= start) {
        *host = Py_NewRef(Py_None);
        return 1;
    }
    char lower[end - start];
    for (Py_ssize_t i = start; i < end; i++) lower[i - start] = (char)tolower((uint8_t)v[i]);
    *host = ascii_str(lower, end - start);
    return *host != NULL;
}

/* ---------------------------------------------------------------------------------------------
 * http_request(data, start, header_cap, body_cap): the request starting at data[start], as a fresh
 * HttpRequestStream parses it (reference sensor.decode.http.whole_request_py), when it is whole in
 * data and plain: an HTTP/1.x head within header_cap, no Transfer-Encoding, Content-Encoding,
 * Upgrade or Expect field, not CONNECT, at most one Content-Length of digits whose body is all
 * there. -> (method, target, version, headers, host, body, body_bytes, body_truncated, end), or
 * None for anything else (the Python parser takes it).
 */
PyObject *http_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_Check(args[0])) Py_RETURN_NONE;
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), header_cap = PyLong_AsSsize_t(args[2]);
    Py_ssize_t body_cap = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (start < 0 || start >= n || d[start] == '\r' || d[start] == '\n') Py_RETURN_NONE;
    /* _HEAD_END: a line end, an optional CR, a line end */
    Py_ssize_t head_end = -1, body_at = -1;
    for (const uint8_t *p = memchr(d + start, '\n', n - start); p != NULL;
         p = memchr(p + 1, '\n', d + n - p - 1)) {
        Py_ssize_t at = p - d;
        if (at + 1 < n && d[at + 1] == '\n') {
            head_end = at, body_at = at + 2;
            break;
        }
        if (at + 2 < n && d[at + 1] == '\r' && d[at + 2] == '\n') {
            head_end = at, body_at = at + 3;
            break;
        }
        if (at + 1 >= n) break;
    }
    if (head_end < 0 || body_at - start > header_cap) Py_RETURN_NONE;
    PyObject *fields = head_fields(d + start, head_end - start);
    if (fields == NULL || fields == Py_None) return fields;
    PyObject *host = NULL, *body = NULL, *result = NULL;
    if (name_is(PyTuple_GET_ITEM(fields, 0), "connect", 7)) goto decline; /* a tunnel: the Python parser */
    PyObject *headers = PyTuple_GET_ITEM(fields, 3);
    long long length = 0;
    int lengths = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(headers); i++) {
        PyObject *name = PyTuple_GET_ITEM(PyTuple_GET_ITEM(headers, i), 0);
        PyObject *value = PyTuple_GET_ITEM(PyTuple_GET_ITEM(headers, i), 1);
        if (name_is(name, "transfer-encoding", 17) || name_is(name, "content-encoding", 16) ||
            name_is(name, "upgrade", 7) || name_is(name, "expect", 6))
            goto decline;
        if (name_is(name, "content-length", 14)) { /* _DIGITS, one field */
            Py_ssize_t size;
            const char *v = PyUnicode_AsUTF8AndSize(value, &size);
            if (v == NULL) goto error;
            if (++lengths > 1 || size < 1 || size > 18) goto decline;
            for (Py_ssize_t k = 0; k < size; k++) {
                if (v[k] < '0' || v[k] > '9') goto decline;
                length = length * 10 + (v[k] - '0');
            }
        } else if (host == NULL && name_is(name, "host", 4)) {
            int got = host_of(value, &host);
            if (got == 0) goto error;
            if (got < 0) goto decline;
        }
    }
    if (length > n - body_at) goto decline; /* the body runs on: the Python parser waits for it */
    Py_ssize_t kept = body_cap < 0 ? 0 : (length < body_cap ? (Py_ssize_t)length : body_cap);
    body = bytes_at(d + body_at, kept);
    PyObject *body_bytes = PyLong_FromLongLong(length), *end = PyLong_FromSsize_t(body_at + (Py_ssize_t)length);
    if (body == NULL || body_bytes == NULL || end == NULL) {
        Py_XDECREF(body_bytes);
        Py_XDECREF(end);
        goto error;
    }
    PyObject *items[9] = {
        Py_NewRef(PyTuple_GET_ITEM(fields, 0)), Py_NewRef(PyTuple_GET_ITEM(fields, 1)),
        Py_NewRef(PyTuple_GET_ITEM(fields, 2)), Py_NewRef(headers), host ? host : Py_NewRef(Py_None), body,
        body_bytes, PyBool_FromLong(length > kept), end,
    };
    host = body = NULL;
    result = tuple_steal(9, items);
    Py_DECREF(fields);
    return result;
decline:
    Py_XDECREF(host);
    Py_DECREF(fields);
    Py_RETURN_NONE;
error:
    Py_XDECREF(host);
    Py_XDECREF(body);
    Py_DECREF(fields);
    return NULL;
}
