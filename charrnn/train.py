"""The training loop: truncated BPTT over batches of streams, validation, checkpoints, stopping.

Two ways in: `train_corpus`, everything `charrnn train` does (the config settled by
config.settle, the corpus read through its cache, then `train`), and `train`, a settled Config
on a Corpus (what benchmarks and tests call). The loop itself, `_train`, reads top to bottom in
comment-headed blocks, with the helpers it needs above it; the validate-log-checkpoint block
(`_evaluate_and_save`) is the same for a step and for the end. It prints nothing: progress goes
to a `reporter` (charrnn.report: the CLI's bar, plain lines or nothing).

Under MPI (charrnn/distributed.py) every rank runs this loop on its share of the batch's
streams; rank 0 alone writes the run folder and reports.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from charrnn import cache, distributed, finetune, jsonout, optim
from charrnn import checkpoint as ckpt_io
from charrnn.atomic import replace_atomically
from charrnn.config import Config, config_to_yaml, settle
from charrnn.data import Batches, Corpus, held_out_in, in_vocab, split_corpus
from charrnn.errors import ConfigError, DataError, TrainingError, option
from charrnn.evaluate import chunked_loss
from charrnn.model import bpc
from charrnn.parallel import GradientWorkers, auto_workers, blas_threads
from charrnn.report import NullReporter
from charrnn.runs import (
    RUNS_DIR,
    RunLock,
    checkpoint_file,
    existing_run,
    make_run_dir,
    remove_run,
    remove_unused,
    trim_metrics,
)
from charrnn.sample import finish_samples, generate
from charrnn.state import TrainState


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
    primary: bool = True  # this process reports the run: False on MPI ranks other than 0
    documents: int = 1  # the corpus's documents (files with text, or records)
    corpus_chars: int = 0  # the corpus's ids (records: with their ends)

    def to_dict(self) -> dict:
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
            "documents": self.documents,
            "chars": self.corpus_chars,
        }


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
    a last line cut short when the run was killed). Returns the file and the last `elapsed` of
    the lines kept, which the resumed run's `elapsed` continues from (0 for a new run)."""
    path = run_dir / "metrics.jsonl"
    elapsed = 0.0
    if resume_step is not None:  # bounded, and a FIFO or device refused (runs.Metrics)
        elapsed = trim_metrics(path, resume_step)
    elif os.path.lexists(path):
        path.unlink()
    return path.open("a", buffering=1), elapsed  # line-buffered: a kill loses no finished line


def _write_atomic(path: Path, text: str) -> None:
    """Write text to path by a rename, so a kill leaves the old file or the new one."""
    replace_atomically(path, lambda f: f.write(text.encode()))


