"""The :class:`Rule` type and the registry of every rule, :data:`RULES`.

A *rule* is one fused kernel: one optimizer variant under one convention
(Keras SGD with Nesterov momentum, PyTorch centred RMSprop with momentum, ...).
Rules are declared in the family modules of :mod:`fastopt.algorithms`, each
with its ``prepare`` and ``element`` functions written in the element
language (:mod:`fastopt._codegen`) and an independently written float64
reference; every backend's kernels are generated from those declarations.

Every backend implements every rule with the same public signature::

    kernel(param, grad, *slots, *scalars, keep=1.0, gscale=1.0, l2=0.0,
           clipvalue=inf)

and inside the fused multi-tensor step reads the *packed* scalars
``(clipvalue, *prepare(*scalars).values())`` (:meth:`Rule.pack`), computed
once per step in float64 and rounded to the tensors' dtype once per chunk.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from . import _codegen

__all__ = ["Rule", "RULES", "TENSOR_RULES", "KINDS", "get_rule"]

#: Rule kinds.  ``elementwise``: the update of an element depends on that
#: element only.  ``two_phase``: per-tensor reductions computed in a fused
#: first pass, a decision per tensor on the host, then an elementwise apply
#: scaled per tensor (Lamb's trust ratio; clipping by norm is expressed the
#: same way in :mod:`fastopt.pipeline`; see :mod:`fastopt.two_phase`).
#: ``per_tensor``: state that need not be parameter-shaped and host work per
#: tensor (:mod:`fastopt.per_tensor`; Adafactor, Muon).  Such rules are kept
#: in :data:`TENSOR_RULES`, not in :data:`RULES` (nothing is compiled from
#: them: their elementwise parts are rules of :data:`RULES` they call).
KINDS = ("elementwise", "two_phase", "per_tensor")

#: ``Rule.int8_refusal``'s default: 8-bit state is offered where its accuracy
#: was measured (``benchmarks/int8_codes.py``, ``benchmarks/reduced_precision.py``).
INT8_NOT_MEASURED = ("8-bit state is offered for the optimizers whose accuracy with it was "
                     "measured: Adam/AdamW/AMSGrad, RMSprop, SGD with momentum and Adagrad")


@dataclass(frozen=True, eq=False)
class Rule:
    """One update rule: what the backends compile and the tests check.

    Parameters
    ----------
    name : str
        The kernel name (``"adam_torch"``), unique across the registry.
    slots : tuple of str
        The optimizer state arrays, Keras's slot names, in kernel order.
    scalars : tuple of str
        The public scalar arguments of the kernels, in order.
    convention : {"keras", "torch"}
    prepare : callable
        ``prepare(*scalars) -> dict`` of named per-step scalars (float64),
        in the element language.
    element : callable
        ``element(g, w, *slots, *prepared) -> (w, *slots)`` for one element,
        in the element language.
    reference : callable
        The float64 whole-array specification,
        ``reference(param, grad, *slots, **scalars) -> (param, *slots)``.
    torch_state : tuple of str
        PyTorch's ``state_dict`` keys of the slots, in order (torch rules).
    bf16_refusal : str or None
        Why the rule cannot keep its state in bfloat16, or None if it can.
    int8_refusal : str or None
        Why the rule cannot keep its state in 8 bits (``state_dtype="int8"``),
        or None if it can; by default it cannot (:data:`INT8_NOT_MEASURED`):
        a family opts in where the accuracy was measured.
    nonnegative : tuple of str
        The slots that are never negative (second moments, accumulators):
        8-bit state stores them with an unsigned code of a wider range
        (:func:`fastopt.reference.q8_encode`).
    kind : str
        One of :data:`KINDS`.
    host_state : tuple of str
        Scalars the rule keeps on the host across steps (running products
        such as Nadam's ``u_product``): the last names of ``scalars``, kept
        per parameter group, saved and restored with the slots by every state
        path (``state_dict``, state files, ``ShardedOptimizer``, adapters).
    host_init : tuple of float
        Their values before the first step.
    advance : callable
        ``advance(*scalars) -> dict`` of the ``host_state`` values after this
        step, given the public scalars with the host state as it was before
        (plain Python on the host, float64; it may round where a framework
        rounds, e.g. to float32).  Called once per *applied* step, before the
        kernel, which reads the advanced values; they are kept only once the
        step has run.
    slot_shapes : callable
        ``per_tensor`` rules: ``slot_shapes(shape) -> {slot: shape}``, the
        state of one tensor of shape ``shape`` (every slot of ``slots``, in
        order; shapes are tuples of ints, ``()`` for a scalar slot).
    host_step : callable
        ``per_tensor`` rules: ``host_step(w, g, state, scalars, backend)``,
        one tensor's update on the host, in place (see
        :mod:`fastopt.per_tensor` for what it receives).
    host_decay : bool
        ``per_tensor`` rules: the rule applies the decoupled weight-decay
        factor itself (``host_step`` then gets ``keep=`` and an undecayed
        ``w``: torch's Adafactor reads the parameter's RMS before decaying).
    shardable : bool
        False when the rule's state cannot be cut by flat element index
        (a factored moment): :class:`fastopt.distributed.ShardedOptimizer`
        then refuses the rule, giving ``shard_refusal``.
    shard_refusal : str or None
        Why the rule cannot be sharded (required when ``shardable`` is False).
    reductions : tuple of str
        A ``two_phase`` rule's per-tensor reductions, names of
        :data:`fastopt.two_phase.REDUCTIONS`, computed in the fused first pass
        from the element function run without storing anything.
    decide : callable
        A ``two_phase`` rule's ``decide(*sums, *scalars) ->
        {"update_scale": x}`` for one tensor, in the language of ``prepare``:
        given the tensor's reductions (float64, summed over every shard) and
        the public scalars, the factor on the element function's
        displacement ``w - w_before`` that the second pass applies (run on
        the host in float64, :meth:`update_scales`; rendered to C for the
        Cython ``.pxd`` kernel).
    """

    name: str
    slots: tuple = ()
    scalars: tuple = ()
    convention: str = "keras"
    prepare: Callable = None
    element: Callable = None
    reference: Callable = None
    torch_state: tuple = ()
    bf16_refusal: str | None = None
    int8_refusal: str | None = INT8_NOT_MEASURED
    nonnegative: tuple = ()
    kind: str = "elementwise"
    host_state: tuple = ()
    host_init: tuple = ()
    advance: Callable = None
    slot_shapes: Callable = None
    host_step: Callable = None
    host_decay: bool = False
    shardable: bool = True
    shard_refusal: str | None = None
    reductions: tuple = ()
    decide: Callable = None
    family: str = field(default="", compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"rule {self.name!r}: kind must be one of {KINDS}, got "
                             f"{self.kind!r}")
        if self.kind == "per_tensor":
            if self.slot_shapes is None or self.host_step is None:
                raise ValueError(f"rule {self.name!r}: a per_tensor rule declares "
                                 "slot_shapes and host_step")
            if self.bf16_refusal is None:  # state in the parameters' dtype, always
                object.__setattr__(self, "bf16_refusal", (
                    "its state is not parameter-shaped and is kept in the parameters' "
                    "dtype (per_tensor rule)"))
        elif self.slot_shapes is not None or self.host_step is not None:
            raise ValueError(f"rule {self.name!r}: slot_shapes and host_step belong to "
                             "per_tensor rules")
        if not self.shardable and not self.shard_refusal:
            raise ValueError(f"rule {self.name!r}: shardable=False needs a shard_refusal "
                             "saying why")
        if (self.kind == "two_phase") != bool(self.reductions) or \
                (self.kind == "two_phase") != (self.decide is not None):
            raise ValueError(f"rule {self.name!r}: a two_phase rule (and only one) declares "
                             "its reductions and a decide function")
        if self.reductions:
            from .two_phase import REDUCTIONS
            unknown = set(self.reductions) - set(REDUCTIONS)
            if unknown:
                raise ValueError(f"rule {self.name!r}: unknown reductions {sorted(unknown)}; "
                                 f"the fused pass offers {sorted(REDUCTIONS)}")
        n = len(self.host_state)
        if n and (tuple(self.scalars[-n:]) != tuple(self.host_state)
                  or len(self.host_init) != n or self.advance is None):
            raise ValueError(f"rule {self.name!r}: host_state must be the last scalars, with "
                             "one host_init value each and an advance function")

    def advanced(self, scalars, host):
        """The kernel's scalars for one applied step: ``scalars`` (the public
        scalars without the host state), then the host state advanced from
        ``host`` (the values before this step, in ``host_state`` order);
        returns ``(scalars, new host values)``."""
        if not self.host_state:
            return scalars, host
        new = self.advance(*scalars, *host)
        values = tuple(float(new[k]) for k in self.host_state)
        return (*scalars, *values), values

    @cached_property
    def prepared(self):
        """The names of the per-step scalars ``prepare`` returns, in order."""
        return _codegen.check_prepare(self.prepare_ast)

    @cached_property
    def prepare_ast(self):
        return _codegen.parse_function(inspect.getsource(self.prepare))

    @cached_property
    def element_ast(self):
        fn = _codegen.parse_function(inspect.getsource(self.element))
        _codegen.check_element(fn, self.slots, self.prepared)
        return fn

    @property
    def formula(self):
        """The rule's formula: its reference's docstring."""
        return inspect.getdoc(self.reference) or ""

    @cached_property
    def decide_ast(self):
        fn = _codegen.parse_function(inspect.getsource(self.decide))
        if _codegen.check_prepare(fn) != ("update_scale",):
            raise _codegen.LanguageError(f"{self.name}: decide() must return "
                                         '{"update_scale": ...}')
        return fn

    def update_scales(self, sums, scalars):
        """The update scale of every tensor: :attr:`decide` on each column of
        ``sums`` (one row per reduction, one column per tensor), float64.
        Many tensors at once are decided by :func:`_decide_arrays` (the same
        IEEE operations on NumPy arrays, one pass over the function)."""
        sums = np.asarray(sums, dtype=np.float64)
        if sums.shape[1] > _VECTOR_FROM:
            return _decide_arrays(self.decide_ast, [*sums], scalars)
        decide = self.decide
        return np.array([decide(*col, *scalars)["update_scale"] for col in sums.T.tolist()],
                        dtype=np.float64)

    @property
    def two_phase(self):
        """Whether the rule is a ``two_phase`` one (reduce, decide, apply)."""
        return self.kind == "two_phase"

    def bytes_per_param(self, dtype="float32", state_dtype=None):
        """Bytes one step moves per parameter: the parameter read and written,
        the gradient read, each slot read and written (``state_dtype``: the
        slots' dtype when it differs from the parameters'); a two-phase rule
        reads the parameter, the gradient and the slots once more in its
        first pass.  A ``per_tensor`` rule's slots are not parameter-shaped: it
        counts the parameter and the gradient only (its least traffic; the host
        work makes more)."""
        import numpy as np
        item = np.dtype(dtype).itemsize
        if self.kind == "per_tensor":
            return 3 * item
        state_item = item if state_dtype is None else np.dtype(state_dtype).itemsize
        if state_dtype is not None and np.dtype(state_dtype) == np.int8:
            from .reference import Q8_BLOCK
            state_item += 4 / Q8_BLOCK  # a float32 scale per block
        once = 3 * item + 2 * len(self.slots) * state_item
        if self.two_phase:
            once += 2 * item + len(self.slots) * state_item
        return once

    def host_scalars(self, scalars):
        """``per_tensor`` rules: the named per-step scalars ``host_step``
        reads, ``prepare(*scalars)`` (plain Python is fine here: nothing is
        compiled from it), or the public scalars by name without one."""
        if self.prepare is None:
            return dict(zip(self.scalars, scalars))
        return self.prepare(*scalars)

    def pack(self, scalars, clipvalue=math.inf):
        """``(clipvalue, *prepare(*scalars).values())``: what the kernels read."""
        return (clipvalue, *self.prepare(*scalars).values())

    def __repr__(self):
        return f"Rule({self.name!r}, family={self.family!r})"


#: From this many tensors on, update_scales evaluates decide() on arrays.
_VECTOR_FROM = 16


def _decide_arrays(fn, rows, scalars):
    """``fn`` (a ``decide`` function's syntax tree, the language of
    ``prepare``) evaluated once for every tensor: its arguments are the rows
    of sums (arrays, one entry per tensor) and the scalars; each ``if`` is a
    mask, each assignment and ``return`` takes effect where its path is
    taken.  Returns the float64 array of the returned ``update_scale``."""
    n = rows[0].shape[0]
    env = dict(zip([a.arg for a in fn.args.args],
                   [*rows, *(np.full(n, float(x)) for x in scalars)]))
    result = np.zeros(n)
    done = np.zeros(n, dtype=bool)

    def ev(node):
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            return _ARRAY_BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp):
            x = ev(node.operand)
            if isinstance(node.op, ast.Not):
                return ~x
            return -x if isinstance(node.op, ast.USub) else x
        if isinstance(node, ast.BoolOp):
            parts = [ev(v) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.Compare):
            return _ARRAY_CMPOPS[type(node.ops[0])](ev(node.left), ev(node.comparators[0]))
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id
            return _ARRAY_CALLS[name](*[ev(a) for a in node.args])
        raise _codegen.LanguageError(f"{fn.name}: {ast.unparse(node)}")  # pragma: no cover

    def run(body, mask):
        nonlocal result
        for stmt in body:
            live = mask & ~done
            if isinstance(stmt, ast.Assign):
                name = stmt.targets[0].id
                value = ev(stmt.value)
                env[name] = np.where(live, value, env[name]) if name in env else value
            elif isinstance(stmt, ast.AugAssign):
                name = stmt.target.id
                value = _ARRAY_BINOPS[type(stmt.op)](env[name], ev(stmt.value))
                env[name] = np.where(live, value, env[name])
            elif isinstance(stmt, ast.If):
                test = np.broadcast_to(ev(stmt.test), (n,))
                run(stmt.body, live & test)
                run(stmt.orelse, live & ~test)
            elif isinstance(stmt, ast.Return):
                result = np.where(live, ev(stmt.value.values[0]), result)
                done[live] = True
    with np.errstate(all="ignore"):  # every path is computed everywhere, used where taken
        run(fn.body, np.ones(n, dtype=bool))
    return result


_ARRAY_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                 ast.Div: np.divide, ast.Pow: np.power}
_ARRAY_CMPOPS = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater,
                 ast.GtE: np.greater_equal, ast.Eq: np.equal, ast.NotEq: np.not_equal}
# the element language's calls with its semantics (fastopt._codegen): min/max
# a NaN wins and a tie returns the first argument; sign(0) is the zero itself
_ARRAY_CALLS = {"sqrt": np.sqrt, "abs": np.abs, "copysign": np.copysign, "pow": np.power,
                "min": lambda a, b: np.where((b < a) | (b != b), b, a),
                "max": lambda a, b: np.where((b > a) | (b != b), b, a),
                "sign": lambda x: np.where(x > 0, 1.0, np.where(x < 0, -1.0, x))}


_LOADED = None


def _load_all():
    """Every family module's ``RULES``, by name: ``(compiled, per_tensor)``."""
    global _LOADED
    if _LOADED is None:
        from .algorithms import FAMILIES
        compiled, tensor = {}, {}
        for fam in FAMILIES:
            module = importlib.import_module(f"fastopt.algorithms.{fam}")
            for rule in module.RULES:
                if rule.name in compiled or rule.name in tensor:
                    raise RuntimeError(f"rule {rule.name!r} declared twice")
                object.__setattr__(rule, "family", fam)
                (tensor if rule.kind == "per_tensor" else compiled)[rule.name] = rule
        _LOADED = compiled, tensor
    return _LOADED


class _Registry(Mapping):
    """name -> :class:`Rule`, filled from the family modules on first use
    (``per_tensor``: which half of the registry)."""

    def __init__(self, per_tensor=False):
        self._rules = None
        self._half = int(per_tensor)

    def _load(self):
        if self._rules is None:
            self._rules = _load_all()[self._half]
        return self._rules

    def __getitem__(self, name):
        return self._load()[name]

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())

    def __repr__(self):
        return f"RULES({list(self)})"


#: Every compiled rule (kinds ``elementwise`` and ``two_phase``), by kernel
#: name, in registry order: what the backends generate kernels from.
RULES = _Registry()

#: Every ``per_tensor`` rule, by name, in registry order (nothing is compiled
#: from them; :mod:`fastopt.per_tensor` runs them).
TENSOR_RULES = _Registry(per_tensor=True)


def get_rule(name):
    """The rule called ``name``, compiled or ``per_tensor`` (KeyError if none)."""
    compiled, tensor = _load_all()
    return compiled[name] if name in compiled else tensor[name]
