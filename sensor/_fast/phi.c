#include "fast.h"

/* ---------------------------------------------------------------------------------------------
 * sensor.phi (layers, lexicon, recognizers): the per-value steps of peeling and scanning a
 * request, for ASCII text. plain_text is layers._plain_py, bytes_text layers._bytes_to_text_py;
 * peel_form takes the simple pieces of Peeler.form_py (a key without escapes, a value emitted as
 * it is, taken from _PEELED or handed to Peeler._reused) and stops at the first piece that is not
 * simple, where the Python loop goes on; peel_json flattens a document of plain types as
 * Peeler.json_py does, or declines it before doing anything; term_may_occur is
 * TermMatcher.may_occur_py; scan_fields is recognizers.scan_fields_py's loop; gate_hints is
 * recognizers._gate_hints_py. Other text goes to the Python reference.
 */

static PyObject *field_maker; /* bind_phi: sensor.phi.layers._field, which makes a Field(path, value) */
static PyObject *plain_py;    /* bind_phi: sensor.phi.layers._plain_py, for text that is not ASCII */
static PyObject *text_py;     /* bind_phi: sensor.phi.layers._bytes_to_text_py, for other bytes */
static PyObject *peeled;      /* bind_phi: sensor.phi.layers._PEELED, the values peeled before */
static PyObject *default_limits; /* bind_phi: sensor.phi.layers.DEFAULT_LIMITS, the limits _PEELED is for */
static Py_ssize_t peeled_chars = -1; /* bind_phi: sensor.phi.layers._PEELED_CHARS */
static PyObject *str_limits;
static PyObject *str_fields, *str_budget, *str_reused;

static void classify_chars(void);

#define LONG_KEY 128 /* layers._LONG_KEY: a longer key is counted (CAPPED), in Python */
#define MIN_BASE64_CHARS 8

/* bind_phi(_field, _plain_py, _bytes_to_text_py, _PEELED, DEFAULT_LIMITS, _PEELED_CHARS) */
PyObject *bind_phi(PyObject *module, PyObject *args) {
    PyObject *maker, *plain, *text, *table, *limits;
    Py_ssize_t chars;
    if (!PyArg_ParseTuple(args, "OOOO!On", &maker, &plain, &text, &PyDict_Type, &table, &limits, &chars)) return NULL;
    if (!PyCallable_Check(maker) || !PyCallable_Check(plain) || !PyCallable_Check(text) || chars < 0) {
        PyErr_SetString(PyExc_TypeError, "bind_phi takes three callables, a dict, the limits and a length");
        return NULL;
    }
    if (str_fields == NULL) {
        str_fields = PyUnicode_InternFromString("fields");
        str_budget = PyUnicode_InternFromString("_budget");
        str_reused = PyUnicode_InternFromString("_reused");
        str_limits = PyUnicode_InternFromString("limits");
        if (str_fields == NULL || str_budget == NULL || str_reused == NULL || str_limits == NULL) return NULL;
    }
    classify_chars();
    Py_INCREF(maker);
    Py_INCREF(plain);
    Py_INCREF(text);
    Py_INCREF(table);
    Py_INCREF(limits);
    Py_XSETREF(field_maker, maker);
    Py_XSETREF(plain_py, plain);
    Py_XSETREF(text_py, text);
    Py_XSETREF(peeled, table);
    Py_XSETREF(default_limits, limits);
    peeled_chars = chars;
    Py_RETURN_NONE;
}

/* what str.isspace() says of an ASCII character (str.strip() takes these off) */
static inline int ascii_space(unsigned char c) { return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20); }
static inline int ascii_alpha(unsigned char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static inline int ascii_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int ascii_hex(unsigned char c) { return ascii_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); }
static inline int base64_char(unsigned char c) {
    return ascii_alpha(c) || ascii_digit(c) || c == '+' || c == '/' || c == '=' || c == '_' || c == '-';
}

/* what each ASCII character is to _plain_py: one of the characters that make a text not plain,
 * a digit, a letter, a hex digit, a character of a base64 alphabet */
enum { SPECIAL = 1, DIGIT = 2, ALPHA = 4, HEX = 8, BASE64 = 16, PRINTABLE = 32 };
static unsigned char char_class[256];

static void classify_chars(void) {
    for (int c = 0; c < 256; c++) {
        unsigned char bits = 0;
        if (c == '/' || c == '=' || c == '%' || c == '{' || c == '[' || c == '\n') bits |= SPECIAL;
        if (ascii_digit(c)) bits |= DIGIT;
        if (ascii_alpha(c)) bits |= ALPHA;
        if (ascii_hex(c)) bits |= HEX;
        if (base64_char(c)) bits |= BASE64;
        if ((c >= 0x20 && c < 0x7F) || c == '\t' || c == '\n' || c == '\r') bits |= PRINTABLE;
        char_class[c] = bits;
    }
}

/* _plain_py of ASCII text */
static int plain_ascii(const unsigned char *s, Py_ssize_t n) {
    unsigned char every = DIGIT | ALPHA | HEX | BASE64;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char bits = char_class[s[i]];
        if (bits & SPECIAL) return 0;
        every &= bits;
    }
    if (n > 0 && (every & DIGIT)) return 1;
    if (n < MIN_BASE64_CHARS || (every & ALPHA) || !(every & BASE64)) return 1;
    return (every & HEX) != 0;
}

/* plain_text(text) -> _plain_py(text) */
PyObject *plain_text(PyObject *module, PyObject *text) {
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text) || plain_py == NULL) {
        if (plain_py == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "bind_phi first");
            return NULL;
        }
        return PyObject_CallOneArg(plain_py, text);
    }
    return PyBool_FromLong(plain_ascii(PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text)));
}

/* bytes_text(data) -> _bytes_to_text_py(data): printable ASCII (tabs and line breaks too) is
 * that text; other bytes go to it */
PyObject *bytes_text(PyObject *module, PyObject *data) {
    if (text_py == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_phi first");
        return NULL;
    }
    if (PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) > 0) {
        const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(data);
        Py_ssize_t n = PyBytes_GET_SIZE(data), i = 0;
        while (i < n && (char_class[s[i]] & PRINTABLE)) i++;
        if (i == n) return PyUnicode_DecodeASCII((const char *)s, n, NULL);
    }
    return PyObject_CallOneArg(text_py, data);
}

/* layers._is_compressed */
static int compressed(const unsigned char *d, Py_ssize_t n) {
    if (n >= 2 && d[0] == 0x1f && d[1] == 0x8b) return 1;
    return n >= 2 && (d[0] & 0x0F) == 8 && (d[0] >> 4) <= 7 && (((unsigned)d[0] << 8) | d[1]) % 31 == 0;
}

static int base64_value(unsigned char c, int urlsafe) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (urlsafe ? '-' : '+')) return 62;
    if (c == (urlsafe ? '_' : '/')) return 63;
    return -1;
}

/* Whether Peeler._layers takes the stripped ASCII text `s` as it is (one field, the text itself):
 * not JSON, not a URL or path, no form, line or escape, and no base64 of something it follows
 * (compressed data or text). 1 yes, 0 not known here, -1 error. */
