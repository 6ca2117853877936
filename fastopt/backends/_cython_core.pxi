# The drivers, the prepared steps (Core, AddressedCore, Int8Core) and the thread
# settings of the Cython backend: hand-written, included at the end of the
# rendered _cython_kernels.pyx, where the per-rule tables (_LOOPS_F32,
# _LOOPS_F64, _PREPARE, _NSCALARS, _NSLOTS) are defined.  Fixed sizes of the
# per-step buffers come from the rendered file: MAX_SCALARS, HP_SIZE,
# MAX_ROWS and NRULES (compile-time enum constants).

# ---------------------------------------------------------------------------
# Drivers over a group.  ptrs: (2 + nslots) rows of ntensors data pointers
# (row 0 parameters, row 1 gradients -- NULL skips the tensor -- then slots);
# chunks: (tensor, start, stop) triples; pt: the (3, ntensors) float64 rows
# gradient scale, decoupled keep factor, coupled l2, and for a two_phase rule
# a fourth row, the update scale (fastopt.two_phase).

cdef inline floating* _at(char** ptrs, Py_ssize_t row, Py_ssize_t nrows, Py_ssize_t nt,
                          Py_ssize_t t, Py_ssize_t start, floating* like) noexcept nogil:
    if row >= nrows:
        return NULL
    return (<floating*>ptrs[row * nt + t]) + start


cdef void _chunk_step(floating* like, int rule, char** ptrs, Py_ssize_t nrows,
                      Py_ssize_t nt, Py_ssize_t t, Py_ssize_t s, Py_ssize_t e,
                      const double* pt, const double* hp) noexcept nogil:
    cdef floating* a[MAX_ROWS]
    cdef Py_ssize_t r
    cdef double us = pt[3 * nt + t] if _NREDUCTIONS[rule] else 1.0
    for r in range(nrows):
        a[r] = (<floating*>ptrs[r * nt + t]) + s
    if floating is float:
        _LOOPS_F32[rule](<float**>a, e - s, hp, pt[t], pt[nt + t], pt[2 * nt + t], us)
    else:
        _LOOPS_F64[rule](<double**>a, e - s, hp, pt[t], pt[nt + t], pt[2 * nt + t], us)


cdef void _step_serial(floating* like, int rule, char** ptrs, Py_ssize_t nrows,
                       Py_ssize_t nt, const Py_ssize_t* sizes, const double* pt,
                       const double* hp) noexcept nogil:
    # whole tensors: the loops are elementwise, so chunking changes no result
    cdef Py_ssize_t t
    for t in range(nt):
        if ptrs[nt + t] != NULL:
            _chunk_step(like, rule, ptrs, nrows, nt, t, 0, sizes[t], pt, hp)


cdef void _step_parallel(floating* like, int rule, char** ptrs, Py_ssize_t nrows,
                         Py_ssize_t nt, const Py_ssize_t* chunks, Py_ssize_t nchunks,
                         const double* pt, const double* hp, int nthreads) noexcept nogil:
    cdef Py_ssize_t c, t
    for c in prange(nchunks, schedule="static", num_threads=nthreads):
        t = chunks[3 * c]
        if ptrs[nt + t] != NULL:
            _chunk_step(like, rule, ptrs, nrows, nt, t, chunks[3 * c + 1], chunks[3 * c + 2],
                        pt, hp)


