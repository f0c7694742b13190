"""Data files that ``datasets`` reads with a silent loss, or that lit-lora's own checks misread: each is read as
written, refused naming the file and line, or skipped with a count in the log (``lit_lora.data.sources``)."""

from __future__ import annotations

import json
import logging

import pytest
from harness import code_row, instruction_dm, setup_error, snli_csv, write_lines

from lit_lora.data import InstructionDataModule
from lit_lora.data.file_errors import DataFileError
from lit_lora.data.nli import SNLIDataModule

pytestmark = pytest.mark.faults


def all_rows(dm, column: str) -> list:
    return sorted(list(dm.datasets["train"][column]) + list(dm.datasets["validation"][column]))


def test_a_data_directory_refuses_data_under_another_name_and_logs_what_it_skips(tmp_path, tiny_model, caplog):
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "part1.jsonl", [json.dumps(code_row(i)) for i in range(8)])
    for name in ("part2.JSONL", "part3.jsonl.gz"):
        (data / name).write_bytes(b"{}\n")
        message = setup_error(instruction_dm(tiny_model, str(data)), DataFileError)
        assert message.startswith(f"{data}: {name}: lit-lora reads .json, .jsonl, .parquet, .csv files, "
                                  "uncompressed and named in lower case")
        (data / name).unlink()

    (data / "README.md").write_text("# my data\n")
    (data / "old").mkdir()
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        dm = instruction_dm(tiny_model, str(data))
        dm.setup("fit")
    assert f"[lit-lora] {data}: reading 1 data file; skipped 2 other entries: README.md, old/" in caplog.messages
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 8


def test_csv_cells_pandas_would_call_missing_stay_text(tmp_path, tiny_model):
    """pandas reads None / NA / N/A / null / nan as missing: an answer "None" was dropped as empty, an input "N/A"
    left its prompt. Both are text; only an empty cell is empty."""
    answers = ["None", "NA", "null", "nan", "N/A", "0", "1", "2"]
    lines = ["instruction,input,output"] + [f"What does f{i} return?,{'N/A' if i == 1 else ''},{a}"
                                            for i, a in enumerate(answers)]
    dm = instruction_dm(tiny_model, write_lines(tmp_path / "codes.csv", lines))
    dm.setup("fit")
    assert dm.drop_counts["train"] + dm.drop_counts["validation"] == {}
    assert all_rows(dm, "reference") == sorted(answers)
    prompt = next(p for p in list(dm.datasets["train"]["prompt"]) + list(dm.datasets["validation"]["prompt"])
                  if "f1 return" in p)
    assert "N/A" in prompt


def test_a_blank_nli_label_cell_is_still_no_gold_label(tmp_path, tiny_model):
    """Other columns keep pandas' missing values: an NLI row with a blank label stays a counted drop."""
    dm = SNLIDataModule(source=snli_csv(tmp_path / "snli.csv", ["0", "1", "", "2", "NA", "0", "1", "2"]),
                        tokenizer_name_or_path=tiny_model("llama"), val_fraction=0.25)
    dm.setup("fit")
    assert dm.drop_counts["train"] + dm.drop_counts["validation"] == {"no gold label (blank)": 2}


def test_a_csv_column_named_twice_is_refused(tmp_path, tiny_model):
    lines = ["instruction,input,output,output"] + [f"Add {i}.,,{i},{i + 1}" for i in range(8)]
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "codes.csv", lines)), DataFileError)
    assert message == (f"{tmp_path / 'codes.csv'}: line 1: column 'output' is named twice (pandas would read the "
                       "second as 'output.1', which nothing reads): give each column one name")


def test_json_objects_spread_over_lines_are_rows_checked_with_the_line_they_start_on(tmp_path, tiny_model):
    """``json.dump(row, f, indent=2)`` per row: datasets reads it; lit-lora's checks crashed on line 1."""
    path = tmp_path / "codes.json"
    path.write_text("".join(json.dumps(code_row(i), indent=2) + "\n" for i in range(8)))
    dm = instruction_dm(tiny_model, str(path))
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 8

    rows = [code_row(i) for i in range(8)]
    del rows[5]["output"]
    text = "".join(json.dumps(row, indent=2) + "\n" for row in rows)
    path.write_text(text)
    line = 1 + sum(json.dumps(row, indent=2).count("\n") + 1 for row in rows[:5])
    message = setup_error(instruction_dm(tiny_model, str(path)), DataFileError)
    assert message.startswith(f"{path}: line {line}, field 'output': missing from the row")


def spread_rows(path, rows: list[dict]) -> list[int]:
    """Write ``rows`` as ``json.dump(row, f, indent=2)`` each; the line each row starts on."""
    texts = [json.dumps(row, indent=2) for row in rows]
    path.write_text("".join(text + "\n" for text in texts))
    return [1 + sum(text.count("\n") + 1 for text in texts[:i]) for i in range(len(texts))]


