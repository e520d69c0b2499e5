"""How well a model starts from a zero state: the loss of text windows scored from a zero state,
against the same windows scored after a burn-in of the text before them.

    make bench-quality CHECKPOINT=runs/x/best.npz            # the validation text of the corpus
    python benchmarks/bench_quality.py runs/x/best.npz --text held_out.txt --windows 64

`sample` and `eval` start from a zero state. A model trained only on carried states can fall,
from a zero state, into a regime it never leaves, and it does so mostly where a line starts
with a capital (a speaker's name, a seed like "ROMEO:"). So the windows start there: N windows
of --window characters, each at the start of a line whose first character is an uppercase
letter, spread evenly over the text (and, for comparison, N windows at random positions).

Each window is scored twice, as the mean loss (nats/char) over its characters:
- zero start: from the zero state, the first character predicted by softmax(by);
- burn-in: after reading the --burn-in characters before the window, unscored.
The ratio zero / burn-in is the penalty of the zero start; printed are the median and the worst
ratio over the windows. Without --text, the text is the checkpoint's validation text: the last
val_fraction of the corpus it was trained on (--corpus, default data/shakespeare.txt).
All N windows of a kind are scored together as one batch of N streams.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from results_io import machine, write_result  # noqa: E402

from charrnn import checkpoint as ckpt_io  # noqa: E402
from charrnn.data import encode, read_text, split  # noqa: E402
from charrnn.model import log_softmax_loss, run, zero_state  # noqa: E402
from charrnn.parallel import blas_threads  # noqa: E402

CORPUS = HERE.parent / "data" / "shakespeare.txt"


def window_losses(params: dict, ids: np.ndarray, starts: np.ndarray, window: int, burn_in: int):
    """Mean loss of each window ids[s : s + window], from a zero state and after burn_in chars.

    Returns two arrays (N,): zero-start and burn-in losses."""
    N = len(starts)
    cols = starts[None, :] + np.arange(window)[:, None]  # (window, N) positions scored
    targets = ids[cols]  # (window, N)

    def score(state, inputs):
        # the state predicts targets[0]; then read targets[:-1] to predict the rest
        hs, _ = run(params, inputs, state)  # (window, N, H) after the prefix of targets
        H = hs.shape[-1]
        _, _, losses = log_softmax_loss(
            params, hs[:window].reshape(window * N, H), targets.reshape(-1)
        )
        return losses.reshape(window, N).mean(axis=0, dtype=np.float64)  # (N,)

    inputs = targets[:-1]  # (window - 1, N)
    zero = score(zero_state(params, N), inputs)
    warm_cols = starts[None, :] - burn_in + np.arange(burn_in)[:, None]  # (burn_in, N)
    warm = run(params, ids[warm_cols], zero_state(params, N))[1]  # (N, W)
    return zero, score(warm, inputs)


def capital_line_starts(text_ids: np.ndarray, vocab: list[str], lo: int, hi: int) -> np.ndarray:
    """Positions p in [lo, hi) where a line starts with an uppercase letter."""
    is_upper = np.array([c.isupper() for c in vocab])
    newline = vocab.index("\n") if "\n" in vocab else -1
    p = np.arange(max(lo, 1), hi)
    return p[(text_ids[p - 1] == newline) & is_upper[text_ids[p]]]


def spread(candidates: np.ndarray, n: int) -> np.ndarray:
    if len(candidates) <= n:
        return candidates
    return candidates[np.linspace(0, len(candidates) - 1, n).round().astype(int)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--text", type=Path, help="score this text instead of the validation text")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="the corpus the model learnt")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--burn-in", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="for the random windows")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--name", help="also keep the figures in benchmarks/results/<NAME>-<date>.json")
    args = ap.parse_args(argv)

    ckpt = ckpt_io.load(args.checkpoint)
    if args.text is not None:
        text = read_text(args.text)
    else:
        val_fraction = ckpt.config.get("val_fraction", 0.05)
        text = read_text(args.corpus)
        text = text[len(split(np.arange(len(text)), val_fraction)[0]) :]
    ids, _ = encode(text, ckpt.vocab)
    lo, hi = args.burn_in, len(ids) - args.window
    if hi <= lo:
        print(f"the text has {len(ids)} characters: too short", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    kinds = {
        "line starts with a capital": spread(
            capital_line_starts(ids, ckpt.vocab, lo, hi), args.windows
        ),
        "random positions": np.sort(rng.integers(lo, hi, args.windows)),
    }
    report = {
        "checkpoint": str(args.checkpoint),
        "cell": ckpt.config.get("cell", "rnn"),
        "step": ckpt.step,
        "window": args.window,
        "burn_in": args.burn_in,
    }
    with blas_threads(1):
        for kind, starts in kinds.items():
            zero, warm = window_losses(ckpt.params, ids, starts, args.window, args.burn_in)
            ratio = zero / warm
            report[kind] = {
                "windows": len(starts),
                "median_ratio": float(np.median(ratio)),
                "worst_ratio": float(ratio.max()),
                "median_penalty_pct": 100 * (float(np.median(ratio)) - 1),
                "zero_start_bpc": float(zero.mean() / np.log(2)),
                "burn_in_bpc": float(warm.mean() / np.log(2)),
            }
    if args.name:
        saved = write_result(args.name, report, machine_info=machine())
        print(f"results: {saved}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{args.checkpoint} ({report['cell']}, step {ckpt.step}): {args.window}-char windows, "
        f"zero start vs {args.burn_in}-char burn-in"
    )
    print(f"{'windows at':28} {'N':>4} {'median':>8} {'worst':>8} {'zero bpc':>9} {'burn bpc':>9}")
    for kind in kinds:
        r = report[kind]
        print(
            f"{kind:28} {r['windows']:>4} {r['median_ratio']:>8.4f} {r['worst_ratio']:>8.4f} "
            f"{r['zero_start_bpc']:>9.4f} {r['burn_in_bpc']:>9.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