cdef inline double _chunk_sumsq(floating* like, char** ptrs, Py_ssize_t nt,
                                const Py_ssize_t* chunks, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t t = chunks[3 * c], s = chunks[3 * c + 1]
    if ptrs[nt + t] == NULL:
        return 0.0
    return sumsq(<const floating*>_at(ptrs, 1, 2, nt, t, s, like), chunks[3 * c + 2] - s)


cdef void _sumsq_chunks(floating* like, char** ptrs, Py_ssize_t nt, const Py_ssize_t* chunks,
                        Py_ssize_t nchunks, double* partial, double* out,
                        int nthreads) noexcept nogil:
    cdef Py_ssize_t c, u
    if nthreads > 1:
        for c in prange(nchunks, schedule="static", num_threads=nthreads):
            partial[c] = _chunk_sumsq(like, ptrs, nt, chunks, c)
    else:
        for c in range(nchunks):
            partial[c] = _chunk_sumsq(like, ptrs, nt, chunks, c)
    for u in range(nt):
        out[u] = 0.0
    for u in range(nchunks):  # in chunk order: a fixed summation order
        out[chunks[3 * u]] += partial[u]


cdef void _chunk_reduce(floating* like, int rule, char** ptrs, Py_ssize_t nrows,
                        Py_ssize_t nt, const Py_ssize_t* chunks, Py_ssize_t c,
                        const double* pt, const double* hp, double* out) noexcept nogil:
    cdef floating* a[MAX_ROWS]
    cdef Py_ssize_t r, t = chunks[3 * c], s = chunks[3 * c + 1]
    if ptrs[nt + t] == NULL:
        for r in range(_NREDUCTIONS[rule]):
            out[r] = 0.0
        return
    for r in range(nrows):
        a[r] = (<floating*>ptrs[r * nt + t]) + s
    if floating is float:
        _REDUCE_F32[rule](<float**>a, chunks[3 * c + 2] - s, hp, pt[t], pt[nt + t],
                          pt[2 * nt + t], out)
    else:
        _REDUCE_F64[rule](<double**>a, chunks[3 * c + 2] - s, hp, pt[t], pt[nt + t],
                          pt[2 * nt + t], out)


cdef void _reduce_chunks(floating* like, int rule, char** ptrs, Py_ssize_t nrows,
                         Py_ssize_t nt, const Py_ssize_t* chunks, Py_ssize_t nchunks,
                         const double* pt, const double* hp, double* partial, double* out,
                         int nthreads) noexcept nogil:
    # partial: nred doubles per chunk; out: (nred, nt), summed in chunk order
    cdef Py_ssize_t c, u, k, nred = _NREDUCTIONS[rule]
    if nthreads > 1:
        for c in prange(nchunks, schedule="static", num_threads=nthreads):
            _chunk_reduce(like, rule, ptrs, nrows, nt, chunks, c, pt, hp, partial + nred * c)
    else:
        for c in range(nchunks):
            _chunk_reduce(like, rule, ptrs, nrows, nt, chunks, c, pt, hp, partial + nred * c)
    for u in range(nred * nt):
        out[u] = 0.0
    for u in range(nchunks):  # in chunk order: a fixed summation order
        for k in range(nred):
            out[k * nt + chunks[3 * u]] += partial[nred * u + k]


cdef inline Py_ssize_t _threshold(int typenum, Py_ssize_t own) noexcept nogil:
    """The parallel threshold in force: the override, else the core's own
    (its rule's, -1 for none), else the dtype's default."""
    cdef Py_ssize_t override = _override_f32 if typenum == cnp.NPY_FLOAT else _override_f64
    if override >= 0:
        return override
    if own >= 0:
        return own
    return _threshold_f32 if typenum == cnp.NPY_FLOAT else _threshold_f64


cdef void _dispatch(int typenum, int rule, char** ptrs, Py_ssize_t nrows, Py_ssize_t nt,
                    const Py_ssize_t* sizes, const Py_ssize_t* chunks, Py_ssize_t nchunks,
                    Py_ssize_t size, Py_ssize_t threshold, const double* ptd,
                    const double* hp) noexcept:
    """One step over a group: parallel over chunks from the threshold
    (:func:`_threshold`) on, else serial (releasing the GIL from one chunk's
    worth of elements on)."""
    cdef int nthreads = _num_threads
    cdef bint parallel = (FASTOPT_OPENMP and nthreads > 1 and nchunks > 1 and
                          size >= _threshold(typenum, threshold))
    if parallel:
        with nogil:
            if typenum == cnp.NPY_FLOAT:
                _step_parallel(<float*>NULL, rule, ptrs, nrows, nt, chunks, nchunks, ptd, hp,
                               nthreads)
            else:
                _step_parallel(<double*>NULL, rule, ptrs, nrows, nt, chunks, nchunks, ptd, hp,
                               nthreads)
    elif size >= _CHUNK:   # worth releasing the GIL for
        with nogil:
            if typenum == cnp.NPY_FLOAT:
                _step_serial(<float*>NULL, rule, ptrs, nrows, nt, sizes, ptd, hp)
            else:
                _step_serial(<double*>NULL, rule, ptrs, nrows, nt, sizes, ptd, hp)
    elif typenum == cnp.NPY_FLOAT:  # small: keeping the GIL is cheaper
        _step_serial(<float*>NULL, rule, ptrs, nrows, nt, sizes, ptd, hp)
    else:
        _step_serial(<double*>NULL, rule, ptrs, nrows, nt, sizes, ptd, hp)


cdef Py_ssize_t* _chunk_table(const Py_ssize_t* sizes, Py_ssize_t nt,
                              Py_ssize_t nchunks) except NULL:
    """(tensor, start, stop) triples covering every tensor in CHUNK pieces."""
    cdef Py_ssize_t t, k, n, c = 0
    cdef Py_ssize_t* chunks = <Py_ssize_t*>malloc((3 * nchunks + 1) * sizeof(Py_ssize_t))
    if chunks == NULL:
        raise MemoryError()
    for t in range(nt):
        n = sizes[t]
        for k in range(0, n, _CHUNK):
            chunks[3 * c] = t
            chunks[3 * c + 1] = k
            chunks[3 * c + 2] = min(k + _CHUNK, n)
            c += 1
    return chunks


cdef int _read_scalars(scalars, int nscalars, double* s) except -1:
    cdef Py_ssize_t k
    if type(scalars) is not tuple:
        scalars = tuple(scalars)
    if len(<tuple>scalars) != nscalars:
        raise ValueError(f"expected {nscalars} scalars, got {len(scalars)}")
    for k in range(nscalars):
        s[k] = (<tuple>scalars)[k]
    return 0


cdef const double* _pt_data(pt, Py_ssize_t nt, list keep, int rows=3) except NULL:
    """The (rows, nt) float64 per-tensor rows, converted if needed (kept alive
    in keep); a two_phase rule's step reads 4 rows (the update scale)."""
    if not (cnp.PyArray_Check(pt) and cnp.PyArray_TYPE(<cnp.ndarray>pt) == cnp.NPY_DOUBLE
            and cnp.PyArray_SIZE(<cnp.ndarray>pt) == rows * nt
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>pt)):
        pt = cnp.PyArray_FROMANY(pt, cnp.NPY_DOUBLE, 2, 2, cnp.NPY_ARRAY_C_CONTIGUOUS)
        if cnp.PyArray_SIZE(<cnp.ndarray>pt) != rows * nt:
            raise ValueError(f"pt must have shape ({rows}, {nt})")
    keep.append(pt)
    return <const double*>cnp.PyArray_DATA(<cnp.ndarray>pt)


