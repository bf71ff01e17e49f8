/* resumelog._native: optional compiled kernels of the fold and of layer encoding.
 *
 * Built by hatch_build.py when a C compiler and the Python headers are present (never
 * required: without this module every caller takes its pure-Python or NumPy code, with
 * the same result). Each function here is the C loop of one Python expression named in
 * its docstring and in the caller; property_tests/test_native.py checks each against
 * that expression on random inputs, and CI runs the fold's tests with and without it.
 *
 * Two tables are types here (SourceIndex, SourceMap): a dict's behaviour for the fold's
 * tables of ~10^6 source ids, whose batch lookups and inserts prefetch their memory
 * reads; test_native.py checks each against a dict, operation by operation.
 *
 * Nothing here decides a fold rule: these are bookkeeping loops (grouping, shape keys,
 * block hashing) whose result the Python code would compute the same way.
 */
#define PY_SSIZE_T_CLEAN
#ifndef RESUMELOG_NATIVE_SOURCE
#define RESUMELOG_NATIVE_SOURCE ""
#endif
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* How many lookups ahead the batch loops prefetch a slot (and each later read), and the loops
 * that read objects or spans in no order in memory the one they will read then: enough
 * to cover a miss to memory, few enough to stay in the cache. */
#define PREFETCH_AHEAD 8

/* ------------------------------------------------------------------ CRC-32C */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc32c_of(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 8) { /* slicing by 8 */
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
            crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}


static void put_u32(unsigned char *out, uint32_t v) {
    out[0] = (unsigned char)v;
    out[1] = (unsigned char)(v >> 8);
    out[2] = (unsigned char)(v >> 16);
    out[3] = (unsigned char)(v >> 24);
}

PyDoc_STRVAR(crc32c_doc, "crc32c(data: bytes) -> int\n\nThe CRC-32C (Castagnoli) of ``data``.");

static PyObject *py_crc32c(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t c = crc32c_of((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(c);
}

/* Sort ``keyed`` (each ``hash << 32 | index``, in index order) by hash, stably: an LSD
 * radix sort of the upper 32 bits in three 11-bit digits (a block's few thousand ids:
 * counting beats comparing), a digit every key shares skipped. -1 (a MemoryError set)
 * if out of memory. The result is ``keyed`` sorted by its whole 64-bit values. */
static int sort_by_hash(uint64_t *keyed, Py_ssize_t n) {
    enum { BITS = 11, BUCKETS = 1 << BITS };
    if (n < 2) return 0;
    uint64_t *tmp = PyMem_Malloc(sizeof(uint64_t) * (size_t)n);
    size_t *count = PyMem_Malloc(sizeof(size_t) * BUCKETS);
    if (tmp == NULL || count == NULL) {
        PyMem_Free(tmp);
        PyMem_Free(count);
        PyErr_NoMemory();
        return -1;
    }
    uint64_t *from = keyed, *to = tmp;
    for (int shift = 32; shift < 64; shift += BITS) {
        memset(count, 0, sizeof(size_t) * BUCKETS);
        for (Py_ssize_t j = 0; j < n; j++) count[(from[j] >> shift) & (BUCKETS - 1)]++;
        if (count[(from[0] >> shift) & (BUCKETS - 1)] == (size_t)n) continue; /* every key has this digit */
        size_t total = 0;
        for (int b = 0; b < BUCKETS; b++) {
            size_t here = count[b];
            count[b] = total;
            total += here;
        }
        for (Py_ssize_t j = 0; j < n; j++) to[count[(from[j] >> shift) & (BUCKETS - 1)]++] = from[j];
        uint64_t *t = from;
        from = to;
        to = t;
    }
    if (from != keyed) memcpy(keyed, from, sizeof(uint64_t) * (size_t)n);
    PyMem_Free(tmp);
    PyMem_Free(count);
    return 0;
}

PyDoc_STRVAR(
    hash_order_doc,
    "hash_order(ids: list[bytes]) -> tuple[list[int], bytes, bytes, bytes] | None\n\n"
    "A layer block's arrays (layers.LayerWriter._cut): ``order`` =\n"
    "``sorted(range(n), key=hashes.__getitem__)`` of the ids' CRC-32C hashes (stable),\n"
    "the hashes in that order as little-endian uint32, the ids joined in that order,\n"
    "and their n + 1 offsets as little-endian uint32; ``None`` if the ids' total length\n"
    "does not fit 32 bits.");

static PyObject *hash_order(PyObject *self, PyObject *ids) {
    if (!PyList_Check(ids)) {
        PyErr_SetString(PyExc_TypeError, "hash_order: a list of bytes expected");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(ids);
    uint64_t *keyed = PyMem_Malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    if (keyed == NULL) return PyErr_NoMemory();
    PyObject *order = NULL, *hashes = NULL, *blob = NULL, *offsets = NULL;
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(ids, i);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "hash_order: a list of bytes expected");
            goto fail;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(b);
        total += (uint64_t)len;
        keyed[i] = (uint64_t)crc32c_of((const unsigned char *)PyBytes_AS_STRING(b), len) << 32 | (uint64_t)i;
    }
    if (total > 0xFFFFFFFFu) {
        PyMem_Free(keyed);
        Py_RETURN_NONE;
    }
    if (sort_by_hash(keyed, n) < 0) goto fail; /* (hash, index): a stable order */
    order = PyList_New(n);
    hashes = PyBytes_FromStringAndSize(NULL, 4 * n);
    blob = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    offsets = PyBytes_FromStringAndSize(NULL, 4 * (n + 1));
    if (order == NULL || hashes == NULL || blob == NULL || offsets == NULL) goto fail;
    unsigned char *h = (unsigned char *)PyBytes_AS_STRING(hashes);
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(offsets);
    char *dst = PyBytes_AS_STRING(blob);
    uint32_t at = 0;
    put_u32(o, 0);
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = (Py_ssize_t)(keyed[k] & 0xFFFFFFFFu);
        PyObject *idx = PyLong_FromSsize_t(i);
        if (idx == NULL) goto fail;
        PyList_SET_ITEM(order, k, idx);
        put_u32(h + 4 * k, (uint32_t)(keyed[k] >> 32));
        PyObject *b = PyList_GET_ITEM(ids, i);
        Py_ssize_t len = PyBytes_GET_SIZE(b);
        memcpy(dst + at, PyBytes_AS_STRING(b), (size_t)len);
        at += (uint32_t)len;
        put_u32(o + 4 * (k + 1), at);
    }
    PyMem_Free(keyed);
    return Py_BuildValue("(NNNN)", order, hashes, blob, offsets);
fail:
    PyMem_Free(keyed);
    Py_XDECREF(order);
    Py_XDECREF(hashes);
    Py_XDECREF(blob);
    Py_XDECREF(offsets);
    return NULL;
}

/* ------------------------------------------------------------------ batch decoding */

/* A msgpack reader over one frame: each rd_* reads one value of one type and returns
 * 1, or 0 if the next value is not of that type, not complete, or out of the range
 * kept (the caller then returns None: msgspec decodes the frame and raises its error). */
typedef struct {
    const unsigned char *p, *end;
} Reader;

static int rd_need(Reader *r, size_t n) { return (size_t)(r->end - r->p) >= n; }

static uint64_t rd_be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

static int rd_array(Reader *r, Py_ssize_t *n) {
    if (!rd_need(r, 1)) return 0;
    unsigned char c = *r->p;
    int w = c == 0xdc ? 2 : c == 0xdd ? 4 : 0;
    if ((c & 0xf0) == 0x90) {
        *n = c & 0x0f;
        r->p++;
        return 1;
    }
    if (!w || !rd_need(r, 1 + (size_t)w)) return 0;
    *n = (Py_ssize_t)rd_be(r->p + 1, w);
    r->p += 1 + w;
    return 1;
}

static int rd_int64(Reader *r, int64_t *v) {
    if (!rd_need(r, 1)) return 0;
    unsigned char c = *r->p;
    if (c <= 0x7f || c >= 0xe0) { /* positive and negative fixint */
        *v = (int8_t)c;
        r->p++;
        return 1;
    }
    int w = 0, sign = 0;
    switch (c) {
    case 0xcc: w = 1; break;
    case 0xcd: w = 2; break;
    case 0xce: w = 4; break;
    case 0xcf: w = 8; break;
    case 0xd0: w = 1, sign = 1; break;
    case 0xd1: w = 2, sign = 1; break;
    case 0xd2: w = 4, sign = 1; break;
    case 0xd3: w = 8, sign = 1; break;
    default: return 0;
    }
    if (!rd_need(r, 1 + (size_t)w)) return 0;
    uint64_t u = rd_be(r->p + 1, w);
    if (sign) {
        int shift = 64 - 8 * w; /* sign-extend the w-byte two's complement */
        *v = shift ? (int64_t)(u << shift) >> shift : (int64_t)u;
    } else {
        if (u > (uint64_t)INT64_MAX) return 0; /* (msgspec gives a Python int: the Python lines) */
        *v = (int64_t)u;
    }
    r->p += 1 + w;
    return 1;
}

static int rd_sized(Reader *r, unsigned char fix_tag, unsigned char fix_mask, unsigned char t8, const char **d,
                    size_t *len) {
    if (!rd_need(r, 1)) return 0;
    unsigned char c = *r->p;
    int w = 0;
    if (fix_mask && (c & (unsigned char)~fix_mask) == fix_tag) {
        *len = c & fix_mask;
    } else if (c == t8 || c == t8 + 1 || c == t8 + 2) {
        w = 1 << (c - t8);
        if (!rd_need(r, 1 + (size_t)w)) return 0;
        *len = (size_t)rd_be(r->p + 1, w);
    } else {
        return 0;
    }
    r->p += 1 + w;
    if (!rd_need(r, *len)) return 0;
    *d = (const char *)r->p;
    r->p += *len;
    return 1;
}

/* a str (fixstr, str 8/16/32) and a bin (bin 8/16/32) */
static int rd_str(Reader *r, const char **d, size_t *len) { return rd_sized(r, 0xa0, 0x1f, 0xd9, d, len); }
static int rd_bin(Reader *r, const char **d, size_t *len) { return rd_sized(r, 0, 0, 0xc4, d, len); }

static int all_ascii(const char *d, size_t n) {
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, d + i, 8);
        acc |= w;
    }
    for (; i < n; i++) acc |= (unsigned char)d[i];
    return (acc & 0x8080808080808080ull) == 0;
}

PyDoc_STRVAR(
    decode_batch_doc,
    "decode_batch(frame) -> tuple[list[str], bytes, bytes, bytes, bytes, bytes] | None\n\n"
    "A record batch frame (format.Batch, as msgpack) decoded into columns: its sources,\n"
    "each record's source index as native int64, its keys as one blob of bytes and each\n"
    "key's end in it as native int64, its deltas as native int64, its flags; or ``None``\n"
    "where msgspec's decoding must decide (anything but a well-formed batch with ASCII\n"
    "keys, 64-bit deltas, source indexes in range, columns of one length and no resets;\n"
    "then decode_segment decodes it with msgspec and raises msgspec's error if any). Where\n"
    "it decodes, the columns are those of msgspec's Batch.");

static PyObject *decode_batch(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Reader r = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
    PyObject *sources = NULL, *index = NULL, *blob = NULL, *ends = NULL, *deltas = NULL, *flags = NULL;
    PyObject *out = NULL;
    Py_ssize_t fields, ns, n, nk, nd, nr;
    const char *d;
    size_t len;
    if (!rd_array(&r, &fields) || (fields != 5 && fields != 6) || !rd_array(&r, &ns)) goto none;
    if ((size_t)ns > (size_t)(r.end - r.p)) goto none; /* (each item takes a byte at least) */
    sources = PyList_New(ns);
    if (sources == NULL) goto fail;
    for (Py_ssize_t i = 0; i < ns; i++) {
        if (!rd_str(&r, &d, &len)) goto none;
        PyObject *s;
        if (all_ascii(d, len)) {
            s = PyUnicode_New((Py_ssize_t)len, 127);
            if (s == NULL) goto fail;
            memcpy(PyUnicode_DATA(s), d, len);
        } else {
            s = PyUnicode_DecodeUTF8(d, (Py_ssize_t)len, "strict");
            if (s == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) goto fail;
                PyErr_Clear();
                goto none;
            }
        }
        PyList_SET_ITEM(sources, i, s);
    }
    if (!rd_array(&r, &n) || (size_t)n > (size_t)(r.end - r.p)) goto none;
    index = PyBytes_FromStringAndSize(NULL, 8 * n);
    if (index == NULL) goto fail;
    int64_t *ix = (int64_t *)PyBytes_AS_STRING(index);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!rd_int64(&r, &ix[i]) || ix[i] < 0 || ix[i] >= ns) goto none;
    if (!rd_array(&r, &nk) || nk != n) goto none;
    ends = PyBytes_FromStringAndSize(NULL, 8 * n);
    blob = PyBytes_FromStringAndSize(NULL, r.end - r.p); /* (the keys take less: cut below) */
    if (ends == NULL || blob == NULL) goto fail;
    int64_t *e = (int64_t *)PyBytes_AS_STRING(ends);
    char *w = PyBytes_AS_STRING(blob);
    int64_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!rd_str(&r, &d, &len) || !all_ascii(d, len)) goto none;
        memcpy(w + at, d, len);
        at += (int64_t)len;
        e[i] = at;
    }
    if (_PyBytes_Resize(&blob, (Py_ssize_t)at) < 0) goto fail;
    if (!rd_array(&r, &nd) || nd != n) goto none;
    deltas = PyBytes_FromStringAndSize(NULL, 8 * n);
    if (deltas == NULL) goto fail;
    int64_t *dl = (int64_t *)PyBytes_AS_STRING(deltas);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!rd_int64(&r, &dl[i])) goto none;
    if (!rd_bin(&r, &d, &len) || len != (size_t)n) goto none;
    flags = PyBytes_FromStringAndSize(d, (Py_ssize_t)len);
    if (flags == NULL) goto fail;
    if (fields == 6 && (!rd_array(&r, &nr) || nr != 0)) goto none; /* (resets: msgspec's) */
    if (r.p != r.end) goto none;
    out = Py_BuildValue("(NNNNNN)", sources, index, blob, ends, deltas, flags);
    PyBuffer_Release(&view);
    return out;
