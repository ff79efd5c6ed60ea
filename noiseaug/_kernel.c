/*
 * The inner loop of noiseaug's 8-bit noise: out = clip(x + table[w], 0, 255).
 *
 * `table` maps 16 random bits to a rounded noise value k with exactly the
 * probability floor(P(k) * 2^16) / 2^16; the entries left over hold ESCAPE,
 * and those positions are returned to Python, which draws them exactly from
 * the residual distribution (see noise.py). Pure computation, no allocation
 * per sample; the same bits give the same result as the numpy fallback.
 *
 * add_table_noise(x, capsule, table, channels, noised, shared) -> (clipped, escapes)
 *   x        writable uint8 buffer, pixels * channels values (C order)
 *   capsule  a numpy BitGenerator's capsule: ceil(draws / 4) raw 64-bit words are
 *            taken from it, each giving four 16-bit draws (low bits first),
 *            exactly as bit_generator.random_raw(n).view("<u2") would
 *   table    int16 buffer of 65536 entries
 *   channels values per pixel in x; the first `noised` of them get noise
 *   shared   one noise value per pixel for all noised channels
 * Returns the number of clipped values and the escaped indices into w (as
 * bytes holding native Py_ssize_t values, in increasing order).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define ESCAPE INT16_MIN

/* Growable list of escaped indices, kept in C while the GIL is released. */
typedef struct {
    Py_ssize_t *items;
    Py_ssize_t len, cap;
    int failed;
} Escapes;

static void push(Escapes *e, Py_ssize_t j) {
    if (e->len == e->cap) {
        Py_ssize_t cap = e->cap ? 2 * e->cap : 256;
        Py_ssize_t *grown = realloc(e->items, (size_t)cap * sizeof(Py_ssize_t));
        if (grown == NULL) {
            e->failed = 1;
            return;
        }
        e->items = grown;
        e->cap = cap;
    }
    e->items[e->len++] = j;
}

/* (clipped, escaped indices as bytes of native Py_ssize_t), or NULL with an error set. */
static PyObject *outcome(long long clipped, const Escapes *esc) {
    if (esc->failed)
        return PyErr_NoMemory();
    PyObject *indices = PyBytes_FromStringAndSize((const char *)esc->items,
                                                  esc->len * (Py_ssize_t)sizeof(Py_ssize_t));
    return indices == NULL ? NULL : Py_BuildValue("LN", clipped, indices);
}

/* clip(x + k) without branches; `clipped` counts values that fell outside
 * [0, 255]. A macro on locals: through a pointer, every uint8_t store could
 * alias the counter and force a reload each iteration. */
#define ADD_CLIP(dst, k, clipped)                      \
    do {                                               \
        int v_ = (int)(dst) + (k);                     \
        (clipped) += (unsigned)v_ > 255u;              \
        v_ = v_ < 0 ? 0 : v_;                          \
        (dst) = (uint8_t)(v_ > 255 ? 255 : v_);        \
    } while (0)

/* numpy's bit generator interface (numpy/random/bitgen.h), reached through the
 * "BitGenerator" capsule of any numpy.random.BitGenerator. */
typedef struct {
    void *state;
    uint64_t (*next_uint64)(void *st);
    uint32_t (*next_uint32)(void *st);
    double (*next_double)(void *st);
    uint64_t (*next_raw)(void *st);
} bitgen_t;

/* Noise value j of the band: 16 bits of word j / 4, as random_raw(...).view("<u2") gives. */
#define DRAW(j) ((uint16_t)(words[(j) >> 2] >> (16 * ((j) & 3))))