static int opaque_token(const unsigned char *s, Py_ssize_t n) {
    if (n == 0 || s[0] == '{' || s[0] == '[' || s[0] == '/') return 0;
    if (n >= 4 && (s[0] | 0x20) == 'h' && (s[1] | 0x20) == 't' && (s[2] | 0x20) == 't' && (s[3] | 0x20) == 'p') return 0;
    unsigned char every = DIGIT | ALPHA | HEX, some = 0;
    int standard = 1, urlsafe = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '=' || c == '\n' || c == '%') return 0; /* a form, lines, escapes, padding: Python's */
        unsigned char bits = char_class[c];
        every &= bits;
        some |= bits;
        standard &= base64_value(c, 0) >= 0;
        urlsafe &= base64_value(c, 1) >= 0;
    }
    (void)some;
    /* _decode_base64: None for short, hex or digit-only, alphabetic or non-base64 text, and for a
     * length no padding completes */
    if (n < MIN_BASE64_CHARS || (every & (HEX | ALPHA)) || !(standard || urlsafe) || n % 4 == 1) return 1;
    unsigned char decoded[96];
    if (n / 4 * 3 + 3 > (Py_ssize_t)sizeof decoded) return 0;
    Py_ssize_t out = 0;
    unsigned bits = 0, held = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        bits = (bits << 6) | (unsigned)base64_value(s[i], !standard);
        held += 6;
        if (held >= 8) {
            held -= 8;
            decoded[out++] = (unsigned char)(bits >> held);
            bits &= (1u << held) - 1;
        }
    }
    /* _accept_base64: compressed data is followed; under 4 bytes is not; else text is */
    if (compressed(decoded, out)) return 0;
    if (out < 4) return 1;
    /* Each ASCII control byte decodes to a character that is not printable: with more of them
     * than a tenth of the bytes (at least a tenth of the characters), _bytes_to_text says None. */
    Py_ssize_t controls = 0;
    for (Py_ssize_t i = 0; i < out; i++) controls += !(char_class[decoded[i]] & PRINTABLE) && decoded[i] < 0x80;
    if (controls * 10 > out) return 1;
    PyObject *data = PyBytes_FromStringAndSize((const char *)decoded, out);
    if (data == NULL) return -1;
    PyObject *text = bytes_text(NULL, data);
    Py_DECREF(data);
    if (text == NULL) return -1;
    int none = text == Py_None;
    Py_DECREF(text);
    return none;
}

static int set_budget(PyObject *peeler, Py_ssize_t budget) {
    PyObject *value = PyLong_FromSsize_t(budget);
    if (value == NULL) return -1;
    int status = PyObject_SetAttr(peeler, str_budget, value);
    Py_DECREF(value);
    return status;
}

static int get_budget(PyObject *peeler, Py_ssize_t *budget) {
    PyObject *value = PyObject_GetAttr(peeler, str_budget);
    if (value == NULL) return -1;
    *budget = PyLong_Check(value) ? PyLong_AsSsize_t(value) : -1;
    Py_DECREF(value);
    if (*budget == -1 && PyErr_Occurred()) return -1;
    return 0;
}

/* Peeler._reused's answer from _PEELED: 1 when the value's earlier fields were taken, 0 when
 * Python is to decide (not remembered, no room, an inflation's reach to count), -1 error */
static int reuse_known(PyObject *fields, Py_ssize_t *budget, Py_ssize_t max_fields, PyObject *value, PyObject *path,
                       PyObject *depth, int escaped) {
    if (PyUnicode_GET_LENGTH(value) > peeled_chars || PyUnicode_GET_LENGTH(path) > peeled_chars) return 0;
    PyObject *key = PyTuple_Pack(4, value, path, depth, escaped ? Py_True : Py_False);
    if (key == NULL) return -1;
    PyObject *known = PyDict_GetItemWithError(peeled, key); /* borrowed */
    Py_DECREF(key);
    if (known == NULL) return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_CheckExact(known) || PyTuple_GET_SIZE(known) != 4 || !PyTuple_CheckExact(PyTuple_GET_ITEM(known, 0)))
        return 0;
    PyObject *taken = PyTuple_GET_ITEM(known, 0);
    Py_ssize_t spent = PyLong_AsSsize_t(PyTuple_GET_ITEM(known, 1));
    Py_ssize_t need = PyLong_AsSsize_t(PyTuple_GET_ITEM(known, 2));
    Py_ssize_t reach = PyLong_AsSsize_t(PyTuple_GET_ITEM(known, 3));
    if (PyErr_Occurred()) return -1;
    if (reach != 0 || !(*budget > need && PyList_GET_SIZE(fields) + PyTuple_GET_SIZE(taken) < max_fields - 1)) return 0;
    Py_ssize_t end = PyList_GET_SIZE(fields);
    if (PyList_SetSlice(fields, end, end, taken) < 0) return -1;
    *budget -= spent;
    return 1;
}

/* peeler._reused(value, path, depth, escaped), the budget written before and read after */
static int reuse(PyObject *peeler, Py_ssize_t *budget, PyObject *value, PyObject *path, PyObject *depth, int escaped) {
    if (set_budget(peeler, *budget) < 0) return -1;
    PyObject *out = PyObject_CallMethodObjArgs(peeler, str_reused, value, path, depth, escaped ? Py_True : Py_False, NULL);
    if (out == NULL) return -1;
    Py_DECREF(out);
    return get_budget(peeler, budget);
}

/* peel_form's loop over `pieces` into `fields`: the index of the first piece left to Python (len(pieces)
 * when none is), -1 on error. Without a peeler (NULL) a value _PEELED does not hold is left too. */
static Py_ssize_t form_pieces(PyObject *peeler, PyObject *fields, Py_ssize_t *budget, PyObject *pieces,
                              PyObject *prefix_dot, PyObject *depth, Py_ssize_t max_fields, int plain_depth,
                              int remembered) {
    Py_ssize_t count = PyList_GET_SIZE(pieces), last = count - 1, index;
    for (index = 0; index < count; index++) {
        PyObject *piece = PyList_GET_ITEM(pieces, index);
        if (!PyUnicode_CheckExact(piece) || !PyUnicode_IS_ASCII(piece)) break;
        Py_ssize_t n = PyUnicode_GET_LENGTH(piece);
        if (n == 0) continue;
        Py_ssize_t held = PyList_GET_SIZE(fields);
        if ((held >= max_fields - 1 && index < last) || *budget <= 0 || held >= max_fields) break;
        const unsigned char *s = PyUnicode_1BYTE_DATA(piece);
        Py_ssize_t equals = 0;
        int escaped_key = 0;
        while (equals < n && s[equals] != '=') {
            escaped_key |= s[equals] == '%' || s[equals] == '+';
            equals++;
        }
        if (equals > LONG_KEY || escaped_key) break;
        Py_ssize_t start = equals < n ? equals + 1 : n, end = n;
        int escaped_value = 0;
        for (Py_ssize_t i = start; i < end; i++) escaped_value |= s[i] == '%' || s[i] == '+';
        if (!escaped_value) {
            while (start < end && ascii_space(s[start])) start++;
            while (end > start && ascii_space(s[end - 1])) end--;
            if (start == end) continue;
        }
        int plain = !escaped_value && (plain_depth || plain_ascii(s + start, end - start));
        if (plain && end - start > *budget) break; /* emit cuts it: Python's */
        PyObject *key = PyUnicode_Substring(piece, 0, equals);
        PyObject *path = key != NULL && prefix_dot != NULL ? PyUnicode_Concat(prefix_dot, key) : key;
        if (path != key) Py_XDECREF(key);
        PyObject *value = path != NULL ? PyUnicode_Substring(piece, start, end) : NULL;
        if (value == NULL) {
            Py_XDECREF(path);
            return -1;
        }
        int failed = 0, left = 0;
        if (!plain && !escaped_value && end - start <= *budget) {
            /* _reused's peel of a token that _layers takes as it is: that token (as a cache hit would give) */
            int token = opaque_token(s + start, end - start);
            failed = token < 0;
            plain = token > 0;
        }
        if (failed) {
        } else if (plain) {
            PyObject *pair[2] = {path, value};
            PyObject *item = PyObject_Vectorcall(field_maker, pair, 2, NULL);
            failed = item == NULL || PyList_Append(fields, item) < 0;
            Py_XDECREF(item);
            *budget -= end - start;
        } else {
            int known = remembered ? reuse_known(fields, budget, max_fields, value, path, depth, escaped_value) : 0;
            if (known == 0 && peeler == NULL)
                left = 1;
            else
                failed = known < 0 || (known == 0 && reuse(peeler, budget, value, path, depth, escaped_value) < 0);
        }
        Py_DECREF(value);
        Py_DECREF(path);
        if (failed) return -1;
        if (left) break;
    }
    return index;
}

