#include "fast.h"

#include <limits.h>

/* ---------------------------------------------------------------------------------------------
 * QUIC: the header protection mask of a client Initial (RFC 9001 5.4.3), AES-128 of one sample
 * block under the header protection key, as quic_unprotect below takes it off; sensor.decode.quic.hp_mask_py
 * (the `cryptography` package's AES-ECB) is the reference, inside unprotect_py. The key is derived from the Destination Connection ID the
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

/* ---------------------------------------------------------------------------------------------
 * sensor.decode.quic.crypto_chunks_py: the (offset, data) of the CRYPTO frames in an Initial's
 * plaintext, up to the first frame not allowed there or the first damaged one.
 */

#if defined(__x86_64__) && defined(__GNUC__)
#include <wmmintrin.h>

/* aes128_block by the CPU's AES instructions (AES-NI), where it has them: the key expansion and the
 * ten rounds in some fifty instructions, against thousands for the table-based one. */
#define AES_ROUND_KEY(k, rcon)                                                                         \
    do {                                                                                               \
        __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(k, rcon), 0xFF);                  \
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));                                                    \
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));                                                    \
        k = _mm_xor_si128(_mm_xor_si128(k, _mm_slli_si128(k, 4)), assist);                              \
    } while (0)

__attribute__((target("aes,sse2"))) static void aes128_block_ni(const uint8_t key[16], const uint8_t in[16],
                                                                 uint8_t out[16]) {
    __m128i k = _mm_loadu_si128((const __m128i *)key);
    __m128i s = _mm_xor_si128(_mm_loadu_si128((const __m128i *)in), k);
    AES_ROUND_KEY(k, 0x01); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x02); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x04); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x08); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x10); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x20); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x40); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x80); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x1B); s = _mm_aesenc_si128(s, k);
    AES_ROUND_KEY(k, 0x36); s = _mm_aesenclast_si128(s, k);
    _mm_storeu_si128((__m128i *)out, s);
}

static void header_mask(const uint8_t key[16], const uint8_t in[16], uint8_t out[16]) {
    static int has_aes = -1;
    if (has_aes < 0) has_aes = __builtin_cpu_supports("aes") != 0;
    if (has_aes)
        aes128_block_ni(key, in, out);
    else
        aes128_block(key, in, out);
}
#else
#define header_mask aes128_block
#endif

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

/* ---------------------------------------------------------------------------------------------
 * sensor.decode.quic.initial_keys_py: a client's Initial key, IV and header protection key
 * (RFC 9001 5.2): HKDF-Extract of the DCID under the version's salt, then HKDF-Expand-Label with
 * SHA-256 (FIPS 180-4). Every length asked fits one SHA-256 output, so each expansion is a single
 * HMAC. The inputs are public (the DCID is sent in clear): nothing to keep in constant time.
 */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

#define BSIG0(a) (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22))
#define BSIG1(e) (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25))
/* one round, the eight working variables named in their order of this round: instead of shifting
 * them along, the next round names them one place further */
#define SHA_ROUND(a, b, c, d, e, f, g, h, i)                                                        \
    do {                                                                                           \
        uint32_t t1 = h + BSIG1(e) + (g ^ (e & (f ^ g))) + sha_k[i] + w[i];                        \
        d += t1;                                                                                   \
        h = t1 + BSIG0(a) + ((a & b) | (c & (a | b)));                                             \
    } while (0)

static void sha256_block_c(uint32_t h[8], const uint8_t block[64]) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 | (uint32_t)block[4 * i + 2] << 8 |
               block[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i += 8) {
        SHA_ROUND(a, b, c, d, e, f, g, k, i);
        SHA_ROUND(k, a, b, c, d, e, f, g, i + 1);
        SHA_ROUND(g, k, a, b, c, d, e, f, i + 2);
        SHA_ROUND(f, g, k, a, b, c, d, e, i + 3);
        SHA_ROUND(e, f, g, k, a, b, c, d, i + 4);
        SHA_ROUND(d, e, f, g, k, a, b, c, i + 5);
        SHA_ROUND(c, d, e, f, g, k, a, b, i + 6);
        SHA_ROUND(b, c, d, e, f, g, k, a, i + 7);
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* The same block by the CPU's SHA extensions (Intel SHA-NI: four rounds a pair of sha256rnds2, the
 * message schedule by sha256msg1 and sha256msg2), where the CPU has them: sha256_block takes it. */
