/*
 * The inner loops of noiseaug's exact table noise (see noise.py):
 *   out = clip(x + k), k = round(sigma * Z) drawn from 16 random bits per value.
 *
 * `first` maps 16 random bits to a noise value k with exactly the
 * probability floor(P(k) * 2^16) / 2^16; its leftover entries hold ESCAPE
 * (the table type's minimum). An escaped value is drawn again, in increasing
 * order of position, from `second`, the table of the leftover law, with the
 * low 16 bits of one word of the `second` generator; what escapes `second`
 * too is drawn from `cdf`, the cumulative law of what is left over (over
 * `values`), with a 53-bit uniform from one word of the `last` generator.
 * The same bits give the same bytes as the numpy twin in noise.py (tested).
 *
 * Each 64-bit word gives four 16-bit draws, low bits first, as
 * bit_generator.random_raw(n).view("<u2") gives. A generator is a numpy
 * BitGenerator's capsule, or, for SFC64 (what noiseaug seeds), its state
 * (4 uint64 words, updated in place), stepped here exactly as numpy steps
 * it: inlined, that is three times cheaper than a call through the capsule.
 * With SFC64, on CPUs with AVX2, the per-channel 8-bit and the PCM loops take
 * sixteen draws at a time (vector add, clip count and saturating packs); escapes
 * still go one by one in increasing order, so the bytes are the same.
 *
 * add_table_noise(x, bits, first, escapes, channels, noised, shared[, coarse]) -> clipped
 *   x         writable uint8 buffer, pixels * channels values (C order)
 *   bits      the generator of the table draws
 *   first     int32 table of 65536 entries (int16 values)
 *   escapes   (second_bits, second, last_bits, cdf, values): the generators
 *             and tables of the escapes; second and values are int16, cdf float64
 *   channels  values per pixel in x; the first `noised` of them get noise
 *   shared    one noise value per pixel for all noised channels
 *   coarse    optional int32 table of 4096 entries: entry b holds the value of
 *             draws 16b .. 16b+15 when `first` gives them all one value, else
 *             SPLIT (the draw is looked up in `first`). A small image's call
 *             touches 16 KiB instead of 256 KiB at random: the full table,
 *             evicted by the codecs since the last file, cost a cache miss per
 *             draw (15 -> 7 ns a value on 3072 values). A long call, whose
 *             table is warm after its first draws, is faster without it (the
 *             extra load and branch: 1.6 -> 2.2 ns a value).
 * add_table_noise_i16(x, bits, first, escapes) -> clipped does the same for
 * int16 PCM (every value noised) with int32 tables.
 *
 * seed_state(entropy, n) -> bytes: numpy's SeedSequence, from its assembled
 * entropy words (little-endian uint32: the run entropy, padded to the pool
 * size when there is a spawn key, then the spawn key), mixed into a pool of
 * four words, then n uint32 words of generate_state (little-endian). About a
 * hundred times cheaper than building a SeedSequence per file; seeding.py
 * checks it against numpy's own once per process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1 /* compiled for AVX2 alone, used when the CPU has it */
#endif

static int use_avx2 = 0; /* set at import from the CPU; simd() switches it (tests) */


/* numpy's bit generator interface (numpy/random/bitgen.h), reached through the
 * "BitGenerator" capsule of any numpy.random.BitGenerator. */
typedef struct {
    void *state;
    uint64_t (*next_uint64)(void *st);
    uint32_t (*next_uint32)(void *st);
    double (*next_double)(void *st);
    uint64_t (*next_raw)(void *st);
} bitgen_t;

/* Where the random words come from: an SFC64 state stepped inline, or a capsule. */
typedef struct {
    uint64_t s[4];
    bitgen_t *gen; /* NULL: use s */
    Py_buffer view; /* the SFC64 state's buffer, written back at the end */
} Bits;

/* One step of numpy's SFC64 (numpy/random/src/sfc64/sfc64.h) on four lvalues, as an expression. */
#define SFC64_STEP(s0, s1, s2, s3, t)                                                        \
    (t = s0 + s1 + s3++, s0 = s1 ^ (s1 >> 11), s1 = s2 + (s2 << 3),                         \
     s2 = ((s2 << 24) | (s2 >> 40)) + t, t)

static inline uint64_t next_word(Bits *b) {
    uint64_t t;
    if (b->gen != NULL)
        return b->gen->next_raw(b->gen->state);
    return SFC64_STEP(b->s[0], b->s[1], b->s[2], b->s[3], t);
}

