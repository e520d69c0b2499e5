"""nanoGPT's CPU configuration, trained for a wall-clock budget and scored as charrnn eval scores.

nanoGPT (github.com/karpathy/nanoGPT) is not vendored here: give a checkout of it (its
model.py is what this imports: GPT and GPTConfig, its AdamW set-up `configure_optimizers`),
for example

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python benchmarks/bench_quality_600.py --nanogpt /tmp/nanoGPT

The training loop is train.py's, with the settings of the README's CPU command

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
      --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
      --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

(and the config file's learning_rate 1e-3, min_lr 1e-4, warmup_iters 100, beta2 0.99, and
train.py's weight_decay 0.1, beta1 0.9, grad_clip 1.0, bias False): batches of 12 random
windows of 64 characters, its warmup then cosine schedule, AdamW. Two changes, both in its
favour: the cosine runs over the wall-clock budget instead of 2,000 iterations (as charrnn's
lr_decay cosine runs over max_time), and the periodic evaluation and checkpoints are left out,
so that all of the budget trains. It trains on the same training ids as charrnn (the same
vocabulary: the corpus's characters).

Scoring: a GPT has no state to carry, so each character is scored with up to block_size - 1
characters before it: windows of block_size characters every `stride` characters, each scoring
its last `stride` positions (its first window all of them), through nanoGPT's own forward
(targets of -1 are ignored), so that every character after the first 64 sees at least
block_size - stride before it. The text's first character has no context and is not scored:
the mean is over the rest.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

# README's CPU command over config/train_shakespeare_char.py over train.py's defaults
CPU_CONFIG = {
    "block_size": 64,
    "batch_size": 12,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "dropout": 0.0,
    "bias": False,
    "learning_rate": 1e-3,
    "min_lr": 1e-4,
    "warmup_iters": 100,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.99,
    "grad_clip": 1.0,
}


def import_nanogpt(folder: Path):
    """nanoGPT's model module from a checkout (its model.py), or SystemExit saying what to do."""
    if not (Path(folder) / "model.py").is_file():
        raise SystemExit(
            f"{folder}: no model.py of nanoGPT there; give a checkout of "
            "https://github.com/karpathy/nanoGPT"
        )
    sys.path.insert(0, str(folder))
    import model  # nanoGPT's

    return model


def lr_at(it: int, progress: float, cfg: dict) -> float:
    """train.py's get_lr, the cosine over the fraction `progress` of the budget."""
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg["min_lr"] + coeff * (cfg["learning_rate"] - cfg["min_lr"])


def train_nanogpt(folder: Path, ids: np.ndarray, vocab_size: int, seconds: float, seed=1337):
    """Train nanoGPT's CPU configuration on ids for `seconds` of wall time: (model, iters)."""
    import torch

    nanogpt = import_nanogpt(folder)
    cfg = CPU_CONFIG
    torch.manual_seed(seed)
    config = nanogpt.GPTConfig(
        block_size=cfg["block_size"],
        vocab_size=vocab_size,
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_embd=cfg["n_embd"],
        dropout=cfg["dropout"],
        bias=cfg["bias"],
    )
    model = nanogpt.GPT(config)
    optimizer = model.configure_optimizers(
        cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), "cpu"
    )
    data = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    B, T = cfg["batch_size"], cfg["block_size"]
    offsets = torch.arange(T)

    def batch():
        ix = torch.randint(len(data) - T, (B,))
        return data[ix[:, None] + offsets], data[ix[:, None] + offsets + 1]

    model.train()
    it, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, elapsed / seconds, cfg)
        x, y = batch()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
    return model, it


def nanogpt_total_loss(model, ids: np.ndarray, stride: int = 16, windows: int = 256) -> tuple:
    """(sum of -ln p(x_t | up to block_size - 1 characters before it) in nats, characters
    scored): every character but the first, as the module's docstring says."""
    import torch

    T = model.config.block_size
    data = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    n = len(data)
    starts = list(range(0, max(n - T, 0) + 1, stride))
    if starts[-1] + T < n:  # the tail that the last full window missed
        starts.append(n - T)
    model.eval()
    total, scored, done = 0.0, 0, 1  # done: positions 0..done-1 already scored (0 never is)
    with torch.no_grad():
        for i in range(0, len(starts), windows):
            group = starts[i : i + windows]
            x = torch.stack([data[s : s + T] for s in group])
            y = torch.full((len(group), T), -1, dtype=torch.int64)
            for row, s in enumerate(group):
                # targets y[j] = data[s + j + 1]: score the positions not scored yet
                first = max(done, s + 1)
                last = min(s + T, n - 1)  # the last target index this window has
                if last >= first:
                    y[row, first - s - 1 : last - s] = data[first : last + 1]
                    scored += last - first + 1
                    done = last + 1
            count = int((y >= 0).sum())
            if count:
                logits, loss = model(x, y)
                total += float(loss.double()) * count
    model.train()
    return total, scored
