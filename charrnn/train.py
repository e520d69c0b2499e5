"""The training loop: truncated BPTT over batches of streams, validation, checkpoints, stopping.

One function, `train`, read top to bottom. It prints nothing: progress goes to a `reporter`
object that the CLI supplies (rich bar, plain lines or nothing).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn import optim
from charrnn.atomic import replace_atomically
from charrnn.config import Config, config_to_yaml
from charrnn.data import Batches, Corpus, split
from charrnn.errors import CheckpointError, TrainingError
from charrnn.model import chunked_loss, init_params
from charrnn.parallel import GradientWorkers, auto_workers, blas_threads
from charrnn.runs import RunLock
from charrnn.sample import generate

LN2 = math.log(2.0)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    chars_seen: int
    seconds: float
    stopped_by: str  # max_steps | max_epochs | max_time | patience | signal
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    signal: int | None = None

    def to_dict(self) -> dict:
        def bpc(loss):
            return None if loss is None else loss / LN2

        return {
            "run_dir": str(self.run_dir),
            "steps": self.steps,
            "chars_seen": self.chars_seen,
            "seconds": round(self.seconds, 3),
            "stopped_by": self.stopped_by,
            "final_val_loss": self.final_val_loss,
            "final_val_bpc": bpc(self.final_val_loss),
            "best_val_loss": self.best_val_loss,
            "best_val_bpc": bpc(self.best_val_loss),
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
        }


class NullReporter:
    """Receives progress from the loop; the CLI passes one that draws it."""

    def start(self, info: dict) -> None: ...
    def step(self, metrics: dict) -> None: ...
    def sample(self, step: int, text: str) -> None: ...
    def message(self, text: str) -> None: ...
    def end(self) -> None: ...


@dataclass
class _Signals:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so an update is never cut in
    half. A second signal interrupts at once."""

    received: int | None = None
    _old: dict = field(default_factory=dict)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _metrics_file(run_dir: Path, resume_step: int | None):
    """Open metrics.jsonl for appending; on resume, drop lines past the checkpoint's step (and
    a last line cut short when the run was killed)."""
    path = run_dir / "metrics.jsonl"
    if resume_step is not None and path.exists():
        kept = [
            ln
            for ln in path.read_text(errors="replace").splitlines()
            if (rec := _json_object(ln)) is not None
            and isinstance(rec.get("step", 0), int)
            and rec.get("step", 0) <= resume_step
        ]
        _write_atomic(path, "".join(ln + "\n" for ln in kept))
    elif path.exists():
        path.unlink()
    return path.open("a", buffering=1)  # line-buffered: a kill loses no finished line


