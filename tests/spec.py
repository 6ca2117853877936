"""An independent, deliberately plain Keras-order driver built on the reference.

It re-states, without fastopt's optimizer classes, what one Keras 3
``apply_gradients`` does: drop ``None`` gradients, clip (per-tensor norm,
global norm, or value), apply decoupled weight decay to the variables that
have gradients, run the update rule, count the iteration.  Everything in
float64.  The optimizer tests compare fastopt's classes with it.
"""
import numpy as np

from fastopt import reference as R

KERAS_DEFAULTS = {
    "SGD": dict(learning_rate=0.01, momentum=0.0, nesterov=False),
    "Adagrad": dict(learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7),
    "RMSprop": dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False),
    "Adam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False),
    "AdamW": dict(learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                  epsilon=1e-7, amsgrad=False),
    "Adamax": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "Ftrl": dict(learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0),
    "Lion": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.99),
    "Adadelta": dict(learning_rate=0.001, rho=0.95, epsilon=1e-7),
    "Nadam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "Lamb": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
}


class KerasSpec:
    def __init__(self, class_name, params, **kwargs):
        self.h = {**KERAS_DEFAULTS[class_name], **kwargs}
        self.cls = class_name
        self.params = [np.array(p, dtype=np.float64) for p in params]
        self.iterations = 0
        h = self.h
        if class_name == "SGD":
            names = ["momentum"] if h["momentum"] != 0 else []
        elif class_name == "Adagrad":
            names = ["accumulator"]
        elif class_name == "RMSprop":
            names = ["velocity"] + (["average_gradient"] if h["centered"] else []) \
                + (["momentum"] if h["momentum"] > 0 else [])
        elif class_name == "Adamax":
            names = ["momentum", "norm"]
        elif class_name == "Ftrl":
            names = ["accumulator", "linear"]
        elif class_name == "Lion":
            names = ["momentum"]
        elif class_name == "Adadelta":
            names = ["accumulated_grad", "accumulated_delta_var"]
        elif class_name == "Lamb":
            names = ["momentum", "velocity"]
        elif class_name == "Nadam":
            names = ["momentum", "velocity"]
            self.u_product = 1.0  # Keras's optimizer variable, one per optimizer
        else:
            names = ["momentum", "velocity"] + (["velocity_hat"] if h["amsgrad"] else [])
        init = h.get("initial_accumulator_value", 0.0)
        self.slots = {n: [np.full(p.shape, init if n == "accumulator" else 0.0)
                          for p in self.params] for n in names}

    def lr(self):
        lr = self.h["learning_rate"]
        return float(lr(self.iterations)) if callable(lr) else lr

    def step(self, grads):
        h, lr = self.h, self.lr()
        if self.cls == "Nadam":  # once per apply, before the variables' updates
            t = self.iterations + 1
            self.u_product = self.u_product * (h["beta_1"] * (1.0 - 0.5 * 0.96 ** t))
        grads = [None if g is None else np.asarray(g, np.float64) for g in grads]
        if h.get("clipnorm") is not None:
            grads = [None if g is None else R.clip_by_norm(g, h["clipnorm"]) for g in grads]
        elif h.get("global_clipnorm") is not None:
            grads = R.clip_by_global_norm(grads, h["global_clipnorm"])
        elif h.get("clipvalue") is not None:
            grads = [None if g is None else R.clip_by_value(g, h["clipvalue"]) for g in grads]
        for i, g in enumerate(grads):
            if g is None:
                continue
            w = self.params[i]
            if h.get("weight_decay") is not None:
                w = w * (1.0 - h["weight_decay"] * lr)
            self.params[i], *new = self._rule(w, g, [self.slots[n][i] for n in self.slots], lr)
            for n, value in zip(self.slots, new):
                self.slots[n][i] = value
        self.iterations += 1

    def _rule(self, w, g, slots, lr):
        h = self.h
        if self.cls == "SGD":
            if h["momentum"] == 0:
                return R.sgd(w, g, learning_rate=lr)
            f = R.sgd_nesterov if h["nesterov"] else R.sgd_momentum
            return f(w, g, *slots, learning_rate=lr, momentum=h["momentum"])
        if self.cls == "Adagrad":
            return R.adagrad(w, g, *slots, learning_rate=lr, epsilon=h["epsilon"])
        if self.cls == "RMSprop":
            kw = dict(learning_rate=lr, rho=h["rho"], epsilon=h["epsilon"])
            if h["momentum"] > 0:
                kw["momentum"] = h["momentum"]
                f = R.rmsprop_centered_momentum if h["centered"] else R.rmsprop_momentum
            else:
                f = R.rmsprop_centered if h["centered"] else R.rmsprop
            return f(w, g, *slots, **kw)
        if self.cls == "Adamax":
            return R.adamax(w, g, *slots, learning_rate=lr, beta_1=h["beta_1"],
                            beta_2=h["beta_2"], epsilon=h["epsilon"], step=self.iterations + 1)
        if self.cls == "Ftrl":
            return self._ftrl(w, g, *slots, lr)
        if self.cls == "Adadelta":
            return R.adadelta(w, g, *slots, learning_rate=lr, rho=h["rho"], epsilon=h["epsilon"])
        if self.cls == "Lion":
            return R.lion(w, g, *slots, learning_rate=lr, beta_1=h["beta_1"], beta_2=h["beta_2"])
        if self.cls == "Lamb":
            return self._lamb(w, g, *slots, lr)
        if self.cls == "Nadam":
            return R.nadam(w, g, *slots, learning_rate=lr, beta_1=h["beta_1"],
                           beta_2=h["beta_2"], epsilon=h["epsilon"], step=self.iterations + 1,
                           u_product=self.u_product)
        alpha = R.adam_alpha(lr, h["beta_1"], h["beta_2"], self.iterations)
        f = R.adam_amsgrad if h["amsgrad"] else R.adam
        return f(w, g, *slots, alpha=alpha, beta_1=h["beta_1"], beta_2=h["beta_2"],
                 epsilon=h["epsilon"])

    def _lamb(self, w, g, m, v, lr):
        # Keras 3.15.1's Lamb.update_step, operation for operation, one tensor
        h, t = self.h, self.iterations + 1
        m = m + (g - m) * (1 - h["beta_1"])
        v = v + (np.square(g) - v) * (1 - h["beta_2"])
        update = (m / (1.0 - h["beta_1"] ** t)) / (np.sqrt(v / (1.0 - h["beta_2"] ** t))
                                                   + h["epsilon"])
        w_norm = np.sqrt(np.sum(np.power(w, 2)))
        g_norm = np.sqrt(np.sum(np.power(update, 2)))
        with np.errstate(divide="ignore", invalid="ignore"):  # where() computes both sides
            ratio = np.where(w_norm > 0, np.where(g_norm > 0, w_norm / g_norm, 1.0), 1.0)
        return w - ratio * lr * update, m, v

    def _ftrl(self, w, g, accum, linear, lr):
        # Keras 3.15.1's Ftrl.update_step, operation for operation
        h = self.h
        power = -h["learning_rate_power"]
        l2_reg = h["l2_regularization_strength"] + h["beta"] / (2.0 * lr)
        grad_to_use = g + 2 * h["l2_shrinkage_regularization_strength"] * w
        new_accum = accum + g ** 2
        linear = linear + (grad_to_use - (new_accum ** power - accum ** power) / lr * w)
        quadratic = new_accum ** power / lr + 2 * l2_reg
        l1 = h["l1_regularization_strength"]
        return (np.clip(linear, -l1, l1) - linear) / quadratic, new_accum, linear
