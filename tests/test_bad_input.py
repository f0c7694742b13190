"""Bad input stops with one error naming the file, the line and the field, before any tokenisation.

Each file is written in its dataset's exact schema (python-codes-25k: instruction, input, output, text;
SNLI / MultiNLI: premise, hypothesis, label[, genre]) with one thing wrong in it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness import DEMO, build_cli, cli_exit, cli_run, code_row, config, instruction_dm, run_cli_subprocess, \
    setup_error, snli_csv, write_lines

from lit_lora.data.counselling import CounsellingDataModule
from lit_lora.data.file_errors import DataFileError
from lit_lora.data.nli import MultiNLIDataModule, SNLIDataModule

pytestmark = pytest.mark.faults


# ---- 1. malformed JSON, bytes that are not UTF-8 ------------------------------------------------------
def test_malformed_json_line_names_the_file_and_the_line(tmp_path, tiny_model):
    lines = [json.dumps(code_row(i)) for i in range(6)]
    lines[2] = lines[2][:-1] + ', "text" "no colon"}'  # line 3
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "codes.jsonl", lines)))
    assert f"{tmp_path / 'codes.jsonl'}: line 3, column " in message and "invalid JSON" in message

    lines = [json.dumps(code_row(i)) for i in range(6)]
    lines[4] = json.dumps([code_row(4)])  # line 5 is valid JSON but not one row
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "rows.jsonl", lines)))
    assert "rows.jsonl: line 5: a JSON array where each line must be an object (one row)" in message


def test_malformed_json_document_names_its_line(tmp_path, tiny_model):
    text = json.dumps([code_row(i) for i in range(6)], indent=1).replace('"output": "```python', '"output" "```python', 1)
    (tmp_path / "codes.json").write_text(text)
    bad_line = next(n for n, line in enumerate(text.split("\n"), 1) if '"output" "' in line)
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "codes.json")))
    assert f"codes.json: line {bad_line}, column " in message and "invalid JSON" in message


def test_bytes_that_are_not_utf8_name_file_line_and_field(tmp_path, tiny_model):
    lines = [json.dumps(code_row(i)).encode() for i in range(6)]
    lines[3] = json.dumps(code_row(3, input="caf__")).encode().replace(b"caf__", b"caf\xe9")  # latin-1 é, line 4
    (tmp_path / "latin1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "latin1.jsonl")))
    assert "latin1.jsonl: line 4, field 'input': byte 0xe9 is not UTF-8" in message

    csv = b"premise,hypothesis,label\nA dog runs.,A dog moves.,0\nA man sings.,Nobody sings.,2\nThe caf\xe9 is open.,It is open.,0\n"
    (tmp_path / "snli.csv").write_bytes(csv)
    dm = SNLIDataModule(source=str(tmp_path / "snli.csv"), tokenizer_name_or_path=tiny_model("llama"))
    assert "snli.csv: line 4, field 'premise': byte 0xe9 is not UTF-8" in setup_error(dm)


def test_a_byte_order_mark_is_no_error_and_hides_no_other(tmp_path, tiny_model):
    """Excel and Notepad start UTF-8 files with a BOM: the rows load, and a bad line after it is still named."""
    lines = [json.dumps(code_row(i)) for i in range(6)]
    (tmp_path / "bom.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    instruction_dm(tiny_model, str(tmp_path / "bom.jsonl")).setup("fit")
    lines[5] = '{"instruction": "x", "input": "", "output" "y"}'
    (tmp_path / "bom_bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "bom_bad.jsonl")))
    assert "bom_bad.jsonl: line 6, column 44: invalid JSON" in message


@pytest.mark.parametrize("name, content, expected", [
    ("empty.jsonl", "", "empty.jsonl: no rows: the file is empty"),
    ("blank.jsonl", "\n\n", "blank.jsonl: no rows: the file is empty"),
    ("header.csv", "instruction,input,output,text\n", "header.csv: no rows: only a header line"),
    ("empty.csv", "", "empty.csv: no rows: the file is empty"),
    ("array.json", json.dumps([code_row(0), 42], indent=1), "array.json: line 8: a JSON number where each element"),
    ("quote.csv", "instruction,input,output,text\nAdd a,,x,t\n\"Add b,,y,t\nAdd c,,z,t\n",
     "quote.csv: line 3: invalid CSV (unexpected end of data) (a quoted field that starts on this line"),
    ("long.csv", "instruction,input,output,text\nAdd a,,x,t\nAdd b,,y,t,extra\n", "long.csv: line 3: 5 fields where the header has 4"),
    ("short.csv", "instruction,input,output,text\nAdd a,,x,t\n\nAdd b,,y\n", "short.csv: line 4: 3 fields where the header names 4"),
    ("surrogate.jsonl", json.dumps(code_row(0)) + '\n{"instruction": "x", "input": "", "output": "a\\ud800b"}\n',
     "surrogate.jsonl: line 2, field 'output': a lone surrogate escape"),
])
def test_files_datasets_cannot_read_are_named_with_their_line(tmp_path, tiny_model, name, content, expected):
    (tmp_path / name).write_text(content)
    assert expected in setup_error(instruction_dm(tiny_model, str(tmp_path / name)), DataFileError)


def test_csv_files_pandas_reads_as_written_still_load(tmp_path, tiny_model):
    """Only a short row is refused after pandas read a file: blank or whitespace lines, a quote inside an unquoted
    field and an unnamed trailing header column (a spreadsheet's export) load as before."""
    lines = ["instruction,input,output,text,"] + [f'Say "hi" {i},,x {i},t {i}' for i in range(8)] + ["   ", ""]
    dm = instruction_dm(tiny_model, write_lines(tmp_path / "sheet.csv", lines))
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 8


def test_each_file_of_a_directory_is_checked_on_its_own(tmp_path, tiny_model):
    """Read together, datasets casts a later file to the first file's types: a list or a number in b.jsonl
    would become text and train. Each file is read and checked alone, and named."""
    (tmp_path / "data").mkdir()
    write_lines(tmp_path / "data" / "a.jsonl", [json.dumps(code_row(i)) for i in range(8)])
    lines = [json.dumps(code_row(i)) for i in range(8)]
    lines[6] = json.dumps(code_row(6, output=["a", "b"]))
    write_lines(tmp_path / "data" / "b.jsonl", lines)
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "data")), DataFileError)
    assert f"{tmp_path / 'data' / 'b.jsonl'}: column 'output' holds list values among strings" in message
    assert "first at data row 6 (0-based; line 7): ['a', 'b']" in message

    write_lines(tmp_path / "data" / "b.jsonl", [json.dumps(code_row(i, output=7)) for i in range(8)])
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "data")), DataFileError)
    assert "b.jsonl: column 'output' holds int64 values" in message

    write_lines(tmp_path / "data" / "b.jsonl", [json.dumps(code_row(i + 8)) for i in range(8)])
    dm = instruction_dm(tiny_model, str(tmp_path / "data"))
    dm.setup("fit")  # good files are joined, every row once
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 16


