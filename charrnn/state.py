"""The state of a training run: everything that changes from one step to the next, in one object.

A `TrainState` is made fresh from a config (after `check_memory` says the machine can hold it),
or from a checkpoint, and turned back into one. Every check that a checkpoint's arrays and
counters can be resumed with a config lives in `TrainState.from_checkpoint` (the settings are
config.settle's), so the training loop only reads and updates the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn import optim
from charrnn.config import Config
from charrnn.errors import CheckpointError, ConfigError
from charrnn.memory import memory_limit, show_bytes
from charrnn.model import Arch, architecture, init_params, param_shapes, zero_state
from charrnn.parallel import auto_workers


@dataclass
class TrainState:
    params: dict[str, np.ndarray]  # the model's weights
    opt_state: dict[str, np.ndarray]  # the optimizer's slots, keyed "slot.param"
    state: np.ndarray  # (B, W): the carried state, into the next chunk (model.zero_state)
    rng: np.random.Generator  # every random draw of training comes from here
    step: int = 0  # updates done
    chars_seen: int = 0  # training characters read
    best_val: float = math.inf  # best validation loss so far
    bad_evals: int = 0  # validations since the last improvement
    corpus: dict | None = None  # what it trains on: {"chars", "documents", "crc32"} of the ids
    # the fraction of max_time spent (0 to 1), which a resumed run's time-annealed learning
    # rate continues from (optim.learning_rate)
    time_progress: float = 0.0

    @classmethod
    def fresh(cls, cfg: Config, vocab_size: int, ranks: int = 1) -> TrainState:
        check_memory(cfg, vocab_size, ranks)
        rng = np.random.default_rng(cfg.rng_seed)
        dtype = np.dtype(cfg.dtype)
        params = init_params(
            vocab_size,
            cfg.hidden_size,
            rng,
            dtype,
            cfg.init_scale,
            cell=cfg.cell,
            num_layers=cfg.num_layers,
        )
        state = zero_state(params, cfg.batch_size, dtype)
        return cls(params, optim.init_state(cfg.optimizer, params), state, rng)

    @classmethod
    def from_checkpoint(
        cls, ckpt: ckpt_io.Checkpoint, cfg: Config, vocab: list[str], corpus: dict | None = None
    ) -> TrainState:
        """The state saved in ckpt, checked against the config and the corpus's vocabulary it
        is resumed with (CheckpointError or ConfigError saying what does not fit); `corpus`:
        the corpus's record (chars, documents, crc32 of its ids), compared with the one the
        checkpoint holds (a checkpoint older than the record is not compared)."""
        if vocab != ckpt.vocab:
            raise ConfigError(
                "the corpus's characters differ from the checkpoint's vocabulary; "
                "resume with the corpus the run was trained on"
            )
        saved = ckpt.train_state.get("corpus")
        if corpus is not None and isinstance(saved, dict) and saved != corpus:
            then = f"{saved.get('documents')} documents of {saved.get('chars')} characters"
            now = f"{corpus['documents']} of {corpus['chars']}"
            raise ConfigError(
                f"the corpus changed since the run was trained on it (then {then}, now {now}, "
                "or the same sizes with other text); resume with the same texts, or start a "
                "new run (--init-from continues from its weights)"
            )
        arch = architecture(ckpt.params)
        ts = ckpt.train_state
        B, dtype = cfg.batch_size, np.dtype(cfg.dtype)
        problem = None
        if (arch.cell, arch.num_layers, arch.hidden_size) != (
            cfg.cell,
            cfg.num_layers,
            cfg.hidden_size,
        ) or ckpt.params["Whh"].dtype != dtype:
            problem = (
                f"its weights are not a {cfg.num_layers}-layer {cfg.cell} of hidden_size "
                f"{cfg.hidden_size} in {dtype}"
            )
        elif ckpt.h_carry is None or ckpt.h_carry.shape != (B, arch.state_width):
            problem = f"'h_carry' is missing or not ({B}, {arch.state_width}) for batch_size {B}"
        elif set(ckpt.opt_state) != set(optim.init_state(cfg.optimizer, ckpt.params)):
            problem = f"its optimizer state is not {cfg.optimizer}'s"
        elif (key := ckpt_io.train_state_problem(ts)) is not None:
            what = "random-generator state" if key == "rng_state" else f"'{key}'"
            problem = f"its train_state's {what} has the wrong type or an impossible value"
        rng = np.random.default_rng()
        if problem is None:
            try:
                rng.bit_generator.state = ts["rng_state"]
            except (KeyError, TypeError, ValueError, OverflowError):
                problem = "its saved random-generator state is invalid"
        if problem is not None:
            raise CheckpointError(f"cannot resume from the checkpoint: {problem}; start a new run")
        best_val = ts.get("best_val_loss")
        return cls(
            params={k: np.ascontiguousarray(v) for k, v in ckpt.params.items()},
            opt_state={k: np.array(v) for k, v in ckpt.opt_state.items()},
            state=np.array(ckpt.h_carry),
            rng=rng,
            step=ckpt.step,
            chars_seen=ts.get("chars_seen", ckpt.step * B * cfg.seq_length),
            best_val=math.inf if best_val is None else float(best_val),
            bad_evals=ts.get("bad_evals", 0),
            corpus=corpus,
            time_progress=float(ts.get("time_progress", 0.0)),
        )

    def to_checkpoint(self, cfg: Config, vocab: list[str]) -> ckpt_io.Checkpoint:
        corpus = {} if self.corpus is None else {"corpus": self.corpus}
        return ckpt_io.Checkpoint(
            params=self.params,
            vocab=vocab,
            config=cfg.to_dict(),
            step=self.step,
            h_carry=self.state,
            opt_state=self.opt_state,
            train_state={
                "rng_state": self.rng.bit_generator.state,
                "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
                "bad_evals": self.bad_evals,
                "chars_seen": self.chars_seen,
                "time_progress": self.time_progress,
                **corpus,
            },
            documents=cfg.documents,
        )

    def is_finite(self) -> bool:
        """False once an update has overflowed the weights, the optimizer state or the carried
        state."""
        arrays = (*self.params.values(), *self.opt_state.values(), self.state)
        return all(np.isfinite(a).all() for a in arrays)

    def record_validation(self, loss: float, counts: bool = True) -> bool:
        """Note a validation loss; True when it is the best so far. `counts`: toward early
        stopping (the patience count starts again at an improvement, grows otherwise)."""
        improved = loss < self.best_val
        if improved:
            self.best_val = loss
        if counts:
            self.bad_evals = 0 if improved else self.bad_evals + 1
        return improved


def estimate_bytes(cfg: Config, vocab_size: int, ranks: int = 1) -> tuple[int, int]:
    """(model bytes, step bytes): about what training a new model of cfg over vocab_size
    characters holds in one of `ranks` MPI processes (each computes B / ranks streams, and
    keeps the whole carried state), a little more rather than less. The model: weights,
    optimizer slots, each worker's gradients, the update's temporaries (two copies) and drawing
    the weights. A step: every layer's activations and their gradients for the T x B / ranks
    positions (about 3 G + 8 arrays of (T, B, H) with G gate blocks, the dropout masks among
    them), the output layer's probabilities and one-hot inputs (2 of (T, B, V)) and the carried
    state."""
    arch = Arch(cfg.cell, cfg.num_layers, cfg.hidden_size, vocab_size)
    L, H, V, G = arch.num_layers, arch.hidden_size, vocab_size, arch.gates
    P = sum(math.prod(shape) for shape in param_shapes(arch).values())
    slots = len(optim.init_state(cfg.optimizer, {"p": np.zeros(0)}))  # per parameter
    b = cfg.batch_size // ranks  # streams of this process
    n = auto_workers(b, cfg.workers)
    N = cfg.seq_length * b  # positions of a step
    size = np.dtype(cfg.dtype).itemsize
    model = size * (P * (3 + slots + n) + n * V * G * H)  # n V G H: each worker's input table
    # drawing a layer (cells/weights.py) holds float64 copies: its G orthogonal blocks twice,
    # numpy's QR of one (3 H^2) and Wxh
    model += 8 * (2 * G * H * H + 3 * H * H + G * H * max(V, H))
    step = size * (N * L * H * (3 * G + 8) + 2 * N * V + 2 * cfg.batch_size * arch.state_width)
    return model, step + 16 * N  # 16 N: the (T, B) ids of inputs and targets


def check_memory(cfg: Config, vocab_size: int, ranks: int = 1) -> None:
    """ConfigError saying what training needs and what to lower, when that is more memory than
    this process can have: before anything is allocated, not a MemoryError minutes in."""
    model, step = estimate_bytes(cfg, vocab_size, ranks)
    limit = memory_limit()
    if model + step <= limit:
        return
    lower = "hidden_size or num_layers" if model >= step else "batch_size or seq_length"
    if cfg.dtype == "float64":
        lower += ", or dtype float32"
    raise ConfigError(
        f"training a {cfg.num_layers}-layer {cfg.cell} of hidden_size {cfg.hidden_size} with "
        f"batch_size {cfg.batch_size} and seq_length {cfg.seq_length} over {vocab_size} "
        f"characters needs about {show_bytes(model + step)} of memory, more than the "
        f"{show_bytes(limit)} this process can use; lower {lower}"
    )
