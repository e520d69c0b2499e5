"""Does fine-tuning pay? A model fine-tuned from one trained on the bundled corpus, against a
fresh one, on a new text of about 100 KB, after the same N steps.

    python benchmarks/bench_finetune.py [--base-steps 500] [--steps 400] [--text FILE]

1. The base: `configs/shakespeare.yaml`'s architecture (two GRU layers of 192 units) trained on
   data/shakespeare.txt for --base-steps steps (batch 32, seq_length 100). Training it for the
   config's 10 minutes is more than a shared 2-core machine gives a benchmark, so it is bounded
   in steps: the base is far from converged, and the gap below is a lower bound.
2. The new text: the Book of Job in the King James Version (1611; its copyright has expired, it
   is in the public domain outside the UK), 99,578 bytes as Debian's bible-kjv package prints it
   (`bible -l80 "Job 1:1-Job 42:17"`, verse numbers removed): not in the bundled corpus, and
   English of about Shakespeare's time. --text gives another file instead.
3. Two runs on it with the same settings and seed (batch 32, seq_length 100, the config's learning
   rate and schedule, validation on the last 5% of the text every 25 steps): a fresh model, and
   one with --init-from the base. The table compares their validation bpc at each N.

Writes benchmarks/results/finetune-<date>.json; timings on a shared machine are noisy, the
losses are not (the same seed gives the same numbers).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from results_io import machine, write_result

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ["--config", str(REPO / "configs" / "shakespeare.yaml"), "--batch-size", "32"]
SETTINGS += ["--eval-every", "25", "--checkpoint-every", "1000", "--rng-seed", "1", "-q"]
SETTINGS += ["--set", "val_max_chars=20000"]  # the base validates often: a part of its tail
CHECKPOINTS = (25, 50, 100, 200, 400)


def job_text(folder: Path) -> Path:
    """The Book of Job (KJV) from Debian's `bible` program, verse numbers removed."""
    if shutil.which("bible") is None:
        raise SystemExit("needs Debian's bible-kjv package (apt-get install bible-kjv), or --text")
    text = subprocess.run(
        ["bible", "-l80", "Job 1:1-Job 42:17"], capture_output=True, text=True, check=True
    ).stdout
    text = re.sub(r"^ +\d+ ", "", text, flags=re.M)  # "  12 And the LORD said" -> "And the..."
    path = folder / "job.txt"
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def train(*args) -> None:
    cmd = [sys.executable, "-m", "charrnn", "train", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")


def val_bpc(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_bpc"] for r in rows if r.get("val_bpc") is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=500)
    parser.add_argument("--steps", type=int, default=max(CHECKPOINTS))
    parser.add_argument("--text", type=Path, default=None, help="the new text (default: Job)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="charrnn-bench-finetune-"))
    try:
        text = args.text or job_text(folder)
        base = folder / "base"
        print(f"base: {args.base_steps} steps on data/shakespeare.txt ...", file=sys.stderr)
        train(REPO / "data" / "shakespeare.txt", *SETTINGS, "--max-steps", args.base_steps,
              "--out", base)  # fmt: skip
        runs = {}
        for name, extra in (("fresh", []), ("fine-tuned", ["--init-from", base])):
            print(f"{name}: {args.steps} steps on {text.name} ...", file=sys.stderr)
            out = folder / name
            train(text, *SETTINGS, "--max-steps", args.steps, *extra, "--out", out)
            runs[name] = val_bpc(out)
        base_val = val_bpc(base)
        size = text.stat().st_size
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    steps = [n for n in CHECKPOINTS if n <= args.steps]
    print(f"\nvalidation bpc on the last 5% of {text.name} ({size:,} bytes), after N steps")
    print(f"{'N':>5} {'fresh':>8} {'fine-tuned':>11} {'gain':>7}")
    rows = []
    for n in steps:
        fresh, tuned = runs["fresh"][n], runs["fine-tuned"][n]
        rows.append({"steps": n, "fresh_bpc": fresh, "finetuned_bpc": tuned})
        print(f"{n:>5} {fresh:>8.3f} {tuned:>11.3f} {fresh - tuned:>+7.3f}")
    figures = {
        "text": str(args.text) if args.text else "Job (KJV), bible -l80 'Job 1:1-Job 42:17'",
        "text_bytes": size,
        "base_steps": args.base_steps,
        "base_val_bpc": base_val.get(args.base_steps),
        "settings": SETTINGS,
        "rows": rows,
    }
    out = write_result("finetune", figures, machine_info=machine())
    print(f"\nsaved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
