# fastopt's kernels as C-level functions, for other Cython code.
#
#     from fastopt.backends._cython_kernels cimport adam
#
#     with nogil:
#         adam(&w[0], &g[0], &m[0], &v[0], n, alpha, 0.9, 0.999, 1e-7)
#
# One function per rule of fastopt._rules.RULES, with the rule's name and the
# argument order of the Python kernels (fastopt.get_backend(...).adam):
# pointers to the parameter, the gradient and the slots (Keras order), then
# the number of elements ``n``, then the rule's scalars, then the optional
# ``keep`` (decoupled weight-decay factor), ``gscale`` (gradient scale),
# ``l2`` (coupled weight decay) and ``clipvalue``.  ``floating`` is float or
# double, chosen by the pointer types; every array holds ``n`` elements of
# that one type.  A slot named like a scalar (SGD's ``momentum`` buffer) is
# ``momentum_buf``; the torch rules' ``step`` counts from 1.
#
# Each call updates the arrays in place, serially (call it from your own
# ``prange`` to split a tensor), without the GIL, without checks of any kind
# and without allocating.  The scalars are packed exactly as
# fastopt._rules.pack packs them; the formulas are in fastopt.reference.

from cython cimport floating

# sum of x[i]**2 in float64, four accumulators, a fixed order
cdef double sumsq(const floating* x, Py_ssize_t n) noexcept nogil

# -- Keras 3 rules (and plain SGD) --------------------------------------------------
cdef void sgd(floating* param, const floating* grad, Py_ssize_t n,
              double learning_rate,
              double keep=*, double gscale=*, double l2=*, double clipvalue=*) noexcept nogil
cdef void sgd_momentum(floating* param, const floating* grad, floating* momentum_buf,
                       Py_ssize_t n, double learning_rate, double momentum,
                       double keep=*, double gscale=*, double l2=*,
                       double clipvalue=*) noexcept nogil
cdef void sgd_nesterov(floating* param, const floating* grad, floating* momentum_buf,
                       Py_ssize_t n, double learning_rate, double momentum,
                       double keep=*, double gscale=*, double l2=*,
                       double clipvalue=*) noexcept nogil
cdef void adagrad(floating* param, const floating* grad, floating* accumulator,
                  Py_ssize_t n, double learning_rate, double epsilon,
                  double keep=*, double gscale=*, double l2=*,
                  double clipvalue=*) noexcept nogil
cdef void rmsprop(floating* param, const floating* grad, floating* velocity,
                  Py_ssize_t n, double learning_rate, double rho, double epsilon,
                  double keep=*, double gscale=*, double l2=*,
                  double clipvalue=*) noexcept nogil
cdef void rmsprop_momentum(floating* param, const floating* grad, floating* velocity,
                           floating* momentum_buf, Py_ssize_t n, double learning_rate,
                           double rho, double momentum, double epsilon,
                           double keep=*, double gscale=*, double l2=*,
                           double clipvalue=*) noexcept nogil
cdef void rmsprop_centered(floating* param, const floating* grad, floating* velocity,
                           floating* average_gradient, Py_ssize_t n, double learning_rate,
                           double rho, double epsilon,
                           double keep=*, double gscale=*, double l2=*,
                           double clipvalue=*) noexcept nogil
cdef void rmsprop_centered_momentum(floating* param, const floating* grad,
                                    floating* velocity, floating* average_gradient,
                                    floating* momentum_buf, Py_ssize_t n,
                                    double learning_rate, double rho, double momentum,
                                    double epsilon,
                                    double keep=*, double gscale=*, double l2=*,
                                    double clipvalue=*) noexcept nogil
cdef void adam(floating* param, const floating* grad, floating* momentum, floating* velocity,
               Py_ssize_t n, double alpha, double beta_1, double beta_2, double epsilon,
               double keep=*, double gscale=*, double l2=*,
               double clipvalue=*) noexcept nogil
cdef void adam_amsgrad(floating* param, const floating* grad, floating* momentum,
                       floating* velocity, floating* velocity_hat, Py_ssize_t n,
                       double alpha, double beta_1, double beta_2, double epsilon,
                       double keep=*, double gscale=*, double l2=*,
                       double clipvalue=*) noexcept nogil

# -- PyTorch 2.13 rules ------------------------------------------------------------
cdef void sgd_momentum_torch(floating* param, const floating* grad, floating* momentum_buf,
                             Py_ssize_t n, double learning_rate, double momentum,
                             double dampening, double step,
                             double keep=*, double gscale=*, double l2=*,
                             double clipvalue=*) noexcept nogil
cdef void sgd_nesterov_torch(floating* param, const floating* grad, floating* momentum_buf,
                             Py_ssize_t n, double learning_rate, double momentum,
                             double dampening, double step,
                             double keep=*, double gscale=*, double l2=*,
                             double clipvalue=*) noexcept nogil
cdef void adagrad_torch(floating* param, const floating* grad, floating* accumulator,
                        Py_ssize_t n, double learning_rate, double epsilon,
                        double lr_decay, double step,
                        double keep=*, double gscale=*, double l2=*,
                        double clipvalue=*) noexcept nogil
cdef void rmsprop_torch(floating* param, const floating* grad, floating* velocity,
                        Py_ssize_t n, double learning_rate, double rho, double epsilon,
                        double keep=*, double gscale=*, double l2=*,
                        double clipvalue=*) noexcept nogil
cdef void rmsprop_momentum_torch(floating* param, const floating* grad, floating* velocity,
                                 floating* momentum_buf, Py_ssize_t n,
                                 double learning_rate, double rho, double momentum,
                                 double epsilon,
                                 double keep=*, double gscale=*, double l2=*,
                                 double clipvalue=*) noexcept nogil
cdef void rmsprop_centered_torch(floating* param, const floating* grad, floating* velocity,
                                 floating* average_gradient, Py_ssize_t n,
                                 double learning_rate, double rho, double epsilon,
                                 double keep=*, double gscale=*, double l2=*,
                                 double clipvalue=*) noexcept nogil
cdef void rmsprop_centered_momentum_torch(floating* param, const floating* grad,
                                          floating* velocity, floating* average_gradient,
                                          floating* momentum_buf, Py_ssize_t n,
                                          double learning_rate, double rho,
                                          double momentum, double epsilon,
                                          double keep=*, double gscale=*, double l2=*,
                                          double clipvalue=*) noexcept nogil
cdef void adam_torch(floating* param, const floating* grad, floating* momentum,
                     floating* velocity, Py_ssize_t n, double learning_rate,
                     double beta_1, double beta_2, double epsilon, double step,
                     double keep=*, double gscale=*, double l2=*,
                     double clipvalue=*) noexcept nogil
cdef void adam_amsgrad_torch(floating* param, const floating* grad, floating* momentum,
                             floating* velocity, floating* velocity_hat, Py_ssize_t n,
                             double learning_rate, double beta_1, double beta_2,
                             double epsilon, double step,
                             double keep=*, double gscale=*, double l2=*,
                             double clipvalue=*) noexcept nogil
