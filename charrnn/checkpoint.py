"""Checkpoints: one self-contained .npz file, written atomically and loaded without pickle.

Arrays in a checkpoint (format_version 3; docs/checkpoints.md has the details):
    Wxh, Whh, bh          layer 0's weights, gate blocks stacked in rows: (G H, V), (G H, H), (G H,)
    Wxh_l, Whh_l, bh_l    layer l >= 1's: (G H, H), (G H, H), (G H,)
    Why (V, H), by (V,)   the output layer; all weights float32 or all float64
    cell (), num_layers ()  "rnn", "lstm" or "gru" (G = 1, 4, 3) and the number of layers
    vocab (V,)            the characters in id order, a unicode array (NUL is stored as "")
    documents ()          "file", or "line" / "paragraph" for a model of records: its outputs are
                          then the V characters and the end of a record, id V (V + 1 rows of Why)
    config ()             the resolved training config, a JSON string
    format_version ()     int64
    step ()               int64, updates done
    h_carry (B, W)        the carried state, into the next training chunk (model.zero_state)
    opt.<slot>.<param>    optimiser state (e.g. opt.m.Whh)
    train_state ()        JSON string: rng state, best validation loss, patience count, ...

Format 1 (charrnn 0.1) had no `cell` and `num_layers`: a one-layer vanilla RNN, read as such.
Format 2 had no `documents`: read as "file".

The same loader reads a `.safetensors` file that `charrnn export` wrote (docs/export.md): the
model's arrays under the names above, and `format_version`, `cell`, `num_layers`, `vocab` (a JSON
list), `config`, `step` and `train_state` (JSON) as strings in its metadata; no optimizer state
and no h_carry, so it samples and scores but does not resume. Reading one needs only NumPy: its
header is parsed here, checked exactly as an .npz's headers are (then the same layout and value
checks), and only the arrays of the model are read.

A save writes a temporary file in the same folder, fsyncs it and renames it over the target,
so a reader sees either the old complete file or the new complete one.

A load bounds its work before doing it. It reads each member's .npy header first (a few hundred
bytes, never the data) and checks what the headers declare against the file and against each
other: every member's size against the bytes the zip holds for it, each shape against the
architecture and vocabulary the others declare, the total against the memory this process may
use. Only then are the arrays it uses read, and their values checked (finite weights, a sorted
vocabulary, JSON fields). Members it does not use are never read. A file crafted to declare
terabytes, or to decompress to gigabytes, is refused in milliseconds. Whether train_state's
values can be resumed from is left to the resume (`train_state_problem` names a bad one): sample
and eval need none of them.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn import jsonout
from charrnn.atomic import remove_quietly, replace_atomically
from charrnn.config import MAX_LAYERS
from charrnn.data import DOCUMENTS, N_CODE_POINTS
from charrnn.errors import CheckpointError
from charrnn.memory import memory_limit, show_bytes
from charrnn.model import CELLS, Arch, architecture, param_shapes

FORMAT_VERSION = 3  # 3: `documents`; 2: `cell`, `num_layers`; 1: charrnn 0.1
BASE_NAMES = ("Wxh", "Whh", "bh", "Why", "by")  # in every checkpoint, of any format
MAX_MEMBERS = 20_000  # arrays in a file: 1,024 layers of 3 weights with 2 optimizer slots each
MAX_TEXT = 1 << 16  # characters of 'config', 'train_state' or 'cell': a real one has hundreds
MAX_HEADER = 1 << 26  # bytes of a .safetensors JSON header: a real one has a few thousand
MAX_RATIO = 1100  # deflate shrinks data at most 1032 times: a member claiming more is crafted
OURS = (
    "give the last.npz or best.npz that 'charrnn train' wrote, or a .safetensors that "
    "'charrnn export' wrote"
)


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    vocab: list[str]
    config: dict
    step: int = 0
    h_carry: np.ndarray | None = None
    opt_state: dict[str, np.ndarray] = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION  # as the file says (load); save writes FORMAT_VERSION
    documents: str = "file"  # "line" or "paragraph": a model of records (data.Corpus.end_id)

    @property
    def end_id(self) -> int | None:
        """The id of the end of a record (the row of Why after the characters'), or None."""
        return len(self.vocab) if self.documents != "file" else None


def save(ckpt: Checkpoint, path: str | Path, then: str = "then --resume") -> None:
    """Write ckpt to path atomically; on failure the previous file at path is untouched, and
    the error's advice ends with `then` (what to do once the disk or folder is fixed)."""
    path = Path(path)
    arrays = dict(ckpt.params)
    arch = architecture(ckpt.params)
    arrays["cell"] = np.array(arch.cell)
    arrays["num_layers"] = np.array(arch.num_layers, dtype=np.int64)
    arrays["vocab"] = np.array(ckpt.vocab if ckpt.vocab else [], dtype="<U1")
    arrays["documents"] = np.array(ckpt.documents)
    arrays["config"] = np.array(jsonout.dumps(ckpt.config))
    arrays["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    arrays["step"] = np.array(ckpt.step, dtype=np.int64)
    if ckpt.h_carry is not None:
        arrays["h_carry"] = ckpt.h_carry
    arrays.update({f"opt.{k}": v for k, v in ckpt.opt_state.items()})
    arrays["train_state"] = np.array(jsonout.dumps(ckpt.train_state))

    try:
        replace_atomically(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        kept = "the previous checkpoint is unchanged" if path.exists() else "nothing was written"
        raise CheckpointError(
            f"could not write checkpoint '{path}': {e.strerror or e}; {kept} "
            f"(free disk space or check the folder's permissions, {then})"
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
    ours = OURS
    try:
        with open(path, "rb") as f:
            magic = f.read(9)
    except OSError as e:
        raise CheckpointError(
            f"cannot read checkpoint '{path}': {e.strerror or e}; check the file's permissions"
        ) from None
    if magic.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"{bad}: it is a single .npy array; {ours}")
    if magic[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return _load_safetensors(path)
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise CheckpointError(
            f"{bad}: it is {'empty' if not magic else 'not an .npz file'}; {ours}"
        )
    corrupt = (
        f"checkpoint '{path}' is truncated or corrupt ({{}}); use the run's other "
        "checkpoint (last.npz or best.npz) or train again"
    )
    pickled = (
        f"{bad}: it holds pickled Python objects, which are refused "
        f"because loading them can run code; {ours}"
    )
    try:
        with np.load(path, allow_pickle=False) as z:
            return _read(z, _declared(z.zip, path), path)
    except CheckpointError:
        raise
    except _Pickled:
        raise CheckpointError(pickled) from None
    except _NotArray as e:  # np.load would hand back a member that is not an .npy as bytes
        raise CheckpointError(f"{bad}: its '{e}' is not a NumPy array; {ours}") from None
    except ValueError as e:
        if "allow_pickle" in str(e):  # numpy refused before unpickling anything
            raise CheckpointError(pickled) from None
        raise CheckpointError(corrupt.format(_brief(e))) from None
    except (MemoryError, OSError) as e:
        raise _unreadable(e, path) from None
    except Exception as e:  # zipfile, zlib and numpy raise a zoo of types on corrupt members
        raise CheckpointError(corrupt.format(_brief(e))) from None


def _unreadable(e: MemoryError | OSError, path: Path) -> CheckpointError:
    """load's error for a checkpoint file (.npz or .safetensors) that cannot be read: too big
    for the memory left, or an OSError."""
    if isinstance(e, MemoryError):
        return CheckpointError(
            f"not enough memory to load checkpoint '{path}'; close other programs or load it "
            "on a machine with more memory"
        )
    return CheckpointError(f"cannot read checkpoint '{path}': {e.strerror or e}")


class _Pickled(Exception):
    """A member's header declares an object array: reading it would unpickle."""


class _NotArray(Exception):
    """A member that is not an .npy file (its name is the message)."""


@dataclass(frozen=True)
class _Member:
    """What a member's .npy header declares: enough to check it without reading its data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # a Python int: never overflows


def _read(z, declared: dict[str, _Member], path: Path) -> Checkpoint:
    """The checkpoint in the open file z (an .npz, or a _Safetensors): what its headers declare
    checked (_declared or _Safetensors.declared, then _layout), then only the arrays it uses
    read (z[name]), then their values checked (_from_arrays)."""
    names, param_names = _layout(z, declared, path)
    if isinstance(z, _Safetensors):  # it holds the model's arrays and nothing else
        extra = [n for n in z.tensors if n not in param_names]
        if extra:
            raise _damaged(f"checkpoint '{path}' holds '{_cut(extra[0])}', not a model array")
    need = sum(declared[n].nbytes for n in names)
    limit = memory_limit()
    if need > limit:
        raise CheckpointError(
            f"checkpoint '{path}' needs {show_bytes(need)} of memory to load, more than the "
            f"{show_bytes(limit)} this process can use; load it on a machine with more memory"
        )
    return _from_arrays({n: z[n] for n in names}, param_names, path)


def _declared(zf: zipfile.ZipFile, path: Path) -> dict[str, _Member]:
    """{array name: its header} for every member, after checking that each member's declared
    sizes fit the file: compressed sizes within the file, the uncompressed size no more than
    deflate can give and exactly what the header declares."""
    where = f"checkpoint '{path}'"
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _damaged(f"{where} has {len(infos):,} members, more than a checkpoint holds")
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise _NotArray(_cut(info.filename))
    if sum(i.compress_size for i in infos) > path.stat().st_size:
        raise _damaged(f"{where}: its members declare more bytes than the file holds")
    declared = {}
    for name in dict.fromkeys(i.filename for i in infos):  # a repeated name: zip reads the last
        info = zf.getinfo(name)
        if info.compress_type == zipfile.ZIP_STORED:
            fits = info.file_size == info.compress_size
        else:  # np.savez_compressed: deflated
            fits = info.compress_type == zipfile.ZIP_DEFLATED and (
                info.file_size <= MAX_RATIO * info.compress_size + 4096
            )
        if not fits:
            raise _damaged(f"{where}: member '{_cut(name)}' declares a size its data cannot have")
        member, header_bytes = _header(zf, info)
        if header_bytes + member.nbytes != info.file_size:
            raise _damaged(
                f"{where}: array '{_cut(name[:-4])}' declares {_said(member)}, which is not the "
                f"{info.file_size - header_bytes:,} bytes it holds"
            )
        declared[name[:-4]] = member
    return declared


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[_Member, int]:
    """(what the .npy header of a member declares, the header's length in bytes); reads the
    header only (numpy caps it at 10,000 bytes), never the data."""
    with zf.open(info) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns about headers written by Python 2
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"an .npy format version {version} that charrnn does not write")
        if dtype.hasobject:
            raise _Pickled
        return _Member(tuple(shape), dtype), f.tell()


# ---- .safetensors: an 8-byte little-endian header length N, N bytes of JSON, the data ----

SAFETENSORS_DTYPES = {  # the dtypes a safetensors header may name that NumPy has
    **{f"F{8 * n}": np.dtype(f"<f{n}") for n in (2, 4, 8)},
    **{f"I{8 * n}": np.dtype(f"<i{n}") for n in (1, 2, 4, 8)},
    **{f"U{8 * n}": np.dtype(f"<u{n}") for n in (1, 2, 4, 8)},
    "BOOL": np.dtype("?"),
}
META_SCALARS = ("format_version", "num_layers", "step")  # whole numbers, as text
META_TEXTS = ("cell", "config", "train_state", "documents")  # strings; vocab: a JSON list


def _load_safetensors(path: Path) -> Checkpoint:
    """A .safetensors checkpoint, with load's errors for a file that cannot be read."""
    try:
        with open(path, "rb") as f:
            z = _Safetensors(f, path)
            return _read(z, z.declared, path)
    except CheckpointError:
        raise
    except (MemoryError, OSError) as e:
        raise _unreadable(e, path) from None


class _Safetensors:
    """An open .safetensors file as `_read` reads an .npz: `declared` (what its header says of
    each tensor and metadata entry, checked against the file's size) and z[name] (one tensor,
    read from its offsets only now, or a metadata entry as a NumPy scalar or vocab array)."""

    def __init__(self, f, path: Path):
        self.f, where = f, f"checkpoint '{path}'"
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little")
        if n > min(MAX_HEADER, size - 8):
            raise _damaged(f"{where}: its header declares {n:,} bytes, more than the file holds")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _damaged(f"{where}: its safetensors header is not valid JSON") from None
        if not isinstance(header, dict):
            raise _damaged(f"{where}: its safetensors header is not a JSON object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise _damaged(f"{where}: its metadata must map names to strings")
        self.start = 8 + n  # where the data begins
        self.tensors = _tensor_entries(header, size - self.start, where)
        self.values = _metadata_values(meta, where)
        self.declared = {name: m for name, (m, _) in self.tensors.items()}
        for name, value in self.values.items():
            self.declared[name] = _Member(value.shape, value.dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        member, begin = self.tensors[name]
        a = np.empty(member.shape, member.dtype)
        self.f.seek(self.start + begin)
        if self.f.readinto(memoryview(a).cast("B")) != member.nbytes:
            raise CheckpointError(f"checkpoint '{self.f.name}' is truncated; export it again")
        return a


def _tensor_entries(header: dict, data_bytes: int, where: str) -> dict:
    """{name: (_Member, offset)} of the header's tensors, after checking that each entry is a
    tensor of a known dtype whose bytes are exactly its span, and that the spans tile the
    data without a gap or an overlap (as the safetensors format requires)."""
    if len(header) > MAX_MEMBERS:
        raise _damaged(f"{where} has {len(header):,} tensors, more than a checkpoint holds")
    entries, spans = {}, []
    for name, entry in header.items():
        bad = _damaged(f"{where}: tensor '{_cut(name)}' is not a valid safetensors entry")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _damaged(f"{where}: tensor '{_cut(name)}' has a dtype charrnn does not read")
        counts = isinstance(shape, list) and len(shape) <= 8 and isinstance(offsets, list)
        ints = [*shape, *offsets] if counts else []
        if not counts or len(offsets) != 2 or not all(_count(v) for v in ints):
            raise bad
        member = _Member(tuple(shape), SAFETENSORS_DTYPES[dtype])
        if offsets[1] - offsets[0] != member.nbytes:
            raise _damaged(
                f"{where}: tensor '{_cut(name)}' declares {_said(member)}, which is not the "
                f"{offsets[1] - offsets[0]:,} bytes of its span"
            )
        entries[name] = (member, offsets[0])
        spans.append(tuple(offsets))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise _damaged(f"{where}: its tensors' spans overlap or leave gaps")
        end = stop
    if end != data_bytes:
        raise _damaged(f"{where}: its tensors declare {end:,} bytes, the file holds {data_bytes:,}")
    return entries


def _count(v) -> bool:
    return type(v) is int and 0 <= v < 2**62


def _metadata_values(meta: dict[str, str], where: str) -> dict[str, np.ndarray]:
    """The metadata entries charrnn reads, as the NumPy scalars and vocab array an .npz holds,
    so that _layout and _from_arrays check them as they check an .npz's; others are ignored."""
    values = {}
    for name in META_SCALARS:
        if name in meta:
            text = meta[name]
            if not (text.isascii() and text.isdigit() and len(text) <= 18):
                raise _damaged(f"{where}: metadata '{name}' is not a whole number")
            values[name] = np.array(int(text), dtype=np.int64)
    for name in META_TEXTS:
        if name in meta:
            if len(meta[name]) > MAX_TEXT:
                raise _damaged(f"{where}: '{name}' is longer than {MAX_TEXT:,} characters")
            values[name] = np.array(meta[name], dtype=f"<U{max(1, len(meta[name]))}")
    if "vocab" in meta:
        try:
            vocab = json.loads(meta["vocab"])
        except (ValueError, RecursionError):
            vocab = None
        if not (
            isinstance(vocab, list)
            and len(vocab) <= N_CODE_POINTS
            and all(isinstance(c, str) and len(c) == 1 for c in vocab)
        ):
            raise _damaged(f"{where}: 'vocab' must be a JSON list of single characters")
        values["vocab"] = np.array(vocab, dtype="<U1")
    return values


def _cut(name: str) -> str:
    """A member's name as messages show it: a zip allows 65,535 bytes."""
    return name if len(name) <= 60 else name[:57] + "..."


def _said(m: _Member) -> str:
    shape = m.shape if sum(len(str(n)) for n in m.shape) < 60 else f"a {m.ndim}-D shape"
    return f"{m.dtype.str} {shape}"


def _layout(z, declared: dict[str, _Member], path: Path) -> tuple[list[str], list[str]]:
    """Check the shapes and types the headers declare against each other. Returns the names of
    the arrays the checkpoint is made of (to be read) and those of its weights. Reads only the
    scalars it needs (format version, cell, layer count), once their headers say they are."""
    where = f"checkpoint '{path}'"
    missing = [n for n in (*BASE_NAMES, "vocab", "config", "format_version") if n not in declared]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a charrnn checkpoint: it has no "
            f"{', '.join(missing)}; give a .npz that 'charrnn train' wrote"
        )

    def scalar(name: str, kind: str, max_chars: int = 0):
        m = declared[name]
        size = 4 * max_chars if kind == "U" else 8  # an int64 at most
        if m.shape != () or m.dtype.kind not in kind or m.dtype.itemsize > size:
            raise _damaged(f"{where}: array '{name}' has the wrong type or shape")
        return _scalar({name: z[name]}, name, kind, where)

    version = scalar("format_version", "iu")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {version}, newer than this charrnn reads "
            f"({FORMAT_VERSION}); upgrade charrnn"
        )
    if version < 1:
        raise _damaged(f"{where} has an invalid format_version {version}")

    vocab = declared["vocab"]
    if vocab.ndim != 1 or vocab.dtype.kind != "U" or vocab.dtype.itemsize > 4:
        raise _damaged(f"{where}: 'vocab' must be a 1-D array of single characters")
    V = vocab.shape[0]
    if V == 0:
        raise _damaged(f"{where}: 'vocab' is empty or not sorted distinct characters")
    if V > N_CODE_POINTS:
        raise _damaged(f"{where}: 'vocab' declares {V:,} characters, more than Unicode has")

    documents = "file"  # formats 1 and 2, and a file that leaves it out
    if "documents" in declared:
        documents = scalar("documents", "U", max_chars=16)
        if documents not in DOCUMENTS:
            raise _damaged(f"{where}: unknown documents {documents[:20]!r}")
    V += documents != "file"  # a model of records has one more output: the end of a record

    cell, num_layers = "rnn", 1
    if version >= 2:
        for name in ("cell", "num_layers"):
            if name not in declared:
                raise _damaged(f"{where}: format 2 needs '{name}', which is missing")
        cell = scalar("cell", "U", max_chars=8)
        num_layers = scalar("num_layers", "iu")
        if cell not in CELLS or not 1 <= num_layers <= MAX_LAYERS:
            raise _damaged(f"{where}: unknown cell {cell[:20]!r} or bad num_layers {num_layers}")
    arch = _architecture(declared, cell, int(num_layers), V, where)
    want = param_shapes(arch)
    absent = [k for k in want if k not in declared]
    if absent:
        raise _damaged(
            f"{where}: a {arch.num_layers}-layer {arch.cell} needs '{absent[0]}', which is missing"
        )
    for k, shape in want.items():
        if declared[k].shape != shape:
            raise _damaged(
                f"{where}: '{k}' has shape {_said(declared[k]).split(' ', 1)[1]}, expected "
                f"{shape} for a {arch.cell} of hidden size {arch.hidden_size} and "
                f"{arch.vocab_size} characters"
            )
    dtypes = {declared[k].dtype for k in want}
    dtype = dtypes.pop()
    if dtypes or dtype not in (np.float32, np.float64):
        raise _damaged(f"{where}: weights must all be float32 or all float64")

    for name in ("config", "train_state"):
        m = declared.get(name)
        if m is not None and (m.shape != () or m.dtype.kind != "U"):
            raise _damaged(f"{where}: array '{name}' has the wrong type or shape")
        if m is not None and m.dtype.itemsize > 4 * MAX_TEXT:
            raise _damaged(f"{where}: '{name}' is longer than {MAX_TEXT:,} characters")
    step = declared.get("step")
    if step is not None and (step.shape != () or step.dtype.kind not in "iu"):
        raise _damaged(f"{where}: array 'step' has the wrong type or shape")
    h_carry = declared.get("h_carry")
    W = arch.state_width
    if h_carry is not None and (
        h_carry.ndim != 2 or h_carry.shape[1] != W or h_carry.shape[0] < 1 or h_carry.dtype != dtype
    ):
        raise _damaged(
            f"{where}: 'h_carry' is {h_carry.dtype} {_said(h_carry).split(' ', 1)[1]}, "
            f"expected {dtype} (B, {W})"
        )
    opt = [n for n in declared if n.startswith("opt.")]
    for n in opt:  # "opt.slot.param", shaped like the parameter
        param = n[4:].partition(".")[2]
        m = declared[n]
        if param not in want or m.shape != want[param] or m.dtype != dtype:
            raise _damaged(f"{where}: optimizer state '{n}' does not match the weights")
    extra = [n for n in ("step", "h_carry", "train_state", "documents") if n in declared]
    return [*want, "vocab", "config", "format_version", *extra, *opt], list(want)


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


def _from_arrays(arrays: dict, param_names: list[str], path: Path) -> Checkpoint:
    """The checkpoint made of arrays whose shapes and types _layout has checked: the checks of
    their values."""
    where = f"checkpoint '{path}'"
    vocab_arr = arrays["vocab"]
    if not _valid_text(vocab_arr):
        raise _damaged(f"{where}: 'vocab' must be a 1-D array of single characters")
    vocab = [c if c else "\0" for c in vocab_arr.tolist()]  # numpy stores NUL as ""
    # sorted and distinct: the ids of a text are found by binary search (data.encode)
    if vocab != sorted(set(vocab)):
        raise _damaged(f"{where}: 'vocab' is empty or not sorted distinct characters")

    params = {k: arrays[k] for k in param_names}
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
    if h_carry is not None and not np.isfinite(h_carry).all():
        raise _damaged(f"{where}: 'h_carry' contains NaN or infinite values")
    opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
    for k, v in opt_state.items():
        if not np.isfinite(v).all():
            raise _damaged(f"{where}: optimizer state 'opt.{k}' contains NaN or infinite values")
    documents = _scalar(arrays, "documents", "U", where) if "documents" in arrays else "file"
    return Checkpoint(
        params=params,
        vocab=vocab,
        config=config,
        step=int(step),
        h_carry=h_carry,
        opt_state=opt_state,
        train_state=train_state,
        format_version=int(arrays["format_version"]),
        documents=documents,
    )


def train_state_problem(ts: dict) -> str | None:
    """The key of the first value of a checkpoint's train_state that a resume could not use,
    or None. `load` leaves this to the resume (sample and eval need no train_state); each key
    is optional, and each one present must be of its type and range, so that no hand-edited
    value (a best loss of 10^400, a negative RNG word) fails later in a conversion."""

    def count(v) -> bool:
        return type(v) is int and 0 <= v < 2**63

    best = ts.get("best_val_loss")
    if best is not None and not (
        (type(best) is float and math.isfinite(best)) or (type(best) is int and abs(best) < 2**63)
    ):
        return "best_val_loss"
    for key in ("bad_evals", "chars_seen"):
        if key in ts and not count(ts[key]):
            return key
    progress = ts.get("time_progress", 0.0)
    if type(progress) not in (int, float) or not 0 <= progress <= 1:
        return "time_progress"
    if "rng_state" in ts:  # numpy's PCG64 state, which default_rng uses
        rng = ts["rng_state"]
        words = rng.get("state") if isinstance(rng, dict) else None
        if not (
            isinstance(words, dict)
            and rng.get("bit_generator") == "PCG64"
            and all(type(words.get(k)) is int and 0 <= words[k] < 2**128 for k in ("state", "inc"))
            and rng.get("has_uint32") in (0, 1)
            and type(rng.get("uinteger")) is int
            and 0 <= rng["uinteger"] < 2**32
        ):
            return "rng_state"
    return None


def _architecture(declared: dict, cell: str, num_layers: int, V: int, where: str) -> Arch:
    """Cell, layers and sizes as the file declares them (format 1: a one-layer vanilla RNN)."""
    Whh, G = declared["Whh"].shape, Arch(cell, 1, 1, V).gates
    if len(Whh) != 2 or Whh[-1] < 1 or Whh[0] != G * Whh[-1]:
        want = "a square (H, H)" if G == 1 else f"({G} H, H)"
        shown = Whh if len(str(Whh)) < 60 else f"a {len(Whh)}-D shape"
        raise _damaged(f"{where}: 'Whh' has shape {shown}, expected {want} for a {cell}")
    return Arch(cell=cell, num_layers=num_layers, hidden_size=Whh[1], vocab_size=V)