/* The hot loops keep the generator in locals (WORDS_FROM ... WORDS_BACK): through
 * a pointer, every uint8 store could alias the state and force it back to memory. */
#define WORDS_FROM(b)                                                     \
    bitgen_t *gen_ = (b)->gen;                                            \
    uint64_t s0_ = (b)->s[0], s1_ = (b)->s[1], s2_ = (b)->s[2], s3_ = (b)->s[3], t_
#define WORDS_BACK(b)                                                     \
    do {                                                                  \
        (b)->s[0] = s0_, (b)->s[1] = s1_, (b)->s[2] = s2_, (b)->s[3] = s3_; \
    } while (0)

/* Fills `b` from a capsule or an SFC64 state buffer; 0 on success, -1 with an error set. */
static int open_bits(PyObject *obj, Bits *b) {
    b->gen = NULL;
    b->view.obj = NULL;
    if (PyCapsule_CheckExact(obj)) {
        b->gen = PyCapsule_GetPointer(obj, "BitGenerator");
        return b->gen == NULL ? -1 : 0;
    }
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_WRITABLE) < 0)
        return -1;
    if (b->view.len != sizeof b->s) {
        PyErr_SetString(PyExc_ValueError, "an SFC64 state is 4 uint64 words");
        PyBuffer_Release(&b->view);
        b->view.obj = NULL;
        return -1;
    }
    memcpy(b->s, b->view.buf, sizeof b->s);
    return 0;
}

/* Writes an inline SFC64 state back to its buffer and lets go of it. */
static void close_bits(Bits *b) {
    if (b->view.obj == NULL)
        return;
    memcpy(b->view.buf, b->s, sizeof b->s);
    PyBuffer_Release(&b->view);
}

static inline int clip8(int v, long long *clipped) {
    *clipped += (unsigned)v > 255u;
    v = v < 0 ? 0 : v;
    return v > 255 ? 255 : v;
}

static inline int32_t clip16(int32_t v, long long *clipped) {
    *clipped += (v < -32768) | (v > 32767);
    v = v < -32768 ? -32768 : v;
    return v > 32767 ? 32767 : v;
}

/* Adds noise value k of draw j to its value(s) of x (uint8 layout); returns how many clipped. */
static inline long long apply8(uint8_t *x, Py_ssize_t j, int k, Py_ssize_t channels, Py_ssize_t noised,
                               int shared) {
    long long clipped = 0;
    if (shared) {
        uint8_t *px = x + j * channels;
        for (Py_ssize_t c = 0; c < noised; c++)
            px[c] = (uint8_t)clip8(px[c] + k, &clipped);
    } else {
        uint8_t *v = x + (j / noised) * channels + j % noised;
        *v = (uint8_t)clip8(*v + k, &clipped);
    }
    return clipped;
}

/* What the escapes of one call draw from (see the top of this file). */
typedef struct {
    Bits second_bits, last_bits;
    Py_buffer second, cdf, values;
    Py_ssize_t n; /* entries of cdf and values */
    int wide; /* int32 tables (PCM) rather than int16 (images) */
    int opened;
} Escapes;

/* Parses the escapes tuple; 0 on success, -1 with an error set (nothing left to release). */
static int open_escapes(PyObject *tuple, int wide, Escapes *e) {
    PyObject *second_obj, *last_obj;
    e->opened = 0;
    if (!PyArg_ParseTuple(tuple, "Oy*Oy*y*", &second_obj, &e->second, &last_obj, &e->cdf, &e->values))
        return -1;
    Py_ssize_t item = wide ? 4 : 2;
    e->wide = wide;
    e->n = e->cdf.len / (Py_ssize_t)sizeof(double);
    int ok = e->second.len == 65536 * item && e->n >= 1 && e->values.len == e->n * item;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "escape tables of inconsistent sizes");
    if (ok && open_bits(second_obj, &e->second_bits) == 0) {
        if (open_bits(last_obj, &e->last_bits) == 0) {
            e->opened = 1;
            return 0;
        }
        close_bits(&e->second_bits);
    }
    PyBuffer_Release(&e->second);
    PyBuffer_Release(&e->cdf);
    PyBuffer_Release(&e->values);
    return -1;
}