none:
    out = Py_None;
    Py_INCREF(out);
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(sources); /* (a list's unset items are NULL: safe to release) */
    Py_XDECREF(index);
    Py_XDECREF(blob);
    Py_XDECREF(ends);
    Py_XDECREF(deltas);
    Py_XDECREF(flags);
    return out;
}

/* ``obj``'s buffer as native int64 in *view, their number in *n: 0, or -1 with an error
 * (``message`` if its size is not a multiple of 8; nothing held) */
static int int64_view(PyObject *obj, Py_buffer *view, Py_ssize_t *n, const char *message) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    if (view->len % 8) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, message);
        return -1;
    }
    *n = view->len / 8;
    return 0;
}

/* The spans of a blob of keys and their ends (native int64, ascending, within the blob):
 * key i is blob[ends[i - 1]:ends[i]] (ends[-1] = 0). */
typedef struct {
    Py_buffer blob, ends;
    const char *data;
    const int64_t *end;
    Py_ssize_t n;
} Spans;

static void spans_release(Spans *s) {
    if (s->blob.obj != NULL) PyBuffer_Release(&s->blob);
    if (s->ends.obj != NULL) PyBuffer_Release(&s->ends);
}

static inline int64_t span_start(const Spans *s, Py_ssize_t i) { return i ? s->end[i - 1] : 0; }

/* 0, or -1 with an error if keys a..b-1 of s are not spans of its blob */
static int spans_check(const Spans *s, Py_ssize_t a, Py_ssize_t b) {
    int64_t prev = span_start(s, a);
    int ok = prev >= 0;
    for (Py_ssize_t i = a; ok && i < b; i++) {
        ok = s->end[i] >= prev && s->end[i] <= s->blob.len;
        prev = s->end[i];
    }
    if (!ok) PyErr_SetString(PyExc_ValueError, "key spans: ends not ascending within the blob");
    return ok ? 0 : -1;
}

/* 0, or -1 with an error if blob and ends are not spans (keys 0..check-1 checked) */
static int spans_get(PyObject *blob, PyObject *ends, Spans *s, Py_ssize_t check) {
    memset(s, 0, sizeof(*s));
    if (PyObject_GetBuffer(blob, &s->blob, PyBUF_SIMPLE) < 0) return -1;
    if (PyObject_GetBuffer(ends, &s->ends, PyBUF_SIMPLE) < 0) {
        spans_release(s);
        return -1;
    }
    s->data = (const char *)s->blob.buf;
    s->end = (const int64_t *)s->ends.buf;
    s->n = s->ends.len / 8;
    if (s->ends.len % 8) {
        spans_release(s);
        PyErr_SetString(PyExc_ValueError, "key spans: ends are not int64");
        return -1;
    }
    if (spans_check(s, 0, check < s->n ? check : s->n) < 0) {
        spans_release(s);
        return -1;
    }
    return 0;
}

/* keys a..b-1 of spans as a list of (ASCII) str */
static PyObject *spans_list(const Spans *s, Py_ssize_t a, Py_ssize_t b) {
    PyObject *out = PyList_New(b - a);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = a; i < b; i++) {
        int64_t lo = span_start(s, i), hi = s->end[i];
        if (!all_ascii(s->data + lo, (size_t)(hi - lo))) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_ValueError, "key spans: not ASCII");
            return NULL;
        }
        PyObject *k = PyUnicode_New((Py_ssize_t)(hi - lo), 127);
        if (k == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        memcpy(PyUnicode_DATA(k), s->data + lo, (size_t)(hi - lo));
        PyList_SET_ITEM(out, i - a, k);
    }
    return out;
}

PyDoc_STRVAR(span_strs_doc,
             "span_strs(blob, ends, a, b) -> list[str]\n\n"
             "Keys ``a..b-1`` of a blob of ASCII keys and their ends (native int64):\n"
             "``[blob[ends[i - 1]:ends[i]].decode() for i in range(a, b)]`` (``ends[-1]``: 0).");

static PyObject *span_strs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "span_strs takes 4 arguments");
        return NULL;
    }
    Py_ssize_t a = PyLong_AsSsize_t(args[2]), b = PyLong_AsSsize_t(args[3]);
    if ((a == -1 || b == -1) && PyErr_Occurred()) return NULL;
    Spans s;
    if (spans_get(args[0], args[1], &s, 0) < 0) return NULL;
    PyObject *out = NULL;
    if (a < 0 || b < a || b > s.n)
        PyErr_SetString(PyExc_IndexError, "span_strs: range out of range");
    else if (spans_check(&s, a, b) == 0)
        out = spans_list(&s, a, b);
    spans_release(&s);
    return out;
}

PyDoc_STRVAR(
    take_spans_doc,
    "take_spans(parts: list[tuple[blob, ends]], order) -> tuple[bytes, bytes]\n\n"
    "The keys of ``parts`` (spans, as span_strs reads them), numbered across the parts in\n"
    "order, taken in ``order`` (a buffer of native int64): the blob and ends of\n"
    "``[keys[i] for i in order]``.");

static PyObject *take_spans(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "take_spans(parts: list, order)");
        return NULL;
    }
    PyObject *parts = args[0], *blob = NULL, *ends = NULL, *out = NULL;
    Py_ssize_t np = PyList_GET_SIZE(parts), total = 0, bytes = 0, got = 0;
    Spans *sp = PyMem_Calloc((size_t)(np ? np : 1), sizeof(Spans));
    const char **start = NULL;
    uint32_t *size = NULL;
    Py_buffer view = {0};
    if (sp == NULL) return PyErr_NoMemory();
    for (; got < np; got++) {
        PyObject *part = PyList_GET_ITEM(parts, got);
        if (!PyTuple_Check(part) || PyTuple_GET_SIZE(part) != 2) {
            PyErr_SetString(PyExc_TypeError, "take_spans: parts must be (blob, ends) pairs");
            goto done;
        }
        if (spans_get(PyTuple_GET_ITEM(part, 0), PyTuple_GET_ITEM(part, 1), &sp[got], PY_SSIZE_T_MAX) < 0) goto done;
        total += sp[got].n;
    }
    start = PyMem_Malloc(sizeof(char *) * (size_t)(total ? total : 1));
    size = PyMem_Malloc(sizeof(uint32_t) * (size_t)(total ? total : 1));
    if (start == NULL || size == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0, k = 0; j < np; j++)
        for (Py_ssize_t i = 0; i < sp[j].n; i++, k++) {
            int64_t lo = span_start(&sp[j], i), len = sp[j].end[i] - lo;
            if (len > UINT32_MAX) {
                PyErr_SetString(PyExc_OverflowError, "take_spans: a key of 4 GiB");
                goto done;
            }
            start[k] = sp[j].data + lo;
            size[k] = (uint32_t)len;
        }
    Py_ssize_t n;
    if (int64_view(args[1], &view, &n, "take_spans: order is not int64") < 0) goto done;
    const int64_t *order = (const int64_t *)view.buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (order[k] < 0 || order[k] >= total) {
            PyErr_SetString(PyExc_IndexError, "take_spans: index out of range");
            goto done;
        }
        bytes += size[order[k]];
    }
    blob = PyBytes_FromStringAndSize(NULL, bytes);
    ends = PyBytes_FromStringAndSize(NULL, 8 * n);
    if (blob == NULL || ends == NULL) goto done;
    char *w = PyBytes_AS_STRING(blob);
    int64_t *e = (int64_t *)PyBytes_AS_STRING(ends), at = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k + PREFETCH_AHEAD < n) __builtin_prefetch(start[order[k + PREFETCH_AHEAD]]); /* (gathered in no order) */
        memcpy(w + at, start[order[k]], size[order[k]]);
        at += size[order[k]];
        e[k] = at;
    }
    out = Py_BuildValue("(OO)", blob, ends);
done:
    if (view.obj != NULL) PyBuffer_Release(&view);
    for (Py_ssize_t j = 0; j < got; j++) spans_release(&sp[j]);
    PyMem_Free(sp);
    PyMem_Free(start);
    PyMem_Free(size);
    Py_XDECREF(blob);
    Py_XDECREF(ends);
    return out;
}

/* ------------------------------------------------------------------ shape keys */

/* The keys of shape_keys: a list (of str, in general) or spans (ASCII keys). */
typedef struct {
    PyObject *list;
    const Spans *spans;
} KeyCol;

/* 1 with key i's bytes in *d and *n if it is an ASCII str (every span is), else 0 */
static inline int key_ascii(const KeyCol *c, Py_ssize_t i, const char **d, Py_ssize_t *n) {
    if (c->spans != NULL) {
        int64_t lo = span_start(c->spans, i);
        *d = c->spans->data + lo;
        *n = (Py_ssize_t)(c->spans->end[i] - lo);
        return 1;
    }
    PyObject *k = PyList_GET_ITEM(c->list, i);
    if (!PyUnicode_Check(k) || !PyUnicode_IS_ASCII(k)) return 0;
    *d = (const char *)PyUnicode_DATA(k);
    *n = PyUnicode_GET_LENGTH(k);
    return 1;
}

/* keys a..b-1 as a new list */
static PyObject *keys_slice(const KeyCol *c, Py_ssize_t a, Py_ssize_t b) {
    return c->spans != NULL ? spans_list(c->spans, a, b) : PyList_GetSlice(c->list, a, b);
}

/* 1 if keys a..b-1 are pairwise unequal, 0 if not, -1 on error (len(set(keys)) == n). */
static int all_distinct(const KeyCol *c, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t n = b - a;
    if (n <= 24 && c->spans != NULL) {
        for (Py_ssize_t i = a; i < b; i++) {
            const char *x, *y;
            Py_ssize_t nx, ny;
            key_ascii(c, i, &x, &nx);
            for (Py_ssize_t k = i + 1; k < b; k++) {
                key_ascii(c, k, &y, &ny);
                if (nx == ny && memcmp(x, y, (size_t)nx) == 0) return 0;
            }
        }
        return 1;
    }
    if (n <= 24) {
        PyObject *list = c->list;
        for (Py_ssize_t i = a; i < b; i++) {
            PyObject *x = PyList_GET_ITEM(list, i);
            for (Py_ssize_t k = i + 1; k < b; k++) {
                PyObject *y = PyList_GET_ITEM(list, k);
                if (PyUnicode_CheckExact(x) && PyUnicode_CheckExact(y)) { /* (str == str, without the call) */
                    if (x == y) return 0;
                    Py_ssize_t len = PyUnicode_GET_LENGTH(x);
                    int kind = PyUnicode_KIND(x);
                    if (len == PyUnicode_GET_LENGTH(y) && kind == PyUnicode_KIND(y) &&
                        memcmp(PyUnicode_DATA(x), PyUnicode_DATA(y), (size_t)(len * kind)) == 0)
                        return 0;
                    continue;
                }
                int eq = PyObject_RichCompareBool(x, y, Py_EQ);
                if (eq != 0) return eq < 0 ? -1 : 0;
            }
        }
        return 1;
    }
    PyObject *slice = keys_slice(c, a, b);
    if (slice == NULL) return -1;
    PyObject *set = PySet_New(slice);
    Py_DECREF(slice);
    if (set == NULL) return -1;
    int r = PySet_GET_SIZE(set) == n;
    Py_DECREF(set);
    return r;
}

/* The deltas of shape_keys: a list of int, or a buffer of native int64 (the columns'). */
typedef struct {
    PyObject *list;
    Py_buffer view;
    const int64_t *v;
    Py_ssize_t n;
} DeltaCol;

/* 0, or -1 with an error if ``obj`` is neither a list nor a buffer of int64 */
static int deltas_get(PyObject *obj, DeltaCol *c) {
    memset(c, 0, sizeof(*c));
    if (PyList_Check(obj)) {
        c->list = obj;
        c->n = PyList_GET_SIZE(obj);
        return 0;
    }
    if (int64_view(obj, &c->view, &c->n, "shape_keys: deltas are not int64") < 0) return -1;
    c->v = (const int64_t *)c->view.buf;
    return 0;
}

static void deltas_release(DeltaCol *c) {
    if (c->view.obj != NULL) PyBuffer_Release(&c->view);
}

