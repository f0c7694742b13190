"""DS-1000 (data-science code QA): ``prompt`` → ``reference_code``, ``metadata.library`` names the library.

    lit-lora fit --config configs/code/phi15_qlora_ds1000.yaml --data.init_args.libraries '[Pandas, Numpy]'

DS-1000 is published as a single ``test`` split of 1000 problems; lit-lora holds out a seeded
validation fraction of it (``val_fraction``). Generation metrics are reported per library.
"""

from __future__ import annotations

from collections import Counter
import logging
from typing import ClassVar, Optional, Sequence

from datasets import Dataset

from lit_lora.errors import IncompatibleConfig
from lit_lora.data.file_errors import DataFileError, describe_row
from lit_lora.data.sources import local_files
from lit_lora.data.sft import Example, SFTDataModule

log = logging.getLogger("lit_lora")


def library_of(row: dict, where: str = "DS-1000", index: int | None = None,
               files: Optional[Sequence[str]] = None) -> str:
    """The library a row is reported under: the text of ``metadata.library``. A number or a list there is named
    with its row, not turned into a group name (``"['Pandas']"``) or a crash of the ``libraries`` filter."""
    metadata = row.get("metadata")
    library = metadata.get("library") if isinstance(metadata, dict) else None
    if not isinstance(library, str) or not library.strip():
        at = f" {describe_row(files, index)}," if index is not None else ""
        raise DataFileError(f"{where}:{at} field 'metadata' must be an object whose 'library' is a library name "
                            f"(text, e.g. 'Pandas'); got {metadata!r}")
    return library


class DS1000DataModule(SFTDataModule):
    """DS-1000 rows; the prompt is used as published (it already ends where the code starts).

    Args:
        libraries: Keep only problems of these libraries (case-insensitive, e.g. ``[Pandas, Numpy]``); ``None`` = all.
    """

    required_columns: ClassVar[tuple[str, ...]] = ("prompt", "reference_code", "metadata")
    text_columns: ClassVar[tuple[str, ...]] = ("prompt", "reference_code")
    default_source: ClassVar[Optional[str]] = "ds1000.jsonl"
    templates: ClassVar[tuple[str, ...]] = ("plain", "chat")  # the prompt as published, or inside a chat turn

    def __init__(self, *args, libraries: Optional[list[str]] = None, split: str = "test",
                 template: str = "plain", **kwargs):
        super().__init__(*args, split=split, template=template, **kwargs)
        self.libraries = libraries

    def check_rows(self, dataset: Dataset, where: str) -> None:
        for i, row in enumerate(dataset.select_columns(["metadata"])):
            library_of(row, where, i)

    def clean_rows(self, dataset: Dataset, where: str) -> Dataset:
        files = local_files(where.rsplit(" (", 1)[0])  # where: "<source> (<split>)", rows still in file order
        found = Counter(library_of(row, where, i, files) for i, row in enumerate(dataset.select_columns(["metadata"])))
        if not self.libraries:
            return dataset
        wanted = {lib.lower() for lib in self.libraries}
        unknown = [lib for lib in self.libraries if lib.lower() not in {f.lower() for f in found}]
        if unknown:
            raise IncompatibleConfig(f"data.init_args.libraries: {where} has no problem of library "
                                     f"{', '.join(unknown)}; found {dict(found)}")
        kept = dataset.filter(lambda m: m["library"].lower() in wanted, input_columns="metadata")
        log.info("[lit-lora] %s: kept %d of %d problems (libraries %s)", where, len(kept), len(dataset),
                 ", ".join(sorted(self.libraries)))
        return kept

    def row_group(self, row: dict) -> str:
        return library_of(row)

    def format_example(self, row: dict) -> Example:
        prompt, code = row["prompt"] or "", row["reference_code"] or ""
        if not prompt.strip():
            return "empty prompt"
        if not code.strip():
            return "empty reference_code"
        if self.template == "chat":
            from lit_lora.data.templates import render_prompt

            prompt = render_prompt("chat", self.tokenizer, prompt, "", self.system_prompt)
        return prompt, code
