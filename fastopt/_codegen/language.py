"""The element language: what ``prepare`` and ``element`` may contain, checked
on their syntax trees (see the package docstring)."""
from __future__ import annotations

import ast

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


def assigned_names(fn):
    """Names assigned in a function body, in first-assignment order."""
    out = []
    for node in ast.walk(fn):
        target = node.targets[0] if isinstance(node, ast.Assign) else \
            node.target if isinstance(node, ast.AugAssign) else None
        if isinstance(target, ast.Name) and target.id not in out:
            out.append(target.id)
    return out
