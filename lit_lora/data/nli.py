"""MultiNLI and SNLI for a sequence classifier: (premise, hypothesis) pairs → entailment / neutral / contradiction.

    lit-lora fit --config configs/tutorials/nli_roberta_lora.yaml                            # bundled samples
    lit-lora fit --config configs/tutorials/nli_roberta_lora.yaml --data.init_args.source nyu-mll/multi_nli

Labels are the hub's integers (0 entailment, 1 neutral, 2 contradiction) or those names as strings;
a float that is an integer counts as it (``1.0``: pandas reads a CSV label column with a blank cell as
floats), and so does an integer as text (``"-1"``: a column that mixes names and numbers is text).
SNLI marks pairs without a gold label with -1, and a blank label (an empty CSV cell, a null) is no
gold label in either dataset: such pairs are dropped and counted. Any other label is an error that
names the file, the data row and its line, and the value, raised in ``setup`` before tokenisation.

MultiNLI is evaluated on ``validation_matched`` and ``validation_mismatched`` separately (two
validation dataloaders, metrics named ``val_matched/…`` and ``val_mismatched/…``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional, Union

from datasets import Dataset

from lit_lora.errors import IncompatibleConfig
from lit_lora.data.base import TextDataModule
from lit_lora.data.collators import PadCollator
from lit_lora.data.file_errors import DataFileError, describe_row
from lit_lora.data.sources import load_rows, local_files, take_subset

LABEL_NAMES = ("entailment", "neutral", "contradiction")
NO_GOLD_LABEL = -1


def is_blank(value: Any) -> bool:
    """No label at all: null, NaN (how pandas reads an empty CSV cell) or an empty string."""
    return value is None or (isinstance(value, float) and math.isnan(value)) \
        or (isinstance(value, str) and not value.strip())


def integral(value: Any) -> Any:
    """``1.0`` and ``"1"`` as ``1`` (a CSV label column with a blank cell is read as floats, one that also holds
    label names as text); any other value as it is. Class and "no gold label" are both told from this."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return int(value) if isinstance(value, float) and value.is_integer() else value