/* delta r as an int64 in *out: 1, 0 if it does not fit, -1 on error */
static inline int delta_at(const DeltaCol *c, Py_ssize_t r, int64_t *out) {
    if (c->list == NULL) {
        *out = c->v[r];
        return 1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(c->list, r), &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return !overflow;
}

/* deltas a..b-1 as a tuple of int (a new reference) */
static PyObject *deltas_tuple(const DeltaCol *c, Py_ssize_t a, Py_ssize_t b) {
    PyObject *dt = PyTuple_New(b - a);
    if (dt == NULL) return NULL;
    for (Py_ssize_t r = a; r < b; r++) {
        PyObject *d;
        if (c->list != NULL) {
            d = PyList_GET_ITEM(c->list, r);
            Py_INCREF(d);
        } else if ((d = PyLong_FromLongLong(c->v[r])) == NULL) {
            Py_DECREF(dt);
            return NULL;
        }
        PyTuple_SET_ITEM(dt, r - a, d);
    }
    return dt;
}

/* A growable byte buffer. */
typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* The pattern sep.join(keys[a:b]).replace(src, cut) written into *out (from its start)
 * when every string is ASCII (the common case): returns 1 (pattern written, its length
 * in out->len), 2 if a key holds sep or cut (not cacheable), 0 if some string is not
 * ASCII (the caller's general path), -1 on error. Occurrences of src are replaced left
 * to right, without overlap, as str.replace does; none can span two keys, since src
 * holds neither sep nor cut (the caller's precondition). */
static int ascii_pattern(const KeyCol *keys, Py_ssize_t a, Py_ssize_t b, PyObject *src, PyObject *sep, PyObject *cut,
                         Buf *out) {
    out->len = 0;
    if (!PyUnicode_IS_ASCII(src) || !PyUnicode_IS_ASCII(sep) || !PyUnicode_IS_ASCII(cut) ||
        PyUnicode_GET_LENGTH(sep) != 1 || PyUnicode_GET_LENGTH(cut) != 1)
        return 0;
    const char *s = (const char *)PyUnicode_DATA(src);
    Py_ssize_t ns = PyUnicode_GET_LENGTH(src);
    char sp = *(const char *)PyUnicode_DATA(sep), ct = *(const char *)PyUnicode_DATA(cut);
    size_t total = (size_t)(b - a - 1);
    for (Py_ssize_t i = a; i < b; i++) {
        const char *d;
        Py_ssize_t n;
        if (!key_ascii(keys, i, &d, &n)) return 0;
        if (memchr(d, sp, (size_t)n) != NULL || memchr(d, ct, (size_t)n) != NULL) return 2;
        total += (size_t)n; /* (an upper bound: replacing shortens) */
    }
    if (buf_reserve(out, total) < 0) return -1;
    char *w = out->data;
    for (Py_ssize_t i = a; i < b; i++) {
        const char *d;
        Py_ssize_t n, p = 0;
        key_ascii(keys, i, &d, &n);
        if (i > a) *w++ = sp;
        while (p < n) {
            const char *hit = n - p >= ns ? memchr(d + p, s[0], (size_t)(n - p - ns + 1)) : NULL;
            while (hit != NULL && memcmp(hit, s, (size_t)ns) != 0) {
                Py_ssize_t q = hit - d + 1;
                hit = n - q >= ns ? memchr(d + q, s[0], (size_t)(n - q - ns + 1)) : NULL;
            }
            Py_ssize_t upto = hit == NULL ? n : hit - d;
            memcpy(w, d + p, (size_t)(upto - p));
            w += upto - p;
            if (hit == NULL) break;
            *w++ = ct;
            p = upto + ns;
        }
    }
    out->len = (size_t)(w - out->data);
    return 1;
}

/* The distinct shape keys met so far: an open-addressing table over their bytes
 * (an ASCII pattern, its deltas as int64 and the pattern's length: ``fast`` keys), and a
 * dict for the others
 * (``(pattern, deltas)`` tuples); each maps to the key's number in ``uniq``. */
typedef struct {
    uint64_t h;
    size_t off, len;
    Py_ssize_t u; /* -1: empty */
} Slot;

typedef struct {
    Slot *slots;
    size_t mask, used;
    Buf arena;
    PyObject *general; /* dict: tuple -> int */
    PyObject *uniq;    /* list of (pattern, deltas) */
} Keys;

/* A hash of n bytes, 8 at a time (multiply-xorshift mixing; a table's hash, not a
 * checksum). */
static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 29);
}

static int keys_grow(Keys *t) {
    size_t size = t->slots ? 2 * (t->mask + 1) : 1024;
    Slot *slots = PyMem_Malloc(sizeof(Slot) * size);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < size; i++) slots[i].u = -1;
    if (t->slots != NULL) {
        for (size_t i = 0; i <= t->mask; i++) {
            if (t->slots[i].u < 0) continue;
            size_t k = t->slots[i].h & (size - 1);
            while (slots[k].u >= 0) k = (k + 1) & (size - 1);
            slots[k] = t->slots[i];
        }
        PyMem_Free(t->slots);
    }
    t->slots = slots;
    t->mask = size - 1;
    return 0;
}

/* The number of the fast key in ``key`` (its first ``plen`` bytes the pattern), added
 * (with its Python form made from the pattern and ``deltas[a:b]``) if new; -1 on error. */
static Py_ssize_t keys_fast(Keys *t, const Buf *key, size_t plen, const DeltaCol *deltas, Py_ssize_t a,
                            Py_ssize_t b) {
    uint64_t h = hash_bytes(key->data, key->len);
    size_t i = h & t->mask;
    while (t->slots[i].u >= 0) {
        Slot *sl = &t->slots[i];
        if (sl->h == h && sl->len == key->len && memcmp(t->arena.data + sl->off, key->data, key->len) == 0) return sl->u;
        i = (i + 1) & t->mask;
    }
    PyObject *pattern = PyUnicode_New((Py_ssize_t)plen, 127);
    PyObject *dt = deltas_tuple(deltas, a, b);
    if (pattern == NULL || dt == NULL) {
        Py_XDECREF(pattern);
        Py_XDECREF(dt);
        return -1;
    }
    memcpy(PyUnicode_DATA(pattern), key->data, plen);
    PyObject *pair = PyTuple_Pack(2, pattern, dt);
    Py_DECREF(pattern);
    Py_DECREF(dt);
    if (pair == NULL) return -1;
    Py_ssize_t u = PyList_GET_SIZE(t->uniq);
    int appended = PyList_Append(t->uniq, pair);
    Py_DECREF(pair);
    if (appended < 0 || buf_reserve(&t->arena, key->len) < 0) return -1;
    memcpy(t->arena.data + t->arena.len, key->data, key->len);
    t->slots[i] = (Slot){h, t->arena.len, key->len, u};
    t->arena.len += key->len;
    if (++t->used * 2 > t->mask + 1 && keys_grow(t) < 0) return -1;
    return u;
}

/* The number of the key ``pair`` (a new reference, consumed), added if new; -1 on error. */
static Py_ssize_t keys_general(Keys *t, PyObject *pair) {
    PyObject *known = PyDict_GetItemWithError(t->general, pair);
    if (known != NULL) {
        Py_DECREF(pair);
        return PyLong_AsSsize_t(known);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(pair);
        return -1;
    }
    Py_ssize_t u = PyList_GET_SIZE(t->uniq);
    PyObject *number = PyLong_FromSsize_t(u);
    int ok = number != NULL && PyDict_SetItem(t->general, pair, number) == 0 && PyList_Append(t->uniq, pair) == 0;
    Py_XDECREF(number);
    Py_DECREF(pair);
    return ok ? u : -1;
}

static int index_at(PyObject *list, Py_ssize_t i, Py_ssize_t *out) {
    *out = PyLong_AsSsize_t(PyList_GET_ITEM(list, i));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

PyDoc_STRVAR(
    shape_keys_doc,
    "shape_keys(keys, deltas, starts, cand, sources, sep, cut) -> tuple[list, bytes, list, bytes]\n\n"
    "For each candidate state ``g = cand[j]`` (its records ``keys[starts[g]:starts[g + 1]]``,\n"
    "``keys`` a list or ``(blob, ends)``, ASCII keys as span_strs reads them;\n"
    "likewise ``deltas``, a list or a buffer of native int64) and its source ``sources[j]``: the shape cache key of\n"
    "_fastfold.Columns.shapes, ``(sep.join(keys).replace(source, cut), tuple(deltas))``, or\n"
    "``None`` where it cannot be cached (``sep`` is ``None``, the source is empty, no\n"
    "record, or a key holds ``sep`` or ``cut``); one byte per candidate, 1 if its keys\n"
    "are distinct; the distinct keys in order of first appearance (equal keys are one\n"
    "object); and each candidate's number in that list as native int32 (-1: ``None``).");

static PyObject *shape_keys(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "shape_keys takes 7 arguments");
        return NULL;
    }
    PyObject *keys = args[0], *starts = args[2], *cand = args[3], *sources = args[4];
    PyObject *sep = args[5], *cut = args[6];
    int spanned = PyTuple_Check(keys) && PyTuple_GET_SIZE(keys) == 2; /* (blob, ends): KeySpans.raw */
    if ((!spanned && !PyList_Check(keys)) || !PyList_Check(starts) || !PyList_Check(cand) || !PyList_Check(sources)) {
        PyErr_SetString(PyExc_TypeError, "shape_keys: lists expected");
        return NULL;
    }
    int cacheable = sep != Py_None;
    if (cacheable && (!PyUnicode_Check(sep) || !PyUnicode_Check(cut))) {
        PyErr_SetString(PyExc_TypeError, "shape_keys: sep and cut must be str or None");
        return NULL;
    }
    DeltaCol deltas;
    if (deltas_get(args[1], &deltas) < 0) return NULL;
    Spans spans;
    KeyCol col = {spanned ? NULL : keys, spanned ? &spans : NULL};
    if (spanned) {
        if (spans_get(PyTuple_GET_ITEM(keys, 0), PyTuple_GET_ITEM(keys, 1), &spans, PY_SSIZE_T_MAX) < 0) {
            deltas_release(&deltas);
            return NULL;
        }
        if (!all_ascii(spans.data, (size_t)spans.blob.len)) {
            spans_release(&spans);
            deltas_release(&deltas);
            PyErr_SetString(PyExc_ValueError, "shape_keys: key spans not ASCII");
            return NULL;
        }
    }
    Py_ssize_t m = PyList_GET_SIZE(cand), n_states = PyList_GET_SIZE(starts) - 1;
    Py_ssize_t n_keys = spanned ? spans.n : PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(sources) != m || deltas.n != n_keys) {
        if (spanned) spans_release(&spans);
        deltas_release(&deltas);
        PyErr_SetString(PyExc_ValueError, "shape_keys: lengths differ");
        return NULL;
    }
    Keys t = {NULL, 0, 0, {NULL, 0, 0}, PyDict_New(), PyList_New(0)};
    Buf key = {NULL, 0, 0};
    PyObject *pk = PyList_New(m);
    PyObject *distinct = PyBytes_FromStringAndSize(NULL, m);
    PyObject *which = PyBytes_FromStringAndSize(NULL, 4 * m);
    if (t.general == NULL || t.uniq == NULL || pk == NULL || distinct == NULL || which == NULL || keys_grow(&t) < 0)
        goto fail;
    char *dist = PyBytes_AS_STRING(distinct);
    int32_t *nums = (int32_t *)PyBytes_AS_STRING(which);
    for (Py_ssize_t j = 0; j < m; j++) {
        Py_ssize_t g, a, b, u = -1;
        if (j + PREFETCH_AHEAD < m) { /* (the sources' text: in no order in memory) */
            const char *ahead = (const char *)PyList_GET_ITEM(sources, j + PREFETCH_AHEAD);
            __builtin_prefetch(ahead);
            __builtin_prefetch(ahead + 64);
        }
        if (index_at(cand, j, &g) < 0) goto fail;
        if (g < 0 || g >= n_states) {
            PyErr_SetString(PyExc_IndexError, "shape_keys: state out of range");
            goto fail;
        }
        if (index_at(starts, g, &a) < 0 || index_at(starts, g + 1, &b) < 0) goto fail;
        if (a < 0 || b < a || b > n_keys) {
            PyErr_SetString(PyExc_IndexError, "shape_keys: record range out of range");
            goto fail;
        }
        int d = all_distinct(&col, a, b);
        if (d < 0) goto fail;
        dist[j] = (char)d;
        PyObject *src = PyList_GET_ITEM(sources, j);
        if (cacheable && b > a && PyUnicode_Check(src) && PyUnicode_GET_LENGTH(src) > 0) {
            int kind = ascii_pattern(&col, a, b, src, sep, cut, &key);
            if (kind < 0) goto fail;
            if (kind == 1) { /* the deltas as int64 after the pattern, unless one does not fit */
                size_t plen = key.len;
                if (buf_reserve(&key, 8 * (size_t)(b - a + 1)) < 0) goto fail;
                for (Py_ssize_t r = a; r < b && kind == 1; r++) {
                    int64_t w;
                    int fits = delta_at(&deltas, r, &w);
                    if (fits < 0) goto fail;
                    if (!fits) kind = 0;
                    memcpy(key.data + key.len, &w, 8);
                    key.len += 8;
                }
                if (kind == 1) {
                    uint64_t at = (uint64_t)plen; /* (the split of pattern and deltas, last) */
                    memcpy(key.data + key.len, &at, 8);
                    key.len += 8;
                    u = keys_fast(&t, &key, plen, &deltas, a, b);
                    if (u < 0) goto fail;
                }
            }
            if (kind == 0) { /* the general path: Python's own string operations */
                int clean = 1;
                PyObject *group = keys_slice(&col, a, b);
                if (group == NULL) goto fail;
                for (Py_ssize_t i = 0; i < b - a && clean; i++) {
                    PyObject *k = PyList_GET_ITEM(group, i);
                    if (!PyUnicode_Check(k)) {
                        clean = 0;
                        break;
                    }
                    int hit = PyUnicode_Contains(k, sep);
                    if (hit == 0) hit = PyUnicode_Contains(k, cut);
                    if (hit < 0) {
                        Py_DECREF(group);
                        goto fail;
                    }
                    clean = !hit;
                }
                if (!clean) Py_DECREF(group);
                if (clean) {
                    PyObject *joined = PyUnicode_Join(sep, group);
                    Py_DECREF(group);
                    if (joined == NULL) goto fail;
                    PyObject *pattern = PyUnicode_Replace(joined, src, cut, -1);
                    Py_DECREF(joined);
                    if (pattern == NULL) goto fail;
                    PyObject *dt = deltas_tuple(&deltas, a, b);
                    PyObject *pair = dt == NULL ? NULL : PyTuple_Pack(2, pattern, dt);
                    Py_DECREF(pattern);
                    Py_XDECREF(dt);
                    if (pair == NULL) goto fail;
                    u = keys_general(&t, pair);
                    if (u < 0) goto fail;
                }
            }
        }
        if (u > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "shape_keys: too many distinct keys");
            goto fail;
        }
        nums[j] = (int32_t)u;
        PyObject *item = u < 0 ? Py_None : PyList_GET_ITEM(t.uniq, u);
        Py_INCREF(item);
        PyList_SET_ITEM(pk, j, item);
    }
    PyMem_Free(t.slots);
    PyMem_Free(t.arena.data);
    PyMem_Free(key.data);
    Py_DECREF(t.general);
    if (spanned) spans_release(&spans);
    deltas_release(&deltas);
    return Py_BuildValue("(NNNN)", pk, distinct, t.uniq, which);
fail:
    if (spanned) spans_release(&spans);
    deltas_release(&deltas);
    PyMem_Free(t.slots);
    PyMem_Free(t.arena.data);
    PyMem_Free(key.data);
    Py_XDECREF(t.general);
    Py_XDECREF(t.uniq);
    Py_XDECREF(pk);
    Py_XDECREF(distinct);
    Py_XDECREF(which);
    return NULL;
}

/* ------------------------------------------------------------------ source index */

/* A table of str -> int64 (a run's fresh states by source, _fastfold.Buffer.index), in
 * open addressing with linear probing: each slot holds the key's hash, its value and a
 * reference to the key, so a probe reads one slot and, on a hash match, the key; nothing
 * else. number_states looks a whole batch up first, prefetching each source's slot and
 * then its key some sources ahead (a dict's lookups are cache misses one after another:
 * its index, its entry, the stored key, for ~10^5 sources a round). Keys are exact str;
 * equal as Python compares them (same length, kind and code points). */