/* peel_form(peeler, pieces, prefix, depth, max_fields, plain_depth) -> the index of the first piece
 * left to Peeler.form_py's loop (len(pieces) when none is): the pieces before it taken as it takes
 * them. A piece is left (with everything after it) when it is not ASCII, has an escaped or long
 * key, meets a limit (the fields, the budget, a value the budget cuts), or is not a str. */
PyObject *peel_form(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || field_maker == NULL || !PyList_CheckExact(args[1]) || !PyUnicode_CheckExact(args[2]) ||
        !PyLong_CheckExact(args[4]))
        return PyLong_FromLong(0);
    PyObject *peeler = args[0], *pieces = args[1], *prefix = args[2], *depth = args[3];
    Py_ssize_t max_fields = PyLong_AsSsize_t(args[4]);
    int plain_depth = PyObject_IsTrue(args[5]);
    if ((max_fields == -1 && PyErr_Occurred()) || plain_depth < 0) return NULL;
    PyObject *fields = PyObject_GetAttr(peeler, str_fields);
    if (fields == NULL) return NULL;
    Py_ssize_t budget;
    if (!PyList_CheckExact(fields) || get_budget(peeler, &budget) < 0) {
        Py_DECREF(fields);
        if (PyErr_Occurred()) return NULL;
        return PyLong_FromLong(0);
    }
    PyObject *limits = PyObject_GetAttr(peeler, str_limits);
    if (limits == NULL) {
        Py_DECREF(fields);
        return NULL;
    }
    int remembered = limits == default_limits;
    Py_DECREF(limits);
    PyObject *prefix_dot = NULL;
    if (PyUnicode_GET_LENGTH(prefix) > 0 && (prefix_dot = PyUnicode_FromFormat("%U.", prefix)) == NULL) {
        Py_DECREF(fields);
        return NULL;
    }
    Py_ssize_t index = form_pieces(peeler, fields, &budget, pieces, prefix_dot, depth, max_fields, plain_depth, remembered);
    Py_DECREF(fields);
    Py_XDECREF(prefix_dot);
    if (index < 0 || set_budget(peeler, budget) < 0) return NULL;
    return PyLong_FromSsize_t(index);
}

/* term_may_occur(by_first, digits_lead, fallback, text, lowered) -> TermMatcher.may_occur_py(text,
 * lowered): whether a run of letters (and of digits, when a term starts with digits) of the
 * lower-cased ASCII text is a key of by_first; fallback(text, lowered) answers other text. */
PyObject *term_may_occur(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "term_may_occur takes 4 or 5 arguments");
        return NULL;
    }
    PyObject *by_first = args[0], *text = args[3], *lowered = nargs == 5 ? args[4] : Py_None;
    int digits_lead = PyObject_IsTrue(args[1]);
    if (digits_lead < 0) return NULL;
    if (!PyDict_CheckExact(by_first) || !PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text) ||
        !PyUnicode_CheckExact(lowered) || !PyUnicode_IS_ASCII(lowered)) {
        PyObject *call[2] = {text, lowered};
        return PyObject_Vectorcall(args[2], call, 2, NULL);
    }
    const unsigned char *s = PyUnicode_1BYTE_DATA(lowered);
    Py_ssize_t n = PyUnicode_GET_LENGTH(lowered), i = 0;
    while (i < n) {
        Py_ssize_t start = i;
        if (ascii_alpha(s[i])) {
            while (i < n && ascii_alpha(s[i])) i++;
        } else if (digits_lead && ascii_digit(s[i])) {
            while (i < n && ascii_digit(s[i])) i++;
        } else {
            i++;
            continue;
        }
        PyObject *token = PyUnicode_Substring(lowered, start, i);
        if (token == NULL) return NULL;
        int known = PyDict_Contains(by_first, token);
        Py_DECREF(token);
        if (known < 0) return NULL;
        if (known) Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* ---------------------------------------------------------------------------------------------
 * sensor.phi.recognizers.scan_fields_py: the loop over the fields of a part, the scan of each
 * value left to the Python functions bound here (their caches).
 */

static PyObject *context_of, *scan_short, *scan_field; /* bind_scan: _context, _scan_short_field, _scan_field */
static Py_ssize_t cached_value_chars = -1;              /* bind_scan: _CACHED_VALUE_CHARS */
static PyObject *str_path, *str_value, *str_pages, *str_any_keyed, *str_confidence;

/* bind_scan(_context, _scan_short_field, _scan_field, _CACHED_VALUE_CHARS) */
PyObject *bind_scan(PyObject *module, PyObject *args) {
    PyObject *context, *short_scan, *field_scan;
    Py_ssize_t chars;
    if (!PyArg_ParseTuple(args, "OOOn", &context, &short_scan, &field_scan, &chars)) return NULL;
    if (!PyCallable_Check(context) || !PyCallable_Check(short_scan) || !PyCallable_Check(field_scan) || chars < 0) {
        PyErr_SetString(PyExc_TypeError, "bind_scan takes three callables and a length");
        return NULL;
    }
    if (str_path == NULL) {
        str_path = PyUnicode_InternFromString("path");
        str_value = PyUnicode_InternFromString("value");
        str_pages = PyUnicode_InternFromString("pages");
        str_any_keyed = PyUnicode_InternFromString("any_keyed");
        str_confidence = PyUnicode_InternFromString("confidence");
        if (!str_path || !str_value || !str_pages || !str_any_keyed || !str_confidence) return NULL;
    }
    Py_INCREF(context);
    Py_INCREF(short_scan);
    Py_INCREF(field_scan);
    Py_XSETREF(context_of, context);
    Py_XSETREF(scan_short, short_scan);
    Py_XSETREF(scan_field, field_scan);
    cached_value_chars = chars;
    Py_RETURN_NONE;
}

/* recognizers._NUMBER.fullmatch of ASCII text: [0-9]+(\.[0-9]+)? */
static int ascii_number(PyObject *text) {
    if (!PyUnicode_IS_ASCII(text)) return 0;
    const unsigned char *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 0;
    while (i < n && ascii_digit(s[i])) i++;
    if (i == 0) return 0;
    if (i == n) return 1;
    if (s[i] != '.' || i + 1 == n) return 0;
    for (i++; i < n; i++)
        if (!ascii_digit(s[i])) return 0;
    return 1;
}

static int attribute_true(PyObject *object, PyObject *name) {
    PyObject *value = PyObject_GetAttr(object, name);
    if (value == NULL) return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* the findings of one field (new reference), as scan_fields_py takes them; NULL on error */
static PyObject *field_findings(PyObject *item, int numbers_plain) {
    PyObject *path = PyObject_GetAttr(item, str_path);
    PyObject *value = path != NULL ? PyObject_GetAttr(item, str_value) : NULL;
    PyObject *found = NULL;
    if (value == NULL) goto done;
    if (!PyUnicode_CheckExact(value) || !PyUnicode_CheckExact(path) || PyUnicode_GET_LENGTH(value) > cached_value_chars) {
        found = PyObject_CallOneArg(scan_field, item);
        goto done;
    }
    PyObject *context = PyObject_CallOneArg(context_of, path);
    if (context == NULL) goto done;
    if (numbers_plain && ascii_number(value)) {
        int pages = attribute_true(context, str_pages);
        int keyed = pages == 0 ? attribute_true(context, str_any_keyed) : pages;
        if (pages < 0 || keyed < 0) {
            Py_DECREF(context);
            goto done;
        }
        if (!pages && !keyed) { /* what _scan says at once of a number */
            Py_DECREF(context);
            found = PyTuple_New(0);
            goto done;
        }
    }
    PyObject *call[2] = {context, value};
    found = PyObject_Vectorcall(scan_short, call, 2, NULL);
    Py_DECREF(context);
    if (found != NULL && PyTuple_CheckExact(found) && PyTuple_GET_SIZE(found) > 0) {
        PyObject *first = PyObject_GetAttr(PyTuple_GET_ITEM(found, 0), str_path);
        int same = first != NULL ? PyObject_RichCompareBool(first, path, Py_EQ) : -1;
        Py_XDECREF(first);
        if (same <= 0) { /* found under another path (or an error): _scan_field moves them */
            Py_SETREF(found, same < 0 ? NULL : PyObject_CallOneArg(scan_field, item));
        }
    }
done:
    Py_XDECREF(path);
    Py_XDECREF(value);
    return found;
}

/* scan_fields(fields, min_confidence, numbers_plain) -> scan_fields_py(fields, min_confidence), for a
 * tuple or list of fields; None for other iterables */
PyObject *scan_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || scan_field == NULL || !(PyTuple_CheckExact(args[0]) || PyList_CheckExact(args[0])))
        Py_RETURN_NONE;
    PyObject *fields = args[0], *least = args[1];
    int numbers_plain = PyObject_IsTrue(args[2]);
    if (numbers_plain < 0) return NULL;
    PyObject *findings = PyList_New(0);
    if (findings == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fields); i++) {
        PyObject *found = field_findings(PySequence_Fast_GET_ITEM(fields, i), numbers_plain);
        if (found == NULL) goto fail;
        PyObject *seq = PySequence_Fast(found, "findings");
        Py_DECREF(found);
        if (seq == NULL) goto fail;
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(seq); j++) {
            PyObject *finding = PySequence_Fast_GET_ITEM(seq, j);
            PyObject *confidence = PyObject_GetAttr(finding, str_confidence);
            int keep = confidence != NULL ? PyObject_RichCompareBool(confidence, least, Py_GE) : -1;
            Py_XDECREF(confidence);
            if (keep < 0 || (keep && PyList_Append(findings, finding) < 0)) {
                Py_DECREF(seq);
                goto fail;
            }
        }
        Py_DECREF(seq);
    }
    return findings;