def train_corpus(
    source: str | Sequence[str],
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    set_items: Iterable[str] = (),
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    reporter=None,
    encode_bar=None,
    globs: Sequence[str] = (),
) -> TrainResult:
    """Everything `charrnn train` does: settle the config (a new run's, or a resumed run's with
    every compatibility check), read the corpus through its cache, and train.

    `source`: a path or a list of them (files, folders whose files `globs` choose, "-").
    `overrides` are command-line settings (None = not given); `encode_bar` is an optional
    progress callback and context manager shown while a large corpus is encoded. A folder
    `out` that holds a run is refused unless `resume` continues that run or `overwrite` says
    to delete it, and refused before the corpus is read (again under the run's lock in `train`).
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    world = distributed.world()
    ckpt = None
    continuing = False
    with world.together():  # an error on any rank ends every rank, and is reported once
        if world.size > 1 and "-" in map(str, sources):
            raise ConfigError(
                "an MPI run reads its corpus from a file on every rank; give a file, not -"
            )
        if resume is not None:
            ckpt, resume_dir = _load_for_resume(checkpoint_file(resume, "last.npz"))
            out = out or resume_dir
            continuing = _same_folder(Path(out), resume_dir)
            if continuing and overwrite:
                raise ConfigError(
                    f"{option('overwrite', True)} would delete the run that {option('resume')} "
                    "continues; give one of them"
                )
        saved = None if ckpt is None else ckpt.config
        cfg = settle(
            config_file, overrides, set_items, saved=saved, ranks=world.size, cores=world.cores
        )
        if ckpt is not None:
            _check_annealed_to_zero(cfg, ckpt)
        base = None  # fine-tuning: the checkpoint a new run starts from
        if ckpt is None and cfg.init_from is not None:
            base, file = finetune.load_base(cfg.init_from)
            arch = finetune.architecture_overrides(base, config_file, overrides or {}, set_items)
            given = {**(overrides or {}), **arch, "init_from": str(file)}
            cfg = settle(config_file, given, set_items, ranks=world.size, cores=world.cores)
        existing = "continue" if continuing else "overwrite" if overwrite else "refuse"
        if world.root and out is not None and existing == "refuse":
            if (refusal := existing_run(out)) is not None:
                with RunLock(out):  # a training that is writing it now: say that instead
                    pass
                raise refusal
    cfg = world.bcast(cfg)  # rank 0's: the seed it drew and the workers of a rank

    # rank 0 reads the corpus first and builds its cache; the other ranks then read the cache
    with world.together():
        if world.root:
            prepared, state, val = _read_corpus(sources, globs, cfg, ckpt, base, encode_bar)
    with world.together():
        if not world.root:
            prepared, state, val = _read_corpus(sources, globs, cfg, ckpt, base, encode_bar)
    ids, vocab = prepared.corpus.ids, prepared.corpus.vocab
    if not world.same(
        len(ids), prepared.source_bytes, zlib.crc32("".join(vocab).encode("utf-8", "surrogatepass"))
    ):
        raise world.everywhere(  # each machine has its own copy, and they differ
            DataError(
                f"the MPI processes read different texts as '{prepared.name}'; give every "
                "machine the same corpus (or put it on a filesystem they share)"
            )
        )
    encoded = not prepared.reused and prepared.source_bytes >= 32 << 20
    return train(
        cfg,
        prepared.corpus,
        out,
        state=state,
        reporter=reporter,
        notice=prepared.summary() if encoded else None,
        existing=existing,
        val=val,
        corpus_record=_corpus_record(prepared),
        init=base,
    )


def _check_annealed_to_zero(cfg: Config, ckpt: ckpt_io.Checkpoint) -> None:
    """Refuse to resume a run whose lr annealed over the whole of its max_time down to
    lr_final 0: its rate never rises again, so the resumed run would learn nothing."""
    done = float(ckpt.train_state.get("time_progress", 0.0))
    if cfg.lr_decay in optim.ANNEALED and cfg.max_time and cfg.lr_final == 0 and done >= 1.0:
        raise ConfigError(
            f"the run's learning rate has annealed over max_time down to 0 (lr_decay "
            f"{cfg.lr_decay}, lr_final 0), so resuming it would learn nothing; to train on, "
            "start a new run from it with --init-from, or resume with --set lr_final=0.05"
        )


def _load_for_resume(path: Path) -> tuple[ckpt_io.Checkpoint, Path]:
    """The checkpoint that --resume names (a run folder: its last.npz) and its run folder."""
    path = Path(path)
    ckpt_path = path / "last.npz" if path.is_dir() else path
    ckpt = ckpt_io.load(ckpt_path)
    if ckpt.h_carry is None or "rng_state" not in ckpt.train_state:
        raise ConfigError(f"'{ckpt_path}' has no training state to resume from")
    try:
        Config.from_dict(ckpt.config)
    except ConfigError as e:
        raise ConfigError(
            f"'{ckpt_path}' holds an invalid config ({e}); it cannot be resumed, start a new run"
        ) from None
    return ckpt, ckpt_path.parent


def _read_corpus(sources: list, globs: Sequence[str], cfg: Config, ckpt, base, encode_bar):
    """(the corpus through its cache, the state resumed from ckpt or None, the validation
    documents of cfg.val_file or None). A fine-tuned run (`base`, or a resumed one whose config
    has init_from) reads the corpus in the union of its vocabulary and the base model's."""
    with encode_bar or nullcontext():
        prepared = cache.prepare(
            sources,
            cfg.encoding,
            cfg.decode_errors,
            documents=cfg.documents,
            globs=globs,
            progress=encode_bar,
        )
    corpus = prepared.corpus
    target = None
    if base is not None:
        target = finetune.union_vocab(base, corpus.vocab)
    elif ckpt is not None and cfg.init_from is not None and set(corpus.vocab) <= set(ckpt.vocab):
        target = ckpt.vocab  # the union it was fine-tuned in (else from_checkpoint says so)
    if target is not None:
        prepared = replace(prepared, corpus=in_vocab(corpus, target))
    state = None
    if ckpt is not None:
        vocab = prepared.corpus.vocab
        state = TrainState.from_checkpoint(ckpt, cfg, vocab, _corpus_record(prepared))
    val = None
    if cfg.val_file is not None:
        held_out = cache.prepare(
            cfg.val_file, cfg.encoding, cfg.decode_errors, documents=cfg.documents, globs=globs
        )
        val = held_out_in(held_out.corpus, prepared.corpus, cfg.val_max_chars + 1, held_out.name)
    return prepared, state, val


