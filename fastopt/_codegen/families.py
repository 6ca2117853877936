"""Reading the family modules without importing them (the build environment
has no Numba and no fastopt), and the fingerprint of a rule's code."""
from __future__ import annotations

import ast
import hashlib
import os

from .language import LanguageError, check_element, check_prepare

# ---------------------------------------------------------------------------
# Reading the family modules without importing them (the build environment).

class ParsedRule:
    """What the renderers need of one rule, read from a family module's source."""

    def __init__(self, name, slots, scalars, convention, prepare, element, bf16,
                 kind="elementwise", reductions=(), decide=None):
        self.name, self.slots, self.scalars = name, tuple(slots), tuple(scalars)
        self.convention, self.prepare, self.element = convention, prepare, element
        self.bf16 = bf16
        self.kind, self.reductions, self.decide = kind, tuple(reductions), decide
        self.two_phase = kind == "two_phase"
        self.prepared = check_prepare(prepare)
        check_element(element, self.slots, self.prepared)
        if [a.arg for a in prepare.args.args] != list(self.scalars):
            raise LanguageError(f"{name}: prepare() takes {self.scalars}")
        if self.two_phase and check_prepare(decide) != ("update_scale",):
            raise LanguageError(f"{name}: decide() must return {{'update_scale': ...}}")


def _literal(node):
    return ast.literal_eval(node)


def read_family(path):
    """The compiled rules declared in one family module (``Rule(...)`` calls at
    module level, keyword arguments: literals, or names of functions of the
    module; ``kind="per_tensor"`` rules, which compile nothing, are left out)."""
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
        if "kind" in kw and _literal(kw["kind"]) == "per_tensor":
            continue  # run on the host (fastopt.per_tensor): nothing to compile

        def value(key, default=None):
            v = kw.get(key)
            if v is None:
                return default
            if isinstance(v, ast.Name):
                return functions[v.id] if v.id in functions else consts[v.id]
            return _literal(v)

        rules.append(ParsedRule(name, value("slots", ()), value("scalars", ()),
                                value("convention", "keras"), value("prepare"),
                                value("element"), value("bf16_refusal") is None,
                                value("kind", "elementwise"), value("reductions", ()),
                                value("decide")))
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


def fingerprint(rule):
    """A hash of what a rule compiles to (slots, scalars, the two functions'
    ASTs): the built extension records it, the backend compares at import."""
    parts = [rule.name, ",".join(rule.slots), ",".join(rule.scalars),
             ast.dump(rule.prepare, annotate_fields=False),
             ast.dump(rule.element, annotate_fields=False)]
    if getattr(rule, "reductions", ()):  # a two_phase rule: its reductions and decision
        parts += [",".join(rule.reductions), ast.dump(rule.decide, annotate_fields=False)]
    text = "|".join(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
