"""An independent, deliberately plain PyTorch-order driver, in float64.

It re-states what ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``
followed by one ``torch.optim`` ``step()`` (the single-tensor for-loop path)
does, written out here in PyTorch's own form -- not with fastopt's reference
functions -- so the optimizer tests compare two separate statements of the
formulas.
"""
import math

import numpy as np

TORCH_DEFAULTS = {
    "SGD": dict(learning_rate=1e-3, momentum=0.0, dampening=0.0, nesterov=False,
                weight_decay=0.0, maximize=False),
    "Adagrad": dict(learning_rate=1e-2, lr_decay=0.0, weight_decay=0.0,
                    initial_accumulator_value=0.0, epsilon=1e-10, maximize=False),
    "RMSprop": dict(learning_rate=1e-2, rho=0.99, epsilon=1e-8, weight_decay=0.0,
                    momentum=0.0, centered=False, maximize=False),
    "Adam": dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.0, amsgrad=False, maximize=False),
    "AdamW": dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                  weight_decay=1e-2, amsgrad=False, maximize=False),
    "Adamax": dict(learning_rate=2e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                   weight_decay=0.0, maximize=False),
    "Adadelta": dict(learning_rate=1.0, rho=0.9, epsilon=1e-6, weight_decay=0.0,
                     maximize=False),
    "ASGD": dict(learning_rate=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
                 maximize=False),
    "NAdam": dict(learning_rate=2e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                  weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False,
                  maximize=False),
    "RAdam": dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                  weight_decay=0.0, decoupled_weight_decay=False, maximize=False),
    "Rprop": dict(learning_rate=1e-2, eta_minus=0.5, eta_plus=1.2, step_size_min=1e-6,
                  step_size_max=50.0, weight_decay=0.0, maximize=False),
    # the schedulefree package's AdamWScheduleFree (no maximize there: fastopt's extra)
    "ScheduleFreeAdamW": dict(learning_rate=2.5e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                              weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0,
                              maximize=False),
}


