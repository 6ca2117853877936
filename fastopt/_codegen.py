"""The element language, and the code every backend is generated from.

An update rule is written once, in a family module of :mod:`fastopt.algorithms`,
as two small functions in a restricted subset of Python:

* ``prepare(<public scalars>)`` turns the rule's public scalars (what the
  kernels take: ``learning_rate``, ``beta_1``, ``step`` ...) into the *named*
  per-step scalars the element function reads, in float64, once per step.
  Its body assigns names, branches with ``if``/``else`` and ends every path
  with ``return {"name": expression, ...}`` (the same keys, in the same order,
  on every path: the order is the kernels' scalar order).
* ``element(g, w, <slots>, <prepared scalars>)`` updates one element: ``g`` is
  the gradient after scaling, clipping and coupled weight decay, ``w`` the
  parameter after decoupled weight decay, the slots are the optimizer state
  (Keras's slot names, in order).  The body assigns names and branches, and
  ends with ``return w, <slots>`` -- the new values.

The language (checked by :func:`check_element` and :func:`check_prepare`):
float literals and names; ``+ - * /`` and ``**``; unary ``-``; comparisons
(one operator each) and ``and``/``or``/``not`` in conditions; ``if``/``elif``/
``else``; the calls ``sqrt`` (``math.sqrt``), ``abs``, ``min``, ``max``,
``copysign`` (``math.copysign``), ``sign`` and ``pow``.  ``min`` and ``max``
follow NumPy's ``np.minimum``/``np.maximum`` for NaN: a NaN argument wins;
on a tie they return the first argument (NumPy returns the second, which
differs for +0 and -0 only), identically on every backend.  ``sign(x)`` is
-1 or 1, and ``x`` itself for 0, -0 and NaN (``np.sign(-0.0)`` is +0).

This module depends on the standard library only: ``setup.py`` loads it by
path in the build environment (setuptools, Cython, NumPy; no Numba, no
fastopt) to render the Cython backend from the family modules' source,
which it parses and never imports (:func:`read_families`).  At run time the
Numba and CUDA backends render the same functions into their loops
(:func:`python_lines`).
"""
from __future__ import annotations

import ast
import os

__all__ = ["LanguageError", "ParsedRule", "check_element", "check_prepare", "read_families",
           "parse_function", "prepared_names", "python_lines", "cython_lines", "assigned_names"]

#: The calls of the language and their arity.
CALLS = {"sqrt": 1, "abs": 1, "min": 2, "max": 2, "copysign": 2, "sign": 1, "pow": 2}
_MATH_ALIASES = {"sqrt", "copysign", "pow"}  # also accepted as math.<name>
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
           ast.NotEq: "!="}


class LanguageError(ValueError):
    """A rule's ``prepare`` or ``element`` function steps outside the language."""


def _fail(fn, node, msg):
    raise LanguageError(f"{fn.name}, line {getattr(node, 'lineno', '?')}: {msg}")


def _call_name(fn, node):
    f = node.func
    if isinstance(f, ast.Name) and f.id in CALLS:
        name = f.id
    elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
          and f.value.id == "math" and f.attr in _MATH_ALIASES):
        name = f.attr
    else:
        _fail(fn, node, f"call of {ast.unparse(f)!r}; the language has {sorted(CALLS)}")
    if node.keywords or len(node.args) != CALLS[name]:
        _fail(fn, node, f"{name}() takes {CALLS[name]} positional argument(s)")
    return name


def _check_expr(fn, node, names, condition=False):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            _fail(fn, node, f"constant {node.value!r}: only int and float literals")
    elif isinstance(node, ast.Name):
        if node.id not in names:
            _fail(fn, node, f"{node.id!r} is read before it is assigned (or is a global)")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS and not isinstance(node.op, ast.Pow):
            _fail(fn, node, f"operator {type(node.op).__name__}")
        _check_expr(fn, node.left, names)
        _check_expr(fn, node.right, names)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not) and condition:
            _check_expr(fn, node.operand, names, True)
        elif isinstance(node.op, (ast.USub, ast.UAdd)):
            _check_expr(fn, node.operand, names)
        else:
            _fail(fn, node, f"unary {type(node.op).__name__}")
    elif isinstance(node, ast.Call):
        _call_name(fn, node)
        for a in node.args:
            _check_expr(fn, a, names)
    elif isinstance(node, ast.Compare) and condition:
        if len(node.ops) != 1 or type(node.ops[0]) not in _CMPOPS:
            _fail(fn, node, "one comparison (<, <=, >, >=, ==, !=) at a time")
        _check_expr(fn, node.left, names)
        _check_expr(fn, node.comparators[0], names)
    elif isinstance(node, ast.BoolOp) and condition:
        for v in node.values:
            _check_expr(fn, v, names, True)
    else:
        _fail(fn, node, f"{type(node).__name__} is not part of the element language")