__attribute__((target("sha,sse4.1"))) static void sha256_block_ni(uint32_t h[8], const uint8_t block[64]) {
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL); /* big-endian words */
    __m128i cdab = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8), cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    const __m128i abef_in = abef, cdgh_in = cdgh;
    __m128i m[4];
    for (int g = 0; g < 16; g++) { /* rounds 4g to 4g+3 */
        if (g < 4) m[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * g)), swap);
        __m128i msg = _mm_add_epi32(m[g & 3], _mm_loadu_si128((const __m128i *)(sha_k + 4 * g)));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, msg);
        if (g >= 3 && g < 15) { /* the schedule's next four words */
            __m128i next = _mm_add_epi32(m[(g + 1) & 3], _mm_alignr_epi8(m[g & 3], m[(g + 3) & 3], 4));
            m[(g + 1) & 3] = _mm_sha256msg2_epu32(next, m[g & 3]);
        }
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(msg, 0x0E));
        if (g >= 1 && g < 13) m[(g + 3) & 3] = _mm_sha256msg1_epu32(m[(g + 3) & 3], m[g & 3]);
    }
    abef = _mm_add_epi32(abef, abef_in);
    cdgh = _mm_add_epi32(cdgh, cdgh_in);
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B), dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(dchg, feba, 8));
}

static int sha_ni = -1; /* whether the CPU has them: looked up once */

void sha256_block(uint32_t h[8], const uint8_t block[64]) {
    if (sha_ni < 0) {
        __builtin_cpu_init();
        sha_ni = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
    }
    if (sha_ni)
        sha256_block_ni(h, block);
    else
        sha256_block_c(h, block);
}
#else
void sha256_block(uint32_t h[8], const uint8_t block[64]) { sha256_block_c(h, block); }
#endif

typedef struct { uint32_t inner[8], outer[8]; } HmacPads; /* SHA-256 states after a key's two pads */

static void hmac_pads(const uint8_t *key, size_t n, HmacPads *pads) { /* a key of at most 64 bytes */
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint8_t ipad[64] = {0}, opad[64];
    memcpy(ipad, key, n);
    for (int i = 0; i < 64; i++) opad[i] = ipad[i] ^ 0x5c, ipad[i] ^= 0x36;
    memcpy(pads->inner, iv, sizeof iv);
    memcpy(pads->outer, iv, sizeof iv);
    sha256_block(pads->inner, ipad);
    sha256_block(pads->outer, opad);
}

/* SHA-256 from `state` (one 64-byte block already hashed) over `data` (n <= 119), into out[32]. */
static void sha256_finish(const uint32_t state[8], const uint8_t *data, size_t n, uint8_t out[32]) {
    uint32_t h[8];
    uint8_t last[128] = {0};
    memcpy(h, state, sizeof h);
    memcpy(last, data, n);
    last[n] = 0x80;
    size_t total = n + 9 <= 64 ? 64 : 128;
    uint64_t bits = ((uint64_t)n + 64) * 8;
    for (int i = 0; i < 8; i++) last[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha256_block(h, last);
    if (total == 128) sha256_block(h, last + 64);
    for (int i = 0; i < 8; i++)
        out[4 * i] = (uint8_t)(h[i] >> 24), out[4 * i + 1] = (uint8_t)(h[i] >> 16),
        out[4 * i + 2] = (uint8_t)(h[i] >> 8), out[4 * i + 3] = (uint8_t)h[i];
}

static void hmac(const HmacPads *pads, const uint8_t *msg, size_t n, uint8_t out[32]) { /* n <= 119 */
    uint8_t inner[32];
    sha256_finish(pads->inner, msg, n, inner);
    sha256_finish(pads->outer, inner, 32, out);
}

/* HKDF-Expand-Label (RFC 8446 7.1): empty context, a label of at most 100 bytes, length <= 32 */
static void expand_label(const HmacPads *secret, const char *label, size_t label_n, uint8_t length, uint8_t *out) {
    uint8_t info[2 + 1 + 6 + 100 + 2], block[32];
    size_t n = 0;
    info[n++] = 0, info[n++] = length, info[n++] = (uint8_t)(6 + label_n);
    memcpy(info + n, "tls13 ", 6), n += 6;
    memcpy(info + n, label, label_n), n += label_n;
    info[n++] = 0, info[n++] = 1; /* the empty context, HKDF-Expand's block counter */
    hmac(secret, info, n, block);
    memcpy(out, block, length);
}

/* quic_initial_keys(salt, dcid, key_label, iv_label, hp_label) -> (key, iv, hp) protecting a
 * client's Initials, or None for what the Python code must take (a salt over 64 bytes, a DCID
 * over 100, a label over 100) */
PyObject *quic_initial_keys(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) Py_RETURN_NONE;
    for (int i = 0; i < 5; i++)
        if (!PyBytes_Check(args[i]) || PyBytes_GET_SIZE(args[i]) > (i == 0 ? 64 : 100)) Py_RETURN_NONE;
    /* the pads of the last two salts (one per QUIC version) made once */
    static struct { uint8_t salt[64]; Py_ssize_t n; HmacPads pads; } salts[2];
    static int salts_made = 0, salt_next = 0;
    const uint8_t *salt = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t salt_n = PyBytes_GET_SIZE(args[0]);
    int at = 0;
    while (at < salts_made && (salts[at].n != salt_n || memcmp(salts[at].salt, salt, (size_t)salt_n) != 0)) at++;
    if (at == salts_made) { /* a salt not seen yet: over the older of the two */
        at = salts_made < 2 ? salts_made++ : (salt_next ^= 1);
        memcpy(salts[at].salt, salt, (size_t)salt_n);
        salts[at].n = salt_n;
        hmac_pads(salt, (size_t)salt_n, &salts[at].pads);
    }
    HmacPads pads;
    uint8_t secret[32], key[16], iv[12], hp[16];
    hmac(&salts[at].pads, (const uint8_t *)PyBytes_AS_STRING(args[1]), (size_t)PyBytes_GET_SIZE(args[1]), secret); /* Extract */
    hmac_pads(secret, 32, &pads);
    expand_label(&pads, "client in", 9, 32, secret);
    hmac_pads(secret, 32, &pads);
    expand_label(&pads, PyBytes_AS_STRING(args[2]), (size_t)PyBytes_GET_SIZE(args[2]), 16, key);
    expand_label(&pads, PyBytes_AS_STRING(args[3]), (size_t)PyBytes_GET_SIZE(args[3]), 12, iv);
    expand_label(&pads, PyBytes_AS_STRING(args[4]), (size_t)PyBytes_GET_SIZE(args[4]), 16, hp);
    return tuple_steal(3, (PyObject *[]){bytes_at(key, 16), bytes_at(iv, 12), bytes_at(hp, 16)});
}

