"""Gradient clipping, learning-rate schedules and the optimisers (adam, rmsprop, adagrad, sgd).

Optimiser state is a dict of named arrays keyed like the parameters ("m.Whh", "v.Whh", ...),
so it is saved in and restored from a checkpoint as plain arrays. Every update is in place.
"""

from __future__ import annotations

import math

import numpy as np

# the state arrays each optimiser keeps per parameter
_SLOTS = {"adam": ("m", "v"), "rmsprop": ("v",), "adagrad": ("v",), "sgd": ("m",)}


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of every gradient entry."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_gradients(grads: dict[str, np.ndarray], mode: str, threshold: float) -> float:
    """Clip in place; returns the global norm measured before clipping.

    norm:  if ||g|| > threshold, scale every gradient by threshold / ||g|| (keeps the direction)
    value: clamp each entry to [-threshold, threshold]
    threshold 0 turns clipping off.
    """
    norm = global_norm(grads)
    if threshold <= 0 or not math.isfinite(norm):
        return norm
    if mode == "norm":
        if norm > threshold:
            scale = threshold / norm
            for g in grads.values():
                g *= scale
    else:
        for g in grads.values():
            np.clip(g, -threshold, threshold, out=g)
    return norm


ANNEALED = ("cosine", "linear")  # the schedules that run over the run's length (`progress`)


def learning_rate(cfg, step: int, progress: float = 0.0) -> float:
    """The learning rate for update number `step` (0-based). `progress`: the fraction of the
    run done, 0 to 1 (train.py's `_Limits.progress`), which only cosine and linear read; with
    a step or epoch limit and no max_time it is a pure function of the step too.

    step:        lr x rate^(step // N)
    exponential: lr x rate^(step / N)
    cosine:      from lr down to lr x lr_final over the run, along half a cosine
    linear:      from lr down to lr x lr_final over the run, in a straight line
    and, for any of them, the first `warmup_steps` updates rise linearly to it (from lr / N).
    """
    lr = cfg.learning_rate
    if cfg.lr_decay == "step":
        lr *= cfg.lr_decay_rate ** (step // cfg.lr_decay_steps)
    elif cfg.lr_decay == "exponential":
        lr *= cfg.lr_decay_rate ** (step / cfg.lr_decay_steps)
    elif cfg.lr_decay in ANNEALED:
        p = min(max(progress, 0.0), 1.0)
        left = 0.5 * (1.0 + math.cos(math.pi * p)) if cfg.lr_decay == "cosine" else 1.0 - p
        lr *= cfg.lr_final + (1.0 - cfg.lr_final) * left
    if step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    return lr


def init_state(name: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zeroed optimiser state for `params`, keys "slot.param"."""
    return {f"{slot}.{k}": np.zeros_like(p) for slot in _SLOTS[name] for k, p in params.items()}


def decays(p: np.ndarray) -> bool:
    """Whether weight decay applies to a parameter: the weight matrices, not the biases (as
    nanoGPT's configure_optimizers decays its 2-D parameters only)."""
    return p.ndim >= 2


def update(cfg, params: dict, grads: dict, state: dict, step: int, lr: float) -> None:
    """One optimiser update of params in place. `step` counts earlier updates (for Adam's bias
    correction); grads may be overwritten as scratch space.

    weight_decay w shrinks each weight matrix by lr x w before the update, apart from the
    gradient ("decoupled", as AdamW: Loshchilov & Hutter 2019), so Adam's scaling does not
    undo it; with the lr schedule it fades as the lr does."""
    name = cfg.optimizer
    for k, p in params.items():
        g = grads[k]
        if cfg.weight_decay > 0 and decays(p):
            p *= 1.0 - lr * cfg.weight_decay
        if name == "adam":
            m, v = state[f"m.{k}"], state[f"v.{k}"]
            m *= cfg.beta1
            m += (1.0 - cfg.beta1) * g  # m = b1 m + (1 - b1) g
            v *= cfg.beta2
            np.multiply(g, g, out=g)
            g *= 1.0 - cfg.beta2
            v += g  # v = b2 v + (1 - b2) g^2
            t = step + 1
            step_size = lr * math.sqrt(1.0 - cfg.beta2**t) / (1.0 - cfg.beta1**t)
            np.sqrt(v, out=g)
            g += cfg.eps
            np.divide(m, g, out=g)
            g *= step_size
            p -= g  # p -= lr_t m / (sqrt(v) + eps)
        elif name == "rmsprop":
            v = state[f"v.{k}"]
            v *= cfg.rmsprop_decay
            v += (1.0 - cfg.rmsprop_decay) * np.square(g)  # v = d v + (1 - d) g^2
            p -= lr * g / (np.sqrt(v) + cfg.eps)
        elif name == "adagrad":
            v = state[f"v.{k}"]
            v += np.square(g)  # v = v + g^2
            p -= lr * g / (np.sqrt(v) + cfg.eps)
        else:  # sgd with (heavy-ball) momentum
            m = state[f"m.{k}"]
            m *= cfg.momentum
            m += g  # m = mu m + g
            p -= lr * m
