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
