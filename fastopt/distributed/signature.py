"""What the ranks compare before a sharded optimizer is built: each rank's
signature (optimizer class, parameters, hyperparameters, a checksum of the
values) and the first way two ranks' signatures differ."""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["comparable_config", "disagreement"]


def comparable_config(config):
    """A config with custom callables reduced to their kind (their reprs
    hold addresses, which differ between processes)."""
    def lr(v):
        return "callable" if isinstance(v, Mapping) and v.get("class_name") == "callable" else v
    out = {**config, "learning_rate": lr(config.get("learning_rate"))}
    if "param_groups" in out:
        out["param_groups"] = [{**g, **({"learning_rate": lr(g["learning_rate"])}
                                        if "learning_rate" in g else {})}
                               for g in out["param_groups"]]
    return out


def disagreement(signatures):
    """The first way the ranks' signatures differ from rank 0's, or None."""
    ref = signatures[0]
    for r, sig in enumerate(signatures[1:], 1):
        if sig["class"] != ref["class"]:
            return f"rank {r} wraps {sig['class']}, rank 0 {ref['class']}"
        if sig["kind"] != ref["kind"] or len(sig["tensors"]) != len(ref["tensors"]):
            return (f"ranks disagree on the parameters: rank {r} has {len(sig['tensors'])} "
                    f"({sig['kind']}), rank 0 has {len(ref['tensors'])} ({ref['kind']})")
        for i, (t, t0) in enumerate(zip(sig["tensors"], ref["tensors"])):
            if t != t0:
                return (f"ranks disagree on params{_label(i, t0[0])}: rank {r} has "
                        f"{_describe(t)}, rank 0 has {_describe(t0)}")
        if sig["config"] != ref["config"]:
            keys = [k for k in {**ref["config"], **sig["config"]}
                    if sig["config"].get(k) != ref["config"].get(k)]
            k = keys[0]
            return (f"ranks disagree on the hyperparameters: rank {r} has {k}="
                    f"{sig['config'].get(k)!r}, rank 0 has {k}={ref['config'].get(k)!r}")
        for i, (h, h0) in enumerate(zip(sig["values"], ref["values"])):
            if h != h0:
                return (f"the values of params{_label(i, ref['tensors'][i][0])} differ "
                        f"between rank 0 and rank {r}; "
                        "every rank must start from the same parameters (the same seed, "
                        "or broadcast them from rank 0 first, e.g. comm.Bcast(p, root=0) "
                        "for each)")
    return None


def _label(i, name):
    return f"[{i}]" if name is None else f"[{name!r}]"


def _describe(t):
    name, shape, dtype = t
    return f"{'' if name is None else f'name {name!r}, '}shape {tuple(shape)} and dtype {dtype}"
