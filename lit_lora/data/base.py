"""The DataModule every dataset shares: source, split, subset, tokenise (cached), dataloaders.

A dataset is a small subclass that names its ``required_columns``, its bundled ``default_source``,
and implements ``encode_row(row) -> dict`` (model features, or ``{"_drop": reason}``). Rows that
cannot train are never dropped silently: each is counted by reason and the counts are logged::

    [lit-lora] train: kept 288 of 290 rows; dropped 2 (1 empty output, 1 response truncated away)
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter
from typing import Any, ClassVar, Optional

import lightning as L
from datasets import Dataset
from torch.utils.data import DataLoader

from lit_lora.errors import IncompatibleConfig
from lit_lora.data.cache_key import tokenised_rows_key
from lit_lora.data.collators import PackCollator, PadCollator
from lit_lora.data.contract import (TRAINING_SPLIT_KEYS, DataContract, declared_flattened_packing,
                                    declared_packing_refusal)
from lit_lora.data.eval_sharding import CountedEvalSampler, CountedRows
from lit_lora.data.file_errors import DataFileError
from lit_lora.data.packing import packed_train_loader, packing_summary, size_deepspeed_micro_batches
from lit_lora.data.resumable import train_loader, training_rows
from lit_lora.data.sources import load_rows, refuse_local_split, take_subset
from lit_lora.model_source import resolve_model_path
from lit_lora.verbosity import EVERY_RANK

log = logging.getLogger("lit_lora")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    """``AutoTokenizer`` with a pad token: the EOS token is borrowed (with a warning) when there is none.

    ``name_or_path`` is resolved first (``lit_lora.model_source``): a relative path is also looked for
    in the installed package, and one that names nothing stops with one line saying what was tried.
    """
    from transformers import AutoTokenizer

    name_or_path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(f"tokenizer {name_or_path} has neither a pad, an eos nor an unk token to pad with")
        log.warning(
            "tokenizer %s has no pad token; padding with %r. Padding is masked out of attention and labels, "
            "and the EOS closing each response still counts in the loss.", name_or_path, fallback,
        )
        tokenizer.pad_token = fallback
    return tokenizer


def declared_default(cls: type, name: str) -> Any:
    """The default of ``name`` in the nearest ``__init__`` of ``cls`` that takes it (DS-1000's ``split``: test)."""
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is not None and name in inspect.signature(init).parameters:
            return inspect.signature(init).parameters[name].default
    return None


# the smallest value of each count-like data setting
MINIMUM = {"max_samples": 1, "max_eval_samples": 1, "max_length": 2, "batch_size": 1, "eval_batch_size": 1,
           "max_tokens_per_batch": 1, "num_workers": 0}


def check_ranges(sample_fraction: Optional[float], **counts: Optional[int]) -> None:
    """Refuse a data setting out of its range before anything loads, named as its config key (``sample_fraction:
    5`` otherwise failed deep in the subset). ``val_fraction`` is checked where it is used (``load_raw_splits``):
    a datamodule with validation data of its own never reads it."""
    problems = []
    if sample_fraction is not None and not 0 < sample_fraction <= 1:
        problems.append(f"sample_fraction must be above 0 and at most 1, got {sample_fraction!r}")
    problems += [f"{name} must be at least {MINIMUM[name]}, got {value!r}"
                 for name, value in counts.items() if value is not None and value < MINIMUM[name]]
    if problems:
        raise IncompatibleConfig("data.init_args." + "; data.init_args.".join(problems))


class TextDataModule(L.LightningDataModule):
    """Shared loading, splitting, subsetting, tokenisation and batching.

    Args:
        source: Hub dataset id, a local json / jsonl / parquet / csv file or directory, or a bundled
            sample name; ``None`` uses this dataset's bundled sample.
        split: Split of a hub ``source`` to train on (a local file has no splits: naming one is refused).
        subset: Hub dataset configuration name, if it has several.
        validation_source: Separate validation data (same forms as ``source``); else ``validation_split``
            of ``source``; else a seeded ``val_fraction`` of the training rows.
        validation_split: Split of a hub ``source`` to validate on (e.g. ``validation_matched``); not for a file.
        val_fraction: Fraction of training rows held out for validation when no validation data is named.
        max_samples: Keep only the first N training rows.
        sample_fraction: Keep a seeded random fraction of the training rows (e.g. 0.05).
        max_eval_samples: Keep only the first N validation rows.
        seed: Seed of the validation split, the sampled subset and the training order (``seed + epoch`` each
            epoch); ``seed_everything`` seeds the weights and dropout, not these.
        max_length: Longest tokenised row; longer rows are truncated (and counted) as the dataset defines.
        batch_size: Training batch size per device.
        group_by_length: Batch training rows of similar length together (less padding; seeded, resumable,
            sharded across ranks: ``lit_lora.data.length_grouping``); ``false`` draws a seeded random order.
            On by default for SFT data (``SFTDataModule``), off here for classification rows.
        packing: Pack training rows into sequences of at most ``max_length`` tokens, with no attention across
            rows (``lit_lora.data.packing``; causal-LM SFT data only; replaces ``group_by_length``).
            Validation and test batches stay unpacked.
        max_tokens_per_batch: With ``packing``, the token budget of a batch, which replaces the row count: a batch
            holds ``max_tokens_per_batch // max_length`` packed sequences (default: ``max_length × batch_size``,
            i.e. ``batch_size`` sequences).
        eval_batch_size: Validation / test batch size per device (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        tokenizer_name_or_path: Set from ``model.model_name_or_path`` by the CLI; not a YAML key there.
        trust_remote_code: Run tokenizer code shipped with the checkpoint; set from the model's
            ``trust_remote_code`` by the CLI (the model owns the setting); not a YAML key there.
    """

    required_columns: ClassVar[tuple[str, ...]] = ()
    # required columns a JSON row may leave out, read as null (a null that means empty, not a dropped row)
    row_may_omit: ClassVar[tuple[str, ...]] = ()
    # required columns the rows are read as text from: strings, or nulls read as empty (checked on load)
    text_columns: ClassVar[tuple[str, ...]] = ()
    default_source: ClassVar[Optional[str]] = None
    padding_side: ClassVar[str] = "right"
    # what a row cut at max_length loses, for the console's count of them
    truncation: ClassVar[str] = "response shortened"
    encoder_decoder: bool = False  # classification rows; SFTDataModule tokenises for either kind of model
    eval_names: tuple[str, ...] = ("validation",)  # names of the validation dataloaders (NLI: matched, mismatched)

    def __init__(
        self,
        source: Optional[str] = None,
        split: str = "train",
        subset: Optional[str] = None,
        validation_source: Optional[str] = None,
        validation_split: Optional[str] = None,
        val_fraction: float = 0.1,
        max_samples: Optional[int] = None,
        sample_fraction: Optional[float] = None,
        max_eval_samples: Optional[int] = None,
        seed: int = 42,
        max_length: int = 512,
        batch_size: int = 8,
        group_by_length: bool = False,
        packing: bool = False,
        max_tokens_per_batch: Optional[int] = None,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        tokenizer_name_or_path: Optional[str] = None,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        check_ranges(sample_fraction=sample_fraction, max_samples=max_samples,
                     max_eval_samples=max_eval_samples, max_length=max_length, batch_size=batch_size,
                     eval_batch_size=eval_batch_size, max_tokens_per_batch=max_tokens_per_batch,
                     num_workers=num_workers)
        self.save_hyperparameters()
        self.source = source or self.default_source
        if self.source is None:
            raise ValueError(f"{type(self).__name__}: set data.source (a hub id or a local file)")
        self.split = split
        self.subset = subset
        self.validation_source = validation_source
        self.validation_split = validation_split
        self.val_fraction = val_fraction
        self.max_samples = max_samples
        self.sample_fraction = sample_fraction
        self.max_eval_samples = max_eval_samples
        self.seed = seed
        self.max_length = max_length
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.packing = packing
        self.max_tokens_per_batch = max_tokens_per_batch or max_length * batch_size
        if max_tokens_per_batch is not None and not packing:
            log.warning("[lit-lora] max_tokens_per_batch applies to packed batches only; set packing: true to use it")
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.trust_remote_code = trust_remote_code
        self.tokenizer = load_tokenizer(tokenizer_name_or_path, trust_remote_code, padding_side=self.padding_side) \
            if tokenizer_name_or_path else None
        self.datasets: dict[str, Dataset] = {}
        self.drop_counts: dict[str, Counter] = {}
        self.truncated_counts: dict[str, int] = {}  # kept rows whose response was cut at max_length

    # ---- hooks a dataset implements ---------------------------------------------------------
    def encode_row(self, row: dict) -> dict:
        """Model features of one raw row, or ``{"_drop": "reason"}`` for a row that cannot train.

        Features may carry ``"_truncated": True`` for a kept row that was cut at ``max_length``: such
        rows are counted and logged, never shortened silently.
        """
        raise NotImplementedError

    def check_rows(self, dataset: Dataset, where: str) -> None:
        """Raise (naming ``where`` and the row) on input that is an error rather than a skip."""

    def packing_refusal(self) -> Optional[str]:
        """Why this dataset's rows cannot be packed (``None``: they can); ``SFTDataModule`` packs causal-LM rows."""
        return (f"packing: true needs a causal LM; {type(self).__name__} holds classification rows "
                "(one label per row), not prompt → response text")

    def clean_rows(self, dataset: Dataset, where: str) -> Dataset:
        """Filter / rewrite raw rows before the split (e.g. dedupe, so no duplicate crosses train and validation)."""
        return dataset

    # ---- loading ------------------------------------------------------------------------------
    def load_raw_splits(self) -> dict[str, Dataset]:
        self.check_local_splits()
        train = self.clean_rows(load_rows(self.source, self.split, self.subset, self.required_columns,
                                          self.text_columns, self.row_may_omit), f"{self.source} (train)")
        if self.validation_source or self.validation_split:
            val = load_rows(self.validation_source or self.source, self.validation_split or "train",
                            self.subset, self.required_columns, self.text_columns, self.row_may_omit)
            val = self.clean_rows(val, f"{self.validation_source or self.source} (validation)")
            train = take_subset(train, self.max_samples, self.sample_fraction, self.seed)
        else:
            train, val = self.split_off_validation(train)
        if self.max_eval_samples is not None:
            val = val.select(range(min(self.max_eval_samples, len(val))))
        return {"train": train, "validation": val}

    def check_local_splits(self) -> None:
        """Refuse a split named for a local file, which has none (``sources.refuse_local_split``); the class's own
        default ``split`` (DS-1000's ``test``, for its hub id) is no choice, and stays allowed."""
        if self.split != declared_default(type(self), "split"):
            refuse_local_split("split", self.split, self.source, "the training rows")
        refuse_local_split("validation_split", self.validation_split, self.validation_source or self.source,
                           "the validation rows" if self.validation_source else
                           "the training rows, and validation would be those same rows")

    def split_off_validation(self, train: Dataset) -> tuple[Dataset, Dataset]:
        """``train``'s subset, split into train and ``val_fraction`` validation rows, for a datamodule given no
        validation data; a setting that leaves nothing to split is refused naming the key."""
        train = take_subset(train, self.max_samples, self.sample_fraction, self.seed)
        if len(train) < 2:
            raise DataFileError(f"{self.source}: {len(train)} row(s) cannot be split into train and validation")
        if not 0 < self.val_fraction < 1:  # datasets would fail on it as a "test_size"
            raise IncompatibleConfig(f"data.init_args.val_fraction must be between 0 and 1 (both excluded), "
                                     f"got {self.val_fraction!r}")
        if math.floor(len(train) * (1 - self.val_fraction)) < 1:  # datasets' train size; validation gets >= 1
            raise IncompatibleConfig(f"data.init_args.val_fraction {self.val_fraction!r} of {len(train)} rows "
                                     "leaves train or validation empty: use more rows or another fraction")
        parts = train.train_test_split(test_size=self.val_fraction, seed=self.seed)
        return parts["train"], parts["test"]

    def cache_fingerprint(self, dataset: Dataset, split: str) -> str:
        """Key of the tokenised cache: the raw data, this class and its code, its settings and the tokenizer
        (``data/cache_key.py``)."""
        settings = dict(self.hparams)
        if "encoder_decoder" in settings:  # as decided for the paired module, not the argument (None: ask it)
            settings["encoder_decoder"] = self.encoder_decoder
        return tokenised_rows_key(dataset._fingerprint, type(self), settings, split, self.tokenizer)

    def encode_split(self, dataset: Dataset, split: str) -> Dataset:
        """Tokenise (cached by ``datasets``), then drop the rows that cannot train, counting each reason."""
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs tokenizer_name_or_path (linked from the model)")
        source = self.validation_source if split == "validation" and self.validation_source else self.source
        where = f"{source} ({split})"
        self.check_rows(dataset, where)
        encoded = dataset.map(self._encode_with_drop, remove_columns=dataset.column_names,
                              new_fingerprint=self.cache_fingerprint(dataset, split), desc=f"tokenising {split}")
        reasons = Counter(r for r in encoded["_drop"] if r)
        self.drop_counts[split] = reasons
        if reasons:
            encoded = encoded.filter(lambda r: not r, input_columns="_drop")
        self.truncated_counts[split] = truncated = sum(encoded["_truncated"])
        detail = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        log.info("[lit-lora] %s: kept %d of %d rows%s%s", split, len(encoded), len(dataset),
                 f"; dropped {sum(reasons.values())} ({detail})" if reasons else "",
                 f"; {truncated} kept rows cut at max_length={self.max_length} ({self.truncation})"
                 if truncated else "", extra=EVERY_RANK)  # each rank reads the files itself (on its own node)
        if len(encoded) == 0:
            raise DataFileError(f"{where}: every row was dropped ({detail})")
        return encoded.remove_columns(["_drop", "_truncated"])

    def _encode_with_drop(self, row: dict) -> dict:
        features = self.encode_row(row)
        if "_drop" in features:
            return {**self.empty_features(), "_drop": features["_drop"], "_truncated": False}
        return {**features, "_drop": "", "_truncated": bool(features.pop("_truncated", False))}

    def empty_features(self) -> dict[str, Any]:
        """Placeholder features of a dropped row (same columns, so ``map`` keeps one schema)."""
        return {"input_ids": [], "attention_mask": [], "labels": []}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.packing:
            size_deepspeed_micro_batches(self.trainer, self.sequences_per_batch)
        if self.datasets:
            return
        if self.packing:
            self.check_packing()
        for split, dataset in self.load_raw_splits().items():
            self.datasets[split] = self.encode_split(dataset, split)
        if self.packing:
            self.log_packing()

    # ---- what the module is told (lit_lora.data.contract) ----------------------------------------
    @property
    def prompt_has_special_tokens(self) -> bool:
        """Whether prompt text already carries BOS; classification pairs get the tokenizer's special tokens."""
        return False

    def split_prompts(self, split: str) -> Optional[list[str]]:
        """The ``prompt`` column of a tokenised split, or ``None`` when the split or the column is absent."""
        dataset = self.datasets.get(split)
        return dataset["prompt"] if dataset is not None and "prompt" in dataset.column_names else None

    def contract(self) -> DataContract:
        """What this data decided, for the module (``DataContract``); complete once ``setup`` has run."""
        hparams = dict(self.hparams)
        settings = {k: hparams.get(k) for k in TRAINING_SPLIT_KEYS if k in hparams}
        label_names = getattr(self, "label_names", None)
        return DataContract(
            self.tokenizer, self.prompt_has_special_tokens, self.max_length, bool(self.encoder_decoder),
            prompt_is_row_text=getattr(self, "prompt_is_row_text", True),  # SFT data: every template but chat
            label_names=tuple(label_names) if label_names else None, eval_names=tuple(self.eval_names),
            splits=tuple(self.datasets), test_splits=tuple(self.eval_splits("test")),
            training_settings={**settings, "class": type(self).__qualname__},
            source=str(self.source), data_class=type(self).__name__, prompts=self.split_prompts)

    def check_packing(self) -> None:
        """Refuse ``packing: true`` before any row is read where packed rows would not train correctly
        (``IncompatibleConfig``: the ``lit-lora`` command prints it as one line).

        The data's own reason first (classification rows, encoder-decoder tokenisation), then the module's:
        its model and adapter (``declared_packing_refusal``); the datamodule never reads the model's config.
        """
        if self.max_tokens_per_batch < self.max_length:
            raise IncompatibleConfig(f"data.max_tokens_per_batch ({self.max_tokens_per_batch}) must hold one packed "
                                     f"sequence of data.max_length ({self.max_length}) tokens")
        reason = self.packing_refusal() or declared_packing_refusal(self.trainer)
        if reason is not None:
            raise IncompatibleConfig(f"{reason}: set packing: false")

    def log_packing(self) -> None:
        """One line with the packed plan of the training rows, so the saving shows."""
        lengths = [len(ids) for ids in self.datasets["train"]["input_ids"]]
        plan = packing_summary(lengths, self.max_length, self.sequences_per_batch)
        world = self.trainer.world_size if self.trainer is not None else 1
        log.info("[lit-lora] packing: %d train rows -> %d packed sequences of <= %d tokens, fill %.1f%% "
                 "(non-pad tokens / slots); %d batches of <= %d sequences (max_tokens_per_batch %d) per epoch%s",
                 plan["rows"], plan["sequences"], self.max_length, 100 * plan["fill"], plan["batches"],
                 self.sequences_per_batch, self.max_tokens_per_batch,
                 f", {-(-plan['batches'] // world)} per rank" if world > 1 else "")

    @property
    def sequences_per_batch(self) -> int:
        """Packed sequences in a batch: as many ``max_length`` slots as the token budget holds."""
        return self.max_tokens_per_batch // self.max_length

    # ---- batching -----------------------------------------------------------------------------
    def collate_fn(self):
        return PadCollator(pad_token_id=self.tokenizer.pad_token_id, padding_side=self.padding_side)

    def eval_loader(self, split: str) -> DataLoader:
        """``split`` in order, ``eval_batch_size`` rows a batch; under several ranks every row is evaluated once
        and the repeats that even out the ranks are flagged (``lit_lora/data/eval_sharding.py``)."""
        dataset, sampler = self.datasets[split], None
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:
            dataset, sampler = CountedRows(dataset), CountedEvalSampler(dataset, world, self.trainer.global_rank)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, sampler=sampler,
                          collate_fn=self.collate_fn(), num_workers=self.num_workers)

    def packed_collate_fn(self) -> PackCollator:
        """Stacked packed sequences, or one flattened row where the module declares FlashAttention varlen."""
        return PackCollator(pad_token_id=self.tokenizer.pad_token_id, flatten=declared_flattened_packing(self.trainer))

    def train_dataloader(self) -> DataLoader:
        # seeded order that a mid-epoch checkpoint resumes exactly (see lit_lora/data/resumable.py)
        train = self.datasets["train"]
        lengths = [len(ids) for ids in train["input_ids"]]
        if self.packing:
            loader = packed_train_loader(train, lengths, self.max_length, self.sequences_per_batch, self.seed,
                                         self.packed_collate_fn(), trainer=self.trainer, num_workers=self.num_workers)
        else:
            loader = train_loader(train, self.batch_size, self.seed, self.trainer,
                                  lengths=lengths if self.group_by_length else None, collate_fn=self.collate_fn(),
                                  num_workers=self.num_workers)
        loader.rows = training_rows(lengths)  # a mid-epoch resume checks it trains on the same rows
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.eval_splits("test")[0])

    def eval_splits(self, stage: str) -> list[str]:
        """The splits ``validate`` / ``test`` score (``stage``): ``test`` where the data has one, else
        ``validation``; the metrics and reports name them."""
        return ["test" if stage == "test" and "test" in self.datasets else "validation"]
