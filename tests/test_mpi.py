"""Data-parallel training over MPI (charrnn/distributed.py): `mpiexec -n 2 python -m charrnn
train` against one process, resuming, signals, an error on one rank, and what happens without
mpi4py. The mpiexec cases need mpi4py and an mpiexec (the `mpi` extra brings both, and the
`dev` extra the `mpi` one); the rest run everywhere."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TEXT, arrays, metrics, write_corpus

from charrnn import checkpoint as ckpt_io
from charrnn.distributed import flat_gradients, launched_size
from charrnn.evaluate import chunked_loss
from charrnn.model import init_params

# the venv's mpiexec (the mpich wheel puts it beside python), else one on PATH
_BIN = Path(sys.executable).parent / "mpiexec"
MPIEXEC = str(_BIN) if _BIN.exists() else shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'",
)

# float64, two layers, dropout and random stream resets: every random draw of a step is in play
SETTINGS = [
    "--hidden-size", "16", "--num-layers", "2", "--dropout", "0.2", "--seq-length", "8",
    "--batch-size", "4", "--rng-seed", "3", "--eval-every", "10", "--checkpoint-every", "10",
    "--set", "dtype=float64", "--set", "reset_prob=0.1", "-q",
]  # fmt: skip


def _env(**extra: str) -> dict:
    """This environment, with the charrnn under test first on the path (also for mpiexec's
    processes, which inherit it)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def charrnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn", *args]


