"""The vanishing gradient, measured: how much the loss at a position of a text depends on the
state the network carried k characters earlier, for k = 1 .. K.

For a position t, loss_t = -log p_t[x_{t+1}] is the loss of the character after x_t, predicted
from the top layer's h_t. S_{t-k} is the carried state after reading x_{t-k}: the (W,) row that
`model.forward` carries from one chunk to the next, every layer's h (and the LSTM's c). The
measured gradient is

    g_k = d loss_t / d S_{t-k}          k = 1 .. K, the rest of the text fixed

what loss_t would do if the state entering step t-k+1 were perturbed. It is reported as norms
of its parts: each layer's h, and for the LSTM each layer's c. For a layer below the top this is
the path through its own recurrence only: h^(l)_{t-k} itself was read by the layer above at
step t-k, before the perturbation. For one position the model reads the text from a zero state
for `burn_in` characters (so S is a typical state, not zero), then the K characters
x_{t-K+1} .. x_t.

One backward pass gives g_k for every k and every position at once: the positions are the B
streams of a batch, dh at the top is Why^T dy_t at the last step and zero before it, each cell's
`backward` carries it down the steps, and the cell's own `dstate` (its backward equations, in
charrnn/cells) turns the da or dah it returns into the gradient with respect to the state
entering each step. Everything is computed in float64: a vanilla RNN's g_200 can be 1e-30,
far below what float32 resolves next to the larger terms it is summed from.

Reading checkpoints and printing are the CLI's; `save_image` draws the curves with matplotlib
(the optional `plot` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charrnn import checks
from charrnn.cells import CELLS
from charrnn.data import encode
from charrnn.errors import ArgumentError, DataError, option
from charrnn.memory import check_fits
from charrnn.model import Arch, Workspace, architecture, forward, layer_names, run, zero_state
from charrnn.plot import new_figure, save_figure

BATCH = 64  # positions per backward pass: an LSTM of 256 at K = 200 holds ~0.5 GB of float64
PASS_BYTES = 1 << 30  # fewer positions per pass when BATCH of them would hold more than this
BURN_BLOCK = 256  # burn-in characters per model.run call


def state_gradients(params: dict, X: np.ndarray, y: np.ndarray, burn_in: int) -> np.ndarray:
    """g (K, B, W): row k - 1 is d loss_t / d S_{t-k} for each of B streams.

    X (burn_in + K, B) are the ids each stream reads, the last one x_t; y (B,) the ids x_{t+1}
    that loss_t scores. Computed in the params' dtype (float64 for a measurement)."""
    arch = architecture(params)
    cell = CELLS[arch.cell]
    K, B = X.shape[0] - burn_in, X.shape[1]
    H, GH, L, S = arch.hidden_size, arch.gates * arch.hidden_size, arch.num_layers, arch.states
    if K < 1:
        raise ArgumentError("need at least one character after the burn-in")

    # burn-in: forward only, from a zero state, in blocks that bound memory
    state = zero_state(params, B)  # (B, W)
    ws = Workspace()
    for start in range(0, burn_in, BURN_BLOCK):
        state = run(params, X[start : min(start + BURN_BLOCK, burn_in)], state, ws)[1]

    # the window: forward with its cache; only the last step's output is scored
    Y = np.zeros((K, B), dtype=np.intp)
    Y[-1] = y
    _, cache, _ = forward(params, X[burn_in:], Y, state)
    dy = cache["probs"].reshape(K, B, -1)[-1].copy()  # (B, V): p_t
    dy[np.arange(B), y] -= 1.0  # d loss_t / dy_t = p_t - onehot(x_{t+1})
    above = np.zeros((K, B, H), dtype=dy.dtype)  # (K, B, H): dh from outside the recurrence
    above[-1] = dy @ params["Why"]  # Why^T dy_t, at the top layer's last step only

    g = np.empty((K, B, L, S, H), dtype=dy.dtype)  # the (W,) state's layout: layer, state, unit
    for layer in range(L - 1, -1, -1):
        Wxh, Whh, _ = (params[k] for k in layer_names(layer))
        lay = cache["layers"][layer]
        dax, dah = cell.backward(Whh, lay.cell_cache, above.copy(), lay.ws)  # (K, B, G H) each
        for s, d in enumerate(cell.dstate(Whh, lay.cell_cache, above, dah)):
            g[:, :, layer, s] = d
        if layer:  # what the layer below gets from this one's input term: Wxh^T dax_t
            above = (dax.reshape(K * B, GH) @ Wxh).reshape(K, B, H)
    return g[::-1].reshape(K, B, -1)  # row j was the state entering window step j: k = K - j


