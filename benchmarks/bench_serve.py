"""How `charrnn serve` holds up under concurrent streaming clients (docs/performance.md).

    make bench-serve                          # about 3 minutes on 2 cores
    python benchmarks/bench_serve.py --quick  # fewer requests, 2,000 in the memory run

For two model shapes, untrained (the speed of a step does not depend on the weights, and the
text is then near-uniform characters, so no stop or record end cuts a request short): the
vanilla RNN of hidden size 512, and configs/shakespeare.yaml's model (GRU, 2 x 192), both with
Shakespeare's 65 characters. A `charrnn serve` process serves each; N = 1, 8 and 64 clients
(asyncio, httpx, in this process) each stream requests of --length characters one after
another. Measured at the clients: aggregate characters per second, the time from sending a
request to its first character (TTFC, p50 and p99), and the time between successive pieces of
a stream (p50, p99; under load a piece carries several characters, also reported). Targets:
aggregate characters/s at 64 clients at least 5x one client's, p99 TTFC under 250 ms at 64.

Then, for the RNN: the server's resident memory (RSS, from /proc) over 10,000 short requests
from 64 clients (flat is the target), and how many of 64 seeded requests run together give the
same text as each run alone (the batched products may round differently in the last bit, see
charrnn/serve/batcher.py). The clients share the machine with the server: their CPU time is
part of what is measured. Results go to benchmarks/results/bench-serve-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
from results_io import machine, result_path, write_result  # noqa: E402

from charrnn.checkpoint import Checkpoint, save  # noqa: E402
from charrnn.model import init_params  # noqa: E402

SHAPES = {  # name: (cell, layers, hidden)
    "rnn 1x512": ("rnn", 1, 512),
    "gru 2x192 (shakespeare.yaml)": ("gru", 2, 192),
}
PROMPT = "ROMEO:"


def vocabulary() -> list[str]:
    text = (HERE.parent / "data" / "shakespeare.txt").read_text(encoding="utf-8")
    return sorted(set(text))


def make_checkpoint(folder: Path, cell: str, layers: int, hidden: int, vocab: list[str]) -> Path:
    params = init_params(len(vocab), hidden, np.random.default_rng(0), cell=cell, num_layers=layers)
    path = folder / f"{cell}-{layers}x{hidden}.npz"
    save(Checkpoint(params, vocab, {"cell": cell}), path)
    return path


class Served:
    """A `charrnn serve` process on a free port, its limits raised for the load, its log (a
    line per request, as a real server writes it) in a file."""

    def __init__(self, checkpoint: Path):
        self.log = checkpoint.with_suffix(".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "charrnn", "serve", str(checkpoint), "--port", "0",
                 "--max-requests", "256", "--max-tokens", "100000"],
                stderr=log, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while "http://" not in (first := self.log.read_text().split("\n")[0]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {self.log.read_text()}")
            time.sleep(0.1)
        self.url = "http://" + first.split("http://")[1].split("/v1")[0]

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def stream_one(client: httpx.AsyncClient, url: str, length: int, seed: int) -> dict:
    """One streamed request: when it was sent, when each piece came and its characters."""
    body = {"prompt": PROMPT, "max_tokens": length, "stream": True, "temperature": 0.8,
            "seed": seed}  # fmt: skip
    start = time.perf_counter()
    pieces: list[tuple[float, int]] = []
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        buf = b""
        async for data in r.aiter_bytes():
            now = time.perf_counter()
            buf += data
            *events, buf = buf.split(b"\n\n")
            for e in events:
                if e == b"data: [DONE]":
                    continue
                n = sum(len(c["text"]) for c in json.loads(e[6:])["choices"])
                if n:
                    pieces.append((now, n))
    return {"start": start, "pieces": pieces}


async def load(url: str, clients: int, requests_each: int, length: int) -> dict:
    """`clients` clients, each streaming requests_each requests in turn."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one_client(k: int) -> list[dict]:
            return [
                await stream_one(client, url, length, k * 1000 + i) for i in range(requests_each)
            ]

        start = time.perf_counter()
        done = await asyncio.gather(*(one_client(k) for k in range(clients)))
        wall = time.perf_counter() - start
    results = [r for rs in done for r in rs]
    chars = sum(n for r in results for _, n in r["pieces"])
    ttfc = [r["pieces"][0][0] - r["start"] for r in results if r["pieces"]]
    times = [[t for t, _ in r["pieces"]] for r in results]
    gaps = [b - a for ts in times for a, b in zip(ts, ts[1:], strict=False)]
    pieces = sum(len(r["pieces"]) for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "chars": chars,
        "seconds": round(wall, 3),
        "chars_per_sec": round(chars / wall, 1),
        "ttfc_ms_p50": _ms(_pct(ttfc, 50)),
        "ttfc_ms_p99": _ms(_pct(ttfc, 99)),
        "gap_ms_p50": _ms(_pct(gaps, 50)),
        "gap_ms_p99": _ms(_pct(gaps, 99)),
        "chars_per_piece": round(chars / max(pieces, 1), 2),
    }


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _ms(x: float) -> float:
    return round(x * 1000, 2)


