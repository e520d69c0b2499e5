"""Data-parallel training over MPI: where a step's time goes, and what K nodes would gain.

    python benchmarks/bench_mpi.py [--hidden 128,256,512,1024] [--steps 9]   (make bench-mpi)

Runs itself as worker processes, once as one process and once under `mpiexec -n 2` (the venv's
mpiexec, from the mpich wheel), and measures on this machine, for a vanilla RNN over 65
characters in float32 at seq_length 100:

  1. the step at batch 32 with K = 1 and K = 2 ranks, split into compute (forward and backward
     of the rank's streams, clipping, the update), wait (for the slower rank) and allreduce
     (charrnn's one in-place Allreduce of the flat gradient buffer), medians;
  2. the Allreduce alone of each hidden size's gradient buffer between 2 ranks (shared memory);
  3. validation with 2 ranks: shared (each rank scores half the streams, as train.py does) or
     by rank 0 alone while rank 1 waits;
  4. the compute of one process (a "node": every core of this machine) at batch 64 / K streams
     for K = 1 .. 64, from which the speedup table is computed for K nodes:

         step(K)      = compute(64 / K) + allreduce(K) + stop(K)
         allreduce(K) = 2 (K - 1) / K * bytes / bandwidth + 2 (K - 1) * latency   (ring)
         stop(K)      = log2(K) * latency   (the tiny Allreduce agreeing on signals and time)
         speedup(K)   = compute(64) / step(K)

     with bandwidth 10 Gb/s and latency 50 us (Ethernet, TCP) or 100 Gb/s and 5 us
     (InfiniBand or RoCE); the line rate, so the table is an upper bound.

Prints the tables and saves them with the machine in benchmarks/results/mpi-<date>.json, from
which `make docs-tables` writes the tables of docs/scaling-out.md. A shared machine makes the
timings noisy: the medians are what to read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charrnn import distributed, optim  # noqa: E402
from charrnn.config import Config  # noqa: E402
from charrnn.evaluate import chunked_loss  # noqa: E402
from charrnn.model import init_params, zero_state  # noqa: E402
from charrnn.parallel import GradientWorkers, auto_workers, blas_threads  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from gemm_peak import measure_gemm_peak  # noqa: E402
from results_io import machine, write_result  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
V, T = 65, 100
BATCH, TABLE_BATCH = 32, 64  # the step split's batch, and the speedup table's
NODES = (1, 2, 4, 8, 16, 32, 64)
NETWORKS = {"10 Gb/s": (10e9 / 8, 50e-6), "100 Gb/s": (100e9 / 8, 5e-6)}  # bytes/s, latency


def _model(hidden: int, batch: int, world):
    cfg = Config.from_dict({"hidden_size": hidden, "batch_size": batch, "seq_length": T})
    rng = np.random.default_rng(0)
    params = init_params(V, hidden, rng, np.float32)
    opt_state = optim.init_state(cfg.optimizer, params)
    grads = world.gradients(params)
    b = batch // world.size
    workers = GradientWorkers(b, auto_workers(b, 0, world.cores), grads)
    X = rng.integers(0, V, (T, b))  # (T, b): this rank's streams
    Y = rng.integers(0, V, (T, b))
    return cfg, params, opt_state, grads, workers, X, Y, zero_state(params, b)


def _steps(hidden: int, batch: int, steps: int, world) -> dict[str, float]:
    """Median seconds of a training step's parts at this size: compute (forward, backward,
    clipping, update), wait (for the slower rank; a barrier that train.py does not have: there
    the Allreduce waits) and allreduce. At least `steps` steps and half a second of them."""
    cfg, params, opt_state, grads, workers, X, Y, carry = _model(hidden, batch, world)
    parts = {"compute_s": [], "wait_s": [], "allreduce_s": []}
    barrier = world.comm.Barrier if world.size > 1 else lambda: None
    spent, i = 0.0, 0
    try:
        while i <= steps or (spent < 0.5 and i < 200):  # step 0 warms the buffers up
            t0 = time.perf_counter()
            loss, _, carry = workers(params, X, Y, carry)
            t1 = time.perf_counter()
            barrier()
            t2 = time.perf_counter()
            world.mean(loss)
            t3 = time.perf_counter()
            optim.clip_gradients(grads, cfg.clip_mode, cfg.grad_clip)
            optim.update(cfg, params, grads, opt_state, i, cfg.learning_rate)
            t4 = time.perf_counter()
            if i:
                parts["compute_s"].append(t1 - t0 + t4 - t3)
                parts["wait_s"].append(t2 - t1)
                parts["allreduce_s"].append(t3 - t2)
                spent += t4 - t0
            i += 1
    finally:
        workers.close()
    return {k: float(np.median(v)) for k, v in parts.items()}


def _node_compute(hidden: int, rounds: int) -> dict[int, float]:
    """Median seconds of one process's step (every core of this machine: a node) at
    TABLE_BATCH / K streams for each K in NODES, without communication. The sizes take turns,
    one step each per round, so that another job on the machine slows them alike."""
    solo = distributed.Solo()
    models = {K: _model(hidden, TABLE_BATCH // K, solo) for K in NODES}
    times: dict[int, list[float]] = {K: [] for K in NODES}
    try:
        for i in range(rounds + 1):  # round 0 warms the buffers up
            for K, (cfg, params, opt_state, grads, workers, X, Y, carry) in models.items():
                t0 = time.perf_counter()
                workers(params, X, Y, carry)
                optim.clip_gradients(grads, cfg.clip_mode, cfg.grad_clip)
                optim.update(cfg, params, grads, opt_state, i, cfg.learning_rate)
                if i:
                    times[K].append(time.perf_counter() - t0)
    finally:
        for model in models.values():
            model[4].close()
    return {K: float(np.median(t)) for K, t in times.items()}


def _allreduce_alone(world, n: int, repeat: int = 30) -> float:
    buf = np.ones(n, np.float32)
    times = []
    for _ in range(repeat):
        world.comm.Barrier()
        t0 = time.perf_counter()
        world.comm.Allreduce(world.MPI.IN_PLACE, buf, op=world.MPI.SUM)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _validation(world, hidden: int, repeat: int = 3) -> dict:
    text = (REPO / "data" / "shakespeare.txt").read_bytes()[:100_001]
    ids = np.frombuffer(text, np.uint8) % V
    params = init_params(V, hidden, np.random.default_rng(0), np.float32)
    shared, alone = [], []
    for _ in range(repeat):
        world.comm.Barrier()
        t0 = time.perf_counter()
        world.sum(chunked_loss(params, ids, part=(world.rank, world.size))[0])
        shared.append(time.perf_counter() - t0)
        world.comm.Barrier()
        t0 = time.perf_counter()
        if world.root:
            chunked_loss(params, ids)
        world.comm.Barrier()  # rank 1 waits for rank 0
        alone.append(time.perf_counter() - t0)
    return {
        "hidden": hidden,
        "chars": len(ids),
        "shared_s": float(np.median(shared)),
        "rank0_s": float(np.median(alone)),
    }


def worker(hidden: list[int], steps: int, out: Path) -> None:
    world = distributed.world()
    result = {"ranks": world.size, "batch": BATCH, "steps": {}, "allreduce": {}}
    with blas_threads(1):
        for h in hidden:
            result["steps"][h] = _steps(h, BATCH, steps, world)
        if world.size > 1:
            for h in hidden:
                n = sum(p.size for p in init_params(V, h, np.random.default_rng(0)).values())
                result["allreduce"][h] = {"bytes": 4 * (n + 1), "s": _allreduce_alone(world, n + 1)}
            result["validation"] = _validation(world, 256)
        else:
            result["compute"] = {h: _node_compute(h, steps) for h in hidden}
    if world.root:
        out.write_text(json.dumps(result))


def _run(cmd: list[str], out: Path) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def _speedup(compute: dict, grad_bytes: int, bandwidth: float, latency: float, K: int) -> float:
    ring = 2 * (K - 1) / K * grad_bytes / bandwidth + 2 * (K - 1) * latency
    stop = math.log2(K) * latency
    return compute[1] / (compute[K] + ring + stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", default="128,256,512,1024")
    parser.add_argument("--steps", type=int, default=9, help="steps (rounds) per median")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    if args.worker:
        return worker(hidden, args.steps, args.worker)

    mpiexec = Path(sys.executable).parent / "mpiexec"
    me = [sys.executable, __file__, "--hidden", args.hidden, "--steps", str(args.steps)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    one = _run([*me, "--worker", str(RESULTS / ".mpi1.json")], RESULTS / ".mpi1.json")
    two = _run(
        [str(mpiexec), "-n", "2", *me, "--worker", str(RESULTS / ".mpi2.json")],
        RESULTS / ".mpi2.json",
    )

    print(f"\nStep at batch {BATCH}, seq_length {T}, float32 (median ms)")
    print(
        "| hidden | gradient MB | K=1 compute | K=2 compute | K=2 wait | K=2 allreduce "
        "| Allreduce alone |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for h in hidden:
        s1, s2 = one["steps"][str(h)], two["steps"][str(h)]
        alone = two["allreduce"][str(h)]
        print(
            f"| {h} | {alone['bytes'] / 1e6:.2f} | {1e3 * s1['compute_s']:.1f} | "
            f"{1e3 * s2['compute_s']:.1f} | {1e3 * s2['wait_s']:.2f} | "
            f"{1e3 * s2['allreduce_s']:.3f} | {1e3 * alone['s']:.3f} |"
        )
    val = two["validation"]
    print(
        f"\nValidation, hidden {val['hidden']}, {val['chars']:,} chars, 2 ranks: shared "
        f"{val['shared_s']:.3f} s, rank 0 alone {val['rank0_s']:.3f} s"
    )

    table = {}
    for name, (bandwidth, latency) in NETWORKS.items():
        print(f"\nExpected speedup on K nodes, batch {TABLE_BATCH}, {name} ({1e6 * latency:g} us)")
        print("| hidden | " + " | ".join(f"K={K}" for K in NODES[1:]) + " |")
        print("|---:|" + "---:|" * (len(NODES) - 1))
        for h in hidden:
            compute = {int(K): s for K, s in one["compute"][str(h)].items()}
            grad = two["allreduce"][str(h)]["bytes"]
            row = [_speedup(compute, grad, bandwidth, latency, K) for K in NODES[1:]]
            table.setdefault(name, {})[h] = row
            print(f"| {h} | " + " | ".join(f"{x:.1f}" for x in row) + " |")

    figures = {"one": one, "two": two, "speedup": table, "load_1min_end": os.getloadavg()[0]}
    path = write_result("mpi", figures, machine_info=machine(measure_gemm_peak()))
    for f in (".mpi1.json", ".mpi2.json"):
        (RESULTS / f).unlink(missing_ok=True)
    print(f"\nsaved {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
