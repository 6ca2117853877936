"""The Cython backend's rendering: per-rule loops and ``prepare()`` in C, and
the templates ``backends/_cython_kernels.{pyx,pxd}.tp`` rendered with them."""
from __future__ import annotations

import os

from .families import fingerprint, read_families
from .language import assigned_names
from .render import cython_lines, cython_prepare

# ---------------------------------------------------------------------------
# The Cython backend's rendering context (setup.py renders the templates
# fastopt/backends/_cython_kernels.{pyx,pxd}.tp with it).

#: The C types of the Cython loops and the suffix of their helpers.
CTYPES = (("float", "_f32"), ("double", "_f64"))


def slot_args(rule):
    """The public kernels' slot argument names: a slot named like a scalar
    (SGD's ``momentum`` buffer) gets a ``_buf`` suffix."""
    return tuple(s + "_buf" if s in rule.scalars else s for s in rule.slots)


#: Lanes of a two_phase rule's reductions: element i's square goes to lane
#: i % LANES (the Numba backend's numba_backend.LANES: the same bits).
LANES = 64


def _loop_lines(rule, ctype, suffix, with_l2, reduce=False):
    if reduce:
        return _reduce_lines(rule, ctype, suffix, with_l2)
    fn = rule.element
    names = ["g", "w", *rule.slots, *rule.prepared, *assigned_names(fn)]
    rename = {n: "e_" + n for n in names}
    out = ["        for i in range(n):",
           f"            e_g = _g{suffix}(g[i], gs, clip)",
           "            pi = p[i]"]
    if with_l2:
        out.append("            e_g = e_g + l2 * pi")
    out.append("            e_w = pi * kp")
    if getattr(rule, "two_phase", False):
        out.append("            w_in = e_w")
    out += [f"            e_{n} = s{j}[i]" for j, n in enumerate(rule.slots)]
    out += cython_lines(fn, rename, 3, ctype, suffix)
    out += [f"            s{j}[i] = e_{n}" for j, n in enumerate(rule.slots)]
    if getattr(rule, "two_phase", False):  # the displacement times the update scale
        out.append("            p[i] = w_in + us * (e_w - w_in)")
    else:
        out.append("            p[i] = e_w")
    return out


