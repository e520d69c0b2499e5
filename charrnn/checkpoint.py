"""Checkpoints: one self-contained .npz file, written atomically and loaded without pickle.

Arrays in a checkpoint (format_version 2; the README's "Checkpoint format" has the details):
    Wxh, Whh, bh          layer 0's weights, gate blocks stacked in rows: (G H, V), (G H, H), (G H,)
    Wxh_l, Whh_l, bh_l    layer l >= 1's: (G H, H), (G H, H), (G H,)
    Why (V, H), by (V,)   the output layer; all weights float32 or all float64
    cell (), num_layers ()  "rnn", "lstm" or "gru" (G = 1, 4, 3) and the number of layers
    vocab (V,)            the characters in id order, a unicode array (NUL is stored as "")
    config ()             the resolved training config, a JSON string
    format_version ()     int64
    step ()               int64, updates done
    h_carry (B, W)        the state carried into the next training chunk (model.zero_state)
    opt.<slot>.<param>    optimiser state (e.g. opt.m.Whh)
    train_state ()        JSON string: rng state, best validation loss, patience count, ...

Format 1 (charrnn 0.1) had no `cell` and `num_layers`: a one-layer vanilla RNN, read as such.

A save writes a temporary file in the same folder, fsyncs it and renames it over the target,
so a reader sees either the old complete file or the new complete one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.atomic import remove_quietly, replace_atomically
from charrnn.errors import CheckpointError
from charrnn.model import CELLS, Arch, architecture, param_shapes

FORMAT_VERSION = 2
BASE_NAMES = ("Wxh", "Whh", "bh", "Why", "by")  # in every checkpoint, of any format


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    vocab: list[str]
    config: dict
    step: int = 0
    h_carry: np.ndarray | None = None
    opt_state: dict[str, np.ndarray] = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)


def save(ckpt: Checkpoint, path: str | Path) -> None:
    """Write ckpt to path atomically; on failure the previous file at path is untouched."""
    path = Path(path)
    arrays = dict(ckpt.params)
    arch = architecture(ckpt.params)
    arrays["cell"] = np.array(arch.cell)
    arrays["num_layers"] = np.array(arch.num_layers, dtype=np.int64)
    arrays["vocab"] = np.array(ckpt.vocab if ckpt.vocab else [], dtype="<U1")
    arrays["config"] = np.array(json.dumps(ckpt.config))
    arrays["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    arrays["step"] = np.array(ckpt.step, dtype=np.int64)
    if ckpt.h_carry is not None:
        arrays["h_carry"] = ckpt.h_carry
    arrays.update({f"opt.{k}": v for k, v in ckpt.opt_state.items()})
    arrays["train_state"] = np.array(json.dumps(ckpt.train_state))

    try:
        replace_atomically(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        kept = "the previous checkpoint is unchanged" if path.exists() else "nothing was written"
        raise CheckpointError(
            f"could not write checkpoint '{path}': {e.strerror or e}; {kept} "
            "(free disk space or check the folder's permissions, then --resume)"
        ) from None


def remove_temp_files(folder: str | Path) -> None:
    """Delete the temporary files that a save killed mid-write (SIGKILL, power loss) left in
    folder. Call it only while no other process can be saving there (under the RunLock)."""
    for tmp in Path(folder).glob(".*.tmp"):  # atomic.replace_atomically's names
        remove_quietly(tmp)


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint. Never unpickles: object arrays are refused."""
    path = Path(path)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as e:  # e.g. a name too long
        raise CheckpointError(
            f"cannot read checkpoint '{path}': {e.strerror or e}; check the path"
        ) from None
    if is_dir:
        raise CheckpointError(f"checkpoint '{path}' is a directory; give a .npz file")
    if not exists:
        raise CheckpointError(f"checkpoint '{path}' not found; check the path")
    bad = f"'{path}' is not a charrnn checkpoint"
    ours = "give the last.npz or best.npz that 'charrnn train' wrote"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise CheckpointError(
            f"cannot read checkpoint '{path}': {e.strerror or e}; check the file's permissions"
        ) from None
    if magic.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"{bad}: it is a single .npy array; {ours}")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise CheckpointError(
            f"{bad}: it is {'empty' if not magic else 'not an .npz file'}; {ours}"
        )
    corrupt = (
        f"checkpoint '{path}' is truncated or corrupt ({{}}); use the run's other "
        "checkpoint (last.npz or best.npz) or train again"
    )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):  # numpy refused before unpickling anything
            raise CheckpointError(
                f"{bad}: it holds pickled Python objects, which are refused "
                f"because loading them can run code; {ours}"
            ) from None
        raise CheckpointError(corrupt.format(_brief(e))) from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e.strerror or e}") from None
    except Exception as e:  # zipfile, zlib and numpy raise a zoo of types on corrupt members
        raise CheckpointError(corrupt.format(_brief(e))) from None
    not_arrays = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if not_arrays:  # np.load hands back a member that is not an .npy as raw bytes
        raise CheckpointError(f"{bad}: its '{not_arrays[0]}' is not a NumPy array; {ours}")
    return _from_arrays(arrays, path)