class NLIRows:
    """Loading and label checking shared by the classifier and the label-word NLI datamodules.

    A dataset mixin sets ``default_eval``: evaluation set name → (hub split, bundled file), and
    ``no_gold_label`` (the label value that means "no gold label", dropped and counted), if any.

    Args:
        eval_sources: Evaluation files by name (e.g. ``{matched: dev_m.jsonl, mismatched: dev_mm.jsonl}``)
            for a local ``source``; a hub ``source`` uses its own validation splits, the bundled
            sample its bundled validation files.
    """

    label_names: list[str] = list(LABEL_NAMES)
    text_columns: ClassVar[tuple[str, ...]] = ("premise", "hypothesis")
    default_eval: ClassVar[dict[str, tuple[str, str]]] = {}
    no_gold_label: ClassVar[Optional[int]] = None

    def __init__(self, *args, eval_sources: Optional[dict[str, str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_sources = eval_sources
        self.eval_names: list[str] = []

    # ---- which files / splits ------------------------------------------------------------------
    def eval_plan(self) -> dict[str, tuple[str, str]]:
        """Evaluation set name → (source, split); empty means "hold out ``val_fraction`` of train"."""
        if self.eval_sources:
            return {name: (src, "train") for name, src in self.eval_sources.items()}
        if self.validation_source or self.validation_split:
            return {"validation": (self.validation_source or self.source, self.validation_split or "train")}
        if local_files(self.source) is None:  # a hub dataset: its own validation splits
            return {name: (self.source, split) for name, (split, _) in self.default_eval.items()}
        if self.source == self.default_source:
            return {name: (bundled, "train") for name, (_, bundled) in self.default_eval.items()}
        return {}

    def load_checked(self, source: str, split: str, name: str) -> Dataset:
        rows = load_rows(source, split, self.subset, self.required_columns, self.text_columns)
        where = f"{source} ({name})"
        self.check_rows(rows, where, source)  # before any subset, so row numbers are the file's
        return self.clean_rows(rows, where)

    def load_raw_splits(self) -> dict[str, Dataset]:
        self.check_local_splits()  # a local file has no splits: its validation_split would be its training rows
        train = self.load_checked(self.source, self.split, "train")
        plan = self.eval_plan()
        splits: dict[str, Dataset] = {}
        if plan:
            splits["train"] = take_subset(train, self.max_samples, self.sample_fraction, self.seed)
            for name, (source, split) in plan.items():
                splits[name] = self.load_checked(source, split, name)
        else:
            splits = dict(zip(("train", "validation"), self.split_off_validation(train)))
        if self.max_eval_samples is not None:
            for name in splits:
                if name != "train":
                    splits[name] = splits[name].select(range(min(self.max_eval_samples, len(splits[name]))))
        self.eval_names = [name for name in splits if name != "train"]
        return splits

    # ---- labels --------------------------------------------------------------------------------
    def label_id(self, value: Any) -> Optional[int]:
        """Class index of a raw label (int, integral float or label name); ``None`` if it is not a valid label."""
        value = integral(value)
        if isinstance(value, str):
            value = value.strip().lower()
            return self.label_names.index(value) if value in self.label_names else None
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if 0 <= value < len(self.label_names) else None

    def no_gold_reason(self, value: Any) -> Optional[str]:
        """The drop reason of a label that says "no gold label" (a blank, or the dataset's value), else None."""
        if is_blank(value):
            return "no gold label (blank)"
        if self.no_gold_label is not None and integral(value) == self.no_gold_label:
            return f"no gold label ({self.no_gold_label})"
        return None

    def check_rows(self, dataset: Dataset, where: str, source: Optional[str] = None) -> None:
        """Fail on the first label that is neither a class nor "no gold label"; with ``source`` (rows in file
        order) the message also gives the row's line."""
        allowed = [f"{i} ({n})" for i, n in enumerate(self.label_names)]
        if self.no_gold_label is not None:
            allowed.append(f"{self.no_gold_label} (no gold label)")
        allowed.append("a blank (no gold label)")
        for i, value in enumerate(dataset["label"]):
            if self.label_id(value) is None and self.no_gold_reason(value) is None:
                at = describe_row(local_files(source) if source else None, i)
                raise DataFileError(f"{where}: {at}, field 'label': {value!r} is not a label; "
                                 f"expected {', '.join(allowed[:-1])} or {allowed[-1]}")

    def row_label(self, row: dict) -> Union[int, str]:
        """The class index of ``row``, or a drop reason for a row without a gold label / text."""
        reason = self.no_gold_reason(row["label"])
        if reason:
            return reason
        if not (row["premise"] or "").strip() or not (row["hypothesis"] or "").strip():
            return "empty premise or hypothesis"
        return self.label_id(row["label"])

    # ---- evaluation loaders --------------------------------------------------------------------
    def val_dataloader(self):
        loaders = [self.eval_loader(name) for name in self.eval_names]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self):
        return self.val_dataloader()

    def eval_splits(self, stage: str) -> list[str]:
        return list(self.eval_names)  # test scores the evaluation sets too (MultiNLI: matched and mismatched)


class PairCollator(PadCollator):
    """``PadCollator`` that pads ``token_type_ids`` with 0 (segment A), not with the pad token id."""

    def pad_value(self, key: str) -> int:
        return 0 if key == "token_type_ids" else super().pad_value(key)


class NLIDataModule(NLIRows, TextDataModule):
    """Premise / hypothesis pairs encoded together for ``SequenceClassifierModule``.

    The pair is truncated to ``max_length`` by shortening the longer side first (``longest_first``),
    so neither sentence is cut away while the other has room. ``labels`` is the class index.
    """

    required_columns: ClassVar[tuple[str, ...]] = ("premise", "hypothesis", "label")
    truncation: ClassVar[str] = "the longer of premise and hypothesis shortened"

    def setup(self, stage: Optional[str] = None) -> None:
        if not self.datasets and self.tokenizer is not None:
            self.check_pair_room()
        super().setup(stage)

    def check_pair_room(self) -> None:
        """Refuse a ``max_length`` that leaves no token of each sentence beside a pair's special tokens: below the
        special tokens the tokenizer cuts nothing (rows stay longer than ``max_length``), just above them it cuts a
        sentence away entirely; either way the rows were logged as merely shortened."""
        special = self.tokenizer.num_special_tokens_to_add(pair=True)
        if self.max_length < special + 2:
            raise IncompatibleConfig(
                f"data.init_args.max_length {self.max_length} leaves no room for a premise and a hypothesis: "
                f"{self.tokenizer.name_or_path} adds {special} special tokens to a pair and each sentence needs one "
                f"token at least; set max_length to at least {special + 2}")

    def encode_row(self, row: dict) -> dict:
        label = self.row_label(row)
        if isinstance(label, str):
            return {"_drop": label}
        # a sentence's "<s>" / "</s>" is text, not a CLS / SEP in the middle of the pair
        features = self.tokenizer(row["premise"], row["hypothesis"], split_special_tokens=True)
        truncated = len(features["input_ids"]) > self.max_length
        if truncated:  # counted by the base class; the longer side is shortened first
            features = self.tokenizer(row["premise"], row["hypothesis"], truncation="longest_first",
                                      max_length=self.max_length, split_special_tokens=True)
        return {**{k: list(v) for k, v in features.items()}, "labels": label, "_truncated": truncated}

    def empty_features(self) -> dict[str, Any]:
        keys = self.tokenizer("a", "b").keys()
        return {**{k: [] for k in keys}, "labels": 0}

    def collate_fn(self):
        return PairCollator(pad_token_id=self.tokenizer.pad_token_id, padding_side=self.padding_side)


class MultiNLI:
    """The ``nyu-mll/multi_nli`` schema: evaluated on the matched and the mismatched genres apart."""

    required_columns: ClassVar[tuple[str, ...]] = ("premise", "hypothesis", "label", "genre")
    default_source: ClassVar[Optional[str]] = "multinli_train.jsonl"
    default_eval: ClassVar[dict[str, tuple[str, str]]] = {
        "matched": ("validation_matched", "multinli_validation_matched.jsonl"),
        "mismatched": ("validation_mismatched", "multinli_validation_mismatched.jsonl"),
    }


class SNLI:
    """The ``stanfordnlp/snli`` schema; label -1 (annotators gave no gold label) is dropped and counted."""

    required_columns: ClassVar[tuple[str, ...]] = ("premise", "hypothesis", "label")
    default_source: ClassVar[Optional[str]] = "snli_train.jsonl"
    default_eval: ClassVar[dict[str, tuple[str, str]]] = {"validation": ("validation", "snli_validation.jsonl")}
    no_gold_label: ClassVar[Optional[int]] = NO_GOLD_LABEL


class MultiNLIDataModule(MultiNLI, NLIDataModule):
    """MultiNLI pairs for a sequence classifier (bundled sample by default; ``source: nyu-mll/multi_nli``)."""


class SNLIDataModule(SNLI, NLIDataModule):
    """SNLI pairs for a sequence classifier (bundled sample by default; ``source: stanfordnlp/snli``)."""
