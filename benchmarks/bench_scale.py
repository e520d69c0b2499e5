"""Memory and time of `charrnn train` as the corpus grows, and the encoder's throughput.

    python benchmarks/bench_scale.py [--sizes 10,100,1000] [--tmpdir DIR]   (make bench-scale)

For each size (MB) it generates a corpus of shuffled lines of data/shakespeare.txt in a temporary
folder and runs, each as a fresh subprocess:
  1. `charrnn train` with no cache yet (it encodes the corpus, then trains),
  2. `charrnn prepare --force` (encoding alone: MB/s of ASCII text),
  3. `charrnn train` again, reusing the cache;
then `charrnn prepare` on a mixed-Unicode corpus (accents, Greek, Cyrillic, ~500 CJK characters,
emoji; more than 256 distinct characters, so uint16 ids).

Many files (issue 20; `--files N`, `--folder-gb G`, `--only-folders` for these alone): a folder of
N small files (default 100,000, in 1,000 subfolders, 300-700 bytes each) and a folder of G GB
(default 3) in files of 125 MB; for each, `charrnn prepare` (the encoding: peak RSS, time and the
most files it had open at once, sampled from /proc/PID/fd every 20 ms) and then `charrnn train`
reusing the entry. Memory must stay within RSS_SPREAD_MB of the single 10 MB file's run.
With --only-folders (and one 10 MB file to compare with) the results go to
benchmarks/results/scale-folders-<date>.json; docs/texts.md quotes them.

Training: 10 steps at hidden 512, batch 64, seq_length 100, with one validation at step 10 on
val_max_chars=20000 characters of the validation tail (so it reads the cache's tail too, but
does not dominate the time). Peak RSS is each child's own ru_maxrss (os.wait4), which counts the
pages of the memory-mapped cache the process has mapped as well as its own memory.

Targets (issues 6 and 9): peak RSS on 1 GB below 400 MB and within 50 MB of the 10 MB run;
encoding at least 100 MB/s for ASCII and 50 MB/s for mixed Unicode. Prints a table, saves it with
the machine in benchmarks/results/scale-<date>.json (`make docs-tables` writes the table of
docs/data.md from it), and deletes the generated corpora and their caches. Timings on a
shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gemm_peak import measure_gemm_peak
from results_io import machine, write_result

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "data" / "shakespeare.txt"
RESULTS = REPO / "benchmarks" / "results"
MB = 1_000_000
TRAIN_ARGS = [
    "--hidden-size",
    "512",
    "--batch-size",
    "64",
    "--seq-length",
    "100",
    "--max-steps",
    "10",
    "--eval-every",
    "10",
    "--set",
    "val_max_chars=20000",
    "--checkpoint-every",
    "1000",
    "--rng-seed",
    "1",
    "--quiet",
    "--json",
]
RSS_LIMIT_MB, RSS_SPREAD_MB = 400, 50
ENCODE_MIN_MBS = {"ascii": 100, "mixed": 50}


def run(args: list[str], env: dict | None = None) -> dict:
    """Run `python -m charrnn ARGS`; its wall time, its own peak RSS, the most files it had
    open at once (sampled) and its --json output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "charrnn", *args], stdout=out, stderr=err, env=env
        )
        fds = _most_open_files(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max of all
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(
                f"charrnn {' '.join(args)} failed ({proc.returncode}):\n{err.read().decode()}"
            )
        result = json.loads(out.read().decode().strip().splitlines()[-1])
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss * scale / 2**20, 1),
        "max_open_files": max(fds) if fds else None,
        "json": result,
    }


