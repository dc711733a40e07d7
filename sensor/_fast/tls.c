#include "fast.h"

/* ---------------------------------------------------------------------------------------------
 * TLS: sensor.decode.tls.parse_client_hello_message, for undamaged hellos whose server name and
 * ALPN names are ASCII. Damaged extension blocks (which the Python code reads around) and
 * everything that is no ClientHello return None.
 */

/* -> (server_name or None, alpn, ech, legacy_version, offers_tls13, extension types) or None */
PyObject *parse_hello(PyObject *module, PyObject *arg) {
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


/* sensor.decode.tls constants the record walk applies (a test holds them equal at their bounds) */
#define TLS_MAX_RECORD (16384 + 2048) /* _MAX_RECORD */
#define TLS_MAX_HELLO 65536           /* MAX_HELLO */
#define TLS_MIN_HELLO_BODY 41         /* _MIN_HELLO_BODY */

/* Whether the first `n` (up to 5) handshake bytes already show this is no ClientHello (_rules_out_client_hello). */
static int rules_out_hello(const uint8_t *head, Py_ssize_t n) {
    if (head[0] != 1) return 1;
    if (n >= 4) {
        Py_ssize_t length = ((Py_ssize_t)head[1] << 16) | ((Py_ssize_t)head[2] << 8) | head[3];
        if (length < TLS_MIN_HELLO_BODY || length > TLS_MAX_HELLO) return 1;
    }
    return n > 4 && head[4] != 3;
}

/* hello_message(stream) -> (0 need more | 1 not TLS, None) or (2, the handshake message):
 * sensor.decode.tls.hello_message_py, the record layer of parse_stream. */
PyObject *hello_message(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *s = view.buf;
    Py_ssize_t n = view.len, pos = 0, have = 0, need = -1, head_len = 0;
    uint8_t head[5];
    int status = 2;
    while (need < 0 || have < need) {
        if (n - pos < 5) {
            status = 0;
            break;
        }
        Py_ssize_t length = get16(s + pos + 3);
        if (s[pos] != 0x16 || s[pos + 1] != 3 || s[pos + 2] > 4 || length == 0 || length > TLS_MAX_RECORD) {
            status = 1;
            break;
        }
        pos += 5;
        Py_ssize_t got = n - pos < length ? n - pos : length;
        if (got > 0 && head_len < 5) {
            for (Py_ssize_t i = 0; i < got && head_len < 5; i++) head[head_len++] = s[pos + i];
            if (rules_out_hello(head, head_len)) {
                status = 1;
                break;
            }
            if (need < 0 && head_len >= 4) need = 4 + (((Py_ssize_t)head[1] << 16) | ((Py_ssize_t)head[2] << 8) | head[3]);
        }
        have += got;
        pos += length;
    }
    PyObject *result;
    if (status != 2) {
        result = Py_BuildValue("(iO)", status, Py_None);
    } else { /* the first `need` bytes of the records' fragments */
        PyObject *message = PyBytes_FromStringAndSize(NULL, need);
        if (message == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        char *into = PyBytes_AS_STRING(message);
        Py_ssize_t done = 0;
        for (pos = 0; done < need; pos += 5 + get16(s + pos + 3)) {
            Py_ssize_t length = get16(s + pos + 3), got = n - pos - 5 < length ? n - pos - 5 : length;
            if (got > need - done) got = need - done;
            memcpy(into + done, s + pos + 5, got);
            done += got;
        }
        result = Py_BuildValue("(iN)", 2, message);
    }
    PyBuffer_Release(&view);
    return result;
}