# ---- 2. a text column of the wrong type ----------------------------------------------------------------
@pytest.mark.parametrize("output, found", [(7, "int64"), ([1, 2], "list")])
def test_text_column_of_another_type_names_column_types_and_first_row(tmp_path, tiny_model, output, found):
    lines = [json.dumps(code_row(i, output=output)) for i in range(6)]
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "codes.jsonl", lines)))
    assert "codes.jsonl: column 'output' holds " in message and found in message
    assert "expected text (a string, or null for empty)" in message
    assert f"first at data row 0 (0-based; line 1): {output!r}" in message


def test_mixed_types_name_the_first_offending_line_and_null_input_stays_allowed(tmp_path, tiny_model):
    lines = [json.dumps(code_row(i, input=None)) for i in range(6)]  # null input = empty input, as before
    lines[4] = json.dumps(code_row(4, output=42))
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "mixed.jsonl", lines)))
    assert "mixed.jsonl: column 'output' holds int values among strings" in message
    assert "first at data row 4 (0-based; line 5): 42" in message
    assert "'input'" not in message

    # datasets cannot read mixed types in a file with a blank line at all: the field is named all the same
    lines.insert(2, "")
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "blank_line.jsonl", lines)))
    assert "blank_line.jsonl: line 6, field 'output': a JSON number where line 1 holds a string" in message


def test_a_row_missing_a_required_key_names_file_line_field_and_the_misspelling(tmp_path, tiny_model):
    """datasets reads a left-out key as null: the row would be dropped as "empty output", the typo unnamed."""
    lines = [json.dumps(code_row(i)) for i in range(10)]
    typo = code_row(6)
    typo["outptu"] = typo.pop("output")
    lines[6] = json.dumps(typo)  # line 7
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "typo.jsonl", lines)), DataFileError)
    assert f"{tmp_path / 'typo.jsonl'}: line 7, field 'output': missing from the row" in message
    assert "it has 'outptu', which is no field (did you mean 'output'?)" in message

    row = code_row(3)
    del row["instruction"]
    lines = [json.dumps(code_row(i)) for i in range(10)]
    lines[3] = json.dumps(row)
    lines.insert(1, "")  # a blank line: line 5
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "no_instruction.jsonl", lines)),
                          DataFileError)
    assert "no_instruction.jsonl: line 5, field 'instruction': missing from the row (every row gives instruction, " \
        "output;" in message and "did you mean" not in message

    (tmp_path / "array.json").write_text(json.dumps([code_row(0), code_row(1), typo], indent=1))
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "array.json")), DataFileError)
    assert "array.json: line 14, field 'output': missing from the row" in message


def test_an_alpaca_row_may_leave_out_its_input(tmp_path, tiny_model):
    """Alpaca-style files give ``input`` only where there is one: a row without it trains with no input."""
    lines = [json.dumps(code_row(i)) for i in range(10)]
    row = code_row(3, input="")
    del row["input"]
    lines[3] = json.dumps(row)
    dm = instruction_dm(tiny_model, write_lines(tmp_path / "alpaca.jsonl", lines))
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 10 and not dm.drop_counts["train"]


