"""Parameter trees: parse the ``params`` an optimizer is given, flatten them,
and match and check each step's gradients against them.

``params`` may be one array, a list or tuple of arrays, a dict of named
arrays, or a list of parameter-group dicts (``{"params": ..., **overrides}``)
of those.  :class:`ParamTree` checks every array once, keeps them as one
flat list, and rebuilds the given structure from any flat list.
"""
from __future__ import annotations

import numbers
import re
from collections.abc import Mapping

import numpy as np

from .backends import get_backend
from .backends._contract import FLOAT_DTYPES, is_device_array

__all__ = ["ParamTree"]


class ParamTree:
    """The parameters an optimizer was given: checked, flattened, and able to
    line up gradients with them.

    Parameters
    ----------
    owner : str
        Who is asking (a class name), for the error messages.
    params
        Arrays, as the optimizers take them (see :class:`fastopt.Optimizer`).

    Attributes
    ----------
    kind : str
        ``"array"``, ``"list"``, ``"dict"`` or ``"groups"``.
    arrays : list
        The parameters, flat, in order (Numba device views for device arrays).
    given : list
        The arrays as given (CuPy, PyTorch...); ``arrays`` unless on the device.
    names : list of str or None
        Each parameter's name (dict keys), or None.
    labels : list of str
        ``"[0]"`` or ``"['w']"``: how messages name each parameter.
    shapes, dtypes : list
    groups : list of (list of int, dict)
        Per parameter group: its flat indices and its overrides.
    device : bool
        True when the arrays are CUDA device arrays.
    """

    def __init__(self, owner, params):
        self.owner = owner
        is_group = [isinstance(p, Mapping) and "params" in p for p in params] \
            if isinstance(params, (list, tuple)) else []
        if any(is_group):
            if not all(is_group):
                raise TypeError(f"{owner}: params mixes parameter-group dicts and arrays; give "
                                "either arrays or a list of {'params': ..., ...} dicts")
            self._parse_groups(params)
        else:
            kind, names, arrays = _plain_params(owner, params)
            self.kind, self.given = kind, arrays
            self.names = names or [None] * len(arrays)
            self.groups = [(list(range(len(arrays))), {})]
            self._parts = [(kind, names, len(arrays), None)]
        if not self.given:
            raise ValueError(f"{owner}: params is empty")
        self.n = len(self.given)
        self.labels = [f"[{i}]" if nm is None else f"[{nm!r}]" for i, nm in enumerate(self.names)]
        self._cuda = _check_arrays(owner, self.given, self.labels)
        self.device = self._cuda is not None
        self.arrays = [self._cuda.as_device(a) for a in self.given] if self.device \
            else self.given
        _check_no_overlap(owner, self.arrays, self.labels,
                          self._cuda.pointer if self.device else _host_pointer)
        self.shapes = [a.shape for a in self.arrays]
        self.dtypes = [a.dtype for a in self.arrays]
        self.group_sizes = [len(indices) for indices, _ in self.groups]
        # the common case of match_grads, recognised without building anything
        self._plain_list = self.kind == "list"
        self._host_ndarray = None if self.device else np.ndarray
        # the memory of the parameters, by the object that owns it: a gradient
        # whose memory belongs to another object cannot overlap a parameter
        self._memory = {}
        if not self.device:
            for i, a in enumerate(self.arrays):
                start = _host_pointer(a)
                self._memory.setdefault(id(_owner_of(a)), []).append(
                    (start, start + a.nbytes, i))
        self._owners = frozenset(self._memory)
        self._check = None  # the compiled check of many gradients, made on first use

    def _parse_groups(self, specs):
        owner = self.owner
        self.kind, self.given, self.names, self.groups, self._parts = "groups", [], [], [], []
        for g, spec in enumerate(specs):
            kind, names, arrays = _plain_params(owner, spec["params"], f" of param group {g}")
            if not arrays:
                raise ValueError(f"{owner}: param group {g} has no parameters")
            start = len(self.given)
            self.groups.append((list(range(start, start + len(arrays))),
                                {k: v for k, v in spec.items() if k != "params"}))
            self._parts.append((kind, names, len(arrays), spec))
            self.given += arrays
            self.names += names or [None] * len(arrays)
        named = [nm for nm in self.names if nm is not None]
        if len(named) != len(set(named)):
            raise ValueError(f"{owner}: parameter names repeat across param groups")

    def rebuild(self, flat):
        """``flat`` (one entry per parameter) in the structure ``params`` was given in."""
        if self.kind != "groups":
            return _in_structure(*self._parts[0][:2], flat)
        out, k = [], 0
        for kind, names, n, spec in self._parts:
            out.append({**spec, "params": _in_structure(kind, names, flat[k:k + n])})
            k += n
        return out

    def match_grads(self, grads, every_gradient=False):
        """``grads`` as a list aligned with the parameters, each checked.

        Parameters
        ----------
        grads
            In the structure of the params; a None gradient skips its parameter.
        every_gradient : bool
            Refuse None gradients (gradient accumulation needs them all).
        """
        ndarray = self._host_ndarray  # device gradients are checked in full
        owners = self._owners
        if grads.__class__ is list and self._plain_list and len(grads) == self.n \
                and ndarray is not None:
            if self.n > _FEW:
                if self._compiled_check(grads):
                    return grads
            else:
                for g, dt, sh in zip(grads, self.dtypes, self.shapes):
                    # (an array owning its memory and no parameter's overlaps none)
                    if not (g.__class__ is ndarray and g.dtype is dt and g.shape == sh
                            and g.flags.c_contiguous and g.base is None
                            and id(g) not in owners):
                        break
                else:
                    return grads
        owner = self.owner
        grads = _flatten_like(owner, self.kind, self.names, self.group_sizes, grads)
        dtypes, shapes = self.dtypes, self.shapes
        present = 0
        for i, g in enumerate(grads):
            if g is None:
                continue
            present += 1
            if ndarray is not None and isinstance(g, ndarray) and id(_owner_of(g)) in owners:
                self._check_overlap(i, g)
            if (g.__class__ is ndarray and g.dtype is dtypes[i] and g.shape == shapes[i]
                    and g.flags.c_contiguous):
                continue
            grads[i] = self._checked_grad(i, g)
        if present == 0:
            raise ValueError(f"{owner}.step: every gradient is None; nothing to apply")
        if present < len(grads) and every_gradient:
            i = next(k for k, g in enumerate(grads) if g is None)
            raise ValueError(f"{owner}.step: grads{self.labels[i]} is None; with "
                             "gradient_accumulation_steps every gradient must be given")
        return grads

    def _compiled_check(self, grads):
        """Whether every gradient of the list ``grads`` (one per parameter)
        is an ndarray of its parameter's dtype and shape, C-contiguous, and
        overlaps no parameter but exactly its own: one compiled pass over the
        list (:class:`fastopt.backends.numba_backend.GradientCheck`).  False
        means "look closer" (always, where that pass is not available)."""
        if self._check is None:
            from .backends import numba_backend as nb
            rows = [r for ranges in self._memory.values() for r in ranges]
            self._check = nb.GradientCheck(self.arrays, rows) \
                if nb.GradientCheck.available else (lambda grads: 0)
        return self._check(grads) == -1

    def _check_overlap(self, i, g):
        """Refuse gradient ``i`` if its memory overlaps a parameter other than
        exactly its own (the kernels would read what they have just written,
        in an order that depends on the backend and the threads)."""
        lo, hi = np.lib.array_utils.byte_bounds(g) if hasattr(np.lib, "array_utils") \
            else np.byte_bounds(g)
        for start, end, j in self._memory[id(_owner_of(g))]:
            if lo < end and start < hi and not (j == i and (lo, hi) == (start, end)):
                what = "its own parameter, shifted" if j == i else f"params{self.labels[j]}"
                raise ValueError(f"{self.owner}.step: grads{self.labels[i]} overlaps the "
                                 f"memory of {what}; a gradient must not share memory with "
                                 "any parameter but exactly its own (pass a copy)")

    def _checked_grad(self, i, g):
        """Gradient ``g`` of parameter ``i``, checked (host ones made contiguous)."""
        owner, label = self.owner, self.labels[i]
        if self.device:
            if not is_device_array(g):
                raise TypeError(f"{owner}.step: grads{label} must be a CUDA device array or "
                                f"None, got {type(g).__name__}; the params are on the GPU, "
                                "so their gradients must be too")
            _, shape, dtype, contiguous, _ = self._cuda.describe(g)
        else:
            if not isinstance(g, np.ndarray):
                where = "; the params are host NumPy arrays, so their gradients must be " \
                    "too" if is_device_array(g) else ""
                raise TypeError(f"{owner}.step: grads{label} must be a numpy.ndarray or None, "
                                f"got {type(g).__name__}{where}")
            shape, dtype, contiguous = g.shape, g.dtype, True
        if dtype != self.dtypes[i]:
            raise TypeError(f"{owner}.step: grads{label} has dtype {dtype} but "
                            f"params{label} has dtype {self.dtypes[i]}; fastopt never casts "
                            "silently, cast the gradient explicitly")
        if shape != self.shapes[i]:
            raise ValueError(f"{owner}.step: grads{label} has shape {shape} but "
                             f"params{label} has shape {tuple(self.shapes[i])}")
        if not contiguous:  # device arrays only: not copied behind the user's back
            raise ValueError(f"{owner}.step: grads{label} with shape {shape} is not "
                             "C-contiguous; device gradients must be contiguous")
        return g if self.device else np.ascontiguousarray(g)

    def matching(self, owner, var_list=None, var_names=None):
        """The frozenset of parameter indices that Keras's
        ``exclude_from_weight_decay(var_list, var_names)`` names: arrays of
        ``var_list`` by identity, and names searched by the regular
        expression ``"|".join(var_names)``."""
        index = {}
        for a in var_list or ():
            k = next((i for i, p in enumerate(self.given) if p is a), None)
            if k is None:
                raise ValueError(f"{owner}: var_list holds an array that is not one of the "
                                 "optimizer's parameters (matched by identity)")
            index[k] = True
        names = list(var_names or ())
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"{owner}: var_names must be strings, got {n!r}")
        try:
            pattern = re.compile("|".join(sorted(set(names)))) if names else None
        except re.error as e:
            raise ValueError(f"{owner}: var_names do not form a regular expression: {e}") \
                from None
        return frozenset(i for i, name in enumerate(self.names)
                         if i in index or (pattern is not None and name is not None
                                           and pattern.search(name)))

    def indices_of(self, exclude):
        """The frozenset of parameter indices that ``exclude`` (a list of
        indices or names, or None) names; for ``exclude_from_weight_decay``."""
        owner, n = self.owner, self.n
        if exclude is None:
            return frozenset()
        if isinstance(exclude, (str, int)) or not isinstance(exclude, (list, tuple, set,
                                                                       frozenset)):
            raise TypeError(f"{owner}: exclude_from_weight_decay must be a list of parameter "
                            f"indices or names, got {exclude!r}")
        index = {nm: i for i, nm in enumerate(self.names) if nm is not None}
        out = set()
        for e in exclude:
            if isinstance(e, str):
                if e not in index:
                    raise ValueError(f"{owner}: exclude_from_weight_decay names {e!r}, which "
                                     f"is not a parameter name (names: {sorted(index)})")
                out.add(index[e])
            elif isinstance(e, numbers.Integral) and not isinstance(e, bool):
                if not 0 <= e < n:
                    raise ValueError(f"{owner}: exclude_from_weight_decay index {e} is out of "
                                     f"range for {n} parameters")
                out.add(int(e))
            else:
                raise TypeError(f"{owner}: exclude_from_weight_decay entries must be parameter "
                                f"indices or names, got {e!r}")
        return frozenset(out)


