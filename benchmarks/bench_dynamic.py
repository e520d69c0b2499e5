"""Dynamic evaluation against static: bits per character and characters per second of both on
the same text, and their ratio (the target: dynamic at least a quarter of static's speed).

    python benchmarks/bench_dynamic.py runs/x/best.npz [more checkpoints]
    python benchmarks/bench_dynamic.py runs/x/best.npz --chars 60000 \\
        --grid lr=5e-5,1e-4,2e-4 decay=0,0.01 segment=50,100

The text is the checkpoint's validation text: the last val_fraction of the corpus it was
trained on (--corpus, default data/shakespeare.txt), or --text FILE; --chars N scores its
first N characters. Static is `evaluate.total_loss` (the pass of `charrnn eval`), dynamic
`dynamic.Adapter.read` (the pass of `charrnn eval --dynamic`) with the default settings, or
each combination of --grid (how the defaults were chosen: on the validation text, so its
figures are not held-out ones). Each timing is the median of --repeat runs, static and dynamic
alternating, so a shared machine slows both alike. Results go to
benchmarks/results/bench_dynamic-<date>.json.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from results_io import machine, write_result  # noqa: E402

from charrnn import api  # noqa: E402
from charrnn.data import encode, read_text, split  # noqa: E402
from charrnn.dynamic import DEFAULTS  # noqa: E402
from charrnn.evaluate import total_loss  # noqa: E402

CORPUS = HERE.parent / "data" / "shakespeare.txt"
LN2 = math.log(2.0)


def timed(fn) -> tuple[float, float]:
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def text_ids(model: api.Model, args) -> tuple:
    """The ids of the text to score, and what it is."""
    if args.text is not None:
        ids, _ = encode(read_text(args.text), model.vocab)
        what = str(args.text)
    else:
        ids, _ = encode(read_text(args.corpus), model.vocab)
        ids = split(ids, model.config.get("val_fraction", 0.05))[1]
        what = f"validation text of {args.corpus.name}"
    if args.chars:
        ids = ids[: args.chars]
    return ids, f"{what}, first {len(ids):,} characters"


def grid(specs: list[str]) -> list[dict]:
    """lr=a,b decay=c segment=d,e -> every combination as dicts."""
    axes = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        cast = int if key == "segment" else (str if key == "method" else float)
        axes[key] = [cast(v) for v in values.split(",")]
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def bench(path: str, args) -> dict:
    model = api.load(path)
    ids, what = text_ids(model, args)
    n = len(ids)
    static_times, dynamic_times = [], []
    settings = DEFAULTS[args.method]
    for _ in range(args.repeat):
        static, dt = timed(lambda: total_loss(model.params, ids))
        static_times.append(dt)
        dynamic, dt = timed(lambda: _dynamic(model, ids, settings))
        dynamic_times.append(dt)
    ts, td = statistics.median(static_times), statistics.median(dynamic_times)
    arch = model.arch
    row = {
        "checkpoint": path,
        "model": f"{arch.num_layers}x{arch.hidden_size} {arch.cell}, step {model.step}",
        "text": what,
        "static_bpc": static / n / LN2,
        "dynamic_bpc": dynamic / n / LN2,
        "settings": settings.to_dict(),
        "static_chars_per_sec": n / ts,
        "dynamic_chars_per_sec": n / td,
        "speed_ratio": ts / td,
    }
    print(
        f"{row['model']}: static {row['static_bpc']:.4f} bpc at {n / ts:,.0f} chars/s, "
        f"dynamic {row['dynamic_bpc']:.4f} bpc at {n / td:,.0f} chars/s: "
        f"speed ratio {ts / td:.2f} (target >= 0.25)",
        flush=True,
    )
    if args.grid:
        row["grid"] = []
        for combo in grid(args.grid):
            s = DEFAULTS[combo.get("method", args.method)]
            s = type(s)(**{**s.to_dict(), **combo})
            loss, dt = timed(lambda s=s: _dynamic(model, ids, s))
            row["grid"].append({**s.to_dict(), "bpc": loss / n / LN2, "chars_per_sec": n / dt})
            print(f"  {s.to_dict()}: {loss / n / LN2:.4f} bpc, {n / dt:,.0f} chars/s", flush=True)
    return row


def _dynamic(model: api.Model, ids, settings) -> float:
    return sum(block.total for block in model.adapter(settings).read(ids))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--text", type=Path, default=None)
    p.add_argument("--chars", type=int, default=0, help="score the first N characters (0: all)")
    p.add_argument("--method", default="rms", choices=sorted(DEFAULTS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [bench(path, args) for path in args.checkpoints]
    note = "machine shared with other jobs: compare the ratio, measured in one run"
    figures = {"results": rows}
    path = write_result("bench_dynamic", figures, machine_info=machine(), note=note, out=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
