"""PyTorch reference for the training-speed benchmark: the same model and training step as
charrnn, written idiomatically in PyTorch on the CPU, timed in chars/s.

Model: one-hot input -> nn.RNN (tanh, one layer) -> nn.Linear(H, V); cross-entropy averaged over
all B*T characters; Adam (lr 2e-3); gradient norm clipped to 5; truncated BPTT with the hidden
state carried between chunks and detached. nn.RNN has two bias vectors (b_ih, b_hh) where charrnn
has one: H extra parameters, no measurable cost.

Batches: the ids are split into B contiguous streams of L = len(ids) // B chars; step k reads
positions [c*T, (c+1)*T) of every stream (c = k mod number of whole chunks) and the next char as
targets; when the streams run out it wraps to chunk 0 and resets h.

Threads: torch is left at its default of one intra-op thread per core (2 on the project's
machine), as NumPy's BLAS is. torch is an optional benchmark dependency (pip install
torch==2.13.0); importing this module does not need it.

    python benchmarks/torch_reference.py --hidden 512 --batch 64 --seq-length 100 --steps 20
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

    rnn = nn.RNN(vocab_size, hidden, nonlinearity="tanh", batch_first=False)
    head = nn.Linear(hidden, vocab_size)
    params = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    h = torch.zeros(1, batch, hidden)

    def train_step(k: int) -> None:
        nonlocal h
        chunk = k % period
        if chunk == 0:
            h = torch.zeros(1, batch, hidden)
        x = F.one_hot(xs[chunk], vocab_size).to(torch.float32)  # (T, B, V)
        out, h_next = rnn(x, h)
        logits = head(out)
        loss = F.cross_entropy(logits.view(-1, vocab_size), ys[chunk].view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        h = h_next.detach()

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
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up)")
    args = parser.parse_args()

    ids, vocab = load_corpus(args.data)
    torch = _import_torch()
    cps = torch_train_chars_per_sec(
        ids, len(vocab), args.hidden, args.batch, args.seq_length, args.steps
    )
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) "
        f"hidden={args.hidden} batch={args.batch} seq_length={args.seq_length} "
        f"vocab={len(vocab)} steps={args.steps}: {cps:,.0f} chars/s"
    )


if __name__ == "__main__":
    main()