static void close_escapes(Escapes *e) {
    if (!e->opened)
        return;
    close_bits(&e->second_bits);
    close_bits(&e->last_bits);
    PyBuffer_Release(&e->second);
    PyBuffer_Release(&e->cdf);
    PyBuffer_Release(&e->values);
}

/* Opens a call's generator and escapes; on failure nothing is left open. */
static int open_generators(PyObject *bits_obj, PyObject *escapes_obj, int wide, Bits *bits, Escapes *esc) {
    if (open_bits(bits_obj, bits) < 0)
        return -1;
    if (open_escapes(escapes_obj, wide, esc) < 0) {
        close_bits(bits);
        return -1;
    }
    return 0;
}

/* Writes the generators' states back and lets go of their buffers. */
static void close_generators(Bits *bits, Escapes *esc) {
    close_escapes(esc);
    close_bits(bits);
}

#define COARSE_SHIFT 4
#define SPLIT INT32_MAX /* a coarse entry whose draws map to more than one value */

/* The first table's value of draw d, through the coarse table when there is one. */
static inline int32_t first_value(const int32_t *first, const int32_t *coarse, uint16_t d) {
    if (coarse == NULL)
        return first[d];
    int32_t c = coarse[d >> COARSE_SHIFT];
    return c != SPLIT ? c : first[d];
}

static inline int32_t table_at(const void *table, Py_ssize_t i, int wide) {
    return wide ? ((const int32_t *)table)[i] : ((const int16_t *)table)[i];
}

