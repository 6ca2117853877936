"""Rendering checked functions of the element language as Python (Numba CPU,
CUDA) or Cython statements, and the Python helpers both Numba targets compile."""
from __future__ import annotations

import ast

from .language import _BINOPS, _CMPOPS, LanguageError, assigned_names

# ---------------------------------------------------------------------------
# Rendering.  Names are renamed through ``rename`` (a dict); literals are
# wrapped by ``literal`` (so that float32 code stays float32).

class _Expr:
    def __init__(self, rename, literal, calls, power):
        self.rename, self.literal, self.calls, self.power = rename, literal, calls, power

    def __call__(self, node):
        if isinstance(node, ast.Constant):
            return self.literal(repr(float(node.value)))
        if isinstance(node, ast.Name):
            return self.rename.get(node.id, node.id)
        if isinstance(node, ast.BinOp):
            a, b = self(node.left), self(node.right)
            if isinstance(node.op, ast.Pow):
                return self.power(a, b)
            return f"({a} {_BINOPS[type(node.op)]} {b})"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return f"(not {self(node.operand)})"
            return f"({'-' if isinstance(node.op, ast.USub) else '+'}{self(node.operand)})"
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            return f"{self.calls[name]}({', '.join(self(a) for a in node.args)})"
        if isinstance(node, ast.Compare):
            return f"({self(node.left)} {_CMPOPS[type(node.ops[0])]} " \
                   f"{self(node.comparators[0])})"
        if isinstance(node, ast.BoolOp):
            op = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + op.join(self(v) for v in node.values) + ")"
        raise LanguageError(f"cannot render {type(node).__name__}")  # pragma: no cover


def _lines(body, expr, indent, on_return, out):
    pad = "    " * indent
    for node in body:
        if isinstance(node, ast.Expr):
            continue
        if isinstance(node, ast.Assign):
            out.append(f"{pad}{expr(node.targets[0])} = {expr(node.value)}")
        elif isinstance(node, ast.AugAssign):
            t = expr(node.target)
            out.append(f"{pad}{t} = {t} {_BINOPS[type(node.op)]} {expr(node.value)}")
        elif isinstance(node, ast.If):
            out.append(f"{pad}if {expr(node.test)}:")
            _lines(node.body, expr, indent + 1, on_return, out)
            orelse = node.orelse
            while len(orelse) == 1 and isinstance(orelse[0], ast.If):
                out.append(f"{pad}elif {expr(orelse[0].test)}:")
                _lines(orelse[0].body, expr, indent + 1, on_return, out)
                orelse = orelse[0].orelse
            if orelse:
                out.append(f"{pad}else:")
                _lines(orelse, expr, indent + 1, on_return, out)
        elif isinstance(node, ast.Return):
            on_return(node, pad, out)
    return out


# The calls whose Python form is the same for Numba CPU and CUDA (each backend
# compiles these with its own decorator): np.maximum / np.minimum semantics,
# a NaN wins and a tie returns the first argument, written as selects so that
# loops vectorise.

def fmax(a, b):
    return b if (b > a or b != b) else a


def fmin(a, b):
    return b if (b < a or b != b) else a


def fabs(x):
    return abs(x)


#: Python spellings of the calls (Numba CPU and CUDA): helpers the backends define.
PY_CALLS = {"sqrt": "_sqrt", "abs": "_abs", "min": "_fmin", "max": "_fmax",
            "copysign": "_copysign", "sign": "_sign", "pow": "_pow"}


def python_lines(fn, rename, indent, literal="dt({})"):
    """An element function's body as Python statements (Numba, CUDA), its
    arguments renamed by ``rename`` (the ``return`` becomes nothing: the
    returned names are the renamed locals)."""
    expr = _Expr(rename, literal.format, PY_CALLS, lambda a, b: f"_pow({a}, {b})")
    out = _lines(fn.body, expr, indent, lambda node, pad, out: None, [])
    return out


#: C spellings for the Cython backend (inline helpers its template defines).
C_CALLS = {"sqrt": "_sqrt", "abs": "_abs", "min": "_fmin", "max": "_fmax",
           "copysign": "_copysign", "sign": "_sign", "pow": "_pow"}


def cython_lines(fn, rename, indent, ctype, suffix):
    """An element function's body as Cython statements in C type ``ctype``,
    the calls to the template's helpers named ``<helper><suffix>`` (declare
    the locals: :func:`assigned_names`)."""
    calls = {k: v + suffix for k, v in C_CALLS.items()}
    expr = _Expr(rename, lambda v: f"(<{ctype}>{v})", calls,
                 lambda a, b: f"_pow{suffix}({a}, {b})")
    return _lines(fn.body, expr, indent, lambda node, pad, out: None, [])


def cython_prepare(fn, name, keys):
    """A ``prepare`` function as a Cython ``cdef`` function that writes the
    prepared scalars to ``out[0..]`` (float64, as in Python)."""
    args = [a.arg for a in fn.args.args]
    expr = _Expr({}, lambda v: v, {**C_CALLS, "sqrt": "sqrt", "pow": "pow",
                                   "abs": "fabs", "copysign": "copysign"},
                 lambda a, b: f"pow({a}, {b})")

    def on_return(node, pad, out):
        for k, (key, value) in enumerate(zip(node.value.keys, node.value.values)):
            out.append(f"{pad}out[{k}] = {expr(value)}")
        out.append(f"{pad}return")

    locals_ = [n for n in assigned_names(fn) if n not in args]
    head = [f"cdef void {name}({', '.join('double ' + a for a in args)}, double* out) "
            "noexcept nogil:"]
    if locals_:
        head.append(f"    cdef double {', '.join(locals_)}")
    return head + _lines(fn.body, expr, 1, on_return, [])