fail:
    Py_DECREF(findings);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Peeler.json_py: a parsed JSON document flattened into the peeler's fields.
 */

static PyObject *str_bound, *str_emit, *str_true, *str_false;

/* whether the document holds only what peel_json takes: exact dicts with str keys of at most
 * LONG_KEY characters, exact lists, ASCII str, bool, int, float and None, nested less than `room` */
static int simple_document(PyObject *obj, Py_ssize_t room) {
    if (PyUnicode_CheckExact(obj)) return PyUnicode_IS_ASCII(obj);
    if (obj == Py_None || PyBool_Check(obj) || PyLong_CheckExact(obj) || PyFloat_CheckExact(obj)) return 1;
    if (room <= 1) return 0; /* its children would reach the nesting cap */
    if (PyDict_CheckExact(obj)) {
        Py_ssize_t at = 0;
        PyObject *key, *child;
        while (PyDict_Next(obj, &at, &key, &child)) {
            if (!PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) > LONG_KEY || !simple_document(child, room - 1))
                return 0;
        }
        return 1;
    }
    if (PyList_CheckExact(obj)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(obj); i++)
            if (!simple_document(PyList_GET_ITEM(obj, i), room - 1)) return 0;
        return 1;
    }
    return 0;
}

typedef struct {
    PyObject *peeler, *fields, *depth;
    Py_ssize_t budget, max_fields;
    int plain_depth, remembered;
} JsonPeel;

enum { GO_ON = 0, STOP = 1, FAILED = -1 };

/* Peeler.emit(path, value) once its exhausted check has passed; a value the budget cuts goes to it */
static int json_emit(JsonPeel *peel, PyObject *path, PyObject *value) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    if (n > peel->budget) {
        if (set_budget(peel->peeler, peel->budget) < 0) return FAILED;
        PyObject *out = PyObject_CallMethodObjArgs(peel->peeler, str_emit, path, value, NULL);
        if (out == NULL) return FAILED;
        Py_DECREF(out);
        return get_budget(peel->peeler, &peel->budget) < 0 ? FAILED : GO_ON;
    }
    PyObject *pair[2] = {path, value};
    PyObject *item = PyObject_Vectorcall(field_maker, pair, 2, NULL);
    int failed = item == NULL || PyList_Append(peel->fields, item) < 0;
    Py_XDECREF(item);
    peel->budget -= n;
    return failed ? FAILED : GO_ON;
}

static PyObject *json_path(PyObject *prefix, PyObject *key) {
    if (PyUnicode_GET_LENGTH(prefix) == 0) {
        Py_INCREF(key);
        return key;
    }
    return PyUnicode_FromFormat("%U.%U", prefix, key);
}

static int json_node(JsonPeel *peel, PyObject *obj, PyObject *prefix) {
    Py_ssize_t held = PyList_GET_SIZE(peel->fields);
    if (peel->budget <= 0 || held >= peel->max_fields) { /* exhausted: nothing more is taken */
        return PyObject_SetAttr(peel->peeler, str_bound, Py_True) < 0 ? FAILED : STOP;
    }
    if (PyDict_CheckExact(obj)) {
        Py_ssize_t at = 0;
        PyObject *key, *child;
        while (PyDict_Next(obj, &at, &key, &child)) {
            PyObject *path = json_path(prefix, key);
            if (path == NULL) return FAILED;
            Py_INCREF(child);
            int status = json_node(peel, child, path);
            Py_DECREF(child);
            Py_DECREF(path);
            if (status != GO_ON) return status;
        }
        return GO_ON;
    }
    if (PyList_CheckExact(obj)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(obj); i++) {
            PyObject *index = PyUnicode_FromFormat("%zd", i);
            PyObject *path = index != NULL ? json_path(prefix, index) : NULL;
            Py_XDECREF(index);
            if (path == NULL) return FAILED;
            PyObject *child = PyList_GET_ITEM(obj, i);
            Py_INCREF(child);
            int status = json_node(peel, child, path);
            Py_DECREF(child);
            Py_DECREF(path);
            if (status != GO_ON) return status;
        }
        return GO_ON;
    }
    if (PyUnicode_CheckExact(obj)) { /* Peeler._text */
        const unsigned char *s = PyUnicode_1BYTE_DATA(obj);
        Py_ssize_t start = 0, end = PyUnicode_GET_LENGTH(obj);
        while (start < end && ascii_space(s[start])) start++;
        while (end > start && ascii_space(s[end - 1])) end--;
        if (start == end) return GO_ON;
        PyObject *stripped = PyUnicode_Substring(obj, start, end);
        if (stripped == NULL) return FAILED;
        int status;
        int take = peel->plain_depth || plain_ascii(s + start, end - start);
        if (!take && end - start <= peel->budget) take = opaque_token(s + start, end - start);
        if (take < 0) {
            status = FAILED;
        } else if (take) {
            status = json_emit(peel, prefix, stripped);
        } else {
            int known = peel->remembered
                            ? reuse_known(peel->fields, &peel->budget, peel->max_fields, stripped, prefix, peel->depth, 0)
                            : 0;
            if (known == 0) known = reuse(peel->peeler, &peel->budget, stripped, prefix, peel->depth, 0) < 0 ? -1 : 1;
            status = known < 0 ? FAILED : GO_ON;
        }
        Py_DECREF(stripped);
        return status;
    }
    if (PyBool_Check(obj)) return json_emit(peel, prefix, obj == Py_True ? str_true : str_false);
    if (PyLong_CheckExact(obj) || PyFloat_CheckExact(obj)) {
        PyObject *text = PyObject_Repr(obj);
        if (text == NULL) return FAILED;
        int status = json_emit(peel, prefix, text);
        Py_DECREF(text);
        return status;
    }
    return GO_ON; /* None */
}