/* quic_unprotect(hp, iv, packet, start, pn_offset, end, largest_pn) -> (packet_number, nonce, aad,
 * ciphertext) of the long-header packet at packet[start:end] under the header protection key and
 * IV (RFC 9001 5.3, 5.4), or None where no key can fit it; sensor.decode.quic.unprotect_py is the
 * reference, for a largest packet number from -1 to 2^62 (None for others) */
PyObject *quic_unprotect(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != 16 || !PyBytes_Check(args[1]) ||
        PyBytes_GET_SIZE(args[1]) != 12 || !PyBytes_Check(args[2]))
        Py_RETURN_NONE;
    Py_ssize_t start = PyLong_AsSsize_t(args[3]), pn_offset = PyLong_AsSsize_t(args[4]),
               end = PyLong_AsSsize_t(args[5]);
    long long largest = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(args[2]);
    if (start < 0 || pn_offset <= start || end > PyBytes_GET_SIZE(args[2]) || pn_offset + 4 + 16 > end ||
        largest < -1 || largest > (1LL << 62)) /* the caller gives unprotect_py any other */
        Py_RETURN_NONE;
    uint8_t mask[16];
    header_mask((const uint8_t *)PyBytes_AS_STRING(args[0]), p + pn_offset + 4, mask);
    uint8_t first = p[start] ^ (mask[0] & 0x0F);
    int pn_length = (first & 0x03) + 1;
    Py_ssize_t payload_at = pn_offset + pn_length;
    if (payload_at + 16 > end) Py_RETURN_NONE;
    uint64_t truncated = 0;
    uint8_t pn_bytes[4];
    for (int i = 0; i < pn_length; i++) {
        pn_bytes[i] = p[pn_offset + i] ^ mask[1 + i];
        truncated = (truncated << 8) | pn_bytes[i];
    }
    /* RFC 9000 17.1 (sensor.decode.quic._decode_packet_number) */
    long long expected = largest + 1, window = 1LL << (8 * pn_length), half = window / 2;
    long long candidate = (long long)(((uint64_t)expected & ~(uint64_t)(window - 1)) | truncated);
    if (candidate <= expected - half && candidate < (1LL << 62) - window)
        candidate += window;
    else if (candidate > expected + half && candidate >= window)
        candidate -= window;
    uint8_t nonce[12];
    memcpy(nonce, PyBytes_AS_STRING(args[1]), 12);
    for (int i = 0; i < 8; i++) nonce[11 - i] ^= (uint8_t)((uint64_t)candidate >> (8 * i));
    Py_ssize_t header_n = pn_offset - start;
    PyObject *aad = PyBytes_FromStringAndSize(NULL, header_n + pn_length);
    if (aad == NULL) return NULL;
    uint8_t *a = (uint8_t *)PyBytes_AS_STRING(aad);
    a[0] = first;
    memcpy(a + 1, p + start + 1, (size_t)(header_n - 1));
    memcpy(a + header_n, pn_bytes, (size_t)pn_length);
    return tuple_steal(4, (PyObject *[]){PyLong_FromLongLong(candidate), bytes_at(nonce, 12), aad,
                                         bytes_at(p + payload_at, end - payload_at)});
}