class TorchSpec:
    def __init__(self, class_name, params, **kwargs):
        self.h = {**TORCH_DEFAULTS[class_name], **kwargs}
        self.cls = class_name
        self.params = [np.array(p, dtype=np.float64) for p in params]
        self.state = [{} for _ in self.params]
        self.iterations = 0

    def lr(self):
        lr = self.h["learning_rate"]
        return float(lr(self.iterations)) if callable(lr) else lr

    def step(self, grads):
        h = self.h
        grads = [np.asarray(g, np.float64) for g in grads]
        if h.get("global_clipnorm") is not None:  # clip_grad_norm_
            total = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
            coef = min(h["global_clipnorm"] / (total + 1e-6), 1.0)
            grads = [g * coef for g in grads]
        if h.get("clipvalue") is not None:  # clip_grad_value_
            c = h["clipvalue"]
            grads = [np.clip(g, -c, c) for g in grads]
        lr = self.lr()
        for i, g in enumerate(grads):
            self.params[i] = self._one(self.params[i], g, self.state[i], lr)
        self.iterations += 1

    def _schedulefree(self, p, g, st, lr):
        """schedulefree.AdamWScheduleFree.step (1.4.1) for one tensor, in its
        order, its state under fastopt's names (``z`` is ``momentum``,
        ``exp_avg_sq`` is ``velocity``, its group's ``k`` is ``step``); the
        weights it keeps per group are kept per tensor here (every tensor
        steps every time)."""
        h = self.h
        k, b1, b2 = st.get("step", 0), h["beta_1"], h["beta_2"]
        if k < h["warmup_steps"]:
            lr = lr * (k + 1) / h["warmup_steps"]
        st["lr_max"] = max(lr, st.get("lr_max", -1.0))
        weight = (k + 1) ** h["r"] * st["lr_max"] ** h["weight_lr_power"]
        st["weight_sum"] = st.get("weight_sum", 0.0) + weight
        ckp1 = weight / st["weight_sum"] if st["weight_sum"] else 0.0
        z = st.setdefault("momentum", p.copy())
        st["velocity"] = st.get("velocity", 0.0) * b2 + (1 - b2) * g * g
        u = g / (np.sqrt(st["velocity"] / (1 - b2 ** (k + 1))) + h["epsilon"])
        u = u + h["weight_decay"] * p
        p = p + ckp1 * (z - p) + lr * (b1 * (1 - ckp1) - 1) * u
        st["momentum"] = z - lr * u
        st["step"] = k + 1
        return p

    def _one(self, p, g, st, lr):
        h, wd = self.h, self.h["weight_decay"] or 0.0
        if h["maximize"]:
            g = -g
        if self.cls == "ScheduleFreeAdamW":
            return self._schedulefree(p, g, st, lr)
        if self.cls == "AdamW" or h.get("decoupled_weight_decay"):
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        st["step"] = st.get("step", 0) + 1
        t = st["step"]
        if self.cls == "ASGD":  # eta and mu: float32 0-d tensors, from the step before
            eta = float(st.get("eta", np.float32(lr)))
            p = p * (1 - h["lambd"] * eta) - eta * g
            mu = float(st.get("mu", 1.0))
            st["ax"] = p.copy() if mu == 1 else st.get("ax", 0.0) + mu * (p - st.get("ax", 0.0))
            st["eta"] = np.float32(lr / (1 + h["lambd"] * lr * t) ** h["alpha"])
            st["mu"] = np.float32(1 / max(1, t - h["t0"]))
            return p
        if self.cls == "SGD":
            mu = h["momentum"]
            if mu:
                if "momentum" not in st:
                    st["momentum"] = g.copy()
                else:
                    st["momentum"] = mu * st["momentum"] + (1 - h["dampening"]) * g
                g = g + mu * st["momentum"] if h["nesterov"] else st["momentum"]
            return p - lr * g
        if self.cls == "Rprop":  # torch.sign is 0 for NaN, np.sign is not: none here
            if "step_size" not in st:
                st["prev"], st["step_size"] = np.zeros_like(p), np.full(p.shape, lr)
            s = np.sign(g * st["prev"])
            factor = np.select([s > 0, s < 0], [h["eta_plus"], h["eta_minus"]], 1.0)
            st["step_size"] = np.clip(st["step_size"] * factor, h["step_size_min"],
                                      h["step_size_max"])
            g = np.where(s < 0, 0.0, g)
            st["prev"] = g
            return p - np.sign(g) * st["step_size"]
        if self.cls == "Adagrad":
            st.setdefault("accumulator", np.full(p.shape, h["initial_accumulator_value"]))
            clr = lr / (1 + (t - 1) * h["lr_decay"])
            st["accumulator"] = st["accumulator"] + g * g
            return p - clr * g / (np.sqrt(st["accumulator"]) + h["epsilon"])
        if self.cls == "RMSprop":
            rho = h["rho"]
            st["velocity"] = rho * st.get("velocity", 0.0) + (1 - rho) * g * g
            if h["centered"]:
                st["average_gradient"] = rho * st.get("average_gradient", 0.0) + (1 - rho) * g
                avg = np.sqrt(st["velocity"] - st["average_gradient"] ** 2) + h["epsilon"]
            else:
                avg = np.sqrt(st["velocity"]) + h["epsilon"]
            if h["momentum"] > 0:
                st["momentum"] = h["momentum"] * st.get("momentum", 0.0) + g / avg
                return p - lr * st["momentum"]
            return p - lr * g / avg
        if self.cls == "Adadelta":  # square_avg, acc_delta; eps inside both square roots
            rho, eps = h["rho"], h["epsilon"]
            st["accumulated_grad"] = rho * st.get("accumulated_grad", 0.0) + (1 - rho) * g * g
            std = np.sqrt(st["accumulated_grad"] + eps)
            delta = np.sqrt(st.get("accumulated_delta_var", 0.0) + eps) / std * g
            st["accumulated_delta_var"] = (rho * st.get("accumulated_delta_var", 0.0)
                                           + (1 - rho) * delta * delta)
            return p - lr * delta
        b1, b2 = h["beta_1"], h["beta_2"]
        if self.cls == "NAdam":  # torch's mu_product: a float32 0-d tensor
            psi = h["momentum_decay"]
            mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
            mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
            st["mu_product"] = np.float32(st.get("mu_product", np.float32(1.0)) * np.float32(mu))
            prod = float(st["mu_product"])
            st["momentum"] = st.get("momentum", 0.0) * b1 + (1 - b1) * g
            st["velocity"] = b2 * st.get("velocity", 0.0) + (1 - b2) * g * g
            denom = np.sqrt(st["velocity"] / (1 - b2 ** t)) + h["epsilon"]
            p = p - lr * (1 - mu) / (1 - prod) * g / denom
            return p - lr * mu_next / (1 - prod * mu_next) * st["momentum"] / denom
        st["momentum"] = b1 * st.get("momentum", 0.0) + (1 - b1) * g
        if self.cls == "RAdam":  # variance rectification, or none while rho_t <= 5
            st["velocity"] = b2 * st.get("velocity", 0.0) + (1 - b2) * g * g
            m_hat = st["momentum"] / (1 - b1 ** t)
            rho_inf = 2 / (1 - b2) - 1
            rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
            if rho_t <= 5:
                return p - lr * m_hat
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                             / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            adaptive = math.sqrt(1 - b2 ** t) / (np.sqrt(st["velocity"]) + h["epsilon"])
            return p - lr * m_hat * rect * adaptive
        if self.cls == "Adamax":  # exp_inf: an infinity norm, epsilon inside the max
            st["norm"] = np.maximum(b2 * st.get("norm", 0.0), np.abs(g) + h["epsilon"])
            return p - lr / (1 - b1 ** t) * st["momentum"] / st["norm"]
        st["velocity"] = b2 * st.get("velocity", 0.0) + (1 - b2) * g * g
        v = st["velocity"]
        if h["amsgrad"]:
            st["velocity_hat"] = np.maximum(st.get("velocity_hat", 0.0), v)
            v = st["velocity_hat"]
        step_size = lr / (1 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + h["epsilon"]
        return p - step_size * st["momentum"] / denom