/* peel_json(peeler, obj, prefix, depth, nesting, max_nesting, max_fields, plain_depth) -> True once
 * Peeler.json_py's work is done, False (nothing done) for a document simple_document turns down */
PyObject *peel_json(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8 || field_maker == NULL || !PyUnicode_CheckExact(args[2]) || !PyLong_CheckExact(args[4]) ||
        !PyLong_CheckExact(args[5]) || !PyLong_CheckExact(args[6]))
        Py_RETURN_FALSE;
    if (str_bound == NULL) {
        str_bound = PyUnicode_InternFromString("bound");
        str_emit = PyUnicode_InternFromString("emit");
        str_true = PyUnicode_InternFromString("true");
        str_false = PyUnicode_InternFromString("false");
        if (!str_bound || !str_emit || !str_true || !str_false) return NULL;
    }
    Py_ssize_t nesting = PyLong_AsSsize_t(args[4]), max_nesting = PyLong_AsSsize_t(args[5]);
    JsonPeel peel = {args[0], NULL, args[3], 0, PyLong_AsSsize_t(args[6]), PyObject_IsTrue(args[7]), 0};
    if (PyErr_Occurred() || peel.plain_depth < 0) return NULL;
    /* (a document at the nesting cap goes out whole, as text: Python's) */
    if (nesting < 0 || max_nesting - nesting < 1 || !simple_document(args[1], max_nesting - nesting)) Py_RETURN_FALSE;
    PyObject *limits = PyObject_GetAttr(peel.peeler, str_limits);
    if (limits == NULL) return NULL;
    peel.remembered = limits == default_limits;
    Py_DECREF(limits);
    peel.fields = PyObject_GetAttr(peel.peeler, str_fields);
    if (peel.fields == NULL) return NULL;
    if (!PyList_CheckExact(peel.fields) || get_budget(peel.peeler, &peel.budget) < 0) {
        Py_DECREF(peel.fields);
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_FALSE;
    }
    int status = json_node(&peel, args[1], args[2]);
    Py_DECREF(peel.fields);
    if (status == FAILED || set_budget(peel.peeler, peel.budget) < 0) return NULL;
    Py_RETURN_TRUE;
}

/* ---------------------------------------------------------------------------------------------
 * sensor.phi.recognizers._gate_hints_py: which recognizers a value with a digit may need, from
 * the words of the gates and the hint of the pattern gates, for ASCII text.
 */

#define GATE_WORDS 64
#define GATE_WORD_CHARS 32
static char gate_words[GATE_WORDS][GATE_WORD_CHARS + 1]; /* bind_gates: the gates' words, lower case */
static Py_ssize_t gate_word_lengths[GATE_WORDS];
static int gate_word_count = -1;
static uint64_t gate_words_starting[256];
static PyObject *gate_hints_py; /* bind_gates: _gate_hints_py, for text that is not ASCII */

/* bind_gates(words, _gate_hints_py) */
PyObject *bind_gates(PyObject *module, PyObject *args) {
    PyObject *words, *fallback;
    if (!PyArg_ParseTuple(args, "O!O", &PyTuple_Type, &words, &fallback)) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(words);
    if (count > GATE_WORDS || !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_ValueError, "at most 64 gate words, and a callable");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *word = PyTuple_GET_ITEM(words, i);
        Py_ssize_t n = 0;
        const char *text = PyUnicode_Check(word) && PyUnicode_IS_ASCII(word) ? PyUnicode_AsUTF8AndSize(word, &n) : NULL;
        if (text == NULL || n == 0 || n > GATE_WORD_CHARS) {
            PyErr_SetString(PyExc_ValueError, "a gate word is a short non-empty ASCII str");
            return NULL;
        }
    }
    memset(gate_words_starting, 0, sizeof gate_words_starting);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(words, i), &n);
        memcpy(gate_words[i], text, n + 1);
        gate_word_lengths[i] = n;
        gate_words_starting[(unsigned char)text[0]] |= (uint64_t)1 << i;
    }
    gate_word_count = (int)count;
    Py_INCREF(fallback);
    Py_XSETREF(gate_hints_py, fallback);
    Py_RETURN_NONE;
}

static int has_gate_word(const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t starting = gate_words_starting[s[i]];
        while (starting) {
            int w = __builtin_ctzll(starting);
            starting &= starting - 1;
            Py_ssize_t len = gate_word_lengths[w];
            if (i + len <= n && memcmp(s + i, gate_words[w], len) == 0) return 1;
        }
    }
    return 0;
}

static inline int digit_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t i) { return i < n && ascii_digit(s[i]); }
static inline int in_set(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, const char *set) {
    return i < n && s[i] != 0 && strchr(set, s[i]) != NULL;
}

/* recognizers._PATTERN_GATE_HINT.search of ASCII text */
static int pattern_hint(const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '+' && i + 1 < n && s[i + 1] == '1' && digit_at(s, n, i + 2)) return 1;
        if (!ascii_digit(s[i]) || i + 1 >= n) continue;
        unsigned char next = s[i + 1];
        if (next == ')') return 1;
        /* an MBI letter: a capital other than B, I, L, O, S and Z */
        if (next >= 'A' && next <= 'Y' && next != 'B' && next != 'I' && next != 'L' && next != 'O' && next != 'S') return 1;
        if (digit_at(s, n, i + 1) && digit_at(s, n, i + 2)) {
            if (in_set(s, n, i + 3, "- .") && digit_at(s, n, i + 4) && digit_at(s, n, i + 5) &&
                ((in_set(s, n, i + 6, "- .") && digit_at(s, n, i + 7)) ||
                 (digit_at(s, n, i + 6) && in_set(s, n, i + 7, " .-") && digit_at(s, n, i + 8))))
                return 1;
            if (digit_at(s, n, i + 3) && i + 4 < n && s[i + 4] == '-' && digit_at(s, n, i + 5) && digit_at(s, n, i + 6) &&
                digit_at(s, n, i + 7))
                return 1;
        }
    }
    return 0;
}

static int contains(const unsigned char *s, Py_ssize_t n, const char *word, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i + len <= n; i++)
        if (memcmp(s + i, word, len) == 0) return 1;
    return 0;
}

/* gate_hints(text, lowered) -> _gate_hints_py(text, lowered) */
PyObject *gate_hints(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || gate_hints_py == NULL) {
        PyErr_SetString(PyExc_TypeError, "gate_hints(text, lowered), once bound");
        return NULL;
    }
    PyObject *text = args[0], *lowered = args[1];
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text) || !PyUnicode_CheckExact(lowered) ||
        !PyUnicode_IS_ASCII(lowered))
        return PyObject_Vectorcall(gate_hints_py, args, 2, NULL);
    const unsigned char *s = PyUnicode_1BYTE_DATA(text), *l = PyUnicode_1BYTE_DATA(lowered);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), m = PyUnicode_GET_LENGTH(lowered);
    long hints = has_gate_word(l, m);
    if (pattern_hint(s, n) || contains(l, m, "ssn", 3) || contains(l, m, "soc", 3)) hints |= 2;
    return PyLong_FromLong(hints);
}