def tokenised_rows(tiny_model, source: str) -> dict:
    """Every split's tokenised rows of an ``InstructionDataModule`` on ``source``."""
    dm = instruction_dm(tiny_model, source)
    dm.setup("fit")
    return {name: dataset.to_dict() for name, dataset in dm.datasets.items()}


def test_a_jsonl_file_where_no_row_gives_input_trains_as_one_with_empty_inputs(tmp_path, tiny_model):
    """``input`` may be left out of a row, so of every row: the file was refused as missing the column, though
    giving ``"input": ""`` in one row trained it. A required column left out of every row is still named."""
    with_input = [code_row(i, input="") for i in range(8)]
    without = [{k: v for k, v in row.items() if k != "input"} for row in with_input]
    expected = tokenised_rows(tiny_model, write_jsonl_rows(tmp_path / "empty_input.jsonl", with_input))
    assert tokenised_rows(tiny_model, write_jsonl_rows(tmp_path / "noinput.jsonl", without)) == expected

    (tmp_path / "data").mkdir()  # a directory: a file giving input in some rows joins one giving it in none
    write_jsonl_rows(tmp_path / "data" / "a.jsonl", [code_row(i, input=f"a = {i}") for i in range(4)])
    write_jsonl_rows(tmp_path / "data" / "b.jsonl", without[4:])
    assert sum(len(rows["input_ids"]) for rows in tokenised_rows(tiny_model, str(tmp_path / "data")).values()) == 8

    no_output = [{k: v for k, v in row.items() if k != "output"} for row in without]
    message = setup_error(instruction_dm(tiny_model, write_jsonl_rows(tmp_path / "no_output.jsonl", no_output)),
                          DataFileError)
    assert "no_output.jsonl: missing column 'output' (required: instruction, input, output; found: instruction, " \
        "text)" in message


def test_a_csv_file_without_an_input_column_trains_as_one_with_empty_inputs(tmp_path, tiny_model):
    """A CSV of instruction,output columns was refused as missing ``input``, a column every row may leave empty."""
    (tmp_path / "empty_input.csv").write_text("instruction,input,output\n" +
                                              "".join(f"Return {i}.,,x = {i}\n" for i in range(8)))
    (tmp_path / "noinput.csv").write_text("instruction,output\n" + "".join(f"Return {i}.,x = {i}\n" for i in range(8)))
    expected = tokenised_rows(tiny_model, str(tmp_path / "empty_input.csv"))
    assert tokenised_rows(tiny_model, str(tmp_path / "noinput.csv")) == expected

    (tmp_path / "data").mkdir()  # a directory: the added column takes the type another file's column has
    (tmp_path / "data" / "a.csv").write_text("instruction,input,output\n" +
                                             "".join(f"Return {i}.,a = {i},x = {i}\n" for i in range(4)))
    (tmp_path / "data" / "b.csv").write_text((tmp_path / "noinput.csv").read_text())
    assert sum(len(rows["input_ids"]) for rows in tokenised_rows(tiny_model, str(tmp_path / "data")).values()) == 12

    (tmp_path / "no_output.csv").write_text("instruction,input\n" + "".join(f"Return {i}.,\n" for i in range(8)))
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "no_output.csv")), DataFileError)
    assert "no_output.csv: missing column 'output' (required: instruction, input, output; found: instruction, " \
        "input)" in message


def test_a_null_or_empty_value_given_as_such_stays_a_counted_drop(tmp_path, tiny_model):
    lines = [json.dumps(code_row(i)) for i in range(10)]
    lines[6] = json.dumps(code_row(6, output=None))
    lines[7] = json.dumps(code_row(7, output=""))
    dm = instruction_dm(tiny_model, write_lines(tmp_path / "nulls.jsonl", lines))
    dm.setup("fit")
    assert dm.drop_counts["train"] + dm.drop_counts["validation"] == {"empty output": 2}


def test_a_column_missing_from_every_row_names_the_column_probably_meant(tmp_path, tiny_model):
    rows = [code_row(i) for i in range(6)]
    for row in rows:
        row["outptu"] = row.pop("output")
    message = setup_error(instruction_dm(tiny_model, write_jsonl_rows(tmp_path / "typo.jsonl", rows)), DataFileError)
    assert "typo.jsonl: missing column 'output'" in message and "(did you mean 'output' for 'outptu'?)" in message


