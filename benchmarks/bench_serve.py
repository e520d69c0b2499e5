"""How `charrnn serve` holds up under concurrent streaming clients (docs/performance.md).

    make bench-serve                          # about 3 minutes on 2 cores
    python benchmarks/bench_serve.py --quick  # fewer requests, 2,000 in the memory run

For two model shapes, untrained (the speed of a step does not depend on the weights, and the
text is then near-uniform characters, so no stop or record end cuts a request short): the
vanilla RNN of hidden size 512, and configs/shakespeare.yaml's model (GRU, 2 x 192), both with
Shakespeare's 65 characters. A `charrnn serve` process serves each; N = 1, 8 and 64 clients
(asyncio, httpx, in this process) each stream requests of --length characters one after
another. Measured at the clients: aggregate characters per second, the time from sending a
request to its first character (TTFC, p50 and p99 in steady state: each client's first request,
sent by all clients at once, is reported apart; the server's own log gives the time from taking
a request to sending its first event, without the clients' delays), and the time between
successive pieces of a stream (p50, p99; under load a piece carries several characters, also
reported). Targets:
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
import os
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

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=60).json()

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far (from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class Connection:
    """One client's kept-alive HTTP/1.1 connection, spoken by hand over asyncio streams: with
    64 streams in one process, httpx's own cost per event made the clients, not the server,
    what was measured. Reads the chunked server-sent events of a streamed completion."""

    def __init__(self, url: str):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.reader = self.writer = None

    async def stream(self, body: dict) -> dict:
        """One streamed request: when it was sent, when each piece came and its characters."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        data = json.dumps(body).encode()
        start = time.perf_counter()
        self.writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the server refused a request: {head[:200]!r}")
        pieces: list[tuple[float, int]] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)  # chunked encoding
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return {"start": start, "pieces": pieces}
            now = time.perf_counter()
            for e in chunk[:-2].split(b"\n\n"):
                if e.startswith(b"data: {"):
                    n = sum(len(c["text"]) for c in json.loads(e[6:])["choices"])
                    if n:
                        pieces.append((now, n))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, clients: int, requests_each: int, length: int) -> dict:
    """`clients` clients, each streaming requests_each requests in turn on its connection."""

    async def one_client(k: int) -> list[dict]:
        conn, out = Connection(url), []
        try:
            for i in range(requests_each):
                body = {"prompt": PROMPT, "max_tokens": length, "stream": True,
                        "temperature": 0.8, "seed": k * 1000 + i}  # fmt: skip
                out.append(await conn.stream(body))
        finally:
            conn.close()
        return out

    start = time.perf_counter()
    done = await asyncio.gather(*(one_client(k) for k in range(clients)))
    wall = time.perf_counter() - start
    results = [r for rs in done for r in rs]
    chars = sum(n for r in results for _, n in r["pieces"])

    def ttfc(rs: list[dict]) -> list[float]:
        return [r["pieces"][0][0] - r["start"] for r in rs if r["pieces"]]

    # steady state: every request but each client's first, which all arrive at once and wait
    # for the connections to be made and for each other's prompts (reported apart: "first")
    steady = ttfc([r for rs in done for r in rs[1:]])
    first = ttfc([rs[0] for rs in done])
    times = [[t for t, _ in r["pieces"]] for r in results]
    gaps = [b - a for ts in times for a, b in zip(ts, ts[1:], strict=False)]
    pieces = sum(len(r["pieces"]) for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "chars": chars,
        "seconds": round(wall, 3),
        "chars_per_sec": round(chars / wall, 1),
        "ttfc_ms_p50": _ms(_pct(steady, 50)),
        "ttfc_ms_p99": _ms(_pct(steady, 99)),
        "first_requests_ttfc_ms_p99": _ms(_pct(first, 99)),
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
    errors: dict[str, int] = {}
    sent = done = 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        body = {"prompt": PROMPT, "max_tokens": length, "temperature": 0.8}

        async def worker() -> None:
            nonlocal sent, done
            while sent < total:
                sent += 1
                try:
                    r = await client.post(served.url + "/v1/completions", json=body)
                except httpx.TransportError:  # a kept-alive connection closed as it was reused
                    errors["transport"] = errors.get("transport", 0) + 1
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
        "retried_after_transport_errors": errors.get("transport", 0),
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
    figures["load_1min_start"] = os.getloadavg()[0]  # the machine is shared: say how busy
    chars_each = 4_000 if args.quick else 12_000  # per client count, at least
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cell, layers, hidden) in SHAPES.items():
            served = Served(make_checkpoint(Path(tmp), cell, layers, hidden, vocab))
            try:
                asyncio.run(load(served.url, 4, 1, 50))  # warm up: imports, first requests
                for clients in (1, 8, 64):
                    each = max(3, chars_each // (clients * args.length))
                    cpu, logged = served.cpu_seconds(), len(served.log_lines())
                    engine = served.health()["engine_cpu_seconds"]
                    row = {
                        "model": name,
                        **asyncio.run(load(served.url, clients, each, args.length)),
                    }
                    row["server_cpu_s"] = round(served.cpu_seconds() - cpu, 2)
                    row["engine_cpu_s"] = round(served.health()["engine_cpu_seconds"] - engine, 2)
                    firsts = [
                        float(line.split(" first=")[1].rstrip("s"))
                        for line in served.log_lines()[logged:]
                        if " first=" in line
                    ]
                    row["server_ttfc_ms_p50"] = _ms(_pct(firsts, 50))
                    row["server_ttfc_ms_p99"] = _ms(_pct(firsts, 99))
                    row["chars_per_server_cpu_s"] = round(
                        row["chars"] / max(row["server_cpu_s"], 0.01)
                    )
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
        figures.setdefault("ratios_per_server_cpu_s", {})[name] = round(
            rows[64]["chars_per_server_cpu_s"] / rows[1]["chars_per_server_cpu_s"], 2
        )
    figures["load_1min_end"] = os.getloadavg()[0]
    print("aggregate chars/s, 64 clients / 1 client:", figures["ratios"])
    print("chars per server CPU-second, 64 clients / 1:", figures["ratios_per_server_cpu_s"])
    path = write_result(
        "bench-serve",
        figures,
        machine_info=machine(),
        note="Untrained models of the shapes named; the clients and the server shared the "
        "machine with other work",
        out=args.out or result_path("bench-serve"),
    )
    print(f"wrote {path}")


def _line(row: dict) -> str:
    return (
        f"{row['model']:>30} {row['clients']:>3} clients: {row['chars_per_sec']:>9.0f} chars/s, "
        f"TTFC p50 {row['ttfc_ms_p50']:.1f} p99 {row['ttfc_ms_p99']:.1f} ms (first requests "
        f"p99 {row['first_requests_ttfc_ms_p99']:.0f}; at the server p50 "
        f"{row['server_ttfc_ms_p50']:.0f} p99 {row['server_ttfc_ms_p99']:.0f}), gap p50 "
        f"{row['gap_ms_p50']:.2f} p99 {row['gap_ms_p99']:.2f} ms, {row['chars_per_piece']} "
        f"chars/piece, server {row['server_cpu_s']} CPU-s (engine {row['engine_cpu_s']})"
    )


if __name__ == "__main__":
    main()