def _check_block(fn, body, names, final):
    """Check statements; ``final(node, names)`` checks a ``return``.  Returns
    whether the block always returns."""
    for k, node in enumerate(body):
        last = k == len(body) - 1
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            continue  # a docstring or comment string
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                _fail(fn, node, "assign to one plain name at a time")
            _check_expr(fn, node.value, names)
            names.add(node.targets[0].id)
        elif isinstance(node, ast.AugAssign):
            if not isinstance(node.target, ast.Name) or type(node.op) not in _BINOPS:
                _fail(fn, node, "augmented assignment: name += - *= /= expression")
            _check_expr(fn, node.target, names)
            _check_expr(fn, node.value, names)
        elif isinstance(node, ast.If):
            _check_expr(fn, node.test, names, condition=True)
            inner, other = set(names), set(names)
            r1 = _check_block(fn, node.body, inner, final)
            r2 = _check_block(fn, node.orelse, other, final) if node.orelse else False
            # a name is defined after the if only where both branches define it
            names |= (inner if r2 else set()) | (other if r1 else set()) | (inner & other)
            if r1 and r2:
                if not last:
                    _fail(fn, node.body[-1], "statements after a return")
                return True
        elif isinstance(node, ast.Return):
            if not last:
                _fail(fn, node, "statements after a return")
            final(node, names)
            return True
        else:
            _fail(fn, node, f"{type(node).__name__} statements are not part of the language")
    return False


def _arg_names(fn):
    a = fn.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults:
        _fail(fn, fn, "plain positional arguments only")
    return [x.arg for x in a.args]


def check_element(fn, slots, scalars):
    """Check an element function (an ``ast.FunctionDef``) against the language.

    Its arguments must be ``g, w, *slots, *scalars`` and every path must end
    with ``return w, *slots`` (the names; their new values)."""
    args = _arg_names(fn)
    want = ["g", "w", *slots, *scalars]
    if args != want:
        _fail(fn, fn, f"arguments {args}, expected {want} (g, w, the slots, the prepared "
                      "scalars in prepare()'s order)")

    def final(node, names):
        v = node.value
        got = [e.id if isinstance(e, ast.Name) else None
               for e in (v.elts if isinstance(v, ast.Tuple) else [v])] if v else []
        if got != ["w", *slots]:
            _fail(fn, node, f"must return {', '.join(['w', *slots])} (the names)")

    if not _check_block(fn, fn.body, set(args), final):
        _fail(fn, fn, "the last statement must return the new values")


def check_prepare(fn):
    """Check a ``prepare`` function; return the names of the scalars it
    prepares (the keys of its returned dicts, identical on every path)."""
    args = _arg_names(fn)
    keys = []

    def final(node, names):
        v = node.value
        if not isinstance(v, ast.Dict) or not v.keys:
            _fail(fn, node, "must return a dict literal {'name': expression, ...}")
        got = []
        for k, e in zip(v.keys, v.values):
            if not (isinstance(k, ast.Constant) and isinstance(k.value, str)
                    and k.value.isidentifier()):
                _fail(fn, node, "dict keys must be string literals that are identifiers")
            _check_expr(fn, e, names)
            got.append(k.value)
        if keys and got != keys:
            _fail(fn, node, f"returns keys {got} here and {keys} elsewhere")
        keys[:] = got

    if not _check_block(fn, fn.body, set(args), final):
        _fail(fn, fn, "every path must return a dict")
    return tuple(keys)


def parse_function(source):
    """The first ``FunctionDef`` of ``source`` (dedented function source)."""
    import textwrap
    tree = ast.parse(textwrap.dedent(source))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            return node
    raise LanguageError("no function definition in the source")


def prepared_names(fn):
    return check_prepare(fn)


def assigned_names(fn):
    """Names assigned in a function body, in first-assignment order."""
    out = []
    for node in ast.walk(fn):
        target = node.targets[0] if isinstance(node, ast.Assign) else \
            node.target if isinstance(node, ast.AugAssign) else None
        if isinstance(target, ast.Name) and target.id not in out:
            out.append(target.id)
    return out


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


# ---------------------------------------------------------------------------
# Reading the family modules without importing them (the build environment).

