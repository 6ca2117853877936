"""The state half of :class:`fastopt.Optimizer`: state dicts, state files,
pickling and copies (a mixin the optimizer class inherits)."""
from __future__ import annotations

import numpy as np

from . import hyperparams
from .state import (check_host_state, check_slots, check_state_header, check_update_count,
                    state_to_arrays, write_npz_atomic)

__all__ = ["StateMethods"]


class StateMethods:
    """``state_arrays``, ``state_dict``, ``load_state_dict``, ``save_state``
    and pickling, for :class:`fastopt.Optimizer` (which provides the
    parameter tree, the tensor groups, the config and the lock they use)."""

    def state_arrays(self):
        """Every per-parameter state array (live, not a copy), by state-dict
        key ``"<slot>/<index or name>"``: the kernels' slots (views of the
        flat buffers), the moving averages and the gradient accumulators."""
        names = self._tree.names
        live = {}

        def add(slot, i, array):
            live[f"{slot}/{i if names[i] is None else names[i]}"] = array
        for group in self._tensor_groups:
            for slot, views in group.slot_views.items():
                for i, view in zip(group.indices, views):
                    add(slot, i, view)
        for slot, arrays in (("average", self._ema),
                             ("gradient_accumulator", self._accumulated)):
            for i, a in enumerate(arrays or ()):
                add(slot, i, a)
        return live

    def host_state(self):
        """The rules' host-side scalar state (running products such as
        Nadam's ``u_product``; :attr:`fastopt.rule.Rule.host_state`), by
        state-dict key ``"<name>/<parameter group>"``, as float64 0-d arrays
        (copies); empty for a rule without any."""
        return {f"{name}/{g}": np.array(value, dtype=np.float64)
                for g, pg in enumerate(self._param_groups)
                for name, value in zip(pg.rule.host_state, pg.host)}

    def state_dict(self):
        """``{"config", "iterations", "calls", "slots": {"<slot>/<index or name>": array}}``.

        ``iterations`` and ``calls`` are the two counters (updates and
        ``step`` calls; they differ under gradient accumulation).

        Slot arrays are host NumPy copies (also for device parameters) in
        their parameter's shape and dtype (with ``state_dtype="bfloat16"``,
        the kernels' slots are uint16 arrays of bfloat16 bit patterns, which
        round-trip exactly); they
        include the moving averages (``average/...``) with ``use_ema`` and
        the gradient accumulators (``gradient_accumulator/...``).

        A rule with host-side scalar state (Nadam's running product) adds
        ``"host_state": {"<name>/<parameter group>": float64 0-d array}``
        (:meth:`host_state`); the other rules' state dicts have no such key.
        """
        with self._lock:  # a snapshot between steps, never a torn one
            slots = {key: self._arrays.to_host(a) for key, a in self.state_arrays().items()}
            state = {"config": self.get_config(), "iterations": self.iterations,
                     "calls": self._iterations, "slots": slots}
            host = self.host_state()
            if host:
                state["host_state"] = host
            return state

    def load_state_dict(self, state):
        """Restore hyperparameters, counters, slots and host state from
        :meth:`state_dict`'s output.  Checked whole first: on error nothing
        changes.  A state without ``"calls"`` (written before ``calls``
        existed) is one whose ``"iterations"`` counted the ``step`` calls."""
        with self._lock:
            self._load_state_dict(state)

    def _load_state_dict(self, state):
        name = type(self).__name__
        calls, iterations = check_state_header(name, state, self.state_dtype, self.convention,
                                               config_keys=self.get_config())
        # the hyperparameters, checked by building a twin on the same params
        config = hyperparams.with_current_callables(
            name, state["config"], self._defaults["learning_rate"],
            [pg.hyperparams["learning_rate"] for pg in self._param_groups]
            if self._tree.kind == "groups" else None)
        twin = type(self).from_config(self.params, {**config, "backend": self._backend_name})
        if twin.rule != self.rule:
            raise ValueError(f"{name}.load_state_dict: the state is for kernel "
                             f"{twin.rule!r} (other hyperparameters) but this "
                             f"optimizer runs {self.rule!r}")
        check_update_count(name, calls, iterations, twin.gradient_accumulation_steps)
        live = twin.state_arrays()
        check_slots(name, state["slots"], live)
        host = check_host_state(name, state.get("host_state"), twin.host_state())
        # all checked: copy the slots into the twin, then take it over
        for key, dst in live.items():
            twin._arrays.assign(dst, state["slots"][key])
        for g, pg in enumerate(twin._param_groups):
            pg.host = tuple(host[f"{n}/{g}"] for n in pg.rule.host_state)
        twin._iterations = calls
        self.__dict__.update({k: v for k, v in twin.__dict__.items() if k != "_lock"})

    # -- pickling and copies: rebuilt from the parameters, config and state --------
    def __getstate__(self):
        config = self.get_config()
        with self._lock:
            return {"params": self.params, "config": config, "state": self.state_dict(),
                    "backend": self._backend_name,
                    "learning_rates": [pg.hyperparams["learning_rate"]
                                       for pg in self._param_groups]}

    def __setstate__(self, saved):
        twin = type(self).from_config(saved["params"],
                                      {**saved["config"], "backend": saved["backend"]})
        for pg, lr in zip(twin._param_groups, saved["learning_rates"]):
            pg.hyperparams["learning_rate"] = lr  # schedules and callables as they were
        twin.load_state_dict({**saved["state"], "config": twin.get_config()})
        self.__dict__.update(twin.__dict__)

    def save_state(self, path, extra=None):
        """Write :meth:`state_dict`, and the named arrays ``extra``, to the
        ``.npz`` file ``path``, atomically (see :func:`fastopt.save_state`)."""
        write_npz_atomic(path, {**(extra or {}), **state_to_arrays(self.state_dict())})
