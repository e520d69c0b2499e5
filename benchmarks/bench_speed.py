"""Training, sampling and eval speed of charrnn, against a PyTorch reference, in one run.

    make bench                        # the full table, every cell (about 15 minutes on 2 cores)
    python benchmarks/bench_speed.py --quick --cells lstm

For each cell (rnn, lstm, gru) and (hidden, batch, seq_length) it trains charrnn through
`charrnn.train.train` (the real loop: batches, forward, backward, clipping, Adam, logging) and
reads the steady-state speed from the run's metrics.jsonl, excluding warm-up steps, startup and
data loading. When torch is installed (`pip install torch==2.13.0`, the `bench` extra) it
trains the same model written in PyTorch (benchmarks/torch_reference.py: nn.RNN, nn.LSTM or
nn.GRU) for the same number of steps and prints the ratio. Sampling and exact eval speeds per
cell close the table. Figures are medians of --repeats repetitions; charrnn and torch alternate
within a repetition so that both see the same machine load. The figures, with the machine (CPU,
cores, BLAS, GEMM peak) and the command, go to benchmarks/results/speed-<date>.json (or --out);
`make docs-tables` turns that file into the tables of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gemm_peak import measure_gemm_peak  # noqa: E402
from results_io import blas_name, cpu_model, machine, write_result  # noqa: E402
from torch_reference import torch_train_chars_per_sec  # noqa: E402

from charrnn.config import Config  # noqa: E402
from charrnn.data import build_corpus, read_text  # noqa: E402
from charrnn.model import init_params  # noqa: E402
from charrnn.parallel import auto_workers  # noqa: E402
from charrnn.train import train  # noqa: E402

CORPUS = HERE.parent / "data" / "shakespeare.txt"
FULL_GRID = [(h, b, 100) for h in (128, 256, 512, 1024) for b in (1, 32, 64, 128)]
FULL_GRID.insert(FULL_GRID.index((256, 64, 100)), (256, 32, 64))
QUICK_GRID = [(128, 32, 100), (256, 32, 64), (512, 64, 100), (1024, 64, 100), (128, 1, 100)]
# the gated cells cost 3-4x the vanilla one per character: a smaller table, the same sizes
GATED_GRID = [(128, 32, 100), (256, 32, 100), (256, 64, 100), (512, 32, 100), (512, 64, 100)]
GATED_GRID += [(1024, 64, 100), (128, 1, 100)]
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
WARMUP = 3


def flops_per_char(hidden: int, vocab: int, gates: int = 1) -> float:
    """Forward 2(G H^2 + HV), backward 4(G H^2 + HV): the GEMM arithmetic of one training step
    (G gate blocks: 1 rnn, 4 lstm, 3 gru)."""
    return 6.0 * (gates * hidden * hidden + hidden * vocab)


def charrnn_train_speed(corpus, hidden, batch, seq_length, steps, cell="rnn", workers=0) -> float:
    """Steady-state chars/s of the real training loop, from metrics.jsonl's elapsed column."""
    cfg = Config(
        cell=cell,
        workers=workers,
        hidden_size=hidden,
        batch_size=batch,
        seq_length=seq_length,
        max_steps=WARMUP + steps,
        eval_every=0,
        sample_every=0,
        checkpoint_every=10**9,
        rng_seed=0,
        val_fraction=0.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, corpus, Path(tmp) / "run")
        rows = [json.loads(ln) for ln in (Path(tmp) / "run" / "metrics.jsonl").open()]
    elapsed = {r["step"]: r["elapsed"] for r in rows if "elapsed" in r}
    seconds = elapsed[WARMUP + steps] - elapsed[WARMUP]
    return batch * seq_length * steps / seconds


def calibrate_steps(corpus, hidden, batch, seq_length, seconds, cell="rnn", workers=0) -> int:
    """Enough steps for about `seconds` of charrnn training (at least 3, at most 300)."""
    t0 = time.perf_counter()
    charrnn_train_speed(corpus, hidden, batch, seq_length, 2, cell, workers)
    per_step = (time.perf_counter() - t0) / (WARMUP + 2)
    return int(min(300, max(3, seconds / per_step)))


def sampling_speed(params, vocab_size: int, length: int, num_samples: int) -> float:
    from charrnn.sample import generate

    rng = np.random.default_rng(0)
    prime = np.arange(20) % vocab_size
    t0 = time.perf_counter()
    for _ in generate(params, prime, length, rng, temperature=1.0, num_samples=num_samples):
        pass
    return length * num_samples / (time.perf_counter() - t0)


def eval_speed(params, vocab: list[str], text: str) -> float:
    from charrnn.evaluate import evaluate

    t0 = time.perf_counter()
    result = evaluate(params, vocab, text)
    return result.chars / (time.perf_counter() - t0)