def test_a_key_given_twice_in_a_row_names_file_line_and_key(tmp_path, tiny_model):
    """Python's json keeps the last of two equal keys, datasets fails on the file with "Trailing data" and no line."""
    lines = [json.dumps(code_row(i)) for i in range(10)]
    lines[6] = '{"instruction": "a", ' + lines[6][1:]  # line 7: "instruction" twice
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "twice.jsonl", lines)), DataFileError)
    assert f"{tmp_path / 'twice.jsonl'}: line 7, field 'instruction': the key is given twice in one object" in message

    rows = [{"premise": f"A dog runs {i}.", "hypothesis": "A dog moves.", "label": i % 3} for i in range(6)]
    lines = [json.dumps(r) for r in rows]
    lines[2] = lines[2][:-1] + ', "label": 1}'  # line 3: an NLI row's label twice
    dm = SNLIDataModule(source=write_lines(tmp_path / "snli.jsonl", lines),
                        tokenizer_name_or_path=tiny_model("llama"))
    assert "snli.jsonl: line 3, field 'label': the key is given twice in one object" in setup_error(dm)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_nan_literal_in_a_text_field_is_refused_with_its_line(tmp_path, tiny_model, literal):
    """Python's json and pandas read ``NaN`` (no JSON at all) and datasets keeps it as null: an "empty" row."""
    lines = [json.dumps(code_row(i)) for i in range(10)]
    lines[6] = json.dumps(code_row(6, output="__")).replace('"__"', literal)  # line 7
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "nan.jsonl", lines)), DataFileError)
    assert f"nan.jsonl: line 7, field 'output': {literal} is not text" in message
    assert "expected text (a string, or null for empty)" in message


def test_nli_and_counselling_rows_are_checked_against_their_own_keys(tmp_path, tiny_model):
    """Each dataset's required keys: an NLI row without its label is named; a counselling row needs no 'output'."""
    rows = [{"premise": f"A dog runs {i}.", "hypothesis": "A dog moves.", "label": i % 3} for i in range(8)]
    del rows[5]["label"]
    dm = SNLIDataModule(source=write_jsonl_rows(tmp_path / "snli.jsonl", rows),
                        tokenizer_name_or_path=tiny_model("llama"))
    assert "snli.jsonl: line 6, field 'label': missing from the row (every row gives premise, hypothesis, label;" \
        in setup_error(dm)

    rows = [{"Context": f"I feel sad {i}.", "Response": f"Answer {i}."} for i in range(8)]
    dm = CounsellingDataModule(source=write_jsonl_rows(tmp_path / "c.jsonl", rows),
                               tokenizer_name_or_path=tiny_model("llama"), val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 8


def test_csv_text_columns_stay_text(tmp_path, tiny_model):
    """CSV has no types: a column of numbers, or an empty one, is still text (pandas would make it int / float)."""
    rows = "".join(f"Return the number {i}.,,{i}{i},x\n" for i in range(8))
    (tmp_path / "codes.csv").write_text("instruction,input,output,text\n" + rows)
    dm = instruction_dm(tiny_model, str(tmp_path / "codes.csv"))
    dm.setup("fit")
    references = sorted(list(dm.datasets["train"]["reference"]) + list(dm.datasets["validation"]["reference"]))
    assert references == [f"{i}{i}" for i in range(8)]


# ---- 3. NLI labels: blank cells, float labels, the right row -----------------------------------------
def test_blank_label_cell_is_no_gold_label_and_float_labels_are_their_int(tmp_path, tiny_model):
    labels = ["0", "1", "", "2", "-1", "0", "1", "2", "0", "1"]  # a blank cell makes pandas read floats
    dm = SNLIDataModule(source=snli_csv(tmp_path / "snli.csv", labels), tokenizer_name_or_path=tiny_model("llama"),
                        val_fraction=0.25)
    dm.setup("fit")
    counts = dm.drop_counts["train"] + dm.drop_counts["validation"]
    assert counts == {"no gold label (blank)": 1, "no gold label (-1)": 1}
    kept = list(dm.datasets["train"]["labels"]) + list(dm.datasets["validation"]["labels"])
    assert sorted(kept) == [0, 0, 0, 1, 1, 1, 2, 2]

    # MultiNLI has no -1, but a blank cell is no gold label there too
    lines = ["premise,hypothesis,label,genre"] + [f"A dog runs ({i}).,A dog moves.,{'' if i == 3 else i % 3},fiction"
                                                  for i in range(8)]
    dm = MultiNLIDataModule(source=write_lines(tmp_path / "mnli.csv", lines), tokenizer_name_or_path=tiny_model("llama"),
                            val_fraction=0.25)
    dm.setup("fit")
    assert (dm.drop_counts["train"] + dm.drop_counts["validation"]) == {"no gold label (blank)": 1}


def test_non_integral_label_names_file_row_and_line(tmp_path, tiny_model):
    labels = ["0", "", "1.5", "2", "1", "0"]
    dm = SNLIDataModule(source=snli_csv(tmp_path / "snli.csv", labels), tokenizer_name_or_path=tiny_model("llama"))
    message = setup_error(dm)
    assert "snli.csv (train): data row 2 (0-based; line 4), field 'label': 1.5 is not a label" in message


def test_unknown_label_after_a_blank_line_names_the_right_line(tmp_path, tiny_model):
    rows = [{"premise": f"The dog is running {i}.", "hypothesis": "A dog is running.", "label": i % 3}
            for i in range(6)]
    rows[3]["label"] = 7
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, "")
    dm = SNLIDataModule(source=write_lines(tmp_path / "snli.jsonl", lines), tokenizer_name_or_path=tiny_model("llama"))
    assert "snli.jsonl (train): data row 3 (0-based; line 5), field 'label': 7 is not a label" in setup_error(dm)

    rows[3]["label"] = "maybe"  # a string among ints
    dm = SNLIDataModule(source=write_jsonl_rows(tmp_path / "named.jsonl", rows), tokenizer_name_or_path=tiny_model("llama"))
    assert "named.jsonl (train): data row 3 (0-based; line 4), field 'label': 'maybe' is not a label" in setup_error(dm)