/* ---------------------------------------------------------------------------------------------
 * sensor.phi.recognizers.scan_http_py at its default confidence: a request's parts found (the
 * target's, each Referer's and Host's, the body's), each one's peel reused or made by
 * layers._peel_alone and its findings by recognizers.scan_fields (remembered in the part), the
 * page parts' findings remembered for url_findings. A request peel_request would peel into one
 * peeler (a part not reused) goes on in layers._peel_on. Declined (None, before any peel or
 * scan): a method not plain ASCII or CONNECT, a target not origin-form, headers or a body of
 * other types than a decoded record's.
 */

static PyObject *rq_parts, *rq_alone, *rq_on, *rq_scan, *rq_url_memo, *rq_limits, *rq_confidence, *rq_new_part, *rq_unquote;
static Py_ssize_t rq_part_chars = -1, rq_url_chars, rq_max_output, rq_max_fields, rq_max_parts, rq_max_url_memo;
static PyObject *str_move_to_end, *str_popitem;
static PyObject *str_kind_url, *str_kind_host, *str_kind_referer, *str_kind_body, *str_spent, *str_reach, *str_findings;
static PyObject *str_url_path, *str_header_host, *str_query_dot, *str_amp, *str_amp_equals, *rq_one;
static PyObject *rq_query_fields; /* layers._QUERY_FIELDS */
static Py_ssize_t rq_max_query_fields, rq_part_spent, rq_max_depth;

static int limit_of(PyObject *limits, const char *name, Py_ssize_t *out) {
    PyObject *value = PyObject_GetAttrString(limits, name);
    if (value == NULL) return -1;
    *out = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* bind_request(_PARTS, _peel_alone, _peel_on, scan_fields, _URL_FINDINGS, _MAX_URL_FINDINGS, DEFAULT_LIMITS,
 * _CACHED_PART_CHARS, _URL_CONFIDENCE, _URL_CHARS, _new_part, _unquote, _MAX_PARTS, _CACHED_PART_SPENT,
 * _QUERY_FIELDS, _MAX_QUERY_FIELDS) */
PyObject *bind_request(PyObject *module, PyObject *args) {
    PyObject *parts, *alone, *on, *scan, *url_memo, *limits, *confidence, *new_part, *unquote, *query_fields;
    Py_ssize_t chars, url_chars, max_output, max_fields, max_parts, part_spent, max_query_fields, max_depth, max_url;
    if (!PyArg_ParseTuple(args, "O!OOOO!nOnO!nOOnnO!n", &PyDict_Type, &parts, &alone, &on, &scan, &PyDict_Type,
                          &url_memo, &max_url, &limits, &chars, &PyFloat_Type, &confidence, &url_chars, &new_part,
                          &unquote, &max_parts, &part_spent, &PyDict_Type, &query_fields, &max_query_fields))
        return NULL;
    if (!PyCallable_Check(alone) || !PyCallable_Check(on) || !PyCallable_Check(scan) || !PyCallable_Check(new_part) ||
        !PyCallable_Check(unquote)) {
        PyErr_SetString(PyExc_TypeError, "bind_request takes five callables");
        return NULL;
    }
    if (limit_of(limits, "max_output", &max_output) < 0 || limit_of(limits, "max_fields", &max_fields) < 0 ||
        limit_of(limits, "max_depth", &max_depth) < 0)
        return NULL;
    if (str_kind_url == NULL) {
        str_kind_url = PyUnicode_InternFromString("url");
        str_kind_host = PyUnicode_InternFromString("host");
        str_kind_referer = PyUnicode_InternFromString("referer");
        str_kind_body = PyUnicode_InternFromString("body");
        str_spent = PyUnicode_InternFromString("spent");
        str_reach = PyUnicode_InternFromString("reach");
        str_findings = PyUnicode_InternFromString("findings");
        str_url_path = PyUnicode_InternFromString("url.path");
        str_header_host = PyUnicode_InternFromString("header.host");
        str_query_dot = PyUnicode_InternFromString("query.");
        str_amp = PyUnicode_InternFromString("&");
        str_amp_equals = PyUnicode_InternFromString("&=");
        rq_one = PyLong_FromLong(1);
        str_move_to_end = PyUnicode_InternFromString("move_to_end");
        str_popitem = PyUnicode_InternFromString("popitem");
        if (!str_kind_url || !str_kind_host || !str_kind_referer || !str_kind_body || !str_spent || !str_reach ||
            !str_findings || !str_url_path || !str_header_host || !str_query_dot || !str_amp || !str_amp_equals ||
            !rq_one || !str_move_to_end || !str_popitem)
            return NULL;
    }
    if (str_fields == NULL && (str_fields = PyUnicode_InternFromString("fields")) == NULL) return NULL;
    PyObject *bound[] = {parts, alone, on, scan, url_memo, limits, confidence, new_part, unquote, query_fields};
    PyObject **slots[] = {&rq_parts,      &rq_alone,    &rq_on,      &rq_scan,        &rq_url_memo, &rq_limits,
                          &rq_confidence, &rq_new_part, &rq_unquote, &rq_query_fields};
    for (size_t i = 0; i < sizeof bound / sizeof bound[0]; i++) {
        Py_INCREF(bound[i]);
        Py_XSETREF(*slots[i], bound[i]);
    }
    rq_part_chars = chars;
    rq_url_chars = url_chars;
    rq_max_output = max_output;
    rq_max_fields = max_fields;
    rq_max_parts = max_parts;
    rq_part_spent = part_spent;
    rq_max_query_fields = max_query_fields;
    rq_max_depth = max_depth;
    rq_max_url_memo = max_url;
    Py_RETURN_NONE;
}

/* whether ASCII `name` is `lower` (lower case ASCII) but for case */
static int ascii_named(PyObject *name, const char *lower, Py_ssize_t n) {
    if (PyUnicode_GET_LENGTH(name) != n) return 0;
    const unsigned char *s = PyUnicode_1BYTE_DATA(name);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}

typedef struct {
    PyObject *key; /* (kind, *inputs) */
    Py_ssize_t chars;
    int in_page;
} Wanted;

#define WANTED_ON_STACK 16

/* a part's int attribute; -1 with an error set on failure */
static Py_ssize_t part_size(PyObject *part, PyObject *name) {
    PyObject *value = PyObject_GetAttr(part, name);
    if (value == NULL) return -1;
    Py_ssize_t size = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return size;
}

/* a target's path with its escapes undone (layers._unquote): new reference, NULL on error */
static PyObject *unquoted_path(PyObject *path) {
    Py_ssize_t escape = PyUnicode_FindChar(path, '%', 0, PyUnicode_GET_LENGTH(path), 1);
    if (escape == -2) return NULL;
    if (escape < 0) return Py_NewRef(path); /* (what unquote gives back) */
    PyObject *value = PyObject_CallOneArg(rq_unquote, path);
    if (value != NULL && !PyUnicode_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "_unquote gives a str");
        Py_CLEAR(value);
    }
    return value;
}