def _json_object(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _write_atomic(path: Path, text: str) -> None:
    """Write text to path by a rename, so a kill leaves the old file or the new one."""
    replace_atomically(path, lambda f: f.write(text.encode()))


def _resume_state(resume: ckpt_io.Checkpoint, cfg: Config, V: int) -> dict:
    """The training state saved in `resume`, checked against the config it is resumed with."""
    H, B, dtype = cfg.hidden_size, cfg.batch_size, np.dtype(cfg.dtype)
    ts = resume.train_state
    problem = None
    if (
        resume.params["Whh"].shape != (H, H)
        or resume.params["by"].shape != (V,)
        or resume.params["Whh"].dtype != dtype
    ):
        problem = f"its weights do not match hidden_size {H}, {V} characters and dtype {dtype}"
    elif resume.h_carry is None or resume.h_carry.shape != (B, H):
        problem = f"'h_carry' is missing or not ({B}, {H}) for batch_size {B}"
    elif set(resume.opt_state) != set(optim.init_state(cfg.optimizer, resume.params)):
        problem = f"its optimizer state is not {cfg.optimizer}'s"
    elif not all(
        isinstance(ts.get(k, 0), int) and not isinstance(ts.get(k, 0), bool) and ts.get(k, 0) >= 0
        for k in ("bad_evals", "chars_seen")
    ) or not isinstance(ts.get("best_val_loss"), (int, float, type(None))):
        problem = "its train_state has values of the wrong type"
    rng = np.random.default_rng()
    if problem is None:
        try:
            rng.bit_generator.state = ts["rng_state"]
        except (KeyError, TypeError, ValueError):
            problem = "its saved random-generator state is invalid"
    if problem is not None:
        raise CheckpointError(f"cannot resume from the checkpoint: {problem}; start a new run")
    best_val = ts.get("best_val_loss")
    return {
        "rng": rng,
        "best_val": math.inf if best_val is None else float(best_val),
        "bad_evals": ts.get("bad_evals", 0),
        "chars_seen": ts.get("chars_seen", resume.step * B * cfg.seq_length),
    }


def train(
    cfg: Config,
    corpus: Corpus,
    run_dir: Path,
    *,
    resume: ckpt_io.Checkpoint | None = None,
    reporter=None,
) -> TrainResult:
    """Train a model on corpus into run_dir; continue from `resume` when given.

    The run folder is locked before anything in it is written, so a second training pointed at
    the same folder refuses without touching the first one's files.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(
            f"cannot create run folder '{run_dir}': {e.strerror or e}; pass another --out"
        ) from None
    try:
        # single-threaded BLAS: the step's products are small; parallel.py shares the cores
        with RunLock(run_dir), blas_threads(1):
            ckpt_io.remove_temp_files(run_dir)  # left by a save that a kill cut short
            return _train(cfg, corpus, run_dir, resume, reporter or NullReporter())
    except BrokenPipeError:
        raise
    except OSError as e:  # checkpoint saves say this themselves; this is config/metrics/lock
        raise TrainingError(
            f"cannot write to run folder '{run_dir}': {e.strerror or e}; "
            "free disk space or check permissions (saved checkpoints are kept)"
        ) from None
    except MemoryError:
        raise TrainingError(
            f"not enough memory for hidden_size {cfg.hidden_size}, batch_size "
            f"{cfg.batch_size}, seq_length {cfg.seq_length}; lower them"
        ) from None


def _train(
    cfg: Config, corpus: Corpus, run_dir: Path, resume: ckpt_io.Checkpoint | None, reporter
) -> TrainResult:
    dtype = np.dtype(cfg.dtype)
    V, H, B, T = len(corpus.vocab), cfg.hidden_size, cfg.batch_size, cfg.seq_length

    train_ids, val_ids = split(corpus.ids, cfg.val_fraction)
    batches = Batches(train_ids, B, T)
    val_ids = val_ids[: cfg.val_max_chars + 1]
    validate = cfg.eval_every > 0 and len(val_ids) >= 2

    # --- initial state: fresh, or everything the checkpoint saved -----------------------------
    if resume is None:
        rng = np.random.default_rng(cfg.rng_seed)
        params = init_params(V, H, rng, dtype, cfg.init_scale)
        opt_state = optim.init_state(cfg.optimizer, params)
        h = np.zeros((B, H), dtype=dtype)  # (B, H) carried hidden state
        step, best_val, bad_evals, chars_seen = 0, math.inf, 0, 0
    else:
        saved = _resume_state(resume, cfg, V)
        rng = saved["rng"]
        params = {k: np.ascontiguousarray(v) for k, v in resume.params.items()}
        opt_state = {k: np.array(v) for k, v in resume.opt_state.items()}
        h = np.array(resume.h_carry)
        step = resume.step
        best_val, bad_evals, chars_seen = saved["best_val"], saved["bad_evals"], saved["chars_seen"]

    _write_atomic(run_dir / "config.yaml", config_to_yaml(cfg))
    last_path, best_path = run_dir / "last.npz", run_dir / "best.npz"
    last_saved = resume.step if resume is not None and last_path.exists() else None

    def diverged(what: str, at_step: int) -> TrainingError:
        clip = f"a lower --grad-clip (now {cfg.grad_clip:g})" if cfg.grad_clip else "--grad-clip 5"
        kept = (
            "no checkpoint was written"
            if last_saved is None
            else f"last.npz from step {last_saved} is kept"
        )
        return TrainingError(
            f"the {what} at step {at_step}: training diverged; lower "
            f"--learning-rate (now {cfg.learning_rate:g}) or set {clip}; {kept}"
        )

    def save(path: Path) -> None:
        nonlocal last_saved
        # an update can overflow the weights while its loss was still finite: never write them
        # over the last good checkpoint (load would refuse the file)
        if not all(np.isfinite(a).all() for a in (*params.values(), *opt_state.values(), h)):
            raise diverged("weights became NaN or infinite", step)
        state = {
            "rng_state": rng.bit_generator.state,
            "best_val_loss": _finite_or_none(best_val),
            "bad_evals": bad_evals,
            "chars_seen": chars_seen,
        }
        ckpt_io.save(
            ckpt_io.Checkpoint(
                params=params,
                vocab=corpus.vocab,
                config=cfg.to_dict(),
                step=step,
                h_carry=h,
                opt_state=opt_state,
                train_state=state,
            ),
            path,
        )
        if path == last_path:
            last_saved = step

    def preview() -> str:
        # its own generator, so previews never change the training's random stream
        g = np.random.default_rng([cfg.rng_seed or 0, step])
        ids = [
            int(c[0])
            for c in generate(params, train_ids[:0], cfg.sample_length, g, temperature=0.8)
        ]
        return "".join(corpus.vocab[i] for i in ids)

    max_steps = cfg.max_steps or None
    if cfg.max_epochs:
        epoch_steps = math.ceil(cfg.max_epochs * batches.steps_per_epoch)
        max_steps = min(max_steps or epoch_steps, epoch_steps)
    reporter.start(
        {
            "run_dir": str(run_dir),
            "start_step": step,
            "max_steps": max_steps,
            "steps_per_epoch": batches.steps_per_epoch,
            "vocab_size": V,
            "train_chars": len(train_ids),
            "val_chars": len(val_ids),
            "max_time": cfg.max_time or None,
        }
    )

    loss_and_grads = GradientWorkers(B, auto_workers(B, cfg.workers))
    metrics_out = _metrics_file(run_dir, step if resume is not None else None)
    start = time.perf_counter()
    step_time = None  # smoothed seconds per step, for chars/s
    stopped_by, val_loss = "max_steps", None
    try:
        with _Signals() as signals, warnings.catch_warnings():
            # overflow is caught by the finiteness checks below; numpy's warnings about it (from
            # the worker threads too, which np.errstate does not reach) would bury the message
            warnings.filterwarnings("ignore", "overflow|invalid value", RuntimeWarning)
            while True:
                # --- stop? -----------------------------------------------------------------
                if signals.received is not None:
                    stopped_by = "signal"
                    break
                if max_steps is not None and step >= max_steps:
                    stopped_by = (
                        "max_epochs" if cfg.max_epochs and step >= epoch_steps else "max_steps"
                    )
                    break
                if cfg.max_time and time.perf_counter() - start >= cfg.max_time:
                    stopped_by = "max_time"
                    break

                # --- forward, backward, update ---------------------------------------------
                t0 = time.perf_counter()
                lr = optim.learning_rate(cfg, step)
                if batches.starts_epoch(step):
                    h = np.zeros((B, H), dtype=dtype)  # a new epoch: streams restart
                X, Y = batches.get(step)
                loss, grads, h_next = loss_and_grads(params, X, Y, h)
                norm = optim.clip_gradients(grads, cfg.clip_mode, cfg.grad_clip)
                if not math.isfinite(loss):
                    raise diverged(f"loss became {loss}", step + 1)
                if not math.isfinite(norm):
                    raise diverged(f"gradient norm became {norm}", step + 1)
                optim.update(cfg, params, grads, opt_state, step, lr)
                h = h_next
                step += 1
                chars_seen += B * T
                dt = time.perf_counter() - t0
                step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt

                # --- evaluate --------------------------------------------------------------
                val_loss, improved = None, False
                if validate and step % cfg.eval_every == 0:
                    val_loss, _ = chunked_loss(params, val_ids)
                    improved = val_loss < best_val
                    if improved:
                        best_val, bad_evals = val_loss, 0
                    else:
                        bad_evals += 1

                # --- log, then checkpoint ---------------------------------------------------
                # in this order, after a kill metrics.jsonl has every step up to last.npz's
                # (a resume drops the lines past it)
                record = {
                    "step": step,
                    "epoch": round(step / batches.steps_per_epoch, 4),
                    "train_loss": loss,
                    "val_loss": val_loss,
                    "val_bpc": None if val_loss is None else val_loss / LN2,
                    "grad_norm": norm,
                    "lr": lr,
                    "chars_per_sec": B * T / step_time,
                    "elapsed": round(time.perf_counter() - start, 3),
                }
                metrics_out.write(json.dumps(record) + "\n")
                if improved:
                    save(best_path)
                if step % cfg.checkpoint_every == 0:
                    save(last_path)
                    if not validate:
                        save(best_path)
                reporter.step(record)
                if cfg.sample_every and step % cfg.sample_every == 0:
                    reporter.sample(step, preview())

                # --- early stopping --------------------------------------------------------
                if cfg.patience and bad_evals >= cfg.patience:
                    stopped_by = "patience"
                    break

            # --- the end: a last validation and checkpoint -------------------------------------
            if validate and (val_loss is None or step % cfg.eval_every != 0) and step > 0:
                val_loss, _ = chunked_loss(params, val_ids)
                if val_loss < best_val:
                    best_val = val_loss
                    save(best_path)
                metrics_out.write(
                    json.dumps({"step": step, "val_loss": val_loss, "val_bpc": val_loss / LN2})
                    + "\n"
                )
            save(last_path)
            if not validate or not best_path.exists():
                save(best_path)
    finally:
        loss_and_grads.close()
        metrics_out.close()
        reporter.end()

    return TrainResult(
        run_dir=run_dir,
        steps=step,
        chars_seen=chars_seen,
        seconds=time.perf_counter() - start,
        stopped_by=stopped_by,
        final_val_loss=val_loss if validate else None,
        best_val_loss=_finite_or_none(best_val),
        last_checkpoint=last_path,
        best_checkpoint=best_path,
        signal=signals.received,
    )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