def test_unknown_label_after_a_line_of_spaces_names_the_right_line(tmp_path, tiny_model):
    """pandas skips a line of only spaces as it skips a blank one: no data row starts there."""
    lines = ["premise,hypothesis,label", "A dog runs.,A dog moves.,entailment", "   ", "C,D,neutral", "E,F,bogus"]
    dm = SNLIDataModule(source=write_lines(tmp_path / "snli.csv", lines), tokenizer_name_or_path=tiny_model("llama"))
    assert "snli.csv (train): data row 2 (0-based; line 5), field 'label': 'bogus' is not a label" in setup_error(dm)


def write_jsonl_rows(path: Path, rows: list[dict]) -> str:
    return write_lines(path, [json.dumps(r) for r in rows])


# ---- 4. model_name_or_path, checkpoints, data files: what ``lit-lora`` prints (``cli_exit``: the installed command's
# ``entry`` in this process; ``test_a_bad_data_line_ends_the_command_with_one_line_naming_it`` runs the command) ----
def test_missing_model_directory_is_one_short_line_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-model")
    status, line = cli_exit(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path),
                             "--model.init_args.model_name_or_path", missing])
    assert status == 1 and "Union" not in line and "\n" not in line
    assert line.startswith(f"lit-lora: model_name_or_path {missing!r}: not a local directory"), line


@pytest.mark.parametrize("command", ["fit", "test", "compare"])
def test_a_missing_checkpoint_or_adapter_is_one_line_before_anything_runs(tmp_path, command, capsys, caplog,
                                                                            monkeypatch):
    """Lightning finds a missing --ckpt_path only after building the model and data (compare: after scoring
    the base model); lit-lora names it first."""
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "nope.ckpt")
    given = ["--adapter_dir", missing] if command == "compare" else ["--ckpt_path", missing]
    status, line = cli_exit([command, "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "runs"), *given])
    expected = (f"lit-lora compare: --adapter_dir {missing}: " if command == "compare"
                else f"lit-lora: MissingCheckpoint: --ckpt_path {missing}: ")
    assert status == 1 and line == expected + "no such file or directory"
    printed = capsys.readouterr()
    assert "generating" not in printed.out + printed.err + caplog.text and not (tmp_path / "compare").exists()


def test_lightning_clis_optimizer_flags_are_not_offered(tmp_path):
    """The optimizer is model.init_args.optim; LightningCLI's --optimizer would be overridden by it."""
    result = cli_run(["fit", "--config", DEMO, "--optimizer", "torch.optim.SGD", "--print_config"])
    assert result.returncode == 2 and "unrecognized arguments: --optimizer" in result.stderr, result.stderr


@pytest.mark.parametrize("via", ["entry_point", "module"])
def test_a_bad_data_line_ends_the_command_with_one_line_naming_it(tmp_path, via):
    """The ``lit-lora`` command prints an input error as its last line, without the tracebacks of pyarrow,
    datasets and lit-lora chained before it; ``--verbose`` keeps them."""
    rows = (Path(DEMO).parents[1] / "lit_lora" / "data" / "samples" / "python_codes_25k.jsonl").read_text()
    data = write_lines(tmp_path / "codes.jsonl", [*rows.splitlines()[:2], '{"instruction": "x", "output": oops}'])
    args = ["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.source", data]
    result = run_cli_subprocess(args, via=via, env={"LIT_LORA_VERBOSE": None}, check=False)  # not inherited
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == \
        f"lit-lora: DataFileError: {data}: line 3, column 32: invalid JSON (Expecting value)"
    verbose = run_cli_subprocess([*args, "--verbose"], via=via, check=False)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "DataFileError" in verbose.stderr


@pytest.mark.parametrize("command", ["validate", "test"])
def test_an_evaluation_stopped_by_bad_data_leaves_no_empty_run_directory(tmp_path, command):
    """As a fit stopped before its first step: the next evaluation takes ``version_0``, not ``version_1``."""
    data = write_lines(tmp_path / "codes.jsonl", ['{"instruction": "x", "input": "", "output": "y"}', '{"oops'])
    status, line = cli_exit([command, "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "runs"),
                             "--data.init_args.source", data])
    assert status == 1 and line.startswith(f"lit-lora: DataFileError: {data}: line 2"), line
    assert not list((tmp_path / "runs").rglob("version_*"))


def test_a_missing_data_file_ends_the_command_with_one_line_naming_it(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    status, line = cli_exit(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "runs"),
                             "--data.init_args.source", missing])
    assert status == 1 and line.startswith(f"lit-lora: DataFileError: {missing}: no such file or directory"), line


def test_a_refused_packing_setting_ends_the_command_with_one_line(tmp_path):
    """A packing budget below one sequence is a config error the user fixes: one line naming both keys."""
    status, line = cli_exit(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path),
                             "--data.init_args.packing", "true", "--data.init_args.max_tokens_per_batch", "100"])
    assert status == 1 and line == (
        "lit-lora: IncompatibleConfig: data.max_tokens_per_batch (100) must hold one packed sequence of "
        "data.max_length (256) tokens")


