"""Code-cleaning switches of python-codes-25k: each changes what it should and is counted in the log."""

import ast
import json
import logging

import pytest

from lit_lora.data import PythonCodesDataModule
from lit_lora.data.cleaning import CodeCleaning, clean_rows, drop_comments, strip_fence


def row(output, instruction="Add a and b.", input_=""):
    return {"instruction": instruction, "input": input_, "output": output, "text": instruction}


ROWS = [
    row("python\nx = 1  # one\n"),                      # bare fence, comment
    row("```python\ny = 2\n```", "Set y."),              # backtick fence
    row("z = 3\t\n\n\n\nw = 4   ", "Set z and w."),       # whitespace
    row("python\nx = 1  # one\n"),                      # duplicate of row 0
    row("# only a comment", "Nothing."),                # empty after dropping comments
    row('s = "a # b"', "Keep the hash in a string."),
]


def test_each_switch_changes_and_counts():
    kept, counts = clean_rows(ROWS, CodeCleaning(True, True, True, True, True))
    assert counts == {"fence stripped": 3, "whitespace normalised": 3, "comments dropped": 3,
                      "empty rows removed": 1, "duplicates removed": 1}
    outputs = [r["output"] for r in kept]
    assert outputs == ["x = 1", "y = 2", "z = 3\n\nw = 4", 's = "a # b"']


def test_switches_are_independent():
    kept, counts = clean_rows(ROWS, CodeCleaning(dedupe=True))
    assert counts == {"duplicates removed": 1} and len(kept) == len(ROWS) - 1
    assert kept[0]["output"] == ROWS[0]["output"]
    kept, counts = clean_rows(ROWS, CodeCleaning())
    assert not counts and kept == ROWS


def test_helpers_keep_code_that_only_looks_like_a_comment_or_fence():
    assert drop_comments('url = "http://x#y"  # note') == 'url = "http://x#y"'


def test_a_comment_line_a_backslash_joined_to_goes_with_the_backslash():
    """``a = 1 \\`` then a comment line is one valid logical line; dropping the comment alone would join the
    next line to ``a = 1`` (or end the code on a backslash): the code would no longer parse."""
    for code, dropped in (("a = 1 \\\n# c\nb = 2\n", "a = 1\nb = 2\n"), ("a = 1 \\\n    # c", "a = 1"),
                          ("s = 'x \\\n# y'  # z\n", "s = 'x \\\n# y'\n")):  # inside a string: no comment
        ast.parse(code)
        assert drop_comments(code) == dropped, code
        ast.parse(dropped)
    assert strip_fence("pythonic = True") == "pythonic = True"


def test_datamodule_logs_counts_before_the_split(tmp_path, tiny_model, caplog):
    path = tmp_path / "codes.jsonl"
    rows = ROWS + [row(f"v = {i}", f"Set v to {i}.") for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PythonCodesDataModule(source=str(path), tokenizer_name_or_path=tiny_model("llama"), val_fraction=0.25,
                               cleaning=CodeCleaning(strip_fence=True, drop_comments=True, dedupe=True, drop_empty=True))
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        dm.setup("fit")
    assert "duplicates removed 1" in caplog.text and "fence stripped 3" in caplog.text
    assert sum(len(d) for d in dm.datasets.values()) == len(rows) - 2
    train, val = (set(dm.datasets[s]["prompt"]) for s in ("train", "validation"))
    assert not train & val


def test_cleaning_that_removes_every_row_is_a_data_error_naming_the_file(tmp_path, tiny_model):
    from lit_lora.data.file_errors import DataFileError

    path = tmp_path / "empty_code.jsonl"
    path.write_text("".join(json.dumps(row("", f"Do nothing {i}.")) + "\n" for i in range(3)))
    dm = PythonCodesDataModule(source=str(path), tokenizer_name_or_path=tiny_model("llama"),
                               cleaning=CodeCleaning(drop_empty=True))
    with pytest.raises(DataFileError, match=r"empty_code\.jsonl.*cleaning removed every row"):
        dm.setup("fit")
