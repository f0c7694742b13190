"""A CSV row with more fields than its header is named by its line, wherever it is in the file.

pandas fails on such a row, except as the first data row: there it takes the first column as the row index, and
every cell of every row lands one column to the left (an input read as the instruction, an output as the input).
"""

from __future__ import annotations

import pytest
from harness import instruction_dm, setup_error, write_lines

from lit_lora.data.counselling import CounsellingDataModule
from lit_lora.data.file_errors import DataFileError

pytestmark = pytest.mark.faults

HEADER = "instruction,input,output,text"


def test_a_comma_ending_every_line_is_named_not_read_as_a_row_index(tmp_path, tiny_model):
    """Read as pandas reads it, this file trained on ``input -> text`` pairs without a word."""
    lines = [HEADER] + [f"Add a and b ({i}),values {i},a + b,add {i}," for i in range(8)]
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "trailing.csv", lines)), DataFileError)
    assert "trailing.csv: line 2: 5 fields where the header has 4" in message


def test_an_unquoted_comma_in_the_first_data_row_is_named(tmp_path, tiny_model):
    lines = [HEADER, "Add a, then b,,a + b,add"] + [f"Add a and b ({i}),,a + b,add {i}" for i in range(8)]
    message = setup_error(instruction_dm(tiny_model, write_lines(tmp_path / "first.csv", lines)), DataFileError)
    assert "first.csv: line 2: 5 fields where the header has 4" in message


def test_a_long_row_is_named_for_other_datamodules_too(tmp_path, tiny_model):
    lines = ["Context,Response"] + [f"I feel low ({i}),That sounds hard.," for i in range(8)]
    dm = CounsellingDataModule(source=write_lines(tmp_path / "talks.csv", lines),
                               tokenizer_name_or_path=tiny_model("llama"), val_fraction=0.25)
    assert "talks.csv: line 2: 3 fields where the header has 2" in setup_error(dm, DataFileError)


def test_quoted_commas_blank_lines_and_a_header_ending_in_a_comma_still_load(tmp_path, tiny_model):
    lines = [HEADER + ","] + [f'"Add a, b ({i})",,"a, b = b, a",t {i},' for i in range(8)] + ["", "   "]
    dm = instruction_dm(tiny_model, write_lines(tmp_path / "quoted.csv", lines))
    dm.setup("fit")
    rows = list(dm.datasets["train"]["prompt"]) + list(dm.datasets["validation"]["prompt"])
    assert len(rows) == 8 and all("Add a, b (" in prompt for prompt in rows)