def _corpus_record(prepared: cache.PreparedCorpus) -> dict:
    """What a checkpoint records of the corpus it was trained on, for resume to compare."""
    corpus = prepared.corpus
    return {"chars": len(corpus.ids), "documents": corpus.documents, "crc32": prepared.crc32}


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # a does not exist yet: a new folder
        return False


def train(
    cfg: Config,
    corpus: Corpus,
    run_dir: str | Path | None = None,
    *,
    state: TrainState | None = None,
    reporter=None,
    notice: str | None = None,
    existing: str = "refuse",
    val: Corpus | None = None,
    corpus_record: dict | None = None,
    init: ckpt_io.Checkpoint | None = None,
) -> TrainResult:
    """Train a model on corpus into run_dir (None: a new folder under runs/); continue from
    `state` (a resumed run) when given. `val`: the validation documents (cfg.val_file's) when
    they are not the corpus's tail; `corpus_record`: what checkpoints record of the corpus;
    `init`: the checkpoint whose weights a new run starts from (charrnn.finetune).

    The run folder is locked before anything in it is written, so a second training pointed at
    the same folder refuses without touching the first one's files. `existing` says what to do
    when the folder already holds a run: "refuse" it (TrainingError naming --resume and
    --overwrite), "overwrite" it (its files are deleted once the new run's checks pass), or
    "continue" it (it is the run that `state` resumes). A folder this call created is removed
    again when the run fails before writing anything in it. Under MPI every rank calls this;
    rank 0 makes, locks and writes the folder, and its `run_dir` is every rank's.
    """
    world = distributed.world()
    made: list[Path] = []
    try:
        # single-threaded BLAS: the step's products are small; parallel.py shares the cores
        with ExitStack() as held, blas_threads(1):
            try:
                with world.together():  # rank 0 alone makes, locks and checks the run folder
                    if world.root:
                        run_dir, made = _make_run_dir(run_dir)
                        held.enter_context(RunLock(run_dir))
                        if existing == "refuse" and (refusal := existing_run(run_dir)) is not None:
                            raise refusal
                        ckpt_io.remove_temp_files(run_dir)  # left by a save a kill cut short
                return _train(
                    cfg,
                    corpus,
                    world.bcast(run_dir),
                    state,
                    (reporter or NullReporter()) if world.root else NullReporter(),
                    notice,
                    overwrite=existing == "overwrite",
                    world=world,
                    val=val,
                    corpus_record=corpus_record,
                    init=init,
                )
            except BaseException:
                remove_unused(made)  # a folder made for a run that failed its checks
                raise
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


def _make_run_dir(run_dir: str | Path | None) -> tuple[Path, list[Path]]:
    try:
        return make_run_dir(run_dir)
    except OSError as e:
        where = RUNS_DIR if run_dir is None else run_dir
        raise TrainingError(
            f"cannot create run folder '{where}': {e.strerror or e}; pass another {option('out')}"
        ) from None