cdef class AddressedCore:
    """The prepared step of one group of same-dtype tensors given by address.

    ``AddressedCore(rule, nslots, sizes, double)``: like
    :class:`Core`, but the caller owns the memory and hands over a pointer
    table at every step: ``step(ptrs, pt, scalars, clipvalue)`` where ``ptrs``
    is a C-contiguous ``(2 + nslots, ntensors)`` intp array (row 0
    parameters, row 1 gradients -- 0 skips the tensor -- then the slots), each
    address the start of ``sizes[t]`` contiguous float32 (or float64 when
    ``double``) elements.  Nothing here can check those addresses:
    :mod:`fastopt.multi_tensor` is the checked interface.
    """

    cdef int rule, typenum
    cdef Py_ssize_t nt, nrows, nchunks
    cdef readonly Py_ssize_t size
    #: this group's parallel threshold (its rule's; -1: the dtype's default);
    #: fastopt.set_parallel_threshold's override wins over it
    cdef public Py_ssize_t threshold
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t* chunks

    def __cinit__(self, int rule, int nslots, sizes, bint double):
        cdef Py_ssize_t t
        if not 0 <= rule < NRULES or nslots != _NSLOTS[rule] or len(sizes) == 0:
            raise ValueError("AddressedCore: bad rule, slot count or empty group")
        if _NREDUCTIONS[rule]:
            raise ValueError("AddressedCore: a two_phase rule needs its first pass "
                             "(use Core)")
        self.rule = rule
        self.threshold = -1
        self.typenum = cnp.NPY_DOUBLE if double else cnp.NPY_FLOAT
        self.nt = len(sizes)
        self.nrows = 2 + nslots
        self.sizes = <Py_ssize_t*>malloc(self.nt * sizeof(Py_ssize_t))
        if self.sizes == NULL:
            raise MemoryError()
        self.nchunks = 0
        self.size = 0
        for t in range(self.nt):
            self.sizes[t] = sizes[t]
            if self.sizes[t] < 0:
                raise ValueError("AddressedCore: negative size")
            self.nchunks += (self.sizes[t] + _CHUNK - 1) // _CHUNK
            self.size += self.sizes[t]
        self.chunks = _chunk_table(self.sizes, self.nt, self.nchunks)

    def __dealloc__(self):
        free(self.sizes)
        free(self.chunks)

    def step(self, cnp.ndarray ptrs, pt, scalars, double clipvalue=INFINITY):
        """One step of the rule over the tensors at ``ptrs``."""
        cdef double s[MAX_SCALARS]
        cdef double hp[HP_SIZE]
        cdef list keep = []
        if not (cnp.PyArray_TYPE(ptrs) == cnp.NPY_INTP and cnp.PyArray_IS_C_CONTIGUOUS(ptrs)
                and cnp.PyArray_NDIM(ptrs) == 2 and cnp.PyArray_DIM(ptrs, 0) == self.nrows
                and cnp.PyArray_DIM(ptrs, 1) == self.nt):
            raise ValueError(f"ptrs must be a C-contiguous intp array of shape "
                             f"({self.nrows}, {self.nt})")
        _read_scalars(scalars, _NSCALARS[self.rule], s)
        cdef const double* ptd = _pt_data(pt, self.nt, keep)
        _pack(self.rule, s, clipvalue, hp)
        _dispatch(self.typenum, self.rule, <char**>cnp.PyArray_DATA(ptrs), self.nrows, self.nt,
                  self.sizes, self.chunks, self.nchunks, self.size, self.threshold, ptd, hp)