def _reduce_lines(rule, ctype, suffix, with_l2):
    """The first pass's loops: blocks of LANES elements, lane j of each
    reduction taking element ``b + j`` (the loop over lanes vectorises), then
    the tail, element ``nfull + j`` to lane ``j``."""
    from . import ELEMENT_REDUCTIONS
    fn = rule.element
    names = ["g", "w", *rule.slots, *rule.prepared, *assigned_names(fn)]
    rename = {n: "e_" + n for n in names}

    def element(pad):
        lines = [f"e_g = _g{suffix}(g[i], gs, clip)", "pi = p[i]"]
        if with_l2:
            lines.append("e_g = e_g + l2 * pi")
        lines += ["e_w = pi * kp", "w_in = e_w"]
        lines += [f"e_{n} = s{j}[i]" for j, n in enumerate(rule.slots)]
        out = [" " * pad + line for line in lines]
        out += cython_lines(fn, rename, pad // 4, ctype, suffix)
        for k, r in enumerate(rule.reductions):
            q = ELEMENT_REDUCTIONS[r].format(w="e_w", w_in="w_in")
            out += [f"{' ' * pad}x = <double>({q})",
                    f"{' ' * pad}acc[{k} * {LANES} + j] = acc[{k} * {LANES} + j] + x * x"]
        return out
    out = [f"        for b in range(0, nfull, {LANES}):",
           f"            for j in range({LANES}):",
           "                i = b + j"]
    out += element(16)
    out += ["        for i in range(nfull, n):", "            j = i - nfull"]
    out += element(12)
    return out


def cython_reduce(rule, ctype, suffix):
    """A two_phase rule's first pass over one chunk in C type ``ctype``: the
    element function without stores, each reduction's squared quantity added
    to its lane (:data:`LANES` float64 lanes, element ``i`` in lane
    ``i % LANES``), the lanes added in a fixed tree into ``out[0..]``."""
    fn = rule.element
    local = [n for n in assigned_names(fn) if n not in ("w", "g", *rule.slots)]
    names = ["e_g", "e_w", "pi", "w_in"] + [f"e_{n}" for n in (*rule.slots, *local)]
    nred = len(rule.reductions)
    out = [f"cdef void _reduce_{rule.name}{suffix}({ctype}** a, Py_ssize_t n, "
           "const double* hp,",
           "                  double gs_, double kp_, double l2_, double* out) "
           "noexcept nogil:",
           f"    cdef {ctype}* p = a[0]",
           f"    cdef const {ctype}* g = a[1]"]
    out += [f"    cdef {ctype}* s{j} = a[{2 + j}]" for j in range(len(rule.slots))]
    out += [f"    cdef {ctype} clip = <{ctype}>hp[0], gs = <{ctype}>gs_, kp = <{ctype}>kp_, "
            f"l2 = <{ctype}>l2_"]
    out += [f"    cdef {ctype} e_{n} = <{ctype}>hp[{j + 1}]" for j, n in enumerate(rule.prepared)]
    out += [f"    cdef {ctype} {', '.join(names)}",
            f"    cdef Py_ssize_t i, j, b, nfull = n - n % {LANES}",
            f"    cdef double x, acc[{nred * LANES}]",
            f"    for j in range({nred * LANES}):",
            "        acc[j] = 0.0",
            "    if l2 != 0:"]
    out += _loop_lines(rule, ctype, suffix, True, reduce=True)
    out.append("    else:")
    out += _loop_lines(rule, ctype, suffix, False, reduce=True)
    out += [f"    out[{k}] = _lanes_total(acc + {k * LANES}, {LANES})" for k in range(nred)]
    return "\n".join(out)


def cython_decide(rule):
    """``_decide_<rule>(sums, s) -> update scale``: a two_phase rule's decide()
    in C, reading its reductions from ``sums`` and public scalars from ``s``."""
    lines = cython_prepare(rule.decide, f"_decide_{rule.name}_", ("update_scale",))
    args = ", ".join([f"sums[{k}]" for k in range(len(rule.reductions))]
                     + [f"s[{k}]" for k in range(len(rule.scalars))])
    lines += ["", "",
              f"cdef double _decide_{rule.name}(const double* sums, const double* s) "
              "noexcept nogil:",
              "    cdef double out[1]",
              f"    _decide_{rule.name}_({args}, out)",
              "    return out[0]"]
    return "\n".join(lines)


def cython_loop(rule, ctype, suffix):
    """The element loop of ``rule`` in C type ``ctype``, unswitched by hand on
    the coupled weight decay (gcc does not unswitch long loops by itself, and
    then does not vectorise them)."""
    fn = rule.element
    local = [n for n in assigned_names(fn) if n not in ("w", "g", *rule.slots)]
    names = ["e_g", "e_w", "pi"] + [f"e_{n}" for n in (*rule.slots, *local)]
    if getattr(rule, "two_phase", False):
        names.append("w_in")
    out = [f"cdef void _loop_{rule.name}{suffix}({ctype}** a, Py_ssize_t n, const double* hp,",
           "                  double gs_, double kp_, double l2_, double us_) noexcept nogil:",
           f"    cdef {ctype}* p = a[0]",
           f"    cdef const {ctype}* g = a[1]"]
    out += [f"    cdef {ctype}* s{j} = a[{2 + j}]" for j in range(len(rule.slots))]
    out += [f"    cdef {ctype} clip = <{ctype}>hp[0], gs = <{ctype}>gs_, kp = <{ctype}>kp_, "
            f"l2 = <{ctype}>l2_"]
    if getattr(rule, "two_phase", False):
        out.append(f"    cdef {ctype} us = <{ctype}>us_")
    out += [f"    cdef {ctype} e_{n} = <{ctype}>hp[{j + 1}]" for j, n in enumerate(rule.prepared)]
    out += [f"    cdef {ctype} {', '.join(names)}", "    cdef Py_ssize_t i",
            "    if l2 != 0:"]
    out += _loop_lines(rule, ctype, suffix, True)
    out.append("    else:")
    out += _loop_lines(rule, ctype, suffix, False)
    return "\n".join(out)


def cython_prepare_wrapper(rule):
    """``_prepare_<rule>(s, out)``: the rule's prepare() in C, reading its
    public scalars from ``s``."""
    lines = cython_prepare(rule.prepare, f"_prepare_{rule.name}_", rule.prepared)
    args = ", ".join(f"s[{k}]" for k in range(len(rule.scalars)))
    lines += ["", "",
              f"cdef void _prepare_{rule.name}(const double* s, double* out) noexcept nogil:",
              f"    _prepare_{rule.name}_({args}, out)"]
    return "\n".join(lines)


def cython_context(package_dir):
    """The namespace the Cython templates are rendered with."""
    rules = read_families(package_dir)
    return {"rules": rules, "ctypes": CTYPES, "cython_loop": cython_loop,
            "cython_prepare_wrapper": cython_prepare_wrapper, "slot_args": slot_args,
            "cython_reduce": cython_reduce, "cython_decide": cython_decide,
            "max_reductions": max([len(r.reductions) for r in rules] + [1]),
            "fingerprint": fingerprint,
            "max_slots": max(len(r.slots) for r in rules),
            "max_scalars": max(len(r.scalars) for r in rules),
            "max_prepared": max(len(r.prepared) for r in rules)}


def render_cython(package_dir):
    """Render ``backends/_cython_kernels.{pyx,pxd}`` from their ``.tp``
    templates with Cython's Tempita; return the written paths."""
    from Cython import Tempita
    ctx = cython_context(package_dir)
    written = []
    for ext in ("pyx", "pxd"):
        src = os.path.join(package_dir, "backends", f"_cython_kernels.{ext}.tp")
        dst = src[:-3]
        with open(src, encoding="utf-8") as f:
            text = Tempita.sub(f.read(), **ctx)
        old = None
        if os.path.exists(dst):
            with open(dst, encoding="utf-8") as f:
                old = f.read()
        if old != text:  # keep the time stamp (and Cython's build cache) otherwise
            with open(dst, "w", encoding="utf-8") as f:
                f.write(text)
        written.append(dst)
    return written