typedef struct {
    Py_hash_t hash;
    int64_t value;
    PyObject *key; /* (NULL: an empty slot) */
} IndexSlot;

typedef struct {
    PyObject_HEAD
    IndexSlot *slots;
    size_t mask; /* (the number of slots, a power of two, minus 1) */
    Py_ssize_t used;
} SourceIndex;

static PyTypeObject SourceIndexType;

static inline int str_eq(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    int kind = PyUnicode_KIND(a);
    return n == PyUnicode_GET_LENGTH(b) && kind == (int)PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)kind) == 0;
}

/* The hash of ``s``, or -1 with a TypeError if it is not an exact str (``what``: the
 * message's subject, e.g. "SourceIndex keys"). */
static Py_hash_t exact_str_hash(PyObject *s, const char *what) {
    if (!PyUnicode_CheckExact(s)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(s)->tp_name);
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) return -1;
#endif
    return PyObject_Hash(s);
}

static Py_hash_t index_key_hash(PyObject *key) { return exact_str_hash(key, "SourceIndex keys"); }

/* The slot of ``key`` (hash ``h``), or of the empty slot where it would go. */
static inline IndexSlot *index_probe(const SourceIndex *s, PyObject *key, Py_hash_t h) {
    size_t i = (size_t)h & s->mask;
    for (;;) {
        IndexSlot *e = &s->slots[i];
        if (e->key == NULL || (e->hash == h && str_eq(e->key, key))) return e;
        i = (i + 1) & s->mask;
    }
}

/* Room for ``n`` keys at a load of at most a half: 0, or -1 with MemoryError. */
static int index_reserve(SourceIndex *s, Py_ssize_t n) {
    size_t size = s->slots == NULL ? 0 : s->mask + 1;
    if ((size_t)n * 2 <= size) return 0;
    size_t grown = size ? size : 8;
    while (grown < (size_t)n * 2) grown *= 2;
    IndexSlot *slots = PyMem_Calloc(grown, sizeof(IndexSlot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < size; i++) {
        IndexSlot *e = &s->slots[i];
        if (e->key == NULL) continue;
        size_t j = (size_t)e->hash & (grown - 1);
        while (slots[j].key != NULL) j = (j + 1) & (grown - 1);
        slots[j] = *e;
    }
    PyMem_Free(s->slots);
    s->slots = slots;
    s->mask = grown - 1;
    return 0;
}

/* Set ``key`` (hash ``h``) to ``value``: 0, or -1 with an error. */
static int index_set(SourceIndex *s, PyObject *key, Py_hash_t h, int64_t value) {
    if (index_reserve(s, s->used + 1) < 0) return -1;
    IndexSlot *e = index_probe(s, key, h);
    if (e->key == NULL) {
        Py_INCREF(key);
        e->key = key;
        e->hash = h;
        s->used++;
    }
    e->value = value;
    return 0;
}

/* Backward-shift deletion (both tables; no tombstones): slot ``i`` was emptied, and the
 * key in slot ``j``, further along its run, whose hash puts it at slot ``home``, stays
 * where it is if ``home`` is cyclically in (i, j]; else it moves back into ``i``. */
static inline int shift_keeps(size_t i, size_t j, size_t home) {
    return i <= j ? (i < home && home <= j) : (i < home || home <= j);
}

/* Remove the key of slot ``e`` (backward-shift deletion: no tombstones). */
static void index_remove(SourceIndex *s, IndexSlot *e) {
    PyObject *key = e->key;
    size_t i = (size_t)(e - s->slots), j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        IndexSlot *f = &s->slots[j];
        if (f->key == NULL) break;
        if (shift_keeps(i, j, (size_t)f->hash & s->mask)) continue;
        s->slots[i] = *f;
        i = j;
    }
    s->slots[i].key = NULL;
    s->used--;
    Py_DECREF(key);
}

/* The slot holding ``key``, NULL if none (-1 in *err with an error set, else 0). */
static IndexSlot *index_find(SourceIndex *s, PyObject *key, int *err) {
    Py_hash_t h = index_key_hash(key);
    *err = h == -1 ? -1 : 0;
    if (h == -1 || s->used == 0) return NULL;
    IndexSlot *e = index_probe(s, key, h);
    return e->key == NULL ? NULL : e;
}

static PyObject *SourceIndex_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if ((args != NULL && PyTuple_GET_SIZE(args)) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "SourceIndex() takes no arguments");
        return NULL;
    }
    SourceIndex *s = (SourceIndex *)type->tp_alloc(type, 0);
    if (s != NULL) {
        s->slots = NULL;
        s->mask = 0;
        s->used = 0;
    }
    return (PyObject *)s;
}

static void SourceIndex_dealloc(SourceIndex *s) {
    if (s->slots != NULL) {
        for (size_t i = 0; i <= s->mask; i++) Py_XDECREF(s->slots[i].key);
        PyMem_Free(s->slots);
    }
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static Py_ssize_t SourceIndex_len(SourceIndex *s) { return s->used; }

static PyObject *SourceIndex_getitem(SourceIndex *s, PyObject *key) {
    int err;
    IndexSlot *e = index_find(s, key, &err);
    if (e == NULL) {
        if (!err) PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return PyLong_FromLongLong(e->value);
}

static int SourceIndex_setitem(SourceIndex *s, PyObject *key, PyObject *value) {
    if (value == NULL) {
        int err;
        IndexSlot *e = index_find(s, key, &err);
        if (e == NULL) {
            if (!err) PyErr_SetObject(PyExc_KeyError, key);
            return -1;
        }
        index_remove(s, e);
        return 0;
    }
    Py_hash_t h = index_key_hash(key);
    if (h == -1) return -1;
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred()) return -1;
    return index_set(s, key, h, (int64_t)v);
}

static int SourceIndex_contains(SourceIndex *s, PyObject *key) {
    int err;
    IndexSlot *e = index_find(s, key, &err);
    return err ? -1 : e != NULL;
}

static PyObject *SourceIndex_get(SourceIndex *s, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    int err;
    IndexSlot *e = index_find(s, args[0], &err);
    if (err) return NULL;
    if (e != NULL) return PyLong_FromLongLong(e->value);
    PyObject *d = nargs == 2 ? args[1] : Py_None;
    Py_INCREF(d);
    return d;
}

static PyMappingMethods SourceIndex_mapping = {
    (lenfunc)SourceIndex_len,
    (binaryfunc)SourceIndex_getitem,
    (objobjargproc)SourceIndex_setitem,
};

static PySequenceMethods SourceIndex_sequence = {
    .sq_contains = (objobjproc)SourceIndex_contains,
};

static PyMethodDef SourceIndex_methods[] = {
    {"get", (PyCFunction)(void (*)(void))SourceIndex_get, METH_FASTCALL, "get(key, default=None): as dict.get."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(SourceIndex_doc,
             "SourceIndex()\n\n"
             "A table of ``str -> int`` (64-bit values) with a dict's ``len``, ``in``, ``[]``,\n"
             "``[] =``, ``del`` and ``get`` (keys are exact ``str``): ``_fastfold.Buffer``'s\n"
             "per-run index of fresh states, which ``number_states`` looks a batch up in\n"
             "with its memory reads prefetched.");

static PyTypeObject SourceIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "resumelog._native.SourceIndex",
    .tp_basicsize = sizeof(SourceIndex),
    .tp_dealloc = (destructor)SourceIndex_dealloc,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_as_sequence = &SourceIndex_sequence,
    .tp_as_mapping = &SourceIndex_mapping,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = SourceIndex_doc,
    .tp_methods = SourceIndex_methods,
    .tp_new = SourceIndex_new,
};

/* ------------------------------------------------------------------ source map */

/* An insertion-ordered table of str -> str with a dict's semantics (FoldState.added, the
 * completed set of a fold: ~10^6 source ids -> run names): entries in insertion order,
 * as in CPython's compact dict, and an open-addressing index of (hash, entry) slots with
 * linear probing, so a probe reads one slot and, on a hash match, one entry and its key.
 * number_states looks a batch's new sources up in it with those reads prefetched, and
 * update() inserts pairs a chunk at a time, their slots prefetched (a dict's inserts and
 * lookups of 10^6 ids are a few cache misses each, one after another). Keys and values
 * are exact str: no reference cycle can go through it, so it is not tracked by the GC. */
typedef struct {
    Py_hash_t hash;
    PyObject *key; /* (NULL: removed) */
    PyObject *value;
} MapEntry;

typedef struct {
    Py_hash_t hash;
    Py_ssize_t at; /* (its entry; -1: an empty slot) */
} MapSlot;

typedef struct {
    PyObject_HEAD
    MapSlot *slots; /* (NULL until the first insert) */
    size_t mask;
    MapEntry *entries;
    Py_ssize_t n;    /* entries in use, removed ones included */
    Py_ssize_t cap;  /* entries allocated */
    Py_ssize_t used; /* keys */
    uint64_t layout; /* changes at every insert of a key and every removal (iterators check it) */
} SourceMap;

static PyTypeObject SourceMapType;


static int map_check_value(PyObject *v) {
    if (PyUnicode_CheckExact(v)) return 0;
    PyErr_Format(PyExc_TypeError, "SourceMap values must be str, not %.100s", Py_TYPE(v)->tp_name);
    return -1;
}

/* The slot of ``key`` (hash ``h``) or the empty slot where it would go (slots allocated). */
static inline MapSlot *map_probe(const SourceMap *m, PyObject *key, Py_hash_t h) {
    size_t i = (size_t)h & m->mask;
    for (;;) {
        MapSlot *s = &m->slots[i];
        if (s->at < 0 || (s->hash == h && str_eq(m->entries[s->at].key, key))) return s;
        i = (i + 1) & m->mask;
    }
}

/* ``key``'s value (borrowed), or NULL. */
static inline PyObject *map_lookup(const SourceMap *m, PyObject *key, Py_hash_t h) {
    if (m->used == 0) return NULL;
    const MapSlot *s = map_probe(m, key, h);
    return s->at < 0 ? NULL : m->entries[s->at].value;
}

/* Entries compacted (order kept) into ``cap`` of them and slots rebuilt, twice as many:
 * 0, or -1 with MemoryError (nothing changed). */
static int map_resize(SourceMap *m, Py_ssize_t cap) {
    size_t size = (size_t)cap * 2;
    MapEntry *entries = PyMem_Malloc(sizeof(MapEntry) * (size_t)cap);
    MapSlot *slots = PyMem_Malloc(sizeof(MapSlot) * size);
    if (entries == NULL || slots == NULL) {
        PyMem_Free(entries);
        PyMem_Free(slots);
        PyErr_NoMemory();
        return -1;
    }
    memset(slots, 0xff, sizeof(MapSlot) * size); /* (at = -1: empty) */
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < m->n; i++) {
        if (i + PREFETCH_AHEAD < m->n)
            __builtin_prefetch(&slots[(size_t)m->entries[i + PREFETCH_AHEAD].hash & (size - 1)], 1);
        if (m->entries[i].key == NULL) continue;
        entries[k] = m->entries[i];
        size_t j = (size_t)entries[k].hash & (size - 1);
        while (slots[j].at >= 0) j = (j + 1) & (size - 1);
        slots[j].hash = entries[k].hash;
        slots[j].at = k++;
    }
    PyMem_Free(m->entries);
    PyMem_Free(m->slots);
    m->entries = entries;
    m->slots = slots;
    m->mask = size - 1;
    m->n = k;
    m->cap = cap;
    m->layout++; /* (entries moved: an iterator's position is stale) */
    return 0;
}

/* Room for ``k`` more keys: 0, or -1 with an error. */
static int map_reserve(SourceMap *m, Py_ssize_t k) {
    if (m->slots != NULL && m->n + k <= m->cap) return 0;
    if (k > PY_SSIZE_T_MAX / 4 - m->used) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = 8;
    while (cap < m->used + k) cap *= 2;
    if (cap < m->cap && m->used + k > m->cap / 2) cap = m->cap; /* (removals made the room: no shrink) */
    return map_resize(m, cap);
}

/* Set ``key`` (hash ``h``, a str) to ``value`` (a str): 0, or -1 with an error. */
static int map_set(SourceMap *m, PyObject *key, Py_hash_t h, PyObject *value) {
    if (m->used) {
        MapSlot *s = map_probe(m, key, h);
        if (s->at >= 0) {
            MapEntry *e = &m->entries[s->at];
            PyObject *old = e->value;
            Py_INCREF(value);
            e->value = value;
            Py_DECREF(old);
            return 0;
        }
    }
    if (map_reserve(m, 1) < 0) return -1;
    MapSlot *s = map_probe(m, key, h);
    MapEntry *e = &m->entries[m->n];
    Py_INCREF(key);
    Py_INCREF(value);
    e->hash = h;
    e->key = key;
    e->value = value;
    s->hash = h;
    s->at = m->n++;
    m->used++;
    m->layout++;
    return 0;
}

/* Remove the key of slot ``s`` (backward-shift deletion) and its entry's references. */
static void map_remove(SourceMap *m, MapSlot *s) {
    MapEntry *e = &m->entries[s->at];
    PyObject *key = e->key, *value = e->value;
    e->key = e->value = NULL;
    size_t i = (size_t)(s - m->slots), j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        MapSlot *f = &m->slots[j];
        if (f->at < 0) break;
        if (shift_keeps(i, j, (size_t)f->hash & m->mask)) continue;
        m->slots[i] = *f;
        i = j;
    }
    m->slots[i].at = -1;
    m->used--;
    m->layout++;
    if (m->used == 0) m->n = 0; /* (every entry removed: start over) */
    Py_DECREF(key);
    Py_DECREF(value);
}

static void map_clear(SourceMap *m) {
    MapEntry *entries = m->entries;
    Py_ssize_t n = m->n;
    PyMem_Free(m->slots);
    m->slots = NULL;
    m->entries = NULL;
    m->mask = 0;
    m->n = m->cap = m->used = 0;
    m->layout++;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(entries[i].key);
        Py_XDECREF(entries[i].value);
    }
    PyMem_Free(entries);
}

#define MAP_CHUNK 512

/* "keys", interned at import: update() asks each argument for it, as dict.update does
 * (a name made per call would be a new str in CPython's attribute cache each time) */
static PyObject *str_keys;

