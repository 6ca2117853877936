# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Compiled core of the Cython backend (see ``cython_backend.py``).

Three layers, all from one source for float32 and float64 (``floating``):

* the element loops, one per ``Rule.code`` (ten), parameterised by the packed
  scalar vector ``hp`` exactly as the Numba backend's ``_loop_*``;
* the C-level kernels declared in ``_cython_kernels.pxd`` (one per rule:
  pointers, length, the rule's scalars), for other Cython code;
* :class:`Core`, the prepared multi-tensor step behind ``cython_backend.Plan``:
  pointer and chunk tables built once, then one call per step that packs the
  scalars, reads the gradients' data pointers and walks the chunks, with
  OpenMP ``prange`` over chunks from the parallel threshold on.

Float32 tensors are updated in float32 arithmetic: every scalar is rounded to
the tensor's type once per loop, as in the Numba backend.  The build never
uses ``-ffast-math`` (nor ``-march=native``), so the compiler keeps the order
of every operation and results match the reference to rounding.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf, pow, INFINITY
from libc.stdlib cimport malloc, free
from libc.string cimport memset

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTOPT_OPENMP 1
    static int fastopt_default_threads(void) { return omp_get_max_threads(); }
    #else
    #define FASTOPT_OPENMP 0
    static int fastopt_default_threads(void) { return 1; }
    #endif
    """
    const int FASTOPT_OPENMP
    int fastopt_default_threads() noexcept nogil

#: Whether this build runs OpenMP threads (False: compiled without OpenMP,
#: e.g. FASTOPT_NO_OPENMP=1 or a compiler without it; every step is serial).
OPENMP = bool(FASTOPT_OPENMP)

#: Elements per chunk, the unit of work of one thread (as in the Numba backend).
CHUNK = 16384
cdef Py_ssize_t _CHUNK = CHUNK

cdef int _num_threads = fastopt_default_threads() if FASTOPT_OPENMP else 1
cdef int _default_threads = _num_threads
# group size (elements) from which the parallel driver runs; fastopt.backends
# sets the measured values from tuning.json
cdef Py_ssize_t _threshold_f32 = 1 << 17
cdef Py_ssize_t _threshold_f64 = 1 << 15


# ---------------------------------------------------------------------------
# Element loops.  Arguments: parameter, gradient and slot pointers, length,
# packed scalars hp (fastopt._rules.pack), the gradient scale gs, the decoupled
# weight-decay factor kp and the coupled weight decay l2.  The test on l2 is
# loop-invariant; gcc unswitches it at -O3, so l2 = 0 costs nothing and an
# infinite parameter never turns into a NaN gradient.

cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _g(floating x, floating gs, floating clip) noexcept nogil:
    # gradient transform: scale, then clamp; written so that NaN stays NaN
    x = x * gs
    if x > clip:
        x = clip
    elif x < -clip:
        x = -clip
    return x


cdef void _loop_sgd(floating* p, const floating* g, Py_ssize_t n, const double* hp,
                    double gs_, double kp_, double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], lr = <floating>hp[1]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        p[i] = p[i] * kp - lr * gi


cdef void _loop_sgd_momentum(floating* p, const floating* g, floating* m, Py_ssize_t n,
                             const double* hp, double gs_, double kp_,
                             double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], a = <floating>hp[1], mu = <floating>hp[2]
    cdef floating b = <floating>hp[3]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi, mi
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        mi = mu * m[i] + a * gi
        m[i] = mi
        p[i] = p[i] * kp + b * mi


cdef void _loop_sgd_nesterov(floating* p, const floating* g, floating* m, Py_ssize_t n,
                             const double* hp, double gs_, double kp_,
                             double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], a = <floating>hp[1], mu = <floating>hp[2]
    cdef floating b = <floating>hp[3], d = <floating>hp[4], mu2 = <floating>hp[5]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi, mi
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        mi = mu * m[i] + a * gi
        m[i] = mi
        p[i] = p[i] * kp + b * (mu2 * mi + d * gi)


cdef void _loop_adagrad(floating* p, const floating* g, floating* acc, Py_ssize_t n,
                        const double* hp, double gs_, double kp_, double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], lr = <floating>hp[1]
    cdef floating eps_in = <floating>hp[2], eps_out = <floating>hp[3]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi, ai
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        ai = acc[i] + gi * gi
        acc[i] = ai
        p[i] = p[i] * kp - lr * gi / (_sqrt(ai + eps_in) + eps_out)


cdef inline floating _centered_den(floating vi, floating ai) noexcept nogil:
    cdef floating d = vi - ai * ai
    if d < 0:  # rounding only; see fastopt.reference.rmsprop_centered
        d = 0
    return d


cdef void _loop_rmsprop(floating* p, const floating* g, floating* v, Py_ssize_t n,
                        const double* hp, double gs_, double kp_, double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], a = <floating>hp[1], rho = <floating>hp[2]
    cdef floating crho = <floating>hp[3], eps_in = <floating>hp[4], eps_out = <floating>hp[6]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi, vi
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        vi = rho * v[i] + crho * (gi * gi)
        v[i] = vi
        p[i] = p[i] * kp - a * gi / (_sqrt(vi + eps_in) + eps_out)


cdef void _loop_rmsprop_momentum(floating* p, const floating* g, floating* v, floating* mom,
                                 Py_ssize_t n, const double* hp, double gs_, double kp_,
                                 double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], a = <floating>hp[1], rho = <floating>hp[2]
    cdef floating crho = <floating>hp[3], eps_in = <floating>hp[4], mu = <floating>hp[5]
    cdef floating eps_out = <floating>hp[6], b = <floating>hp[7]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi, vi, mi
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        vi = rho * v[i] + crho * (gi * gi)
        v[i] = vi
        mi = mu * mom[i] + a * gi / (_sqrt(vi + eps_in) + eps_out)
        mom[i] = mi
        p[i] = p[i] * kp - b * mi


cdef void _loop_rmsprop_centered(floating* p, const floating* g, floating* v, floating* av,
                                 Py_ssize_t n, const double* hp, double gs_, double kp_,
                                 double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], a = <floating>hp[1], rho = <floating>hp[2]
    cdef floating crho = <floating>hp[3], eps_in = <floating>hp[4], eps_out = <floating>hp[6]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_
    cdef floating gi, vi, ai, den
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        vi = rho * v[i] + crho * (gi * gi)
        ai = rho * av[i] + crho * gi
        v[i] = vi
        av[i] = ai
        den = _sqrt(_centered_den(vi, ai) + eps_in) + eps_out
        p[i] = p[i] * kp - a * gi / den


cdef inline void _rcm_update(floating* p, floating* v, floating* av, floating* mom,
                             Py_ssize_t i, floating gi, floating a, floating rho,
                             floating crho, floating eps_in, floating mu, floating eps_out,
                             floating b, floating kp) noexcept nogil:
    cdef floating vi = rho * v[i] + crho * (gi * gi)
    cdef floating ai = rho * av[i] + crho * gi
    v[i] = vi
    av[i] = ai
    cdef floating den = _sqrt(_centered_den(vi, ai) + eps_in) + eps_out
    cdef floating mi = mu * mom[i] + a * gi / den
    mom[i] = mi
    p[i] = p[i] * kp - b * mi


cdef void _loop_rmsprop_centered_momentum(floating* p, const floating* g, floating* v,
                                          floating* av, floating* mom, Py_ssize_t n,
                                          const double* hp, double gs_, double kp_,
                                          double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], a = <floating>hp[1], rho = <floating>hp[2]
    cdef floating crho = <floating>hp[3], eps_in = <floating>hp[4], mu = <floating>hp[5]
    cdef floating eps_out = <floating>hp[6], b = <floating>hp[7]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_
    cdef Py_ssize_t i
    # Unswitched by hand: this loop is too long for gcc to unswitch on l2 by
    # itself, and with the test inside it gcc leaves the loop scalar (4x
    # slower than the other rules' loops).
    if l2 != 0:
        for i in range(n):
            _rcm_update(p, v, av, mom, i, _g(g[i], gs, clip) + l2 * p[i], a, rho, crho,
                        eps_in, mu, eps_out, b, kp)
    else:
        for i in range(n):
            _rcm_update(p, v, av, mom, i, _g(g[i], gs, clip), a, rho, crho, eps_in, mu,
                        eps_out, b, kp)


cdef void _loop_adam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                     const double* hp, double gs_, double kp_, double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], alpha = <floating>hp[1], c1 = <floating>hp[2]
    cdef floating c2 = <floating>hp[3], eps = <floating>hp[4]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi, mi, vi
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        mi = m[i] + (gi - m[i]) * c1
        vi = v[i] + (gi * gi - v[i]) * c2
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * kp - mi * alpha / (_sqrt(vi) + eps)


cdef void _loop_adam_amsgrad(floating* p, const floating* g, floating* m, floating* v,
                             floating* vh, Py_ssize_t n, const double* hp, double gs_,
                             double kp_, double l2_) noexcept nogil:
    cdef floating clip = <floating>hp[0], alpha = <floating>hp[1], c1 = <floating>hp[2]
    cdef floating c2 = <floating>hp[3], eps = <floating>hp[4]
    cdef floating gs = <floating>gs_, kp = <floating>kp_, l2 = <floating>l2_, gi, mi, vi, hi
    cdef Py_ssize_t i
    for i in range(n):
        gi = _g(g[i], gs, clip)
        if l2 != 0:
            gi = gi + l2 * p[i]
        mi = m[i] + (gi - m[i]) * c1
        vi = v[i] + (gi * gi - v[i]) * c2
        hi = vh[i]
        if vi > hi:
            hi = vi
        m[i] = mi
        v[i] = vi
        vh[i] = hi
        p[i] = p[i] * kp - mi * alpha / (_sqrt(hi) + eps)


cdef void _run(int code, floating* p, const floating* g, floating* s0, floating* s1,
               floating* s2, Py_ssize_t n, const double* hp, double gs, double kp,
               double l2) noexcept nogil:
    """The element loop of ``Rule.code`` over n elements (unused slots: NULL)."""
    if code == 0:
        _loop_sgd(p, g, n, hp, gs, kp, l2)
    elif code == 1:
        _loop_sgd_momentum(p, g, s0, n, hp, gs, kp, l2)
    elif code == 2:
        _loop_sgd_nesterov(p, g, s0, n, hp, gs, kp, l2)
    elif code == 3:
        _loop_adagrad(p, g, s0, n, hp, gs, kp, l2)
    elif code == 4:
        _loop_rmsprop(p, g, s0, n, hp, gs, kp, l2)
    elif code == 5:
        _loop_rmsprop_momentum(p, g, s0, s1, n, hp, gs, kp, l2)
    elif code == 6:
        _loop_rmsprop_centered(p, g, s0, s1, n, hp, gs, kp, l2)
    elif code == 7:
        _loop_rmsprop_centered_momentum(p, g, s0, s1, s2, n, hp, gs, kp, l2)
    elif code == 8:
        _loop_adam(p, g, s0, s1, n, hp, gs, kp, l2)
    elif code == 9:
        _loop_adam_amsgrad(p, g, s0, s1, s2, n, hp, gs, kp, l2)


cdef double sumsq(const floating* x, Py_ssize_t n) noexcept nogil:
    # four independent float64 accumulators, combined in a fixed order (the
    # Numba backend's _chunk_sumsq, so the two agree bit for bit)
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, x0, x1, x2, x3
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        x0 = x[i]
        x1 = x[i + 1]
        x2 = x[i + 2]
        x3 = x[i + 3]
        a0 += x0 * x0
        a1 += x1 * x1
        a2 += x2 * x2
        a3 += x3 * x3
    for i in range(n4, n):
        x0 = x[i]
        a0 += x0 * x0
    return (a0 + a1) + (a2 + a3)


# ---------------------------------------------------------------------------
# Scalar packing: fastopt._rules.pack in C, for the nogil kernels and the
# per-step latency of the plans.  tests/test_cython.py checks that both give
# the same bits for every rule.

cdef enum Packer:
    P_SGD, P_SGD_MOMENTUM, P_SGD_NESTEROV, P_ADAGRAD, P_RMSPROP, P_RMSPROP_MOMENTUM, P_ADAM,
    P_SGD_TORCH, P_ADAGRAD_TORCH, P_RMSPROP_TORCH, P_RMSPROP_MOMENTUM_TORCH, P_ADAM_TORCH

#: rule name -> packer (the C twin of ``_rules._PACKERS``)
PACKERS = {
    "sgd": P_SGD, "sgd_momentum": P_SGD_MOMENTUM, "sgd_nesterov": P_SGD_NESTEROV,
    "adagrad": P_ADAGRAD, "rmsprop": P_RMSPROP, "rmsprop_centered": P_RMSPROP,
    "rmsprop_momentum": P_RMSPROP_MOMENTUM, "rmsprop_centered_momentum": P_RMSPROP_MOMENTUM,
    "adam": P_ADAM, "adam_amsgrad": P_ADAM,
    "sgd_momentum_torch": P_SGD_TORCH, "sgd_nesterov_torch": P_SGD_TORCH,
    "adagrad_torch": P_ADAGRAD_TORCH,
    "rmsprop_torch": P_RMSPROP_TORCH, "rmsprop_centered_torch": P_RMSPROP_TORCH,
    "rmsprop_momentum_torch": P_RMSPROP_MOMENTUM_TORCH,
    "rmsprop_centered_momentum_torch": P_RMSPROP_MOMENTUM_TORCH,
    "adam_torch": P_ADAM_TORCH, "adam_amsgrad_torch": P_ADAM_TORCH,
}


cdef void _pack(int packer, const double* s, double clip, double* hp) noexcept nogil:
    """hp from the rule's public scalars s (see fastopt._rules.pack)."""
    cdef double bc1, root_bc2
    memset(hp, 0, 8 * sizeof(double))
    hp[0] = clip
    if packer == P_SGD:                     # lr
        hp[1] = s[0]
    elif packer == P_SGD_MOMENTUM or packer == P_SGD_NESTEROV:   # lr, mu
        hp[1] = -s[0]
        hp[2] = s[1]
        hp[3] = 1.0
        hp[5] = s[1]
        if packer == P_SGD_NESTEROV:
            hp[4] = -s[0]
    elif packer == P_ADAGRAD:               # lr, eps
        hp[1] = s[0]
        hp[2] = s[1]
    elif packer == P_RMSPROP or packer == P_RMSPROP_MOMENTUM:    # lr, rho, [mu,] eps
        hp[1] = s[0]
        hp[2] = s[1]
        hp[3] = 1.0 - s[1]
        if packer == P_RMSPROP:
            hp[4] = s[2]
        else:
            hp[4] = s[3]
            hp[5] = s[2]
        hp[7] = 1.0
    elif packer == P_ADAM:                  # alpha, b1, b2, eps
        hp[1] = s[0]
        hp[2] = 1.0 - s[1]
        hp[3] = 1.0 - s[2]
        hp[4] = s[3]
    elif packer == P_SGD_TORCH:             # lr, mu, dampening, step
        if s[3] <= 1:   # torch: the buffer starts as a copy of the first gradient
            hp[1] = 1.0
        else:
            hp[1] = 1.0 - s[2]
            hp[2] = s[1]
        hp[3] = -s[0]
        hp[4] = 1.0
        hp[5] = s[1]
    elif packer == P_ADAGRAD_TORCH:         # lr, eps, lr_decay, step
        hp[1] = s[0] / (1.0 + (s[3] - 1) * s[2])
        hp[3] = s[1]
    elif packer == P_RMSPROP_TORCH:         # lr, rho, eps
        hp[1] = s[0]
        hp[2] = s[1]
        hp[3] = 1.0 - s[1]
        hp[6] = s[2]
        hp[7] = 1.0
    elif packer == P_RMSPROP_MOMENTUM_TORCH:   # lr, rho, mu, eps
        hp[1] = 1.0
        hp[2] = s[1]
        hp[3] = 1.0 - s[1]
        hp[5] = s[2]
        hp[6] = s[3]
        hp[7] = s[0]
    elif packer == P_ADAM_TORCH:            # lr, b1, b2, eps, step
        bc1 = 1.0 - pow(s[1], s[4])
        root_bc2 = sqrt(1.0 - pow(s[2], s[4]))
        hp[1] = s[0] * root_bc2 / bc1
        hp[2] = 1.0 - s[1]
        hp[3] = 1.0 - s[2]
        hp[4] = s[3] * root_bc2


def pack(name, scalars, double clipvalue=INFINITY):
    """The packed ``hp`` tuple of rule ``name`` (for tests: equals ``_rules.pack``)."""
    cdef double s[5]
    cdef double hp[8]
    cdef int k
    if len(scalars) > 5:
        raise ValueError("at most 5 scalars")
    for k in range(len(scalars)):
        s[k] = scalars[k]
    _pack(PACKERS[name], s, clipvalue, hp)
    return tuple([hp[k] for k in range(8)])


# ---------------------------------------------------------------------------
# The C-level kernels of _cython_kernels.pxd: pack, then one element loop.

cdef void sgd(floating* param, const floating* grad, Py_ssize_t n, double learning_rate,
              double keep=1.0, double gscale=1.0, double l2=0.0,
              double clipvalue=INFINITY) noexcept nogil:
    cdef double s[1]
    cdef double hp[8]
    s[0] = learning_rate
    _pack(P_SGD, s, clipvalue, hp)
    _loop_sgd(param, grad, n, hp, gscale, keep, l2)


cdef void sgd_momentum(floating* param, const floating* grad, floating* momentum_buf,
                       Py_ssize_t n, double learning_rate, double momentum,
                       double keep=1.0, double gscale=1.0, double l2=0.0,
                       double clipvalue=INFINITY) noexcept nogil:
    cdef double s[2]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = momentum
    _pack(P_SGD_MOMENTUM, s, clipvalue, hp)
    _loop_sgd_momentum(param, grad, momentum_buf, n, hp, gscale, keep, l2)


cdef void sgd_nesterov(floating* param, const floating* grad, floating* momentum_buf,
                       Py_ssize_t n, double learning_rate, double momentum,
                       double keep=1.0, double gscale=1.0, double l2=0.0,
                       double clipvalue=INFINITY) noexcept nogil:
    cdef double s[2]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = momentum
    _pack(P_SGD_NESTEROV, s, clipvalue, hp)
    _loop_sgd_nesterov(param, grad, momentum_buf, n, hp, gscale, keep, l2)


cdef void adagrad(floating* param, const floating* grad, floating* accumulator,
                  Py_ssize_t n, double learning_rate, double epsilon,
                  double keep=1.0, double gscale=1.0, double l2=0.0,
                  double clipvalue=INFINITY) noexcept nogil:
    cdef double s[2]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = epsilon
    _pack(P_ADAGRAD, s, clipvalue, hp)
    _loop_adagrad(param, grad, accumulator, n, hp, gscale, keep, l2)


cdef void rmsprop(floating* param, const floating* grad, floating* velocity,
                  Py_ssize_t n, double learning_rate, double rho, double epsilon,
                  double keep=1.0, double gscale=1.0, double l2=0.0,
                  double clipvalue=INFINITY) noexcept nogil:
    cdef double s[3]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = epsilon
    _pack(P_RMSPROP, s, clipvalue, hp)
    _loop_rmsprop(param, grad, velocity, n, hp, gscale, keep, l2)


cdef void rmsprop_momentum(floating* param, const floating* grad, floating* velocity,
                           floating* momentum_buf, Py_ssize_t n, double learning_rate,
                           double rho, double momentum, double epsilon,
                           double keep=1.0, double gscale=1.0, double l2=0.0,
                           double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = momentum
    s[3] = epsilon
    _pack(P_RMSPROP_MOMENTUM, s, clipvalue, hp)
    _loop_rmsprop_momentum(param, grad, velocity, momentum_buf, n, hp, gscale, keep, l2)


cdef void rmsprop_centered(floating* param, const floating* grad, floating* velocity,
                           floating* average_gradient, Py_ssize_t n, double learning_rate,
                           double rho, double epsilon,
                           double keep=1.0, double gscale=1.0, double l2=0.0,
                           double clipvalue=INFINITY) noexcept nogil:
    cdef double s[3]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = epsilon
    _pack(P_RMSPROP, s, clipvalue, hp)
    _loop_rmsprop_centered(param, grad, velocity, average_gradient, n, hp, gscale, keep, l2)


cdef void rmsprop_centered_momentum(floating* param, const floating* grad,
                                    floating* velocity, floating* average_gradient,
                                    floating* momentum_buf, Py_ssize_t n,
                                    double learning_rate, double rho, double momentum,
                                    double epsilon,
                                    double keep=1.0, double gscale=1.0, double l2=0.0,
                                    double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = momentum
    s[3] = epsilon
    _pack(P_RMSPROP_MOMENTUM, s, clipvalue, hp)
    _loop_rmsprop_centered_momentum(param, grad, velocity, average_gradient, momentum_buf, n,
                                    hp, gscale, keep, l2)


cdef void adam(floating* param, const floating* grad, floating* momentum, floating* velocity,
               Py_ssize_t n, double alpha, double beta_1, double beta_2, double epsilon,
               double keep=1.0, double gscale=1.0, double l2=0.0,
               double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = alpha
    s[1] = beta_1
    s[2] = beta_2
    s[3] = epsilon
    _pack(P_ADAM, s, clipvalue, hp)
    _loop_adam(param, grad, momentum, velocity, n, hp, gscale, keep, l2)


cdef void adam_amsgrad(floating* param, const floating* grad, floating* momentum,
                       floating* velocity, floating* velocity_hat, Py_ssize_t n,
                       double alpha, double beta_1, double beta_2, double epsilon,
                       double keep=1.0, double gscale=1.0, double l2=0.0,
                       double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = alpha
    s[1] = beta_1
    s[2] = beta_2
    s[3] = epsilon
    _pack(P_ADAM, s, clipvalue, hp)
    _loop_adam_amsgrad(param, grad, momentum, velocity, velocity_hat, n, hp, gscale, keep, l2)


cdef void sgd_momentum_torch(floating* param, const floating* grad, floating* momentum_buf,
                             Py_ssize_t n, double learning_rate, double momentum,
                             double dampening, double step,
                             double keep=1.0, double gscale=1.0, double l2=0.0,
                             double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = momentum
    s[2] = dampening
    s[3] = step
    _pack(P_SGD_TORCH, s, clipvalue, hp)
    _loop_sgd_momentum(param, grad, momentum_buf, n, hp, gscale, keep, l2)


cdef void sgd_nesterov_torch(floating* param, const floating* grad, floating* momentum_buf,
                             Py_ssize_t n, double learning_rate, double momentum,
                             double dampening, double step,
                             double keep=1.0, double gscale=1.0, double l2=0.0,
                             double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = momentum
    s[2] = dampening
    s[3] = step
    _pack(P_SGD_TORCH, s, clipvalue, hp)
    _loop_sgd_nesterov(param, grad, momentum_buf, n, hp, gscale, keep, l2)


cdef void adagrad_torch(floating* param, const floating* grad, floating* accumulator,
                        Py_ssize_t n, double learning_rate, double epsilon,
                        double lr_decay, double step,
                        double keep=1.0, double gscale=1.0, double l2=0.0,
                        double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = epsilon
    s[2] = lr_decay
    s[3] = step
    _pack(P_ADAGRAD_TORCH, s, clipvalue, hp)
    _loop_adagrad(param, grad, accumulator, n, hp, gscale, keep, l2)


cdef void rmsprop_torch(floating* param, const floating* grad, floating* velocity,
                        Py_ssize_t n, double learning_rate, double rho, double epsilon,
                        double keep=1.0, double gscale=1.0, double l2=0.0,
                        double clipvalue=INFINITY) noexcept nogil:
    cdef double s[3]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = epsilon
    _pack(P_RMSPROP_TORCH, s, clipvalue, hp)
    _loop_rmsprop(param, grad, velocity, n, hp, gscale, keep, l2)


cdef void rmsprop_momentum_torch(floating* param, const floating* grad, floating* velocity,
                                 floating* momentum_buf, Py_ssize_t n,
                                 double learning_rate, double rho, double momentum,
                                 double epsilon,
                                 double keep=1.0, double gscale=1.0, double l2=0.0,
                                 double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = momentum
    s[3] = epsilon
    _pack(P_RMSPROP_MOMENTUM_TORCH, s, clipvalue, hp)
    _loop_rmsprop_momentum(param, grad, velocity, momentum_buf, n, hp, gscale, keep, l2)


cdef void rmsprop_centered_torch(floating* param, const floating* grad, floating* velocity,
                                 floating* average_gradient, Py_ssize_t n,
                                 double learning_rate, double rho, double epsilon,
                                 double keep=1.0, double gscale=1.0, double l2=0.0,
                                 double clipvalue=INFINITY) noexcept nogil:
    cdef double s[3]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = epsilon
    _pack(P_RMSPROP_TORCH, s, clipvalue, hp)
    _loop_rmsprop_centered(param, grad, velocity, average_gradient, n, hp, gscale, keep, l2)


cdef void rmsprop_centered_momentum_torch(floating* param, const floating* grad,
                                          floating* velocity, floating* average_gradient,
                                          floating* momentum_buf, Py_ssize_t n,
                                          double learning_rate, double rho,
                                          double momentum, double epsilon,
                                          double keep=1.0, double gscale=1.0, double l2=0.0,
                                          double clipvalue=INFINITY) noexcept nogil:
    cdef double s[4]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = rho
    s[2] = momentum
    s[3] = epsilon
    _pack(P_RMSPROP_MOMENTUM_TORCH, s, clipvalue, hp)
    _loop_rmsprop_centered_momentum(param, grad, velocity, average_gradient, momentum_buf, n,
                                    hp, gscale, keep, l2)


cdef void adam_torch(floating* param, const floating* grad, floating* momentum,
                     floating* velocity, Py_ssize_t n, double learning_rate,
                     double beta_1, double beta_2, double epsilon, double step,
                     double keep=1.0, double gscale=1.0, double l2=0.0,
                     double clipvalue=INFINITY) noexcept nogil:
    cdef double s[5]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = beta_1
    s[2] = beta_2
    s[3] = epsilon
    s[4] = step
    _pack(P_ADAM_TORCH, s, clipvalue, hp)
    _loop_adam(param, grad, momentum, velocity, n, hp, gscale, keep, l2)


cdef void adam_amsgrad_torch(floating* param, const floating* grad, floating* momentum,
                             floating* velocity, floating* velocity_hat, Py_ssize_t n,
                             double learning_rate, double beta_1, double beta_2,
                             double epsilon, double step,
                             double keep=1.0, double gscale=1.0, double l2=0.0,
                             double clipvalue=INFINITY) noexcept nogil:
    cdef double s[5]
    cdef double hp[8]
    s[0] = learning_rate
    s[1] = beta_1
    s[2] = beta_2
    s[3] = epsilon
    s[4] = step
    _pack(P_ADAM_TORCH, s, clipvalue, hp)
    _loop_adam_amsgrad(param, grad, momentum, velocity, velocity_hat, n, hp, gscale, keep, l2)


# ---------------------------------------------------------------------------
# Drivers over a group.  ptrs: (2 + nslots) rows of ntensors data pointers
# (row 0 parameters, row 1 gradients -- NULL skips the tensor -- then slots);
# chunks: (tensor, start, stop) triples; pt: the (3, ntensors) float64 rows
# gradient scale, decoupled keep factor, coupled l2.

cdef inline floating* _at(char** ptrs, Py_ssize_t row, Py_ssize_t nrows, Py_ssize_t nt,
                          Py_ssize_t t, Py_ssize_t start, floating* like) noexcept nogil:
    if row >= nrows:
        return NULL
    return (<floating*>ptrs[row * nt + t]) + start


cdef void _chunk_step(floating* like, int code, char** ptrs, Py_ssize_t nrows,
                      Py_ssize_t nt, Py_ssize_t t, Py_ssize_t s, Py_ssize_t e,
                      const double* pt, const double* hp) noexcept nogil:
    _run(code, _at(ptrs, 0, nrows, nt, t, s, like), _at(ptrs, 1, nrows, nt, t, s, like),
         _at(ptrs, 2, nrows, nt, t, s, like), _at(ptrs, 3, nrows, nt, t, s, like),
         _at(ptrs, 4, nrows, nt, t, s, like), e - s, hp, pt[t], pt[nt + t], pt[2 * nt + t])


cdef void _step_serial(floating* like, int code, char** ptrs, Py_ssize_t nrows,
                       Py_ssize_t nt, const Py_ssize_t* sizes, const double* pt,
                       const double* hp) noexcept nogil:
    # whole tensors: the loops are elementwise, so chunking changes no result
    cdef Py_ssize_t t
    for t in range(nt):
        if ptrs[nt + t] != NULL:
            _chunk_step(like, code, ptrs, nrows, nt, t, 0, sizes[t], pt, hp)


cdef void _step_parallel(floating* like, int code, char** ptrs, Py_ssize_t nrows,
                         Py_ssize_t nt, const Py_ssize_t* chunks, Py_ssize_t nchunks,
                         const double* pt, const double* hp, int nthreads) noexcept nogil:
    cdef Py_ssize_t c, t
    for c in prange(nchunks, schedule="static", num_threads=nthreads):
        t = chunks[3 * c]
        if ptrs[nt + t] != NULL:
            _chunk_step(like, code, ptrs, nrows, nt, t, chunks[3 * c + 1], chunks[3 * c + 2],
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


cdef void _dispatch(int typenum, int code, char** ptrs, Py_ssize_t nrows, Py_ssize_t nt,
                    const Py_ssize_t* sizes, const Py_ssize_t* chunks, Py_ssize_t nchunks,
                    Py_ssize_t size, const double* ptd, const double* hp) noexcept:
    """One step over a group: parallel over chunks from the threshold on, else
    serial (releasing the GIL from one chunk's worth of elements on)."""
    cdef int nthreads = _num_threads
    cdef bint parallel = (FASTOPT_OPENMP and nthreads > 1 and nchunks > 1 and
                          size >= (_threshold_f32 if typenum == cnp.NPY_FLOAT
                                   else _threshold_f64))
    if parallel:
        with nogil:
            if typenum == cnp.NPY_FLOAT:
                _step_parallel(<float*>NULL, code, ptrs, nrows, nt, chunks, nchunks, ptd, hp,
                               nthreads)
            else:
                _step_parallel(<double*>NULL, code, ptrs, nrows, nt, chunks, nchunks, ptd, hp,
                               nthreads)
    elif size >= _CHUNK:   # worth releasing the GIL for
        with nogil:
            if typenum == cnp.NPY_FLOAT:
                _step_serial(<float*>NULL, code, ptrs, nrows, nt, sizes, ptd, hp)
            else:
                _step_serial(<double*>NULL, code, ptrs, nrows, nt, sizes, ptd, hp)
    elif typenum == cnp.NPY_FLOAT:  # small: keeping the GIL is cheaper
        _step_serial(<float*>NULL, code, ptrs, nrows, nt, sizes, ptd, hp)
    else:
        _step_serial(<double*>NULL, code, ptrs, nrows, nt, sizes, ptd, hp)


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


cdef const double* _pt_data(pt, Py_ssize_t nt, list keep) except NULL:
    """The (3, nt) float64 per-tensor rows, converted if needed (kept alive in keep)."""
    if not (cnp.PyArray_Check(pt) and cnp.PyArray_TYPE(<cnp.ndarray>pt) == cnp.NPY_DOUBLE
            and cnp.PyArray_SIZE(<cnp.ndarray>pt) == 3 * nt
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>pt)):
        pt = cnp.PyArray_FROMANY(pt, cnp.NPY_DOUBLE, 2, 2, cnp.NPY_ARRAY_C_CONTIGUOUS)
        if cnp.PyArray_SIZE(<cnp.ndarray>pt) != 3 * nt:
            raise ValueError(f"pt must have shape (3, {nt})")
    keep.append(pt)
    return <const double*>cnp.PyArray_DATA(<cnp.ndarray>pt)


cdef class AddressedCore:
    """The prepared step of one group of same-dtype tensors given by address.

    ``AddressedCore(code, packer, nscalars, nslots, sizes, double)``: like
    :class:`Core`, but the caller owns the memory and hands over a pointer
    table at every step: ``step(ptrs, pt, scalars, clipvalue)`` where ``ptrs``
    is a C-contiguous ``(2 + nslots, ntensors)`` intp array (row 0
    parameters, row 1 gradients -- 0 skips the tensor -- then the slots), each
    address the start of ``sizes[t]`` contiguous float32 (or float64 when
    ``double``) elements.  Nothing here can check those addresses:
    :mod:`fastopt.multi_tensor` is the checked interface.
    """

    cdef int code, packer, nscalars, typenum
    cdef Py_ssize_t nt, nrows, nchunks
    cdef readonly Py_ssize_t size
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t* chunks

    def __cinit__(self, int code, int packer, int nscalars, int nslots, sizes, bint double):
        cdef Py_ssize_t t
        self.code, self.packer, self.nscalars = code, packer, nscalars
        self.typenum = cnp.NPY_DOUBLE if double else cnp.NPY_FLOAT
        self.nt = len(sizes)
        self.nrows = 2 + nslots
        if not 0 <= code <= 9 or self.nt == 0 or not 0 <= nslots <= 3 \
                or not 1 <= nscalars <= 5:
            raise ValueError("AddressedCore: bad rule or empty group")
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
        cdef double s[5]
        cdef double hp[8]
        cdef list keep = []
        if not (cnp.PyArray_TYPE(ptrs) == cnp.NPY_INTP and cnp.PyArray_IS_C_CONTIGUOUS(ptrs)
                and cnp.PyArray_NDIM(ptrs) == 2 and cnp.PyArray_DIM(ptrs, 0) == self.nrows
                and cnp.PyArray_DIM(ptrs, 1) == self.nt):
            raise ValueError(f"ptrs must be a C-contiguous intp array of shape "
                             f"({self.nrows}, {self.nt})")
        _read_scalars(scalars, self.nscalars, s)
        cdef const double* ptd = _pt_data(pt, self.nt, keep)
        _pack(self.packer, s, clipvalue, hp)
        _dispatch(self.typenum, self.code, <char**>cnp.PyArray_DATA(ptrs), self.nrows, self.nt,
                  self.sizes, self.chunks, self.nchunks, self.size, ptd, hp)


cdef class Core:
    """The prepared step of one group of same-dtype tensors.

    ``Core(code, packer, params, slots)``: ``code`` is the rule's element loop
    (``Rule.code``), ``packer`` its entry of :data:`PACKERS`, ``params`` the
    1-D parameter arrays and ``slots`` one list of 1-D arrays per slot.  Every
    array is checked once here and kept alive by the core.  ``step`` and
    ``sumsq`` are the plan methods of the kernel contract.
    """

    cdef int code, packer, nscalars, typenum
    cdef Py_ssize_t nt, nrows, nchunks
    cdef readonly Py_ssize_t size
    cdef char** ptrs
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t* chunks
    cdef double* partial
    cdef object arrays   # keeps the parameters and slots alive
    cdef cnp.ndarray norms

    def __cinit__(self, int code, int packer, int nscalars, params, slots):
        cdef Py_ssize_t t, r
        cdef cnp.ndarray a
        self.code, self.packer, self.nscalars = code, packer, nscalars
        self.nt = len(params)
        self.nrows = 2 + len(slots)
        if not 0 <= code <= 9 or self.nt == 0 or len(slots) > 3 or not 1 <= nscalars <= 5:
            raise ValueError("Core: bad rule or empty group")
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
        cdef double s[5]
        cdef double hp[8]
        cdef list keep = []
        _read_scalars(scalars, self.nscalars, s)
        cdef const double* ptd = _pt_data(pt, self.nt, keep)
        self._set_grads(grads)
        _pack(self.packer, s, clipvalue, hp)
        _dispatch(self.typenum, self.code, self.ptrs, self.nrows, self.nt, self.sizes,
                  self.chunks, self.nchunks, self.size, ptd, hp)

    def sumsq(self, grads):
        """Per-tensor float64 sums of squares of ``grads`` (0 for None), in chunk order."""
        cdef int nthreads = _num_threads
        self._set_grads(grads)
        cdef double* out = <double*>cnp.PyArray_DATA(self.norms)
        if not (FASTOPT_OPENMP and self.nchunks > 1 and self.size >= (
                _threshold_f32 if self.typenum == cnp.NPY_FLOAT else _threshold_f64)):
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
    if dtype == "float32":
        return _threshold_f32
    if dtype == "float64":
        return _threshold_f64
    raise ValueError(f"get_parallel_threshold: dtype must be float32 or float64, got {dtype!r}")