#: up to this many tensors, gradients are checked in Python (about 0.2 us
#: each); from more on, in one compiled pass over the list (a call's cost plus
#: a few ns each: :class:`fastopt.backends.numba_backend.GradientCheck`)
_FEW = 16


def _owner_of(a):
    """The object that owns ``a``'s memory: the end of its chain of bases."""
    base = a.base
    while base is not None:
        a = base
        base = getattr(a, "base", None)
    return a


def _plain_params(owner, params, where=""):
    """``(kind, names or None, arrays)`` of a params value that is not a list
    of parameter groups."""
    if isinstance(params, np.ndarray) or is_device_array(params):
        return "array", None, [params]
    if isinstance(params, Mapping):
        for k in params:
            if not isinstance(k, str):
                raise TypeError(f"{owner}: parameter names must be strings, got {k!r}{where}")
        return "dict", list(params), list(params.values())
    if isinstance(params, (list, tuple)):
        return "list", None, list(params)
    raise TypeError(f"{owner}: params{where} must be an array, a list or tuple of arrays, a "
                    f"dict of arrays, or a list of parameter-group dicts, got "
                    f"{type(params).__name__}")


def _in_structure(kind, names, flat):
    """``flat`` as the plain params value of this kind: array, list or dict."""
    if kind == "dict":
        return dict(zip(names, flat))
    if kind == "array":
        return flat[0]
    return list(flat)