@dataclass
class _Limits:
    """Which limit, if any, stops the run: max_steps, max_epochs (as a step count), max_time."""

    max_steps: int | None
    epoch_steps: int | None
    max_time: float

    @classmethod
    def of(cls, cfg: Config, steps_per_epoch: int) -> _Limits:
        epoch_steps = math.ceil(cfg.max_epochs * steps_per_epoch) if cfg.max_epochs else None
        return cls(cfg.max_steps or None, epoch_steps, cfg.max_time)

    @property
    def steps(self) -> int | None:
        """The step the run stops at, if a step or epoch limit is set."""
        limits = [n for n in (self.max_steps, self.epoch_steps) if n is not None]
        return min(limits) if limits else None

    def described(self, cfg: Config, steps_per_epoch: int) -> dict:
        """The limits as the reporter's start record gives them; `stops` says in words which
        of them will stop the run."""
        return {
            "max_steps": self.steps,
            "max_epochs": cfg.max_epochs or None,
            "epoch_steps": self.epoch_steps,
            "steps_per_epoch": steps_per_epoch,
            "max_time": cfg.max_time or None,
            "stops": self.stops(cfg),
        }

    def stops(self, cfg: Config) -> str:
        """'stops at step 2,000 (max_steps)', '... or after 60s (max_time), whichever comes
        first', or 'no limit: stops when interrupted (Ctrl-C)'."""
        ways = []
        if self.steps is not None:
            by_epochs = self.steps == self.epoch_steps
            which = f"max_epochs {cfg.max_epochs:g}" if by_epochs else "max_steps"
            ways.append(f"at step {self.steps:,} ({which})")
        if self.max_time:
            ways.append(f"after {self.max_time:g}s (max_time)")
        if cfg.patience:
            ways.append(f"after {cfg.patience} validations without improvement (patience)")
        if not ways:
            return "no limit: stops when interrupted (Ctrl-C)"
        return "stops " + " or ".join(ways) + (", whichever comes first" if len(ways) > 1 else "")

    def progress(self, step: int, time_progress: float) -> float:
        """The fraction of the run done (0 to 1), by whichever limit ends it first: the steps
        done of the step or epoch limit, or `time_progress`, the fraction of max_time spent."""
        done = [time_progress] if self.max_time else []
        if self.steps:
            done.append(step / self.steps)
        return min(max(done, default=0.0), 1.0)

    def reached(self, step: int, elapsed: float) -> str | None:
        if self.epoch_steps is not None and step >= self.epoch_steps:
            return "max_epochs"
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.max_time and elapsed >= self.max_time:
            return "max_time"
        return None


class _Checkpoints:
    """Writes last.npz and best.npz of a run, and words the error when training diverges.
    Every rank calls `save`; rank 0 writes."""

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        vocab: list[str],
        last_saved: int | None,
        world: distributed.World,
    ):
        self.last, self.best = run_dir / "last.npz", run_dir / "best.npz"
        self.cfg, self.vocab, self.world = cfg, vocab, world
        self.last_saved = last_saved  # step of the last.npz on disk, None when there is none
        self.validates = True  # False: validation is off, best.npz is saved with last.npz

    def save(self, s: TrainState, path: Path) -> None:
        self.world.gather_rows(s.state)  # each rank's streams: the whole batch's carried state
        # an update can overflow the weights while its loss was still finite: never write them
        # over the last good checkpoint (load would refuse the file)
        if not s.is_finite():
            raise self.world.everywhere(self.diverged("weights became NaN or infinite", s.step))
        if self.world.root:
            ckpt_io.save(s.to_checkpoint(self.cfg, self.vocab), path)
        if path == self.last:
            self.last_saved = s.step

    def diverged(self, what: str, at_step: int) -> TrainingError:
        cfg = self.cfg
        clip = f"a lower --grad-clip (now {cfg.grad_clip:g})" if cfg.grad_clip else "--grad-clip 5"
        kept = (
            "no checkpoint was written"
            if self.last_saved is None
            else f"last.npz from step {self.last_saved} is kept"
        )
        return TrainingError(
            f"the {what} at step {at_step}: training diverged; lower "
            f"--learning-rate (now {cfg.learning_rate:g}) or set {clip}; {kept}"
        )


