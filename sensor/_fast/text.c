#include "fast.h"

int text_add_base64(Text *t, const uint8_t *p, Py_ssize_t n) {
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

static char *put_decimal(char *out, unsigned value) { /* 0 to 255 */
    if (value >= 100) *out++ = (char)('0' + value / 100);
    if (value >= 10) *out++ = (char)('0' + value / 10 % 10);
    *out++ = (char)('0' + value % 10);
    return out;
}

static char *put_ipv4(char *out, const uint8_t *p) {
    for (int i = 0; i < 4; i++) {
        if (i) *out++ = '.';
        out = put_decimal(out, p[i]);
    }
    return out;
}

static char *put_hex(char *out, unsigned value) { /* 0 to 0xffff, without leading zeros */
    static const char digits[] = "0123456789abcdef";
    int shift = 12;
    while (shift > 0 && !(value >> shift)) shift -= 4;
    for (; shift >= 0; shift -= 4) *out++ = digits[(value >> shift) & 15];
    return out;
}

/* glibc's inet_ntop (resolv/inet_ntop.c) step for step, without its sprintf per number, which cost
 * about 1,800 instructions an address: the first longest run of two or more zero hextets as "::",
 * and the last 32 bits in dotted decimal after 96 zero bits or an IPv4-mapped prefix. */
Py_ssize_t address_chars(const uint8_t *address, Py_ssize_t alen, char *out) {
    char *o = out;
    if (alen == 4) {
        o = put_ipv4(o, address);
    } else {
        unsigned words[8];
        int best = -1, best_len = 0, run = -1, run_len = 0;
        for (int i = 0; i < 8; i++) {
            words[i] = get16(address + 2 * i);
            if (words[i] == 0) {
                if (run == -1) {
                    run = i;
                    run_len = 0;
                }
                run_len++;
            } else if (run != -1) {
                if (best == -1 || run_len > best_len) {
                    best = run;
                    best_len = run_len;
                }
                run = -1;
            }
        }
        if (run != -1 && (best == -1 || run_len > best_len)) {
            best = run;
            best_len = run_len;
        }
        if (best != -1 && best_len < 2) best = -1;
        for (int i = 0; i < 8; i++) {
            if (best != -1 && i >= best && i < best + best_len) {
                if (i == best) *o++ = ':';
                continue;
            }
            if (i != 0) *o++ = ':';
            if (i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))) {
                o = put_ipv4(o, address + 12);
                break;
            }
            o = put_hex(o, words[i]);
        }
        if (best != -1 && best + best_len == 8) *o++ = ':';
    }
    *o = '\0';
    return o - out;
}

/* A str from bytes known to be ASCII (every renderer of the extension writes only ASCII). */
PyObject *ascii_str(const char *s, Py_ssize_t n) {
    PyObject *text = PyUnicode_New(n, 127);
    if (text != NULL) memcpy(PyUnicode_DATA(text), s, n);
    return text;
}

PyObject *tuple_steal(Py_ssize_t n, PyObject **items) {
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