def _check_arrays(owner, arrays, labels):
    """Check every parameter array; return the CUDA backend when they are
    device arrays (all of them, or none may be), else None."""
    on_device = [is_device_array(a) for a in arrays]
    cuda = None
    if any(on_device):
        i = on_device.index(True)
        j = next((k for k, d in enumerate(on_device) if not d), None)
        if j is not None:
            raise TypeError(f"{owner}: params{labels[i]} is a CUDA device array but "
                            f"params{labels[j]} is a {type(arrays[j]).__name__}; all parameters "
                            "must be on the GPU, or all host NumPy arrays")
        cuda = get_backend("cuda")  # ImportError saying how to get it
    for label, a in zip(labels, arrays):
        if cuda is not None:
            _, shape, dtype, contiguous, readonly = cuda.describe(a)
        elif not isinstance(a, np.ndarray):
            raise TypeError(f"{owner}: params{label} must be a numpy.ndarray, "
                            f"got {type(a).__name__}")
        else:
            shape, dtype = a.shape, a.dtype
            contiguous, readonly = a.flags.c_contiguous, not a.flags.writeable
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{owner}: params{label} has dtype {dtype}; fastopt supports "
                            "float32 and float64 parameters")
        if not contiguous:
            raise ValueError(f"{owner}: params{label} with shape {shape} is not C-contiguous; "
                             "parameters are updated in place, so they must be contiguous")
        if readonly:
            raise ValueError(f"{owner}: params{label} is read-only; parameters are updated "
                             "in place")
    return cuda


