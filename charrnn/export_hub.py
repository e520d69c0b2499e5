"""A folder ready to upload to a model hub (the Hugging Face hub's layout): model.safetensors,
config.json and a README.md model card whose YAML front matter says what the hub indexes.

The card says what the checkpoint knows and says plainly what it does not: a checkpoint keeps
the corpus's characters (the vocabulary), the training config, the steps, the characters seen
and the best validation loss, and the run folder beside it the last validation; it does not
keep the corpus's name or size, so the card leaves those, and the license, for the user to fill
in. The facts come from charrnn.info's `describe`, the one home for what a checkpoint holds.
The folder is built in a temporary folder beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from charrnn import __version__, jsonout
from charrnn.atomic import default_file_mode
from charrnn.info import describe, show_vocab

HUB_FILES = ("model.safetensors", "config.json", "README.md")
SETTINGS = (  # the training settings the card's table shows; the front matter has them all
    ("cell", "cell"),
    ("num_layers", "layers"),
    ("hidden_size", "hidden size"),
    ("dropout", "dropout"),
    ("seq_length", "sequence length (BPTT)"),
    ("batch_size", "batch size"),
    ("optimizer", "optimizer"),
    ("learning_rate", "learning rate"),
    ("grad_clip", "gradient clipping"),
    ("dtype", "dtype"),
    ("val_fraction", "validation fraction"),
)


def hub_files(checkpoint: Path, name: str, safetensors: bytes) -> dict[str, bytes]:
    """{file name: content} of the folder for the checkpoint file (read again here, with its
    run folder's metrics.jsonl), the model called `name` in its card."""
    info = describe(checkpoint)
    config = {
        "library_name": "charrnn",
        "model_type": "charrnn",
        "charrnn_version": __version__,
        **{k: info[k] for k in ("format_version", "cell", "num_layers", "hidden_size")},
        **{k: info[k] for k in ("vocab_size", "dtype", "parameters", "step", "best_val_bpc")},
        "vocab": info["vocab"],
        "training": info["config"],
    }
    return {
        "model.safetensors": safetensors,
        "config.json": (_json(config) + "\n").encode(errors="backslashreplace"),
        "README.md": model_card(info, name).encode(errors="backslashreplace"),
    }


def _json(obj: Any) -> str:
    return json.dumps(jsonout.finite(obj), indent=2, ensure_ascii=False, allow_nan=False)


def model_card(info: dict[str, Any], name: str) -> str:
    """The README.md: YAML front matter, then what the model is, how it was trained, how to
    load and sample it."""
    bpc = info["best_val_bpc"]
    front: dict[str, Any] = {
        "library_name": "charrnn",
        "tags": ["charrnn", "character-level", info["cell"], "recurrent-neural-network", "numpy"],
        "pipeline_tag": "text-generation",
        "corpus": {
            "name": None,  # not recorded in a checkpoint
            "characters": None,
            "distinct_characters": info["vocab_size"],
            "vocabulary": "".join(info["vocab"]),
        },
        "training": {
            "steps": info["step"],
            "characters_seen": info["chars_seen"],
            "validation_bpc": {"best": _round(bpc), "last": _round(info["last_val_bpc"])},
            "settings": info["config"],
        },
    }
    if bpc is not None:
        front["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "character-level modelling"},
                        "dataset": {"name": "the training corpus's held-out part", "type": "text"},
                        "metrics": [
                            {
                                "type": "bpc",
                                "name": "validation bits per character",
                                "value": _round(bpc),
                            }
                        ],
                    }
                ],
            }
        ]
    license_line = (
        "license: null  # fill in before uploading, e.g. mit or cc-by-4.0: the terms of the "
        "model and of its corpus\n"
    )
    matter = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{license_line}{matter}---\n\n{_card_body(info, name)}"


def _round(bpc: float | None) -> float | None:
    return None if bpc is None else round(bpc, 4)


def _card_body(info: dict[str, Any], name: str) -> str:
    cfg, bpc, last = info["config"], info["best_val_bpc"], info["last_val_bpc"]
    layers = f"{info['num_layers']}-layer {info['cell'].upper()}"
    seen = info["chars_seen"]
    rows = "\n".join(f"| {label} | `{cfg[k]}` |" for k, label in SETTINGS if k in cfg)
    val = "not measured" if bpc is None else f"{bpc:.4f} bpc (best)"
    fraction = cfg.get("val_fraction")
    held_out = (
        f"on the last {100 * fraction:g}% of the corpus, held out"
        if isinstance(fraction, (int, float)) and fraction > 0
        else "off"
    )
    if last is not None and bpc is not None and abs(last - bpc) > 5e-5:
        val += f", {last:.4f} bpc at step {info['last_val_step']:,} (last)"
    return f"""# {name}

A character-level language model: a {layers} of hidden size {info["hidden_size"]}
({info["parameters"]:,} parameters, {info["dtype"]}), trained with
charrnn (recurrent networks in NumPy). It reads and writes one character at a time, over a
vocabulary of {info["vocab_size"]} characters.

## Corpus

The checkpoint does not record which corpus it was trained on, nor its size: fill them in here
and in the front matter (`corpus.name`, `corpus.characters`). What it does record is the
corpus's {info["vocab_size"]} distinct characters:

    {show_vocab(info["vocab"], limit=200)}

## Training

{info["step"]:,} steps{"" if seen is None else f", {seen:,} characters seen"}; validation
{held_out}: {val}.

| setting | value |
|---|---|
{rows}

Every setting is in the front matter (`training.settings`) and in `config.json`.

## Use

With charrnn (0.2.0 or later) installed, this folder is a checkpoint:

```bash
charrnn sample --checkpoint {name} --length 300 --temperature 0.8
charrnn eval your_text.txt --checkpoint {name}      # bits per character on a text
```

```python
import charrnn

model = charrnn.load("{name}")  # or "{name}/model.safetensors"
print(model.sample(length=300, temperature=0.8, rng_seed=1))
print(model.evaluate(open("your_text.txt").read()).bpc)
```

Without charrnn, `model.safetensors` holds the weights (`Wxh`, `Whh`, `bh`, ..., `Why`, `by`)
and its metadata the vocabulary, cell and layers; charrnn's docs/export.md has a sampler of a
screen of NumPy that reads it.

## Files

- `model.safetensors`: the weights, in {info["dtype"]}; the vocabulary, cell, layers and config
  in its metadata
- `config.json`: the architecture, the vocabulary and the training config
- `README.md`: this card

## License

Not chosen yet: fill in `license` in the front matter (the terms of the model, and of the
corpus it learned from) before uploading.
"""


def replace_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Make `folder` hold exactly `files`: written into a temporary folder beside it, fsynced,
    then renamed into place (an old folder is renamed aside first and deleted after; a crash
    between the two renames leaves it as `.NAME.*.tmp.old` beside the target)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp / name, default_file_mode())
        os.chmod(tmp, default_file_mode() | (default_file_mode() & 0o444) >> 2)  # x where r
        if folder.is_dir():
            old = tmp.with_name(tmp.name + ".old")
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
