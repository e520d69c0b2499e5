"""The network: stacked recurrent layers, dropout between them, the output layer and the loss;
its forward pass, backward pass (BPTT), one-step inference and a trace of every state.

Everything here is plain functions over a dict of named arrays, in the column-vector convention
of the equations in the README. For the one-layer vanilla RNN, the default:

    a_t = Wxh x_t + Whh h_{t-1} + bh              Wxh (H, V), Whh (H, H), bh (H,)
    h_t = tanh(a_t)
    y_t = Why h_t + by                            Why (V, H), by (V,)
    p_t = softmax(y_t)
    loss = -(1/N) sum_t log p_t[target_t]         mean over all N = T * B characters

Each layer's recurrence is a cell (charrnn/cells: rnn, lstm, gru) with G gate blocks stacked in
the rows of its weights. Layer 0 reads the characters and is named `Wxh` (G H, V), `Whh`
(G H, H), `bh` (G H,); layer l >= 1 reads layer l - 1's outputs and is named `Wxh_l` (G H, H),
`Whh_l`, `bh_l`; the output layer reads the top layer's. With dropout, each layer's output h_t
is multiplied by a keep mask (0 or 1 / (1 - p), drawn by the caller) before the layer above and
the output layer read it.

A batch holds B streams side by side, so hidden states are rows: `h` has shape (B, H) and the
products above are computed as `h @ Whh.T`. Inputs are character ids, never one-hot matrices:
`Wxh x_t` for a one-hot `x_t` is column `x_t` of `Wxh`, a lookup. The state the network
carries from one chunk to the next is one array (B, W), W = L S H: the S states (h, and c for
the LSTM) of each of the L layers side by side, so splitting, resetting and saving it are
operations on rows.

Optimisers, clipping, data, checkpoints and scoring texts (evaluate.py) live in other modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charrnn.cells import CELLS

LN2 = math.log(2.0)  # nats in a bit


def bpc(loss):
    """Bits per character of a loss in nats per character (a float or an array): loss / ln 2.
    None (no loss) stays None."""
    return None if loss is None else loss / LN2


# the std of the initial Wxh and Why when the config leaves init_scale null. The vanilla cell
# starts with small inputs (its tanh units in their linear range); the gates of LSTM and GRU need
# inputs large enough to move them, or the first hundreds of steps learn almost nothing
# (measured: an LSTM of 128 units at 400 steps, 2.48 nats/char with 0.01, 2.29 with 0.08, where
# PyTorch's nn.LSTM with its uniform(+-1/sqrt(H)) init reaches 2.27)
INIT_SCALE = {"rnn": 0.01, "lstm": 0.08, "gru": 0.08}


# ---- architecture: what the arrays of a model are called and how big they are ----


@dataclass(frozen=True)
class Arch:
    cell: str  # one of CELLS
    num_layers: int
    hidden_size: int
    vocab_size: int

    @property
    def gates(self) -> int:
        return CELLS[self.cell].GATES

    @property
    def states(self) -> int:
        return CELLS[self.cell].STATES

    @property
    def state_width(self) -> int:
        """Columns W of the carried state (B, W): L layers of S states of H units."""
        return self.num_layers * self.states * self.hidden_size


def layer_names(layer: int) -> tuple[str, str, str]:
    """Names of layer l's (Wxh, Whh, bh): bare for layer 0, suffixed `_l` above it."""
    suffix = f"_{layer}" if layer else ""
    return f"Wxh{suffix}", f"Whh{suffix}", f"bh{suffix}"


def param_names(arch: Arch) -> tuple[str, ...]:
    """Every array of the model, layer by layer from the bottom, then Why, by."""
    layers = (name for layer in range(arch.num_layers) for name in layer_names(layer))
    return (*layers, "Why", "by")


