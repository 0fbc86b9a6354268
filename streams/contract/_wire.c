// UserAction messages -> their columns, in one pass, without a message object per action:
// `decode_envelope(data)` for a UserActionBatch, `decode_actions([data, ...])` for single messages,
// or None for anything this decoder does not take on, which the caller then hands to upb
// (streams/contract/envelope_columns.py).
//
// It takes only the canonical encoding, what upb and the other official runtimes write: each
// field of UserAction (tally/v1/user_action.proto) at most once with its own wire type and a
// non-default value, minimal varints, map entries as key then value, no key twice, valid UTF-8,
// no unknown field. So an action it takes parses the same with upb, and its size on the wire is
// upb's ByteSize(). Everything else (an unknown field, a repeated field, a stray byte) is None.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NFIELDS 18          // the scalar fields 1..18 of UserAction; 19 is the properties map
#define PROPERTIES 19
#define EVENT_ID 10
#define INT64_FIELD(f) ((f) == 2 || (f) == 3)
#define UINT32_FIELD(f) ((f) == 12)

// A minimal varint (no trailing zero byte, at most 64 bits); 0 when it is not one.
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t value = 0;
    for (int i = 0; i < 10 && *p < end; i++) {
        uint8_t byte = *(*p)++;
        if (i == 9 && byte > 1) return 0;
        value |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            if (i > 0 && byte == 0) return 0;
            *out = value;
            return 1;
        }
    }
    return 0;
}

static int read_length(const uint8_t **p, const uint8_t *end, uint64_t *len) {
    return read_varint(p, end, len) && *len <= (uint64_t)(end - *p);
}

static PyObject *decode_utf8(const uint8_t *p, uint64_t len) {
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)len, NULL);
    if (!s && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
    return s;
}

// The strings of one envelope, each distinct one made once: an envelope repeats its app, command,
// host, users, argument texts and property keys, and one object for them all means one hash for
// every set and dict the stages put them in, and fewer objects to make and free.
#define SHARED_MAX_LEN 256
typedef struct { const uint8_t *p; uint64_t len; uint64_t hash; PyObject *s; } Slot;
typedef struct { Slot *slots; size_t mask, used; } Strings;  // open addressing, at most half full

static int strings_init(Strings *strings, size_t expected) {
    size_t size = 1024;
    while (size < 2 * expected && size < (1u << 20)) size <<= 1;
    strings->slots = PyMem_Calloc(size, sizeof(Slot));
    strings->mask = size - 1;
    strings->used = 0;
    return strings->slots != NULL;
}

static void strings_release(Strings *strings) {
    if (!strings->slots) return;
    for (size_t at = 0; at <= strings->mask; at++) Py_XDECREF(strings->slots[at].s);
    PyMem_Free(strings->slots);
    strings->slots = NULL;
}

static PyObject *text(Strings *strings, const uint8_t *p, uint64_t len) {
    if (len > SHARED_MAX_LEN) return decode_utf8(p, len);
    uint64_t hash = 1469598103934665603ull;  // FNV-1a
    for (uint64_t i = 0; i < len; i++) hash = (hash ^ p[i]) * 1099511628211ull;
    for (size_t at = (size_t)hash & strings->mask;; at = (at + 1) & strings->mask) {
        Slot *slot = &strings->slots[at];
        if (!slot->s) {  // new: kept while the table is at most half full, the ones in it still shared
            PyObject *s = decode_utf8(p, len);
            if (s && strings->used <= strings->mask / 2) {
                *slot = (Slot){p, len, hash, Py_NewRef(s)};
                strings->used++;
            }
            return s;
        }
        if (slot->hash == hash && slot->len == len && memcmp(slot->p, p, len) == 0) return Py_NewRef(slot->s);
    }
}