/* Insert pairs (key, value) a chunk at a time: the hashes first, then the inserts with
 * the slot of the pair PREFETCH_AHEAD later prefetched. 0, or -1 with an error (the
 * pairs before the failing one are in, as dict.update leaves them). */
static int map_insert_chunk(SourceMap *m, PyObject **keys, PyObject **values, Py_ssize_t k) {
    Py_hash_t hs[MAP_CHUNK];
    Py_ssize_t ok = 0;
    while (ok < k && (hs[ok] = exact_str_hash(keys[ok], "SourceMap keys")) != -1 && map_check_value(values[ok]) == 0)
        ok++;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb); /* (the failing pair's error, if any: raised after the others are in) */
    int rc = ok ? map_reserve(m, ok) : 0;
    for (Py_ssize_t i = 0; rc == 0 && i < ok; i++) {
        if (i + PREFETCH_AHEAD < ok) __builtin_prefetch(&m->slots[(size_t)hs[i + PREFETCH_AHEAD] & m->mask]);
        rc = map_set(m, keys[i], hs[i], values[i]); /* (room reserved: no resize) */
    }
    if (rc < 0) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    PyErr_Restore(type, value, tb);
    return ok == k ? 0 : -1;
}

/* update(): from a SourceMap or dict (their items), another mapping (its keys()), or an
 * iterable of pairs. 0, or -1 with an error. */
static int map_update(SourceMap *m, PyObject *arg) {
    PyObject *keys[MAP_CHUNK], *values[MAP_CHUNK];
    Py_ssize_t k = 0;
    int rc = 0;
    if (Py_IS_TYPE(arg, &SourceMapType) || PyDict_Check(arg)) { /* (its pairs held while inserted) */
        PyObject *items = PyMapping_Items(arg);
        if (items == NULL) return -1;
        rc = map_update(m, items);
        Py_DECREF(items);
        return rc;
    }
    if (!PyList_Check(arg) && !PyTuple_Check(arg) && PyObject_HasAttr(arg, str_keys)) {
        PyObject *ks = PyMapping_Keys(arg);
        if (ks == NULL) return -1;
        for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(ks); i++) {
            PyObject *key = PyList_GET_ITEM(ks, i);
            PyObject *v = PyObject_GetItem(arg, key);
            if (v == NULL) {
                rc = -1;
                break;
            }
            Py_hash_t h = exact_str_hash(key, "SourceMap keys");
            rc = h == -1 || map_check_value(v) < 0 ? -1 : map_set(m, key, h, v);
            Py_DECREF(v);
        }
        Py_DECREF(ks);
        return rc;
    }
    PyObject *it = PyObject_GetIter(arg);
    if (it == NULL) return -1;
    Py_ssize_t index = 0;
    for (;;) {
        PyObject *item = PyIter_Next(it);
        if (item != NULL) {
            PyObject *fast = PySequence_Fast(item, "");
            Py_DECREF(item);
            if (fast == NULL) {
                if (PyErr_ExceptionMatches(PyExc_TypeError))
                    PyErr_Format(PyExc_TypeError, "cannot convert SourceMap update sequence element #%zd to a sequence",
                                 index);
                rc = -1;
                break;
            }
            if (PySequence_Fast_GET_SIZE(fast) != 2) {
                PyErr_Format(PyExc_ValueError, "SourceMap update sequence element #%zd has length %zd; 2 is required",
                             index, PySequence_Fast_GET_SIZE(fast));
                Py_DECREF(fast);
                rc = -1;
                break;
            }
            keys[k] = PySequence_Fast_GET_ITEM(fast, 0);
            values[k] = PySequence_Fast_GET_ITEM(fast, 1);
            Py_INCREF(keys[k]);
            Py_INCREF(values[k]);
            Py_DECREF(fast);
            k++;
            index++;
        } else if (PyErr_Occurred()) {
            rc = -1;
            break;
        }
        if (k == MAP_CHUNK || (item == NULL && k)) {
            rc = map_insert_chunk(m, keys, values, k);
            for (Py_ssize_t i = 0; i < k; i++) {
                Py_DECREF(keys[i]);
                Py_DECREF(values[i]);
            }
            k = 0;
            if (rc < 0) break;
        }
        if (item == NULL) break;
    }
    for (Py_ssize_t i = 0; i < k; i++) { /* (an error with a chunk held) */
        Py_DECREF(keys[i]);
        Py_DECREF(values[i]);
    }
    Py_DECREF(it);
    return rc;
}

static SourceMap *map_alloc(PyTypeObject *type) {
    SourceMap *m = (SourceMap *)type->tp_alloc(type, 0);
    if (m == NULL) return NULL;
    m->slots = NULL;
    m->entries = NULL;
    m->mask = 0;
    m->n = m->cap = m->used = 0;
    m->layout = 0;
    return m;
}

static PyObject *SourceMap_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SourceMap() takes no keyword arguments");
        return NULL;
    }
    PyObject *arg = NULL;
    if (!PyArg_UnpackTuple(args, "SourceMap", 0, 1, &arg)) return NULL;
    SourceMap *m = map_alloc(type);
    if (m == NULL) return NULL;
    if (arg != NULL && map_update(m, arg) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

static void SourceMap_dealloc(SourceMap *m) {
    map_clear(m);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static Py_ssize_t SourceMap_len(SourceMap *m) { return m->used; }

/* The slot of ``key``, NULL if absent (*err: -1 with an error set, else 0). */
static MapSlot *map_find(SourceMap *m, PyObject *key, int *err) {
    Py_hash_t h = exact_str_hash(key, "SourceMap keys");
    *err = h == -1 ? -1 : 0;
    if (h == -1 || m->used == 0) return NULL;
    MapSlot *s = map_probe(m, key, h);
    return s->at < 0 ? NULL : s;
}

/* The slot of ``key`` of any type, as a dict finds it: an exact str by its hash and
 * code points, another hashable object (a str subclass) by its hash and ``==``; NULL if
 * absent (*err as map_find's). */
static MapSlot *map_find_any(SourceMap *m, PyObject *key, int *err) {
    if (PyUnicode_CheckExact(key)) return map_find(m, key, err);
    Py_hash_t h = PyObject_Hash(key);
    *err = h == -1 ? -1 : 0;
    if (h == -1 || m->used == 0) return NULL;
    uint64_t layout = m->layout;
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        MapSlot *s = &m->slots[i];
        if (s->at < 0) return NULL;
        if (s->hash != h) continue;
        PyObject *k = m->entries[s->at].key;
        Py_INCREF(k);
        int same = PyObject_RichCompareBool(k, key, Py_EQ);
        Py_DECREF(k);
        if (same != 0 || m->layout != layout) {
            if (same >= 0 && m->layout != layout)
                PyErr_SetString(PyExc_RuntimeError, "SourceMap changed during a lookup");
            *err = same < 0 || m->layout != layout ? -1 : 0;
            return *err ? NULL : s;
        }
    }
}

static PyObject *SourceMap_getitem(SourceMap *m, PyObject *key) {
    int err;
    MapSlot *s = map_find_any(m, key, &err);
    if (s == NULL) {
        if (!err) PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    PyObject *v = m->entries[s->at].value;
    Py_INCREF(v);
    return v;
}

static int SourceMap_setitem(SourceMap *m, PyObject *key, PyObject *value) {
    if (value == NULL) {
        int err;
        MapSlot *s = map_find_any(m, key, &err);
        if (s == NULL) {
            if (!err) PyErr_SetObject(PyExc_KeyError, key);
            return -1;
        }
        map_remove(m, s);
        return 0;
    }
    Py_hash_t h = exact_str_hash(key, "SourceMap keys");
    if (h == -1 || map_check_value(value) < 0) return -1;
    return map_set(m, key, h, value);
}

static int SourceMap_contains(SourceMap *m, PyObject *key) {
    int err;
    MapSlot *s = map_find_any(m, key, &err);
    return err ? -1 : s != NULL;
}

static PyObject *SourceMap_get(SourceMap *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    int err;
    MapSlot *s = map_find_any(m, args[0], &err);
    if (err) return NULL;
    PyObject *v = s != NULL ? m->entries[s->at].value : nargs == 2 ? args[1] : Py_None;
    Py_INCREF(v);
    return v;
}

static PyObject *SourceMap_pop(SourceMap *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(key[, default])");
        return NULL;
    }
    int err;
    MapSlot *s = map_find_any(m, args[0], &err);
    if (err) return NULL;
    if (s == NULL) {
        if (nargs == 2) {
            Py_INCREF(args[1]);
            return args[1];
        }
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    PyObject *v = m->entries[s->at].value;
    Py_INCREF(v);
    map_remove(m, s);
    return v;
}

static PyObject *SourceMap_update(SourceMap *m, PyObject *args, PyObject *kwds) {
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SourceMap.update() takes no keyword arguments");
        return NULL;
    }
    PyObject *arg = NULL;
    if (!PyArg_UnpackTuple(args, "update", 0, 1, &arg)) return NULL;
    if (arg != NULL && map_update(m, arg) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *SourceMap_set_many(SourceMap *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0]) ||
        !(PyUnicode_CheckExact(args[1]) ||
          (PyList_Check(args[1]) && PyList_GET_SIZE(args[1]) == PyList_GET_SIZE(args[0])))) {
        PyErr_SetString(PyExc_TypeError, "set_many(keys: list, values: str | list of as many)");
        return NULL;
    }
    PyObject *keys = args[0], *values = args[1];
    Py_ssize_t n = PyList_GET_SIZE(keys);
    PyObject *ks[MAP_CHUNK], *vs[MAP_CHUNK];
    if (n > MAP_CHUNK && map_reserve(m, n) < 0) return NULL; /* (one resize at most) */
    for (Py_ssize_t a = 0; a < n; a += MAP_CHUNK) {
        Py_ssize_t k = n - a < MAP_CHUNK ? n - a : MAP_CHUNK;
        for (Py_ssize_t i = 0; i < k; i++) { /* (borrowed: nothing below runs Python code) */
            ks[i] = PyList_GET_ITEM(keys, a + i);
            vs[i] = PyUnicode_CheckExact(values) ? values : PyList_GET_ITEM(values, a + i);
        }
        if (map_insert_chunk(m, ks, vs, k) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *SourceMap_clear(SourceMap *m, PyObject *unused) {
    map_clear(m);
    Py_RETURN_NONE;
}

static PyObject *SourceMap_copy(SourceMap *m, PyObject *unused) {
    SourceMap *c = map_alloc(Py_TYPE(m));
    if (c == NULL || m->used == 0) return (PyObject *)c;
    c->entries = PyMem_Malloc(sizeof(MapEntry) * (size_t)m->cap);
    c->slots = PyMem_Malloc(sizeof(MapSlot) * (m->mask + 1));
    if (c->entries == NULL || c->slots == NULL) {
        Py_DECREF(c);
        return PyErr_NoMemory();
    }
    /* the same table: entries at the same places (removed ones too: no slot names them) */
    memcpy(c->entries, m->entries, sizeof(MapEntry) * (size_t)m->n);
    memcpy(c->slots, m->slots, sizeof(MapSlot) * (m->mask + 1));
    for (Py_ssize_t i = 0; i < m->n; i++) {
        Py_XINCREF(c->entries[i].key);
        Py_XINCREF(c->entries[i].value);
    }
    c->cap = m->cap;
    c->mask = m->mask;
    c->n = m->n;
    c->used = m->used;
    return (PyObject *)c;
}

static PyObject *SourceMap_iter_of(SourceMap *m, int kind);

static PyObject *SourceMap_iter(SourceMap *m) { return SourceMap_iter_of(m, 0); }

static PyObject *SourceMap_view_of(SourceMap *m, int kind);

static PyObject *SourceMap_keys(SourceMap *m, PyObject *unused) { return SourceMap_view_of(m, 0); }
static PyObject *SourceMap_values(SourceMap *m, PyObject *unused) { return SourceMap_view_of(m, 1); }
static PyObject *SourceMap_items(SourceMap *m, PyObject *unused) { return SourceMap_view_of(m, 2); }

/* == with a SourceMap or a dict: the same keys, each with an equal value. */
static PyObject *SourceMap_richcompare(SourceMap *m, PyObject *other, int op) {
    if ((op != Py_EQ && op != Py_NE) || !(Py_IS_TYPE(other, &SourceMapType) || PyDict_Check(other)))
        Py_RETURN_NOTIMPLEMENTED;
    int equal = PyObject_Length(other) == m->used;
    for (Py_ssize_t i = 0; equal && i < m->n; i++) {
        const MapEntry *e = &m->entries[i];
        if (e->key == NULL) continue;
        PyObject *v = PyDict_Check(other) ? PyDict_GetItemWithError(other, e->key)
                                          : map_lookup((SourceMap *)other, e->key, e->hash);
        if (v == NULL) {
            if (PyErr_Occurred()) return NULL;
            equal = 0;
            break;
        }
        Py_INCREF(v);
        PyObject *mine = e->value;
        Py_INCREF(mine);
        int same = PyObject_RichCompareBool(mine, v, Py_EQ);
        Py_DECREF(mine);
        Py_DECREF(v);
        if (same < 0) return NULL;
        equal = same;
    }
    return PyBool_FromLong(op == Py_EQ ? equal : !equal);
}

static PyObject *SourceMap_repr(SourceMap *m) {
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    for (Py_ssize_t i = 0; i < m->n; i++)
        if (m->entries[i].key != NULL && PyDict_SetItem(d, m->entries[i].key, m->entries[i].value) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    PyObject *r = PyUnicode_FromFormat("SourceMap(%R)", d);
    Py_DECREF(d);
    return r;
}

/* An iterator over a map's keys (kind 0), values (1) or items (2), in insertion order. */
typedef struct {
    PyObject_HEAD
    SourceMap *map;
    Py_ssize_t at;
    uint64_t layout;
    int kind;
} SourceMapIter;

static PyTypeObject SourceMapIterType;

static PyObject *SourceMap_iter_of(SourceMap *m, int kind) {
    SourceMapIter *it = PyObject_New(SourceMapIter, &SourceMapIterType);
    if (it == NULL) return NULL;
    Py_INCREF(m);
    it->map = m;
    it->at = 0;
    it->layout = m->layout;
    it->kind = kind;
    return (PyObject *)it;
}

static void SourceMapIter_dealloc(SourceMapIter *it) {
    Py_XDECREF(it->map);
    PyObject_Free(it);
}

static PyObject *SourceMapIter_next(SourceMapIter *it) {
    SourceMap *m = it->map;
    if (m == NULL) return NULL;
    if (m->layout != it->layout) {
        PyErr_SetString(PyExc_RuntimeError, "SourceMap changed size during iteration");
        return NULL;
    }
    while (it->at < m->n && m->entries[it->at].key == NULL) it->at++;
    if (it->at >= m->n) {
        it->map = NULL;
        Py_DECREF(m);
        return NULL;
    }
    const MapEntry *e = &m->entries[it->at++];
    if (it->kind == 2) return PyTuple_Pack(2, e->key, e->value);
    PyObject *r = it->kind == 0 ? e->key : e->value;
    Py_INCREF(r);
    return r;
}

static PyTypeObject SourceMapIterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "resumelog._native.SourceMapIterator",
    .tp_basicsize = sizeof(SourceMapIter),
    .tp_dealloc = (destructor)SourceMapIter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)SourceMapIter_next,
};

/* A live view of a map's keys, values or items: len, iteration, ``in``. */
typedef struct {
    PyObject_HEAD
    SourceMap *map;
    int kind;
} SourceMapView;

static PyTypeObject SourceMapViewType;

static PyObject *SourceMap_view_of(SourceMap *m, int kind) {
    SourceMapView *v = PyObject_New(SourceMapView, &SourceMapViewType);
    if (v == NULL) return NULL;
    Py_INCREF(m);
    v->map = m;
    v->kind = kind;
    return (PyObject *)v;
}

static void SourceMapView_dealloc(SourceMapView *v) {
    Py_DECREF(v->map);
    PyObject_Free(v);
}

static Py_ssize_t SourceMapView_len(SourceMapView *v) { return v->map->used; }

static PyObject *SourceMapView_iter(SourceMapView *v) { return SourceMap_iter_of(v->map, v->kind); }

static int SourceMapView_contains(SourceMapView *v, PyObject *x) {
    if (v->kind == 0) return SourceMap_contains(v->map, x);
    if (v->kind == 2) { /* (key, value) */
        if (!PyTuple_Check(x) || PyTuple_GET_SIZE(x) != 2) return 0;
        int err;
        MapSlot *s = map_find_any(v->map, PyTuple_GET_ITEM(x, 0), &err);
        if (err) return -1;
        if (s == NULL) return 0;
        PyObject *mine = v->map->entries[s->at].value;
        Py_INCREF(mine);
        int same = PyObject_RichCompareBool(mine, PyTuple_GET_ITEM(x, 1), Py_EQ);
        Py_DECREF(mine);
        return same;
    }
    PyObject *it = SourceMap_iter_of(v->map, 1), *item;
    if (it == NULL) return -1;
    int found = 0;
    while (!found && (item = PyIter_Next(it)) != NULL) {
        found = PyObject_RichCompareBool(item, x, Py_EQ);
        Py_DECREF(item);
    }
    Py_DECREF(it);
    return found < 0 || PyErr_Occurred() ? -1 : found;
}

static PySequenceMethods SourceMapView_sequence = {
    .sq_length = (lenfunc)SourceMapView_len,
    .sq_contains = (objobjproc)SourceMapView_contains,
};

static PyTypeObject SourceMapViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "resumelog._native.SourceMapView",
    .tp_basicsize = sizeof(SourceMapView),
    .tp_dealloc = (destructor)SourceMapView_dealloc,
    .tp_as_sequence = &SourceMapView_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_iter = (getiterfunc)SourceMapView_iter,
};

static PyMappingMethods SourceMap_mapping = {
    (lenfunc)SourceMap_len,
    (binaryfunc)SourceMap_getitem,
    (objobjargproc)SourceMap_setitem,
};

static PySequenceMethods SourceMap_sequence = {
    .sq_contains = (objobjproc)SourceMap_contains,
};

static PyMethodDef SourceMap_methods[] = {
    {"get", (PyCFunction)(void (*)(void))SourceMap_get, METH_FASTCALL, "get(key, default=None): as dict.get."},
    {"pop", (PyCFunction)(void (*)(void))SourceMap_pop, METH_FASTCALL, "pop(key[, default]): as dict.pop."},
    {"update", (PyCFunction)(void (*)(void))SourceMap_update, METH_VARARGS | METH_KEYWORDS,
     "update([other]): as dict.update (a mapping, or an iterable of pairs)."},
    {"set_many", (PyCFunction)(void (*)(void))SourceMap_set_many, METH_FASTCALL,
     "set_many(keys, values): ``update(zip(keys, values))`` of a list of keys and a list of as\n"
     "many values, or one value for all (``repeat(values)``), without a pair made per key."},
    {"clear", (PyCFunction)SourceMap_clear, METH_NOARGS, "clear(): remove every key."},
    {"copy", (PyCFunction)SourceMap_copy, METH_NOARGS, "copy(): a shallow copy (its table copied, no key rehashed)."},
    {"keys", (PyCFunction)SourceMap_keys, METH_NOARGS, "keys(): a live view of the keys."},
    {"values", (PyCFunction)SourceMap_values, METH_NOARGS, "values(): a live view of the values."},
    {"items", (PyCFunction)SourceMap_items, METH_NOARGS, "items(): a live view of the (key, value) pairs."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(SourceMap_doc,
             "SourceMap([mapping or iterable of pairs])\n\n"
             "A dict of ``str`` keys and ``str`` values, in insertion order, with a dict's\n"
             "``len``, ``in``, ``[]``, ``[] =``, ``del``, iteration, ``get``, ``pop``, ``update``,\n"
             "``clear``, ``copy``, ``keys``/``values``/``items`` (live views) and ``==`` (with\n"
             "a dict or a SourceMap); an iterator raises RuntimeError after a key is added or\n"
             "removed, or the table resized. A fold's completed set (``FoldState.added``), which\n"
             "``number_states`` looks sources up in and ``update`` fills with their memory\n"
             "reads prefetched.");

static PyTypeObject SourceMapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "resumelog._native.SourceMap",
    .tp_basicsize = sizeof(SourceMap),
    .tp_dealloc = (destructor)SourceMap_dealloc,
    .tp_repr = (reprfunc)SourceMap_repr,
    .tp_as_sequence = &SourceMap_sequence,
    .tp_as_mapping = &SourceMap_mapping,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = SourceMap_doc,
    .tp_richcompare = (richcmpfunc)SourceMap_richcompare,
    .tp_iter = (getiterfunc)SourceMap_iter,
    .tp_methods = SourceMap_methods,
    .tp_new = SourceMap_new,
};

/* ------------------------------------------------------------------ fresh states */

PyDoc_STRVAR(
    number_states_doc,
    "number_states(index, pending, run, sources, source_index, start, added)\n"
    "    -> tuple[bytes, list, list] | bool | None\n\n"
    "The common case of _fastfold.apply_batch, or not (and nothing changed) at the first\n"
    "source that has a state of ``run`` in ``pending`` (a dict keyed by ``(run, source)``,\n"
    "or the set of the sources of ``run``'s pending states): ``None``, or that is the\n"
    "source of a new state and that ``run`` completed (``added[source] == run``: a late\n"
    "record): ``False``; else each record's state number\n"
    "(``source_index[i]``'s source: its number in ``index``, ``run``'s ``source -> number``\n"
    "(a dict, or a SourceIndex: looked up with its reads prefetched), or a new one from\n"
    "``start`` up,\n"
    "``source_index`` a list or a buffer of native int64,\n"
    "in the order of ``sources``, entered in ``index``) as native int64, the new states'\n"
    "sources in that order (a source named twice is numbered once), and the indexes of\n"
    "those among them in ``added`` (a dict, or with a SourceIndex a SourceMap, whose lookups are\n"
    "prefetched too; completed by another run).");

/* Dict operations with a key's hash computed once. The functions are CPython's,
   exported up to 3.12; later versions take the plain calls. */
#if PY_VERSION_HEX < 0x030D0000
#define DICT_GET_H(d, k, h) _PyDict_GetItem_KnownHash((d), (k), (h))
#define DICT_SET_H(d, k, v, h) _PyDict_SetItem_KnownHash((d), (k), (v), (h))
#else
#define DICT_GET_H(d, k, h) PyDict_GetItemWithError((d), (k))
#define DICT_SET_H(d, k, v, h) PyDict_SetItem((d), (k), (v))
#endif

/* Remove the keys of ``fresh`` from ``index`` again; -1 on error. */
static int unnumber(PyObject *index, PyObject *fresh) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fresh); i++)
        if (PyObject_DelItem(index, PyList_GET_ITEM(fresh, i)) < 0) return -1;
    return 0;
}

