"""Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"):
score a text while the weights adapt to it, so the model picks up a document's names, spelling
and layout as it reads. This module is the algorithm; scoring one segment is the model's
forward, the step on it the model's backward (charrnn/model.py over charrnn/cells/).

The text x_1..x_N is read left to right from a zero state. x_1 is scored by the trained
weights theta_0 from the zero state (softmax(by)), as `evaluate.total_loss` scores it. The
rest is cut into segments s_1, s_2, ... of `segment` characters. Segment i is scored by the
weights theta_{i-1}, from the state the text before it left (computed as it was read, by the
weights of that moment); then the weights take one step on the segment's mean loss L_i:

    rms (default)  theta_i = theta_{i-1} - lr grad L_i / (R + eps mean(R))
                                         + min(decay R / mean(R), 1) * (theta_0 - theta_{i-1})
    sgd            theta_i = theta_{i-1} - lr grad L_i + decay (theta_0 - theta_{i-1})

elementwise, `mean` over every weight of the model. R is the root mean square of the
gradients of the training loss, weight by weight (`gradient_rms`): Krause et al.'s RMS
normalisation, which gives weights whose training gradients are small (rare characters' inputs,
for instance) larger steps and a weaker pull back, and the weights that training moved most a
stronger one. The decay toward theta_0 keeps the model from drifting away from what it learnt.

No peek: the characters of segment i are scored before the step on L_i, by weights that have
taken steps only on segments 1..i-1, all of which lie before them in the text. So the score of
every character depends on the characters before it alone (tests/test_dynamic.py checks it on
a text whose second half repeats a segment of its first).

Where R comes from: the optimiser's second moment in the checkpoint (adam's v, bias-corrected;
rmsprop's v; adagrad's sum over its steps). It is an average of squared training gradients
over the last thousand or so updates, the statistic of Krause et al.'s `gradstat` pass over the
training text, already stored in every checkpoint that adam (the default), rmsprop or adagrad
wrote, so no new checkpoint key, no training text at evaluation and no extra pass is needed,
and checkpoints of earlier versions adapt too. A model trained with sgd keeps no such moment:
its checkpoints can use method "sgd" only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from charrnn.distributed import flat_gradients
from charrnn.errors import CheckpointError, ConfigError, DataError
from charrnn.evaluate import Block
from charrnn.model import Workspace, backward, forward, log_softmax_loss, zero_state
from charrnn.parallel import blas_threads

METHODS = ("rms", "sgd")
# a segment's forward keeps its states, gates and distributions for the step: about 8 kB a
# character for 2 layers of 192 GRU units, so 10,000 characters hold 80 MB
MAX_SEGMENT = 10_000
EPS = 0.1  # R's floor, as a fraction of its mean: a weight training never moved gets steps lr / 0.1


@dataclass(frozen=True)
class Settings:
    """How the weights adapt: the method, the step size lr, the decay toward the trained
    weights and the characters scored between two steps. The defaults were chosen on the
    bundled corpus's validation text (docs/dynamic.md)."""

    method: str = "rms"
    lr: float = 1e-4
    decay: float = 0.001
    segment: int = 100

    def __post_init__(self) -> None:
        problem = None
        if self.method not in METHODS:
            problem = f"method must be one of {', '.join(METHODS)}, got {self.method!r}"
        elif not (self.lr >= 0 and math.isfinite(self.lr)):
            problem = f"lr must be a number >= 0, got {self.lr}"
        elif not 0 <= self.decay <= 1:
            problem = f"decay must be between 0 and 1, got {self.decay}"
        elif not 1 <= self.segment <= MAX_SEGMENT:
            problem = f"segment must be between 1 and {MAX_SEGMENT:,}, got {self.segment}"
        if problem is not None:
            raise ConfigError(f"dynamic evaluation's {problem}")

    def to_dict(self) -> dict:
        return asdict(self)


# each method's settings, chosen on the validation text (docs/dynamic.md)
DEFAULTS = {"rms": Settings(), "sgd": Settings(method="sgd", lr=0.01)}