# ---- many positions of a text ----


@dataclass
class GradFlow:
    """The norms measured for one model: norms[k - 1, p, l, s] = ‖part (l, s) of g_k‖ at
    position p, for layer l and state s (0: h, 1: c)."""

    label: str
    arch: Arch
    positions: np.ndarray  # (P,) the positions t, indexes into the encoded text
    norms: np.ndarray  # (K, P, L, S)

    def curves(self) -> dict[str, np.ndarray]:
        """{"h": (K, P), and "c": (K, P) for the LSTM}: the norm over all layers' h (or c)."""
        names = ("h", "c")[: self.arch.states]
        return {n: np.sqrt((self.norms[:, :, :, s] ** 2).sum(axis=2)) for s, n in enumerate(names)}

    def rows(self) -> list[dict]:
        """One dict per k: for h (and c) the mean and median norm over positions and the
        mean's ratio to the mean at k = 1; with several layers, each layer's mean h norm."""
        rows = [{"k": k} for k in range(1, len(self.norms) + 1)]
        for name, norms in self.curves().items():
            mean, median = norms.mean(axis=1), np.median(norms, axis=1)  # (K,) each
            ratio = mean / mean[0] if mean[0] > 0 else np.full_like(mean, np.nan)
            for row, m, med, r in zip(rows, mean, median, ratio, strict=True):
                row.update({f"{name}_mean": float(m), f"{name}_median": float(med)})
                row[f"{name}_ratio"] = float(r)
        if self.arch.num_layers > 1:
            layer_means = self.norms[:, :, :, 0].mean(axis=1)  # (K, L)
            for row, means in zip(rows, layer_means.tolist(), strict=True):
                row["h_layers"] = means
        return rows

    def to_dict(self) -> dict:
        return {
            "checkpoint": self.label,
            "cell": self.arch.cell,
            "num_layers": self.arch.num_layers,
            "hidden_size": self.arch.hidden_size,
            "positions": len(self.positions),  # fewer than asked for when the text is short
            "distances": self.rows(),
        }


def measure(
    params: dict,
    vocab: list[str],
    text: str,
    *,
    max_distance: int = 200,
    positions: int = 256,
    burn_in: int = 100,
    rng_seed: int = 0,
    label: str = "model",
    name: str = "text",
) -> GradFlow:
    """‖d loss_t / d S_{t-k}‖ for k = 1 .. max_distance at `positions` positions t of text,
    drawn without replacement with the seed (all of them if the text has fewer). Characters
    not in the vocabulary are left out of the text. DataError if the text is too short;
    ArgumentError for a count out of range (checks.LIMITS); TooLargeError, before any work,
    when it needs more memory than this process may use (positions_per_pass)."""
    text, label, name = checks.text("text", text), checks.text("label", label), str(name)
    max_distance = checks.count("max_distance", max_distance)
    positions = checks.count("positions", positions)
    burn_in, rng_seed = checks.count("burn_in", burn_in), checks.count("rng_seed", rng_seed)
    ids, _ = encode(text, vocab)
    K, need = max_distance, burn_in + max_distance + 1  # + 1: x_{t+1}
    if len(ids) < need:
        raise DataError(
            f"'{name}' has {len(ids):,} characters in the model's vocabulary; measuring "
            f"{K} steps back after a burn-in of {burn_in} needs at least {need:,}: give a "
            f"longer text or lower {option('max_distance')} or {option('burn_in')}"
        )
    first = burn_in + K - 1  # the earliest t with a whole window and burn-in before it
    count = len(ids) - 1 - first  # positions first .. len - 2 have an x_{t+1}
    rng = np.random.default_rng(rng_seed)
    ts = np.sort(first + rng.choice(count, size=min(positions, count), replace=False))  # (P,)
    batch = positions_per_pass(params, max_distance, len(ts))  # before any pass
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    arch = architecture(params64)
    shape = (arch.num_layers, arch.states, arch.hidden_size)
    norms = np.empty((K, len(ts), *shape[:2]))  # (K, P, L, S)
    offsets = np.arange(-(burn_in + K) + 1, 1)  # (burn_in + K,): the window ends at t
    for start in range(0, len(ts), batch):
        t = ts[start : start + batch]  # (B,)
        X = ids[t[None, :] + offsets[:, None]]  # (burn_in + K, B)
        g = state_gradients(params64, X, ids[t + 1], burn_in)  # (K, B, W)
        norms[:, start : start + len(t)] = np.linalg.norm(g.reshape(K, len(t), *shape), axis=-1)
    return GradFlow(label, arch, ts, norms)


