"""A key given twice in one config file is refused; a key a later ``--config`` changes is named (``config_layers``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from harness import CONFIGS, DEMO

from lit_lora.commands.config_layers import DuplicateKeyError, leaves, overrides

pytestmark = pytest.mark.faults


def fit_exit(*args: str) -> SystemExit:
    from lit_lora.commands import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", *args, "--print_config"])
    return stop.value


@pytest.mark.parametrize("extra, key, first_line_text", [
    ("trainer:\n  max_steps: 2\n", "trainer", "trainer:"),  # a whole section again: the first's keys would go
    ("data:\n  init_args:\n    batch_size: 4\n", "data", "data:"),
], ids=["trainer", "data"])
def test_a_section_given_twice_is_refused_with_both_lines(tmp_path, extra, key, first_line_text):
    doubled = tmp_path / "doubled.yaml"
    doubled.write_text(Path(DEMO).read_text() + extra)
    lines = doubled.read_text().splitlines()
    first = lines.index(first_line_text) + 1
    second = len(lines) - extra.count("\n") + 1
    stop = fit_exit("--config", str(doubled))
    assert str(stop.code) == (f"lit-lora: {doubled}: line {second}: key {key!r} given twice in one mapping (first at "
                              f"line {first}); jsonargparse would keep only the second, dropping the first's "
                              f"settings: give each key once")


def test_a_key_given_twice_inside_a_list_item_is_refused(tmp_path):
    path = tmp_path / "callbacks.yaml"
    path.write_text("trainer:\n  callbacks:\n    - class_path: a.B\n      init_args:\n        x: 1\n        x: 2\n")
    with pytest.raises(DuplicateKeyError, match=r"line 6: key 'x' given twice in one mapping \(first at line 5\)"):
        leaves(str(path))


def test_leaves_are_dotted_keys_with_their_values_and_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  precision: bf16-mixed\n  devices: [0, 1]\nmodel:\n  init_args:\n    lr: 1.0e-4\n")
    assert leaves(str(path)) == {"trainer.precision": ("bf16-mixed", 2), "trainer.devices": ([0, 1], 3),
                                 "model.init_args.lr": (1e-4, 6)}


def test_a_later_config_that_changes_a_value_is_named_and_an_equal_one_is_not(tmp_path):
    base, fragment = tmp_path / "base.yaml", tmp_path / "fragment.yaml"
    base.write_text("trainer:\n  precision: 16-mixed\n  max_steps: 10\n")
    fragment.write_text("trainer:\n  max_steps: 10\n  precision: bf16-mixed\n  devices: 2\n")
    assert overrides([str(base), str(fragment)]) == [
        f"[lit-lora] {fragment}: line 3 sets trainer.precision to bf16-mixed ({base}: line 2 gave 16-mixed)"]


def test_a_strategy_fragment_overriding_a_reference_configs_precision_is_said_on_stderr(caplog):
    """The bundled DeepSpeed fragment sets bf16-mixed over the classifier config's 16-mixed: said, not silent."""
    config = str(CONFIGS / "nli" / "llama3_8b_qlora_classifier_multinli.yaml")
    fragment = str(CONFIGS / "strategies" / "deepspeed_zero2.yaml")
    assert leaves(config)["trainer.precision"][0] == "16-mixed"
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        assert fit_exit("--config", config, "--config", fragment).code in (0, None)
    notes = [r.getMessage() for r in caplog.records if "sets trainer.precision" in r.getMessage()]
    assert notes == [f"[lit-lora] {fragment}: line {leaves(fragment)['trainer.precision'][1]} sets trainer.precision "
                     f"to bf16-mixed ({config}: line {leaves(config)['trainer.precision'][1]} gave 16-mixed)"]
