"""Samples that survive any seed: how much of what a model writes after an unusual seed is text.

    python benchmarks/bench_seeds.py                 # the defaults, and no noise at all
    python benchmarks/bench_seeds.py --variants input_noise=0.02 reset_noise=16 --steps 1200
    python benchmarks/bench_seeds.py --variants --checkpoints shakespeare=runs/q600/charrnn

For each variant (config settings, comma-separated key=value), a model is trained by
configs/demo.yaml (or --config) for a fixed number of steps (--steps, not its max_time, so that
a busy machine trains the same model) into --runs/<variant> (reused when it is there: --retrain
to train again); --checkpoints adds models trained elsewhere. Each model then writes 200 characters
after each of 50 seeds that are not in the corpus (names with a colon, words in capitals,
digits, runs of punctuation, words of other languages) and 10 ordinary ones, greedily and at
temperature 1 (rng_seed 1). The score of a sample is the fraction of its characters (the seed
left out) that are letters, spaces, newlines or ordinary punctuation (. , ; : ! ? ' -); the
target is at least 0.9 for every seed. Also given: the fraction of its words that are words of
the corpus, and each model's exact validation bpc (`charrnn eval` of the last 5% of the corpus),
so that the method's cost shows. Results go to benchmarks/results/bench_seeds-<date>.json.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from results_io import machine, write_result  # noqa: E402

import charrnn  # noqa: E402
from charrnn.data import encode, split  # noqa: E402

CORPUS = REPO / "data" / "shakespeare.txt"
ODD = [
    # names written with a colon (the corpus writes "NAME.")
    *("JULIET:", "ROMEO:", "HAMLET:", "MACBETH:", "OTHELLO:"),
    *("Sherlock:", "KING LEAR:", "PORTIA:", "PUCK:", "Narrator:"),
    # words in capitals
    *("HELLO WORLD", "COMPUTER SCIENCE", "GAME OVER", "WARNING", "NASA"),
    *("ZZZ TOP", "QWERTY", "XYLOPHONE", "JAVASCRIPT", "BREAKING NEWS"),
    # digits
    *("1234", "2026", "3.14159", "007", "42 is the answer"),
    *("9 8 7 6", "1999-12-31", "555 0199", "80486", "12:45"),
    # runs of punctuation
    *("?!?!", "...", ";;;", "-!-!", "!!!"),
    *("''''", ":::", ",,,,", "?.?.", "-:-:"),
    # words of other languages
    *("Guten Morgen", "Buongiorno", "Hola amigo", "Merci beaucoup", "Konnichiwa"),
    *("Spasibo", "Dziekuje", "Tack sa mycket", "Ich liebe dich", "Jambo rafiki"),
]
ORDINARY = [
    *("", "ROMEO.", "First Citizen.", "The king", "KING HENRY."),
    *("And what", "My lord,", "O, ", "Enter", "I will"),
]
ORDINARY_CHARS = re.compile(r"[A-Za-z \n.,;:!?'\-]")
LENGTH = 200


def text_fraction(sample: str) -> float:
    """The fraction of sample's characters that are letters, spaces, newlines or . , ; : ! ? ' -"""
    return len(ORDINARY_CHARS.findall(sample)) / max(1, len(sample))


def word_fraction(sample: str, words: set[str]) -> float:
    """The fraction of sample's words (runs of letters) that are words of the corpus."""
    found = re.findall(r"[A-Za-z]+", sample)
    return sum(w in words for w in found) / max(1, len(found))


def train(variant: str, args) -> Path:
    out = args.runs / variant.replace(",", "+")
    if args.retrain or not (out / "best.npz").exists():
        t = time.perf_counter()
        charrnn.train(
            args.corpus,
            config=args.config,
            out=out,
            overwrite=True,
            max_steps=args.steps,
            max_time=0,
            set_items=[item for item in variant.split(",") if item],
        )
        print(f"trained {variant or 'the defaults'}: {time.perf_counter() - t:.0f} s", flush=True)
    return out / "best.npz"