cdef class Core:
    """The prepared step of one group of same-dtype tensors.

    ``Core(rule, params, slots)``: ``rule`` is the rule's number (its index
    in :data:`RULES`, the registry's order), ``params`` the
    1-D parameter arrays and ``slots`` one list of 1-D arrays per slot.  Every
    array is checked once here and kept alive by the core.  ``step`` and
    ``sumsq`` are the plan methods of the kernel contract.
    """

    cdef int rule, typenum
    cdef Py_ssize_t nt, nrows, nchunks
    cdef readonly Py_ssize_t size
    #: this group's parallel threshold (its rule's; -1: the dtype's default);
    #: fastopt.set_parallel_threshold's override wins over it
    cdef public Py_ssize_t threshold
    cdef char** ptrs
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t* chunks
    cdef double* partial
    cdef object arrays   # keeps the parameters and slots alive
    cdef cnp.ndarray norms

    def __cinit__(self, int rule, params, slots):
        cdef Py_ssize_t t, r
        cdef cnp.ndarray a
        if not 0 <= rule < NRULES or len(slots) != _NSLOTS[rule] or len(params) == 0:
            raise ValueError("Core: bad rule, slot count or empty group")
        self.rule = rule
        self.threshold = -1
        self.nt = len(params)
        self.nrows = 2 + len(slots)
        rows = [list(params), [None] * self.nt] + [list(s) for s in slots]
        first = rows[0][0]
        if not isinstance(first, cnp.ndarray) or cnp.PyArray_TYPE(first) not in (
                cnp.NPY_FLOAT, cnp.NPY_DOUBLE):
            raise TypeError("Core: parameters must be float32 or float64 arrays")
        self.typenum = cnp.PyArray_TYPE(first)
        self.arrays = rows
        self.ptrs = <char**>malloc(self.nrows * self.nt * sizeof(char*))
        self.sizes = <Py_ssize_t*>malloc(self.nt * sizeof(Py_ssize_t))
        if self.ptrs == NULL or self.sizes == NULL:
            raise MemoryError()
        self.nchunks = 0
        self.size = 0
        for t in range(self.nt):
            self.sizes[t] = cnp.PyArray_SIZE(<cnp.ndarray?>rows[0][t])
            self.nchunks += (self.sizes[t] + _CHUNK - 1) // _CHUNK
            self.size += self.sizes[t]
        for r in range(self.nrows):
            if len(rows[r]) != self.nt:
                raise ValueError("Core: every slot needs one array per parameter")
            for t in range(self.nt):
                if r == 1:
                    self.ptrs[self.nt + t] = NULL
                    continue
                a = rows[r][t]
                if (cnp.PyArray_TYPE(a) != self.typenum or cnp.PyArray_SIZE(a) != self.sizes[t]
                        or not cnp.PyArray_IS_C_CONTIGUOUS(a)
                        or not cnp.PyArray_ISWRITEABLE(a)):
                    raise ValueError("Core: arrays must be writeable, contiguous, of the "
                                     "parameters' dtype and sizes")
                self.ptrs[r * self.nt + t] = <char*>cnp.PyArray_DATA(a)
        self.chunks = _chunk_table(self.sizes, self.nt, self.nchunks)
        self.partial = <double*>malloc((self.nchunks + 1) * sizeof(double))
        if self.partial == NULL:
            raise MemoryError()
        self.norms = np.zeros(self.nt)

    def __dealloc__(self):
        free(self.ptrs)
        free(self.sizes)
        free(self.chunks)
        free(self.partial)

    cdef int _set_grads(self, grads) except -1:
        cdef Py_ssize_t t
        cdef object g
        cdef cnp.ndarray a
        if type(grads) is not list:
            grads = list(grads)
        if len(<list>grads) != self.nt:
            raise ValueError(f"expected {self.nt} gradients, got {len(grads)}")
        for t in range(self.nt):
            g = (<list>grads)[t]
            if g is None:
                self.ptrs[self.nt + t] = NULL
                continue
            if not cnp.PyArray_Check(g):
                raise TypeError(f"gradient {t} is a {type(g).__name__}, not an array")
            a = <cnp.ndarray>g
            if (cnp.PyArray_TYPE(a) != self.typenum or cnp.PyArray_SIZE(a) != self.sizes[t]
                    or not cnp.PyArray_IS_C_CONTIGUOUS(a)):
                raise ValueError(f"gradient {t} must be contiguous, of its parameter's "
                                 "dtype and size")
            self.ptrs[self.nt + t] = <char*>cnp.PyArray_DATA(a)
        return 0

    def step(self, grads, pt, scalars, double clipvalue=INFINITY):
        """One step of the rule over the group (see ``_contract.Plan.step``)."""
        cdef double s[MAX_SCALARS]
        cdef double hp[HP_SIZE]
        cdef list keep = []
        _read_scalars(scalars, _NSCALARS[self.rule], s)
        cdef const double* ptd = _pt_data(pt, self.nt, keep,
                                          4 if _NREDUCTIONS[self.rule] else 3)
        self._set_grads(grads)
        _pack(self.rule, s, clipvalue, hp)
        _dispatch(self.typenum, self.rule, self.ptrs, self.nrows, self.nt, self.sizes,
                  self.chunks, self.nchunks, self.size, self.threshold, ptd, hp)

    def reduce(self, grads, pt, scalars, double clipvalue=INFINITY):
        """A two_phase rule's first pass: the ``(n_reductions, n_tensors)``
        float64 sums (fastopt.two_phase); nothing is stored."""
        cdef double s[MAX_SCALARS]
        cdef double hp[HP_SIZE]
        cdef list keep = []
        cdef int nthreads = _num_threads
        cdef int nred = _NREDUCTIONS[self.rule]
        if nred == 0:
            raise ValueError("Core.reduce: not a two_phase rule")
        _read_scalars(scalars, _NSCALARS[self.rule], s)
        cdef const double* ptd = _pt_data(pt, self.nt, keep, 4)
        self._set_grads(grads)
        _pack(self.rule, s, clipvalue, hp)
        cdef cnp.ndarray sums = np.zeros((nred, self.nt))
        cdef cnp.ndarray partial = np.empty(nred * self.nchunks + 1)
        cdef double* out = <double*>cnp.PyArray_DATA(sums)
        cdef double* part = <double*>cnp.PyArray_DATA(partial)
        if not (FASTOPT_OPENMP and self.nchunks > 1
                and self.size >= _threshold(self.typenum, self.threshold)):
            nthreads = 1
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                _reduce_chunks(<float*>NULL, self.rule, self.ptrs, self.nrows, self.nt,
                               self.chunks, self.nchunks, ptd, hp, part, out, nthreads)
            else:
                _reduce_chunks(<double*>NULL, self.rule, self.ptrs, self.nrows, self.nt,
                               self.chunks, self.nchunks, ptd, hp, part, out, nthreads)
        return sums

    def sumsq(self, grads):
        """Per-tensor float64 sums of squares of ``grads`` (0 for None), in chunk order."""
        cdef int nthreads = _num_threads
        self._set_grads(grads)
        cdef double* out = <double*>cnp.PyArray_DATA(self.norms)
        if not (FASTOPT_OPENMP and self.nchunks > 1
                and self.size >= _threshold(self.typenum, -1)):  # the dtype's: not a rule
            nthreads = 1
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                _sumsq_chunks(<float*>NULL, self.ptrs, self.nt, self.chunks, self.nchunks,
                              self.partial, out, nthreads)
            else:
                _sumsq_chunks(<double*>NULL, self.ptrs, self.nt, self.chunks, self.nchunks,
                              self.partial, out, nthreads)
        return self.norms


# ---------------------------------------------------------------------------
# Threads and the parallel threshold (called through fastopt.backends).

def set_num_threads(int n):
    global _num_threads
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


def get_num_threads():
    return _num_threads


def default_threads():
    """OpenMP's default thread count here (1 without OpenMP)."""
    return _default_threads


def set_parallel_threshold(Py_ssize_t n, dtype):
    """The dtype's default threshold (a core without its own)."""
    global _threshold_f32, _threshold_f64
    if n < 0:
        raise ValueError(f"set_parallel_threshold: n must be >= 0, got {n}")
    if dtype == "float32":
        _threshold_f32 = n
    elif dtype == "float64":
        _threshold_f64 = n
    else:
        raise ValueError("set_parallel_threshold: dtype must be float32 or float64, "
                         f"got {dtype!r}")


def get_parallel_threshold(dtype):
    """The dtype's default threshold (without the override)."""
    if dtype == "float32":
        return _threshold_f32
    if dtype == "float64":
        return _threshold_f64
    raise ValueError(f"get_parallel_threshold: dtype must be float32 or float64, got {dtype!r}")


