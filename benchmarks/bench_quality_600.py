"""The best model in a fixed wall time: charrnn and its PyTorch twin trained the same seconds on
the same machine, both scored exactly from a zero state on the validation text.

    python benchmarks/bench_quality_600.py                       # 600 s each: a quiet machine
    python benchmarks/bench_quality_600.py --seconds 60 --dynamic

charrnn trains `charrnn train CORPUS --config CONFIG --max-time SECONDS` (its own loop,
validation and checkpoints included in the budget). The twin is the same architecture and
settings written in PyTorch (benchmarks/torch_reference.py `train_twin`: the config's cell,
layers, hidden size, dropout, batch, chunk length, Adam with its betas, eps and lr schedule,
clipping, stream resets), trained on the same training ids for the same wall time, one after the
other, so that each has the machine to itself. Both are scored as `charrnn eval` scores:
the validation text (the last val_fraction of the corpus, which training never reads) in one
pass from a zero state, the first character from softmax(by). charrnn's last.npz is the
comparison (the twin has no validation to pick a best one); its best.npz and, with
--dynamic, its dynamic evaluation (`eval --dynamic`, default settings) are given too.
With --nanogpt DIR (a checkout of github.com/karpathy/nanoGPT), nanoGPT's CPU configuration
is trained the same seconds too and scored on the same validation text
(benchmarks/nanogpt_reference.py says how: its own model and AdamW, the README's CPU settings,
its cosine over the budget; a GPT has no state, so each character is scored with the 48 to 63
characters before it).

Timings need a quiet machine: on a shared one the two trainings get different shares of the
cores, and torch's threads spin while they wait for one (2 steps in 26 s with 2 threads against
15 steps in 15 s with 1, for the twin of configs/shakespeare.yaml on the shared 2 cores): there
give --threads 1. Results go to benchmarks/results/bench_quality_600-<date>.json. torch is a
benchmark dependency only (pip install torch==2.13.0).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from nanogpt_reference import CPU_CONFIG, nanogpt_total_loss, train_nanogpt  # noqa: E402
from results_io import machine, write_result  # noqa: E402
from torch_reference import train_twin, twin_total_loss  # noqa: E402

import charrnn  # noqa: E402
from charrnn.config import Config, load_config_file  # noqa: E402
from charrnn.data import build_corpus, split  # noqa: E402
from charrnn.evaluate import total_loss  # noqa: E402

CORPUS = REPO / "data" / "shakespeare.txt"
LN2 = math.log(2.0)


def run_charrnn(args, folder: Path, val_ids) -> dict:
    t = time.perf_counter()
    threads = [] if args.threads is None else [f"workers={args.threads}"]
    result = charrnn.train(
        args.corpus,
        config=args.config,
        out=folder,
        max_time=args.seconds,
        max_steps=0,
        set_items=threads,
    )
    seconds = time.perf_counter() - t
    row = {"steps": result.steps, "chars_trained": result.chars_seen, "seconds": seconds}
    for name in ("last", "best"):
        model = charrnn.load(folder / f"{name}.npz")
        row[f"{name}_bpc"] = total_loss(model.params, val_ids) / len(val_ids) / LN2
    if args.dynamic:
        model = charrnn.load(folder / "last.npz")
        text = "".join(model.vocab[i] for i in val_ids)
        row["last_dynamic_bpc"] = model.adapt(text)[1].bpc
    return row


def _torch_threads(args) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def run_twin(args, cfg: dict, train_ids, val_ids, vocab_size: int) -> dict:
    _torch_threads(args)
    t = time.perf_counter()
    rnn, head, steps = train_twin(train_ids, vocab_size, cfg, args.seconds)
    seconds = time.perf_counter() - t
    bpc = twin_total_loss(rnn, head, val_ids, vocab_size) / len(val_ids) / LN2
    chars = steps * cfg["batch_size"] * cfg["seq_length"]
    return {"steps": steps, "chars_trained": chars, "seconds": seconds, "last_bpc": bpc}


def run_nanogpt(args, train_ids, val_ids, vocab_size: int) -> dict:
    _torch_threads(args)
    t = time.perf_counter()
    model, iters = train_nanogpt(args.nanogpt, train_ids, vocab_size, args.seconds)
    seconds = time.perf_counter() - t
    total, scored = nanogpt_total_loss(model, val_ids)
    chars = iters * CPU_CONFIG["block_size"] * CPU_CONFIG["batch_size"]
    bpc = total / scored / LN2
    return {"steps": iters, "chars_trained": chars, "seconds": seconds, "last_bpc": bpc}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "shakespeare.yaml")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--dynamic", action="store_true", help="also charrnn's dynamic evaluation")
    p.add_argument("--skip-twin", action="store_true")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep charrnn's run folder here (default: a temporary one, deleted)",
    )
    p.add_argument(
        "--nanogpt",
        type=Path,
        default=None,
        help="a checkout of github.com/karpathy/nanoGPT: its CPU configuration is trained too",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="charrnn's workers and torch's threads (default: each one per core); on a shared "
        "machine 1, since torch's threads spin while they wait for a core",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    cfg = Config.from_dict(load_config_file(args.config)).to_dict()
    corpus = build_corpus(args.corpus.read_text(encoding="utf-8"))
    train_ids, val_ids = split(corpus.ids, cfg["val_fraction"])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "charrnn" if args.keep is None else args.keep
        rows["charrnn"] = run_charrnn(args, folder, val_ids)
    print(f"charrnn: {rows['charrnn']}", flush=True)
    if not args.skip_twin:
        rows["pytorch twin"] = run_twin(args, cfg, train_ids, val_ids, len(corpus.vocab))
        print(f"pytorch twin: {rows['pytorch twin']}", flush=True)
    if args.nanogpt is not None:
        rows["nanoGPT (CPU config)"] = run_nanogpt(args, train_ids, val_ids, len(corpus.vocab))
        print(f"nanoGPT: {rows['nanoGPT (CPU config)']}", flush=True)

    print(f"\n{args.seconds:g} s each, {args.config.name}, validation {len(val_ids):,} characters")
    print("| model | steps | chars trained | val bpc (exact, zero state) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        extra = f" (best.npz {row['best_bpc']:.4f})" if "best_bpc" in row else ""
        if "last_dynamic_bpc" in row:
            extra += f"; --dynamic {row['last_dynamic_bpc']:.4f}"
        cells = (name, f"{row['steps']:,}", f"{row['chars_trained']:,}", f"{row['last_bpc']:.4f}")
        print("| " + " | ".join(cells) + f"{extra} |")

    figures = {
        "seconds": args.seconds,
        "config": str(args.config),
        "threads": args.threads,
        "results": rows,
    }
    note = "needs a quiet machine for a fair comparison; a shared one gives noise"
    path = write_result(
        "bench_quality_600", figures, machine_info=machine(), note=note, out=args.out
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
