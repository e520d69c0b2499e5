"""The Python API: train a model, load one, sample from it and score text with it.

    import charrnn
    result = charrnn.train("corpus.txt", hidden_size=256, max_time=60, out="runs/nb")
    model = charrnn.load("runs/nb")              # a run folder or a .npz
    print(model.sample("ROMEO:", length=200, temperature=0.8, rng_seed=1))
    print(model.evaluate(open("held_out.txt").read()).bpc)

The `train`, `sample` and `eval` commands are thin layers over these functions. Nothing here
prints unless asked (`train(..., quiet=False)` writes progress lines on stderr; or give it a
`reporter`); problems are the library's own exceptions (charrnn.errors, base class
CharRNNError). The loop itself is charrnn/train.py, generation charrnn/sample.py, scoring a
text charrnn/evaluate.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn import checks, distributed
from charrnn.config import check_settings
from charrnn.data import encode, record_ids
from charrnn.dynamic import Adapter, Settings, gradient_rms
from charrnn.errors import ArgumentError, ConfigError, DataError
from charrnn.evaluate import Block, EvalResult, char_records, evaluate, known_ids, result, score
from charrnn.model import Arch, architecture
from charrnn.report import PlainReporter
from charrnn.runs import choose_checkpoint, special_file
from charrnn.sample import (
    Sample,
    beam_search,
    check_beam_memory,
    check_sample_memory,
    check_stops,
    collect,
    decode,
    encode_prime,
    finish_samples,
    generate,
    write_samples,
)
from charrnn.train import TrainResult, train_corpus

UNKNOWN = ("error", "skip")  # what to do with characters not in the vocabulary
END_NAME = "<end>"  # a record's end, in per-character records (every character is one long)


def check_setting(key: str, value: Any) -> None:
    """ConfigError unless `value` is valid for config key `key` (docs/config.md): the
    check a command-line flag gets before training starts."""
    check_settings({key: value})


def train(
    corpus: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    glob: str | Sequence[str] = (),
    config: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    reporter: Any = None,
    encode_bar: Any = None,
    set_items: Iterable[str] = (),
    **settings: Any,
) -> TrainResult:
    """Train a model on `corpus`, as `charrnn train` does: a text file ("-": standard input),
    a folder (its files, recursively, chosen by the fnmatch patterns `glob`), or a list of them;
    each file is a document (config `documents`: or each line or paragraph a record).

    settings: config keys, e.g. hidden_size=256, max_time=60 (None: not given); they override
    the YAML file `config`, and `set_items` ("key=value" strings, like --set) override them.
    out: the run folder (default: a new runs/<date-time>/). resume: a run folder or checkpoint
    to continue. A folder `out` that already holds a run is a TrainingError unless `resume`
    continues it or overwrite=True deletes it first. A bad setting raises ConfigError before
    anything is written.

    Progress goes to `reporter`, an object with the methods of charrnn.report.NullReporter
    (start, step, sample, end); none by default, plain log lines on stderr with quiet=False
    (report.PlainReporter). `encode_bar`, a callback progress(phase, done, total) that is also
    a context manager, is shown the encoding of a large corpus into its cache. Under MPI both
    are used on rank 0 alone.

    Started by mpiexec or srun as several processes, each process trains its share of every
    batch (docs/scaling-out.md); run such a script with `python -m mpi4py script.py`, so that
    an error on one process ends them all.
    """
    many = not isinstance(corpus, (str, os.PathLike, bytes)) and isinstance(corpus, Sequence)
    sources = [checks.path("corpus", c) if c != "-" else c for c in (corpus if many else [corpus])]
    if not sources:
        raise ArgumentError("corpus must name a text file, a folder or -; the list is empty")
    globs = checks.strings("glob", [glob] if isinstance(glob, str) else glob)
    config, out = checks.optional_path("config", config), checks.optional_path("out", out)
    resume = checks.optional_path("resume", resume)
    overwrite, quiet = checks.boolean("overwrite", overwrite), checks.boolean("quiet", quiet)
    set_items = checks.strings("set_items", set_items)
    what = None if config is None else special_file(config)
    if what is not None:  # opening a FIFO would wait for a writer (runs.special_file)
        raise ConfigError(f"config file '{config}' is {what}, not a file; give a YAML file")
    if reporter is None and not quiet:
        reporter = PlainReporter()
    if not distributed.world().root:  # rank 0 reports
        reporter = encode_bar = None
    return train_corpus(
        [os.fspath(c) for c in sources] if many else os.fspath(sources[0]),
        globs=globs,
        config_file=config,
        overrides=settings,
        set_items=set_items,
        out=out,
        resume=resume,
        overwrite=overwrite,
        reporter=reporter,
        encode_bar=encode_bar,
    )


def load(path: str | os.PathLike | None = None) -> Model:
    """The model in a checkpoint (.npz or .safetensors) or a run folder (its best.npz; a folder
    that `charrnn export --format hf` wrote: its model.safetensors). Without a path: the one
    $CHARRNN_CHECKPOINT names, else the most recently written runs/*/best.npz."""
    file, chosen_by = choose_checkpoint(checks.optional_path("path", path))
    ckpt = ckpt_io.load(file)
    return Model(
        ckpt.params,
        ckpt.vocab,
        ckpt.config,
        ckpt.step,
        file,
        ckpt.train_state,
        chosen_by,
        ckpt.documents,
        ckpt.opt_state,
    )


@dataclass
class Model:
    """A trained model: its weights, vocabulary, training config and step, as `load` found it."""

    params: dict[str, np.ndarray]
    vocab: list[str]  # the characters in id order
    config: dict[str, Any]  # the config it was trained with
    step: int  # updates it was trained for
    path: Path | None = None  # the checkpoint file
    train_state: dict = field(default_factory=dict)
    chosen_by: str = "given"  # how load found it: "given", "env" (CHARRNN_CHECKPOINT), "latest"
    documents: str = "file"  # "line" or "paragraph": a model of records, which ends them
    opt_state: dict = field(default_factory=dict)  # the optimiser's slots, "slot.param"

    @property
    def records(self) -> str | None:
        """The kind of records a model of records was trained on ("line", "paragraph"), or
        None. Its end-of-record symbol is id len(vocab), one output past the characters."""
        return None if self.documents == "file" else self.documents

    @property
    def _names(self) -> list[str]:
        """What each output is called in per-character records: the characters, and END_NAME."""
        return self.vocab + [END_NAME] if self.records else self.vocab

    @property
    def arch(self) -> Arch:
        """Cell, layers, hidden size and vocabulary size."""
        return architecture(self.params)

    def sample(
        self,
        seed: str = "",
        length: int = 500,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        argmax: bool = False,
        num_samples: int = 1,
        rng_seed: int | None = None,
        unknown: str = "error",
        echo_seed: bool = True,
        stop: Iterable[str] = (),
        out: TextIO | None = None,
        keep: bool = True,
    ) -> str | list[str] | None:
        """Generate `length` characters after reading the prime text `seed` (the command's
        --seed): the prime text and its continuation (only the continuation with
        echo_seed=False); a list of num_samples strings when num_samples > 1. The same rng_seed
        gives the same text. Characters of the prime text not in the vocabulary are an error
        (DataError), or dropped with unknown="skip". Each sample ends at the first of the `stop`
        strings it draws (which is left out), and a model trained on records (config
        `documents`) ends it at the end of a record. With `out` (a text file such as
        sys.stdout) the samples are also written there as `charrnn sample` prints them, the
        first one as it is drawn; with out and keep=False nothing is kept and None is returned,
        so a long sample streams in constant memory. `samples` says why each one ended."""
        found = self.samples(
            seed,
            length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            argmax=argmax,
            num_samples=num_samples,
            rng_seed=rng_seed,
            unknown=unknown,
            echo_seed=echo_seed,
            stop=stop,
            out=out,
            keep=keep,
        )
        if found is None:
            return None
        texts = [s.text for s in found]
        return texts[0] if num_samples == 1 else texts

    def samples(
        self,
        seed: str = "",
        length: int = 500,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        argmax: bool = False,
        num_samples: int = 1,
        rng_seed: int | None = None,
        unknown: str = "error",
        echo_seed: bool = True,
        stop: Iterable[str] = (),
        out: TextIO | None = None,
        keep: bool = True,
    ) -> list[Sample] | None:
        """`sample`'s samples with why each one ended (Sample.ended: "length", "stop" or
        "end"), a list; None with out and keep=False when no stop strings are given (nothing
        kept: see `sample`). Every argument is checked (checks.py) and the memory it needs
        estimated before anything is drawn or written."""
        _check_sample(seed, length, temperature, top_k, top_p, num_samples, rng_seed, unknown)
        for name, flag in (("argmax", argmax), ("echo_seed", echo_seed), ("keep", keep)):
            checks.boolean(name, flag)
        if out is not None and not callable(getattr(out, "write", None)):
            raise ArgumentError(f"out must be a text file (with a write method), not {out!r:.60}")
        check_sample_memory(self.params, length, num_samples, keep or out is None)
        stops = check_stops(stop)
        prime_ids, _ = encode_prime(seed, self.vocab, unknown)
        if self.records:  # a record begins after its E, read from a zero state
            prime_ids = np.concatenate([[len(self.vocab)], prime_ids]).astype(np.intp)
        steps = generate(
            self.params,
            prime_ids,
            length,
            rng_seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            argmax=argmax,
            num_samples=num_samples,
        )
        prefix = seed if echo_seed else ""
        if stops or self.records:
            return finish_samples(
                steps,
                self.vocab,
                num_samples=num_samples,
                prefix=prefix,
                stops=stops,
                out=out,
                records=self.records,
            )
        if out is not None:
            texts = write_samples(
                steps, self.vocab, out, num_samples=num_samples, prefix=prefix, length=length,
                keep=keep,
            )  # fmt: skip
        else:
            texts = collect(steps, self.vocab, num_samples, prefix, length)
        return None if texts is None else [Sample(t, "length") for t in texts]

    def beam_search(
        self,
        seed: str = "",
        length: int = 500,
        *,
        beam: int = 5,
        num_results: int = 1,
        unknown: str = "error",
        echo_seed: bool = True,
    ) -> list[tuple[str, float]]:
        """The num_results most likely continuations of `length` characters after the prime
        text `seed` that a beam of width `beam` finds, best first: (text, log-probability in
        nats given the prime text) pairs, each text the prime text and its continuation (only
        the continuation with echo_seed=False). Deterministic; see `sample.beam_search`."""
        seed, unknown = checks.text("seed", seed), checks.choice("unknown", unknown, UNKNOWN)
        length, beam = checks.count("length", length), checks.count("beam", beam)
        if checks.count("num_results", num_results) > beam:
            raise ArgumentError(
                f"beam={beam} keeps {beam} continuations; ask for num_results <= {beam}, or "
                "widen the beam"
            )
        checks.boolean("echo_seed", echo_seed)
        check_beam_memory(self.params, length, beam)
        prime_ids, _ = encode_prime(seed, self.vocab, unknown)
        ids, scores = beam_search(self.params, prime_ids, length, beam, num_results)
        prefix = seed if echo_seed else ""
        return [
            (prefix + decode(row, self.vocab), float(s)) for row, s in zip(ids, scores, strict=True)
        ]

    def evaluate(
        self,
        text: str,
        *,
        unknown: str = "skip",
        name: str = "text",
        per_char: Callable[[dict[str, Any]], None] | None = None,
        top: int = 3,
    ) -> EvalResult:
        """Score text exactly from a zero state (loss, bpc, perplexity, as `charrnn eval`).
        Characters not in the vocabulary are skipped and counted, or with unknown="error" a
        DataError; `name` is how that error names the text. `per_char`, when given, is called
        with each scored character's record (as `char_scores` yields them, `top` guesses each)
        during the same single pass."""
        text, name, unknown, top = _check_scoring(text, name, unknown, top, per_char)
        each = _records_to(per_char, self._names, top)
        return evaluate(
            self.params,
            self.vocab,
            text,
            unknown=unknown,
            name=name,
            each=each,
            records=self.records,
        )

    def char_scores(self, text: str, *, top: int = 3) -> Iterator[dict[str, Any]]:
        """For each character of text in the vocabulary (others are skipped, as `evaluate`
        skips them): {"char", "p": the probability the model gave it, "bits": -log2 p, "top":
        the `top` likeliest characters as [char, p] pairs}. The same single pass from a zero
        state as `evaluate` (evaluate.score), float64 retry of an overflowing block included.
        Its arguments are checked when the first record is asked for."""
        text, top = checks.text("text", text), checks.count("top", top)
        if self.records:  # as `evaluate` reads it: records, each end scored too
            ids = record_ids(text, self.vocab, self.records)[0]
            for block in score(self.params, ids, resets=ids == len(self.vocab)):
                skip = 1 if block.start == 0 else 0  # the first E is read, not scored
                yield from char_records(block, self._names, top)[skip:]
            return
        ids, _ = encode(text, self.vocab)
        for block in score(self.params, ids):
            yield from char_records(block, self._names, top)

    def adapt(
        self,
        text: str,
        settings: Settings | None = None,
        *,
        unknown: str = "skip",
        name: str = "text",
        per_char: Callable[[dict[str, Any]], None] | None = None,
        top: int = 3,
    ) -> tuple[Model, EvalResult]:
        """Dynamic evaluation (charrnn.dynamic, docs/dynamic.md): score text while the weights
        adapt to it, each character by the weights adapted to the characters before it.
        Returns the adapted model (a new Model: this one is unchanged) and the score, which
        `evaluate` gives without adapting. Unknown characters and `per_char` as in `evaluate`:
        each record from the weights of its moment."""
        text, name, unknown, top = _check_scoring(text, name, unknown, top, per_char)
        if settings is not None and not isinstance(settings, Settings):
            raise ArgumentError(
                f"settings must be a charrnn.dynamic.Settings, not {settings!r:.60}"
            )
        ids, n_unknown = known_ids(text, self.vocab, name, unknown)
        each = _records_to(per_char, self.vocab, top)
        adapter = self.adapter(settings)
        total = 0.0
        for block in adapter.read(ids):
            total += block.total
            if each is not None:
                each(block)
        adapted = dataclasses.replace(self, params=adapter.adapted(), path=None)
        return adapted, result(total, len(ids), n_unknown)

    def adapter(self, settings: Settings | None = None) -> Adapter:
        """A copy of the weights that adapts as it scores (charrnn.dynamic.Adapter), with the
        gradient statistics of this model's optimiser state."""
        if self.records:
            raise DataError(
                f"dynamic evaluation reads a text as one stream, and this is a model of "
                f"{self.records} records (documents: {self.records}); score it without --dynamic"
            )
        rms = gradient_rms(self.opt_state, self.config, self.step)
        return Adapter(self.params, settings or Settings(), rms)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as a checkpoint (atomically): its weights, vocabulary, config, step
        and optimiser state, without the training's carried state, so it samples, scores and
        adapts as the original does but is not a run to resume."""
        ckpt_io.save(
            ckpt_io.Checkpoint(
                params=self.params,
                vocab=self.vocab,
                config=self.config,
                step=self.step,
                opt_state=self.opt_state,
                train_state=self.train_state,
                documents=self.documents,
            ),
            path,
            then="then try again",
        )


def _check_scoring(text, name, unknown, top, per_char) -> tuple[str, str, str, int]:
    """Model.evaluate's and Model.adapt's values, checked."""
    text, name = checks.text("text", text), checks.text("name", name)
    unknown, top = checks.choice("unknown", unknown, UNKNOWN), checks.count("top", top)
    if per_char is not None and not callable(per_char):
        raise ArgumentError(f"per_char must be a function of one record, not {per_char!r:.60}")
    return text, name, unknown, top


def _records_to(per_char, vocab: list[str], top: int) -> Callable[[Block], None] | None:
    """A function that hands each character's record of a block to per_char (None: none)."""
    if per_char is None:
        return None

    def each(block: Block) -> None:
        for record in char_records(block, vocab, top):
            per_char(record)

    return each


def _check_sample(seed, length, temperature, top_k, top_p, num_samples, rng_seed, unknown):
    """Model.sample's values, each checked as the `sample` command checks its flags."""
    checks.text("seed", seed)
    checks.count("length", length, low=0)  # 0: the seed alone
    checks.number("temperature", temperature, above=0)
    checks.optional_count("top_k", top_k)
    if top_p is not None:
        checks.number("top_p", top_p, above=0, at_most=1)
    checks.count("num_samples", num_samples)
    checks.optional_count("rng_seed", rng_seed)
    checks.choice("unknown", unknown, UNKNOWN)
