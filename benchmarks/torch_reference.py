"""PyTorch reference for the training-speed benchmark: the same model and training step as
charrnn, written idiomatically in PyTorch on the CPU, timed in chars/s.

Model: one-hot input -> nn.RNN (tanh), nn.LSTM or nn.GRU (`cell`, `num_layers` stacked) ->
nn.Linear(H, V); cross-entropy averaged over all B*T characters; Adam (lr 2e-3); gradient norm
clipped to 5; truncated BPTT with the hidden state (and the LSTM's cell state) carried between
chunks and detached. torch's cells have two bias vectors (b_ih, b_hh) where charrnn has one:
G H extra parameters per layer, no measurable cost; for the GRU, b_hn sits inside the reset
gate's product, where charrnn has no bias (the same arithmetic otherwise: both apply the reset
gate after the recurrent product).

Batches: the ids are split into B contiguous streams of L = len(ids) // B chars; step k reads
positions [c*T, (c+1)*T) of every stream (c = k mod number of whole chunks) and the next char as
targets; when the streams run out it wraps to chunk 0 and resets h.

Threads: torch is left at its default of one intra-op thread per core (2 on the project's
machine), as NumPy's BLAS is. torch is an optional benchmark dependency (pip install
torch==2.13.0); importing this module does not need it.

    python benchmarks/torch_reference.py --cell lstm --hidden 512 --batch 64 --seq-length 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "data" / "shakespeare.txt"


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError("torch is not installed: pip install torch==2.13.0") from exc
    return torch


def stream_chunks(
    ids: np.ndarray, batch: int, seq_length: int, n_chunks: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (inputs, targets, period): the first min(n_chunks, period) chunks as int64 arrays
    of shape (chunks, T, B), and `period`, the number of whole chunks the streams hold."""
    length = len(ids) // batch
    period = (length - 1) // seq_length
    if period < 1:
        raise ValueError(f"{len(ids)} ids are too few for batch {batch} x seq_length {seq_length}")
    used = min(n_chunks, period)
    streams = np.asarray(ids[: batch * length], dtype=np.int64).reshape(batch, length)
    span = used * seq_length
    x = streams[:, :span].reshape(batch, used, seq_length).transpose(1, 2, 0)
    y = streams[:, 1 : span + 1].reshape(batch, used, seq_length).transpose(1, 2, 0)
    return np.ascontiguousarray(x), np.ascontiguousarray(y), period