def _damaged(message: str) -> CheckpointError:
    """A checkpoint that fails a check: corrupted, edited, or written by something else."""
    return CheckpointError(
        f"{message}; the file is damaged or not from charrnn: use the run's "
        "other checkpoint (last.npz or best.npz) or train again"
    )


def _brief(e: Exception) -> str:
    """An exception as a short single line: numpy may quote a corrupt header verbatim."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _scalar(arrays: dict, name: str, kind: str, where: str):
    a = arrays[name]
    if a.shape != () or a.dtype.kind not in kind or not _valid_text(a):
        raise _damaged(f"{where}: array '{name}' has the wrong type or shape")
    return a.item()


def _valid_text(a: np.ndarray) -> bool:
    """False for a unicode array holding a code unit past U+10FFFF, which Python cannot turn
    into a str (numpy would raise SystemError); True for any other array."""
    if a.dtype.kind != "U" or a.dtype.itemsize == 0:
        return True
    units = (
        np.ascontiguousarray(a)
        .reshape(-1)
        .view(np.dtype(np.uint32).newbyteorder(a.dtype.byteorder))
    )
    return bool((units <= 0x10FFFF).all())


def _from_arrays(arrays: dict, path: Path) -> Checkpoint:
    where = f"checkpoint '{path}'"
    missing = [n for n in (*BASE_NAMES, "vocab", "config", "format_version") if n not in arrays]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a charrnn checkpoint: it has no "
            f"{', '.join(missing)}; give a .npz that 'charrnn train' wrote"
        )
    version = _scalar(arrays, "format_version", "iu", where)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {version}, newer than this charrnn reads "
            f"({FORMAT_VERSION}); upgrade charrnn"
        )
    if version < 1:
        raise _damaged(f"{where} has an invalid format_version {version}")

    vocab_arr = arrays["vocab"]
    if (
        vocab_arr.ndim != 1
        or vocab_arr.dtype.kind != "U"
        or vocab_arr.dtype.itemsize > 4
        or not _valid_text(vocab_arr)
    ):
        raise _damaged(f"{where}: 'vocab' must be a 1-D array of single characters")
    vocab = [c if c else "\0" for c in vocab_arr.tolist()]  # numpy stores NUL as ""
    # sorted and distinct: the ids of a text are found by binary search (data.encode)
    if not vocab or vocab != sorted(set(vocab)):
        raise _damaged(f"{where}: 'vocab' is empty or not sorted distinct characters")

    arch = _architecture(arrays, version, len(vocab), where)
    want = param_shapes(arch)
    absent = [k for k in want if k not in arrays]
    if absent:
        raise _damaged(
            f"{where}: a {arch.num_layers}-layer {arch.cell} needs '{absent[0]}', which is missing"
        )
    params = {k: arrays[k] for k in want}
    for k, shape in want.items():
        if params[k].shape != shape:
            raise _damaged(
                f"{where}: '{k}' has shape {params[k].shape}, expected {shape} for a "
                f"{arch.cell} of hidden size {arch.hidden_size} and {arch.vocab_size} characters"
            )
    dtypes = {p.dtype for p in params.values()}
    dtype = dtypes.pop()
    if dtypes or dtype not in (np.float32, np.float64):
        raise _damaged(f"{where}: weights must all be float32 or all float64")
    for k, p in params.items():
        if not np.isfinite(p).all():
            raise _damaged(f"{where}: '{k}' contains NaN or infinite values")

    try:
        config = json.loads(_scalar(arrays, "config", "U", where))
        train_state = (
            json.loads(_scalar(arrays, "train_state", "U", where))
            if "train_state" in arrays
            else {}
        )
    except (ValueError, RecursionError):  # JSONDecodeError, too many digits, deep nesting
        raise _damaged(f"{where}: 'config' or 'train_state' is not valid JSON") from None
    if not isinstance(config, dict) or not isinstance(train_state, dict):
        raise _damaged(f"{where}: 'config' and 'train_state' must be JSON objects")

    step = _scalar(arrays, "step", "iu", where) if "step" in arrays else 0
    if not 0 <= step < 2**62:
        raise _damaged(f"{where} has an invalid step {step}")
    h_carry = arrays.get("h_carry")
    W = arch.state_width
    if h_carry is not None and (
        h_carry.ndim != 2 or h_carry.shape[1] != W or h_carry.shape[0] < 1 or h_carry.dtype != dtype
    ):
        raise _damaged(
            f"{where}: 'h_carry' is {h_carry.dtype} {h_carry.shape}, expected {dtype} (B, {W})"
        )
    if h_carry is not None and not np.isfinite(h_carry).all():
        raise _damaged(f"{where}: 'h_carry' contains NaN or infinite values")
    opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
    for k, v in opt_state.items():  # "slot.param", shaped like the parameter
        param = k.partition(".")[2]
        if param not in params or v.shape != params[param].shape or v.dtype != dtype:
            raise _damaged(f"{where}: optimizer state 'opt.{k}' does not match the weights")
        if not np.isfinite(v).all():
            raise _damaged(f"{where}: optimizer state 'opt.{k}' contains NaN or infinite values")
    return Checkpoint(
        params=params,
        vocab=vocab,
        config=config,
        step=int(step),
        h_carry=h_carry,
        opt_state=opt_state,
        train_state=train_state,
    )


def _architecture(arrays: dict, version: int, V: int, where: str) -> Arch:
    """Cell, layers and sizes as the file declares them (format 1: a one-layer vanilla RNN)."""
    cell, num_layers = "rnn", 1
    if version >= 2:
        for name in ("cell", "num_layers"):
            if name not in arrays:
                raise _damaged(f"{where}: format 2 needs '{name}', which is missing")
        cell = _scalar(arrays, "cell", "U", where)
        num_layers = _scalar(arrays, "num_layers", "iu", where)
        if cell not in CELLS or not 1 <= num_layers <= 1024:
            raise _damaged(f"{where}: unknown cell {cell[:20]!r} or bad num_layers {num_layers}")
    Whh, G = arrays["Whh"].shape, Arch(cell, 1, 1, V).gates
    if len(Whh) != 2 or Whh[-1] < 1 or Whh[0] != G * Whh[-1]:
        want = "a square (H, H)" if G == 1 else f"({G} H, H)"
        raise _damaged(f"{where}: 'Whh' has shape {Whh}, expected {want} for a {cell}")
    return Arch(cell=cell, num_layers=int(num_layers), hidden_size=Whh[1], vocab_size=V)
