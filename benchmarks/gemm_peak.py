"""Measure this machine's dense matrix-multiply throughput through NumPy's BLAS.

The figure is the ceiling against which the trainer's speed is judged: a vanilla RNN step is
a handful of GEMMs, so chars/s divided by flops/char can be compared with it.

    python benchmarks/gemm_peak.py [--n 2048] [--repeats 5]

Timings on a shared machine are noisy: take the median of several runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def measure_gemm_peak(n: int = 2048, repeats: int = 5, dtype: type = np.float32) -> float:
    """Return GFLOP/s of ``a @ b`` for n x n matrices: the median of `repeats` timed products,
    after one untimed warm-up, counting 2*n**3 flops per product."""
    if n < 1 or repeats < 1:
        raise ValueError("n and repeats must be positive")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="matrix size")
    parser.add_argument("--repeats", type=int, default=5, help="timed products (median taken)")
    args = parser.parse_args()
    gflops = measure_gemm_peak(args.n, args.repeats)
    print(f"float32 GEMM {args.n}x{args.n}: {gflops:.1f} GFLOP/s (median of {args.repeats})")


if __name__ == "__main__":
    main()