def set_parallel_override(Py_ssize_t n, dtype):
    """Override every threshold of the dtype with ``n`` (-1: no override)."""
    global _override_f32, _override_f64
    if n < -1:
        raise ValueError(f"set_parallel_override: n must be >= -1, got {n}")
    if dtype == "float32":
        _override_f32 = n
    elif dtype == "float64":
        _override_f64 = n
    else:
        raise ValueError("set_parallel_override: dtype must be float32 or float64, "
                         f"got {dtype!r}")


def get_parallel_override(dtype):
    """The dtype's override (-1: none)."""
    if dtype == "float32":
        return _override_f32
    if dtype == "float64":
        return _override_f64
    raise ValueError(f"get_parallel_override: dtype must be float32 or float64, got {dtype!r}")


# ---------------------------------------------------------------------------
# In-place passes over one tensor for the array work around the kernels
# (fastopt.buffers.HostArrays: moving averages, gradient accumulation), no
# temporary array: op 0 lerp y = a*y + b*x, 1 add_scaled y = y + x*a,
# 2 add_mean y = (y + x*a) / b; a and b rounded to the tensor's type first,
# as NumPy rounds Python floats -- the same bits as its expressions.

cdef void _inplace_chunk(floating* y, const floating* x, Py_ssize_t n, int op, double a,
                         double b) noexcept nogil:
    cdef floating a_ = <floating>a
    cdef floating b_ = <floating>b
    cdef Py_ssize_t i
    if op == 0:
        for i in range(n):
            y[i] = a_ * y[i] + b_ * x[i]
    elif op == 1:
        for i in range(n):
            y[i] = y[i] + x[i] * a_
    else:
        for i in range(n):
            y[i] = (y[i] + x[i] * a_) / b_


cdef void _inplace(floating* y, const floating* x, Py_ssize_t n, int op, double a, double b,
                   int nthreads) noexcept nogil:
    cdef Py_ssize_t c, s, nchunks = (n + _CHUNK - 1) // _CHUNK
    if nthreads > 1:
        for c in prange(nchunks, schedule="static", num_threads=nthreads):
            s = c * _CHUNK
            _inplace_chunk(y + s, x + s, min(_CHUNK, n - s), op, a, b)
    else:
        _inplace_chunk(y, x, n, op, a, b)


def inplace(cnp.ndarray y, cnp.ndarray x, int op, double a, double b):
    """One in-place pass over ``y`` (see above): ``y`` and ``x`` C-contiguous
    float32 or float64 arrays of one size and dtype, ``y`` writeable."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(y)
    cdef int typenum = cnp.PyArray_TYPE(y)
    if (typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE) \
            or cnp.PyArray_TYPE(x) != typenum or cnp.PyArray_SIZE(x) != n \
            or not cnp.PyArray_IS_C_CONTIGUOUS(y) or not cnp.PyArray_IS_C_CONTIGUOUS(x) \
            or not cnp.PyArray_ISWRITEABLE(y) or op < 0 or op > 2:
        raise ValueError("inplace: y and x must be C-contiguous float32 or float64 arrays of "
                         "one size and dtype, y writeable; op 0, 1 or 2")
    cdef int nthreads = 1
    cdef Py_ssize_t threshold   # the dtype's default, or the user's override
    if typenum == cnp.NPY_FLOAT:
        threshold = _override_f32 if _override_f32 >= 0 else _threshold_f32
    else:
        threshold = _override_f64 if _override_f64 >= 0 else _threshold_f64
    if FASTOPT_OPENMP and _num_threads > 1 and n >= threshold:
        nthreads = _num_threads
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            _inplace(<float*>cnp.PyArray_DATA(y), <const float*>cnp.PyArray_DATA(x), n, op,
                     a, b, nthreads)
        else:
            _inplace(<double*>cnp.PyArray_DATA(y), <const double*>cnp.PyArray_DATA(x), n, op,
                     a, b, nthreads)


# ---------------------------------------------------------------------------
# 8-bit optimizer state (state_dtype="int8", cython_backend.Int8Plan): each
# slot of a tensor is one 8-bit code per element and one float32 scale per
# block of Q8_BLOCK elements.  fastopt.reference.q8_encode / q8_decode are the
# specification (this is fastopt/backends/numba_q8.py's arithmetic, in C):
#
# * decode: |code| + bias, shifted into a float32's exponent and significand
#   (code 0: 0), the code's sign into the sign bit, times the block's scale;
# * a block's scale: its largest magnitude, a max over the values' bits (NaN
#   when a value is inf or NaN); 1 / scale, 0 for an all-zero block;
# * encode: q = |x| * (1 / scale) in float32, clamped to 1 (NaN and inf too),
#   its bits rounded to 3 significand bits (+ 2**19, >> 20), less the bias,
#   at least 0; signed codes take x's sign bit, and an unsigned code of a
#   value above 0 is at least 1.
#
# The bias and range values are reference.Q8_BIAS and Q8_TOP (the tests
# compare Q8_CONSTANTS below with them).

from libc.stdint cimport int8_t, uint8_t, uint32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define FASTOPT_Q8_BLOCK 256
    #define FASTOPT_Q8_BIAS_S ((127 << 3) - 127)
    #define FASTOPT_Q8_BIAS_U ((127 << 3) - 255)
    #define FASTOPT_Q8_TOP_S 127
    #define FASTOPT_Q8_TOP_U 255

    static inline uint32_t fastopt_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
    static inline float fastopt_float(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

    static void fastopt_q8_decode_s(const int8_t* c, float scale, float* x, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            int32_t v = c[i];
            int32_t mag = v < 0 ? -v : v;
            uint32_t bits = mag == 0 ? 0u : (uint32_t)(mag + FASTOPT_Q8_BIAS_S) << 20;
            x[i] = fastopt_float(bits | ((uint32_t)v & 0x80000000u)) * scale;
        }
    }

    static void fastopt_q8_decode_u(const uint8_t* c, float scale, float* x, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t mag = c[i];
            uint32_t bits = mag == 0 ? 0u : (mag + FASTOPT_Q8_BIAS_U) << 20;
            x[i] = fastopt_float(bits) * scale;
        }
    }

    /* the block's scale: its largest magnitude, NaN if a value is not finite
       (a max of the magnitudes' bits, as int32: they order as the values do,
       and SSE2 compares signed integers only) */
    static float fastopt_q8_scale(const float* x, Py_ssize_t n) {
        int32_t mx = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int32_t b = (int32_t)(fastopt_bits(x[i]) & 0x7FFFFFFFu);
            mx = b > mx ? b : mx;
        }
        return fastopt_float(mx >= 0x7F800000 ? 0x7FC00000u : (uint32_t)mx);
    }

    static inline float fastopt_q8_inv(float scale) {
        return scale != 0.0f ? 1.0f / scale : 0.0f;
    }

    static inline int32_t fastopt_q8_magnitude(float ax, float inv, int32_t bias) {
        float q = ax * inv;
        int32_t code;
        if (!(q < 1.0f)) q = 1.0f;   /* NaN, inf and >= 1: the top code */
        code = (int32_t)((fastopt_bits(q) + (1u << 19)) >> 20) - bias;
        return code < 0 ? 0 : code;
    }

    static void fastopt_q8_encode_s(const float* x, float inv, int8_t* c, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t xb = fastopt_bits(x[i]);
            int32_t code = fastopt_q8_magnitude(fastopt_float(xb & 0x7FFFFFFFu), inv,
                                                FASTOPT_Q8_BIAS_S);
            int32_t s = -(int32_t)(xb >> 31);   /* 0, or -1 where the sign bit is set */
            c[i] = (int8_t)((code ^ s) - s);
        }
    }

    static void fastopt_q8_encode_u(const float* x, float inv, uint8_t* c, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            float ax = fastopt_float(fastopt_bits(x[i]) & 0x7FFFFFFFu);
            int32_t code = fastopt_q8_magnitude(ax, inv, FASTOPT_Q8_BIAS_U);
            /* a value above 0 keeps a code above 0 */
            c[i] = (uint8_t)(code == 0 && ax * inv > 0.0f ? 1 : code);
        }
    }
    """
    enum:
        FASTOPT_Q8_BLOCK
        FASTOPT_Q8_BIAS_S
        FASTOPT_Q8_BIAS_U
        FASTOPT_Q8_TOP_S
        FASTOPT_Q8_TOP_U
    void fastopt_q8_decode_s(const int8_t* c, float scale, float* x, Py_ssize_t n) noexcept nogil
    void fastopt_q8_decode_u(const uint8_t* c, float scale, float* x, Py_ssize_t n) noexcept nogil
    float fastopt_q8_scale(const float* x, Py_ssize_t n) noexcept nogil
    float fastopt_q8_inv(float scale) noexcept nogil
    void fastopt_q8_encode_s(const float* x, float inv, int8_t* c, Py_ssize_t n) noexcept nogil
    void fastopt_q8_encode_u(const float* x, float inv, uint8_t* c, Py_ssize_t n) noexcept nogil

