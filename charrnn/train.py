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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn import optim
from charrnn.config import Config, config_to_yaml
from charrnn.data import Batches, Corpus, split
from charrnn.errors import TrainingError
from charrnn.model import chunked_loss, init_params
from charrnn.parallel import GradientWorkers, auto_workers
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
    """Open metrics.jsonl for appending; on resume, drop lines past the checkpoint's step."""
    path = run_dir / "metrics.jsonl"
    if resume_step is not None and path.exists():
        kept = [ln for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
        path.write_text("".join(ln + "\n" for ln in kept))
    elif path.exists():
        path.unlink()
    return path.open("a")


def train(cfg: Config, corpus: Corpus, run_dir: Path, *, resume: ckpt_io.Checkpoint | None = None,
          reporter=None) -> TrainResult:
    """Train a model on corpus into run_dir; continue from `resume` when given."""
    reporter = reporter or NullReporter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
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
        rng = np.random.default_rng()
        rng.bit_generator.state = resume.train_state["rng_state"]
        params = {k: np.ascontiguousarray(v) for k, v in resume.params.items()}
        opt_state = {k: np.array(v) for k, v in resume.opt_state.items()}
        h = np.array(resume.h_carry)
        step = resume.step
        best_val = resume.train_state.get("best_val_loss", math.inf)
        best_val = math.inf if best_val is None else best_val
        bad_evals = resume.train_state.get("bad_evals", 0)
        chars_seen = resume.train_state.get("chars_seen", step * B * T)

    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    last_path, best_path = run_dir / "last.npz", run_dir / "best.npz"

    def save(path: Path) -> None:
        state = {"rng_state": rng.bit_generator.state, "best_val_loss": _finite_or_none(best_val),
                 "bad_evals": bad_evals, "chars_seen": chars_seen}
        ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=corpus.vocab, config=cfg.to_dict(),
                                        step=step, h_carry=h, opt_state=opt_state,
                                        train_state=state), path)

    def preview() -> str:
        # its own generator, so previews never change the training's random stream
        g = np.random.default_rng([cfg.rng_seed or 0, step])
        ids = [int(c[0]) for c in generate(params, train_ids[:0], cfg.sample_length, g,
                                           temperature=0.8)]
        return "".join(corpus.vocab[i] for i in ids)

    max_steps = cfg.max_steps or None
    if cfg.max_epochs:
        epoch_steps = math.ceil(cfg.max_epochs * batches.steps_per_epoch)
        max_steps = min(max_steps or epoch_steps, epoch_steps)
    reporter.start({"run_dir": str(run_dir), "start_step": step, "max_steps": max_steps,
                    "steps_per_epoch": batches.steps_per_epoch, "vocab_size": V,
                    "train_chars": len(train_ids), "val_chars": len(val_ids),
                    "max_time": cfg.max_time or None})

    loss_and_grads = GradientWorkers(B, auto_workers(B, cfg.workers))
    metrics_out = _metrics_file(run_dir, step if resume is not None else None)
    start = time.perf_counter()
    step_time = None  # smoothed seconds per step, for chars/s
    stopped_by, val_loss = "max_steps", None
    try:
        with RunLock(run_dir), _Signals() as signals:
            while True:
                # --- stop? -----------------------------------------------------------------
                if signals.received is not None:
                    stopped_by = "signal"
                    break
                if max_steps is not None and step >= max_steps:
                    stopped_by = "max_epochs" if cfg.max_epochs and step >= epoch_steps \
                        else "max_steps"
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
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    raise TrainingError(
                        f"the {what} became {loss if what == 'loss' else norm} at step {step + 1}; "
                        "lower --learning-rate or set --grad-clip (the last good checkpoint "
                        "is kept)"
                    )
                optim.update(cfg, params, grads, opt_state, step, lr)
                h = h_next
                step += 1
                chars_seen += B * T
                dt = time.perf_counter() - t0
                step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt

                # --- evaluate and checkpoint -----------------------------------------------
                val_loss = None
                if validate and step % cfg.eval_every == 0:
                    val_loss, _ = chunked_loss(params, val_ids)
                    if val_loss < best_val:
                        best_val, bad_evals = val_loss, 0
                        save(best_path)
                    else:
                        bad_evals += 1
                if step % cfg.checkpoint_every == 0:
                    save(last_path)
                    if not validate:
                        save(best_path)

                # --- log -------------------------------------------------------------------
                record = {
                    "step": step, "epoch": round(step / batches.steps_per_epoch, 4),
                    "train_loss": loss, "val_loss": val_loss,
                    "val_bpc": None if val_loss is None else val_loss / LN2,
                    "grad_norm": norm, "lr": lr, "chars_per_sec": B * T / step_time,
                    "elapsed": round(time.perf_counter() - start, 3),
                }
                metrics_out.write(json.dumps(record) + "\n")
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
                metrics_out.write(json.dumps({"step": step, "val_loss": val_loss,
                                              "val_bpc": val_loss / LN2}) + "\n")
            save(last_path)
            if not validate or not best_path.exists():
                save(best_path)
    finally:
        loss_and_grads.close()
        metrics_out.close()
        reporter.end()

    return TrainResult(
        run_dir=run_dir, steps=step, chars_seen=chars_seen,
        seconds=time.perf_counter() - start, stopped_by=stopped_by,
        final_val_loss=val_loss if validate else None,
        best_val_loss=_finite_or_none(best_val), last_checkpoint=last_path,
        best_checkpoint=best_path, signal=signals.received,
    )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
