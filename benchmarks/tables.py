"""Rewrite the measured tables of the docs from the committed results files (make docs-tables).

A table in a page under docs/ lives between two comments that name its kind and its source:

    <!-- BEGIN speed-train benchmarks/results/speed-2026-12-02.json -->
    ... (written by this script: the provenance line and the table)
    <!-- END speed-train -->

This script reads each named results file (written by bench_speed.py, bench_mpi.py,
bench_scale.py, bench_serve.py or bench_quality_600.py through results_io.py) and replaces what
stands between the comments, so a figure in the docs is always the one its results file holds,
with the command, the date and the machine that produced it. Text outside the markers is left
alone.

    python benchmarks/tables.py            # rewrite docs/*.md in place
    python benchmarks/tables.py --check    # exit 1 if a page is not what its results give
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charrnn.atomic import replace_atomically  # noqa: E402

BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN (?P<kind>[\w-]+) (?P<source>\S+) -->\n)(?P<body>.*?)"
    r"(?P<end><!-- END (?P=kind) -->)",
    re.S,
)


def command(result: dict) -> str:
    """The command a results file records, without its --note (a remark, not a setting)."""
    words = shlex.split(result["command"])
    kept = [w for i, w in enumerate(words) if w != "--note" and words[i - 1 : i] != ["--note"]]
    return " ".join(shlex.quote(w) for w in kept)


def provenance(result: dict, threads_note: bool = False) -> str:
    """The line under a table: the command, the date and the machine of its results file."""
    m = result["machine"]
    peak = m.get("gemm_peak_gflops")
    threads = result.get("threads") or 0
    peak_text = f", float32 GEMM peak {peak:.0f} GFLOP/s" if peak else ""
    if peak and threads_note:
        peak_text += f" on {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    load = [f"{result[k]:.1f}" for k in ("load_1min_start", "load_1min_end") if k in result]
    load_text = f"; load average {' at the start, '.join(load)} at the end" if load else ""
    if len(load) == 1:
        load_text = f"; load average {load[0]} at the end"
    said = result.get("note", "").rstrip(".")
    note = f" {said[:1].upper()}{said[1:]}." if said else ""
    when = f"finished {result['when_utc']} UTC"
    if "started_utc" in result:
        when = f"from {result['started_utc']} to {result['when_utc'][11:]} UTC"
    return (
        f"*Measured by `{command(result)}`, {when}: {m['cpu']}, "
        f"{m['cores']} cores, {m['blas']}, NumPy {m['numpy']}{peak_text}{load_text}.{note}*"
    )


def _table(header: list[str], rows: list[list[str]], right: bool = True) -> str:
    align = "|".join("---:" if right and i else "---" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def speed_train(result: dict) -> str:
    rows = []
    for r in result["train"]:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        torch = f"{r['torch_chars_per_sec']:,.0f}" if "torch_chars_per_sec" in r else "-"
        rows.append(
            [
                r["cell"],
                str(r["hidden"]),
                str(r["batch"]),
                str(r["seq_length"]),
                f"{r['charrnn_chars_per_sec']:,.0f}",
                f"{r['gflops']:.1f}",
                f"{r['pct_peak']:.0f}%",
                torch,
                ratio,
            ]
        )
    header = ["cell", "hidden", "batch", "seq", "charrnn chars/s", "GFLOP/s", "% of peak"]
    header += ["PyTorch chars/s", "ratio"]
    return _table(header, rows) + "\n\n" + provenance(result, threads_note=True)


def speed_inference(result: dict) -> str:
    rows = [
        [cell, f"{v['sample_1']:,.0f}", f"{v['sample_64']:,.0f}", f"{v['eval']:,.0f}"]
        for cell, v in result["inference_hidden_512"].items()
    ]
    chars = result.get("eval_chars", 1_000_000)
    header = ["cell (hidden 512), chars/s", "sampling, 1 stream", "sampling, 64 streams in all"]
    header.append(f"exact eval of {chars:,} characters")
    return _table(header, rows) + "\n\n" + provenance(result)


def mpi_step(result: dict) -> str:
    one, two = result["one"], result["two"]
    rows = []
    for h, s1 in one["steps"].items():
        s2, alone = two["steps"][h], two["allreduce"][h]
        rows.append(
            [
                h,
                f"{alone['bytes'] / 1e6:.2f} MB",
                f"{1e3 * s1['compute_s']:.1f} ms",
                f"{1e3 * s2['compute_s']:.1f} ms",
                f"{1e3 * s2['wait_s']:.2f} ms",
                f"{1e3 * s2['allreduce_s']:.2f} ms",
                f"{1e3 * alone['s']:.2f} ms",
            ]
        )
    header = ["hidden", "gradient", "K=1 compute", "K=2 compute", "K=2 wait", "K=2 Allreduce"]
    header.append("Allreduce alone")
    return _table(header, rows) + "\n\n" + provenance(result)


def mpi_compute(result: dict) -> str:
    compute = result["one"]["compute"]
    ks = sorted(int(k) for k in next(iter(compute.values())))
    header = ["compute of one machine"] + [f"{64 // k} stream{'s' if k < 64 else ''}" for k in ks]
    rows = [
        [f"hidden {h}"] + [f"{1e3 * per_k[str(k)]:.1f} ms" for k in ks]
        for h, per_k in compute.items()
    ]
    return _table(header, rows) + "\n\n" + provenance(result)


def mpi_speedup(result: dict) -> str:
    parts = []
    for network, per_hidden in result["speedup"].items():
        k_count = len(next(iter(per_hidden.values())))
        header = [network] + [f"K={2**i}" for i in range(1, k_count + 1)]
        rows = [[f"hidden {h}"] + [f"{x:.1f}" for x in row] for h, row in per_hidden.items()]
        parts.append(_table(header, rows))
    return "\n\n".join(parts) + "\n\n" + provenance(result)


def scale(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        cold, warm, prep = r["train_cold"], r["train_warm"], r["prepare"]
        rows.append(
            [
                f"{r['size_mb']:,} MB",
                f"{cold['peak_rss_mb']:.0f} MB / {cold['wall_s']:.1f} s",
                f"{warm['peak_rss_mb']:.0f} MB / {warm['wall_s']:.1f} s",
                f"{prep['peak_rss_mb']:.0f} MB / {prep['json']['seconds']:.1f} s / "
                f"{prep['json']['mb_per_sec']:.0f} MB/s",
            ]
        )
    header = ["corpus", "`train` peak RSS / wall (cache built first)"]
    header += ["`train` peak RSS / wall (cache reused)", "`prepare` peak RSS / time / speed"]
    enc = result["encode"]
    mixed = enc["mixed"]["json"]
    encoding = (
        f"Encoding (`charrnn prepare`, in-process time): ASCII {enc['ascii_mb_per_sec']} MB/s, "
        f"mixed Unicode {enc['mixed_mb_per_sec']} MB/s ({mixed['vocab_size']} distinct "
        f"characters, {mixed['id_dtype']} ids, peak RSS {enc['mixed']['peak_rss_mb']:.0f} MB)."
    )
    return _table(header, rows, right=False) + "\n\n" + encoding + "\n\n" + provenance(result)


def serve(result: dict) -> str:
    """bench_serve.py: the load rows, then the ratios, the memory run and batched = alone."""
    rows = [
        [
            r["model"],
            str(r["clients"]),
            f"{r['chars_per_sec']:,.0f}",
            f"{r['ttfc_ms_p50']:.0f} / {r['ttfc_ms_p99']:.0f} ms",
            f"{r['first_requests_ttfc_ms_p99']:,.0f} ms",
            f"{r['server_ttfc_ms_p50']:.0f} / {r['server_ttfc_ms_p99']:.0f} ms",
            f"{r['gap_ms_p50']:.1f} / {r['gap_ms_p99']:.0f} ms",
            f"{r['chars_per_piece']:.1f}",
            f"{r['chars_per_server_cpu_s']:,.0f}",
        ]
        for r in result["load"]
    ]
    header = ["model", "clients", "chars/s in all", "TTFC p50 / p99", "first requests' p99"]
    header += ["at the server p50 / p99 (all requests)"]
    header += ["gap p50 / p99", "chars per piece", "chars per server CPU-s"]
    ratios = "; ".join(
        f"{name}: {x:.2f}x ({result['ratios_per_server_cpu_s'][name]:.2f}x per server CPU-s)"
        for name, x in result["ratios"].items()
    )
    mem, same = result["memory"], result["batched_equals_alone"]
    rss = [m["rss_mib"] for m in mem["rss_mib"]]
    lines = [
        f"Aggregate chars/s at 64 clients over 1 client: {ratios}.",
        f"Server RSS over {mem['requests']:,} requests of {PROMPT_NOTE}: {rss[0]:.1f} MiB after "
        f"the first tenth, {rss[-1]:.1f} MiB at the end (at most {max(rss):.1f}).",
        f"Seeded requests of {same['length']} characters sent {same['requests']} at once that got "
        f"the text each gets alone: {same['identical']} of {same['requests']}.",
    ]
    return _table(header, rows) + "\n\n" + "\n".join(lines) + "\n\n" + provenance(result)


PROMPT_NOTE = "20 characters, 64 clients"


def quality(result: dict) -> str:
    """bench_quality_600.py: each model's steps, characters and exact validation bpc."""
    rows = []
    for name, r in result["results"].items():
        bpc = f"{r['last_bpc']:.4f}"
        if r.get("best_bpc") is not None and round(r["best_bpc"], 4) != round(r["last_bpc"], 4):
            bpc += f" (best.npz {r['best_bpc']:.4f})"
        if r.get("last_dynamic_bpc") is not None:
            bpc += f"; with `--dynamic` {r['last_dynamic_bpc']:.4f}"
        rows.append([name, f"{r['steps']:,}", f"{r['chars_trained']:,}", bpc])
    seconds = f"{result['seconds']:g} s each"
    header = [seconds, "steps", "chars trained", "val bpc (exact, zero state)"]
    return _table(header, rows) + "\n\n" + provenance(result)


