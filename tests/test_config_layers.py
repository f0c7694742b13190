"""A key given twice in one config file is refused; a value a later ``--config`` changes is named, whether an
earlier file or the command line gave it (``config_layers``)."""

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
    assert overrides(["--config", str(base), "--config", str(fragment)]) == [
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


def override_notes(caplog, *args: str) -> list[str]:
    """The lines ``lit-lora fit <args> --print_config`` logs for values a later ``--config`` changes."""
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        assert fit_exit(*args).code in (0, None)
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("[lit-lora] ") and " sets " in
            r.getMessage()]


def test_a_later_config_over_a_command_line_value_names_the_command_line(tmp_path, caplog):
    """jsonargparse applies the command line in order: a --config after --trainer.max_steps 2 wins over it."""
    more = tmp_path / "more.yaml"
    more.write_text("trainer:\n  max_steps: 7\n")
    assert override_notes(caplog, "--config", DEMO, "--trainer.max_steps", "2", "--config", str(more)) == [
        f"[lit-lora] {more}: line 2 sets trainer.max_steps to 7 (the command line gave --trainer.max_steps 2)"]
    assert overrides(["--config", DEMO, "--trainer.max_steps", "2", "--data.batch_size=4"]) == []  # meant to override
    assert overrides(["--data.batch_size", "4", "--config", str(more), "--config", DEMO]) == [  # by line
        f"[lit-lora] {DEMO}: line {leaves(DEMO)['trainer.max_steps'][1]} sets trainer.max_steps to 200 ({more}: "
        f"line 2 gave 7)",
        f"[lit-lora] {DEMO}: line {leaves(DEMO)['data.init_args.batch_size'][1]} sets data.init_args.batch_size to 16 "
        f"(the command line gave --data.batch_size 4)"]


def test_a_section_over_a_value_and_a_value_over_a_section_are_named(tmp_path, caplog):
    """``logger: false`` / ``strategy: ddp``, then the wandb and DeepSpeed sections, then the ddp fragment again."""
    plain = tmp_path / "plain.yaml"
    plain.write_text("trainer:\n  logger: false\n  strategy: ddp\n")
    zero2, wandb, ddp = (str(CONFIGS / name) for name in ("strategies/deepspeed_zero2.yaml", "loggers/wandb.yaml",
                                                           "strategies/ddp.yaml"))
    deepspeed = "lightning.pytorch.strategies.DeepSpeedStrategy"
    notes = override_notes(caplog, *(a for f in (DEMO, str(plain), zero2, wandb, ddp) for a in ("--config", f)))
    assert [n for n in notes if "strategy" in n or "logger" in n] == [
        f"[lit-lora] {zero2}: line {leaves(zero2)['trainer.strategy.class_path'][1]} sets trainer.strategy.class_path "
        f"to {deepspeed} ({plain}: line 3 gave trainer.strategy: ddp)",
        f"[lit-lora] {wandb}: line {leaves(wandb)['trainer.logger.class_path'][1]} sets trainer.logger.class_path to "
        f"lit_lora.cluster.tracking.WandbRun ({plain}: line 2 gave trainer.logger: false)",
        f"[lit-lora] {ddp}: line {leaves(ddp)['trainer.strategy'][1]} sets trainer.strategy to ddp ({zero2}: line "
        f"{leaves(zero2)['trainer.strategy.class_path'][1]} gave trainer.strategy.class_path: {deepspeed})"]
    # settings for the class a value names, or that class again, replace nothing
    assert overrides(["--model.adapter", "lit_lora.adapters.LoRA", "--config", DEMO]) == []