static PyObject *add_table_noise(PyObject *self, PyObject *args) {
    Py_buffer xb, tb;
    PyObject *capsule;
    Py_ssize_t channels, noised;
    int shared;
    if (!PyArg_ParseTuple(args, "w*Oy*nnp", &xb, &capsule, &tb, &channels, &noised, &shared))
        return NULL;
    PyObject *result = NULL;
    Escapes esc = {NULL, 0, 0, 0};
    uint64_t *words = NULL;
    bitgen_t *bitgen = PyCapsule_GetPointer(capsule, "BitGenerator");
    if (bitgen == NULL)
        goto done;
    if (tb.len != 65536 * 2 || channels < 1 || noised < 1 || noised > channels ||
        xb.len % channels != 0) {
        PyErr_SetString(PyExc_ValueError, "add_table_noise: inconsistent buffer sizes");
        goto done;
    }
    Py_ssize_t pixels = xb.len / channels;
    Py_ssize_t draws = shared ? pixels : pixels * noised;
    int flat = !shared && noised == channels; /* every value noised: no need to buffer the words */
    if (!flat)
        words = malloc(((size_t)draws / 4 + 1) * sizeof(uint64_t));
    if (!flat && words == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint8_t *x = (uint8_t *)xb.buf;
    const int16_t *table = (const int16_t *)tb.buf;
    long long clipped = 0;
    Py_BEGIN_ALLOW_THREADS
    if (flat) { /* one loop, four draws per word */
        Py_ssize_t j = 0;
        for (; j + 4 <= draws; j += 4) {
            uint64_t word = bitgen->next_raw(bitgen->state);
            for (int s = 0; s < 4; s++) {
                int k = table[(uint16_t)(word >> (16 * s))];
                if (k == ESCAPE)
                    push(&esc, j + s);
                else
                    ADD_CLIP(x[j + s], k, clipped);
            }
        }
        if (j < draws) {
            uint64_t word = bitgen->next_raw(bitgen->state);
            for (int s = 0; j + s < draws; s++) {
                int k = table[(uint16_t)(word >> (16 * s))];
                if (k == ESCAPE)
                    push(&esc, j + s);
                else
                    ADD_CLIP(x[j + s], k, clipped);
            }
        }
    } else {
        for (Py_ssize_t i = 0; i < (draws + 3) / 4; i++)
            words[i] = bitgen->next_raw(bitgen->state);
        for (Py_ssize_t p = 0; p < pixels; p++) {
            uint8_t *px = x + p * channels;
            if (shared) {
                int k = table[DRAW(p)];
                if (k == ESCAPE) {
                    push(&esc, p);
                    continue;
                }
                for (Py_ssize_t c = 0; c < noised; c++)
                    ADD_CLIP(px[c], k, clipped);
            } else {
                for (Py_ssize_t c = 0; c < noised; c++) {
                    Py_ssize_t j = p * noised + c;
                    int k = table[DRAW(j)];
                    if (k == ESCAPE)
                        push(&esc, j);
                    else
                        ADD_CLIP(px[c], k, clipped);
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = outcome(clipped, &esc);
done:
    free(esc.items);
    free(words);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&tb);
    return result;
}

/* The same for 16-bit PCM: x is int16 (every value noised), the table holds
 * int32 values (noise up to ±65536 after lumping), INT32_MIN marks an escape. */
static PyObject *add_table_noise_i16(PyObject *self, PyObject *args) {
    Py_buffer xb, tb;
    PyObject *capsule;
    if (!PyArg_ParseTuple(args, "w*Oy*", &xb, &capsule, &tb))
        return NULL;
    PyObject *result = NULL;
    Escapes esc = {NULL, 0, 0, 0};
    bitgen_t *bitgen = PyCapsule_GetPointer(capsule, "BitGenerator");
    if (bitgen == NULL)
        goto done;
    if (tb.len != 65536 * 4 || xb.len % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "add_table_noise_i16: inconsistent buffer sizes");
        goto done;
    }
    int16_t *x = (int16_t *)xb.buf;
    const int32_t *table = (const int32_t *)tb.buf;
    Py_ssize_t draws = xb.len / 2;
    long long clipped = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < draws; j += 4) {
        uint64_t word = bitgen->next_raw(bitgen->state);
        for (int s = 0; s < 4 && j + s < draws; s++) {
            int32_t k = table[(uint16_t)(word >> (16 * s))];
            if (k == INT32_MIN) {
                push(&esc, j + s);
                continue;
            }
            int32_t v = (int32_t)x[j + s] + k;
            clipped += (v < -32768) | (v > 32767);
            v = v < -32768 ? -32768 : v;
            x[j + s] = (int16_t)(v > 32767 ? 32767 : v);
        }
    }
    Py_END_ALLOW_THREADS
    result = outcome(clipped, &esc);
done:
    free(esc.items);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&tb);
    return result;
}

static PyMethodDef methods[] = {
    {"add_table_noise", add_table_noise, METH_VARARGS,
     "add_table_noise(x, bitgen_capsule, table, channels, noised, shared) -> (clipped, escaped indices as bytes)"},
    {"add_table_noise_i16", add_table_noise_i16, METH_VARARGS,
     "add_table_noise_i16(x, bitgen_capsule, table) -> (clipped, escaped indices as bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel",
                                    "noiseaug's compiled 8-bit noise loop", -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
