"""The ONNX graph of a model, built with onnx.helper from its arrays (no torch, no tracing).

One graph for every cell and any number of layers (docs/export.md has the contract):

    inputs    ids (T, B) int64            character ids, time-major: T steps of B streams
              state (B, W) float32        the carried state, charrnn's layout (model.zero_state):
                                          layer 0's h (and c for the LSTM), then layer 1's, ...
    outputs   logits (T, B, V) float32    Why h_t + by after each id; softmax gives p_t
              new_state (B, W) float32    the state after the last id, to feed back in

Layer 0 reads OneHot(ids), so its input weights are Wxh itself and x_t selects a column
exactly; each layer is ONNX's own recurrent operator (opset 17: RNN-14, LSTM-14, GRU-14, so
onnxruntime runs the whole sequence in one kernel), its gate blocks moved into ONNX's order:

    rnn   RNN, activation Tanh: h_t = tanh(W x_t + R h_{t-1} + Wb + Rb)   (our a_t, bh in Wb)
    lstm  LSTM: ONNX stacks i, o, f, c where we stack i, f, o, g
    gru   GRU with linear_before_reset=1: ONNX stacks z, r, h where we stack r, z, n, and
          computes h~_t = tanh(W_h x_t + r_t ⊙ (R_h h_{t-1} + Rb_h) + Wb_h), which is our
          n_t = tanh(ax_n + r_t ⊙ ah_n) with Rb_h = 0 (our bh is all in ax); its
          h_t = (1 - z_t) ⊙ h~_t + z_t ⊙ h_{t-1} is our n_t + z_t ⊙ (h_{t-1} - n_t).
          (linear_before_reset=0 would apply r_t before R_h: another GRU, not ours.)

The weights are stored as float32 whatever the checkpoint's dtype. The model's metadata_props
carry the vocabulary (JSON), cell, layers and hidden size, so a program needs nothing else.
"""

from __future__ import annotations

import numpy as np

from charrnn import __version__, jsonout
from charrnn.model import Arch, architecture, layer_names, state_blocks

OPSET = 17
IR_VERSION = 8  # the IR of opset 17 (ONNX 1.12): runtimes from onnxruntime 1.12 on read it
MAX_BYTES = 2**31 - 1  # protobuf's limit on one message; larger graphs need external data
# each cell: ONNX's operator and where its gate blocks come from among ours (model docs)
OPERATORS = {"rnn": ("RNN", [0]), "lstm": ("LSTM", [0, 2, 1, 3]), "gru": ("GRU", [1, 0, 2])}


def onnx_model(params: dict[str, np.ndarray], vocab: list[str]):
    """The onnx.ModelProto of the model: checked by onnx.checker before it is returned."""
    import onnx
    from onnx import TensorProto, helper

    arch = architecture(params)
    H, V, W = arch.hidden_size, arch.vocab_size, arch.state_width
    nodes, weights = _nodes(params, arch)
    float32, int64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        nodes,
        f"charrnn_{arch.num_layers}x{arch.cell}{H}",
        inputs=[
            helper.make_tensor_value_info("ids", int64, ["T", "B"]),
            helper.make_tensor_value_info("state", float32, ["B", W]),
        ],
        outputs=[
            helper.make_tensor_value_info("logits", float32, ["T", "B", V]),
            helper.make_tensor_value_info("new_state", float32, ["B", W]),
        ],
        initializer=weights,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="charrnn",
        producer_version=__version__,
        doc_string="charrnn character-level language model: docs/export.md#onnx",
    )
    helper.set_model_props(
        model,
        {
            "vocab": jsonout.dumps(vocab, ascii=False),
            "cell": arch.cell,
            "num_layers": str(arch.num_layers),
            "hidden_size": str(H),
            "state_layout": "per layer h" + (", c" if arch.cell == "lstm" else "") + f"; {H} each",
        },
    )
    onnx.checker.check_model(model)
    return model


def _nodes(params: dict[str, np.ndarray], arch: Arch) -> tuple[list, list]:
    """(the graph's nodes, its initializers): the carried state cut into each layer's (1, B, H)
    slices, the layers bottom to top, the new state put back together, the output layer."""
    from onnx import helper, numpy_helper

    H, op, order = arch.hidden_size, *OPERATORS[arch.cell]
    weights, nodes = [], []

    def constant(name: str, value) -> str:
        weights.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        nodes.append(helper.make_node(op_type, inputs, outputs, **attrs))

    def gates(a: np.ndarray) -> np.ndarray:  # our gate blocks in ONNX's order, float32
        return np.concatenate([a[k * H : (k + 1) * H] for k in order]).astype(np.float32)

    axis0, axis1 = constant("axis0", np.array([0])), constant("axis1", np.array([1]))
    on_off = constant("off_on", np.array([0.0, 1.0], np.float32))
    V = constant("V", np.array([arch.vocab_size]))
    node("OneHot", ["ids", V, on_off], ["x_0"], axis=-1)  # (T, B, V): x_t, one-hot
    carried = {}
    for layer, which, cols in state_blocks(arch):  # the state's blocks, (1, B, H) each
        name = f"{which}0_{layer}"
        starts, ends = constant(f"{name}_from", [cols.start]), constant(f"{name}_to", [cols.stop])
        node("Slice", ["state", starts, ends, axis1], [f"{name}_rows"])  # (B, H)
        node("Unsqueeze", [f"{name}_rows", axis0], [name])
        carried[layer, which] = name
    finals = []  # each layer's last h (and c), (B, H) each
    for layer in range(arch.num_layers):
        Wxh, Whh, bh = (params[k] for k in layer_names(layer))
        biases = np.concatenate([gates(bh), np.zeros(len(bh), np.float32)])  # Wb, Rb = 0
        inputs = [
            f"x_{layer}",  # (T, B, V or H)
            constant(f"W_{layer}", gates(Wxh)[None]),  # (1, G H, V or H)
            constant(f"R_{layer}", gates(Whh)[None]),  # (1, G H, H)
            constant(f"B_{layer}", biases[None]),  # (1, 2 G H)
            "",  # sequence_lens: every sequence has all T steps
            carried[layer, "h"],
        ]
        outputs = [f"y_{layer}", f"h_{layer}"]  # (T, 1, B, H), (1, B, H)
        if arch.cell == "lstm":
            inputs.append(carried[layer, "c"])
            outputs.append(f"c_{layer}")
        extra = {"linear_before_reset": 1} if arch.cell == "gru" else {}
        node(op, inputs, outputs, hidden_size=H, **extra)
        node("Squeeze", [f"y_{layer}", axis1], [f"x_{layer + 1}"])  # (T, B, H), for the next
        for out in outputs[1:]:
            node("Squeeze", [out, axis0], [f"{out}_rows"])
            finals.append(f"{out}_rows")
    node("Concat", finals, ["new_state"], axis=1)  # (B, W), the order of state_blocks
    Why_T = constant("Why_T", params["Why"].T.astype(np.float32))  # (H, V)
    node("MatMul", [f"x_{arch.num_layers}", Why_T], ["top_logits"])  # (T, B, V)
    node("Add", ["top_logits", constant("by", params["by"].astype(np.float32))], ["logits"])
    return nodes, weights