async def memory(served: Served, total: int, clients: int = 64, length: int = 20) -> dict:
    """The server's RSS after every tenth of `total` short (non-streamed) requests."""
    samples: list[dict] = []
    sent = done = 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        body = {"prompt": PROMPT, "max_tokens": length, "temperature": 0.8}

        async def worker() -> None:
            nonlocal sent, done
            while sent < total:
                sent += 1
                r = await client.post(served.url + "/v1/completions", json=body)
                r.raise_for_status()
                done += 1
                if done % (total // 10) == 0:
                    samples.append({"requests": done, "rss_mib": round(served.rss_mib(), 1)})

        await asyncio.gather(*(worker() for _ in range(clients)))
    return {
        "requests": total,
        "rss_mib": samples,
        "growth_after_first_tenth_mib": round(samples[-1]["rss_mib"] - samples[0]["rss_mib"], 1),
    }


async def batched_equals_alone(url: str, n: int = 64, length: int = 200) -> dict:
    """How many of n seeded requests sent together get the text each gets alone."""
    async with httpx.AsyncClient(timeout=300) as client:

        async def ask(seed: int) -> str:
            body = {"prompt": PROMPT, "max_tokens": length, "temperature": 1.0, "seed": seed}
            r = await client.post(url + "/v1/completions", json=body)
            return r.json()["choices"][0]["text"]

        together = await asyncio.gather(*(ask(s) for s in range(n)))
        alone = [await ask(s) for s in range(n)]
    same = sum(a == b for a, b in zip(together, alone, strict=True))
    return {"requests": n, "length": length, "identical": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--length", type=int, default=200, help="characters per request")
    parser.add_argument("--out", type=Path, help="the results file (default: benchmarks/results)")
    args = parser.parse_args()
    vocab = vocabulary()
    figures: dict = {"length": args.length, "prompt": PROMPT, "load": [], "memory": None}
    chars_each = 4_000 if args.quick else 12_000  # per client count, at least
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cell, layers, hidden) in SHAPES.items():
            served = Served(make_checkpoint(Path(tmp), cell, layers, hidden, vocab))
            try:
                asyncio.run(load(served.url, 4, 1, 50))  # warm up: imports, first requests
                for clients in (1, 8, 64):
                    each = max(1, chars_each // (clients * args.length))
                    row = {
                        "model": name,
                        **asyncio.run(load(served.url, clients, each, args.length)),
                    }
                    figures["load"].append(row)
                    print(_line(row), flush=True)
                if cell == "rnn":
                    total = 2_000 if args.quick else 10_000
                    figures["memory"] = asyncio.run(memory(served, total))
                    print("memory:", json.dumps(figures["memory"]), flush=True)
                    figures["batched_equals_alone"] = asyncio.run(batched_equals_alone(served.url))
                    print("batched = alone:", json.dumps(figures["batched_equals_alone"]))
            finally:
                served.stop()
    for name in SHAPES:
        rows = {r["clients"]: r for r in figures["load"] if r["model"] == name}
        figures.setdefault("ratios", {})[name] = round(
            rows[64]["chars_per_sec"] / rows[1]["chars_per_sec"], 2
        )
    print("aggregate chars/s, 64 clients / 1 client:", figures["ratios"])
    path = write_result(
        "bench-serve",
        figures,
        machine_info=machine(),
        note="untrained models of the shapes named; clients and server share the machine",
        out=args.out or result_path("bench-serve"),
    )
    print(f"wrote {path}")


def _line(row: dict) -> str:
    return (
        f"{row['model']:>30} {row['clients']:>3} clients: {row['chars_per_sec']:>9.0f} chars/s, "
        f"TTFC p50 {row['ttfc_ms_p50']:.1f} p99 {row['ttfc_ms_p99']:.1f} ms, gap p50 "
        f"{row['gap_ms_p50']:.2f} p99 {row['gap_ms_p99']:.2f} ms, {row['chars_per_piece']} "
        "chars/piece"
    )


if __name__ == "__main__":
    main()