/* The noise value of one escaped draw: from the second table, else from the cdf. */
static int32_t escape_value(Escapes *e) {
    uint16_t i = (uint16_t)next_word(&e->second_bits);
    int32_t k = table_at(e->second.buf, i, e->wide);
    if (k != (e->wide ? INT32_MIN : INT16_MIN))
        return k;
    double u = (double)(next_word(&e->last_bits) >> 11) * (1.0 / 9007199254740992.0);
    const double *cdf = (const double *)e->cdf.buf;
    Py_ssize_t lo = 0, hi = e->n; /* the first entry above u, as searchsorted(side="right") */
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (cdf[mid] <= u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return table_at(e->values.buf, lo < e->n ? lo : e->n - 1, e->wide);
}

/* Draws table values start..draws-1 in order (start a multiple of 4): BODY(j, bits16)
 * runs once per draw j, NEXT gives the next word. */
#define FOR_EACH_DRAW(start, draws, NEXT, BODY)                           \
    do {                                                                  \
        Py_ssize_t j_ = (start);                                          \
        for (; j_ + 4 <= (draws); j_ += 4) {                              \
            uint64_t w_ = NEXT;                                           \
            BODY(j_, (uint16_t)w_);                                       \
            BODY(j_ + 1, (uint16_t)(w_ >> 16));                           \
            BODY(j_ + 2, (uint16_t)(w_ >> 32));                           \
            BODY(j_ + 3, (uint16_t)(w_ >> 48));                           \
        }                                                                 \
        if (j_ < (draws)) {                                               \
            uint64_t w_ = NEXT;                                           \
            for (int q_ = 0; j_ + q_ < (draws); q_++)                     \
                BODY(j_ + q_, (uint16_t)(w_ >> (16 * q_)));               \
        }                                                                 \
    } while (0)

/* FOR_EACH_DRAW from the generator of WORDS_FROM, one loop per kind of generator. */
#define DRAW_ALL(start, draws, BODY)                                                    \
    do {                                                                                \
        if (gen_ == NULL)                                                               \
            FOR_EACH_DRAW(start, draws, SFC64_STEP(s0_, s1_, s2_, s3_, t_), BODY);       \
        else                                                                            \
            FOR_EACH_DRAW(start, draws, gen_->next_raw(gen_->state), BODY);             \
    } while (0)

#ifdef HAVE_AVX2_PATH
/* The table values of the eight 16-bit draws of words wa and wb, in order. (Eight
 * scalar loads beat a gather instruction by a third on the AMD EPYC measured.) */
#define LOOK(d) first_value(first, coarse, (uint16_t)(d))
#define LOOKUP8(wa, wb)                                                                            \
    _mm256_setr_epi32(LOOK(wa), LOOK((wa) >> 16), LOOK((wa) >> 32), LOOK((wa) >> 48), LOOK(wb),      \
                      LOOK((wb) >> 16), LOOK((wb) >> 32), LOOK((wb) >> 48))
#define LANES(mask) ((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(mask)))

/* The table values of the next sixteen draws (four SFC64 words, on the locals of
 * WORDS_FROM; tables `first` and `coarse` in scope) in k0 (draws 0-7) and k1
 * (8-15), 0 where the table says `mark`; `escaped` gets one bit per escaped draw. */
#define SIXTEEN_VALUES(mark, k0, k1, escaped)                                             \
    do {                                                                                  \
        uint64_t w0_ = SFC64_STEP(s0_, s1_, s2_, s3_, t_), w1_ = SFC64_STEP(s0_, s1_, s2_, s3_, t_); \
        uint64_t w2_ = SFC64_STEP(s0_, s1_, s2_, s3_, t_), w3_ = SFC64_STEP(s0_, s1_, s2_, s3_, t_); \
        __m256i raw0_ = LOOKUP8(w0_, w1_), raw1_ = LOOKUP8(w2_, w3_);                      \
        __m256i e0_ = _mm256_cmpeq_epi32(raw0_, mark), e1_ = _mm256_cmpeq_epi32(raw1_, mark); \
        k0 = _mm256_andnot_si256(e0_, raw0_);                                             \
        k1 = _mm256_andnot_si256(e1_, raw1_);                                             \
        escaped = LANES(e0_) | (LANES(e1_) << 8);                                         \
    } while (0)

/* Runs APPLY(i) for the value i of each escaped draw of the group at j, in increasing order. */
#define EACH_ESCAPE(escaped, j, APPLY)                                                    \
    do {                                                                                  \
        for (unsigned m_ = (escaped); m_; m_ &= m_ - 1) {                                 \
            Py_ssize_t i_ = (j) + __builtin_ctz(m_);                                      \
            APPLY(i_);                                                                    \
        }                                                                                 \
    } while (0)

/* How many of the sixteen sums in v0, v1 lie outside [lo, hi]. */
__attribute__((target("avx2"))) static inline int outside(__m256i v0, __m256i v1, __m256i lo, __m256i hi) {
    __m256i c0 = _mm256_or_si256(_mm256_cmpgt_epi32(v0, hi), _mm256_cmpgt_epi32(lo, v0));
    __m256i c1 = _mm256_or_si256(_mm256_cmpgt_epi32(v1, hi), _mm256_cmpgt_epi32(lo, v1));
    return __builtin_popcount(LANES(c0) | (LANES(c1) << 8));
}

/* FLAT8 for SFC64, sixteen draws (four words) at a time, as long as whole groups
 * remain; returns the draws done. Escaped lanes get 0 here, then their values in
 * increasing order, as the scalar loop gives them. */
__attribute__((target("avx2"))) static Py_ssize_t flat8_avx2(uint8_t *x, const int32_t *first,
                                                             const int32_t *coarse, Py_ssize_t draws,
                                                             uint64_t st[4], Escapes *esc,
                                                             long long *clipped_out) {
    uint64_t s0_ = st[0], s1_ = st[1], s2_ = st[2], s3_ = st[3], t_;
    long long clipped = 0;
    const __m256i mark = _mm256_set1_epi32(INT16_MIN), lo = _mm256_setzero_si256(), hi = _mm256_set1_epi32(255);
    Py_ssize_t j = 0;
    for (; j + 16 <= draws; j += 16) {
        __m256i k0, k1;
        unsigned escaped;
        SIXTEEN_VALUES(mark, k0, k1, escaped);
        __m128i xv = _mm_loadu_si128((const __m128i *)(x + j));
        __m256i v0 = _mm256_add_epi32(_mm256_cvtepu8_epi32(xv), k0);
        __m256i v1 = _mm256_add_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(xv, 8)), k1);
        clipped += outside(v0, v1, lo, hi);
        /* saturating packs clamp to [0, 255] exactly; the permute undoes packus' lane interleave */
        __m256i words16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(v0, v1), 0xD8);
        _mm_storeu_si128((__m128i *)(x + j), _mm_packus_epi16(_mm256_castsi256_si128(words16),
                                                              _mm256_extracti128_si256(words16, 1)));
#define ESCAPED8(i) x[i] = (uint8_t)clip8(x[i] + escape_value(esc), &clipped)
        EACH_ESCAPE(escaped, j, ESCAPED8);
    }
    st[0] = s0_, st[1] = s1_, st[2] = s2_, st[3] = s3_;
    *clipped_out += clipped;
    return j;
}

