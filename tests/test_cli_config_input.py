"""A config file or model directory of the wrong kind, and a command's own required option left out: one line
that names the file or the option, a usage exit status, no traceback."""

from __future__ import annotations

import pytest
from harness import DEMO, cli_exit


def test_binary_config_file_is_named_not_a_unicode_traceback(tmp_path, capsys):
    binary = tmp_path / "model.ckpt"
    binary.write_bytes(b"\x80\x02\xff\xfe\x00PK")
    for command in ("fit", "estimate"):
        status, _ = cli_exit([command, "--config", str(binary)])
        err = capsys.readouterr().err
        assert status == 2, command
        assert f"{binary}: not a YAML text file" in err, err
        assert f"lit-lora {command} --config FILE" in err  # the command's own usage line


def test_yaml_that_is_not_a_mapping_names_the_file(tmp_path, capsys):
    for name, text, kind in (("words.yaml", "hello world\n", "str"), ("list.yaml", "- a\n- b\n", "list")):
        path = tmp_path / name
        path.write_text(text)
        status, _ = cli_exit(["fit", "--config", str(path)])
        err = capsys.readouterr().err
        assert status == 2
        assert f"error: {path}: not a config: its YAML is a {kind}" in err, err


def test_a_commands_required_option_is_not_called_a_config_section(capsys):
    status, _ = cli_exit(["merge", "--config", DEMO])
    err = capsys.readouterr().err
    assert status == 2
    assert "lit-lora merge: give --adapter_dir" in err, err
    assert "section" not in err


def test_a_class_argument_left_unset_is_named_by_its_full_key(tmp_path, capsys):
    """A config whose model has no ``model_name_or_path``: not a missing section, nor a command-line option."""
    import yaml

    config = yaml.safe_load(open(DEMO))
    del config["model"]["init_args"]["model_name_or_path"]
    (tmp_path / "nomodel.yaml").write_text(yaml.safe_dump(config))
    status, _ = cli_exit(["fit", "--config", str(tmp_path / "nomodel.yaml")])
    err = capsys.readouterr().err
    assert status == 2
    assert "error: lit-lora: model.init_args.model_name_or_path is not set: give it under model: init_args: in " \
        "the config, or as --model.init_args.model_name_or_path" in err, err


def test_model_directory_without_config_json_is_one_line(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    status, message = cli_exit(["fit", "--config", DEMO, "--model.init_args.model_name_or_path", str(empty)])
    assert status == 1
    assert message.startswith(f"lit-lora: IncompatibleConfig: model.init_args.model_name_or_path {empty}: "
                              "a directory without config.json"), message


def test_model_config_json_transformers_cannot_read_is_one_line(tmp_path):
    model = tmp_path / "odd-model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    status, message = cli_exit(["fit", "--config", DEMO, "--model.init_args.model_name_or_path", str(model)])
    assert status == 1
    assert f"model.init_args.model_name_or_path {model}: its config.json cannot be read" in message, message


@pytest.mark.parametrize("given", ["missing.yaml", "."])
def test_a_sweep_config_that_is_no_file_is_a_usage_error_as_for_fit(tmp_path, capsys, given):
    """Status 2 and one line, as ``lit-lora fit`` says it; it was status 1 and every point's refusal."""
    status, _ = cli_exit(["sweep", "--config", str(tmp_path / given), "--grid", "model.init_args.optim.lr=1e-3,2e-3",
                          "--runs_dir", str(tmp_path / "runs"), "--dry_run"])
    err = capsys.readouterr().err
    assert status == 2 and f"--config {tmp_path / given}: " in err, err
    assert ("a directory" if given == "." else "no such file") in err and not (tmp_path / "runs").exists()
