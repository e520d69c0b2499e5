"""Drawing a layer's weights: the one initialisation every cell shares."""

from __future__ import annotations

import numpy as np


def init_weights(
    gates: int, n_in: int, H: int, rng: np.random.Generator, dtype, init_scale: float
) -> dict[str, np.ndarray]:
    """Whh with each (H, H) gate block its own random orthogonal matrix, then small random Wxh,
    zero bh; drawn in that order (for one block, exactly what the vanilla RNN always drew).

    An orthogonal block keeps every singular value at 1, so at the start a hidden state neither
    explodes nor vanishes as it is multiplied by Whh step after step; gradients flowing back
    through time start out well scaled too. Small Wxh keeps the units in their linear range.
    """
    blocks = []
    for _ in range(gates):
        q, r = np.linalg.qr(rng.standard_normal((H, H)))
        q *= np.sign(np.diag(r))  # makes the draw uniform over orthogonal matrices
        blocks.append(q)
    weights = {
        "Wxh": rng.standard_normal((gates * H, n_in)) * init_scale,  # (G H, n_in)
        "Whh": np.concatenate(blocks),  # (G H, H)
        "bh": np.zeros(gates * H),  # (G H,)
    }
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in weights.items()}


def prev(states: np.ndarray, m: np.ndarray | None, t: int) -> np.ndarray:
    """The state (B, H) that step t reads: states[t], times the keep mask m[t] (B, 1) when
    some stream's state is reset there (m None: no resets in the chunk)."""
    if m is None:
        return states[t]
    return states[t] * m[t]