/* VALUE16 likewise for int16 PCM (int32 tables, INT32_MIN marks an escape). */
__attribute__((target("avx2"))) static Py_ssize_t pcm16_avx2(int16_t *x, const int32_t *first,
                                                             Py_ssize_t draws, uint64_t st[4], Escapes *esc,
                                                             long long *clipped_out) {
    uint64_t s0_ = st[0], s1_ = st[1], s2_ = st[2], s3_ = st[3], t_;
    const int32_t *coarse = NULL; /* the full table: PCM calls are long, and warm after their first block */
    long long clipped = 0;
    const __m256i mark = _mm256_set1_epi32(INT32_MIN), lo = _mm256_set1_epi32(-32768),
                  hi = _mm256_set1_epi32(32767);
    Py_ssize_t j = 0;
    for (; j + 16 <= draws; j += 16) {
        __m256i k0, k1;
        unsigned escaped;
        SIXTEEN_VALUES(mark, k0, k1, escaped);
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + j));
        __m256i v0 = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(xv)), k0);
        __m256i v1 = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(xv, 1)), k1);
        clipped += outside(v0, v1, lo, hi);
        /* a signed saturating pack clamps to [-32768, 32767] exactly */
        _mm256_storeu_si256((__m256i *)(x + j), _mm256_permute4x64_epi64(_mm256_packs_epi32(v0, v1), 0xD8));
#define ESCAPED16(i) x[i] = (int16_t)clip16((int32_t)x[i] + escape_value(esc), &clipped)
        EACH_ESCAPE(escaped, j, ESCAPED16);
    }
    st[0] = s0_, st[1] = s1_, st[2] = s2_, st[3] = s3_;
    *clipped_out += clipped;
    return j;
}
#endif

static PyObject *add_table_noise(PyObject *self, PyObject *args) {
    Py_buffer xb, tb, cb = {0};
    PyObject *bits_obj, *escapes_obj;
    Py_ssize_t channels, noised;
    int shared;
    if (!PyArg_ParseTuple(args, "w*Oy*O!nnp|y*", &xb, &bits_obj, &tb, &PyTuple_Type, &escapes_obj, &channels,
                          &noised, &shared, &cb))
        return NULL;
    PyObject *result = NULL;
    Bits bits;
    Escapes esc;
    if (tb.len != 65536 * 4 || channels < 1 || noised < 1 || noised > channels || xb.len % channels != 0 ||
        (cb.obj != NULL && cb.len != (65536 >> COARSE_SHIFT) * 4)) {
        PyErr_SetString(PyExc_ValueError, "add_table_noise: inconsistent buffer sizes");
        goto release;
    }
    if (open_generators(bits_obj, escapes_obj, 0, &bits, &esc) < 0)
        goto release;
    uint8_t *x = (uint8_t *)xb.buf;
    const int32_t *first = (const int32_t *)tb.buf;
    const int32_t *coarse = cb.obj != NULL ? (const int32_t *)cb.buf : NULL;
    Py_ssize_t pixels = xb.len / channels;
    Py_ssize_t draws = shared ? pixels : pixels * noised;
    int flat = !shared && noised == channels; /* draw j noises value j */
    long long clipped = 0;
    Py_ssize_t done = 0;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (use_avx2 && flat && bits.gen == NULL)
        done = flat8_avx2(x, first, coarse, draws, bits.s, &esc, &clipped);
#endif
#define FLAT8(j, d)                                                           \
    do {                                                                      \
        int k_ = first_value(first, coarse, d);                               \
        if (k_ == INT16_MIN)                                                  \
            k_ = escape_value(&esc);                                          \
        x[j] = (uint8_t)clip8(x[j] + k_, &clipped);                           \
    } while (0)
#define PIXEL8(j, d)                                                          \
    do {                                                                      \
        int k_ = first_value(first, coarse, d);                               \
        if (k_ == INT16_MIN)                                                  \
            k_ = escape_value(&esc);                                          \
        clipped += apply8(x, (j), k_, channels, noised, shared);              \
    } while (0)
    WORDS_FROM(&bits);
    if (flat)
        DRAW_ALL(done, draws, FLAT8);
    else
        DRAW_ALL(0, draws, PIXEL8);
    WORDS_BACK(&bits);
    Py_END_ALLOW_THREADS
    close_generators(&bits, &esc);
    result = PyLong_FromLongLong(clipped);
release:
    PyBuffer_Release(&xb);
    PyBuffer_Release(&tb);
    if (cb.obj != NULL)
        PyBuffer_Release(&cb);
    return result;
}