KINDS = {
    "serve": serve,
    "speed-train": speed_train,
    "speed-inference": speed_inference,
    "mpi-step": mpi_step,
    "mpi-compute": mpi_compute,
    "mpi-speedup": mpi_speedup,
    "scale": scale,
    "quality": quality,
}


def rewrite(text: str, repo: Path = REPO) -> str:
    """`text` with every marked block rewritten from its results file."""

    def block(match: re.Match) -> str:
        kind, source = match["kind"], match["source"]
        if kind not in KINDS:
            raise SystemExit(f"unknown table kind {kind!r} (known: {', '.join(KINDS)})")
        path = repo / source
        if not path.is_file():
            raise SystemExit(f"results file {source} of a {kind} table does not exist")
        body = KINDS[kind](json.loads(path.read_text(encoding="utf-8")))
        return f"{match['begin']}{body}\n{match['end']}"

    return BLOCK.sub(block, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args()
    stale = []
    for page in sorted((REPO / "docs").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = rewrite(text)
        if new == text:
            continue
        stale.append(page.relative_to(REPO))
        if not args.check:
            replace_atomically(page, lambda f, new=new: f.write(new.encode("utf-8")))
    verb = "stale" if args.check else "rewrote"
    print(f"{verb}: {', '.join(map(str, stale))}" if stale else "docs tables up to date")
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
