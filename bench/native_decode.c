// A candidate, measured by bench/native_decode.py, not used by the pipeline: UserActionBatch bytes ->
// the columns of its 18 scalar fields and its properties dicts, or None for anything unusual.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define NFIELDS 18

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0; int shift = 0;
    while (*p < end && shift < 64) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *out = v; return 1; }
        shift += 7;
    }
    return 0;
}

// one map entry: key = 1, value = 2, both strings
static int read_entry(const uint8_t *p, const uint8_t *end, PyObject *dict) {
    PyObject *key = NULL, *value = NULL;
    while (p < end) {
        uint64_t tag, len;
        if (!read_varint(&p, end, &tag) || (tag & 7) != 2 || !read_varint(&p, end, &len) || len > (uint64_t)(end - p)) goto bad;
        PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)len, NULL);
        if (!s) { PyErr_Clear(); goto bad; }
        p += len;
        if ((tag >> 3) == 1) { Py_XSETREF(key, s); } else if ((tag >> 3) == 2) { Py_XSETREF(value, s); } else { Py_DECREF(s); goto bad; }
    }
    if (!key) key = PyUnicode_New(0, 0);
    if (!value) value = PyUnicode_New(0, 0);
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(key); Py_DECREF(value);
    return rc == 0;
bad:
    Py_XDECREF(key); Py_XDECREF(value);
    return 0;
}

static int read_action(const uint8_t *p, const uint8_t *end, PyObject **columns, PyObject *props_list) {
    PyObject *values[NFIELDS + 1] = {0};
    PyObject *props = PyDict_New();
    if (!props) return -1;
    uint32_t seen = 0;
    while (p < end) {
        uint64_t tag, v, len;
        if (!read_varint(&p, end, &tag)) goto unusual;
        unsigned field = (unsigned)(tag >> 3), wt = (unsigned)(tag & 7);
        if (field < 1 || field > 19) goto unusual;
        if (field == 2 || field == 3 || field == 12) {
            if (wt != 0 || (seen & (1u << field)) || !read_varint(&p, end, &v)) goto unusual;
            seen |= 1u << field;
            values[field] = field == 12 ? PyLong_FromUnsignedLong((unsigned long)(v & 0xffffffffu))
                                        : PyLong_FromLongLong((long long)(int64_t)v);
        } else {
            if (wt != 2 || !read_varint(&p, end, &len) || len > (uint64_t)(end - p)) goto unusual;
            if (field == 19) {
                if (!read_entry(p, p + len, props)) goto unusual;
            } else {
                if (seen & (1u << field)) goto unusual;
                seen |= 1u << field;
                values[field] = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)len, NULL);
                if (!values[field]) { PyErr_Clear(); goto unusual; }
            }
            p += len;
        }
    }
    for (int f = 1; f <= NFIELDS; f++) {
        PyObject *value = values[f];
        if (!value) value = (f == 2 || f == 3 || f == 12) ? PyLong_FromLong(0) : PyUnicode_New(0, 0);
        if (PyList_Append(columns[f - 1], value) < 0) return -1;
        Py_DECREF(value);
    }
    if (PyList_Append(props_list, props) < 0) return -1;
    Py_DECREF(props);
    return 1;
unusual:
    for (int f = 1; f <= NFIELDS; f++) Py_XDECREF(values[f]);
    Py_DECREF(props);
    return 0;
}

static PyObject *decode_batch(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf, *end = p + view.len;
    PyObject *columns[NFIELDS];
    for (int f = 0; f < NFIELDS; f++) columns[f] = PyList_New(0);
    PyObject *props = PyList_New(0), *spans = PyList_New(0);
    int ok = 1;
    while (p < end && ok == 1) {
        uint64_t tag, len;
        if (!read_varint(&p, end, &tag) || tag != ((1 << 3) | 2) || !read_varint(&p, end, &len) || len > (uint64_t)(end - p)) { ok = 0; break; }
        const uint8_t *start = p;
        ok = read_action(p, p + len, columns, props);
        PyObject *span = Py_BuildValue("(nn)", (Py_ssize_t)(start - (const uint8_t *)view.buf), (Py_ssize_t)len);
        PyList_Append(spans, span); Py_DECREF(span);
        p += len;
    }
    PyBuffer_Release(&view);
    if (ok != 1) {
        for (int f = 0; f < NFIELDS; f++) Py_DECREF(columns[f]);
        Py_DECREF(props); Py_DECREF(spans);
        if (ok < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *cols = PyTuple_New(NFIELDS);
    for (int f = 0; f < NFIELDS; f++) PyTuple_SET_ITEM(cols, f, columns[f]);
    return Py_BuildValue("(NNN)", cols, props, spans);
}

static PyMethodDef methods[] = {{"decode_batch", decode_batch, METH_O, "UserActionBatch -> columns"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "native_decode", NULL, -1, methods};
PyMODINIT_FUNC PyInit_native_decode(void) { return PyModule_Create(&module); }
