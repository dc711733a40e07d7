#include "fast.h"

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

/* -> (method, target, version, ((name, value), ...)) or None */
PyObject *http_head(PyObject *module, PyObject *arg) {
    if (!PyBytes_Check(arg)) Py_RETURN_NONE;
    const uint8_t *h = (const uint8_t *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
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
