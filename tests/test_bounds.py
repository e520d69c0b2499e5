"""Bounded reads, memory estimated before it is taken, count flags with limits, and commands
under an MPI launcher (issue 22 classes 4, 5, 7 and 9).

What a regression could turn into gigabytes or an endless read (/dev/zero as a text, a beam of
10^8) runs in a real process under an address-space limit and a timeout (`several`), so the
suite fails instead of swapping or hanging."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TEXT, cli, usage_error, user_error

from charrnn.checks import LIMITS

LIMIT = 1536 << 20  # address space of a bounded process: Python, NumPy and a small model fit
SEPARATOR = "<<exit "

# runs each command of argv[2] (a JSON list) through the real entry point, in one process
_DRIVER = """
import json, resource, sys
from charrnn.cli import main
for args in json.loads(sys.argv[1]):
    sys.argv = ["charrnn", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    sys.stderr.write(f"<<exit {code}>>\\n")
    sys.stderr.flush()
"""


def several(commands: list[list], cwd: Path, stdin=None, timeout: float = 90) -> list:
    """[(exit code, stderr)] of each `charrnn ARGS` of commands, run one after the other in one
    process limited to LIMIT bytes of address space."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    args = json.dumps([[str(a) for a in c] for c in commands])
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, args],
        cwd=cwd,
        env=env,
        stdin=stdin,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    results, lines = [], []
    for line in done.stderr.splitlines():
        if line.startswith(SEPARATOR):
            results.append((int(line[len(SEPARATOR) : -2]), "\n".join(lines)))
            lines = []
        else:
            lines.append(line)
    assert len(results) == len(commands), done.stderr[-3000:]
    return results


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    return Path(shutil.copytree(good_run[1], tmp_path / "run"))


# ---- class 4: what a command reads is bounded ----


def test_dev_zero_as_a_text_is_input_too_large(run, tmp_path):
    commands = [
        ["eval", "/dev/zero", "--checkpoint", run],
        ["gradflow", run, "/dev/zero", "--positions", 10**7, "--max-distance", 10],
        ["sample", "--checkpoint", run, "--seed-file", "/dev/zero"],
        ["train", "/dev/zero", "--out", tmp_path / "new", "-q"],
        ["show", "/dev/zero", "--checkpoint", run, "--length", 10, "-o", tmp_path / "p.html"],
    ]
    results = several(commands, tmp_path)
    for (code, stderr), args in zip(results[:3], commands[:3], strict=True):
        assert code == 1 and stderr == (
            "Error: input too large: '/dev/zero' holds more than 256.0 MB, the most a text "
            "read whole may have; give a part of it (e.g. head -c 100M FILE | charrnn ... -)"
        ), args
    assert results[3] == (
        1,
        "Error: '/dev/zero' is a character device, not a text file; give a file, or pipe "
        "text in with -",
    )
    assert not (tmp_path / "new").exists()
    code, stderr = results[4]  # show reads its 10 characters, not the endless rest
    assert code == 1 and "none of the characters of 'zero'" in stderr


def test_dev_zero_on_stdin(run, tmp_path):
    with open("/dev/zero", "rb") as zero:
        results = several(
            [["eval", "-", "--checkpoint", run], ["train", "-", "-q"]], tmp_path, zero
        )
    assert results[0][0] == 1 and "input too large: '<stdin>'" in results[0][1]
    assert results[1] == (1, "Error: standard input is a character device, not text; pipe text in")


# ---- class 5: memory estimated before it is taken ----


def test_requests_bigger_than_memory_are_refused_before_they_allocate(run, tmp_path):
    commands = [
        ["sample", "--checkpoint", run, "--beam", 10**6, "--length", 10**6],
        ["sample", "--checkpoint", run, "--num-samples", 10**6, "--length", 10**9, "--json"],
        ["gradflow", run, REPO / "data" / "shakespeare.txt", "--max-distance", 10**6],
    ]
    results = several(commands, tmp_path)
    said = [stderr for _, stderr in results]
    assert all(code == 1 for code, _ in results), said
    assert said[0].startswith(
        "Error: a beam search of width 1,000,000 over 1,000,000 characters needs about "
    ) and said[0].endswith("; lower --beam")
    assert said[1].startswith("Error: drawing 1,000,000 samples of 1,000,000,000 characters")
    assert said[1].endswith("; lower --length")
    assert said[2].startswith("Error: measuring 1,000,000 characters back at ")
    assert said[2].endswith("; lower --max-distance or --positions")


