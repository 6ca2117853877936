"""fastopt.torch on torch's own distributed engine: 2 CPU processes, gloo.

``ZeroRedundancyOptimizer(params, optimizer_class=fastopt.torch.AdamW)``
under DDP shards the optimizer state over the ranks; each rank steps its
shard with fastopt's kernels and the shards are broadcast back.  Each rank
also trains a reference model in one process on the whole batch (both
ranks' halves) with fastopt.torch.AdamW and with torch.optim.AdamW; the
distributed run must land on the same parameters, and so must plain DDP with
a fastopt optimizer.
"""
import os
import socket

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2
STEPS = 6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4)).double()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(WORLD * 6, 8, generator=g, dtype=torch.float64) for _ in range(STEPS)]


def _worker(rank, port, mode, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        from torch.nn.parallel import DistributedDataParallel as DDP

        import fastopt.torch as ft
        model = DDP(_model())
        kw = dict(lr=0.01, weight_decay=0.1)
        if mode == "zero":
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=ft.AdamW, **kw)
        else:
            opt = ft.AdamW(model.parameters(), **kw)
        for x in _batches():
            half = x[rank * 6:(rank + 1) * 6]
            opt.zero_grad()
            model(half).square().mean().backward()
            opt.step()
        if mode == "zero":
            opt.consolidate_state_dict(to=0)
        refs = {}
        for name, cls in (("fastopt", ft.AdamW), ("torch", torch.optim.AdamW)):
            ref = _model()
            ro = cls(ref.parameters(), **kw)
            for x in _batches():  # the mean over both halves: what DDP averages
                ro.zero_grad()
                ref(x).square().mean().backward()
                ro.step()
            refs[name] = ref
        errs = {name: max((a - b).abs().max().item() for a, b in
                          zip(model.module.parameters(), ref.parameters()))
                for name, ref in refs.items()}
        moved = max((a - b).abs().max().item() for a, b in
                    zip(model.module.parameters(), _model().parameters()))
        if rank == 0:
            torch.save({"errs": errs, "moved": moved,
                        "state": opt.state_dict() if mode == "zero" else None}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["zero", "ddp"])
def test_zero_redundancy_and_ddp_match_one_process(mode, tmp_path):
    out = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(_free_port(), mode, out), nprocs=WORLD, join=True)
    result = torch.load(out, weights_only=True)
    assert result["moved"] > 1e-3
    # reductions over two halves and over the whole batch differ in rounding
    assert result["errs"]["fastopt"] <= 1e-10
    assert result["errs"]["torch"] <= 1e-10
    if mode == "zero":
        state = result["state"]["state"]
        assert len(state) == 4 and all("exp_avg_sq" in s for s in state.values())
