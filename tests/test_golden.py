"""fastopt against trajectories recorded from the real PyTorch and Keras.

``tests/golden/<name>.npz`` and ``<name>.json`` were written by
``tools/make_golden.py`` (see ``tests/golden/README.md``); neither torch nor
keras is needed here.  For every recording and every backend that takes
NumPy arrays, the optimizer the sidecar describes is built with that backend
and fed the recorded gradients.  The agreement rule, per tensor ``p``:

* after every step ``t``::

      max|p_t - golden_t| <= tolerance * max(D_t, 1e-300)
      D_t = max over s <= t of max|golden_s - init|

  i.e. the error is measured relative to how far the recorded parameter has
  moved so far (so a step that must change nothing must change nothing);
* at the end, every recorded optimizer slot ``s`` (and, with EMA, the
  parameters after ``finalize_variable_values()``) within
  ``tolerance * max(max|golden|, 1e-300)``.

``tolerance`` is the sidecar's: 1e-9 unless a float32 rounding inside the
recorded framework forces a looser bound, which the sidecar then lists.

Besides torch and Keras, the recordings of schedule-free AdamW come from its
authors' package (``framework: "schedulefree"``, fastopt's torch convention):
``train()`` before every step and the sidecar's ``events`` (``eval()``,
``train()``) after some steps, replayed with fastopt's methods of those names.
Keras's ScheduleFreeAdamW is not replayed (fastopt does not copy it): its
recordings in ``tests/golden/differences`` are checked by
``tests/test_schedulefree.py``.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import fastopt

from cases import HOST_BACKENDS
from optim_db import DB, TENSOR_DB

GOLDEN = Path(__file__).parent / "golden"
SIDECARS = sorted(GOLDEN.glob("*.json"))
NAMES = [p.stem for p in SIDECARS]
BACKENDS = HOST_BACKENDS
TINY = 1e-300


def load(name):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    with np.load(GOLDEN / f"{name}.npz") as data:
        arrays = dict(data)
    return meta, arrays


def build(meta, arrays, backend, place=np.copy):
    """The fastopt optimizer the sidecar describes, over fresh copies of the
    initial parameters (``place(host array)`` makes each copy); returns
    ``(optimizer, params, to_step)`` where ``to_step(list of gradients)``
    shapes the gradients for ``opt.step``."""
    spec = meta["fastopt"]
    kwargs = dict(spec["kwargs"])
    if isinstance(kwargs.get("learning_rate"), dict):
        kwargs["learning_rate"] = fastopt.schedules.deserialize(kwargs["learning_rate"])
    params = [place(arrays[f"init_{k}"]) for k in range(len(meta["shapes"]))]
    kind = spec["params"]
    if kind == "list":
        structure, to_step = params, list
    elif kind == "dict":
        names = spec["names"]
        structure = dict(zip(names, params))
        def to_step(grads):
            return dict(zip(names, grads))
    elif kind == "groups":
        groups = spec["groups"]
        structure = [{"params": [params[i] for i in g["tensors"]],
                      **{k: v for k, v in g.items() if k != "tensors"}} for g in groups]
        def to_step(grads):
            return [[grads[i] for i in g["tensors"]] for g in groups]
    else:  # pragma: no cover - the sidecar test rejects it
        raise ValueError(kind)
    opt = getattr(fastopt, spec["class"])(structure, backend=backend, **kwargs)
    return opt, params, to_step


def slot_key(meta, state_key):
    """``state_<slot>_<k>`` -> fastopt's ``"<slot>/<index or name>"``."""
    slot, k = state_key[len("state_"):].rsplit("_", 1)
    spec = meta["fastopt"]
    return f"{slot}/{spec['names'][int(k)] if spec['params'] == 'dict' else k}"


