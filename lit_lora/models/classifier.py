"""Sequence classification (``AutoModelForSequenceClassification``): RoBERTa-style encoders and decoder LLMs.

    lit-lora fit  --config configs/tutorials/nli_roberta_lora.yaml
    lit-lora test --config configs/tutorials/nli_roberta_lora.yaml --ckpt_path runs/nli_roberta_lora/.../last.ckpt

Encoders classify from their first token; decoder LLMs (Llama, Gemma, Phi …ForSequenceClassification)
from the last token that is not padding, found from ``config.pad_token_id`` (set here from the
tokenizer), which is right for left- and right-padded batches alike.

Label names (hence ``num_labels``, ``id2label``, ``label2id``) come from the datamodule. The CLI links
``data.label_names`` to ``model.init_args.label_names`` at instantiation; jsonargparse skips that link
for a datamodule without ``label_names`` or a module without the argument, so one link serves every
module and datamodule pair. Built outside the CLI, the module takes them from the data contract in ``setup``
(``lit_lora.models.labels``) when ``label_names`` is not given, and ``configure_model`` fails when neither names any.
Evaluation is ``lit_lora.evaluation.evaluators.ClassificationEvaluator`` (per evaluation set).

The classification head (the model's children other than its backbone, e.g. ``classifier`` for
RoBERTa, ``score`` for Llama) is derived from the architecture: it is added to the adapter's
``modules_to_save`` (trained in full and saved with a LoRA / QLoRA / prompt adapter) and kept out of
4-bit quantization.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from lit_lora.cluster.lightning_compat import attached_trainer
from lit_lora.cluster.sharding import outside_zero3_init
from lit_lora.errors import CheckpointSettingsMismatch, IncompatibleConfig
from lit_lora.evaluation.evaluators import ClassificationEvaluator
from lit_lora.models.base import MODEL_INPUT_KEYS, FineTuneModule
from lit_lora.models.labels import LabelledModule

log = logging.getLogger("lit_lora")
LABELS_FILE = "classifier_labels.json"


def head_module_names(model: nn.Module) -> list[str]:
    """Children of a ``…ForSequenceClassification`` model that are not its backbone and hold weights."""
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != prefix and any(True for _ in child.parameters())]


def head_pools_last_token(model_type: str) -> bool:
    """Whether the architecture's classifier pools the last non-pad token (a decoder-only LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, \
        MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


# encoders whose positions are a learned table: RoBERTa's starts after the padding index
LEARNED_POSITIONS = {"roberta": True, "xlm-roberta": True, "camembert": True, "bert": False, "distilbert": False,
                     "electra": False, "albert": False}


def check_positions(config, max_length: int, virtual_tokens: int, model: str) -> None:
    """Refuse a ``max_length`` (plus a prompt method's virtual tokens) past the positions an encoder has learned:
    the embedding lookup would fail at the first long row, deep inside the forward (a device assert on a GPU)."""
    if config.model_type not in LEARNED_POSITIONS:
        return
    offset = (config.pad_token_id + 1) if LEARNED_POSITIONS[config.model_type] else 0
    limit = config.max_position_embeddings - offset
    if max_length + virtual_tokens > limit:
        prompt = f" + {virtual_tokens} virtual tokens" if virtual_tokens else ""
        raise IncompatibleConfig(f"data.max_length {max_length}{prompt} is more than the {limit} positions {model} "
                         f"({config.model_type}) has learned: set data.init_args.max_length to at most "
                         f"{limit - virtual_tokens}")


def left_align(batch: dict) -> dict:
    """Move right padding to the left (each row rolled by its pad count); a left-padded batch is returned as is.

    peft's prompt tuning / P-tuning hand a decoder ``inputs_embeds`` only, so its classifier pools the
    last *position*; with left padding that is the last real token.
    """
    mask = batch["attention_mask"]  # (batch, seq)
    if bool(mask[:, -1].all()):
        return batch
    length = mask.shape[1]
    shift = (mask == 0).sum(dim=1, keepdim=True)  # (batch, 1)
    index = (torch.arange(length, device=mask.device).unsqueeze(0) - shift) % length
    return {k: (torch.gather(v, 1, index) if torch.is_tensor(v) and v.shape == mask.shape else v)
            for k, v in batch.items()}