#: (block, {signed: bias}, {signed: top}) of the codes compiled in (the
#: tests compare them with fastopt.reference.Q8_BLOCK, Q8_BIAS and Q8_TOP).
Q8_CONSTANTS = (FASTOPT_Q8_BLOCK, {True: FASTOPT_Q8_BIAS_S, False: FASTOPT_Q8_BIAS_U},
                {True: FASTOPT_Q8_TOP_S, False: FASTOPT_Q8_TOP_U})


cdef inline void _q8_decode(bint sg, char* codes, float scale, float* x,
                            Py_ssize_t n) noexcept nogil:
    if sg:
        fastopt_q8_decode_s(<const int8_t*>codes, scale, x, n)
    else:
        fastopt_q8_decode_u(<const uint8_t*>codes, scale, x, n)


cdef inline float _q8_encode(bint sg, const float* x, char* codes,
                             Py_ssize_t n) noexcept nogil:
    # the block's new scale, then its codes; returns the scale
    cdef float scale = fastopt_q8_scale(x, n)
    cdef float inv = fastopt_q8_inv(scale)
    if sg:
        fastopt_q8_encode_s(x, inv, <int8_t*>codes, n)
    else:
        fastopt_q8_encode_u(x, inv, <uint8_t*>codes, n)
    return scale


cdef void _q8_span(int rule, char** ptrs, Py_ssize_t nt, Py_ssize_t t, Py_ssize_t s,
                   Py_ssize_t e, int k, const unsigned char* signs, const double* pt,
                   const double* hp) noexcept nogil:
    # elements [s, e) of tensor t (s on a block boundary), block by block: the
    # codes decoded into a float32 scratch row per slot (this thread's stack),
    # the rule's own float32 loop over the block, then each row encoded
    # against its new largest magnitude, the block's new scale.  ptrs rows:
    # 0 parameters, 1 gradients, 2..2+k the codes, 2+k..2+2k the scales.
    cdef float scratch[(MAX_ROWS - 2) * FASTOPT_Q8_BLOCK]
    cdef float* a[MAX_ROWS]
    cdef float* scales
    cdef Py_ssize_t b0, n, blk, j
    cdef double gs = pt[t], kp = pt[nt + t], l2 = pt[2 * nt + t]
    for j in range(k):
        a[2 + j] = scratch + j * FASTOPT_Q8_BLOCK
    b0 = s
    while b0 < e:
        n = min(<Py_ssize_t>FASTOPT_Q8_BLOCK, e - b0)
        blk = b0 // FASTOPT_Q8_BLOCK
        a[0] = (<float*>ptrs[t]) + b0
        a[1] = (<float*>ptrs[nt + t]) + b0
        for j in range(k):
            scales = <float*>ptrs[(2 + k + j) * nt + t]
            _q8_decode(signs[j], ptrs[(2 + j) * nt + t] + b0, scales[blk], a[2 + j], n)
        _LOOPS_F32[rule](a, n, hp, gs, kp, l2, 1.0)
        for j in range(k):
            scales = <float*>ptrs[(2 + k + j) * nt + t]
            scales[blk] = _q8_encode(signs[j], a[2 + j], ptrs[(2 + j) * nt + t] + b0, n)
        b0 += FASTOPT_Q8_BLOCK