def gemm_peak(threads: int) -> float:
    """The machine's float32 GEMM throughput with BLAS on `threads` threads (0: all of them)."""
    with threadpool_limits(limits=threads or None, user_api="blas"):
        return measure_gemm_peak()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="five sizes instead of the full grid")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5, help="target time of one measurement")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated cells to measure")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="charrnn's workers and torch's threads (0: their defaults, one per core); 1 keeps "
        "the comparison fair on a machine other jobs load, where multi-threaded torch collapses",
    )
    ap.add_argument(
        "--eval-chars", type=int, default=1_000_000, help="characters of the eval measurement"
    )
    ap.add_argument("--name", default="speed", help="results file: results/<name>-<date>.json")
    ap.add_argument("--out", type=Path, help="write the results here instead")
    ap.add_argument("--note", default="", help="a remark kept in the results file")
    args = ap.parse_args()

    corpus = build_corpus(read_text(CORPUS), str(CORPUS))
    V = len(corpus.vocab)
    have_torch = False
    if not args.no_torch:
        try:
            import torch

            have_torch = True
            if args.threads:
                torch.set_num_threads(args.threads)
            torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        except ImportError:
            torch_info = "torch not installed (pip install torch==2.13.0): no ratios"
    else:
        torch_info = "torch skipped"

    # the peak is the best the machine showed: measured before and again after the table, so
    # that another process busy at one of the two moments does not understate it
    load_start = os.getloadavg()[0]
    peak = gemm_peak(args.threads)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {blas_name()}, numpy {np.__version__}; "
        f"float32 GEMM peak (2048^3): {peak:.1f} GFLOP/s (start); {torch_info}",
        flush=True,
    )

    rows = []
    header = (
        f"{'cell':>4} {'hidden':>6} {'batch':>5} {'seq':>4} {'workers':>7} {'charrnn c/s':>12} "
        f"{'GFLOP/s':>8} {'% peak':>6} {'torch c/s':>10} {'ratio':>6}"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    cells = args.cells.split(",")
    for cell in cells:
        grid = QUICK_GRID if args.quick else FULL_GRID if cell == "rnn" else GATED_GRID
        for hidden, batch, seq in grid:
            rows.append(measure_row(args, corpus, cell, hidden, batch, seq, have_torch, peak))

    start_peak = peak
    end_peak = gemm_peak(args.threads)
    if end_peak > peak:
        peak = end_peak
        for row in rows:
            row["pct_peak"] = 100 * row["gflops"] / peak
    print(
        f"float32 GEMM peak (2048^3) after the table: {end_peak:.1f} GFLOP/s; "
        f"% of peak against {peak:.1f}:"
    )
    print(
        "  "
        + ", ".join(
            f"{r['hidden']}/{r['batch']}/{r['seq_length']}: {r['pct_peak']:.0f}%" for r in rows
        )
    )

    # sampling and eval at hidden 512 (random weights: speed does not depend on training)
    text = read_text(CORPUS)[: args.eval_chars]
    inference = {}
    print()
    for cell in cells:
        params = init_params(V, 512, np.random.default_rng(0), cell=cell)
        one = statistics.median(sampling_speed(params, V, 4000, 1) for _ in range(args.repeats))
        many = statistics.median(sampling_speed(params, V, 1000, 64) for _ in range(args.repeats))
        ev = statistics.median(eval_speed(params, corpus.vocab, text) for _ in range(args.repeats))
        inference[cell] = {"sample_1": one, "sample_64": many, "eval": ev}
        print(
            f"{cell}, hidden 512: sampling {one:,.0f} chars/s (1 stream), {many:,.0f} chars/s "
            f"(--num-samples 64, all streams); eval of {len(text):,} chars {ev:,.0f} chars/s"
        )

    figures = {
        "quick": args.quick,
        "threads": args.threads,
        "eval_chars": len(text),
        "torch": torch_info,
        "repeats": args.repeats,
        "gemm_peak_start_gflops": start_peak,
        "gemm_peak_end_gflops": end_peak,
        "load_1min_start": load_start,
        "load_1min_end": os.getloadavg()[0],
        "train": rows,
        "inference_hidden_512": inference,
    }
    path = write_result(
        args.name, figures, machine_info=machine(peak), note=args.note, out=args.out
    )
    print(f"results: {path}")


def measure_row(args, corpus, cell, hidden, batch, seq, have_torch, peak) -> dict:
    """One row of the table: charrnn and torch alternating, medians of args.repeats."""
    V = len(corpus.vocab)
    workers = args.threads or auto_workers(batch)
    steps = calibrate_steps(corpus, hidden, batch, seq, args.seconds, cell, workers)
    ours, theirs = [], []
    for rep in range(args.repeats):
        ours.append(charrnn_train_speed(corpus, hidden, batch, seq, steps, cell, workers))
        if have_torch:
            theirs.append(
                torch_train_chars_per_sec(
                    corpus.ids, V, hidden, batch, seq, steps, warmup=WARMUP, seed=rep, cell=cell
                )
            )
    cps = statistics.median(ours)
    gflops = cps * flops_per_char(hidden, V, GATES[cell]) / 1e9
    row = {
        "cell": cell,
        "hidden": hidden,
        "batch": batch,
        "seq_length": seq,
        "steps": steps,
        "workers": workers,
        "charrnn_chars_per_sec": cps,
        "charrnn_runs": ours,
        "gflops": gflops,
        "pct_peak": 100 * gflops / peak,
        "load_1min": os.getloadavg()[0],  # other jobs on the machine, as the row ended
    }
    tcol = rcol = "-"
    if theirs:
        tcps = statistics.median(theirs)
        row.update(torch_chars_per_sec=tcps, torch_runs=theirs, ratio=cps / tcps)
        tcol, rcol = f"{tcps:,.0f}", f"{cps / tcps:.2f}x"
    print(
        f"{cell:>4} {hidden:>6} {batch:>5} {seq:>4} {row['workers']:>7} {cps:>12,.0f} "
        f"{gflops:>8.1f} {row['pct_peak']:>5.0f}% {tcol:>10} {rcol:>6}",
        flush=True,
    )
    return row


if __name__ == "__main__":
    main()