def host_key(meta, key):
    """``host_<name>`` (Keras, per optimizer) or ``host_<name>_<k>`` (torch,
    per parameter) -> fastopt's ``"<name>/<parameter group>"`` (one group)."""
    name = key[len("host_"):]
    if meta["framework"] == "torch":
        name = name.rsplit("_", 1)[0]
    elif meta["framework"] == "schedulefree":  # the package keeps them per parameter group
        name, group = name.rsplit("_", 1)
        return f"{name}/{group}"
    return f"{name}/0"


def check_close(what, got, want, scale, tolerance):
    err = float(np.max(np.abs(got - want)))
    bound = tolerance * max(scale, TINY)
    assert err <= bound, (f"{what}: max abs error {err:.3e} > {bound:.3e} "
                          f"(tolerance {tolerance:g} x scale {scale:.3e})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_trajectory(name, backend):
    replay(name, backend)


def replay(name, backend, place=np.copy, fetch=np.asarray):
    """Feed recording ``name`` to ``backend`` and check every step, the final
    slots and (with EMA) the finalized parameters.  ``place(host array)``
    puts parameters and gradients where the backend takes them; ``fetch``
    brings a parameter back as a NumPy array."""
    meta, arrays = load(name)
    tol = meta["tolerance"]
    opt, params, to_step = build(meta, arrays, backend, place)
    n = len(params)
    init = [arrays[f"init_{k}"] for k in range(n)]
    displacement = [0.0] * n
    events = meta.get("events")  # schedule-free AdamW's train()/eval() calls
    for t in range(meta["steps"]):
        if events is not None:
            opt.train()
        opt.step(to_step([place(np.ascontiguousarray(arrays[f"grads_{k}"][t]))
                          for k in range(n)]))
        for call in (events or {}).get(str(t), ()):
            getattr(opt, call)()
        for k in range(n):
            golden = arrays[f"params_{k}"][t]
            displacement[k] = max(displacement[k], float(np.max(np.abs(golden - init[k]))))
            check_close(f"{name} [{backend}] step {t} tensor {k}", fetch(params[k]), golden,
                         displacement[k], tol)
    if meta["framework"] == "keras":  # Keras's raw _iterations counts the apply() calls;
        # its public iterations is that // gradient_accumulation_steps
        steps = meta["fastopt"]["kwargs"].get("gradient_accumulation_steps") or 1
        calls = meta["keras_iterations"]
        assert (opt.calls, opt.iterations) == (calls, calls // steps), name
    slots = opt.state_dict()["slots"]
    for key in meta["state_keys"]:
        want = arrays[key]
        got = slots.get(slot_key(meta, key))
        assert got is not None, (f"{name}: no slot {slot_key(meta, key)!r} in "
                                 f"state_dict()['slots'] (has {sorted(slots)})")
        check_close(f"{name} [{backend}] final {slot_key(meta, key)}", got, want,
                    float(np.max(np.abs(want))), tol)
    host = opt.host_state()
    # every host state the framework keeps is recorded (fastopt may keep more:
    # ASGD's eta_now and mu_now, the values of the last step, torch does not)
    assert bool(host) == bool(meta.get("host_keys")), name
    for key in meta.get("host_keys", ()):
        # torch keeps a running product per parameter, Keras one per optimizer;
        # fastopt one per parameter group (all parameters step together)
        got = host.get(host_key(meta, key))
        assert got is not None, f"{name}: no host state {host_key(meta, key)!r} ({sorted(host)})"
        check_close(f"{name} [{backend}] final host state {key}", got, arrays[key],
                    abs(float(arrays[key])), tol)
    if meta["fastopt"]["kwargs"].get("use_ema"):
        opt.finalize_variable_values()
        for k in range(n):
            want = arrays[f"final_{k}"]
            check_close(f"{name} [{backend}] finalize_variable_values tensor {k}",
                        fetch(params[k]), want, float(np.max(np.abs(want - init[k]))), tol)


# ---------------------------------------------------------------------------
# The recordings themselves

VERSIONS = {"torch": "2.13.0", "keras": "3.15.1", "schedulefree": "1.4.1"}
#: the fastopt convention each framework's recordings are replayed under
CONVENTION = {"torch": "torch", "keras": "keras", "schedulefree": "torch"}


@pytest.mark.parametrize("name", NAMES)
def test_sidecar_names_its_source_and_matches_its_arrays(name):
    meta, arrays = load(name)
    assert meta["name"] == name
    framework = meta["framework"]
    assert framework in VERSIONS
    assert meta["framework_version"].startswith(VERSIONS[framework])
    if framework == "keras":  # Keras ran on the torch backend
        assert meta["backend"] == "torch"
        assert meta["backend_version"].startswith(VERSIONS["torch"])
        assert meta["keras_floatx"] in ("float32", "float64")
    assert meta["python_version"] and meta["numpy_version"]
    assert meta["dtype"] == "float64"
    if framework == "schedulefree":  # the package ran on torch
        assert meta["torch_version"].startswith(VERSIONS["torch"])
    assert meta["constructor"].startswith(("torch.optim.", "keras.optimizers.",
                                           "schedulefree.AdamWScheduleFree("))
    assert meta["fastopt"]["convention"] == CONVENTION[framework]
    assert meta["fastopt"]["kwargs"].get("convention", "keras") == CONVENTION[framework]
    assert meta["fastopt"]["params"] in ("list", "dict", "groups")
    # every rounding says where it is and what was done; the tolerance is the
    # loosest bound they imply, 1e-9 when none does
    for r in meta["roundings"]:
        assert {"what", "where", "action", "bound"} <= set(r)
    bounds = [r["bound"] for r in meta["roundings"] if r["bound"] is not None]
    assert meta["tolerance"] == max([1e-9, *bounds])

    steps, shapes = meta["steps"], [tuple(s) for s in meta["shapes"]]
    assert steps >= 50 and len(shapes) >= 2 and len(set(shapes)) == len(shapes)
    expected = {f"{kind}_{k}" for k in range(len(shapes)) for kind in ("init", "grads", "params")}
    expected |= set(meta["state_keys"]) | set(meta.get("host_keys", ()))
    if meta["fastopt"]["kwargs"].get("use_ema"):
        expected |= {f"final_{k}" for k in range(len(shapes))}
    assert set(arrays) == expected
    for k, shape in enumerate(shapes):
        assert arrays[f"init_{k}"].shape == shape
        assert arrays[f"grads_{k}"].shape == arrays[f"params_{k}"].shape == (steps, *shape)
    # slots of the parameter's shape, or a per_tensor rule's own (Adafactor's row and column)
    live = build(meta, arrays, "numpy")[0].state_arrays()
    for key in meta["state_keys"]:
        assert arrays[key].shape == live[slot_key(meta, key)].shape, key
    for key in meta.get("host_keys", ()):
        assert key.startswith("host_") and arrays[key].shape == ()
    assert all(a.dtype == np.float64 for a in arrays.values())
    # the gradient stream: whole zero steps, exact zeros, 1e3 and 1e-4 steps, a tiny coordinate
    grads = np.concatenate([arrays[f"grads_{k}"].reshape(steps, -1) for k in range(len(shapes))],
                           axis=1)
    scale = np.max(np.abs(grads), axis=1)
    assert (scale == 0).any() and (grads == 0).mean() > 0.1
    assert scale.max() > 100 * np.median(scale) and scale[scale > 0].min() < 1e-2 * np.median(scale)
    tiny = np.abs(arrays["grads_0"].reshape(steps, -1)[:, 0])
    assert 0 < tiny.max() < 1e-25


def _has(meta, **want):
    kw = meta["fastopt"]["kwargs"]
    for key, value in want.items():
        have = kw.get(key)
        if value is True and not have:
            return False
        if value is False and have:
            return False
        if value not in (True, False) and have != value:
            return False
    return True


# (framework, fastopt class, description, predicate over the sidecar)
REQUIRED = [
    ("torch", "SGD", "plain", lambda m: _has(m, momentum=False, weight_decay=False,
                                              maximize=False)),
    ("torch", "SGD", "momentum", lambda m: _has(m, momentum=True, nesterov=False,
                                                dampening=False)),
    ("torch", "SGD", "nesterov", lambda m: _has(m, nesterov=True)),
    ("torch", "SGD", "dampening", lambda m: _has(m, dampening=True)),
    ("torch", "SGD", "maximize", lambda m: _has(m, maximize=True)),
    ("torch", "SGD", "weight_decay", lambda m: _has(m, weight_decay=True)),
    ("torch", "Adagrad", "plain", lambda m: _has(m, lr_decay=False, weight_decay=False)),
    ("torch", "Adagrad", "lr_decay", lambda m: _has(m, lr_decay=True)),
    ("torch", "Adagrad", "weight_decay", lambda m: _has(m, weight_decay=True)),
    ("torch", "Adagrad", "initial_accumulator_value",
     lambda m: _has(m, initial_accumulator_value=True)),
    ("torch", "RMSprop", "plain", lambda m: _has(m, momentum=False, centered=False,
                                                  weight_decay=False)),
    ("torch", "RMSprop", "momentum", lambda m: _has(m, momentum=True, centered=False)),
    ("torch", "RMSprop", "centered", lambda m: _has(m, momentum=False, centered=True)),
    ("torch", "RMSprop", "centered+momentum", lambda m: _has(m, momentum=True, centered=True)),
    ("torch", "RMSprop", "weight_decay", lambda m: _has(m, weight_decay=True)),
    ("torch", "Adam", "plain", lambda m: _has(m, amsgrad=False, weight_decay=False)),
    ("torch", "Adam", "amsgrad", lambda m: _has(m, amsgrad=True)),
    ("torch", "Adam", "weight_decay (L2)", lambda m: _has(m, weight_decay=True)),
    ("torch", "AdamW", "plain", lambda m: _has(m, amsgrad=False)),
    ("torch", "Adamax", "plain", lambda m: _has(m, weight_decay=False)),
    ("torch", "Adamax", "weight_decay (L2)", lambda m: _has(m, weight_decay=True)),
    ("torch", "RAdam", "plain", lambda m: _has(m, weight_decay=False, maximize=False)),
    ("torch", "RAdam", "weight_decay (L2)",
     lambda m: _has(m, weight_decay=True, decoupled_weight_decay=False)),
    ("torch", "RAdam", "decoupled_weight_decay",
     lambda m: _has(m, weight_decay=True, decoupled_weight_decay=True)),
    ("torch", "RAdam", "maximize", lambda m: _has(m, maximize=True)),
    ("torch", "Rprop", "plain", lambda m: _has(m, maximize=False, eta_minus=False,
                                                step_size_min=False)),
    ("torch", "Rprop", "etas and step_sizes", lambda m: _has(m, eta_minus=True, eta_plus=True,
                                                              step_size_min=True,
                                                              step_size_max=True)),
    ("torch", "Rprop", "maximize", lambda m: _has(m, maximize=True)),
    ("torch", None, "param groups with different learning_rate and weight_decay",
     lambda m: m["fastopt"]["params"] == "groups" and len(m["fastopt"]["groups"]) >= 2
     and len({g.get("learning_rate") for g in m["fastopt"]["groups"]}) >= 2
     and len({g.get("weight_decay") for g in m["fastopt"]["groups"]}) >= 2),
    ("torch", None, "clip_grad_norm_", lambda m: _has(m, global_clipnorm=True)),
    ("torch", None, "clip_grad_value_", lambda m: _has(m, clipvalue=True)),
    ("keras", "SGD", "plain", lambda m: _has(m, momentum=False, weight_decay=False)),
    ("keras", "SGD", "momentum", lambda m: _has(m, momentum=True, nesterov=False)),
    ("keras", "SGD", "nesterov", lambda m: _has(m, nesterov=True)),
    ("keras", "Adagrad", "plain", lambda m: True),
    ("keras", "RMSprop", "plain", lambda m: _has(m, momentum=False, centered=False)),
    ("keras", "RMSprop", "momentum", lambda m: _has(m, momentum=True, centered=False)),
    ("keras", "RMSprop", "centered", lambda m: _has(m, momentum=False, centered=True)),
    ("keras", "RMSprop", "centered+momentum", lambda m: _has(m, momentum=True, centered=True)),
    ("keras", "Adam", "plain", lambda m: _has(m, amsgrad=False)),
    ("keras", "Adam", "amsgrad", lambda m: _has(m, amsgrad=True)),
    ("keras", "AdamW", "plain", lambda m: True),
    ("keras", "Adamax", "plain", lambda m: _has(m, weight_decay=False)),
    ("keras", "Ftrl", "plain", lambda m: len(m["fastopt"]["kwargs"]) == 1),
    ("keras", "Ftrl", "learning_rate_power, L1, L2, shrinkage and beta together",
     lambda m: _has(m, learning_rate_power=True, l1_regularization_strength=True,
                    l2_regularization_strength=True,
                    l2_shrinkage_regularization_strength=True, beta=True)),
    ("keras", "Ftrl", "learning_rate_power = 0 from a zero accumulator",
     lambda m: m["fastopt"]["kwargs"].get("learning_rate_power") == 0.0
     and m["fastopt"]["kwargs"].get("initial_accumulator_value") == 0.0),
    ("keras", "Ftrl", "L1 thresholding with weight decay",
     lambda m: _has(m, l1_regularization_strength=True, weight_decay=True)),
    ("torch", "Adadelta", "plain", lambda m: _has(m, weight_decay=False, maximize=False)),
    ("torch", "Adadelta", "weight_decay (L2) and maximize",
     lambda m: _has(m, weight_decay=True, maximize=True)),
    ("keras", "Adadelta", "plain", lambda m: _has(m, weight_decay=False)),
    ("keras", "Adadelta", "weight_decay", lambda m: _has(m, weight_decay=True)),
    ("keras", "Lion", "plain", lambda m: _has(m, weight_decay=False)),
    ("keras", "Lion", "weight_decay", lambda m: _has(m, weight_decay=True)),
    ("keras", "Lamb", "plain", lambda m: _has(m, weight_decay=False)),
    ("keras", "Lamb", "weight_decay", lambda m: _has(m, weight_decay=True)),
    ("keras", "SGD", "weight_decay on a non-AdamW optimizer", lambda m: _has(m, weight_decay=True)),
    ("keras", None, "clipnorm", lambda m: _has(m, clipnorm=True)),
    ("keras", None, "global_clipnorm", lambda m: _has(m, global_clipnorm=True)),
    ("keras", None, "clipvalue", lambda m: _has(m, clipvalue=True)),
    ("keras", None, "use_ema with ema_overwrite_frequency",
     lambda m: _has(m, use_ema=True, ema_overwrite_frequency=True)),
    ("keras", None, "use_ema without overwrite",
     lambda m: _has(m, use_ema=True, ema_overwrite_frequency=False)),
    ("keras", None, "gradient_accumulation_steps",
     lambda m: _has(m, gradient_accumulation_steps=True)),
    ("keras", None, "loss_scale_factor", lambda m: _has(m, loss_scale_factor=True)),
    ("keras", None, "exclude_from_weight_decay by index",
     lambda m: _has(m, exclude_from_weight_decay=True) and m["fastopt"]["params"] == "list"),
    ("keras", None, "exclude_from_weight_decay by name",
     lambda m: _has(m, exclude_from_weight_decay=True) and m["fastopt"]["params"] == "dict"),
    ("keras", "Muon", "Nesterov, exclude_layers and exclude_embeddings (AdamW by name and "
     "by shape), tall and wide matrices",
     lambda m: _has(m, exclude_layers=True) and "nesterov" not in m["fastopt"]["kwargs"]
     and m["fastopt"]["params"] == "dict" and any(m["keras_uses_adamw"])
     and not all(m["keras_uses_adamw"])),
    ("keras", "Muon", "no Nesterov, rms_rate=None, adam_lr_ratio, other coefficients",
     lambda m: _has(m, nesterov=False, adam_lr_ratio=True, muon_a=True)
     and m["fastopt"]["kwargs"].get("rms_rate", 0.2) is None),
    ("torch", "Muon", "plain (Nesterov, original lr adjustment)",
     lambda m: not {"adjust_lr_fn", "nesterov"} & set(m["fastopt"]["kwargs"])),
    ("torch", "Muon", "match_rms_adamw, no Nesterov, coefficients, eps",
     lambda m: _has(m, adjust_lr_fn="match_rms_adamw", nesterov=False, muon_a=True,
                    epsilon=True)),
    ("schedulefree", "ScheduleFreeAdamW", "defaults but lr",
     lambda m: set(m["fastopt"]["kwargs"]) == {"learning_rate", "convention"}),
    ("schedulefree", "ScheduleFreeAdamW", "warmup, weight decay, r and weight_lr_power",
     lambda m: _has(m, warmup_steps=True, weight_decay=True, r=True, weight_lr_power=True)),
    ("schedulefree", "ScheduleFreeAdamW", "param groups (host state per group)",
     lambda m: m["fastopt"]["params"] == "groups"),
    ("keras", None, "a learning-rate schedule",
     lambda m: isinstance(m["fastopt"]["kwargs"].get("learning_rate"), dict)),
]


def test_recordings_cover_every_optimizer_and_variant():
    metas = [load(name)[0] for name in NAMES]
    assert len(metas) >= 25
    missing = []
    for framework, cls, what, predicate in REQUIRED:
        if not any(m["framework"] == framework
                   and (cls is None or m["fastopt"]["class"] == cls) and predicate(m)
                   for m in metas):
            missing.append(f"{framework} {cls or ''} {what}")
    assert not missing, f"no golden recording for: {missing}"
    for convention in ("torch", "keras"):  # every class of the db under each of its conventions
        classes = {m["fastopt"]["class"] for m in metas
                   if m["fastopt"]["convention"] == convention}
        assert classes == {row.cls.__name__ for row in DB + TENSOR_DB if convention in row.conventions}, \
            convention


@pytest.mark.parametrize("row", DB + TENSOR_DB, ids=str)
def test_rows_name_their_recordings(row):
    """Each variant of tests/optim_db.py has recordings, and the ones it
    names exist and build its class with its rule under their convention."""
    assert row.golden, f"{row.id}: no golden recording"
    for name in row.golden:
        assert name in NAMES, f"{row.id}: no recording {name!r}"
        meta, arrays = load(name)
        opt, _, _ = build(meta, arrays, "numpy")
        assert type(opt) is row.cls, (name, type(opt))
        assert opt.rule == row.rules[meta["fastopt"]["convention"]], (name, opt.rule)


@pytest.mark.parametrize("name, how", [("keras_adamw_exclude_index", "var_list"),
                                       ("keras_adamw_exclude_name", "var_names")])
def test_exclude_from_weight_decay_method_against_keras(name, how, monkeypatch):
    # the recordings called Keras's opt.exclude_from_weight_decay(...); here
    # fastopt's method of the same name, instead of the constructor argument
    real_build = build

    def build_then_exclude(meta, arrays, backend, place=np.copy):
        meta = json.loads(json.dumps(meta))
        excluded = meta["fastopt"]["kwargs"].pop("exclude_from_weight_decay")
        opt, params, to_step = real_build(meta, arrays, backend, place)
        if how == "var_list":
            opt.exclude_from_weight_decay(var_list=[params[i] for i in excluded])
        else:
            opt.exclude_from_weight_decay(var_names=excluded)
        return opt, params, to_step
    monkeypatch.setitem(globals(), "build", build_then_exclude)
    replay(name, "numba")