def score(path: Path, text: str, words: set[str]) -> dict:
    model = charrnn.load(path)
    held = "".join(model.vocab[i] for i in split(encode(text, model.vocab)[0], 0.05)[1])
    rows = {}
    for seed in ODD + ORDINARY:
        greedy = model.sample(seed, LENGTH, argmax=True, echo_seed=False)
        drawn = model.sample(seed, LENGTH, temperature=1.0, rng_seed=1, echo_seed=False)
        rows[seed] = {
            "greedy": text_fraction(greedy),
            "t1": text_fraction(drawn),
            "greedy_words": word_fraction(greedy, words),
            "t1_words": word_fraction(drawn, words),
            "greedy_sample": greedy,
            "t1_sample": drawn,
        }
    return {"val_bpc": model.evaluate(held).bpc, "step": model.step, "seeds": rows}


def summary(result: dict, seeds: list[str]) -> dict:
    rows = [result["seeds"][s] for s in seeds]
    out = {}
    for key in ("greedy", "t1", "greedy_words", "t1_words"):
        values = [r[key] for r in rows]
        out[key] = {"min": min(values), "mean": sum(values) / len(values)}
    out["seeds_at_0.9"] = sum(min(r["greedy"], r["t1"]) >= 0.9 for r in rows)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--variants",
        nargs="*",
        default=["input_noise=0,reset_noise=0", ""],
        help="config settings per model, key=value[,key=value]; '' is the defaults",
    )
    p.add_argument(
        "--checkpoints",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="score these models too (a checkpoint or run folder each), trained elsewhere: for "
        "example the configs/shakespeare.yaml model that bench_quality_600.py --keep leaves",
    )
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument(
        "--config",
        type=Path,
        default=REPO / "configs" / "demo.yaml",
        help="the config the variants are trained by (for --steps steps, not its max_time)",
    )
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_seeds")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    text = args.corpus.read_text(encoding="utf-8")
    for seed in ODD:
        if seed in text:
            raise SystemExit(f"seed {seed!r} is in the corpus; pick another")
    words = set(re.findall(r"[A-Za-z]+", text))
    results = {v or "defaults": score(train(v, args), text, words) for v in args.variants}
    for item in args.checkpoints:
        name, _, path = item.partition("=")
        found = Path(path)
        results[name] = score(found / "best.npz" if found.is_dir() else found, text, words)

    cols = list(results)
    print(
        f"\nfraction of text-like characters per seed (greedy / temperature 1), {args.steps} steps"
    )
    print(f"{'seed':>20} | " + " | ".join(f"{c[:22]:>22}" for c in cols))
    for seed in ODD + ORDINARY:
        cells = [f"{results[c]['seeds'][seed]['greedy']:.2f} {results[c]['seeds'][seed]['t1']:.2f}"
                 for c in cols]  # fmt: skip
        print(f"{seed!r:>20} | " + " | ".join(f"{x:>22}" for x in cells))
    for c in cols:
        res = results[c]
        res["odd"], res["ordinary"] = summary(res, ODD), summary(res, ORDINARY)
        odd, plain = res["odd"], res["ordinary"]
        print(
            f"{c}: val {res['val_bpc']:.4f} bpc; odd seeds: greedy min "
            f"{odd['greedy']['min']:.2f} mean {odd['greedy']['mean']:.3f}, t=1 min "
            f"{odd['t1']['min']:.2f} mean {odd['t1']['mean']:.3f}, {odd['seeds_at_0.9']}/50 "
            f"at >= 0.9 both ways; words of the corpus {odd['t1_words']['mean']:.3f} (t=1); "
            f"ordinary seeds: greedy mean {plain['greedy']['mean']:.3f}, t=1 mean "
            f"{plain['t1']['mean']:.3f}, words {plain['t1_words']['mean']:.3f}"
        )
    note = "machine shared with other jobs"
    figures = {"steps": args.steps, "config": str(args.config), "results": results}
    path = write_result("bench_seeds", figures, machine_info=machine(), note=note, out=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