/* ---------------------------------------------------------------------------------------------
 * sensor.decode.quic.absorb_chunks_py: an Initial's CRYPTO chunks [(offset, data), ...] added to a
 * connection's CRYPTO stream `crypto` (a bytearray, contiguous from offset 0) and its chunks held
 * ahead of a gap (`pending`, offset -> bytes, `pending_bytes` in all), the stream capped at `cap`
 * bytes and `pending` at `max_pending` chunks. -> the new pending_bytes, -1 where the connection
 * gives up (over a bound), or None, having changed nothing, for input of other types.
 */
typedef struct {
    long long offset;
    PyObject *key;
} HeldChunk;

static int held_order(const void *a, const void *b) {
    long long x = ((const HeldChunk *)a)->offset, y = ((const HeldChunk *)b)->offset;
    return (x > y) - (x < y);
}

static int crypto_append(PyObject *crypto, const char *data, Py_ssize_t n) {
    Py_ssize_t have = PyByteArray_GET_SIZE(crypto);
    if (PyByteArray_Resize(crypto, have + n) < 0) return -1;
    memcpy(PyByteArray_AS_STRING(crypto) + have, data, (size_t)n);
    return 0;
}

PyObject *quic_absorb(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyByteArray_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) || !PyLong_CheckExact(args[2]) ||
        !PyList_CheckExact(args[3]) || !PyLong_CheckExact(args[4]) || !PyLong_CheckExact(args[5]))
        Py_RETURN_NONE;
    PyObject *crypto = args[0], *pending = args[1], *chunks = args[3];
    long long pending_bytes = PyLong_AsLongLong(args[2]), cap = PyLong_AsLongLong(args[4]);
    long long max_pending = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(chunks);
    for (Py_ssize_t i = 0; i < count; i++) { /* every chunk an (int >= 0, bytes) pair, before anything changes */
        PyObject *chunk = PyList_GET_ITEM(chunks, i);
        if (!PyTuple_CheckExact(chunk) || PyTuple_GET_SIZE(chunk) != 2 || !PyLong_CheckExact(PyTuple_GET_ITEM(chunk, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(chunk, 1)) || Py_SIZE(PyTuple_GET_ITEM(chunk, 0)) < 0)
            Py_RETURN_NONE;
    }
    PyObject *key, *value;
    for (Py_ssize_t at = 0; PyDict_Next(pending, &at, &key, &value);)
        if (!PyLong_CheckExact(key) || !PyBytes_CheckExact(value)) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, i), *offset_key = PyTuple_GET_ITEM(chunk, 0);
        PyObject *data = PyTuple_GET_ITEM(chunk, 1);
        int overflow;
        long long offset = PyLong_AsLongLongAndOverflow(offset_key, &overflow);
        if (overflow || offset >= cap) continue; /* beyond anything a ClientHello within the cap can reach */
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        if (n > cap - offset) n = (Py_ssize_t)(cap - offset);
        Py_ssize_t have = PyByteArray_GET_SIZE(crypto);
        if (offset <= have) {
            Py_ssize_t skip = have - (Py_ssize_t)offset;
            if (n > skip && crypto_append(crypto, PyBytes_AS_STRING(data) + skip, n - skip) < 0) return NULL;
            continue;
        }
        PyObject *old = PyDict_GetItemWithError(pending, offset_key);
        if (old == NULL && PyErr_Occurred()) return NULL;
        Py_ssize_t old_size = old != NULL ? PyBytes_GET_SIZE(old) : 0;
        if (n <= old_size) continue;
        if (pending_bytes + n > cap || PyDict_GET_SIZE(pending) >= max_pending) return PyLong_FromLong(-1);
        pending_bytes += n - old_size;
        PyObject *kept = n == PyBytes_GET_SIZE(data) ? Py_NewRef(data) : bytes_at((const uint8_t *)PyBytes_AS_STRING(data), n);
        if (kept == NULL || PyDict_SetItem(pending, offset_key, kept) < 0) {
            Py_XDECREF(kept);
            return NULL;
        }
        Py_DECREF(kept);
    }
    Py_ssize_t held = PyDict_GET_SIZE(pending);
    if (held) { /* the held chunks that now join the stream, in offset order */
        HeldChunk *order = PyMem_Malloc(sizeof(HeldChunk) * (size_t)held);
        if (order == NULL) return PyErr_NoMemory();
        Py_ssize_t at = 0, k = 0;
        while (PyDict_Next(pending, &at, &key, &value)) {
            int overflow;
            order[k].offset = PyLong_AsLongLongAndOverflow(key, &overflow);
            if (overflow) order[k].offset = LLONG_MAX;
            order[k++].key = Py_NewRef(key);
        }
        qsort(order, (size_t)held, sizeof(HeldChunk), held_order);
        int failed = 0;
        for (k = 0; k < held && !failed; k++) {
            Py_ssize_t have = PyByteArray_GET_SIZE(crypto);
            if (order[k].offset > have) break;
            PyObject *data = PyDict_GetItemWithError(pending, order[k].key);
            if (data == NULL) {
                failed = 1;
                break;
            }
            Py_INCREF(data);
            Py_ssize_t skip = have - (Py_ssize_t)order[k].offset;
            pending_bytes -= PyBytes_GET_SIZE(data);
            failed = PyDict_DelItem(pending, order[k].key) < 0 ||
                     (PyBytes_GET_SIZE(data) > skip &&
                      crypto_append(crypto, PyBytes_AS_STRING(data) + skip, PyBytes_GET_SIZE(data) - skip) < 0);
            Py_DECREF(data);
        }
        for (k = 0; k < held; k++) Py_DECREF(order[k].key);
        PyMem_Free(order);
        if (failed) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "quic_absorb: a held chunk went missing");
            return NULL;
        }
    }
    return PyLong_FromLongLong(pending_bytes);
}