cdef void _q8_serial(int rule, char** ptrs, Py_ssize_t nt, const Py_ssize_t* sizes, int k,
                     const unsigned char* signs, const double* pt,
                     const double* hp) noexcept nogil:
    cdef Py_ssize_t t
    for t in range(nt):
        if ptrs[nt + t] != NULL:
            _q8_span(rule, ptrs, nt, t, 0, sizes[t], k, signs, pt, hp)


cdef void _q8_parallel(int rule, char** ptrs, Py_ssize_t nt, const Py_ssize_t* chunks,
                       Py_ssize_t nchunks, int k, const unsigned char* signs,
                       const double* pt, const double* hp, int nthreads) noexcept nogil:
    # chunks are CHUNK elements, a multiple of the block: each block is one
    # thread's, and the results do not depend on the thread count
    cdef Py_ssize_t c, t
    for c in prange(nchunks, schedule="static", num_threads=nthreads):
        t = chunks[3 * c]
        if ptrs[nt + t] != NULL:
            _q8_span(rule, ptrs, nt, t, chunks[3 * c + 1], chunks[3 * c + 2], k, signs,
                     pt, hp)


cdef class Int8Core:
    """The prepared step of a group of float32 tensors with 8-bit slots.

    ``Int8Core(rule, signs, sizes)``: ``rule`` the rule's number (as for
    :class:`Core`), ``signs`` one flag per slot of the rule (int8 codes;
    false: uint8), ``sizes`` the tensors' element counts.  Like
    :class:`AddressedCore` the caller owns the memory and hands over a
    C-contiguous ``(2 + 2 * nslots, ntensors)`` intp pointer table at every
    step: row 0 the float32 parameters, row 1 the float32 gradients (0
    skips the tensor), then per slot its codes (``sizes[t]`` bytes), then
    per slot its float32 scales (one per ``Q8_BLOCK`` elements).  Nothing
    here can check those addresses: ``cython_backend.Int8Plan`` and
    :mod:`fastopt.multi_tensor` are the checked interfaces.
    """

    cdef int rule, k
    cdef unsigned char signs[MAX_ROWS]
    cdef Py_ssize_t nt, nrows, nchunks
    cdef readonly Py_ssize_t size
    #: this group's parallel threshold (-1: float32's default);
    #: fastopt.set_parallel_threshold's override wins over it
    cdef public Py_ssize_t threshold
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t* chunks
    cdef double* partial
    cdef cnp.ndarray norms

    def __cinit__(self, int rule, signs, sizes):
        cdef Py_ssize_t t
        cdef int j
        signs = tuple(signs)
        if not 0 <= rule < NRULES or len(signs) != _NSLOTS[rule] or len(signs) == 0 \
                or len(sizes) == 0:
            raise ValueError("Int8Core: bad rule, slot count or empty group")
        if _NREDUCTIONS[rule]:
            raise ValueError("Int8Core: 8-bit state is offered for elementwise rules only")
        self.rule = rule
        self.k = len(signs)
        for j in range(self.k):
            self.signs[j] = 1 if signs[j] else 0
        self.threshold = -1
        self.nt = len(sizes)
        self.nrows = 2 + 2 * self.k
        self.sizes = <Py_ssize_t*>malloc(self.nt * sizeof(Py_ssize_t))
        if self.sizes == NULL:
            raise MemoryError()
        self.nchunks = 0
        self.size = 0
        for t in range(self.nt):
            self.sizes[t] = sizes[t]
            if self.sizes[t] < 0:
                raise ValueError("Int8Core: negative size")
            self.nchunks += (self.sizes[t] + _CHUNK - 1) // _CHUNK
            self.size += self.sizes[t]
        self.chunks = _chunk_table(self.sizes, self.nt, self.nchunks)
        self.partial = <double*>malloc((self.nchunks + 1) * sizeof(double))
        if self.partial == NULL:
            raise MemoryError()
        self.norms = np.zeros(self.nt)

    def __dealloc__(self):
        free(self.sizes)
        free(self.chunks)
        free(self.partial)

    cdef char** _table(self, cnp.ndarray ptrs, bint write=False) except NULL:
        if not (cnp.PyArray_TYPE(ptrs) == cnp.NPY_INTP and cnp.PyArray_IS_C_CONTIGUOUS(ptrs)
                and cnp.PyArray_NDIM(ptrs) == 2 and cnp.PyArray_DIM(ptrs, 0) == self.nrows
                and cnp.PyArray_DIM(ptrs, 1) == self.nt
                and (cnp.PyArray_ISWRITEABLE(ptrs) or not write)):
            raise ValueError(f"ptrs must be a C-contiguous intp array of shape "
                             f"({self.nrows}, {self.nt}){', writeable' if write else ''}")
        return <char**>cnp.PyArray_DATA(ptrs)

    def set_grads(self, cnp.ndarray ptrs, grads):
        """Write the gradients' data pointers into row 1 of ``ptrs`` (None:
        0, the tensor is skipped); each gradient must be a C-contiguous
        float32 array of its tensor's size (checked: a ``TypeError`` or
        ``ValueError`` before anything is written to the tensors)."""
        cdef char** table = self._table(ptrs, True)
        cdef Py_ssize_t t
        cdef object g
        cdef cnp.ndarray a
        if type(grads) is not list:
            grads = list(grads)
        if len(<list>grads) != self.nt:
            raise ValueError(f"expected {self.nt} gradients, got {len(grads)}")
        for t in range(self.nt):
            g = (<list>grads)[t]
            if g is None:
                table[self.nt + t] = NULL
                continue
            if not cnp.PyArray_Check(g):
                raise TypeError(f"gradient {t} is a {type(g).__name__}, not an array")
            a = <cnp.ndarray>g
            if (cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT or cnp.PyArray_SIZE(a) != self.sizes[t]
                    or not cnp.PyArray_IS_C_CONTIGUOUS(a)):
                raise ValueError(f"gradient {t} must be a contiguous float32 array of its "
                                 "parameter's size")
            table[self.nt + t] = <char*>cnp.PyArray_DATA(a)

    def step(self, cnp.ndarray ptrs, pt, scalars, double clipvalue=INFINITY):
        """One step of the rule over the tensors at ``ptrs`` (see above)."""
        cdef double s[MAX_SCALARS]
        cdef double hp[HP_SIZE]
        cdef list keep = []
        cdef char** table = self._table(ptrs)
        cdef int nthreads = _num_threads
        _read_scalars(scalars, _NSCALARS[self.rule], s)
        cdef const double* ptd = _pt_data(pt, self.nt, keep)
        _pack(self.rule, s, clipvalue, hp)
        if (FASTOPT_OPENMP and nthreads > 1 and self.nchunks > 1
                and self.size >= _threshold(cnp.NPY_FLOAT, self.threshold)):
            with nogil:
                _q8_parallel(self.rule, table, self.nt, self.chunks, self.nchunks, self.k,
                             self.signs, ptd, hp, nthreads)
        elif self.size >= _CHUNK:   # worth releasing the GIL for
            with nogil:
                _q8_serial(self.rule, table, self.nt, self.sizes, self.k, self.signs, ptd,
                           hp)
        else:
            _q8_serial(self.rule, table, self.nt, self.sizes, self.k, self.signs, ptd, hp)

    def sumsq(self, cnp.ndarray ptrs):
        """Per-tensor float64 sums of squares of the gradients at row 1 of
        ``ptrs`` (0 for a skipped tensor), in chunk order (:meth:`Core.sumsq`)."""
        cdef char** table = self._table(ptrs)
        cdef int nthreads = _num_threads
        cdef double* out = <double*>cnp.PyArray_DATA(self.norms)
        if not (FASTOPT_OPENMP and self.nchunks > 1
                and self.size >= _threshold(cnp.NPY_FLOAT, -1)):
            nthreads = 1
        with nogil:
            _sumsq_chunks(<float*>NULL, table, self.nt, self.chunks, self.nchunks,
                          self.partial, out, nthreads)
        return self.norms