/* 1 if ``src`` has a pending state of ``run`` (``pending``: a dict keyed by
 * ``(run, source)``, or a set of sources), 0 if not, -1 on error. */
static int is_pending(PyObject *pending, PyObject *run, PyObject *src) {
    if (PyAnySet_Check(pending)) return PySet_Contains(pending, src);
    PyObject *k = PyTuple_Pack(2, run, src);
    if (k == NULL) return -1;
    int has = PyDict_Contains(pending, k);
    Py_DECREF(k);
    return has;
}

/* Each of ``ns`` sources' value in ``s`` (hashes ``hs``) into ``local``, ``known[i]``
 * set where found: the slots of sources i + 2 * PREFETCH_AHEAD and the keys of the
 * hash matches of sources i + PREFETCH_AHEAD prefetched as source i is compared. */
static void index_lookup_all(const SourceIndex *s, PyObject *sources, const Py_hash_t *hs, Py_ssize_t ns,
                             int64_t *local, char *known) {
    memset(known, 0, (size_t)ns);
    if (s->used == 0) return;
    for (Py_ssize_t i = 0; i < ns + 2 * PREFETCH_AHEAD; i++) {
        if (i < ns) __builtin_prefetch(&s->slots[(size_t)hs[i] & s->mask]);
        Py_ssize_t j = i - PREFETCH_AHEAD;
        if (j >= 0 && j < ns) { /* (its slot is in the cache by now: find the key to compare) */
            size_t at = (size_t)hs[j] & s->mask;
            while (s->slots[at].key != NULL && s->slots[at].hash != hs[j]) at = (at + 1) & s->mask;
            PyObject *k = s->slots[at].key;
            if (k != NULL) {
                __builtin_prefetch(k);
                __builtin_prefetch((const char *)k + 64);
            }
        }
        Py_ssize_t r = i - 2 * PREFETCH_AHEAD;
        if (r >= 0 && r < ns) {
            const IndexSlot *e = index_probe(s, PyList_GET_ITEM(sources, r), hs[r]);
            if (e->key != NULL) {
                local[r] = e->value;
                known[r] = 1;
            }
        }
    }
}

/* Each source i not ``known`` looked up in ``m`` into ``found[i]`` (borrowed, NULL if
 * absent): each slot prefetched 3 * PREFETCH_AHEAD sources ahead, the entry of a hash
 * match 2 * ahead, its key 1 * ahead. */
static void map_lookup_all(const SourceMap *m, PyObject *sources, const Py_hash_t *hs, const char *known,
                           Py_ssize_t ns, PyObject **found) {
    memset(found, 0, sizeof(PyObject *) * (size_t)ns);
    if (m->used == 0) return;
    for (Py_ssize_t i = 0; i < ns + 3 * PREFETCH_AHEAD; i++) {
        Py_ssize_t a = i, b = i - PREFETCH_AHEAD, c = i - 2 * PREFETCH_AHEAD, r = i - 3 * PREFETCH_AHEAD;
        if (a < ns && !known[a]) __builtin_prefetch(&m->slots[(size_t)hs[a] & m->mask]);
        if (b >= 0 && b < ns && !known[b]) {
            size_t at = (size_t)hs[b] & m->mask;
            while (m->slots[at].at >= 0 && m->slots[at].hash != hs[b]) at = (at + 1) & m->mask;
            if (m->slots[at].at >= 0) __builtin_prefetch(&m->entries[m->slots[at].at]);
        }
        if (c >= 0 && c < ns && !known[c]) {
            size_t at = (size_t)hs[c] & m->mask;
            while (m->slots[at].at >= 0 && m->slots[at].hash != hs[c]) at = (at + 1) & m->mask;
            if (m->slots[at].at >= 0) {
                PyObject *k = m->entries[m->slots[at].at].key;
                __builtin_prefetch(k);
                __builtin_prefetch((const char *)k + 64);
            }
        }
        if (r >= 0 && r < ns && !known[r]) found[r] = map_lookup(m, PyList_GET_ITEM(sources, r), hs[r]);
    }
}

