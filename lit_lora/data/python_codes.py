"""python-codes-25k (instruction, input, output, text) with optional code cleaning, for causal or seq2seq models.

    lit-lora fit --config configs/tutorials/codet5_lora.yaml --data.init_args.cleaning.dedupe true

The same class serves a causal LM and an encoder-decoder (CodeT5 / T5): the tokenisation follows
the model (``SFTDataModule.encoder_decoder``).
"""

from __future__ import annotations

import logging

from datasets import Dataset

from lit_lora.data.cleaning import CodeCleaning, clean_rows
from lit_lora.data.file_errors import DataFileError
from lit_lora.data.instruction import InstructionDataModule

log = logging.getLogger("lit_lora")


class PythonCodesDataModule(InstructionDataModule):
    """python-codes-25k with the cleaning switches of ``CodeCleaning`` applied to ``output`` before the split.

    Args:
        cleaning: Which cleaning steps run (each change is counted in the log).
    """

    def __init__(self, *args, cleaning: CodeCleaning = CodeCleaning(), **kwargs):
        super().__init__(*args, **kwargs)
        self.cleaning = cleaning
        self.cleaning_counts: dict = {}

    def clean_rows(self, dataset: Dataset, where: str) -> Dataset:
        if not self.cleaning.enabled:
            return dataset
        rows, counts = clean_rows(dataset.to_list(), self.cleaning)
        self.cleaning_counts[where] = dict(counts)
        detail = ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "nothing changed"
        # the file's rows, before the validation rows are split off (the "train: kept" line comes after)
        log.info("[lit-lora] cleaning %s: %d of its %d file rows kept; %s", where, len(rows), len(dataset), detail)
        if not rows:
            raise DataFileError(f"{where}: cleaning removed every row ({detail})")
        return Dataset.from_list(rows)