/* a part made of `fields` (a list) remembered as _peel_alone remembers it: new reference, NULL on error */
static PyObject *remembered_part(PyObject *key, PyObject *fields, Py_ssize_t spent) {
    PyObject *items = PyList_AsTuple(fields);
    PyObject *size = PyLong_FromSsize_t(spent), *reach = PyLong_FromLong(0), *memo = PyDict_New(), *part = NULL;
    if (items != NULL && size != NULL && reach != NULL && memo != NULL) {
        PyObject *call[4] = {items, size, reach, memo};
        part = PyObject_Vectorcall(rq_new_part, call, 4, NULL);
    }
    Py_XDECREF(items);
    Py_XDECREF(size);
    Py_XDECREF(reach);
    Py_XDECREF(memo);
    if (part != NULL && spent <= rq_part_spent) {
        if (PyDict_GET_SIZE(rq_parts) >= rq_max_parts) PyDict_Clear(rq_parts);
        if (PyDict_SetItem(rq_parts, key, part) < 0) Py_CLEAR(part);
    }
    return part;
}

/* _peel_url of a path and a query that no key leaves empty, into `fields` (the path's already
 * there, `budget` left): 1 when every piece was taken here (its fields then remembered for
 * query_fields), 0 when one is Python's (the fields are then to be dropped), -1 on error */
static int query_taken(PyObject *query, PyObject *fields, Py_ssize_t *budget) {
    PyObject *pieces = PyUnicode_Split(query, str_amp, -1);
    if (pieces == NULL) return -1;
    Py_ssize_t index = form_pieces(NULL, fields, budget, pieces, str_query_dot, rq_one, rq_max_fields,
                                   1 >= rq_max_depth, 1);
    Py_ssize_t count = PyList_GET_SIZE(pieces);
    Py_DECREF(pieces);
    if (index < count) return index < 0 ? -1 : 0;
    PyObject *taken = PyList_GetSlice(fields, 1, PyList_GET_SIZE(fields));
    PyObject *items = taken != NULL ? PyList_AsTuple(taken) : NULL;
    Py_XDECREF(taken);
    if (items == NULL) return -1;
    if (PyDict_GET_SIZE(rq_query_fields) >= rq_max_query_fields) PyDict_Clear(rq_query_fields);
    int status = PyDict_SetItem(rq_query_fields, query, items);
    Py_DECREF(items);
    return status < 0 ? -1 : 1;
}

/* _peel_alone(key) of a Host header's ASCII value (stripped), or of a target whose query's pieces
 * are all ones peel_form takes without Python: made and remembered here as _peel_alone does; NULL
 * with no error set for another part (or one of those whose peel needs Python after all) */
static PyObject *simple_part(PyObject *key) {
    if (field_maker == NULL) return NULL;
    PyObject *kind = PyTuple_GET_ITEM(key, 0), *name, *value, *query = NULL;
    if (kind == str_kind_host) {
        PyObject *host = PyTuple_GET_ITEM(key, 1);
        if (!PyUnicode_IS_ASCII(host)) return NULL;
        const unsigned char *s = PyUnicode_1BYTE_DATA(host);
        Py_ssize_t start = 0, end = PyUnicode_GET_LENGTH(host);
        while (start < end && ascii_space(s[start])) start++;
        while (end > start && ascii_space(s[end - 1])) end--;
        name = str_header_host;
        value = PyUnicode_Substring(host, start, end);
    } else if (kind == str_kind_url) {
        query = PyTuple_GET_ITEM(key, 2);
        Py_ssize_t n = PyUnicode_GET_LENGTH(query);
        if (n > 0) { /* the query _peel_url remembers: no key left empty */
            if (PyUnicode_READ_CHAR(query, 0) == '=') return NULL;
            Py_ssize_t at = PyUnicode_Find(query, str_amp_equals, 0, n, 1);
            if (at != -1) return NULL; /* (-2: an error) */
        } else {
            query = NULL;
        }
        name = str_url_path;
        value = unquoted_path(PyTuple_GET_ITEM(key, 1));
    } else {
        return NULL;
    }
    if (value == NULL) return NULL;
    PyObject *pair[2] = {name, value};
    PyObject *item = PyObject_Vectorcall(field_maker, pair, 2, NULL);
    PyObject *fields = item != NULL ? PyList_New(1) : NULL;
    Py_ssize_t budget = rq_max_output - PyUnicode_GET_LENGTH(value);
    Py_DECREF(value);
    if (fields == NULL) {
        Py_XDECREF(item);
        return NULL;
    }
    PyList_SET_ITEM(fields, 0, item);
    PyObject *part = NULL;
    int taken = query != NULL ? query_taken(query, fields, &budget) : 1;
    if (taken > 0) part = remembered_part(key, fields, rq_max_output - budget);
    Py_DECREF(fields);
    return part;
}

/* the parts of a request, as peel_request gives them with the default limits (new list), and
 * whether no limit decided anything; NULL on error */
static PyObject *request_parts_of(Wanted *wanted, Py_ssize_t count, int *exact) {
    PyObject *parts = PyList_New(0);
    if (parts == NULL) return NULL;
    Py_ssize_t budget = rq_max_output, fields = 0;
    *exact = 1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *found = PyDict_GetItemWithError(rq_parts, wanted[i].key);
        if (found != NULL) {
            Py_INCREF(found);
        } else if (PyErr_Occurred()) {
            goto fail;
        } else if (wanted[i].chars <= rq_part_chars) {
            found = simple_part(wanted[i].key);
            if (found == NULL && PyErr_Occurred()) goto fail;
        }
        if (found == NULL && !PyErr_Occurred() && wanted[i].chars <= rq_part_chars) {
            found = PyObject_CallOneArg(rq_alone, wanted[i].key);
            if (found == NULL) goto fail;
            if (found == Py_None) Py_CLEAR(found);
        }
        int reused = 0;
        if (found != NULL) {
            Py_ssize_t spent = part_size(found, str_spent), reach = spent >= 0 ? part_size(found, str_reach) : -1;
            PyObject *items = reach >= 0 ? PyObject_GetAttr(found, str_fields) : NULL;
            if (items == NULL || !PyTuple_Check(items)) {
                if (items != NULL) PyErr_SetString(PyExc_TypeError, "a part's fields are a tuple");
                Py_XDECREF(items);
                Py_DECREF(found);
                goto fail;
            }
            Py_ssize_t size = PyTuple_GET_SIZE(items);
            Py_DECREF(items);
            if (budget > spent && budget >= reach && fields + size < rq_max_fields) {
                budget -= spent;
                fields += size;
                reused = 1;
            }
        }
        if (reused) {
            int failed = PyList_Append(parts, found);
            Py_DECREF(found);
            if (failed < 0) goto fail;
            continue;
        }
        Py_XDECREF(found);
        PyObject *keys = PyList_New(count - i);
        if (keys == NULL) goto fail;
        for (Py_ssize_t j = i; j < count; j++) {
            Py_INCREF(wanted[j].key);
            PyList_SET_ITEM(keys, j - i, wanted[j].key);
        }
        PyObject *left = PyLong_FromSsize_t(budget);
        PyObject *call[4] = {parts, keys, left, rq_limits};
        PyObject *done = left != NULL ? PyObject_Vectorcall(rq_on, call, 4, NULL) : NULL;
        Py_DECREF(keys);
        Py_XDECREF(left);
        if (done == NULL) goto fail;
        *exact = PyObject_IsTrue(done);
        Py_DECREF(done);
        if (*exact < 0) goto fail;
        if (PyList_GET_SIZE(parts) != count) {
            PyErr_SetString(PyExc_RuntimeError, "_peel_on gave another number of parts");
            goto fail;
        }
        break;
    }
    return parts;
fail:
    Py_DECREF(parts);
    return NULL;
}