def test_hub_id_missing_offline_says_what_was_tried(tmp_path, monkeypatch):
    from lit_lora.model_source import ModelNotFoundError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:  # raised before anything is built
        build_cli(["--config", DEMO, "--trainer.default_root_dir", str(tmp_path),
                   "--model.init_args.model_name_or_path", "no-such-org/no-such-model"], run=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model_name_or_path 'no-such-org/no-such-model': not a local directory (looked in "
                              f"{tmp_path / 'no-such-org' / 'no-such-model'})")
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message


def test_a_hub_id_the_hub_does_not_give_is_one_line_online_too(tmp_path):
    """Without HF_HUB_OFFLINE, a hub id that cannot be fetched (no connection here; elsewhere no such repository)
    ended in a jsonargparse report a hundred lines long: the config.json is now fetched first."""
    result = run_cli_subprocess(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path),
                                 "--model.init_args.model_name_or_path", "no-such-org/no-such-model"],
                                env={"HF_HUB_OFFLINE": None, "HF_HOME": str(tmp_path / "hf")}, check=False,
                                cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lit-lora: model_name_or_path 'no-such-org/no-such-model': not a local directory "
                           f"(looked in {tmp_path / 'no-such-org' / 'no-such-model'}), and the hub did not give "
                           "its config.json ("), last
    assert last.endswith("set HF_HUB_OFFLINE=1 to use the cache"), last


@pytest.mark.parametrize("config_name, arch, expected", [
    ("demo", "t5", "a t5 model, which CausalLMModule cannot load (AutoModelForCausalLM); it loads under "
                   "lit_lora.models.SequenceClassifierModule, lit_lora.models.Seq2SeqModule (model.class_path)"),
    ("tutorials/codet5_lora", "llama", "a llama model, which Seq2SeqModule cannot load (AutoModelForSeq2SeqLM); it "
                                       "loads under lit_lora.models.CausalLMModule"),
])
def test_a_model_the_modules_head_cannot_load_is_one_line_before_tokenisation(tmp_path, tiny_model, config_name,
                                                                               arch, expected, caplog, monkeypatch):
    model = tiny_model(arch)
    monkeypatch.chdir(tmp_path)
    status, line = cli_exit(["fit", "--config", config(config_name), "--trainer.default_root_dir", str(tmp_path),
                             "--model.init_args.model_name_or_path", model])
    assert status == 1 and "kept" not in caplog.text
    assert line.startswith(f"lit-lora: IncompatibleConfig: model_name_or_path {model}: {expected}"), line


def test_estimate_names_a_missing_model_directory_in_one_line(tmp_path):
    """jsonargparse wrapped the error of estimate's model in its "Does not validate" report, with a traceback."""
    missing = str(tmp_path / "no-model")
    status, line = cli_exit(["estimate", "--config", DEMO, "--model.init_args.model_name_or_path", missing])
    assert status == 1 and line == (
        f"lit-lora: model_name_or_path {missing!r}: not a local directory (looked in {missing}), and not a hub id "
        "('org/name')")


def test_demo_config_runs_from_another_directory(tmp_path):
    """The demo's relative ``lit_lora/assets/tiny-llama`` is found in the installed package from any directory."""
    result = run_cli_subprocess(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "runs"),
                                 "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
                                 "--trainer.enable_progress_bar", "false", "--baseline.enabled", "false",
                                 "--data.init_args.max_samples", "8", "--data.init_args.batch_size", "4"],
                                cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable params:" in result.stdout + result.stderr


def test_a_model_path_may_start_at_the_home_directory(tmp_path, tiny_model, monkeypatch):
    """A YAML value is not shell-expanded: ``~/tiny`` must reach transformers as the directory, not as a hub id."""
    from lit_lora.adapters import LoRA
    from lit_lora.models import CausalLMModule

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tiny").symlink_to(tiny_model("llama"))
    module = CausalLMModule("~/tiny", adapter=LoRA(r=4))
    module.configure_model()
    assert module.model_name_or_path == str(tmp_path / "tiny")
    assert 0 < module.parameter_counts["trainable_params"] < module.parameter_counts["total_params"]


