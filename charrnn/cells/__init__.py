"""The recurrent cells, one module each, all with one interface of pure functions.

A cell is one layer's recurrence over a chunk of T steps for B streams. The layer's weights
stack G gate blocks of H rows each, in the cell's gate order: Wxh (G H, n_in), Whh (G H, H),
bh (G H,). What does not depend on the recurrence is the caller's (`charrnn.model`): the input
term `ax_t = Wxh x_t + bh` for all T B positions before the loop, and dWhh, dbh, dWxh and the
gradient to the layer below as large products after it. A cell module defines

    GATES                                   gate blocks G: rnn 1, lstm 4 (i f o g), gru 3 (r z n)
    STATES                                  arrays carried per layer: rnn 1 (h), lstm 2 (h, c),
                                            gru 1 (h); state[0] is always h
    init_layer(n_in, H, rng, dtype, init_scale) -> {"Wxh", "Whh", "bh"}
    forward(Whh, ax, state0, ws, m=None) -> (hs, state_last, cache)
        ax (T, B, G H) the input terms (may be overwritten); state0 a tuple of STATES (B, H);
        hs (T + 1, B, H) with hs[0] = h_0; state_last a tuple of fresh (B, H) copies;
        m None or a (T, B, 1) keep mask: 0 where a stream's state is reset before step t (a
        document starts), so step t reads a zero state and no gradient flows back past it
    backward(Whh, cache, dhs, ws) -> (dax, dah)
        dhs (T, B, H) dloss/dh_t from above (may be overwritten); dax (T, B, G H) dloss/d ax_t;
        dah (T, B, G H) dloss/d(Whh h_{t-1}): the same array as dax except for the gru.
        Truncated BPTT: no gradient flows into state0.
    step(Whh, ax_t, state) -> state         one step without a cache, for sampling
    dstate(Whh, cache, above, dah) -> dstates
        a tuple of STATES arrays (T, B, H), row t d loss / d(state entering step t), from what
        `backward` returned and `above` (T, B, H), the gradient that came into each h_t from
        outside the recurrence; for gradient flow (charrnn/gradflow.py)

Buffers come from `ws` (a `model.Workspace`, scoped to the layer by the caller); a cache is
valid until the next `forward` with the same workspace.
"""

from charrnn.cells import gru, lstm, rnn

CELLS = {"rnn": rnn, "lstm": lstm, "gru": gru}
