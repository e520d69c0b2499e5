"""Where the benchmarks keep what they measured: one JSON file per run, committed.

    benchmarks/results/<name>-<YYYY-MM-DD>.json

Each file holds the run's figures beside the machine that produced them (CPU, cores, BLAS,
NumPy, the command line, the date), so that a number quoted in docs/performance.md can be traced
to its run; benchmarks/tables.py turns these files into the tables of that page.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from charrnn.atomic import replace_atomically

RESULTS = Path(__file__).resolve().parent / "results"
STARTED = time.gmtime()  # when the benchmark began: it imports this module first


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_name() -> str:
    """The BLAS NumPy was built against (e.g. 'scipy-openblas 0.3.27'), or 'unknown'."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy without mode="dicts"
        return "unknown"


def machine(gemm_peak_gflops: float | None = None) -> dict:
    """The facts about this machine a figure needs beside it."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "blas": blas_name(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if gemm_peak_gflops is not None:
        info["gemm_peak_gflops"] = round(gemm_peak_gflops, 1)
    return info


def result_path(name: str, day: str | None = None) -> Path:
    """benchmarks/results/<name>-<day>.json, day defaulting to today (UTC)."""
    return RESULTS / f"{name}-{day or time.strftime('%Y-%m-%d', time.gmtime())}.json"


def write_result(name: str, figures: dict, *, machine_info: dict, note: str = "", out=None):
    """Write one run's figures with its machine, command and time; return the file's path."""
    path = Path(out) if out else result_path(name)
    record = {
        "benchmark": name,
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", STARTED),
        "when_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": machine_info,
        "note": note,
        **figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    replace_atomically(path, lambda f: f.write(text.encode()))
    return path
