"""Choosing the code and the block size of 8-bit optimizer state, by accuracy.

Adam (Keras's formulas, float32 arithmetic, written here in NumPy) with its
``m`` and ``v`` stored after every step through a candidate quantiser and read
back before the next, on four problems, against the same run with float32
state (same data, same noise):

* ``quadratic``: 16,384 coordinates with curvatures spread log-uniformly over
  1e-4..1 (so ``v`` spans about eight orders of magnitude inside each block),
  noisy gradients, 3,000 steps, lr 1e-3;
* ``rosenbrock``: the chained Rosenbrock function in 1,024 dimensions,
  exact gradients, 5,000 steps, lr 1e-3;
* ``mlp``: a 32-256-10 tanh/softmax network on synthetic data, batch 32,
  20 epochs, lr 1e-3 (11k parameters);
* ``drop``: a long run in which the gradient's size drops a hundredfold in
  a quarter of the coordinates at step 1,000 (``v`` must follow it down
  over thousands of steps; they share blocks with coordinates that do not
  drop), 6,000 steps.

Candidates: the 8-bit codes of :mod:`fastopt.reference` (``dynamic``: ``m``
sign + 4 exponent + 3 significand bits, ``v`` 5 exponent + 3 significand bits,
per-block absmax scale) at block sizes 64, 256 and 2048; linear absmax codes
(``m`` to 127 levels, ``v`` to 255) at 256 and 2048; linear ``m`` with the
dynamic ``v``; and bfloat16 rounded to nearest for comparison.  Reported:
each run's final loss divided by the float32-state run's (1 = no cost).

    python benchmarks/int8_codes.py [--seeds 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fastopt import reference  # noqa: E402
from fastopt.bench import ceiling  # noqa: E402

F = np.float32


# --- quantisers: x -> the value read back after storing x ------------------------------

def dynamic(block):
    def q(x, signed):
        return reference.q8_decode(*reference.q8_encode(x, signed, block), block)
    return q


def linear(block):
    def q(x, signed):
        flat = x.reshape(-1)
        n = -(-flat.size // block) * block
        pad = np.zeros(n, F)
        pad[:flat.size] = flat
        pad = pad.reshape(-1, block)
        scale = np.abs(pad).max(axis=1, keepdims=True)
        levels = F(127 if signed else 255)
        with np.errstate(divide="ignore", invalid="ignore"):
            code = np.rint(np.where(scale > 0, pad / scale, 0) * levels)
        return (code / levels * scale).astype(F).reshape(-1)[:flat.size].reshape(x.shape)
    return q


def mixed(block):
    lin, dyn = linear(block), dynamic(block)
    return lambda x, signed: lin(x, signed) if signed else dyn(x, signed)


def bf16(x, signed):
    return reference.bf16_to_float(reference.bf16_round(x))


CANDIDATES = {"float32": None, "bf16 nearest": bf16,
              **{f"dynamic/{b}": dynamic(b) for b in (64, 256, 2048)},
              **{f"linear/{b}": linear(b) for b in (256, 2048)},
              "linear m, dynamic v/256": mixed(256)}


class Adam:
    """Keras's Adam in float32, its state stored through ``quant`` each step."""

    def __init__(self, w, lr, quant):
        self.w, self.lr, self.quant, self.t = w, F(lr), quant, 0
        self.m, self.v = np.zeros_like(w), np.zeros_like(w)

    def step(self, g):
        self.t += 1
        b1, b2, eps = F(0.9), F(0.999), F(1e-7)
        lr = F(self.lr * np.sqrt(1 - 0.999 ** self.t) / (1 - 0.9 ** self.t))
        m = self.m + (g - self.m) * (1 - b1)
        v = self.v + (g * g - self.v) * (1 - b2)
        self.w -= lr * m / (np.sqrt(v) + eps)
        if self.quant is not None:
            m, v = self.quant(m, True), self.quant(v, False)
        self.m, self.v = m, v


def quadratic(quant, seed):
    rng = np.random.default_rng(seed)
    n = 16384
    h = (10.0 ** rng.uniform(-4, 0, n)).astype(F)
    w = rng.standard_normal(n).astype(F)
    opt = Adam(w, 1e-3, quant)
    noise = np.random.default_rng(seed + 100)
    for _ in range(3000):
        opt.step(h * w + F(0.1) * np.sqrt(h) * noise.standard_normal(n).astype(F))
    return float(0.5 * np.sum(h.astype(float) * w.astype(float) ** 2))