def _reset_streams(s: TrainState, cfg: Config, new_epoch: bool) -> np.ndarray:
    """Zero the carried state of every stream when an epoch starts (the streams restart), and
    otherwise of each stream with probability reset_prob, so the model learns to start well
    from a zero state as `sample` and `eval` do. Returns which streams were reset (B,)."""
    reset = np.zeros(len(s.state), bool)  # (B,)
    if new_epoch:
        reset[:] = True
    elif cfg.reset_prob > 0:
        reset = s.rng.random(len(s.state)) < cfg.reset_prob
    s.state[reset] = 0
    return reset


def _dropout_masks(s: TrainState, cfg: Config, T: int, B: int) -> np.ndarray | None:
    """Inverted-dropout keep masks (L, T, B, H) for one step: 0, or 1 / (1 - p) for the units
    kept, so the expected output of a layer is the same in training and inference."""
    if cfg.dropout == 0:
        return None
    dtype = s.state.dtype
    keep = s.rng.random((cfg.num_layers, T, B, cfg.hidden_size), dtype=dtype)  # (L, T, B, H)
    kept = keep >= cfg.dropout
    keep.fill(0)
    keep[kept] = 1.0 / (1.0 - cfg.dropout)
    return keep


def _noisy_inputs(
    s: TrainState, cfg: Config, X: np.ndarray, V: int, reset: np.ndarray
) -> np.ndarray:
    """The inputs X (T, B) of a step with noise in them (the targets stay): each id replaced,
    with probability input_noise, by one drawn uniformly from the V characters; and in each
    stream just reset to a zero state, its first n inputs, n uniform in 0..reset_noise (at most
    half the chunk), so that
    the model learns to fall back into text after an odd start, as after an unusual seed.
    Nothing is drawn when both are 0."""
    if cfg.input_noise == 0 and (cfg.reset_noise == 0 or not reset.any()):
        return X
    noisy = X.copy()
    if cfg.input_noise > 0:
        hit = s.rng.random(X.shape) < cfg.input_noise  # (T, B)
        noisy[hit] = s.rng.integers(0, V, int(hit.sum()))
    if cfg.reset_noise > 0 and reset.any():
        streams = np.flatnonzero(reset)  # (k,)
        most = min(cfg.reset_noise, len(X) // 2)  # a chunk keeps at least half its text
        lengths = s.rng.integers(0, most + 1, len(streams))  # (k,)
        hit = np.arange(len(X))[:, None] < lengths[None, :]  # (T, k): each one's first n
        part = noisy[:, streams]  # (T, k)
        part[hit] = s.rng.integers(0, V, int(hit.sum()))
        noisy[:, streams] = part
    return noisy


def _validate(params: dict, val: Corpus, world: distributed.World) -> float:
    """The validation loss: each rank scores its share of the streams, the shares are summed;
    a stream's state is zeroed where a validation document begins."""
    part, _ = chunked_loss(params, val.ids, part=(world.rank, world.size), corpus=val)
    return world.sum(part)


def _columns(keep: np.ndarray | None, streams: slice) -> np.ndarray | None:
    """The dropout masks (L, T, B, H) of some streams."""
    return None if keep is None else keep[:, :, streams]


def _preview(cfg: Config, s: TrainState, vocab: list[str]) -> str:
    # its own generator, so previews never change the training's random stream
    g = np.random.default_rng([cfg.rng_seed or 0, s.step])
    records = cfg.documents != "file"  # then a few records, each begun after an E
    prime = np.full(int(records), len(vocab), np.intp)
    M = 5 if records else 1
    steps = generate(s.params, prime, cfg.sample_length, g, temperature=0.8, num_samples=M)
    return "\n".join(x.text for x in finish_samples(steps, vocab, num_samples=M))


def _evaluate_and_save(
    s: TrainState,
    ckpts: _Checkpoints,
    metrics_out,
    record: dict,
    val_ids,
    *,
    counts: bool = True,
    last: bool = False,
    clock=None,
) -> float | None:
    """Evaluate, log, then checkpoint, for a step of the loop and for the end: validate when
    val_ids is given (`counts` toward early stopping), fill in the record's val_loss and
    val_bpc and write it to metrics.jsonl, then save best.npz when the validation improved and
    last.npz when `last` (with best.npz beside it when validation is off). In this order, after
    a kill metrics.jsonl has every step up to last.npz's (a resume drops the lines past it).
    `clock`, when given, stamps the record's elapsed seconds once the validation is done.
    Returns the validation loss, None when there was none."""
    val_loss, improved = None, False
    if val_ids is not None:
        val_loss = _validate(s.params, val_ids, ckpts.world)
        improved = s.record_validation(val_loss, counts)
    record.update(val_loss=val_loss, val_bpc=bpc(val_loss))
    if clock is not None:
        record["elapsed"] = clock()
    metrics_out.write(jsonout.dumps(record) + "\n")
    if improved:
        ckpts.save(s, ckpts.best)
    if last:
        ckpts.save(s, ckpts.last)
        if not ckpts.validates:
            ckpts.save(s, ckpts.best)
    return val_loss


def _step_record(s: TrainState, batches: Batches, loss, norm, lr, chars_per_sec) -> dict:
    """A step's line of metrics.jsonl, its validation and elapsed time still to be filled in."""
    return {
        "step": s.step,
        "epoch": round(s.step / batches.steps_per_epoch, 4),
        "train_loss": loss,
        "val_loss": None,  # filled in by the validation, if one is due
        "val_bpc": None,
        "grad_norm": norm,
        "lr": lr,
        "chars_per_sec": chars_per_sec,
        "elapsed": None,  # stamped once the validation is done
    }


def _finish(s: TrainState, ckpts: _Checkpoints, metrics_out, val_ids, val_loss):
    """A last validation (unless the last step had one; val_ids None: validation is off), which
    does not count toward early stopping (a longer run would not have made it, so a resume of
    last.npz goes on as that run would), then last.npz, and best.npz when validation never
    wrote one. Returns the final validation loss."""
    cfg, world = ckpts.cfg, ckpts.world
    if val_ids is not None and (val_loss is None or s.step % cfg.eval_every != 0) and s.step > 0:
        record = {"step": s.step}
        val_loss = _evaluate_and_save(s, ckpts, metrics_out, record, val_ids, counts=False)
    ckpts.save(s, ckpts.last)
    if val_ids is None or not world.bcast(ckpts.best.exists()):
        ckpts.save(s, ckpts.best)
    return val_loss


def _gradients(s: TrainState, cfg: Config, batches: Batches, loss_and_grads, mine, world):
    """(loss, gradient norm) of the step s.step, its clipped mean gradients over the whole
    batch left in loss_and_grads.grads and this rank's carried state updated. Resets and
    dropout masks are drawn for the whole batch; each rank takes its streams' columns (every
    column for one process)."""
    B, T = cfg.batch_size, cfg.seq_length
    X, Y = batches.get(s.step)  # (T, B) inputs and targets
    reset = _reset_streams(s, cfg, batches.starts_epoch(s.step))  # (B,)
    keep = _dropout_masks(s, cfg, T, B)  # (L, T, B, H) or None
    X = _noisy_inputs(s, cfg, X, s.params["by"].shape[0], reset)
    starts = batches.resets(s.step)  # (T, B): where a document begins, or None
    loss, _, s.state[mine] = loss_and_grads(
        s.params,
        X[:, mine],
        Y[:, mine],
        s.state[mine],
        _columns(keep, mine),
        None if starts is None else starts[:, mine],
    )
    loss = world.mean(loss)  # the gradients now hold the whole batch's mean
    return loss, optim.clip_gradients(loss_and_grads.grads, cfg.clip_mode, cfg.grad_clip)


@dataclass
class _Run:
    """What the loop works with, set up by `_open`: the state, the data, the run's files."""

    s: TrainState
    batches: Batches
    val_ids: Corpus | None  # the validation documents; None: validation is off
    limits: _Limits
    ckpts: _Checkpoints
    metrics_out: Any  # metrics.jsonl, line-buffered (rank 0; devnull on the others)
    elapsed0: float  # metrics' elapsed at the start: it runs on across resumes
    start_info: dict  # the reporter's start record


def _open(cfg, corpus, run_dir, state, notice, overwrite, world, val, corpus_record, init) -> _Run:
    """Split the corpus (unless `val` is the validation set), make or take the state, and
    (rank 0) write config.yaml and open metrics.jsonl; every rank alike, an error on any ends
    them all."""
    with world.together():  # an error on any rank ends every rank, and is reported once
        train, val = split_corpus(corpus, cfg.val_fraction) if val is None else (corpus, val)
        train_ids = train.ids
        batches = Batches(train_ids, cfg.batch_size, cfg.seq_length, train)
        val = replace(val, ids=val.ids[: cfg.val_max_chars + 1])  # the validation documents
        validate = cfg.eval_every > 0 and len(val.ids) >= 2
        resumed = state is not None
        s = state if resumed else TrainState.fresh(cfg, corpus.model_vocab_size, world.size)
        if init is not None:  # fine-tuning: the trained weights over the fresh ones
            finetune.start_from(s.params, init, corpus.vocab, corpus.end_id is not None)
        s.corpus = corpus_record
        limits = _Limits.of(cfg, batches.steps_per_epoch)
        on_disk = resumed and (run_dir / "last.npz").exists()
        ckpts = _Checkpoints(run_dir, cfg, corpus.vocab, s.step if on_disk else None, world)
        ckpts.validates = validate
        if world.root:  # rank 0 alone writes the run folder
            if overwrite:  # --overwrite: the old run goes once the new one has passed its checks
                remove_run(run_dir)
            _write_atomic(run_dir / "config.yaml", config_to_yaml(cfg))
            metrics_out, elapsed0 = _metrics_file(run_dir, s.step if resumed else None)
        else:
            metrics_out, elapsed0 = open(os.devnull, "w"), 0.0
    start_info = {
        "run_dir": str(run_dir),
        "start_step": s.step,
        "resumed": resumed,
        "reached": limits.reached(s.step, 0.0) if resumed else None,  # before any step
        **limits.described(cfg, batches.steps_per_epoch),
        "vocab_size": len(corpus.vocab),
        "train_chars": len(train_ids),
        "val_chars": len(val.ids),
        "start_elapsed": elapsed0,
        "notice": notice,
        "ranks": world.size,
    }
    return _Run(
        s, batches, val if validate else None, limits, ckpts, metrics_out, elapsed0, start_info
    )


def _stop(cfg, s: TrainState, limits: _Limits, world, signals, seconds: float):
    """(the signal received or None, why the run stops now or None), agreed by every rank. A run
    that stops at max_time has spent the budget a time-annealed rate runs over: its schedule is
    done (time_progress 1, not where the last step began), for a resume to see."""
    received, stopped_by = world.agree_stop(signals.received, limits.reached(s.step, seconds))
    stopped_by = "signal" if received is not None else stopped_by
    if stopped_by == "max_time" and cfg.lr_decay in optim.ANNEALED:
        s.time_progress = 1.0
    return received, stopped_by


def _learning_rate(cfg, s: TrainState, limits: _Limits, world, time0: float, seconds: float):
    """This update's learning rate. One annealed over max_time runs its course over this run's
    max_time by rank 0's clock (`seconds` into the run, as for the time limit), on from `time0`,
    where a resumed run left it; s.time_progress keeps how far it got, for the checkpoint."""
    if cfg.lr_decay in optim.ANNEALED and limits.max_time:
        spent = min(seconds / limits.max_time, 1.0)
        s.time_progress = world.bcast(time0 + (1.0 - time0) * spent)
    return optim.learning_rate(cfg, s.step, limits.progress(s.step, s.time_progress))


def _train(
    cfg: Config,
    corpus: Corpus,
    run_dir: Path,
    state: TrainState | None,
    reporter,
    notice: str | None,
    overwrite: bool,
    world: distributed.World,
    val: Corpus | None = None,
    corpus_record: dict | None = None,
    init: ckpt_io.Checkpoint | None = None,
) -> TrainResult:
    B, T = cfg.batch_size, cfg.seq_length
    mine = world.streams(B)  # this rank's streams of the batch: all B for one process
    run = _open(cfg, corpus, run_dir, state, notice, overwrite, world, val, corpus_record, init)
    s, batches, val_ids, limits, ckpts = run.s, run.batches, run.val_ids, run.limits, run.ckpts
    reporter.start(run.start_info)
    grads = world.gradients(s.params)  # views into the one buffer that the ranks sum
    b = B // world.size  # streams of this rank
    loss_and_grads = GradientWorkers(b, auto_workers(b, cfg.workers), grads)  # writes `grads`
    start = time.perf_counter()
    step_time = None  # smoothed seconds per step, for chars/s
    stopped_by, val_loss, received = None, None, None
    time0 = s.time_progress  # where a resumed run left a time-annealed learning rate

    def elapsed() -> float:
        return round(run.elapsed0 + time.perf_counter() - start, 3)  # across resumes

    try:
        with _Signals() as signals, warnings.catch_warnings():
            # overflow is caught by the finiteness checks below; numpy's warnings about it (from
            # the worker threads too, which np.errstate does not reach) would bury the message
            warnings.filterwarnings("ignore", "overflow|invalid value", RuntimeWarning)
            while True:
                # --- stop? (every rank alike: a signal to any of them, rank 0's clock) -------
                received, stopped_by = _stop(
                    cfg, s, limits, world, signals, time.perf_counter() - start
                )
                if stopped_by:
                    break

                # --- forward, backward, update ---------------------------------------------
                t0 = time.perf_counter()
                lr = _learning_rate(cfg, s, limits, world, time0, t0 - start)
                loss, norm = _gradients(s, cfg, batches, loss_and_grads, mine, world)
                for what, value in (("loss", loss), ("gradient norm", norm)):
                    if not math.isfinite(value):  # the same on every rank
                        raise world.everywhere(ckpts.diverged(f"{what} became {value}", s.step + 1))
                optim.update(cfg, s.params, loss_and_grads.grads, s.opt_state, s.step, lr)
                s.step += 1
                s.chars_seen += B * T
                dt = time.perf_counter() - t0
                step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt

                # --- evaluate, log, then checkpoint ----------------------------------------
                record = _step_record(s, batches, loss, norm, lr, B * T / step_time)
                due = val_ids is not None and s.step % cfg.eval_every == 0  # a validation
                last = s.step % cfg.checkpoint_every == 0
                val_loss = _evaluate_and_save(
                    s,
                    ckpts,
                    run.metrics_out,
                    record,
                    val_ids if due else None,
                    last=last,
                    clock=elapsed,
                )
                reporter.step(record)
                if world.root and cfg.sample_every and s.step % cfg.sample_every == 0:
                    reporter.sample(s.step, _preview(cfg, s, corpus.vocab))

                # --- early stopping --------------------------------------------------------
                if cfg.patience and s.bad_evals >= cfg.patience:
                    stopped_by = "patience"
                    break

            # --- the end: a last validation and checkpoint -------------------------------------
            val_loss = _finish(s, ckpts, run.metrics_out, val_ids, val_loss)
    finally:
        loss_and_grads.close()
        run.metrics_out.close()
        reporter.end()

    return TrainResult(
        run_dir=run_dir,
        steps=s.step,
        chars_seen=s.chars_seen,
        seconds=time.perf_counter() - start,
        stopped_by=stopped_by,
        final_val_loss=val_loss if val_ids is not None else None,
        best_val_loss=_finite_or_none(s.best_val),
        last_checkpoint=ckpts.last,
        best_checkpoint=ckpts.best,
        signal=received,
        primary=world.root,
        documents=corpus.documents,
        corpus_chars=len(corpus.ids),
    )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