def mpiexec(n: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`mpiexec -n n python -m charrnn ARGS...`, its output captured."""
    cmd = [MPIEXEC, "-n", str(n), *charrnn(*args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def one_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(charrnn(*args), capture_output=True, text=True, env=_env(), timeout=60)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error: ")]


# ---- without mpiexec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, size",
    [
        ({}, 1),
        ({"PMI_SIZE": "4", "PMI_RANK": "1"}, 4),  # MPICH's and Intel MPI's hydra
        ({"OMPI_COMM_WORLD_SIZE": "2"}, 2),  # Open MPI
        ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "0"}, 8),  # srun
        ({"SLURM_NTASKS": "8"}, 1),  # a batch script itself: one process
        ({"PMI_SIZE": "1"}, 1),
    ],
)
def test_the_launcher_is_told_by_its_variables(environ, size):
    assert launched_size(environ) == size


def test_gradients_are_views_into_one_flat_buffer():
    params = init_params(7, 5, np.random.default_rng(0), np.float64, num_layers=2)
    flat, views = flat_gradients(params, extra=1)
    assert flat.shape == (sum(p.size for p in params.values()) + 1,)
    for name, p in params.items():
        assert views[name].shape == p.shape and np.shares_memory(views[name], flat)
        views[name][...] = 1.0
    assert flat[:-1].sum() == flat.size - 1 and flat[-1] == 0  # the last number: the loss


@pytest.mark.parametrize("k", [2, 3, 70])
def test_validation_parts_sum_to_the_whole(k):
    params = init_params(20, 8, np.random.default_rng(1), np.float64)
    ids = np.random.default_rng(2).integers(0, 20, 5000)
    whole, chars = chunked_loss(params, ids, n_streams=8, chunk=64, burn_in=100)
    parts = [chunked_loss(params, ids, 8, 64, 100, part=(i, k)) for i in range(k)]
    assert sum(p[0] for p in parts) == pytest.approx(whole, rel=1e-12)
    assert sum(p[1] for p in parts) == chars


def test_launched_as_several_without_mpi4py_says_how_to_install_it(tmp_path):
    write_corpus(tmp_path)
    # a Python without mpi4py: its import fails as it does when it is not installed
    code = (
        "import sys; sys.modules['mpi4py'] = None; from charrnn.cli import main; "
        "sys.argv = ['charrnn', 'train', 'corpus.txt', '--max-steps', '2']; main()"
    )
    for rank, said in (("0", True), ("1", False)):  # rank 0 alone says it
        env = _env(PMI_SIZE="2", PMI_RANK=rank)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert done.returncode == 1
        expected = ["Error: started by an MPI launcher as one of 2 processes, but mpi4py is not"]
        assert [e[:74] for e in errors(done.stderr)] == (expected if said else [])
        assert ("pip install 'charrnn[mpi]'" in done.stderr) is said
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


# ---- mpiexec -n 2 ----------------------------------------------------------------------------


@needs_mpi
def test_two_ranks_train_the_model_one_process_does(tmp_path):
    corpus = write_corpus(tmp_path)
    two = mpiexec(2, "train", str(corpus), *SETTINGS, "--max-steps", "30", "--out", "two")
    assert two.returncode == 0, two.stderr
    # one process with one worker: its gradients are one mean over the four streams, not two
    # means of two summed as the ranks do
    one = one_process(
        "train", str(corpus), *SETTINGS, "--max-steps", "30", "--out", "one", "--set", "workers=1"
    )
    assert one.returncode == 0, one.stderr
    a, b = arrays(tmp_path / "one" / "last.npz"), arrays(tmp_path / "two" / "last.npz")
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(b[k], a[k], rtol=1e-10, atol=1e-12, err_msg=k)
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for key in ("train_loss", "val_loss", "grad_norm"):
        x = [r.get(key) for r in m1 if r.get(key) is not None]
        y = [r.get(key) for r in m2 if r.get(key) is not None]
        np.testing.assert_allclose(y, x, rtol=1e-10, err_msg=key)
    assert two.stdout == ""  # -q: nothing from any rank


@needs_mpi
def test_resuming_two_ranks_is_bitwise_the_run_not_interrupted(tmp_path):
    corpus = write_corpus(tmp_path)
    whole = mpiexec(2, "train", str(corpus), *SETTINGS, "--max-steps", "40", "--out", "whole")
    half = mpiexec(2, "train", str(corpus), *SETTINGS, "--max-steps", "20", "--out", "parts")
    rest = mpiexec(2, "train", str(corpus), "--resume", "parts", "--max-steps", "40", "-q")
    assert [whole.returncode, half.returncode, rest.returncode] == [0, 0, 0], rest.stderr
    a, b = arrays(tmp_path / "whole" / "last.npz"), arrays(tmp_path / "parts" / "last.npz")
    for k in a:
        if a[k].dtype.kind == "f":
            assert np.array_equal(a[k], b[k]), k
    assert a["h_carry"].shape == (4, 2 * 16)  # the whole batch's carried state, gathered


@needs_mpi
def test_sigterm_to_mpiexec_saves_once_and_every_rank_exits_143(tmp_path):
    corpus = write_corpus(tmp_path)
    cmd = [MPIEXEC, "-n", "2", *charrnn("train", str(corpus), *SETTINGS[:-1], "--json")]
    cmd += ["--max-steps", "1000000", "--eval-every", "0", "--out", "run"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 30
    while not (tmp_path / "run" / "last.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # hydra passes it on to every rank
    out, err = proc.communicate(timeout=30)
    # mpiexec exits with its ranks' code when they agree, and says so when one aborts
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Abort" not in err.decode() and "BAD TERMINATION" not in err.decode()
    assert len(out.splitlines()) == 1  # --json: one summary, from rank 0
    interrupted = [ln for ln in err.decode().splitlines() if ln.startswith("Interrupted at step")]
    assert len(interrupted) == 1
    steps = metrics(tmp_path / "run")[-1]["step"]
    assert f"Interrupted at step {steps};" in interrupted[0]
    assert ckpt_io.load(tmp_path / "run" / "last.npz").step == steps


@needs_mpi
def test_an_error_on_rank_1_alone_ends_both_ranks_reported_once(tmp_path):
    # rank 1 runs in a folder without the corpus, as on a node that does not share the disk
    # where it lies: a real error of one rank (mpiexec's MPMD form gives each rank its folder)
    write_corpus(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    out = str(tmp_path / "run")
    args = charrnn("train", "corpus.txt", *SETTINGS, "--max-steps", "5", "--out", out)
    cmd = [MPIEXEC, "-n", "1", *args, ":", "-n", "1", "-wdir", str(tmp_path / "elsewhere"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 1
    assert errors(done.stderr) == ["Error: file 'corpus.txt' not found; check the path"]
    assert "Traceback" not in done.stderr and "Abort" not in done.stderr
    assert not (tmp_path / "run").exists()


@needs_mpi
def test_ranks_that_read_different_texts_refuse_to_train(tmp_path):
    # each machine with its own copy of the corpus, and one copy differs
    write_corpus(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    write_corpus(tmp_path / "elsewhere", TEXT[:-1000])
    out = str(tmp_path / "run")
    args = charrnn("train", "corpus.txt", *SETTINGS, "--max-steps", "5", "--out", out)
    cmd = [MPIEXEC, "-n", "1", *args, ":", "-n", "1", "-wdir", str(tmp_path / "elsewhere"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 1
    assert errors(done.stderr) == [
        "Error: the MPI processes read different texts as 'corpus.txt'; give every machine the "
        "same corpus (or put it on a filesystem they share)"
    ]
    assert "Abort" not in done.stderr


@needs_mpi
def test_a_batch_the_ranks_cannot_share_is_one_clear_error(tmp_path):
    corpus = write_corpus(tmp_path)
    done = mpiexec(2, "train", str(corpus), "--batch-size", "3", "--max-steps", "2", "--out", "r")
    assert done.returncode == 1
    assert errors(done.stderr) == [
        "Error: batch_size 3 cannot be shared by 2 MPI processes; give a multiple of 2"
    ]
    assert not (tmp_path / "r").exists()


@needs_mpi
def test_a_write_error_on_rank_0_mid_run_ends_every_rank(tmp_path):
    # rank 0 alone writes checkpoints; a file-size limit on it alone (as a full disk or quota
    # would) fails its first one while rank 1 waits in the next step's Allreduce: rank 0
    # reports the error and aborts the job, so rank 1 does not wait forever
    corpus = write_corpus(tmp_path)
    args = charrnn("train", str(corpus), "--hidden-size", "1024", "--seq-length", "8")
    args += ["--batch-size", "4", "--max-steps", "20", "--checkpoint-every", "5", "-q"]
    args += ["--eval-every", "0", "--out", "run"]
    limited = ["bash", "-c", 'ulimit -f 8192 && exec "$@"', "-", *args]  # 8 MiB: MPI still starts
    cmd = [MPIEXEC, "-n", "1", *limited, ":", "-n", "1", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 1
    assert errors(done.stderr) == [
        "Error: could not write checkpoint 'run/last.npz': File too large; nothing was written "
        "(free disk space or check the folder's permissions, then --resume)"
    ]
    # returned, within the timeout: rank 1 did not wait forever (MPICH's own line about the
    # MPI_Abort is not asserted: it is lost at times when the job is torn down)
    assert not (tmp_path / "run" / "last.npz").exists()