def q8_encode(cnp.ndarray x, bint signs):
    """``(codes, scales)`` of the C-contiguous float32 array ``x`` (int8 codes
    if ``signs``, else uint8): this backend's encoder over blocks of
    ``Q8_BLOCK`` elements (for the tests, which compare it with
    :func:`fastopt.reference.q8_encode`)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x), b0, m
    if cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT or not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise ValueError("q8_encode: x must be a C-contiguous float32 array")
    codes = np.empty(n, np.int8 if signs else np.uint8)
    scales = np.empty((n + FASTOPT_Q8_BLOCK - 1) // FASTOPT_Q8_BLOCK, np.float32)
    cdef const float* px = <const float*>cnp.PyArray_DATA(x)
    cdef char* pc = <char*>cnp.PyArray_DATA(<cnp.ndarray>codes)
    cdef float* ps = <float*>cnp.PyArray_DATA(<cnp.ndarray>scales)
    for b0 in range(0, n, FASTOPT_Q8_BLOCK):
        m = min(<Py_ssize_t>FASTOPT_Q8_BLOCK, n - b0)
        ps[b0 // FASTOPT_Q8_BLOCK] = _q8_encode(signs, px + b0, pc + b0, m)
    return codes, scales


def q8_decode(cnp.ndarray codes, cnp.ndarray scales):
    """The float32 values of C-contiguous int8 or uint8 ``codes`` and their
    float32 ``scales`` (one per ``Q8_BLOCK``): this backend's decoder."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(codes), b0, m
    cdef int typenum = cnp.PyArray_TYPE(codes)
    if (typenum != cnp.NPY_INT8 and typenum != cnp.NPY_UINT8) \
            or not cnp.PyArray_IS_C_CONTIGUOUS(codes) \
            or cnp.PyArray_TYPE(scales) != cnp.NPY_FLOAT \
            or not cnp.PyArray_IS_C_CONTIGUOUS(scales) \
            or cnp.PyArray_SIZE(scales) != (n + FASTOPT_Q8_BLOCK - 1) // FASTOPT_Q8_BLOCK:
        raise ValueError("q8_decode: C-contiguous int8 or uint8 codes and float32 scales, "
                         "one per block")
    out = np.empty(n, np.float32)
    cdef char* pc = <char*>cnp.PyArray_DATA(codes)
    cdef const float* ps = <const float*>cnp.PyArray_DATA(scales)
    cdef float* po = <float*>cnp.PyArray_DATA(<cnp.ndarray>out)
    for b0 in range(0, n, FASTOPT_Q8_BLOCK):
        m = min(<Py_ssize_t>FASTOPT_Q8_BLOCK, n - b0)
        _q8_decode(typenum == cnp.NPY_INT8, pc + b0, ps[b0 // FASTOPT_Q8_BLOCK], po + b0, m)
    return out