static PyObject *number_states(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "number_states takes 7 arguments");
        return NULL;
    }
    PyObject *index = args[0], *pending = args[1], *run = args[2], *sources = args[3], *source_index = args[4];
    PyObject *added = args[6];
    Py_ssize_t start = PyLong_AsSsize_t(args[5]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    SourceIndex *table = Py_IS_TYPE(index, &SourceIndexType) ? (SourceIndex *)index : NULL;
    SourceMap *done = Py_IS_TYPE(added, &SourceMapType) ? (SourceMap *)added : NULL;
    if (!(PyDict_Check(index) || table != NULL) || !(PyDict_Check(pending) || PyAnySet_Check(pending)) ||
        !PyList_Check(sources) || !(PyDict_Check(added) || done != NULL) || (done != NULL && table == NULL)) {
        PyErr_SetString(PyExc_TypeError,
                        "number_states: dicts (or a set, a SourceIndex, a SourceMap with it) and lists expected");
        return NULL;
    }
    int listed = PyList_Check(source_index); /* (else native int64: a ColumnBatch's) */
    Py_buffer ixv = {0};
    Py_ssize_t ns = PyList_GET_SIZE(sources), n = listed ? PyList_GET_SIZE(source_index) : 0;
    if (!listed && int64_view(source_index, &ixv, &n, "number_states: source_index is not int64") < 0) return NULL;
    int64_t *local = PyMem_Malloc(sizeof(int64_t) * (size_t)(ns ? ns : 1));
    Py_hash_t *hs = NULL;
    char *known = NULL;
    PyObject **completed = NULL; /* (with a SourceMap: each source's run in it, or NULL) */
    PyObject *fresh = NULL, *gid = NULL, *in_added = NULL;
    if (local == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (table != NULL) { /* every source looked up first, its reads prefetched */
        hs = PyMem_Malloc(sizeof(Py_hash_t) * (size_t)(ns ? ns : 1));
        known = PyMem_Malloc((size_t)(ns ? ns : 1));
        if (hs == NULL || known == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        for (Py_ssize_t i = 0; i < ns; i++)
            if ((hs[i] = index_key_hash(PyList_GET_ITEM(sources, i))) == -1) goto fail;
        index_lookup_all(table, sources, hs, ns, local, known);
        if (done != NULL) {
            completed = PyMem_Malloc(sizeof(PyObject *) * (size_t)(ns ? ns : 1));
            if (completed == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            map_lookup_all(done, sources, hs, known, ns, completed);
        }
    }
    fresh = PyList_New(0);
    in_added = PyList_New(0);
    if (fresh == NULL || in_added == NULL) goto fail;
    int check_added = done != NULL ? done->used > 0 : PyDict_GET_SIZE(added) > 0;
    int check_pending = PyAnySet_Check(pending) ? PySet_GET_SIZE(pending) > 0 : PyDict_GET_SIZE(pending) > 0;
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *src = PyList_GET_ITEM(sources, i);
        Py_hash_t h = table != NULL ? hs[i] : PyObject_Hash(src); /* (a str's: cached) */
        if (h == -1) goto fail;
        if (check_pending) {
            int has = is_pending(pending, run, src);
            if (has != 0) {
                if (has < 0 || unnumber(index, fresh) < 0) goto fail;
                PyMem_Free(local);
                PyMem_Free(hs);
                PyMem_Free(known);
                PyMem_Free(completed);
                Py_DECREF(fresh);
                Py_DECREF(in_added);
                if (!listed) PyBuffer_Release(&ixv);
                Py_RETURN_NONE;
            }
        }
        if (table != NULL) {
            if (known[i]) continue;
            const IndexSlot *e = table->used ? index_probe(table, src, h) : NULL; /* (numbered in this batch?) */
            if (e != NULL && e->key != NULL) {
                local[i] = e->value;
                continue;
            }
        } else {
            PyObject *g = DICT_GET_H(index, src, h); /* (borrowed) */
            if (g != NULL) {
                local[i] = PyLong_AsLongLong(g);
                if (local[i] == -1 && PyErr_Occurred()) goto fail;
                continue;
            }
            if (PyErr_Occurred()) goto fail;
        }
        if (check_added) { /* (looked up while its hash is at hand: _fastfold._base_positions's lookup) */
            PyObject *r = done != NULL ? completed[i] : DICT_GET_H(added, src, h); /* (borrowed) */
            if (r == NULL && done == NULL && PyErr_Occurred()) goto fail;
            if (r != NULL) {
                int late = r == run ? 1 : PyObject_RichCompareBool(r, run, Py_EQ);
                if (late != 0) {
                    if (late < 0 || unnumber(index, fresh) < 0) goto fail;
                    PyMem_Free(local);
                    PyMem_Free(hs);
                    PyMem_Free(known);
                    PyMem_Free(completed);
                    Py_DECREF(fresh);
                    Py_DECREF(in_added);
                    if (!listed) PyBuffer_Release(&ixv);
                    Py_RETURN_FALSE;
                }
                PyObject *at = PyLong_FromSsize_t(PyList_GET_SIZE(fresh));
                int ok = at != NULL && PyList_Append(in_added, at) == 0;
                Py_XDECREF(at);
                if (!ok) goto fail;
            }
        }
        local[i] = (int64_t)(start + PyList_GET_SIZE(fresh));
        int set;
        if (table != NULL) {
            set = index_set(table, src, h, local[i]);
        } else {
            PyObject *number = PyLong_FromLongLong(local[i]);
            set = number == NULL ? -1 : DICT_SET_H(index, src, number, h);
            Py_XDECREF(number);
        }
        if (set == 0) {
            set = PyList_Append(fresh, src);
            if (set < 0) PyObject_DelItem(index, src);
        }
        if (set < 0) goto fail;
    }
    gid = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizeof(int64_t) * n);
    if (gid == NULL) goto fail;
    int64_t *out = (int64_t *)PyBytes_AS_STRING(gid);
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t j = listed ? PyLong_AsSsize_t(PyList_GET_ITEM(source_index, r)) : ((const int64_t *)ixv.buf)[r];
        if (j == -1 && PyErr_Occurred()) goto fail;
        if (j < 0 || j >= ns) {
            PyErr_SetString(PyExc_IndexError, "number_states: source index out of range");
            goto fail;
        }
        out[r] = local[j];
    }
    PyMem_Free(local);
    PyMem_Free(hs);
    PyMem_Free(known);
    PyMem_Free(completed);
    if (!listed) PyBuffer_Release(&ixv);
    return Py_BuildValue("(NNN)", gid, fresh, in_added);
fail:
    if (fresh != NULL) { /* (nothing changed: the error is raised as it was) */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (unnumber(index, fresh) < 0) PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    PyMem_Free(local);
    PyMem_Free(hs);
    PyMem_Free(known);
    PyMem_Free(completed);
    Py_XDECREF(fresh);
    Py_XDECREF(in_added);
    Py_XDECREF(gid);
    if (!listed) PyBuffer_Release(&ixv);
    return NULL;
}

/* ------------------------------------------------------------------ columns */

PyDoc_STRVAR(take_doc,
             "take(items: list, order) -> list\n\n"
             "``[items[i] for i in order]`` (``order``: a buffer of native int64).");

static PyObject *take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "take(items: list, order)");
        return NULL;
    }
    PyObject *items = args[0];
    Py_buffer view;
    Py_ssize_t n;
    if (int64_view(args[1], &view, &n, "take: order is not int64") < 0) return NULL;
    Py_ssize_t size = PyList_GET_SIZE(items);
    const int64_t *order = (const int64_t *)view.buf;
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        int64_t i = order[k];
        if (i < 0 || i >= size) {
            PyBuffer_Release(&view);
            Py_DECREF(out);
            PyErr_SetString(PyExc_IndexError, "take: index out of range");
            return NULL;
        }
        PyObject *item = PyList_GET_ITEM(items, i);
        Py_INCREF(item);
        PyList_SET_ITEM(out, k, item);
    }
    PyBuffer_Release(&view);
    return out;
}

PyDoc_STRVAR(int64s_doc,
             "int64s(values: list[int]) -> bytes | None\n\n"
             "The values as native int64, or ``None`` if one does not fit.");

static PyObject *int64s(PyObject *self, PyObject *values) {
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "int64s: a list expected");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject *out = PyBytes_FromStringAndSize(NULL, 8 * n);
    if (out == NULL) return NULL;
    int64_t *w = (int64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyLong_Check(v)) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "int64s: ints expected");
            return NULL;
        }
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        if (x == -1 && PyErr_Occurred()) {
            Py_DECREF(out);
            return NULL;
        }
        w[i] = (int64_t)x;
    }
    return out;
}

PyDoc_STRVAR(in_range_doc,
             "in_range(values: list[int], n: int) -> bool\n\n"
             "``all(0 <= v < n for v in values)``.");

static PyObject *in_range(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "in_range(values: list, n: int)");
        return NULL;
    }
    PyObject *values = args[0];
    long long n = PyLong_AsLongLong(args[1]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(values); i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyLong_Check(v)) {
            PyErr_SetString(PyExc_TypeError, "in_range: ints expected");
            return NULL;
        }
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) return NULL;
        if (overflow || x < 0 || x >= n) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(pack_uints_doc,
             "pack_uints(values: list[int], widths: tuple[int, ...]) -> bytes\n\n"
             "idset.pack_uints of a list: the values as little-endian unsigned ints of the\n"
             "narrowest of ``widths`` (ascending, each 1, 2, 4 or 8) that holds the largest;\n"
             ":class:`OverflowError` if a value is negative or none holds it.");

static PyObject *pack_uints(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "pack_uints(values: list, widths: tuple)");
        return NULL;
    }
    PyObject *values = args[0], *widths = args[1];
    Py_ssize_t n = PyList_GET_SIZE(values);
    uint64_t *v = PyMem_Malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    if (v == NULL) return PyErr_NoMemory();
    uint64_t top = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PyList_GET_ITEM(values, i);
        if (!PyLong_Check(x)) {
            PyMem_Free(v);
            PyErr_SetString(PyExc_TypeError, "pack_uints: ints expected");
            return NULL;
        }
        v[i] = PyLong_AsUnsignedLongLong(x); /* (OverflowError if negative or beyond 64 bits) */
        if (v[i] == (uint64_t)-1 && PyErr_Occurred()) {
            PyMem_Free(v);
            return NULL;
        }
        if (v[i] > top) top = v[i];
    }
    int width = 0, widest = 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(widths) && !width; k++) {
        long w = PyLong_AsLong(PyTuple_GET_ITEM(widths, k));
        if (w == -1 && PyErr_Occurred()) {
            PyMem_Free(v);
            return NULL;
        }
        if (w != 1 && w != 2 && w != 4 && w != 8) {
            PyMem_Free(v);
            PyErr_SetString(PyExc_ValueError, "pack_uints: widths are 1, 2, 4 or 8");
            return NULL;
        }
        widest = (int)w > widest ? (int)w : widest;
        if (w == 8 || top < (1ull << (8 * w))) width = (int)w;
    }
    if (!width) {
        PyMem_Free(v);
        return PyErr_Format(PyExc_OverflowError, "%llu does not fit in %d bytes", (unsigned long long)top, widest);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, width * n);
    if (out != NULL) {
        unsigned char *w = (unsigned char *)PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n; i++)
            for (int b = 0; b < width; b++) *w++ = (unsigned char)(v[i] >> (8 * b));
    }
    PyMem_Free(v);
    return out;
}

/* ------------------------------------------------------------------ layer blocks */

typedef struct {
    const unsigned char *p;
    size_t len;
    Py_ssize_t i;
} Span;

/* Byte strings in key order (a prefix first), then by index ``i`` < ``j``. */
static int cmp_bytes(const unsigned char *p, size_t plen, const unsigned char *q, size_t qlen, Py_ssize_t i,
                     Py_ssize_t j) {
    size_t n = plen < qlen ? plen : qlen;
    int c = n ? memcmp(p, q, n) : 0;
    if (c) return c;
    if (plen != qlen) return plen < qlen ? -1 : 1;
    return (i > j) - (i < j);
}

static int cmp_span(const void *a, const void *b) {
    const Span *x = a, *y = b;
    return cmp_bytes(x->p, x->len, y->p, y->len, x->i, y->i);
}

PyDoc_STRVAR(key_order_doc,
             "key_order(blob, offsets, width: int) -> tuple[list[bytes], list[int]]\n\n"
             "A layer block's ids in key order and their positions in the block:\n"
             "``ids = [blob[off[i]:off[i + 1]] for i in range(n)]`` (``offsets``: n + 1\n"
             "little-endian unsigned ints of ``width`` 4 or 8 bytes), then\n"
             "``order = sorted(range(n), key=ids.__getitem__)`` and ``[ids[i] for i in order]``.\n"
             ":class:`ValueError` if the offsets decrease or pass the blob's end.");

static PyObject *key_order(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "key_order(blob, offsets, width)");
        return NULL;
    }
    long width = PyLong_AsLong(args[2]);
    if (width == -1 && PyErr_Occurred()) return NULL;
    if (width != 4 && width != 8) {
        PyErr_SetString(PyExc_ValueError, "key_order: width is 4 or 8");
        return NULL;
    }
    Py_buffer blob, offs;
    if (PyObject_GetBuffer(args[0], &blob, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &offs, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&blob);
        return NULL;
    }
    PyObject *ids = NULL, *order = NULL;
    Span *spans = NULL;
    if (offs.len % width || offs.len < width) {
        PyErr_SetString(PyExc_ValueError, "key_order: offsets are not n + 1 ints of that width");
        goto done;
    }
    Py_ssize_t n = offs.len / width - 1;
    const unsigned char *o = offs.buf;
    spans = PyMem_Malloc(sizeof(Span) * (size_t)(n ? n : 1));
    if (spans == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t prev = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        uint64_t v = 0;
        for (long b = 0; b < width; b++) v |= (uint64_t)o[i * width + b] << (8 * b);
        if ((i > 0 && v < prev) || v > (uint64_t)blob.len) {
            PyErr_SetString(PyExc_ValueError, "key_order: offsets decrease or pass the end of the ids");
            goto done;
        }
        if (i > 0) spans[i - 1] = (Span){(const unsigned char *)blob.buf + prev, (size_t)(v - prev), i - 1};
        prev = v;
    }
    qsort(spans, (size_t)n, sizeof(Span), cmp_span);
    ids = PyList_New(n);
    order = PyList_New(n);
    if (ids == NULL || order == NULL) goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)spans[k].p, (Py_ssize_t)spans[k].len);
        PyObject *i = b == NULL ? NULL : PyLong_FromSsize_t(spans[k].i);
        if (i == NULL) {
            Py_XDECREF(b);
            Py_CLEAR(ids);
            Py_CLEAR(order);
            goto done;
        }
        PyList_SET_ITEM(ids, k, b);
        PyList_SET_ITEM(order, k, i);
    }
done:
    PyMem_Free(spans);
    PyBuffer_Release(&blob);
    PyBuffer_Release(&offs);
    if (ids == NULL || order == NULL) {
        Py_XDECREF(ids);
        Py_XDECREF(order);
        return NULL;
    }
    return Py_BuildValue("(NN)", ids, order);
}

/* ------------------------------------------------------------------ new layers */

typedef struct {
    uint64_t key; /* 8 bytes of the id after the ids' common prefix, big-endian, zero-padded */
    Py_ssize_t i;
} Keyed;

typedef struct {
    const unsigned char *p; /* the id after the common prefix */
    size_t len;
} Suffix;

static const Suffix *sort_suffixes; /* (qsort has no context argument) */

static int cmp_keyed(const void *a, const void *b) {
    const Keyed *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    const Suffix *s = &sort_suffixes[x->i], *t = &sort_suffixes[y->i];
    return cmp_bytes(s->p, s->len, t->p, t->len, x->i, y->i);
}