// One properties entry (key = 1, then value = 2, both strings) into `dict`: 1 taken, 0 not
// canonical, -1 an error (set).
static int read_entry(Strings *strings, const uint8_t *p, const uint8_t *end, PyObject *dict) {
    uint64_t tag, len;
    if (!read_varint(&p, end, &tag) || tag != ((1 << 3) | 2) || !read_length(&p, end, &len)) return 0;
    PyObject *key = text(strings, p, len);
    if (!key) return PyErr_Occurred() ? -1 : 0;
    p += len;
    if (!read_varint(&p, end, &tag) || tag != ((2 << 3) | 2) || !read_length(&p, end, &len) || p + len != end) {
        Py_DECREF(key);
        return 0;
    }
    PyObject *value = text(strings, p, len);
    if (!value) { Py_DECREF(key); return PyErr_Occurred() ? -1 : 0; }
    int rc = PyDict_Contains(dict, key);
    if (rc == 0) rc = PyDict_SetItem(dict, key, value) == 0 ? 1 : -1;
    else if (rc == 1) rc = 0;  // a key twice: upb keeps the last, and its size differs from the bytes'
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

static PyObject *empty_text, *zero;

// One action appended to the columns: 1 taken, 0 not canonical (nothing appended), -1 an error.
static int read_action(Strings *strings, const uint8_t *p, const uint8_t *end, PyObject **columns, PyObject *properties) {
    PyObject *values[NFIELDS + 1] = {0};
    PyObject *props = PyDict_New();
    int rc = 0;
    if (!props) return -1;
    while (p < end) {
        uint64_t tag, value, len;
        if (!read_varint(&p, end, &tag)) goto done;
        unsigned field = (unsigned)(tag >> 3), wire_type = (unsigned)(tag & 7);
        if (field < 1 || field > PROPERTIES || (field <= NFIELDS && values[field])) goto done;
        if (INT64_FIELD(field) || UINT32_FIELD(field)) {
            if (wire_type != 0 || !read_varint(&p, end, &value) || value == 0) goto done;
            if (UINT32_FIELD(field)) {
                if (value > 0xffffffffu) goto done;
                values[field] = PyLong_FromUnsignedLongLong(value);
            } else {
                values[field] = PyLong_FromLongLong((long long)(int64_t)value);
            }
            if (!values[field]) { rc = -1; goto done; }
            continue;
        }
        if (wire_type != 2 || !read_length(&p, end, &len)) goto done;
        if (field == PROPERTIES) {
            int taken = read_entry(strings, p, p + len, props);
            if (taken != 1) { rc = taken; goto done; }
        } else {
            if (len == 0) goto done;
            values[field] = field == EVENT_ID ? decode_utf8(p, len) : text(strings, p, len);  // ids: each its own
            if (!values[field]) { rc = PyErr_Occurred() ? -1 : 0; goto done; }
        }
        p += len;
    }
    for (int f = 1; f <= NFIELDS; f++) {
        PyObject *value = values[f] ? values[f] : (INT64_FIELD(f) || UINT32_FIELD(f)) ? zero : empty_text;
        if (PyList_Append(columns[f - 1], value) < 0) { rc = -1; goto done; }
    }
    rc = PyList_Append(properties, props) < 0 ? -1 : 1;
done:
    for (int f = 1; f <= NFIELDS; f++) Py_XDECREF(values[f]);
    Py_DECREF(props);
    return rc;
}

// The columns being filled: one list per scalar field, the properties dicts, each action's size.
typedef struct { PyObject *columns[NFIELDS], *properties, *sizes; Strings strings; } Decoded;

static int decoded_init(Decoded *d, size_t expected_actions) {
    memset(d, 0, sizeof(*d));
    if (!(d->properties = PyList_New(0)) || !(d->sizes = PyList_New(0))) return 0;
    for (int f = 0; f < NFIELDS; f++)
        if (!(d->columns[f] = PyList_New(0))) return 0;
    return strings_init(&d->strings, 4 * expected_actions);
}

static int decoded_add(Decoded *d, const uint8_t *p, uint64_t len) {
    int rc = read_action(&d->strings, p, p + len, d->columns, d->properties);
    if (rc == 1) {
        PyObject *size = PyLong_FromUnsignedLongLong(len);
        if (!size || PyList_Append(d->sizes, size) < 0) rc = -1;
        Py_XDECREF(size);
    }
    return rc;
}

// (columns, properties, sizes, *extra) when rc is 1, None when 0, NULL (an error set) when -1.
static PyObject *decoded_finish(Decoded *d, int rc, PyObject *extra) {
    PyObject *result = NULL;
    strings_release(&d->strings);
    if (rc < 0 && !PyErr_Occurred()) PyErr_NoMemory();
    if (rc == 1) {
        PyObject *columns = PyTuple_New(NFIELDS);
        if (columns) {
            for (int f = 0; f < NFIELDS; f++) { PyTuple_SET_ITEM(columns, f, d->columns[f]); d->columns[f] = NULL; }
            result = extra ? Py_BuildValue("(NOOO)", columns, d->properties, d->sizes, extra)
                           : Py_BuildValue("(NOO)", columns, d->properties, d->sizes);
        }
    } else if (rc == 0) {
        result = Py_NewRef(Py_None);
    }
    for (int f = 0; f < NFIELDS; f++) Py_XDECREF(d->columns[f]);
    Py_XDECREF(d->properties);
    Py_XDECREF(d->sizes);
    Py_XDECREF(extra);
    return result;
}

// A UserActionBatch: (columns, properties, sizes, starts) of all its actions, or None. Rows taken
// before a part it does not take on are dropped with it: an envelope is decoded whole or not at all.
static PyObject *decode_envelope(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *base = view.buf, *p = base, *end = base + view.len;
    Decoded d;
    PyObject *starts = PyList_New(0);
    int rc = decoded_init(&d, (size_t)view.len / 200 + 1) && starts ? 1 : -1;
    while (rc == 1 && p < end) {
        uint64_t tag, len;
        if (!read_varint(&p, end, &tag) || tag != ((1 << 3) | 2) || !read_length(&p, end, &len)) { rc = 0; break; }
        PyObject *start = PyLong_FromSsize_t(p - base);
        if (!start || PyList_Append(starts, start) < 0) rc = -1;
        Py_XDECREF(start);
        if (rc == 1) rc = decoded_add(&d, p, len);
        p += len;
    }
    PyBuffer_Release(&view);
    if (rc != 1 && PyErr_Occurred()) rc = -1;
    if (!starts) return decoded_finish(&d, -1, NULL);
    return decoded_finish(&d, rc, starts);
}

// Single UserAction messages, a list of bytes: (columns, properties, sizes) of all, or None when
// one of them is not bytes or is not the canonical encoding.
static PyObject *decode_actions(PyObject *self, PyObject *arg) {
    if (!PyList_Check(arg)) { PyErr_SetString(PyExc_TypeError, "decode_actions takes a list of bytes"); return NULL; }
    Py_ssize_t n = PyList_GET_SIZE(arg);
    Decoded d;
    int rc = decoded_init(&d, (size_t)n) ? 1 : -1;
    for (Py_ssize_t i = 0; i < n && rc == 1; i++) {
        PyObject *item = PyList_GET_ITEM(arg, i);
        if (!PyBytes_CheckExact(item)) { rc = 0; break; }
        rc = decoded_add(&d, (const uint8_t *)PyBytes_AS_STRING(item), (uint64_t)PyBytes_GET_SIZE(item));
    }
    return decoded_finish(&d, rc, NULL);
}

static PyMethodDef methods[] = {
    {"decode_envelope", decode_envelope, METH_O,
     "decode_envelope(data) -> (columns of fields 1..18, properties dicts, sizes, starts) or None"},
    {"decode_actions", decode_actions, METH_O,
     "decode_actions([data, ...]) -> (columns of fields 1..18, properties dicts, sizes) or None"},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", "UserAction messages as columns", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wire(void) {
    empty_text = PyUnicode_New(0, 0);
    zero = PyLong_FromLong(0);
    if (!empty_text || !zero) return NULL;
    return PyModule_Create(&module);
}
