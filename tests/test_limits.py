"""Limits that mean what they say: a limit the user gives turns off the built-in defaults of the
others (and a resumed run's), limits given together all hold, and the start line says which will
stop the run (docs/texts.md "Limits")."""

from __future__ import annotations

from pathlib import Path

import yaml
from helpers import TINY, cli

from charrnn.config import DEFAULTS, resolve_config


def test_a_given_limit_turns_off_the_defaults_of_the_others(tmp_path):
    assert resolve_config(None).max_steps == DEFAULTS["max_steps"] == 2000  # none given
    cfg = resolve_config(None, {"max_time": 60})
    assert (cfg.max_steps, cfg.max_epochs, cfg.max_time) == (0, 0.0, 60.0)
    cfg = resolve_config(None, {}, ["max_epochs=3"])
    assert (cfg.max_steps, cfg.max_epochs, cfg.max_time) == (0, 3.0, 0.0)
    both = tmp_path / "c.yaml"
    both.write_text("max_steps: 500\n")
    cfg = resolve_config(both, {"max_time": 60})  # a file's limit and a flag's: both hold
    assert (cfg.max_steps, cfg.max_time) == (500, 60.0)
    # a resumed run's limits are replaced the same way when a new one is given
    base = {**DEFAULTS, "max_steps": 40}
    assert resolve_config(None, {"max_time": 5}, base=base).max_steps == 0
    assert resolve_config(None, {}, base=base).max_steps == 40


def test_the_start_line_says_which_limit_stops_the_run(corpus_file):
    alone = cli("train", corpus_file, *TINY, "--max-time", 0.05, "--out", "a")
    assert alone.exit_code == 0, alone.stderr
    assert "; stops after 0.05s (max_time)\n" in alone.stderr
    assert yaml.safe_load(Path("a/config.yaml").read_text())["max_steps"] == 0
    both = cli("train", corpus_file, *TINY, "--max-steps", 3, "--max-time", 600, "--out", "b")
    assert both.exit_code == 0, both.stderr
    assert "stops at step 3 (max_steps) or after 600s (max_time), whichever comes first" in (
        both.stderr
    )
    assert "done: 3 steps" in both.stderr
    epochs = cli("train", corpus_file, *TINY, "--max-epochs", 0.1, "--out", "c", "--json")
    assert epochs.exit_code == 0, epochs.stderr
    assert "(max_epochs 0.1)" in epochs.stderr


def test_resume_with_a_time_limit_is_not_stopped_by_the_old_step_limit(corpus_file):
    first = cli("train", corpus_file, *TINY, "--max-steps", 4, "--out", "run", "-q")
    assert first.exit_code == 0, first.stderr
    again = cli("train", corpus_file, "--resume", "run", "--max-steps", 6, "-q", "--json")
    assert again.exit_code == 0 and '"steps": 6' in again.stdout
    timed = cli("train", corpus_file, "--resume", "run", "--max-time", 0.05)
    assert timed.exit_code == 0, timed.stderr
    assert "already reached" not in timed.stderr and "stops after 0.05s (max_time)" in timed.stderr
