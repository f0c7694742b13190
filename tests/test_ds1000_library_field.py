"""A DS-1000 row's ``metadata.library`` must be a library name: anything else is named with its row and line.

A number there crashed the ``libraries`` filter inside ``datasets`` (``'int' object has no attribute 'lower'``),
and a list became a group named ``"['Pandas']"`` in the per-library metrics.
"""

from __future__ import annotations

import json

import pytest
from harness import SAMPLES, setup_error, write_lines

from lit_lora.data.ds1000 import DS1000DataModule
from lit_lora.data.file_errors import DataFileError

pytestmark = pytest.mark.faults


def ds1000_file(tmp_path, library) -> str:
    """Eight bundled DS-1000 rows, the fourth (line 4) with ``metadata.library`` set to ``library``."""
    rows = [json.loads(line) for line in (SAMPLES / "ds1000.jsonl").read_text().splitlines()[:8]]
    rows[3] = {**rows[3], "metadata": {**rows[3]["metadata"], "library": library}}
    return write_lines(tmp_path / "ds.jsonl", [json.dumps(row) for row in rows])


@pytest.mark.parametrize("libraries", [None, ["Pandas"]])
@pytest.mark.parametrize("library", [5, ["Pandas"]])
def test_a_library_that_is_not_text_is_named_with_its_row(tmp_path, tiny_model, library, libraries):
    dm = DS1000DataModule(source=ds1000_file(tmp_path, library), tokenizer_name_or_path=tiny_model("llama"),
                          val_fraction=0.25, libraries=libraries)
    message = setup_error(dm, DataFileError)
    assert "ds.jsonl (train): data row 3 (0-based; line 4), field 'metadata'" in message
    assert repr(library) in message


def test_a_library_name_still_filters(tmp_path, tiny_model):
    dm = DS1000DataModule(source=ds1000_file(tmp_path, "pandas"), tokenizer_name_or_path=tiny_model("llama"),
                          val_fraction=0.25, libraries=["Pandas"])
    dm.setup("fit")
    groups = list(dm.datasets["train"]["group"]) + list(dm.datasets["validation"]["group"])
    assert groups and {g.lower() for g in groups} == {"pandas"}