/* sensor.decode.quic.is_quic_initial: the datagram starts with a QUIC v1 or v2 Initial long header. */
int quic_initial_start(const uint8_t *p, Py_ssize_t n) {
    if (n < 7 || (p[0] & 0xC0) != 0xC0 || p[5] > 20) return 0;
    uint32_t version = get32(p + 1);
    int packet_type = (p[0] >> 4) & 0x03;
    return (version == 0x00000001 && packet_type == 0) || (version == 0x6B3343CF && packet_type == 1);
}

/* quic_long_header(packet, start) -> (version, initial, dcid, pn_offset, end) of the QUIC v1 or v2
 * long-header packet at packet[start] (RFC 9000 17.2, RFC 9369 3.2), or None where no further packet
 * can be delimited; sensor.decode.quic.long_header_py is the reference (and its _VERSIONS the home of
 * the two versions and their Initial and Retry type bits). */
PyObject *quic_long_header(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "quic_long_header(packet: bytes, start: int)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), size = PyBytes_GET_SIZE(args[0]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    if (start < 0 || size - start < 7 || (p[start] & 0xC0) != 0xC0) Py_RETURN_NONE;
    uint32_t version = ((uint32_t)p[start + 1] << 24) | ((uint32_t)p[start + 2] << 16) | ((uint32_t)p[start + 3] << 8) |
                       p[start + 4];
    int packet_type = (p[start] >> 4) & 0x03, initial_type, retry_type;
    if (version == 0x00000001) { /* QUIC v1 */
        initial_type = 0;
        retry_type = 3;
    } else if (version == 0x6B3343CF) { /* QUIC v2 */
        initial_type = 1;
        retry_type = 0;
    } else
        Py_RETURN_NONE;
    if (packet_type == retry_type) Py_RETURN_NONE;
    Py_ssize_t dcid_length = p[start + 5], pos = start + 6 + dcid_length;
    if (dcid_length > 20 || pos >= size || p[pos] > 20) Py_RETURN_NONE;
    Py_ssize_t dcid_at = start + 6;
    pos += 1 + p[pos];
    int initial = packet_type == initial_type;
    uint64_t n;
    if (initial) { /* the token */
        if (varint(p, size, &pos, &n) < 0 || n > (uint64_t)(size - pos)) Py_RETURN_NONE;
        pos += (Py_ssize_t)n;
    }
    if (varint(p, size, &pos, &n) < 0 || n > (uint64_t)(size - pos)) Py_RETURN_NONE; /* the Length */
    return tuple_steal(5, (PyObject *[]){bytes_at(p + start + 1, 4), PyBool_FromLong(initial),
                                         bytes_at(p + dcid_at, dcid_length), PyLong_FromSsize_t(pos),
                                         PyLong_FromSsize_t(pos + (Py_ssize_t)n)});
}