def rosenbrock(quant, seed):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1.5, 1.5, 1024)).astype(F)
    opt = Adam(x, 1e-3, quant)

    def grad(x):
        g = np.zeros_like(x)
        d = x[1:] - x[:-1] ** 2
        g[:-1] += -400 * x[:-1] * d - 2 * (1 - x[:-1])
        g[1:] += 200 * d
        return g.astype(F)
    for _ in range(5000):
        opt.step(grad(x))
    x64 = x.astype(float)
    return float(np.sum(100 * (x64[1:] - x64[:-1] ** 2) ** 2 + (1 - x64[:-1]) ** 2))


def mlp(quant, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2000, 32)).astype(F)
    teacher = rng.standard_normal((32, 10)).astype(F)
    y = np.argmax(np.tanh(X @ teacher) + 0.3 * rng.standard_normal((2000, 10)), axis=1)
    w = np.concatenate([(rng.standard_normal(32 * 256) / np.sqrt(32)),
                        (rng.standard_normal(256 * 10) / np.sqrt(256))]).astype(F)
    opt = Adam(w, 1e-3, quant)
    order = np.random.default_rng(seed + 7)

    def loss_grad(w, xb, yb):
        W1, W2 = w[:32 * 256].reshape(32, 256), w[32 * 256:].reshape(256, 10)
        a = np.tanh(xb @ W1)
        z = a @ W2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(len(yb)), yb] + 1e-12))
        dz = p
        dz[np.arange(len(yb)), yb] -= 1
        dz /= len(yb)
        gW2 = a.T @ dz
        da = dz @ W2.T * (1 - a * a)
        gW1 = xb.T @ da
        return loss, np.concatenate([gW1.reshape(-1), gW2.reshape(-1)]).astype(F)
    for _ in range(20):
        idx = order.permutation(2000)
        for k in range(0, 2000, 32):
            b = idx[k:k + 32]
            opt.step(loss_grad(w, X[b], y[b])[1])
    return float(loss_grad(w, X, y)[0])


def drop(quant, seed):
    rng = np.random.default_rng(seed)
    n = 8192
    scale = np.ones(n, F)
    low = rng.random(n) < 0.25
    w = np.zeros(n, F)
    target = rng.standard_normal(n).astype(F)
    opt = Adam(w, 1e-3, quant)
    for t in range(6000):
        if t == 1000:
            scale[low] = F(0.01)
        g = scale * ((w - target) + F(0.5) * rng.standard_normal(n).astype(F))
        opt.step(g.astype(F))
    return float(np.mean((w.astype(float) - target) ** 2))


PROBLEMS = {"quadratic": quadratic, "rosenbrock": rosenbrock, "mlp": mlp, "drop": drop}


def ratio_rows(results):
    """One row per problem and candidate: final loss / float32 state's, over seeds."""
    rows = []
    for pname, by in results.items():
        base = np.array(by["float32"])
        for cname, losses in by.items():
            ratio = np.array(losses) / base
            rows.append({"problem": pname, "state": cname,
                         "loss / float32's (mean)": round(float(ratio.mean()), 4),
                         "min": round(float(ratio.min()), 4),
                         "max": round(float(ratio.max()), 4)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    start = time.time()
    results = {}
    for pname, problem in PROBLEMS.items():
        results[pname] = {}
        for cname, quant in CANDIDATES.items():
            results[pname][cname] = [problem(quant, s) for s in range(args.seeds)]
        base = np.array(results[pname]["float32"])
        print(f"{pname}: float32 final loss {np.mean(base):.4g}")
        for cname in CANDIDATES:
            ratio = np.array(results[pname][cname]) / base
            print(f"  {cname:24s} loss / float32's: mean {ratio.mean():.4f}, "
                  f"range {ratio.min():.4f}-{ratio.max():.4f}")
    out = {"command": "python benchmarks/int8_codes.py " + " ".join(argv or sys.argv[1:]),
           "machine": ceiling.machine_info(), "seeds": args.seeds,
           "rows": ratio_rows(results), "final_loss": results,
           "seconds": round(time.time() - start, 1)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
