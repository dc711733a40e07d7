#include "fast.h"

/* ---------------------------------------------------------------------------------------------
 * identifier_hints: sensor.phi.redact.identifier_hints_py. Which families of identifier shapes
 * may occur in a text, from the conditions every match of a family meets; identifier_spans runs
 * a family's patterns only where its bit is set. One pass over ASCII text instead of four
 * regular expressions; other text (where \d and lower() reach beyond ASCII) is declined.
 */

#define HINT_WORDS 32
#define HINT_WORD_CHARS 32
static char hint_words[HINT_WORDS][HINT_WORD_CHARS + 1]; /* bind_hints: redact._WORD_HINTS */
static Py_ssize_t hint_word_lengths[HINT_WORDS];
static int hint_word_count = -1; /* not bound yet: every text is declined */
static uint32_t words_starting[256]; /* per lower-case first character, the bits of the words it starts */
/* per character, what it may start or take part in: the checks of the loop below it can pass (most
 * characters of a text none: skipped at once) */
enum { C_AT = 1, C_PLUS = 2, C_DIGIT = 4, C_SEPARATOR = 8, C_WORD = 16 };
static uint8_t char_class[256];
static long numeric_bit, mbi_bit, worded_bit, email_bit;

/* bind_hints(words, numeric_bit, mbi_bit, worded_bit, email_bit): the lower-case ASCII words that
 * hint at a worded identifier, and the bit of each family. */
PyObject *bind_hints(PyObject *module, PyObject *args) {
    PyObject *words;
    long bits[4];
    if (!PyArg_ParseTuple(args, "O!llll", &PyTuple_Type, &words, &bits[0], &bits[1], &bits[2], &bits[3]))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(words);
    if (count > HINT_WORDS) {
        PyErr_SetString(PyExc_ValueError, "too many hint words");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) { /* all checked before any is taken */
        PyObject *word = PyTuple_GET_ITEM(words, i);
        Py_ssize_t n = 0;
        const char *text = PyUnicode_Check(word) && PyUnicode_IS_ASCII(word) ? PyUnicode_AsUTF8AndSize(word, &n) : NULL;
        int lower_case = text != NULL;
        for (Py_ssize_t j = 0; lower_case && j < n; j++) lower_case = !(text[j] >= 'A' && text[j] <= 'Z');
        if (!lower_case || n == 0 || n > HINT_WORD_CHARS) {
            PyErr_SetString(PyExc_ValueError, "a hint word is a short non-empty lower-case ASCII str");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(words, i), &n);
        memcpy(hint_words[i], text, n + 1);
        hint_word_lengths[i] = n;
    }
    memset(words_starting, 0, sizeof words_starting);
    for (Py_ssize_t i = 0; i < count; i++) words_starting[(unsigned char)hint_words[i][0]] |= (uint32_t)1 << i;
    memset(char_class, 0, sizeof char_class);
    char_class['@'] = C_AT, char_class['+'] = C_PLUS;
    char_class['-'] = char_class['.'] = char_class[' '] = char_class[')'] = C_SEPARATOR;
    for (int c = '0'; c <= '9'; c++) char_class[c] = C_DIGIT;
    for (int c = 0; c < 256; c++)
        if (words_starting[c >= 'A' && c <= 'Z' ? c + 32 : c]) char_class[c] |= C_WORD;
    hint_word_count = (int)count;
    numeric_bit = bits[0], mbi_bit = bits[1], worded_bit = bits[2], email_bit = bits[3];
    Py_RETURN_NONE;
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* _MBI_L: a capital letter other than B, I, L, O, S and Z */
static inline int mbi_letter(unsigned char c) {
    return c >= 'A' && c <= 'Y' && c != 'B' && c != 'I' && c != 'L' && c != 'O' && c != 'S';
}

static inline int is_digit_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t at) {
    return at < n && is_digit(s[at]);
}

static inline int digits_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t at, int count) {
    if (at + count > n) return 0;
    for (int k = 0; k < count; k++)
        if (!is_digit(s[at + k])) return 0;
    return 1;
}