def positions_per_pass(params: dict, max_distance: int, positions: int) -> int:
    """How many positions one backward pass takes: BATCH, or fewer when K = max_distance is
    so long that BATCH of them would hold more than PASS_BYTES (a pass of one position is then
    the least). TooLargeError, before any work, when even that, with the norms kept for every
    position, needs more memory than this process may use. A pass holds, in float64, the
    window's forward cache (every layer's gates and states, the output probabilities), the
    backward's gradients of the gates and the state gradients g (K, B, W)."""
    arch = architecture(params)
    K, P = max_distance, positions
    L, H, G, V, S = arch.num_layers, arch.hidden_size, arch.gates, arch.vocab_size, arch.states
    per_position = 8 * K * (L * (3 * G * H + 6 * H) + 2 * V + L * S * H)
    B = max(1, min(BATCH, P, PASS_BYTES // per_position))
    check_fits(
        B * per_position + 8 * K * P * L * S,
        f"measuring {K:,} characters back at {P:,} position{'s' * (P != 1)}",
        f"{option('max_distance')} or {option('positions')}",
    )
    return B


# ---- printing and drawing ----


def shown_distances(K: int) -> list[int]:
    """The k of the text table: 1, 2, 5, 10, 20, 50, ... up to K, and K."""
    ks, scale = [], 1
    while scale <= K:
        ks += [k for k in (scale, 2 * scale, 5 * scale) if k <= K]
        scale *= 10
    return ks if ks[-1] == K else [*ks, K]


def table(flow: GradFlow) -> str:
    """A few lines: the model, then k, mean and median norm and ratio to k = 1, for h (and c)."""
    arch, P = flow.arch, len(flow.positions)
    layers = f"{arch.num_layers} layer{'s' * (arch.num_layers > 1)}"
    which = " (every layer's h together)" if arch.num_layers > 1 else ""
    lines = [
        f"{flow.label}: {arch.cell}, {layers} of {arch.hidden_size}; "
        f"‖d loss_t / d h_(t-k)‖{which} over {P:,} positions"
    ]
    names = ("h", "c")[: arch.states]
    lines.append(
        f"{'k':>5}" + "".join(f"  {f'mean |d{n}|':>11} {'median':>10} {'/ k=1':>9}" for n in names)
    )
    rows = flow.rows()
    for k in shown_distances(len(rows)):
        row = rows[k - 1]
        cells = (
            f"  {row[f'{n}_mean']:11.3e} {row[f'{n}_median']:10.3e} {row[f'{n}_ratio']:9.2e}"
            for n in names
        )
        lines.append(f"{k:>5}" + "".join(cells))
    return "\n".join(lines)


def save_image(flows: list[GradFlow], out, title: str | None = None) -> None:
    """Mean (solid) and median (dashed) ‖d loss_t / d h_{t-k}‖ against k on a log scale, one
    colour per model; the LSTM's c dotted. PNG, or SVG/PDF by the suffix."""
    fig, ax = new_figure((7, 4), 80, "leave out -o for the table")
    for i, flow in enumerate(flows):
        color = f"C{i % 10}"
        k = np.arange(1, len(flow.norms) + 1)
        name = f"{flow.label} ({flow.arch.cell})"
        for part, norms in flow.curves().items():
            style = "-" if part == "h" else ":"
            ax.plot(
                k, norms.mean(axis=1), style, color=color, lw=2, label=f"{name}: mean |d{part}|"
            )
            if part == "h":
                median = np.median(norms, axis=1)
                ax.plot(k, median, "--", color=color, lw=1, label=f"{name}: median |dh|")
    ax.set_yscale("log")
    ax.set_xlabel("distance k (characters back)")
    ax.set_ylabel("‖d loss_t / d state_(t-k)‖")
    P = ", ".join(sorted({f"{len(f.positions):,}" for f in flows}))
    ax.set_title(title or f"the gradient k characters back, over {P} positions")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    save_figure(fig, out, "the image")