/* a part's findings at the default confidence (borrowed from its memo), scanned on first use */
static PyObject *part_findings(PyObject *part) {
    PyObject *memo = PyObject_GetAttr(part, str_findings);
    if (memo == NULL) return NULL;
    if (!PyDict_Check(memo)) {
        PyErr_SetString(PyExc_TypeError, "a part's findings are a dict");
        Py_DECREF(memo);
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(memo, rq_confidence);
    if (found == NULL && !PyErr_Occurred()) {
        PyObject *items = PyObject_GetAttr(part, str_fields);
        PyObject *call[2] = {items, rq_confidence};
        PyObject *list = items != NULL ? PyObject_Vectorcall(rq_scan, call, 2, NULL) : NULL;
        Py_XDECREF(items);
        PyObject *tuple = list != NULL ? PySequence_Tuple(list) : NULL;
        Py_XDECREF(list);
        if (tuple != NULL && PyDict_SetItem(memo, rq_confidence, tuple) == 0) found = tuple;
        Py_XDECREF(tuple); /* the memo holds it */
    }
    Py_DECREF(memo);
    return found;
}

/* recognizers._remember_url_findings(key, found): the memo (an OrderedDict) kept in the order used,
 * its oldest let go past its bound; -1 on error */
static int remember_url(PyObject *key, PyObject *found) {
    int known = PyDict_Contains(rq_url_memo, key);
    if (known < 0) return -1;
    PyObject *done;
    if (known) {
        done = PyObject_CallMethodOneArg(rq_url_memo, str_move_to_end, key);
    } else {
        if (PyObject_SetItem(rq_url_memo, key, found) < 0) return -1;
        if (PyDict_GET_SIZE(rq_url_memo) <= rq_max_url_memo) return 0;
        done = PyObject_CallMethodOneArg(rq_url_memo, str_popitem, Py_False); /* (last=False) */
    }
    if (done == NULL) return -1;
    Py_DECREF(done);
    return 0;
}

/* scan_request(method, target, headers, body, content_type) -> scan_http(...) at its default
 * confidence, or None (declined) */
PyObject *scan_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || rq_parts == NULL) Py_RETURN_NONE;
    PyObject *method = args[0], *target = args[1], *headers = args[2], *body = args[3], *content_type = args[4];
    if (!PyUnicode_CheckExact(method) || !PyUnicode_IS_ASCII(method) || ascii_named(method, "connect", 7) ||
        !PyUnicode_CheckExact(target) || PyUnicode_GET_LENGTH(target) == 0 || PyUnicode_READ_CHAR(target, 0) != '/' ||
        !(PyTuple_CheckExact(headers) || PyList_CheckExact(headers)) || !PyBytes_CheckExact(body) ||
        !(content_type == Py_None || PyUnicode_CheckExact(content_type)))
        Py_RETURN_NONE;
    Py_ssize_t header_count = PySequence_Fast_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < header_count; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
            !PyUnicode_IS_ASCII(PyTuple_GET_ITEM(pair, 0)) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 1)))
            Py_RETURN_NONE;
    }
    Wanted stack[WANTED_ON_STACK], *wanted = stack;
    if (header_count + 2 > WANTED_ON_STACK) {
        wanted = PyMem_Malloc(sizeof(Wanted) * (size_t)(header_count + 2));
        if (wanted == NULL) return PyErr_NoMemory();
    }
    Py_ssize_t count = 0;
    PyObject *result = NULL, *parts = NULL, *referrer = NULL; /* referrer borrowed */
    /* split_request_target: the target before a "#", split at its first "?" */
    Py_ssize_t length = PyUnicode_GET_LENGTH(target);
    Py_ssize_t end = PyUnicode_FindChar(target, '#', 0, length, 1);
    if (end == -2) goto done;
    if (end < 0) end = length;
    Py_ssize_t question = PyUnicode_FindChar(target, '?', 0, end, 1);
    if (question == -2) goto done;
    {
        PyObject *path = PyUnicode_Substring(target, 0, question < 0 ? end : question);
        PyObject *query = path != NULL ? PyUnicode_Substring(target, question < 0 ? end : question + 1, end) : NULL;
        PyObject *key = query != NULL ? PyTuple_Pack(3, str_kind_url, path, query) : NULL;
        Py_ssize_t chars = query != NULL ? PyUnicode_GET_LENGTH(path) + PyUnicode_GET_LENGTH(query) : 0;
        Py_XDECREF(path);
        Py_XDECREF(query);
        if (key == NULL) goto done;
        wanted[count++] = (Wanted){key, chars, 1}; /* (the path has the leading "/") */
    }
    for (Py_ssize_t i = 0; i < header_count; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        PyObject *kind = NULL;
        int in_page = 0;
        if (ascii_named(name, "referer", 7)) {
            kind = str_kind_referer;
            in_page = referrer == NULL;
            if (referrer == NULL) referrer = value;
        } else if (ascii_named(name, "host", 4)) {
            kind = str_kind_host;
        } else if (content_type == Py_None && ascii_named(name, "content-type", 12)) {
            content_type = value;
            continue;
        } else {
            continue;
        }
        PyObject *key = PyTuple_Pack(2, kind, value);
        if (key == NULL) goto done;
        wanted[count++] = (Wanted){key, PyUnicode_GET_LENGTH(value), in_page};
    }
    if (PyBytes_GET_SIZE(body) > 0) {
        PyObject *key = PyTuple_Pack(3, str_kind_body, body, content_type);
        if (key == NULL) goto done;
        Py_ssize_t type_chars = content_type == Py_None ? 0 : PyUnicode_GET_LENGTH(content_type);
        wanted[count++] = (Wanted){key, PyBytes_GET_SIZE(body) + type_chars, 0};
    }
    int exact;
    parts = request_parts_of(wanted, count, &exact);
    if (parts == NULL) goto done;
    PyObject *findings = PyList_New(0);
    if (findings == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *found = part_findings(PyList_GET_ITEM(parts, i));
        if (found == NULL || !PyTuple_Check(found)) {
            if (found != NULL) PyErr_SetString(PyExc_TypeError, "a part's findings are a tuple");
            Py_DECREF(findings);
            goto done;
        }
        if (PyTuple_GET_SIZE(found) &&
            PyList_SetSlice(findings, PyList_GET_SIZE(findings), PyList_GET_SIZE(findings), found) < 0) {
            Py_DECREF(findings);
            goto done;
        }
    }
    Py_ssize_t referrer_chars = referrer != NULL ? PyUnicode_GET_LENGTH(referrer) : 0;
    if (exact && length + referrer_chars <= rq_url_chars) {
        /* the page parts' findings, remembered for url_findings under (method, target, Referer or None) */
        PyObject *page = PyList_New(0);
        for (Py_ssize_t i = 0; page != NULL && i < count; i++) {
            if (!wanted[i].in_page) continue;
            PyObject *found = part_findings(PyList_GET_ITEM(parts, i)); /* (scanned above) */
            if (found == NULL || PyList_SetSlice(page, PyList_GET_SIZE(page), PyList_GET_SIZE(page), found) < 0)
                Py_CLEAR(page);
        }
        PyObject *found = page != NULL ? PyList_AsTuple(page) : NULL;
        Py_XDECREF(page);
        PyObject *key = found != NULL ? PyTuple_Pack(3, method, target, referrer_chars ? referrer : Py_None) : NULL;
        int failed = key == NULL || remember_url(key, found) < 0;
        Py_XDECREF(found);
        Py_XDECREF(key);
        if (failed) {
            Py_DECREF(findings);
            goto done;
        }
    }
    result = findings;
done:
    for (Py_ssize_t i = 0; i < count; i++) Py_DECREF(wanted[i].key);
    if (wanted != stack) PyMem_Free(wanted);
    Py_XDECREF(parts);
    return result;
}