# ---- 5. config files ------------------------------------------------------------------------------------------
def config_error(capsys, *args: str) -> list[str]:
    from lit_lora.commands import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", *args])
    assert stop.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_a_misspelled_config_key_is_named_with_its_file_line_and_the_option_meant(tmp_path, capsys):
    text = Path(DEMO).read_text()
    assert "\n        r: 16\n" in text and "\n    max_length: " in text
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("\n    max_length: ", "\n    max_lenght: "))
    line = next(n for n, t in enumerate(typo.read_text().splitlines(), 1) if "max_lenght" in t)
    err = config_error(capsys, "--config", str(typo))
    assert f"error: {typo}: line {line}: 'max_lenght' is not an option of lit_lora.data.InstructionDataModule " \
           "(did you mean 'max_length'?)" in err

    typo.write_text(text.replace("\n        r: 16\n", "\n        rr: 16\n"))  # nested: the adapter's init_args
    line = next(n for n, t in enumerate(typo.read_text().splitlines(), 1) if "rr: 16" in t)
    err = config_error(capsys, "--config", DEMO, "--config", str(typo))  # the second of two files
    assert f"error: {typo}: line {line}: 'rr' is not an option of lit_lora.adapters.LoRA (did you mean 'r'?)" in err


def test_a_key_in_the_wrong_section_is_named_at_its_own_line(tmp_path, capsys):
    """``dropout`` is the adapter's, not the data's: the line named is the data section's, not the adapter's valid
    one above it; in a fragment, under the class_path an earlier file gives; on the command line, none."""
    text = Path(DEMO).read_text()
    assert "\n        dropout: " in text and text.endswith("\n    batch_size: 16\n")
    misplaced = tmp_path / "misplaced.yaml"
    misplaced.write_text(text + "    dropout: 0.1\n")
    line = len(misplaced.read_text().splitlines())
    expected = "'dropout' is not an option of lit_lora.data.InstructionDataModule"
    assert f"error: {misplaced}: line {line}: {expected}" in config_error(capsys, "--config", str(misplaced))
    fragment = tmp_path / "fragment.yaml"
    fragment.write_text("data:\n  init_args:\n    dropout: 0.1\n")
    assert f"error: {fragment}: line 3: {expected}" in config_error(capsys, "--config", DEMO, "--config", str(fragment))
    assert f"error: {expected}" in config_error(capsys, "--config", DEMO, "--data.init_args.dropout", "0.1")


@pytest.mark.parametrize("old, new, expected", [
    ("\n    adapter:\n", "\n    adaptr:\n",
     "'adaptr' is not an option of lit_lora.models.CausalLMModule (did you mean 'adapter'?)"),
    ("\n      lr: ", "\n      lrr: ",  # a field of the module's optim dataclass
     "'lrr' is not an option of lit_lora.models.CausalLMModule optim (OptimizerSettings) (did you mean 'lr'?)"),
    ("class_path: lit_lora.adapters.LoRA\n", "class_path: lit_lora.adapters.Lora\n",
     "class_path lit_lora.adapters.Lora: lit_lora.adapters has no class Lora (did you mean lit_lora.adapters.LoRA?)"),
    ("\n  max_steps: ", "\n  max_stepz: ",
     "'trainer.max_stepz' is not an option of fit (did you mean 'trainer.max_steps'?)"),
    ("\nseed_everything: ", "\nseed_everyting: ", "'seed_everyting' is not an option of fit "
                                                   "(did you mean 'seed_everything'?)"),
    ("\ntrainer:\n", "\ntrainr:\n", "'trainr' is not an option of fit (did you mean 'trainer'?)"),  # not trainr.…
    ("\nmodel:\n", "\nmodle:\n", "'modle' is not an option of fit (did you mean 'model'?)"),
], ids=["module_key", "dataclass_field", "class_path", "trainer_key", "top_key", "section", "class_section"])
def test_a_misspelled_key_or_class_is_named_with_its_line_and_the_one_meant(tmp_path, capsys, old, new, expected):
    """jsonargparse names neither file nor line for these (a 15-line dump of the module's Union subtypes; outside
    init_args "Subcommand 'fit' does not accept option 'modle.init_args.adapter.init_args.r'")."""
    text = Path(DEMO).read_text()
    assert old in text
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace(old, new, 1))
    line = next(n for n, t in enumerate(typo.read_text().splitlines(), 1) if new.strip() in t)
    assert f"error: {typo}: line {line}: {expected}" in config_error(capsys, "--config", str(typo))


@pytest.mark.parametrize("flag, value, expected", [
    ("--model.init_args.adaptr.init_args.r", "4", "'adaptr' is not an option of lit_lora.models.CausalLMModule "
                                                 "(did you mean 'adapter'?)"),
    ("--model.init_args.optim.lrr", "1e-3", "'lrr' is not an option of lit_lora.models.CausalLMModule optim "
                                            "(OptimizerSettings) (did you mean 'lr'?)"),
    ("--model.init_args.adapter", "lit_lora.adapters.LoRAA", "class_path lit_lora.adapters.LoRAA: lit_lora.adapters "
                                                             "has no class LoRAA (did you mean lit_lora.adapters.LoRA?)"),
], ids=["module_key", "dataclass_field", "class_path"])
def test_a_misspelled_model_key_on_the_command_line_gets_the_one_meant(capsys, flag, value, expected):
    assert f"error: {expected}" in config_error(capsys, "--config", DEMO, flag, value)