class ParsedRule:
    """What the renderers need of one rule, read from a family module's source."""

    def __init__(self, name, slots, scalars, convention, prepare, element, bf16):
        self.name, self.slots, self.scalars = name, tuple(slots), tuple(scalars)
        self.convention, self.prepare, self.element = convention, prepare, element
        self.bf16 = bf16
        self.prepared = check_prepare(prepare)
        check_element(element, self.slots, self.prepared)
        if [a.arg for a in prepare.args.args] != list(self.scalars):
            raise LanguageError(f"{name}: prepare() takes {self.scalars}")


def _literal(node):
    return ast.literal_eval(node)


def read_family(path):
    """The rules declared in one family module (``Rule(...)`` calls at module
    level, keyword arguments: literals, or names of functions of the module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = _literal(node.value)
            except ValueError:
                pass
    rules = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "Rule"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        name = _literal(node.args[0]) if node.args else _literal(kw["name"])

        def value(key, default=None):
            v = kw.get(key)
            if v is None:
                return default
            if isinstance(v, ast.Name):
                return functions[v.id] if v.id in functions else consts[v.id]
            return _literal(v)

        rules.append(ParsedRule(name, value("slots", ()), value("scalars", ()),
                                value("convention", "keras"), value("prepare"),
                                value("element"), value("bf16_refusal") is None))
    return rules


def read_families(package_dir):
    """Every rule of every family listed in ``algorithms/__init__.py``'s
    ``FAMILIES``, in registry order."""
    init = os.path.join(package_dir, "algorithms", "__init__.py")
    with open(init, encoding="utf-8") as f:
        tree = ast.parse(f.read(), init)
    families = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FAMILIES":
            families = _literal(node.value)
    if families is None:  # pragma: no cover
        raise LanguageError(f"{init}: no FAMILIES tuple")
    rules = []
    for fam in families:
        rules += read_family(os.path.join(package_dir, "algorithms", fam + ".py"))
    return rules


# ---------------------------------------------------------------------------
# The Cython backend's rendering context (setup.py renders the templates
# fastopt/backends/_cython_kernels.{pyx,pxd}.tp with it).

#: The C types of the Cython loops and the suffix of their helpers.
CTYPES = (("float", "_f32"), ("double", "_f64"))


def fingerprint(rule):
    """A hash of what a rule compiles to (slots, scalars, the two functions'
    ASTs): the built extension records it, the backend compares at import."""
    import hashlib
    text = "|".join([rule.name, ",".join(rule.slots), ",".join(rule.scalars),
                     ast.dump(rule.prepare, annotate_fields=False),
                     ast.dump(rule.element, annotate_fields=False)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def slot_args(rule):
    """The public kernels' slot argument names: a slot named like a scalar
    (SGD's ``momentum`` buffer) gets a ``_buf`` suffix."""
    return tuple(s + "_buf" if s in rule.scalars else s for s in rule.slots)


def _loop_lines(rule, ctype, suffix, with_l2):
    fn = rule.element
    names = ["g", "w", *rule.slots, *rule.prepared, *assigned_names(fn)]
    rename = {n: "e_" + n for n in names}
    out = ["        for i in range(n):",
           f"            e_g = _g{suffix}(g[i], gs, clip)",
           "            pi = p[i]"]
    if with_l2:
        out.append("            e_g = e_g + l2 * pi")
    out.append("            e_w = pi * kp")
    out += [f"            e_{n} = s{j}[i]" for j, n in enumerate(rule.slots)]
    out += cython_lines(fn, rename, 3, ctype, suffix)
    out += [f"            s{j}[i] = e_{n}" for j, n in enumerate(rule.slots)]
    out.append("            p[i] = e_w")
    return out


def cython_loop(rule, ctype, suffix):
    """The element loop of ``rule`` in C type ``ctype``, unswitched by hand on
    the coupled weight decay (gcc does not unswitch long loops by itself, and
    then does not vectorise them)."""
    fn = rule.element
    local = [n for n in assigned_names(fn) if n not in ("w", "g", *rule.slots)]
    names = ["e_g", "e_w", "pi"] + [f"e_{n}" for n in (*rule.slots, *local)]
    out = [f"cdef void _loop_{rule.name}{suffix}({ctype}** a, Py_ssize_t n, const double* hp,",
           "                  double gs_, double kp_, double l2_) noexcept nogil:",
           f"    cdef {ctype}* p = a[0]",
           f"    cdef const {ctype}* g = a[1]"]
    out += [f"    cdef {ctype}* s{j} = a[{2 + j}]" for j in range(len(rule.slots))]
    out += [f"    cdef {ctype} clip = <{ctype}>hp[0], gs = <{ctype}>gs_, kp = <{ctype}>kp_, "
            f"l2 = <{ctype}>l2_"]
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