def _host_pointer(a):
    return a.ctypes.data


def _check_no_overlap(owner, arrays, labels, pointer):
    spans = sorted((pointer(a), pointer(a) + a.nbytes, i)
                   for i, a in enumerate(arrays) if a.nbytes)
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"{owner}: params{labels[i]} and params{labels[j]} share memory; "
                             "each parameter must be updated exactly once")


def _flatten_like(owner, kind, names, group_sizes, grads):
    """Gradients in the structure of the params, as one flat list."""
    n = len(names)
    if kind == "groups" and isinstance(grads, Mapping):
        # one flat {name: grad} dict over every group, as Keras's variables
        # carry their names: needs every parameter named, each name once
        if None in names or len(set(names)) != n:
            raise TypeError(f"{owner}.step: a flat dict of gradients needs every parameter "
                            "group to name its parameters (dicts), each name once; give "
                            "one entry per group instead")
        return _flatten_like(owner, "dict", names, [n], grads)
    if kind == "groups":
        if not isinstance(grads, (list, tuple)) or len(grads) != len(group_sizes):
            length = f" of length {len(grads)}" if isinstance(grads, (list, tuple)) else ""
            raise TypeError(f"{owner}.step: params were given as {len(group_sizes)} parameter "
                            "groups, so grads must be a list with one entry per group (or, "
                            "when the groups name their parameters, one flat dict), got "
                            f"{type(grads).__name__}{length}")
        flat, k = [], 0
        for g, (entry, size) in enumerate(zip(grads, group_sizes)):
            group_names = names[k:k + size]
            group_kind = "dict" if group_names[0] is not None else "list"
            if group_kind == "list" and size == 1 and (isinstance(entry, np.ndarray)
                                                       or is_device_array(entry)):
                entry = [entry]
            flat += _flatten_like(f"{owner}.step (param group {g})", group_kind, group_names,
                                  [size], entry)
            k += size
        return flat
    if kind == "dict":
        if not isinstance(grads, Mapping):
            raise TypeError(f"{owner}.step: params were given as a dict, so grads must be "
                            f"a dict with the same keys, got {type(grads).__name__}")
        missing = [k for k in names if k not in grads]
        extra = [k for k in grads if k not in set(names)]
        if missing or extra:
            raise ValueError(f"{owner}.step: grads keys differ from params keys "
                             f"(missing {missing}, unexpected {extra})")
        return [grads[k] for k in names]
    if n == 1 and (isinstance(grads, np.ndarray) or is_device_array(grads)):
        return [grads]
    if isinstance(grads, (list, tuple)):
        if len(grads) != n:
            raise ValueError(f"{owner}.step: expected {n} gradient(s), one per parameter, "
                             f"got {len(grads)}")
        return list(grads)
    raise TypeError(f"{owner}.step: grads must be "
                    f"{'an array or ' if n == 1 else ''}a list or tuple of {n} "
                    f"arrays, got {type(grads).__name__}")