static inline unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* identifier_hints(text) -> the bits identifier_hints_py gives, or None for text that is not ASCII. */
PyObject *identifier_hints(PyObject *module, PyObject *text) {
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text) || hint_word_count < 0) Py_RETURN_NONE;
    const unsigned char *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int numeric_hint = 0, numeric_need = 0, mbi = 0, worded = 0, email = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (!char_class[c]) continue; /* (no check below passes on it) */
        if (c == '@') email = 1;
        /* _NUMERIC_HINT: \d\d\d[- .)] or \+\d{10}; _NUMERIC_NEED: [-. )]\d{2,3}[-. ]\d{4} or \+\d{10} */
        if (c == '+' && digits_at(s, n, i + 1, 10)) numeric_hint = numeric_need = 1;
        if (!numeric_hint && i + 3 < n && digits_at(s, n, i, 3) &&
            (s[i + 3] == '-' || s[i + 3] == ' ' || s[i + 3] == '.' || s[i + 3] == ')'))
            numeric_hint = 1;
        if (!numeric_need && (c == '-' || c == '.' || c == ' ' || c == ')') && digits_at(s, n, i + 1, 2)) {
            Py_ssize_t at = is_digit_at(s, n, i + 3) ? i + 4 : i + 3; /* two digits or three */
            numeric_need = at < n && (s[at] == '-' || s[at] == '.' || s[at] == ' ') && digits_at(s, n, at + 1, 4);
        }
        /* _MBI_HINT: [1-9] _MBI_L _MBI_A \d [_MBI_L or -] */
        if (!mbi && c >= '1' && c <= '9' && i + 4 < n && mbi_letter(s[i + 1]) &&
            (mbi_letter(s[i + 2]) || is_digit(s[i + 2])) && is_digit(s[i + 3]) && (mbi_letter(s[i + 4]) || s[i + 4] == '-'))
            mbi = 1;
        /* _WORD_HINT over the lowered text */
        for (uint32_t words = worded ? 0 : words_starting[lower(c)]; words && !worded; words &= words - 1) {
            int w = __builtin_ctz(words);
            Py_ssize_t len = hint_word_lengths[w];
            if (i + len > n) continue;
            Py_ssize_t k = 1;
            while (k < len && lower(s[i + k]) == (unsigned char)hint_words[w][k]) k++;
            worded = k == len;
        }
    }
    long bits = (numeric_hint && numeric_need ? numeric_bit : 0) | (mbi ? mbi_bit : 0) | (worded ? worded_bit : 0) |
                (email ? email_bit : 0);
    return PyLong_FromLong(bits);
}

/* ---------------------------------------------------------------------------------------------
 * redact_query: sensor.phi.redact._redact_query_py, the loop over a query's pieces. What a piece
 * is whatever the findings (_query_piece, cached) and the masking of a value holding a finding's
 * value (_redact_part) stay in Python: called back. Here each piece is looked up, the findings'
 * lowered values searched for in it, and the query written out again.
 */

static PyObject *piece_info, *piece_info_uncached, *redact_part, *quoted_value; /* bind_query */
static Py_ssize_t piece_cached_chars;

/* bind_query(piece_info, piece_info_uncached, cached_chars, redact_part, quoted) */
PyObject *bind_query(PyObject *module, PyObject *args) {
    PyObject *info, *uncached, *part, *quoted;
    Py_ssize_t chars;
    if (!PyArg_ParseTuple(args, "OOnOO", &info, &uncached, &chars, &part, &quoted)) return NULL;
    Py_INCREF(info), Py_INCREF(uncached), Py_INCREF(part), Py_INCREF(quoted);
    Py_XSETREF(piece_info, info);
    Py_XSETREF(piece_info_uncached, uncached);
    Py_XSETREF(redact_part, part);
    Py_XSETREF(quoted_value, quoted);
    piece_cached_chars = chars;
    Py_RETURN_NONE;
}

/* The written piece (a new reference), NULL with an exception set, or NULL without one where a
 * callback gave back what _redact_query_py would not take (the whole query declined). */