class SequenceClassifierModule(LabelledModule, FineTuneModule):
    """``AutoModelForSequenceClassification`` trained with any adapter; accuracy / precision / recall / F1.

    Args:
        label_names: Class names in label-index order; linked from the datamodule by the CLI
            (not a YAML key there).
    """

    task_type: ClassVar[str] = "SEQ_CLS"
    auto_model_class: ClassVar[Any] = AutoModelForSequenceClassification
    # Under ZeRO-3 the base is loaded whole: peft copies a partitioned head in the 16-bit dtype while
    # LoRA weights stay float32, and ZeRO-3 refuses trainable parameters of mixed dtypes.
    loads_zero3_partitions: ClassVar[bool] = False
    evaluator_class: ClassVar[type] = ClassificationEvaluator

    def __init__(self, *args, label_names: Optional[list[str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_names = list(label_names) if label_names else None
        self.head_modules: list[str] = []
        self.align_left = False
        self.pools_last_token = False  # a decoder LM's head pools its last token (set from the architecture)
        self._accepted_inputs: Optional[set[str]] = None

    # ---- labels and building --------------------------------------------------------------------
    def load_kwargs(self) -> dict:
        kwargs = super().load_kwargs()
        kwargs["num_labels"] = len(self.label_names)
        kwargs["id2label"] = dict(enumerate(self.label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(self.label_names)}
        if "quantization_config" in kwargs:  # the head trains in full: never quantize it
            quantization = copy.deepcopy(kwargs["quantization_config"])
            quantization.llm_int8_skip_modules = list(self.head_modules)
            kwargs["quantization_config"] = quantization
        return kwargs

    def prepare_architecture(self, config) -> None:
        """The head of ``config``'s architecture for the label names: sized, named (``head_modules``), trained by
        the adapter (``with_trained_modules``) and kept out of quantization (``load_kwargs``)."""
        self.resolve_label_names()  # fails without any
        warn_on_relabelling(config, self.label_names, self.model_name_or_path)
        config.num_labels = len(self.label_names)
        if self.data_contract is not None:  # estimate prepares the architecture without data
            check_positions(config, self.data_contract.max_length, self.adapter.spec().virtual_tokens,
                            self.model_name_or_path)
        self.pools_last_token = head_pools_last_token(config.model_type)
        with outside_zero3_init(), torch.device("meta"):  # architecture only: which modules form the head
            self.head_modules = head_module_names(AutoModelForSequenceClassification.from_config(
                config, trust_remote_code=self.trust_remote_code))
        self.adapter = self.adapter.with_trained_modules(self.head_modules)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()  # models.builder: prepare_architecture (label names checked), load, adapt
        self.set_pad_token_id()
        self.check_head_trainable()
        prompt_learning = self.is_peft and self.model.peft_config["default"].is_prompt_learning
        self.align_left = prompt_learning and self.pools_last_token and self.adapter.method != "prefix_tuning"

    def set_pad_token_id(self) -> None:
        """The decoder pools on ``config.pad_token_id``: it must be the tokenizer's pad token."""
        config = self.model.config
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else None
        if pad is not None and config.pad_token_id != pad:
            if config.pad_token_id is not None:
                log.warning("config.pad_token_id %s differs from the tokenizer's pad token %s; using the tokenizer's",
                            config.pad_token_id, pad)
            config.pad_token_id = pad
        if config.pad_token_id is None:
            raise ValueError(f"{self.model_name_or_path}: no pad_token_id in the config and no tokenizer to take it "
                             f"from; the classifier cannot find the last real token of a padded batch")

    def check_head_trainable(self) -> None:
        """A new head must train; an adapter that leaves it frozen fails here, not after an epoch at chance."""
        trainable = [name for name, p in self.model.named_parameters() if p.requires_grad
                     and any(f".{h}." in f".{name}" for h in self.head_modules)]
        if not trainable:
            raise ValueError(f"{self.adapter.method}: the classification head ({', '.join(self.head_modules)}) "
                             f"is frozen; nothing would learn the new labels")

    # ---- forward and steps ----------------------------------------------------------------------
    def accepted_inputs(self) -> set[str]:
        """The base model's forward arguments (RoBERTa takes ``token_type_ids``, Llama does not)."""
        if self._accepted_inputs is None:
            inner = self.model.get_base_model() if self.is_peft else self.model
            self._accepted_inputs = set(inspect.signature(inner.forward).parameters)
        return self._accepted_inputs

    def model_inputs(self, batch: dict) -> dict:
        if self.align_left:
            batch = left_align(batch)
        return {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS and k in self.accepted_inputs()}

    shifts_labels: ClassVar[bool] = False  # one label per row: the token-normalised loss becomes row-normalised

    def forward(self, batch: dict, **kwargs: Any) -> Any:
        if self.align_left and not bool(batch["attention_mask"].all()):
            return self.forward_unpadded(batch, **kwargs)
        return self.model(**self.model_inputs(batch), **kwargs)

    def forward_unpadded(self, batch: dict, **kwargs: Any) -> SequenceClassifierOutput:
        """Prompt learning on a decoder: rows of one length run together, without padding, their logits put back
        in row order. peft hands the decoder ``inputs_embeds`` only, which transformers numbers 0..L-1 whatever the
        mask: left padding would sit between the virtual tokens and a row's own, so a row's logits would depend on
        its batch. Unpadded, the last position is the last real token (what the head pools)."""
        inputs = {k: v for k, v in self.model_inputs(batch).items() if k != "labels"}  # left-aligned
        lengths = batch["attention_mask"].sum(dim=1)
        logits = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero(as_tuple=True)[0]
            part = self.model(**{k: v[rows][:, -length:] for k, v in inputs.items()}, **kwargs).logits
            logits = part.new_zeros(len(lengths), *part.shape[1:]) if logits is None else logits
            logits = logits.index_copy(0, rows, part)
        return SequenceClassifierOutput(logits=logits)

    def loss_forward_kwargs(self) -> dict:
        return {"use_cache": False} if "use_cache" in self.accepted_inputs() else {}

    # ---- saving ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lit_lora"]["label_names"] = self.label_names

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("lit_lora", {}).get("label_names")
        if saved is not None and list(saved) != self.label_names:
            raise CheckpointSettingsMismatch(f"checkpoint was trained with labels {saved}, this run has "
                                             f"{self.label_names}: use the label names of its run")
        super().on_load_checkpoint(checkpoint)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """The model or adapter, plus ``classifier_labels.json`` (a peft adapter directory has no config)."""
        out = super().save_pretrained(out_dir)
        if attached_trainer(self) is None or self.trainer.is_global_zero:
            labels = {"num_labels": len(self.label_names), "id2label": dict(enumerate(self.label_names)),
                      "label2id": {n: i for i, n in enumerate(self.label_names)}, "head_modules": self.head_modules}
            (out / LABELS_FILE).write_text(json.dumps(labels, indent=2))
        return out


def warn_on_relabelling(config, label_names: list[str], where: str) -> None:
    """A checkpoint already fine-tuned with named labels in another order would silently swap classes."""
    saved = [str(v).lower() for _, v in sorted((getattr(config, "id2label", None) or {}).items())]
    if saved and not all(v.startswith("label_") for v in saved) and saved != [n.lower() for n in label_names]:
        log.warning("%s was trained with labels %s; this run maps indices to %s (the head is re-fit, "
                    "and its baseline predictions use the old order)", where, saved, label_names)