def torch_train_chars_per_sec(
    ids: np.ndarray,
    vocab_size: int,
    hidden: int,
    batch: int,
    seq_length: int,
    steps: int,
    warmup: int = 3,
    seed: int = 0,
    cell: str = "rnn",
    num_layers: int = 1,
) -> float:
    """Train the reference model for `warmup` + `steps` steps; return the steady-state speed,
    batch * seq_length * steps / seconds of the last `steps` steps. The timed loop is one-hot
    encoding, forward, backward, clipping and the optimizer step; batch ids are built before."""
    torch = _import_torch()
    import torch.nn.functional as F
    from torch import nn

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be positive and warmup non-negative")
    torch.manual_seed(seed)
    x_np, y_np, period = stream_chunks(ids, batch, seq_length, warmup + steps)
    xs, ys = torch.from_numpy(x_np), torch.from_numpy(y_np)

    if cell == "rnn":
        rnn = nn.RNN(vocab_size, hidden, num_layers, nonlinearity="tanh", batch_first=False)
    elif cell in ("lstm", "gru"):
        rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(vocab_size, hidden, num_layers)
    else:
        raise ValueError(f"unknown cell {cell!r}: rnn, lstm or gru")
    head = nn.Linear(hidden, vocab_size)
    params = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)

    def zero_state():
        h = torch.zeros(num_layers, batch, hidden)
        return (h, torch.zeros_like(h)) if cell == "lstm" else h

    state = zero_state()

    def train_step(k: int) -> None:
        nonlocal state
        chunk = k % period
        if chunk == 0:
            state = zero_state()
        x = F.one_hot(xs[chunk], vocab_size).to(torch.float32)  # (T, B, V)
        out, state_next = rnn(x, state)
        logits = head(out)
        loss = F.cross_entropy(logits.view(-1, vocab_size), ys[chunk].view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        if cell == "lstm":
            state = tuple(s.detach() for s in state_next)
        else:
            state = state_next.detach()

    for k in range(warmup):
        train_step(k)
    start = time.perf_counter()
    for k in range(warmup, warmup + steps):
        train_step(k)
    seconds = time.perf_counter() - start
    return batch * seq_length * steps / seconds


def load_corpus(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read a UTF-8 text; return its ids (uint8 when the vocabulary allows) and the sorted vocab."""
    text = path.read_text(encoding="utf-8")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, ids = np.unique(codes, return_inverse=True)
    dtype = np.uint8 if len(uniq) <= 256 else np.int64
    return ids.astype(dtype), [chr(c) for c in uniq]


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch reference training speed (chars/s).")
    parser.add_argument("--data", type=Path, default=DEFAULT_CORPUS, help="UTF-8 text corpus")
    parser.add_argument("--cell", choices=("rnn", "lstm", "gru"), default="rnn")
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up)")
    args = parser.parse_args()

    ids, vocab = load_corpus(args.data)
    torch = _import_torch()
    cps = torch_train_chars_per_sec(
        ids,
        len(vocab),
        args.hidden,
        args.batch,
        args.seq_length,
        args.steps,
        cell=args.cell,
        num_layers=args.num_layers,
    )
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) {args.cell} "
        f"x{args.num_layers} hidden={args.hidden} batch={args.batch} seq_length={args.seq_length} "
        f"vocab={len(vocab)} steps={args.steps}: {cps:,.0f} chars/s"
    )


if __name__ == "__main__":
    main()


# ---- the twin of a charrnn config, trained for a wall-clock budget and scored exactly ----


def config_twin(cfg: dict, vocab_size: int):
    """The PyTorch model of a charrnn config: cell, num_layers, hidden_size; (rnn, head)."""
    torch = _import_torch()
    from torch import nn

    cell, layers, hidden = cfg["cell"], cfg["num_layers"], cfg["hidden_size"]
    if cell == "rnn":
        rnn = nn.RNN(vocab_size, hidden, layers, nonlinearity="tanh", dropout=cfg["dropout"])
    else:
        rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(
            vocab_size, hidden, layers, dropout=cfg["dropout"]
        )
    torch.manual_seed(cfg.get("rng_seed") or 0)
    return rnn, nn.Linear(hidden, vocab_size)


def train_twin(ids: np.ndarray, vocab_size: int, cfg: dict, seconds: float) -> tuple:
    """Train the twin of a charrnn config on ids for `seconds` of wall time, as charrnn trains
    it: B contiguous streams read T characters at a time, the carried state detached between
    chunks and zeroed when the streams wrap and, per stream, with probability reset_prob before
    each chunk; Adam with charrnn's betas, eps, weight decay and lr schedule; the gradient's
    global norm clipped to grad_clip. Returns (rnn, head, steps)."""
    torch = _import_torch()
    import torch.nn.functional as F

    from charrnn import optim  # the schedule itself, so that the twin's cannot drift from it
    from charrnn.config import Config

    schedule = Config.from_dict(cfg)
    B, T = cfg["batch_size"], cfg["seq_length"]
    rnn, head = config_twin(cfg, vocab_size)
    params = [*rnn.parameters(), *head.parameters()]
    # AdamW's decay is charrnn's weight_decay: lr x w off the weight matrices before each step
    decay = cfg.get("weight_decay", 0.0)
    groups = [
        {"params": [p for p in params if optim.decays(p)], "weight_decay": decay},
        {"params": [p for p in params if not optim.decays(p)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"]
    )
    length = len(ids) // B
    period = (length - 1) // T
    streams = torch.from_numpy(np.asarray(ids[: B * length], dtype=np.int64).reshape(B, length))
    shape = (cfg["num_layers"], B, cfg["hidden_size"])
    state = None
    gen = torch.Generator().manual_seed(cfg.get("rng_seed") or 0)
    step, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = step % period
        if chunk == 0 or state is None:
            h = torch.zeros(shape)
            state = (h, torch.zeros(shape)) if cfg["cell"] == "lstm" else h
        elif cfg["reset_prob"] > 0:
            keep = (torch.rand(B, generator=gen) >= cfg["reset_prob"]).float()[None, :, None]
            state = tuple(s * keep for s in state) if cfg["cell"] == "lstm" else state * keep
        x = streams[:, chunk * T : (chunk + 1) * T].T  # (T, B)
        y = streams[:, chunk * T + 1 : (chunk + 1) * T + 1].T
        for group in optimizer.param_groups:
            progress = (time.perf_counter() - start) / seconds
            group["lr"] = optim.learning_rate(schedule, step, progress)
        out, state = rnn(F.one_hot(x, vocab_size).to(torch.float32), state)
        loss = F.cross_entropy(head(out).reshape(-1, vocab_size), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        optimizer.step()
        state = tuple(s.detach() for s in state) if cfg["cell"] == "lstm" else state.detach()
        step += 1
    return rnn, head, step


def twin_total_loss(rnn, head, ids: np.ndarray, vocab_size: int, block: int = 4096) -> float:
    """charrnn eval's exact score of the twin: sum over t of -ln p(x_t | x_<t) in nats, from a
    zero state, the first character scored by softmax(head(0)) = softmax(head.bias)."""
    torch = _import_torch()
    import torch.nn.functional as F

    rnn.eval()
    ids_t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    H = head.in_features
    total, state = 0.0, None
    top = torch.zeros(1, H)  # the top layer's output before the first character
    with torch.no_grad():
        for start in range(0, len(ids_t), block):
            x = ids_t[start : start + block]
            out, state = rnn(F.one_hot(x, vocab_size).to(torch.float32)[:, None], state)
            before = torch.cat([top, out[:-1, 0]])  # (T, H): what predicts each x[j]
            total += float(F.cross_entropy(head(before), x, reduction="sum").double())
            top = out[-1:, 0]
    rnn.train()
    return total