def _most_open_files(pid: int) -> list[int]:
    """Counts of /proc/PID/fd sampled every 20 ms by a thread until the process exits (a
    list it fills: read it after the wait)."""
    import threading

    counts: list[int] = []

    def sample():
        while True:
            try:
                counts.append(len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:  # gone (or no /proc)
                return
            time.sleep(0.02)

    if os.path.isdir("/proc"):
        threading.Thread(target=sample, daemon=True).start()
    return counts


def make_many_files(folder: Path, n: int, lines: list[str], rng: random.Random) -> int:
    """n files of 300-700 bytes of lines, 100 to a subfolder; returns the bytes written."""
    total = 0
    text = "".join(lines)
    past = time.time() - 60
    for i in range(n):
        sub = folder / f"{i // 100:05d}"
        if i % 100 == 0:
            sub.mkdir(parents=True)
        start = rng.randrange(len(text) - 1000)
        piece = text[start : start + rng.randint(300, 700)]
        path = sub / f"{i:06d}.txt"
        path.write_text(piece, encoding="utf-8")
        os.utime(path, (past, past))
        total += len(piece)
    return total


def folder_rows(folder: Path, files: int, folder_gb: float, lines, rng) -> list[dict]:
    """prepare, then train reusing the entry, on a folder of many small files and on a folder
    of several GB; each folder and its cache entry deleted after."""
    env = {**os.environ, "CHARRNN_CACHE_DIR": str(folder / "cache")}
    rows = []
    for name, make in (
        (f"{files:,} small files", lambda d: make_many_files(d, files, lines, rng)),
        (f"{folder_gb:g} GB folder", lambda d: _big_folder(d, folder_gb, lines, rng)),
    ):
        corpus = folder / "texts"
        corpus.mkdir()
        print(f"{name} ...", file=sys.stderr)
        size = make(corpus)
        prep = run(["prepare", str(corpus), "--quiet", "--json"], env)
        train = run(["train", str(corpus), "--out", str(folder / "run"), *TRAIN_ARGS], env)
        rows.append({"what": name, "bytes": size, "prepare": prep, "train_warm": train})
        shutil.rmtree(corpus)
        shutil.rmtree(folder / "cache")
        shutil.rmtree(folder / "run")
    return rows


def _big_folder(corpus: Path, gb: float, lines, rng) -> int:
    n = max(1, round(gb * 1000 / 125))
    for i in range(n):
        make_corpus(corpus / f"part-{i:03d}.txt", 125 * MB, lines, rng)
    return sum(p.stat().st_size for p in corpus.iterdir())


def make_corpus(path: Path, size: int, lines: list[str], rng: random.Random) -> None:
    """About `size` bytes of the lines, shuffled: 8 shuffled copies of the text, concatenated
    in random order until the size is reached (cutting the last one at a line)."""
    variants = []
    for _ in range(8):
        rng.shuffle(lines)
        variants.append("".join(lines).encode("utf-8"))
    written = 0
    with open(path, "wb") as f:
        while written < size:
            block = rng.choice(variants)[: size - written]
            if written + len(block) >= size:
                block = block[: block.rfind(b"\n") + 1] or block
            f.write(block)
            written += len(block)
    past = time.time() - 60  # a file written within the last second is not trusted by the cache
    os.utime(path, (past, past))


def mixed_lines(lines: list[str], rng: random.Random) -> list[str]:
    phrases = [
        "Ünïcödé façade naïve ",
        "Ελληνικά κείμενο ",
        "Русский текст ",
        "한국어 문장 ",
        "العربية ",
        "emoji 😀🎉🚀 ",
        "Œuvre — «citation» ",
        "ﬁ ligature ½ ™ ",
    ]
    cjk = [chr(0x4E00 + i) for i in range(500)]
    out = []
    for line in lines:
        r = rng.random()
        if r < 0.25:
            line = rng.choice(phrases) + line
        elif r < 0.35:
            line = "".join(rng.choices(cjk, k=12)) + " " + line
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB")
    parser.add_argument("--mixed-mb", type=int, default=200, help="size of the mixed corpus")
    parser.add_argument("--tmpdir", default=None, help="where to generate the corpora")
    parser.add_argument("--files", type=int, default=100_000, help="small files in a folder")
    parser.add_argument("--folder-gb", type=float, default=3.0, help="size of the big folder")
    parser.add_argument(
        "--only-folders", action="store_true", help="only the folders (and one 10 MB file)"
    )
    args = parser.parse_args()
    sizes = [10] if args.only_folders else [int(s) for s in args.sizes.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="charrnn-bench-scale-", dir=args.tmpdir))
    need = 2.2 * (sum(sizes) + 2 * args.mixed_mb + args.folder_gb * 1000) * MB + 500 * MB
    free = shutil.disk_usage(folder).free
    print(
        f"generating in {folder}: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed",
        file=sys.stderr,
    )
    if free < need:
        folder.rmdir()
        raise SystemExit("not enough disk space; pass --tmpdir or smaller --sizes")

    rng = random.Random(0)
    lines = SOURCE.read_text(encoding="utf-8").splitlines(keepends=True)
    rows, encode = [], {}
    try:
        for size in sizes:
            corpus = folder / f"ascii-{size}mb.txt"
            make_corpus(corpus, size * MB, lines, rng)
            print(f"{size} MB corpus ...", file=sys.stderr)
            cold = run(
                ["train", str(corpus), "--out", str(folder / f"run-{size}-cold"), *TRAIN_ARGS]
            )
            prep = run(["prepare", str(corpus), "--force", "--quiet", "--json"])
            warm = run(
                ["train", str(corpus), "--out", str(folder / f"run-{size}-warm"), *TRAIN_ARGS]
            )
            rows.append(
                {
                    "size_mb": size,
                    "bytes": corpus.stat().st_size,
                    "train_cold": cold,
                    "prepare": prep,
                    "train_warm": warm,
                }
            )
            corpus.unlink()
            shutil.rmtree(prep["json"]["cache"])  # the cache folder

        folders = folder_rows(folder, args.files, args.folder_gb, lines, rng)
        if args.only_folders:
            return report(rows, {}, folders, "scale-folders")
        corpus = folder / f"mixed-{args.mixed_mb}mb.txt"
        make_corpus(corpus, args.mixed_mb * MB, mixed_lines(lines, rng), rng)
        print("mixed-Unicode corpus ...", file=sys.stderr)
        mixed = run(["prepare", str(corpus), "--quiet", "--json"])
        encode = {
            "ascii_mb_per_sec": rows[-1]["prepare"]["json"]["mb_per_sec"] if rows else None,
            "ascii_corpus_mb": sizes[-1] if rows else None,
            "mixed_mb_per_sec": mixed["json"]["mb_per_sec"],
            "mixed_corpus_mb": args.mixed_mb,
            "mixed": mixed,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    report(rows, encode, folders)


def report(rows: list[dict], encode: dict, folders: list[dict], result: str = "scale") -> None:
    print(
        "\ncharrnn train: 10 steps, hidden 512, batch 64, seq_length 100 "
        "(validation at step 10 on 20,000 chars)\n"
    )
    head = f"{'corpus':>8} {'chars':>14} {'train cold':>18} {'train warm':>18} {'prepare':>22}"
    print(head)
    print(
        f"{'':>8} {'':>14} {'peak RSS / wall':>18} {'peak RSS / wall':>18} {'RSS / s / MB/s':>22}"
    )
    print("-" * len(head))
    for r in rows:
        c, w, p = r["train_cold"], r["train_warm"], r["prepare"]
        print(
            f"{r['size_mb']:>5} MB {p['json']['chars']:>14,} "
            f"{c['peak_rss_mb']:>8.0f} MB {c['wall_s']:>6.1f}s "
            f"{w['peak_rss_mb']:>8.0f} MB {w['wall_s']:>6.1f}s "
            f"{p['peak_rss_mb']:>6.0f} MB {p['json']['seconds']:>5.1f}s "
            f"{p['json']['mb_per_sec']:>6.1f}"
        )
    if encode:
        m = encode["mixed"]["json"]
        print(
            f"\nencoding (charrnn prepare, in-process time): ASCII {encode['ascii_mb_per_sec']} "
            f"MB/s ({encode['ascii_corpus_mb']} MB); mixed Unicode {encode['mixed_mb_per_sec']} "
            f"MB/s ({encode['mixed_corpus_mb']} MB, {m['vocab_size']} distinct characters, "
            f"{m['id_dtype']} ids, peak RSS {encode['mixed']['peak_rss_mb']:.0f} MB)"
        )
    print(
        f"\n{'folder':>20} {'files':>9} {'documents':>10} {'chars':>15} "
        f"{'prepare':>26} {'train':>18}"
    )
    print(
        f"{'':>20} {'':>9} {'':>10} {'':>15} {'RSS / s / files open':>26} {'peak RSS / wall':>18}"
    )
    for f in folders:
        p, t = f["prepare"], f["train_warm"]
        print(
            f"{f['what']:>20} {p['json']['files']:>9,} {p['json']['documents']:>10,} "
            f"{p['json']['chars']:>15,} {p['peak_rss_mb']:>8.0f} MB {p['json']['seconds']:>6.1f}s "
            f"{p['max_open_files'] or 0:>6} {t['peak_rss_mb']:>8.0f} MB {t['wall_s']:>6.1f}s"
        )

    checks = []
    if rows:
        peaks = [max(r["train_cold"]["peak_rss_mb"], r["train_warm"]["peak_rss_mb"]) for r in rows]
        big, small = peaks[-1], peaks[0]
        checks.append(
            (
                f"peak RSS on {rows[-1]['size_mb']} MB < {RSS_LIMIT_MB} MB",
                big < RSS_LIMIT_MB,
                f"{big:.0f} MB",
            )
        )
        checks.append(
            (
                f"within {RSS_SPREAD_MB} MB of the {rows[0]['size_mb']} MB run",
                big - small <= RSS_SPREAD_MB,
                f"{big - small:+.0f} MB",
            )
        )
    for name, least in ENCODE_MIN_MBS.items():
        rate = encode.get(f"{name}_mb_per_sec")
        if rate is not None:
            checks.append(
                (
                    f"{name} encoding >= {least} MB/s",
                    rate >= least,
                    f"{rate} MB/s",
                )
            )
    if rows and folders:
        small = max(rows[0]["train_cold"]["peak_rss_mb"], rows[0]["train_warm"]["peak_rss_mb"])
        for f in folders:
            peak = max(f["prepare"]["peak_rss_mb"], f["train_warm"]["peak_rss_mb"])
            checks.append(
                (
                    f"{f['what']}: within {RSS_SPREAD_MB} MB of the {rows[0]['size_mb']} MB file",
                    peak - small <= RSS_SPREAD_MB,
                    f"{peak - small:+.0f} MB",
                )
            )
    print()
    for what, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {value}")

    figures = {
        "train_args": TRAIN_ARGS,
        "rows": rows,
        "encode": encode,
        "folders": folders,
        "checks": [{"check": c, "ok": ok, "value": v} for c, ok, v in checks],
        "load_1min_end": os.getloadavg()[0],
    }
    out = write_result(result, figures, machine_info=machine(measure_gemm_peak()))
    print(f"\nsaved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