def test_a_streamed_sample_keeps_nothing(run, tmp_path):
    """Drawing 24,000 characters streamed holds no more than drawing 12,000 (each past whole
    blocks of noise): nothing of what was printed is kept."""
    import tracemalloc

    import charrnn

    model = charrnn.load(run)

    class Sink:
        def write(self, text: str) -> None:
            pass

        def flush(self) -> None:
            pass

    peaks = []
    model.sample("", 12_000, rng_seed=1, out=Sink(), keep=False)  # first-use allocations
    for length in (12_000, 24_000):
        tracemalloc.start()
        assert model.sample("", length, rng_seed=1, out=Sink(), keep=False) is None
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + (32 << 10), peaks


def test_kept_samples_are_held_compactly(run):
    import tracemalloc

    import charrnn

    model = charrnn.load(run)
    tracemalloc.start()
    texts = model.sample("", 8_000, num_samples=4, rng_seed=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(texts) == 4 and all(len(t) == 8_000 for t in texts)
    assert peak < (2 << 20) + 12 * 4 * 8_000, peak  # noise, a byte an id, the texts


# ---- class 7: count flags have limits; nothing reaches stdout before the checks ----

COUNT_FLAGS = [
    ("sample", "--length", "length"),
    ("sample", "--num-samples", "num_samples"),
    ("sample", "--beam", "beam"),
    ("sample", "--top-k", "top_k"),
    ("sample", "--rng-seed", "rng_seed"),
    ("show", "--length", "show_length"),
    ("gradflow", "--max-distance", "max_distance"),
    ("gradflow", "--positions", "positions"),
    ("gradflow", "--burn-in", "burn_in"),
    ("gradflow", "--rng-seed", "rng_seed"),
    ("serve", "--max-requests", "max_requests"),
    ("serve", "--max-tokens", "max_tokens"),
    ("serve", "--max-n", "max_n"),
    ("serve", "--max-body", "max_body"),
]


@pytest.mark.parametrize("command, flag, name", COUNT_FLAGS)
def test_every_count_flag_has_a_limit(run, command, flag, name, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:500])
    where = {"sample": ["--checkpoint", run], "show": [text, "--checkpoint", run, "-o", "x.html"]}
    where["gradflow"], where["serve"] = [run, text], [run]  # refused before it listens
    for value in (LIMITS[name][1] + 1, 99999999999999999999):
        result = cli(command, *where[command], flag, value)
        said = usage_error(result, flag)
        assert f"less than or equal to {LIMITS[name][1]}" in said, said
        assert result.stdout == ""


def test_nothing_reaches_stdout_before_the_inputs_are_checked(run):
    result = cli("sample", "--checkpoint", run, "--num-samples", 10**6, "--length", 10**9)
    assert result.stdout == "" and "needs about" in user_error(result)
    result = cli("sample", "--checkpoint", run, "--num-samples", "1e10")
    assert result.exit_code == 2 and result.stdout == ""


# ---- class 9: under an MPI launcher, every command but train runs once ----

_MPIEXEC = Path(sys.executable).parent / "mpiexec"
needs_mpi = pytest.mark.skipif(
    not _MPIEXEC.exists() or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'",
)


@needs_mpi
def test_commands_other_than_train_run_once_under_mpiexec(run, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:800])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}

    def mpi(*args):
        cmd = [str(_MPIEXEC), "-n", "2", sys.executable, "-m", "charrnn", *map(str, args)]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    done = mpi("eval", text, "--checkpoint", run, "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 and json.loads(done.stdout)["chars"] == 800
    assert done.stderr == (
        "Note: started as 2 MPI processes; only train shares its work among them, so eval "
        "runs once, in rank 0\n"
    )
    done = mpi("show", text, "--checkpoint", run, "-o", "page.html", "-q")
    assert done.returncode == 0 and (tmp_path / "page.html").exists(), done.stderr
    assert done.stderr.count("runs once, in rank 0") == 1


def test_a_launcher_that_started_one_process_changes_nothing(run, monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "1")
    result = cli("info", run, "--json")
    assert result.exit_code == 0 and result.stderr == ""


def test_a_rank_other_than_0_does_nothing(run, monkeypatch, tmp_path):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    result = cli("show", "missing.txt", "--checkpoint", run, "-o", tmp_path / "p.html")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert not (tmp_path / "p.html").exists()