static PyObject *query_piece(PyObject *piece, PyObject *needles, PyObject *carried, PyObject *findings,
                             PyObject *needles_arg) {
    PyObject *info = PyObject_CallOneArg(
        PyUnicode_GET_LENGTH(piece) <= piece_cached_chars ? piece_info : piece_info_uncached, piece);
    if (info == NULL) return NULL;
    if (PyUnicode_CheckExact(info)) return info; /* a value under an identifier's name */
    if (!PyTuple_CheckExact(info) || PyTuple_GET_SIZE(info) != 6) {
        Py_DECREF(info);
        return NULL;
    }
    PyObject *key = PyTuple_GET_ITEM(info, 0), *head = PyTuple_GET_ITEM(info, 1), *as_sent = PyTuple_GET_ITEM(info, 2);
    PyObject *value = PyTuple_GET_ITEM(info, 3), *lowered = PyTuple_GET_ITEM(info, 4), *masked = PyTuple_GET_ITEM(info, 5);
    PyObject *redacted = NULL, *written = NULL;
    int held = needles != Py_None && lowered != Py_None; /* no finding's value in the value */
    for (Py_ssize_t i = 0; held && i < PyTuple_GET_SIZE(needles); i++) {
        Py_ssize_t at = PyUnicode_Find(lowered, PyTuple_GET_ITEM(needles, i), 0, PY_SSIZE_T_MAX, 1);
        if (at == -2) goto done;
        held = at == -1;
    }
    redacted = held ? Py_NewRef(masked) : PyObject_CallFunctionObjArgs(redact_part, value, findings, needles_arg, NULL);
    if (redacted == NULL) goto done;
    if (!PyUnicode_CheckExact(redacted)) {
        Py_CLEAR(redacted);
        goto done;
    }
    if (redacted == value || PyUnicode_Compare(redacted, value) == 0) {
        PyObject *text = PyDict_GetItemWithError(carried, key); /* borrowed */
        if (text != NULL)
            written = PyUnicode_Concat(head, text);
        else if (!PyErr_Occurred())
            written = Py_NewRef(as_sent);
    } else {
        PyObject *text = PyObject_CallOneArg(quoted_value, redacted);
        if (text != NULL) {
            written = PyUnicode_Concat(head, text);
            Py_DECREF(text);
        }
    }
    Py_DECREF(redacted);
done:
    Py_DECREF(info);
    return written;
}

/* redact_query(query, needles, carried, findings, needles_arg) -> _redact_query_py(query, findings,
 * needles_arg), `needles` being the findings' lowered values (None where _needles gave None) and
 * `carried` each carrying parameter's name -> its masked value written out; None: declined. */
PyObject *redact_query(PyObject *module, PyObject *args) {
    PyObject *query, *needles, *carried, *findings, *needles_arg;
    if (!PyArg_ParseTuple(args, "UOO!OO", &query, &needles, &PyDict_Type, &carried, &findings, &needles_arg))
        return NULL;
    if (piece_info == NULL || (needles != Py_None && !PyTuple_CheckExact(needles))) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; needles != Py_None && i < PyTuple_GET_SIZE(needles); i++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(needles, i))) Py_RETURN_NONE;
    PyObject *amp = PyUnicode_FromOrdinal('&');
    if (amp == NULL) return NULL;
    PyObject *pieces = PyUnicode_Split(query, amp, -1), *result = NULL;
    if (pieces == NULL) goto out;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pieces); i++) {
        PyObject *written = query_piece(PyList_GET_ITEM(pieces, i), needles, carried, findings, needles_arg);
        if (written == NULL) {
            if (!PyErr_Occurred()) result = Py_NewRef(Py_None); /* declined */
            goto out;
        }
        PyList_SetItem(pieces, i, written); /* (steals; lets the piece go) */
    }
    result = PyUnicode_Join(amp, pieces);
out:
    Py_XDECREF(pieces);
    Py_DECREF(amp);
    return result;
}