/* Sort ``keyed`` by key, then suffix: an LSD radix sort of the keys (16-bit digits, a
 * digit every key shares skipped), then each run of equal keys by comparison. -1 (a
 * MemoryError set) if out of memory. */
static int sort_keyed(Keyed *keyed, Py_ssize_t n, const Suffix *suf) {
    enum { DIGITS = 4, BUCKETS = 1 << 16 };
    size_t *count = PyMem_Calloc((size_t)DIGITS * BUCKETS, sizeof(size_t));
    Keyed *tmp = PyMem_Malloc(sizeof(Keyed) * (size_t)(n ? n : 1));
    if (count == NULL || tmp == NULL) {
        PyMem_Free(count);
        PyMem_Free(tmp);
        PyErr_NoMemory();
        return -1;
    }
    Keyed *from = keyed, *to = tmp;
    int sorted = 1;
    for (Py_ssize_t j = 0; j < n; j++) {
        for (int d = 0; d < DIGITS; d++) count[d * BUCKETS + ((keyed[j].key >> (16 * d)) & 0xFFFF)]++;
        if (j && keyed[j].key < keyed[j - 1].key) sorted = 0;
    }
    for (int d = 0; d < DIGITS && !sorted; d++) {
        size_t *c = &count[d * BUCKETS], total = 0;
        if (c[(from[0].key >> (16 * d)) & 0xFFFF] == (size_t)n) continue; /* every key has this digit */
        for (int b = 0; b < BUCKETS; b++) {
            size_t here = c[b];
            c[b] = total;
            total += here;
        }
        for (Py_ssize_t j = 0; j < n; j++) to[c[(from[j].key >> (16 * d)) & 0xFFFF]++] = from[j];
        Keyed *t = from;
        from = to;
        to = t;
    }
    if (from != keyed) memcpy(keyed, from, sizeof(Keyed) * (size_t)n);
    PyMem_Free(count);
    PyMem_Free(tmp);
    sort_suffixes = suf;
    for (Py_ssize_t lo = 0, hi; lo < n; lo = hi) {
        for (hi = lo + 1; hi < n && keyed[hi].key == keyed[lo].key; hi++) {
        }
        if (hi - lo > 1) qsort(keyed + lo, (size_t)(hi - lo), sizeof(Keyed), cmp_keyed);
    }
    return 0;
}

PyDoc_STRVAR(sorted_entries_doc,
             "sorted_entries(added: dict[str, str] | SourceMap, tags, runs: dict[str, int])\n"
             "    -> tuple[list[bytes], list[int], list[int], bytes] | None | bool\n\n"
             "A new layer's entries in key order: ``ids = sorted(added)``, then\n"
             "``[i.encode() for i in ids]``, ``[runs[added[i]] for i in ids]``,\n"
             "``[tags.get(i, 0) for i in ids]`` and the running totals of the encoded ids'\n"
             "lengths as native int64 (``accumulate(map(len, encoded))``); ``None`` (and\n"
             "nothing done) if an id is not\n"
             "an ASCII ``str``. A run missing from ``runs`` raises :class:`KeyError`.\n"
             "``tags``: a dict, or ``DoneShapeMap.parts()``, a dict and lists of ids and of\n"
             "their tags set after it, in order; ``False`` if those lists do not line up with\n"
             "``added`` (an id set twice, or out of ``added``'s order): settle them, call again.");

/* The entries of sorted_entries' tags in order: the dict's, then the lists'. */
typedef struct {
    PyObject *dict, *ids, *tags; /* (borrowed; ids, tags: lists of lists, or NULL) */
    Py_ssize_t pos, list, item;
    int in_lists;
} TagWalk;

/* The next entry (borrowed) into *k, *v: 1, or 0 at the end. */
static int tag_next(TagWalk *w, PyObject **k, PyObject **v) {
    if (!w->in_lists) {
        if (PyDict_Next(w->dict, &w->pos, k, v)) return 1;
        w->in_lists = 1;
    }
    if (w->ids == NULL) return 0;
    while (w->list < PyList_GET_SIZE(w->ids)) {
        PyObject *ids = PyList_GET_ITEM(w->ids, w->list);
        if (w->item < PyList_GET_SIZE(ids)) {
            *k = PyList_GET_ITEM(ids, w->item);
            *v = PyList_GET_ITEM(PyList_GET_ITEM(w->tags, w->list), w->item);
            w->item++;
            return 1;
        }
        w->list++;
        w->item = 0;
    }
    return 0;
}

/* The next (key, value) of a dict or a SourceMap ``m`` (borrowed), in its order, from
 * *pos: 1, or 0 at the end. A SourceMap's key PREFETCH_AHEAD entries on is prefetched
 * (its object and the first bytes of its text: the keys' memory is in no order). */
static int pairs_next(PyObject *m, Py_ssize_t *pos, PyObject **k, PyObject **v) {
    if (PyDict_Check(m)) return PyDict_Next(m, pos, k, v);
    const SourceMap *s = (const SourceMap *)m;
    while (*pos < s->n && s->entries[*pos].key == NULL) (*pos)++;
    if (*pos >= s->n) return 0;
    if (*pos + PREFETCH_AHEAD < s->n && s->entries[*pos + PREFETCH_AHEAD].key != NULL) {
        const char *ahead = (const char *)s->entries[*pos + PREFETCH_AHEAD].key;
        __builtin_prefetch(ahead);
        __builtin_prefetch(ahead + 64);
    }
    *k = s->entries[*pos].key;
    *v = s->entries[(*pos)++].value;
    return 1;
}

static PyObject *sorted_entries(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    TagWalk walk = {NULL, NULL, NULL, 0, 0, 0, 0};
    Py_ssize_t listed = 0, walked = 0; /* the lists' entries, and those the walk took */
    if (nargs == 3 && PyTuple_Check(args[1]) && PyTuple_GET_SIZE(args[1]) == 3) {
        walk.dict = PyTuple_GET_ITEM(args[1], 0);
        walk.ids = PyTuple_GET_ITEM(args[1], 1);
        walk.tags = PyTuple_GET_ITEM(args[1], 2);
        if (!PyList_Check(walk.ids) || !PyList_Check(walk.tags) ||
            PyList_GET_SIZE(walk.ids) != PyList_GET_SIZE(walk.tags)) {
            PyErr_SetString(PyExc_TypeError, "sorted_entries: tags must be a dict or (dict, lists, lists)");
            return NULL;
        }
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(walk.ids); j++) {
            PyObject *a = PyList_GET_ITEM(walk.ids, j), *b = PyList_GET_ITEM(walk.tags, j);
            if (!PyList_Check(a) || !PyList_Check(b) || PyList_GET_SIZE(a) != PyList_GET_SIZE(b)) {
                PyErr_SetString(PyExc_TypeError, "sorted_entries: tags' lists must be pairs of lists of one length");
                return NULL;
            }
            listed += PyList_GET_SIZE(a);
        }
    } else if (nargs == 3) {
        walk.dict = args[1];
    }
    if (nargs != 3 || !(PyDict_Check(args[0]) || Py_IS_TYPE(args[0], &SourceMapType)) || walk.dict == NULL ||
        !PyDict_Check(walk.dict) || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "sorted_entries(added: dict | SourceMap, tags: dict | (dict, lists, lists), runs: dict)");
        return NULL;
    }
    PyObject *added = args[0], *tags = walk.dict, *runs = args[2];
    Py_ssize_t n = PyDict_Check(added) ? PyDict_GET_SIZE(added) : ((SourceMap *)added)->used, pos = 0, i = 0;
    PyObject *k, *v, *zero = PyLong_FromLong(0), *out = NULL;
    Suffix *suf = PyMem_Malloc(sizeof(Suffix) * (size_t)(n ? n : 1));
    Keyed *keyed = PyMem_Malloc(sizeof(Keyed) * (size_t)(n ? n : 1));
    PyObject **row = PyMem_Malloc(sizeof(PyObject *) * 3 * (size_t)(n ? n : 1)); /* borrowed: id, run, tag */
    if (zero == NULL || suf == NULL || keyed == NULL || row == NULL) {
        if (zero != NULL) PyErr_NoMemory();
        goto done;
    }
    /* Nothing below runs Python code (exact str keys, dict lookups): the dicts stay as they are.
     * The tags are walked alongside ``added``: a fold sets an id's tag when it adds the id, so
     * the tags' keys are mostly the same objects in the same order, taken without a lookup;
     * any other id is looked up in the dict. An id of the lists is never looked up: each must
     * be taken by the walk (else the lists do not line up: False), and ``added`` holds an id
     * once, so an id the walk passed by in the lists is set there once, in ``added``'s order. */
    PyObject *tk = NULL, *tv = NULL;
    int walking = tag_next(&walk, &tk, &tv);
    while (pairs_next(added, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k) || !PyUnicode_IS_COMPACT_ASCII(k)) {
            out = Py_None;
            Py_INCREF(out);
            goto done;
        }
        PyObject *run = PyDict_GetItemWithError(runs, v);
        if (run == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, v);
            goto done;
        }
        PyObject *tag;
        if (walking && tk == k) {
            tag = tv;
            walked += walk.in_lists;
            walking = tag_next(&walk, &tk, &tv);
        } else {
            tag = PyDict_GET_SIZE(tags) ? PyDict_GetItemWithError(tags, k) : NULL;
            if (tag == NULL && PyErr_Occurred()) goto done;
        }
        row[3 * i] = k;
        row[3 * i + 1] = run;
        row[3 * i + 2] = tag != NULL ? tag : zero;
        suf[i] = (Suffix){PyUnicode_DATA(k), (size_t)PyUnicode_GET_LENGTH(k)};
        i++;
    }
    if (walked != listed) { /* the lists do not line up with added */
        out = Py_False;
        Py_INCREF(out);
        goto done;
    }
    size_t common = n ? suf[0].len : 0; /* the ids' common prefix */
    for (Py_ssize_t j = 1; j < n && common; j++) {
        if (j + PREFETCH_AHEAD < n) __builtin_prefetch(suf[j + PREFETCH_AHEAD].p);
        size_t m = suf[j].len < common ? suf[j].len : common, c = 0;
        while (c < m && suf[j].p[c] == suf[0].p[c]) c++;
        common = c;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        if (j + PREFETCH_AHEAD < n) __builtin_prefetch(suf[j + PREFETCH_AHEAD].p + common);
        suf[j].p += common;
        suf[j].len -= common;
        uint64_t key = 0;
        for (size_t b = 0; b < 8; b++) key = key << 8 | (b < suf[j].len ? suf[j].p[b] : 0);
        keyed[j] = (Keyed){key, j};
    }
    if (sort_keyed(keyed, n, suf) < 0) goto done;
    PyObject *ids = PyList_New(n), *rs = PyList_New(n), *ts = PyList_New(n);
    PyObject *ends = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizeof(int64_t) * n);
    if (ids == NULL || rs == NULL || ts == NULL || ends == NULL) goto fail;
    int64_t *end = (int64_t *)PyBytes_AS_STRING(ends), total = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (j + PREFETCH_AHEAD < n) { /* (the ids are read in key order: no order in memory) */
            const char *ahead = (const char *)row[3 * keyed[j + PREFETCH_AHEAD].i];
            __builtin_prefetch(ahead);
            __builtin_prefetch(ahead + 64);
        }
        PyObject **r = &row[3 * keyed[j].i];
        PyObject *b = PyBytes_FromStringAndSize(PyUnicode_DATA(r[0]), PyUnicode_GET_LENGTH(r[0]));
        if (b == NULL) goto fail;
        PyList_SET_ITEM(ids, j, b);
        total += PyBytes_GET_SIZE(b);
        end[j] = total;
        Py_INCREF(r[1]);
        PyList_SET_ITEM(rs, j, r[1]);
        Py_INCREF(r[2]);
        PyList_SET_ITEM(ts, j, r[2]);
    }
    out = Py_BuildValue("(NNNN)", ids, rs, ts, ends);
    goto done;
fail: /* (the lists' unset items are NULL: safe to release) */
    Py_XDECREF(ids);
    Py_XDECREF(rs);
    Py_XDECREF(ts);
    Py_XDECREF(ends);
done:
    Py_XDECREF(zero);
    PyMem_Free(suf);
    PyMem_Free(keyed);
    PyMem_Free(row);
    return out;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"crc32c", (PyCFunction)py_crc32c, METH_O, crc32c_doc},
    {"hash_order", (PyCFunction)hash_order, METH_O, hash_order_doc},
    {"shape_keys", (PyCFunction)(void (*)(void))shape_keys, METH_FASTCALL, shape_keys_doc},
    {"number_states", (PyCFunction)(void (*)(void))number_states, METH_FASTCALL, number_states_doc},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL, take_doc},
    {"pack_uints", (PyCFunction)(void (*)(void))pack_uints, METH_FASTCALL, pack_uints_doc},
    {"key_order", (PyCFunction)(void (*)(void))key_order, METH_FASTCALL, key_order_doc},
    {"sorted_entries", (PyCFunction)(void (*)(void))sorted_entries, METH_FASTCALL, sorted_entries_doc},
    {"int64s", (PyCFunction)int64s, METH_O, int64s_doc},
    {"in_range", (PyCFunction)(void (*)(void))in_range, METH_FASTCALL, in_range_doc},
    {"decode_batch", (PyCFunction)decode_batch, METH_O, decode_batch_doc},
    {"span_strs", (PyCFunction)(void (*)(void))span_strs, METH_FASTCALL, span_strs_doc},
    {"take_spans", (PyCFunction)(void (*)(void))take_spans, METH_FASTCALL, take_spans_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "resumelog._native",
    "Optional compiled kernels of the fold and of layer encoding (see the C source's header).",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    crc_init();
    if ((str_keys = PyUnicode_InternFromString("keys")) == NULL) return NULL;
    if (PyType_Ready(&SourceIndexType) < 0 || PyType_Ready(&SourceMapType) < 0 ||
        PyType_Ready(&SourceMapIterType) < 0 || PyType_Ready(&SourceMapViewType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&SourceIndexType);
    if (PyModule_AddObject(m, "SourceIndex", (PyObject *)&SourceIndexType) < 0) {
        Py_DECREF(&SourceIndexType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SourceMapType);
    if (PyModule_AddObject(m, "SourceMap", (PyObject *)&SourceMapType) < 0) {
        Py_DECREF(&SourceMapType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "SOURCE", RESUMELOG_NATIVE_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