def param_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every array of a model of this architecture."""
    GH, H, V = arch.gates * arch.hidden_size, arch.hidden_size, arch.vocab_size
    shapes = {}
    for layer in range(arch.num_layers):
        Wxh, Whh, bh = layer_names(layer)
        shapes[Wxh] = (GH, V if layer == 0 else H)
        shapes[Whh] = (GH, H)
        shapes[bh] = (GH,)
    shapes["Why"], shapes["by"] = (V, H), (V,)
    return shapes


_CELL_OF_GATES = {module.GATES: c for c, module in CELLS.items()}  # 1: rnn, 3: gru, 4: lstm


def _read_arch(params: dict) -> Arch:
    """The architecture that Whh's gate blocks, Why and the names say, unchecked: for the hot
    paths, given params that `architecture` (or init_params) has vouched for."""
    GH, H = params["Whh"].shape
    num_layers = 1
    while f"Whh_{num_layers}" in params:
        num_layers += 1
    return Arch(_CELL_OF_GATES[GH // H], num_layers, H, params["Why"].shape[0])


def architecture(params: dict) -> Arch:
    """The architecture the arrays describe; ValueError saying what is wrong if they do not
    describe one: the cell from the gate blocks of Whh (G H, H), the layers from the names."""
    for name in ("Whh", "Why"):
        if name not in params:
            raise ValueError(f"the model has no '{name}' array")
    Whh, Why = np.shape(params["Whh"]), np.shape(params["Why"])
    if len(Whh) != 2 or Whh[1] < 1 or Whh[0] % Whh[1] or Whh[0] // Whh[1] not in _CELL_OF_GATES:
        raise ValueError(
            f"'Whh' has shape {Whh}, expected (G H, H) with G gate blocks: "
            + ", ".join(f"{g} for {c}" for g, c in sorted(_CELL_OF_GATES.items()))
        )
    if len(Why) != 2:
        raise ValueError(f"'Why' has shape {Why}, expected (V, H)")
    arch = _read_arch(params)
    expected = param_shapes(arch)
    if len(params) != len(expected) or any(
        np.shape(params.get(k)) != shape for k, shape in expected.items()
    ):
        described = f"a {arch.num_layers}-layer {arch.cell} of hidden size {arch.hidden_size}"
        missing = [k for k in expected if k not in params]
        extra = sorted(k for k in params if k not in expected)
        problems = [
            f"{what} {', '.join(names)}"
            for what, names in (("missing", missing), ("unexpected", extra))
            if names
        ]
        if problems:
            raise ValueError(f"the arrays do not form {described}: {'; '.join(problems)}")
        for name, shape in expected.items():
            if np.shape(params[name]) != shape:
                raise ValueError(
                    f"'{name}' has shape {np.shape(params[name])}, expected {shape} for "
                    f"{described} over {arch.vocab_size} characters"
                )
    return arch


def init_params(
    vocab_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    dtype=np.float32,
    init_scale: float | None = None,
    cell: str = "rnn",
    num_layers: int = 1,
) -> dict[str, np.ndarray]:
    """Each layer as its cell initialises it (orthogonal Whh blocks, small Wxh, zero biases but
    the LSTM's forget gate), then small Why, zero by; drawn from rng in that order. For the
    one-layer rnn the draws are the same as they always were: Whh, Wxh, Why."""
    if cell not in CELLS or num_layers < 1:
        raise ValueError(f"need a cell in {tuple(CELLS)} and num_layers >= 1")
    V, H = vocab_size, hidden_size
    init_scale = INIT_SCALE[cell] if init_scale is None else init_scale
    params = {}
    for layer in range(num_layers):
        w = CELLS[cell].init_layer(V if layer == 0 else H, H, rng, dtype, init_scale)
        Wxh, Whh, bh = layer_names(layer)
        params[Wxh], params[Whh], params[bh] = w["Wxh"], w["Whh"], w["bh"]
    params["Why"] = np.ascontiguousarray(rng.standard_normal((V, H)) * init_scale, dtype=dtype)
    params["by"] = np.zeros(V, dtype=dtype)  # (V,)
    return params


def zero_state(params_or_arch, batch: int, dtype=None) -> np.ndarray:
    """The carried state (batch, W) of zeros, in dtype or the params' (float32 for an Arch)."""
    if isinstance(params_or_arch, Arch):
        arch, default = params_or_arch, np.float32
    else:
        arch, default = architecture(params_or_arch), params_or_arch["Whh"].dtype
    return np.zeros((batch, arch.state_width), dtype=default if dtype is None else dtype)


def _state_columns(arch: Arch, layer: int, k: int) -> slice:
    """Columns of layer l's k-th state (0 h, 1 c) in the carried state (B, W)."""
    start = (layer * arch.states + k) * arch.hidden_size
    return slice(start, start + arch.hidden_size)


def state_blocks(arch: Arch) -> list[tuple[int, str, slice]]:
    """(layer, "h" or "c", columns) of each block of H units in the carried state (B, W), in
    column order: layer 0's h (and c for the LSTM), then layer 1's, ..."""
    return [
        (layer, "hc"[k], _state_columns(arch, layer, k))
        for layer in range(arch.num_layers)
        for k in range(arch.states)
    ]


def top_output(params: dict, state: np.ndarray) -> np.ndarray:
    """The top layer's h (B, H) in a carried state (B, W): what the output layer reads next."""
    arch = _read_arch(params)
    return state[:, _state_columns(arch, arch.num_layers - 1, 0)]


# ---- buffers ----


class Workspace:
    """Buffers reused from one training step to the next, so the hot path allocates nothing.

    Pass the same Workspace to `forward` and `backward` of one step; the next step's `forward`
    overwrites the buffers, so a cache is valid only until then.
    """

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._bufs[name] = np.empty(shape, dtype)
        return buf


class _Fresh:
    """A workspace that hands out new arrays: the default, safe for any caller."""

    @staticmethod
    def get(name: str, shape: tuple, dtype) -> np.ndarray:
        return np.empty(shape, dtype)


class _Scoped:
    """One layer's view of a workspace: its buffer `hs` is the workspace's `2.hs`."""

    def __init__(self, ws, layer: int):
        self.ws, self.prefix = ws, f"{layer}."

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        return self.ws.get(self.prefix + name, shape, dtype)


# ---- forward ----


@dataclass
class _Layer:
    """What one layer's forward leaves for its backward."""

    ws: _Scoped
    x_in: np.ndarray | None  # (T, B, H) the layer's input for l >= 1 (layer 0 reads X)
    hs: np.ndarray  # (T + 1, B, H) its hidden states, hs[0] = h_0
    out: np.ndarray  # (T, B, H) what the layer above reads: hs[1:], after dropout
    cell_cache: object
    m: np.ndarray | None = None  # (T, B, 1) the state's keep mask: 0 where it is reset


def keep_mask(resets: np.ndarray | None, dtype) -> np.ndarray | None:
    """(T, B, 1): 0 where a stream's state is reset before step t, 1 elsewhere; None when no
    state is reset in the chunk (then every cell runs exactly as without resets)."""
    if resets is None or not resets.any():
        return None
    return (~resets)[:, :, None].astype(dtype)


def _layers(params: dict, arch: Arch, X: np.ndarray, state0: np.ndarray, ws, keep, resets=None):
    """Every layer's forward over ids X (T, B): ([_Layer] bottom to top, state_last (B, W)).
    resets (T, B) bool or None: where each layer's carried state is zeroed before step t."""
    T, B = X.shape
    cell = CELLS[arch.cell]
    GH, dtype = arch.gates * arch.hidden_size, params["Whh"].dtype
    state_last = np.empty((B, arch.state_width), dtype)  # (B, W)
    m = keep_mask(resets, dtype)  # (T, B, 1) or None
    layers: list[_Layer] = []
    x_in = None
    for layer in range(arch.num_layers):
        Wxh, Whh, bh = (params[k] for k in layer_names(layer))
        lws = _Scoped(ws, layer)
        ax = lws.get("ax", (T, B, GH), dtype)  # (T, B, G H): Wxh x_t + bh for every position
        if layer == 0:
            # row c of the table is Wxh x + bh for character c: the input term is a lookup
            table = Wxh.T + bh  # (V, G H)
            np.take(table, X, axis=0, out=ax, mode="clip")
        else:
            np.matmul(x_in.reshape(T * B, arch.hidden_size), Wxh.T, out=ax.reshape(T * B, GH))
            ax += bh
        s0 = tuple(state0[:, _state_columns(arch, layer, k)] for k in range(cell.STATES))
        hs, s_last, cell_cache = cell.forward(Whh, ax, s0, lws, m)
        for k, s in enumerate(s_last):
            state_last[:, _state_columns(arch, layer, k)] = s
        out = hs[1:]  # (T, B, H)
        if keep is not None:  # inverted dropout on what the layer above reads
            out = np.multiply(out, keep[layer], out=lws.get("out", (T, B, arch.hidden_size), dtype))
        layers.append(_Layer(lws, x_in, hs, out, cell_cache, m))
        x_in = out
    return layers, state_last


def run(params: dict, X: np.ndarray, state0: np.ndarray, ws=_Fresh, resets=None):
    """Inference over ids X (T, B) from state0 (B, W), no dropout: (hs, state_last), hs
    (T + 1, B, H) the top layer's outputs with hs[0] its h_0, state_last a new (B, W) array.
    resets (T, B) bool: zero a stream's state before step t (a document starts there)."""
    layers, state_last = _layers(params, architecture(params), X, state0, ws, None, resets)
    return layers[-1].hs, state_last


def run_recurrence(params: dict, X: np.ndarray, h0: np.ndarray, ws=_Fresh) -> np.ndarray:
    """`run`'s hs alone; for a one-layer rnn, hs[T] is also the state to carry on with."""
    return run(params, X, h0, ws)[0]


def log_softmax_loss(params: dict, H_flat: np.ndarray, y: np.ndarray, ws=_Fresh):
    """Output layer over N positions at once: returns (mean loss, probs (N, V), per-char losses).

    H_flat (N, H) are hidden states, y (N,) target ids. Uses log-sum-exp, so a confident wrong
    guess gives a large finite loss rather than log(0).
    """
    N, V = len(y), params["by"].shape[0]
    logits = ws.get("logits", (N, V), H_flat.dtype)  # (N, V)
    np.matmul(H_flat, params["Why"].T, out=logits)  # y_t = Why h_t + by
    logits += params["by"]
    logits -= logits.max(axis=1, keepdims=True)
    target = logits[np.arange(N), y]  # (N,) shifted logit of each target
    probs = np.exp(logits, out=logits)  # (N, V), unnormalised
    sums = probs.sum(axis=1)  # (N,)
    losses = np.log(sums) - target  # (N,): -log p_t[target]
    probs /= sums[:, None]  # p_t = softmax(y_t)
    return float(losses.mean(dtype=np.float64)), probs, losses


def forward(
    params: dict,
    X: np.ndarray,
    Y: np.ndarray,
    state0: np.ndarray,
    ws=_Fresh,
    keep=None,
    resets=None,
):
    """Loss of one chunk: X, Y (T, B) input and target ids, state0 (B, W) the carried state,
    keep None or the dropout masks (L, T, B, H) for each layer's output, resets None or (T, B)
    bool: where a stream's state is zeroed before step t (a document's start; m_t in the cells).

    Returns (loss, cache, state_last); `cache` holds what `backward` needs.
    """
    arch = architecture(params)
    T, B = X.shape
    layers, state_last = _layers(params, arch, X, state0, ws, keep, resets)
    top = layers[-1].out.reshape(T * B, arch.hidden_size)  # (N, H)
    loss, probs, losses = log_softmax_loss(params, top, Y.reshape(-1), ws)
    cache = {"arch": arch, "X": X, "Y": Y, "keep": keep, "layers": layers, "probs": probs}
    cache["losses"] = losses  # (N,) each character's -ln p, for dynamic evaluation
    return loss, cache, state_last


# ---- backward ----


def backward(params: dict, cache: dict, out: dict | None = None) -> dict[str, np.ndarray]:
    """Backpropagation through time over the chunk; returns grads with the keys of params.

    Consumes the cache (its `probs` buffer is reused for dlogits). The output layer's gradients
    and each layer's dWhh, dbh, dWxh and gradient to the layer below are computed over all
    T * B positions at once; only the recurrence's own backward (the cell's) loops over time.
    `out`: arrays shaped like params to write the gradients into (views into the flat buffer
    that distributed.py sums across processes); None makes new ones.
    """
    arch, X, Y, keep, layers = (cache[k] for k in ("arch", "X", "Y", "keep", "layers"))
    dlogits = cache["probs"]  # (N, V)
    T, B = X.shape
    N, H, GH = T * B, arch.hidden_size, arch.gates * arch.hidden_size
    cell = CELLS[arch.cell]
    grads = {} if out is None else out

    # loss = -(1/N) sum log p[target]  =>  dloss/dy_t = (p_t - onehot(target_t)) / N
    dlogits[np.arange(N), Y.reshape(-1)] -= 1.0
    dlogits *= 1.0 / N
    # (V, H): sum_t dy_t h_t^T
    grads["Why"] = _product(dlogits.T, layers[-1].out.reshape(N, H), out, "Why")
    grads["by"] = dlogits.sum(axis=0, out=_into(out, "by"))  # (V,): sum_t dy_t

    # dh_t from above for the top layer: Why^T dy_t
    dout = layers[-1].ws.get("dhs", (T, B, H), dlogits.dtype)  # (T, B, H)
    np.matmul(dlogits, params["Why"], out=dout.reshape(N, H))
    for layer in range(arch.num_layers - 1, -1, -1):
        lay = layers[layer]
        Wxh, Whh, bh = layer_names(layer)
        dhs = dout  # (T, B, H): dloss/d(out_t), then dloss/dh_t
        if keep is not None:
            dhs *= keep[layer]  # out_t = keep ⊙ h_t
        dax, dah = cell.backward(params[Whh], lay.cell_cache, dhs, lay.ws)  # (T, B, G H) each
        dax_flat = dax.reshape(N, GH)  # (N, G H)
        H_prev = lay.hs[:-1] if lay.m is None else lay.hs[:-1] * lay.m  # h_{t-1} read, m_t h_{t-1}
        H_prev = H_prev.reshape(N, H)  # (N, H): for every position
        # (G H, H): sum_t dah_t h_{t-1}^T
        grads[Whh] = _product(dah.reshape(N, GH).T, H_prev, out, Whh)
        grads[bh] = dax_flat.sum(axis=0, out=_into(out, bh))  # (G H,)
        if layer == 0:
            grads[Wxh] = input_grad(dax_flat, X.reshape(-1), arch.vocab_size, lay.ws, out, Wxh)
        else:
            # (G H, H): sum_t dax_t x_t^T
            grads[Wxh] = _product(dax_flat.T, lay.x_in.reshape(N, H), out, Wxh)
            dout = layers[layer - 1].ws.get("dhs", (T, B, H), dlogits.dtype)
            np.matmul(dax_flat, params[Wxh], out=dout.reshape(N, H))  # Wxh^T dax_t
    return grads


def _into(out: dict | None, name: str) -> np.ndarray | None:
    return None if out is None else out[name]


def _product(a: np.ndarray, b: np.ndarray, out: dict | None, name: str) -> np.ndarray:
    """a @ b, written into out[name] when out is given."""
    return np.matmul(a, b, out=_into(out, name))


def input_grad(
    dax_flat: np.ndarray, x: np.ndarray, vocab_size: int, ws=_Fresh, out=None, name="Wxh"
) -> np.ndarray:
    """dWxh (G H, V) = sum over positions of dax_t x_t^T: add each row of dax into column x_t.

    Written as one product with the (N, V) one-hot matrix of the inputs: a GEMM is many times
    faster than a scatter-add (np.add.at) or a sort and reduceat.
    """
    N = len(x)
    onehot = ws.get("onehot", (N, vocab_size), dax_flat.dtype)  # (N, V)
    onehot.fill(0)
    onehot[np.arange(N), x] = 1.0
    return _product(dax_flat.T, onehot, out, name)  # (G H, V)


# ---- one step, for sampling and for looking inside ----


def step(params: dict, ids: np.ndarray, state: np.ndarray):
    """One character for M streams: ids (M,), state (M, W) -> (h_top (M, H), new_state (M, W)).

    For sampling: the params are taken as checked (by `architecture`, as loading does)."""
    arch = _read_arch(params)
    cell = CELLS[arch.cell]
    new_state = np.empty_like(state)  # (M, W)
    x = None
    for layer in range(arch.num_layers):
        Wxh, Whh, bh = (params[k] for k in layer_names(layer))
        if layer == 0:
            ax_t = Wxh[:, ids].T + bh  # (M, G H): column x_t of Wxh, a lookup
        else:
            ax_t = x @ Wxh.T + bh  # (M, G H)
        s = tuple(state[:, _state_columns(arch, layer, k)] for k in range(cell.STATES))
        s = cell.step(Whh, ax_t, s)
        for k, s_k in enumerate(s):
            new_state[:, _state_columns(arch, layer, k)] = s_k
        x = s[0]
    return x, new_state


def trace(params: dict, ids: np.ndarray, state0: np.ndarray) -> np.ndarray:
    """The carried state after each character of ids (T,), read one at a time from state0
    (1, W): (T, W), row t the state after ids[t]. Every layer's h (and the LSTM's c) at every
    step, for looking inside a model (charrnn show), where `run` keeps the top layer's h only."""
    states = np.empty((len(ids), state0.shape[1]), state0.dtype)  # (T, W)
    state = state0
    for t in range(len(ids)):
        state = step(params, ids[t : t + 1], state)[1]  # (1, W)
        states[t] = state[0]
    return states
