#include "fast.h"

/* ---------------------------------------------------------------------------------------------
 * QUIC: the header protection mask of a client Initial (RFC 9001 5.4.3), AES-128 of one sample
 * block under the header protection key; sensor.decode.quic.hp_mask_py (the `cryptography`
 * package's AES-ECB) is the reference. The key is derived from the Destination Connection ID the
 * client sent in clear, so there is nothing secret here to guard against timing: the plain
 * table-based cipher of FIPS-197 suffices, and saves building a cipher object per connection.
 */

static const uint8_t sbox[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
};

static inline uint8_t xtime(uint8_t x) { return (uint8_t)((x << 1) ^ ((x >> 7) * 0x1b)); }

/* AES-128 (FIPS-197 5.1): the 16-byte block `in` under `key`, into `out`. */
static void aes128_block(const uint8_t key[16], const uint8_t in[16], uint8_t out[16]) {
    uint8_t rk[176], s[16], t[16];
    memcpy(rk, key, 16);
    uint8_t rcon = 1;
    for (int i = 16; i < 176; i += 4) { /* key expansion (5.2) */
        uint8_t w[4] = {rk[i - 4], rk[i - 3], rk[i - 2], rk[i - 1]};
        if (i % 16 == 0) {
            uint8_t first = w[0];
            w[0] = sbox[w[1]] ^ rcon;
            w[1] = sbox[w[2]];
            w[2] = sbox[w[3]];
            w[3] = sbox[first];
            rcon = xtime(rcon);
        }
        for (int j = 0; j < 4; j++) rk[i + j] = rk[i - 16 + j] ^ w[j];
    }
    for (int i = 0; i < 16; i++) s[i] = in[i] ^ rk[i];
    for (int round = 1; round <= 10; round++) {
        for (int c = 0; c < 4; c++) /* SubBytes and ShiftRows: row r of column c from column c + r */
            for (int r = 0; r < 4; r++) t[4 * c + r] = sbox[s[4 * ((c + r) % 4) + r]];
        if (round < 10) {
            for (int c = 0; c < 4; c++) { /* MixColumns */
                uint8_t *col = t + 4 * c, a0 = col[0], a1 = col[1], a2 = col[2], a3 = col[3];
                uint8_t all = a0 ^ a1 ^ a2 ^ a3;
                col[0] = a0 ^ all ^ xtime(a0 ^ a1);
                col[1] = a1 ^ all ^ xtime(a1 ^ a2);
                col[2] = a2 ^ all ^ xtime(a2 ^ a3);
                col[3] = a3 ^ all ^ xtime(a3 ^ a0);
            }
        }
        for (int i = 0; i < 16; i++) s[i] = t[i] ^ rk[16 * round + i];
    }
    memcpy(out, s, 16);
}

/* quic_hp_mask(hp_key, sample) -> AES-128-ECB(hp_key, sample): 16 bytes, or None for other sizes */
PyObject *quic_hp_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[0]) != 16 ||
        PyBytes_GET_SIZE(args[1]) != 16)
        Py_RETURN_NONE;
    uint8_t mask[16];
    aes128_block((const uint8_t *)PyBytes_AS_STRING(args[0]), (const uint8_t *)PyBytes_AS_STRING(args[1]), mask);
    return PyBytes_FromStringAndSize((const char *)mask, 16);
}

/* ---------------------------------------------------------------------------------------------
 * sensor.decode.quic.crypto_chunks_py: the (offset, data) of the CRYPTO frames in an Initial's
 * plaintext, up to the first frame not allowed there or the first damaged one.
 */

/* RFC 9000 16: the varint at *pos, advancing it; -1 when it runs past `end`. */
static int varint(const uint8_t *p, Py_ssize_t end, Py_ssize_t *pos, uint64_t *value) {
    if (*pos >= end) return -1;
    Py_ssize_t size = (Py_ssize_t)1 << (p[*pos] >> 6);
    if (*pos + size > end) return -1;
    uint64_t v = p[*pos] & 0x3F;
    for (Py_ssize_t i = 1; i < size; i++) v = (v << 8) | p[*pos + i];
    *pos += size;
    *value = v;
    return 0;
}

PyObject *quic_crypto_chunks(PyObject *module, PyObject *arg) {
    if (!PyBytes_Check(arg)) Py_RETURN_NONE;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(arg);
    Py_ssize_t end = PyBytes_GET_SIZE(arg), pos = 0;
    PyObject *chunks = PyList_New(0);
    if (chunks == NULL) return NULL;
    uint64_t a, b, n;
    while (pos < end) {
        uint8_t type = p[pos];
        if (type == 0x00) { /* PADDING */
            while (pos < end && p[pos] == 0) pos++;
            continue;
        }
        pos++;
        if (type == 0x01) continue; /* PING */
        if (type == 0x06) {         /* CRYPTO */
            if (varint(p, end, &pos, &a) < 0 || varint(p, end, &pos, &n) < 0 || n > (uint64_t)(end - pos)) break;
            PyObject *item = tuple_steal(2, (PyObject *[]){PyLong_FromUnsignedLongLong(a), bytes_at(p + pos, (Py_ssize_t)n)});
            if (item == NULL || PyList_Append(chunks, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(chunks);
                return NULL;
            }
            Py_DECREF(item);
            pos += (Py_ssize_t)n;
        } else if (type == 0x02 || type == 0x03) { /* ACK, ACK_ECN */
            if (varint(p, end, &pos, &a) < 0 || varint(p, end, &pos, &a) < 0 || varint(p, end, &pos, &n) < 0 ||
                varint(p, end, &pos, &a) < 0 || n > (uint64_t)(end - pos) / 2)
                break;
            uint64_t count = 2 * n + (type == 0x03 ? 3 : 0), i = 0;
            for (; i < count; i++)
                if (varint(p, end, &pos, &a) < 0) break;
            if (i < count) break;
        } else if (type == 0x1C) { /* CONNECTION_CLOSE */
            if (varint(p, end, &pos, &a) < 0 || varint(p, end, &pos, &b) < 0 || varint(p, end, &pos, &n) < 0) break;
            pos = n > (uint64_t)(end - pos) ? end : pos + (Py_ssize_t)n;
        } else {
            break;
        }
    }
    return chunks;
}
