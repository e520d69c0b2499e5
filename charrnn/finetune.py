"""Fine-tuning: a new run that starts from a trained model's weights (`train --init-from`).

What carries over and what starts fresh:
- the architecture (cell, layers, hidden size, dtype) comes from the checkpoint; a setting that
  would change it is refused (`architecture_overrides`);
- the vocabulary is the union of the checkpoint's and the corpus's: every character keeps its
  row of Wxh (its column: the input lookup), Why and by, and a character new to the model gets
  the rows a fresh model of the union would have (the same draws, from the run's seed); the
  recurrent weights Whh, bh and every layer above the first are copied whole;
- the optimizer's state, the step, the random generator and the best validation loss start
  fresh: it is a new run, whose config records `init_from` (info shows it).

A model of records (config `documents` line or paragraph) has one more output, the end of a
record (id len(vocab)); it maps to the other model's end of a record when both have one, and
is a new row otherwise. The corpus's ids are then read in the union vocabulary (`in_vocab`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn.config import Config, load_config_file, parse_set
from charrnn.errors import ConfigError
from charrnn.model import architecture, layer_names
from charrnn.runs import checkpoint_file

ARCH_KEYS = ("cell", "num_layers", "hidden_size", "dtype")  # what the checkpoint decides


def load_base(init_from: str | os.PathLike) -> tuple[ckpt_io.Checkpoint, Path]:
    """The checkpoint --init-from names (a run folder: its best.npz), and its absolute path."""
    file = checkpoint_file(init_from, "best.npz")
    return ckpt_io.load(file), file.resolve()


def architecture_overrides(
    base: ckpt_io.Checkpoint,
    config_file: str | Path | None,
    overrides: dict[str, Any],
    set_items,
) -> dict[str, Any]:
    """The settings that make a new run the checkpoint's architecture, to add to the command
    line's; ConfigError when the user gave one that differs (in a config file, a flag or
    --set): fine-tuning cannot change the shape of the weights it starts from."""
    arch = architecture(base.params)
    want = {
        "cell": arch.cell,
        "num_layers": arch.num_layers,
        "hidden_size": arch.hidden_size,
        "dtype": str(base.params["Whh"].dtype),
    }
    given: dict[str, Any] = {}
    if config_file is not None:
        given.update(load_config_file(config_file))
    given.update({k: v for k, v in overrides.items() if v is not None})
    given.update(dict(parse_set(item) for item in set_items))
    for key, value in want.items():
        if key in given and Config.from_dict({key: given[key]}).to_dict()[key] != value:
            described = (
                f"a {arch.num_layers}-layer {arch.cell} of hidden_size {arch.hidden_size} in "
                f"{want['dtype']}"
            )
            raise ConfigError(
                f"--init-from takes the architecture from its checkpoint ({described}), so "
                f"{key} {given[key]!r} cannot apply; leave it out, or train a new model "
                "without --init-from"
            )
    return want


def union_vocab(base: ckpt_io.Checkpoint, vocab: list[str]) -> list[str]:
    """The characters of both, sorted (a vocabulary is always sorted: data.build_corpus)."""
    return sorted(set(base.vocab) | set(vocab))


def _rows(old_vocab: list[str], old_end: bool, new_vocab: list[str], new_end: bool):
    """(new ids, old ids) of the outputs both models have: shared characters, and the end of
    a record when both are models of records."""
    where = {c: i for i, c in enumerate(old_vocab)}
    new_ids = [j for j, c in enumerate(new_vocab) if c in where]
    old_ids = [where[new_vocab[j]] for j in new_ids]
    if old_end and new_end:
        new_ids.append(len(new_vocab))
        old_ids.append(len(old_vocab))
    return np.array(new_ids, dtype=np.intp), np.array(old_ids, dtype=np.intp)


def start_from(
    params: dict[str, np.ndarray], base: ckpt_io.Checkpoint, vocab: list[str], records: bool
) -> dict[str, np.ndarray]:
    """params, a fresh model's weights over `vocab` (the union), with the base model's weights
    copied in: every recurrent array whole, and for each output both have, its column of Wxh
    (the input lookup) and its rows of Why and by. The others keep their fresh values."""
    new, old = _rows(base.vocab, base.documents != "file", vocab, records)
    Wxh = layer_names(0)[0]
    for name, value in base.params.items():
        target = params[name]
        if name == Wxh:
            target[:, new] = value[:, old]  # (G H, V): column c is character c's input
        elif name in ("Why", "by"):
            target[new] = value[old]  # (V, H), (V,): row c scores character c
        else:
            target[...] = value
    return params