static PyObject *add_table_noise_i16(PyObject *self, PyObject *args) {
    Py_buffer xb, tb;
    PyObject *bits_obj, *escapes_obj;
    if (!PyArg_ParseTuple(args, "w*Oy*O!", &xb, &bits_obj, &tb, &PyTuple_Type, &escapes_obj))
        return NULL;
    PyObject *result = NULL;
    Bits bits;
    Escapes esc;
    if (tb.len != 65536 * 4 || xb.len % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "add_table_noise_i16: inconsistent buffer sizes");
        goto release;
    }
    if (open_generators(bits_obj, escapes_obj, 1, &bits, &esc) < 0)
        goto release;
    int16_t *x = (int16_t *)xb.buf;
    const int32_t *first = (const int32_t *)tb.buf;
    Py_ssize_t draws = xb.len / 2;
    long long clipped = 0;
    Py_ssize_t done = 0;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (use_avx2 && bits.gen == NULL)
        done = pcm16_avx2(x, first, draws, bits.s, &esc, &clipped);
#endif
#define VALUE16(j, d)                                                       \
    do {                                                                    \
        int32_t k_ = first[d];                                              \
        if (k_ == INT32_MIN)                                                \
            k_ = escape_value(&esc);                                        \
        x[j] = (int16_t)clip16((int32_t)x[j] + k_, &clipped);               \
    } while (0)
    WORDS_FROM(&bits);
    DRAW_ALL(done, draws, VALUE16);
    WORDS_BACK(&bits);
    Py_END_ALLOW_THREADS
    close_generators(&bits, &esc);
    result = PyLong_FromLongLong(clipped);
release:
    PyBuffer_Release(&xb);
    PyBuffer_Release(&tb);
    return result;
}

/* ---------------------------------------------------------------- SeedSequence (numpy/random/bit_generator.pyx) */

#define SS_POOL 4
#define SS_INIT_A 0x43b0d7e5u
#define SS_MULT_A 0x931e8875u
#define SS_INIT_B 0x8b51f9ddu
#define SS_MULT_B 0x58f38dedu
#define SS_MIX_L 0xca01f9ddu
#define SS_MIX_R 0x4973f715u

static uint32_t ss_hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= SS_MULT_A;
    value *= *hash_const;
    return value ^ (value >> 16);
}

static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t result = SS_MIX_L * x - SS_MIX_R * y;
    return result ^ (result >> 16);
}

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Mixes assembled entropy (little-endian uint32 words) into SeedSequence's pool. */
static void ss_pool(const unsigned char *entropy, Py_ssize_t n_entropy, uint32_t pool[SS_POOL]) {
    uint32_t hash_const = SS_INIT_A;
    for (int i = 0; i < SS_POOL; i++)
        pool[i] = ss_hashmix(i < n_entropy ? load_le32(entropy + 4 * i) : 0, &hash_const);
    for (int src = 0; src < SS_POOL; src++)
        for (int dst = 0; dst < SS_POOL; dst++)
            if (src != dst)
                pool[dst] = ss_mix(pool[dst], ss_hashmix(pool[src], &hash_const));
    for (Py_ssize_t src = SS_POOL; src < n_entropy; src++)
        for (int dst = 0; dst < SS_POOL; dst++)
            pool[dst] = ss_mix(pool[dst], ss_hashmix(load_le32(entropy + 4 * src), &hash_const));
}

/* Word i of SeedSequence.generate_state, given the pool (call with i = 0, 1, 2 ... in turn). */
static uint32_t ss_word(const uint32_t pool[SS_POOL], Py_ssize_t i, uint32_t *gen_const) {
    uint32_t value = pool[i % SS_POOL] ^ *gen_const;
    *gen_const *= SS_MULT_B;
    value *= *gen_const;
    return value ^ (value >> 16);
}