def test_errors_in_json_objects_spread_over_lines_name_the_line_the_row_starts_on(tmp_path, tiny_model):
    """Rows found after datasets read the file, and files datasets cannot read, are named by the row's first line."""
    path = tmp_path / "codes.jsonl"
    starts = spread_rows(path, [code_row(i, output=None if i < 6 else 9) for i in range(8)])
    message = setup_error(instruction_dm(tiny_model, str(path)), DataFileError)
    assert message == (f"{path}: column 'output' holds int64 values; expected text (a string, or null for empty); "
                       f"first at data row 6 (0-based; line {starts[6]}): 9")

    starts = spread_rows(path, [code_row(i, output=str(i) if i < 6 else 9) for i in range(8)])
    message = setup_error(instruction_dm(tiny_model, str(path)), DataFileError)  # datasets fails: read again
    assert message == f"{path}: line {starts[6]}, field 'output': a JSON number where line 1 holds a string " \
                      "(give the field one type)"

    path.write_text(path.read_text().replace('"output": 9', '"output" 9'))  # broken: its own line and column
    bad_line = next(n for n, line in enumerate(path.read_text().split("\n"), 1) if '"output" 9' in line)
    message = setup_error(instruction_dm(tiny_model, str(path)), DataFileError)
    assert message == f"{path}: line {bad_line}, column 12: invalid JSON (Expecting ':' delimiter)"

    lines = [json.dumps(code_row(i)) for i in range(8)]
    lines[2] = lines[2][:-1]  # cut short in a file of one row a line: that line is named, not the one after it
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "cut.jsonl", lines)), DataFileError)
    assert message == f"{tmp_path / 'cut.jsonl'}: line 3, column {len(lines[2]) + 1}: invalid JSON " \
                      "(Expecting ',' delimiter)"

    rows = [{"premise": f"The dog is running {i}.", "hypothesis": "A dog is running.", "label": 7 if i == 3 else i % 3}
            for i in range(6)]
    starts = spread_rows(tmp_path / "snli.jsonl", rows)
    dm = SNLIDataModule(source=str(tmp_path / "snli.jsonl"), tokenizer_name_or_path=tiny_model("llama"))
    assert f"snli.jsonl (train): data row 3 (0-based; line {starts[3]}), field 'label': 7 is not a label" \
        in setup_error(dm)


def test_one_json_object_of_columns_is_refused_naming_the_layout(tmp_path, tiny_model):
    rows = [code_row(i) for i in range(8)]
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({key: [row[key] for row in rows] for key in rows[0]}, indent=2))
    message = setup_error(instruction_dm(tiny_model, str(path)), DataFileError)
    assert message == (f'{path}: line 1: one JSON object of columns ({{"instruction": [...], ...}}); lit-lora reads '
                       "rows: one object per row (JSON lines) or an array of them")


def test_a_null_line_is_named_not_counted_as_an_empty_row(tmp_path, tiny_model):
    lines = [json.dumps(code_row(i)) for i in range(8)]
    lines[4] = "null"
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "codes.jsonl", lines)), DataFileError)
    assert message == f"{tmp_path / 'codes.jsonl'}: line 5: a JSON null where each row must be an object"


def test_a_data_path_may_start_at_the_home_directory(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_lines(tmp_path / "codes.jsonl", [json.dumps(code_row(i)) for i in range(8)])
    dm = instruction_dm(tiny_model, "~/codes.jsonl")
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 8


def test_a_validation_file_whose_every_row_is_dropped_is_the_one_named(tmp_path, tiny_model):
    train = write_lines(tmp_path / "train.jsonl", [json.dumps(code_row(i)) for i in range(8)])
    val = write_lines(tmp_path / "val.jsonl", [json.dumps(code_row(i, output="")) for i in range(4)])
    dm = InstructionDataModule(source=train, validation_source=val, tokenizer_name_or_path=tiny_model("llama"))
    with pytest.raises(DataFileError) as info:  # found by tokenising, after the training rows
        dm.setup("fit")
    assert str(info.value) == f"{val} (validation): every row was dropped (4 empty output)"


def test_a_mistyped_local_directory_is_named_as_one_not_only_as_a_hub_id(tmp_path, tiny_model, monkeypatch):
    """``data/my_codes`` has the form of a hub id: it was fetched from the hub, and a ConnectionError ended the run."""
    monkeypatch.chdir(tmp_path)
    message = setup_error(instruction_dm(tiny_model, "data/my_codes"), DataFileError)
    assert message.startswith(f"data/my_codes: no such local file or directory ({tmp_path / 'data' / 'my_codes'}), "
                              "and no hub dataset of that id to be had ("), message


def test_a_parquet_file_of_no_rows_says_so(tmp_path, tiny_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = pa.table({name: pa.array([], pa.string()) for name in ("instruction", "input", "output")})
    pq.write_table(empty, tmp_path / "codes.parquet")
    message = setup_error(instruction_dm(tiny_model, str(tmp_path / "codes.parquet")), DataFileError)
    assert message == f"{tmp_path / 'codes.parquet'}: no rows: the parquet file holds none"


def test_an_escaped_surrogate_pair_is_one_character_and_loads(tmp_path, tiny_model):
    """Only a lone surrogate is refused (test_bad_input.py); "\\ud83d\\ude00" is how JSON escapes one emoji."""
    lines = [json.dumps(code_row(i)) for i in range(8)]
    lines[2] = lines[2].replace('"output": "', '"output": "\\ud83d\\ude00 ')
    dm = instruction_dm(tiny_model, write_lines(tmp_path / "codes.jsonl", lines))
    dm.setup("fit")
    assert any(answer.startswith("\U0001F600 ") for answer in all_rows(dm, "reference"))