def test_a_misspelled_key_in_a_fragment_or_for_another_command_is_named_too(tmp_path, capsys):
    from lit_lora.commands import main

    fragment = tmp_path / "fragment.yaml"
    fragment.write_text("trainer:\n  max_stepz: 3\n")
    expected = "'trainer.max_stepz' is not an option of {} (did you mean 'trainer.max_steps'?)"
    assert f"error: {fragment}: line 2: {expected.format('fit')}" in config_error(
        capsys, "--config", DEMO, "--config", str(fragment))
    with pytest.raises(SystemExit):  # no subcommand: jsonargparse says "Group 'trainer' does not accept …"
        main(["estimate", "--config", DEMO, "--config", str(fragment)])
    assert f"error: {fragment}: line 2: {expected.format('estimate')}" in capsys.readouterr().err.splitlines()


def test_settings_beside_class_path_are_said_to_go_under_init_args(tmp_path, capsys):
    """jsonargparse blames class_path itself, as not an option of the class (for data:, of its base class)."""
    text = Path(DEMO).read_text()
    data = "\n  class_path: lit_lora.data.InstructionDataModule\n  init_args:\n    max_length: 256\n" \
           "    batch_size: 16\n"
    adapter = "\n      init_args:\n        r: 16\n        alpha: 32\n        dropout: 0.0\n" \
              "        target_modules: all-linear\n"
    assert data in text and adapter in text
    flat = tmp_path / "flat.yaml"
    flat.write_text(text.replace(data, "\n  class_path: lit_lora.data.InstructionDataModule\n  batch_size: 4\n"))
    line = len(flat.read_text().splitlines())
    assert f"error: {flat}: line {line}: data: the settings of lit_lora.data.InstructionDataModule (batch_size) go " \
           "under init_args: beneath class_path:, not beside it" in config_error(capsys, "--config", str(flat))
    flat.write_text(text.replace(adapter, "\n      r: 16\n      alpha: 32\n"))
    line = next(n for n, t in enumerate(flat.read_text().splitlines(), 1) if t == "      r: 16")
    assert f"error: {flat}: line {line}: model.init_args.adapter: the settings of lit_lora.adapters.LoRA (r, alpha) " \
           "go under init_args: beneath class_path:, not beside it" in config_error(capsys, "--config", str(flat))
    fragment = tmp_path / "fragment.yaml"  # a key that would not be an option under init_args either
    fragment.write_text("data:\n  class_path: lit_lora.data.InstructionDataModule\n  max_lenght: 8\n")
    assert f"error: {fragment}: line 3: data: the settings of lit_lora.data.InstructionDataModule (max_lenght) go " \
           "under init_args: beneath class_path:, not beside it; 'max_lenght' is not an option of it either (did " \
           "you mean 'max_length'?)" in config_error(capsys, "--config", DEMO, "--config", str(fragment))


def test_a_value_of_the_wrong_type_is_named_with_its_file_and_line(tmp_path, capsys):
    text = Path(DEMO).read_text()
    assert "\n    batch_size: " in text
    bad = tmp_path / "bad_type.yaml"
    bad.write_text(re.sub(r"\n    batch_size: \d+", "\n    batch_size: sixteen", text))
    line = next(n for n, t in enumerate(bad.read_text().splitlines(), 1) if "sixteen" in t)
    assert f"error: {bad}: line {line}: batch_size: expected int, got 'sixteen'" in config_error(
        capsys, "--config", str(bad))
    # on the command line: no file line to name (the config's own max_steps line holds another value)
    assert "error: max_steps: expected int, got 'five'" in config_error(capsys, "--config", DEMO,
                                                                       "--trainer.max_steps", "five")


def test_invalid_yaml_is_named_with_its_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1\n")
    err = config_error(capsys, "--config", DEMO, "--config", str(bad))
    assert any(line.startswith(f"error: {bad}: line 3, column 1: invalid YAML (") for line in err), err


def test_an_empty_config_or_one_without_a_data_section_is_named(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    assert f"error: {empty}: the config is empty; start from a bundled one: lit-lora configs copy demo my.yaml" \
        in config_error(capsys, "--config", str(empty))
    no_data = tmp_path / "no_data.yaml"
    no_data.write_text(re.sub(r"\ndata:\n(  .*\n)+", "\n", Path(DEMO).read_text()))
    assert "\ndata:" not in no_data.read_text() and "\nmodel:" in no_data.read_text()
    assert any(line.startswith(f"error: {no_data}: no data: section") for line in
               config_error(capsys, "--config", str(no_data)))