def gradient_rms(opt_state: dict, config: dict, step: int) -> dict[str, np.ndarray] | None:
    """R: the root mean square of the training gradients of each weight, from the optimiser's
    second moment in a checkpoint (module docstring); None when it kept none (sgd)."""
    optimizer = config.get("optimizer", "adam")
    v = {k[2:]: a for k, a in opt_state.items() if k.startswith("v.")}
    if not v or step < 1 or optimizer not in ("adam", "rmsprop", "adagrad"):
        return None
    if optimizer == "adagrad":  # v is the sum of g^2 over the steps
        scale = 1.0 / step
    else:  # an average with weight decay^age, which sums to 1 - decay^step: undo the bias
        decay = config.get("beta2" if optimizer == "adam" else "rmsprop_decay", 0.999)
        scale = 1.0 / max(1.0 - decay**step, 1e-12)
    return {k: np.sqrt(a * scale) for k, a in v.items()}


class Adapter:
    """Weights that adapt as they score (module docstring). `read(ids)` yields each segment
    as it is scored; `params` are the weights of the moment (after the last step). A segment is
    scored by the model's forward (the output layer and loss of evaluate.score_block), because
    the step needs forward's cache; a model whose outputs overflow scores nan or inf here, with
    no float64 retry (`adapted` then refuses the weights)."""

    def __init__(self, params: dict, settings: Settings, rms: dict | None = None):
        if settings.method == "rms" and rms is None:
            raise CheckpointError(
                "the checkpoint keeps no gradient statistics for the rms method (its model was "
                "trained with sgd); use the sgd method (--dynamic-method sgd)"
            )
        self.settings = settings
        self._flat, self.params = flat_gradients(params, extra=0)  # theta: views into one array
        for k, p in params.items():
            self.params[k][...] = p
        self._theta0 = self._flat.copy()  # (P,) the trained weights
        self._gflat, self._grads = flat_gradients(params, extra=0)  # backward writes here
        self._tmp = np.empty_like(self._flat)
        dtype = self._flat.dtype
        if settings.method == "sgd":
            self._step, self._pull = np.asarray(settings.lr, dtype), np.asarray(settings.decay)
        else:
            R = np.concatenate([np.asarray(rms[k], np.float64).ravel() for k in params])  # (P,)
            mean = float(R.mean()) or 1.0
            self._step = (settings.lr / (R + EPS * mean)).astype(dtype)  # (P,)
            self._pull = np.minimum(settings.decay * R / mean, 1.0).astype(dtype)  # (P,)
        self._ws = Workspace()

    def read(self, ids: np.ndarray) -> Iterator[Block]:
        """Score ids (N,) from a zero state, stepping after each segment; yields the segments
        in order as blocks of the scoring pass (evaluate.Block: ids, losses, probs), the first
        x_1 alone, scored by the trained weights. A block's probs are valid until the loop asks
        for the next one (the step reuses the buffer)."""
        ids = np.asarray(ids, dtype=np.intp)
        if len(ids) == 0:
            return
        params, seg = self.params, self.settings.segment
        state = zero_state(params, 1)  # (1, W): after the characters read so far
        with blas_threads(1), np.errstate(over="ignore", invalid="ignore"):
            top0 = np.zeros((1, params["Why"].shape[1]), self._flat.dtype)  # (1, H): h_0 = 0
            _, probs, losses = log_softmax_loss(params, top0, ids[:1], self._ws)
            yield Block(0, ids[:1], losses, probs)
            for start in range(1, len(ids), seg):
                end = min(start + seg, len(ids))
                X = ids[start - 1 : end - 1, None]  # (T, 1): read, to predict
                Y = ids[start:end, None]  # (T, 1): scored
                _, cache, state = forward(params, X, Y, state, self._ws)
                yield Block(start, Y[:, 0], cache["losses"], cache["probs"])
                backward(params, cache, out=self._grads)
                self._update()

    def _update(self) -> None:
        """theta += pull (theta_0 - theta) - step grad, over the one flat array."""
        theta, tmp = self._flat, self._tmp
        np.subtract(self._theta0, theta, out=tmp)
        tmp *= self._pull
        theta += tmp
        np.multiply(self._gflat, self._step, out=tmp)
        theta -= tmp

    def adapted(self) -> dict[str, np.ndarray]:
        """A copy of the weights of the moment; DataError if they overflowed."""
        if not np.isfinite(self._flat).all():
            raise DataError(
                "the adapted weights became NaN or infinite; lower the step size (--dynamic-lr)"
            )
        return {k: v.copy() for k, v in self.params.items()}


def total_loss(params: dict, ids: np.ndarray, settings: Settings, rms: dict | None) -> float:
    """Sum over t of -ln p(x_t | x_1..x_{t-1}) in nats, each character scored by the weights
    adapted to the ones before it."""
    adapter = Adapter(params, settings, rms)
    return sum(block.total for block in adapter.read(ids))