static PyObject *seed_state(PyObject *self, PyObject *args) {
    Py_buffer eb;
    Py_ssize_t n_words;
    if (!PyArg_ParseTuple(args, "y*n", &eb, &n_words))
        return NULL;
    if (eb.len % 4 != 0 || n_words < 0 || n_words > (1 << 20)) {
        PyBuffer_Release(&eb);
        PyErr_SetString(PyExc_ValueError, "seed_state: entropy must be whole uint32 words, n within 0 .. 2**20");
        return NULL;
    }
    uint32_t pool[SS_POOL];
    ss_pool((const unsigned char *)eb.buf, eb.len / 4, pool);
    PyBuffer_Release(&eb);
    PyObject *out = PyBytes_FromStringAndSize(NULL, 4 * n_words);
    if (out == NULL)
        return NULL;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    uint32_t gen_const = SS_INIT_B;
    for (Py_ssize_t i = 0; i < n_words; i++) {
        uint32_t value = ss_word(pool, i, &gen_const);
        dst[4 * i] = (unsigned char)value;
        dst[4 * i + 1] = (unsigned char)(value >> 8);
        dst[4 * i + 2] = (unsigned char)(value >> 16);
        dst[4 * i + 3] = (unsigned char)(value >> 24);
    }
    return out;
}

/* sfc64_state(entropy) -> bytearray of 4 uint64 words: the state of numpy's SFC64 seeded from the
 * SeedSequence with this assembled entropy (generate_state(3, uint64) as a, b, c, counter 1, then
 * 12 steps: sfc64_set_seed), ready for the table loops, which step it inline. */
static PyObject *sfc64_state(PyObject *self, PyObject *args) {
    Py_buffer eb;
    if (!PyArg_ParseTuple(args, "y*", &eb))
        return NULL;
    if (eb.len % 4 != 0) {
        PyBuffer_Release(&eb);
        PyErr_SetString(PyExc_ValueError, "sfc64_state: entropy must be whole uint32 words");
        return NULL;
    }
    uint32_t pool[SS_POOL], gen_const = SS_INIT_B, w[6];
    ss_pool((const unsigned char *)eb.buf, eb.len / 4, pool);
    PyBuffer_Release(&eb);
    for (int i = 0; i < 6; i++)
        w[i] = ss_word(pool, i, &gen_const);
    uint64_t s[4] = {w[0] | (uint64_t)w[1] << 32, w[2] | (uint64_t)w[3] << 32, w[4] | (uint64_t)w[5] << 32, 1}, t;
    for (int i = 0; i < 12; i++)
        (void)SFC64_STEP(s[0], s[1], s[2], s[3], t);
    unsigned char bytes[32];
    for (int i = 0; i < 32; i++)
        bytes[i] = (unsigned char)(s[i / 8] >> (8 * (i % 8)));
    return PyByteArray_FromStringAndSize((const char *)bytes, 32);
}

/* simd([enabled]) -> whether the AVX2 loops run; switches them on or off (for tests). */
static PyObject *simd(PyObject *self, PyObject *args) {
    int enabled = -1;
    if (!PyArg_ParseTuple(args, "|p", &enabled))
        return NULL;
#ifdef HAVE_AVX2_PATH
    if (enabled == 1 && !__builtin_cpu_supports("avx2")) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no AVX2");
        return NULL;
    }
#else
    if (enabled == 1) {
        PyErr_SetString(PyExc_RuntimeError, "built without the AVX2 loops");
        return NULL;
    }
#endif
    if (enabled != -1)
        use_avx2 = enabled;
    return PyBool_FromLong(use_avx2);
}

static PyMethodDef methods[] = {
    {"simd", simd, METH_VARARGS, "simd([enabled]) -> whether the AVX2 loops are used"},
    {"add_table_noise", add_table_noise, METH_VARARGS,
     "add_table_noise(x, bits, first, escapes, channels, noised, shared[, coarse]) -> clipped"},
    {"add_table_noise_i16", add_table_noise_i16, METH_VARARGS,
     "add_table_noise_i16(x, bits, first, escapes) -> clipped"},
    {"seed_state", seed_state, METH_VARARGS, "seed_state(entropy, n) -> n uint32 words of numpy's SeedSequence"},
    {"sfc64_state", sfc64_state, METH_VARARGS, "sfc64_state(entropy) -> the seeded SFC64 state, 4 uint64 words"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel",
                                    "noiseaug's compiled table-noise loops", -1, methods};

/* The calling convention above; noise.py ignores a build left over from another one. */
#define KERNEL_VERSION 5

PyMODINIT_FUNC PyInit__kernel(void) {
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", KERNEL_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
