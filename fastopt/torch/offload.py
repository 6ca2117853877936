"""Optimizer offload: float32 master weights and state in host memory, the
fused CPU step, parameters copied back to the device.

For GPU training whose optimizer state does not fit (or should not live) on
the GPU, as FSDP's CPU offload, DeepSpeed's ZeRO-Offload and torchao's
``CPUOffloadOptimizer`` do.  The device keeps its parameters (float32, or
bfloat16/float16 for mixed precision); the host keeps a float32 master copy of
each and the optimizer state, in pinned memory when CUDA is present:

* during ``backward`` each gradient is copied device -> host as soon as it is
  ready (a post-accumulate-grad hook), and freed on the device; gradients of
  several ``backward`` calls before a ``step`` are summed on the host
  (gradient accumulation);
* ``step()`` waits for those copies, runs the optimizer (a ``fastopt.torch``
  class, or any ``torch.optim`` class) on the masters, and copies each master
  back into its device parameter, cast to the parameter's dtype (rounded to
  nearest) in that copy.

Everything works with CPU tensors standing in for the device, which is how it
is tested here; without CUDA, memory is not pinned and copies are synchronous.
"""
from __future__ import annotations

import torch

from .optimizers import AdamW

__all__ = ["CPUOffload"]


class CPUOffload:
    """Keep the optimizer on the CPU for parameters that live on a device.

    Parameters
    ----------
    params : iterable of tensors or of dicts
        The model's (device) parameters, or parameter groups as for any
        ``torch.optim`` optimizer.
    optimizer_class : type, default fastopt.torch.AdamW
        The optimizer run on the host master weights.
    **kwargs
        Passed to ``optimizer_class`` (``lr``, ``betas``, ``weight_decay``...).

    Attributes
    ----------
    optimizer : torch.optim.Optimizer
        The host optimizer over the master weights; give it to learning-rate
        schedulers, read its ``param_groups`` and state.
    masters : list of torch.Tensor
        The float32 host copies, in the order of the parameters.

    Examples
    --------
    >>> offload = CPUOffload(model.parameters(), lr=1e-3)   # doctest: +SKIP
    >>> loss.backward(); offload.step(); offload.zero_grad()   # doctest: +SKIP
    """

    def __init__(self, params, optimizer_class=AdamW, **kwargs):
        if isinstance(params, torch.Tensor):
            raise TypeError("CPUOffload: params must be an iterable of tensors or of dicts, "
                            "not a tensor")
        groups = list(params)
        if not groups:
            raise ValueError("CPUOffload: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        pin = torch.cuda.is_available()
        self.params, self.masters, self._grads = [], [], []
        host_groups = []
        seen = set()
        for group in groups:
            ps = group["params"]
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            masters = []
            for p in ps:
                if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                    raise TypeError("CPUOffload: every parameter must be a floating-point "
                                    f"tensor, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError("CPUOffload: a parameter appears twice")
                seen.add(id(p))
                m = torch.empty(p.shape, dtype=torch.float32, device="cpu", pin_memory=pin)
                m.copy_(p.detach())
                m.grad = torch.zeros(p.shape, dtype=torch.float32, device="cpu",
                                     pin_memory=pin)
                self.params.append(p)
                self.masters.append(m)
                self._grads.append(m.grad)
                masters.append(m)
            host_groups.append({**{k: v for k, v in group.items() if k != "params"},
                                "params": masters})
        self.optimizer = optimizer_class(host_groups, **kwargs)
        self._master = dict(zip(map(id, self.params), self.masters))
        self._fresh = {id(p): True for p in self.params}  # next gradient: copy, not add
        self._pending = None
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_ready)
                       for p in self.params if p.requires_grad]

    def _grad_ready(self, p):
        """A gradient is complete on the device: move it to the host now."""
        host = self._master[id(p)].grad
        g = p.grad
        if g.is_cuda:
            if self._fresh[id(p)]:
                host.copy_(g, non_blocking=True)
            else:  # accumulate on the device side of the copy, then move
                host.add_(g.to("cpu", torch.float32))
            self._pending = torch.cuda.current_stream()
        elif self._fresh[id(p)]:
            host.copy_(g)
        else:
            host.add_(g)
        self._fresh[id(p)] = False
        p.grad = None  # the device copy is no longer needed

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def step(self, closure=None):
        """Wait for the gradient copies, step on the host, copy the masters back."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending is not None:
            self._pending.synchronize()
            self._pending = None
        for p, m in zip(self.params, self.masters):
            if self._fresh[id(p)]:  # no gradient since the last step: skip it
                m.grad = None
        self.optimizer.step()
        with torch.no_grad():
            for p, m, g in zip(self.params, self.masters, self._grads):
                if m.grad is None:
                    m.grad = g
                else:  # cast to the device dtype in the copy itself
                    p.copy_(m, non_blocking=m.is_pinned())
        for k in self._fresh:
            self._fresh[k] = True
        return loss

    def zero_grad(self, set_to_none=True):
        """Forget gradients since the last step (device and host)."""
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()
            self._fresh[id(p)] = True

    def state_dict(self):
        """The host optimizer's state dict and the float32 masters."""
        return {"optimizer": self.optimizer.state_dict(),
                "masters": [m.detach().clone() for m in self.masters]}

    def load_state_dict(self, state_dict):
        masters = state_dict["masters"]
        if len(masters) != len(self.masters) or any(
                a.shape != b.shape for a, b in zip(masters, self.masters)):
            raise ValueError("CPUOffload.load_state_dict: the masters do not match these "
                             "parameters")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        with torch.no_grad():
            for p, m, src in zip(self.params, self.masters, masters):
                m.copy_(src)
                p.copy_(m)

    def remove_hooks(self):
        """Detach from the parameters (no more gradient copies)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
