"""The LightningModule every head shares: load a pretrained model, apply an adapter, train, save.

Subclasses set ``task_type`` (peft's name) and ``auto_model_class`` and may override ``load_kwargs``.
The model is built in ``configure_model`` (idempotent), not ``__init__``, so that a quantized base is
loaded straight onto each rank's device and ``--print_config`` never touches weights.

Checkpoints hold only the trainable parameters (plus optimizer and loop state): a frozen base is
rebuilt from ``model_name_or_path`` on load, so a LoRA checkpoint of a 7B model is megabytes, not gigabytes.

What the data decided (tokenizer, BOS, ``max_length``, label and evaluation-set names …) arrives once per stage
as a ``DataContract`` (``setup`` -> ``connect``; ``lit_lora.data.contract``). Validation and test are written
here once and hand each call to ``self.evaluator`` (``evaluator_class``; ``lit_lora.evaluation.evaluators``)::

    >>> from lit_lora.models import CausalLMModule, SequenceClassifierModule
    >>> type(CausalLMModule("lit_lora/assets/tiny-llama").evaluator).__name__
    'GenerationEvaluator'
    >>> type(SequenceClassifierModule("lit_lora/assets/tiny-llama").evaluator).__name__
    'ClassificationEvaluator'
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import lightning as L
import torch
from jsonargparse import lazy_instance

from lit_lora.adapters import Adapter, LoRA, parameter_report
from lit_lora.adapters.base import format_parameter_report, to_dtype
from lit_lora.data.contract import DataContract, contract_of
from lit_lora.evaluation.evaluators import Evaluator, LossEvaluator
from lit_lora.model_source import resolve_model_path
from lit_lora.models import builder, checkpoint_state
from lit_lora.models.compiled_layers import check_strategy, compile_layers
from lit_lora.models.label_only_loss import LabelOnlyHead, find_label_only_head, head_input, summed_label_only_loss
from lit_lora.models.packing_support import flattens, model_packing_refusal
from lit_lora.token_loss import label_count, step_label_count, summed_loss
from lit_lora.cluster import sharding
from lit_lora.cluster.fsdp_units import clip_fsdp_grad_norm, root_unit_gathered
from lit_lora.cluster.lightning_compat import attached_trainer
from lit_lora.cluster.sharding import outside_zero3_init, partitioned_loading, partitioned_share, zero3_config
from lit_lora.optim import OptimizerSettings, build_optimizer, check_schedule_length, continue_schedule
from lit_lora.verbosity import EVERY_RANK

log = logging.getLogger(__name__)

# position_ids: packed rows restart at 0, which is how transformers keeps them apart (lit_lora/data/packing.py)
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "decoder_input_ids",
                    "decoder_attention_mask", "position_ids")


class FineTuneModule(L.LightningModule):
    """A pretrained Hugging Face model fine-tuned with one adapter method.

    Args:
        model_name_or_path: Hub id (e.g. ``meta-llama/Meta-Llama-3-8B-Instruct``) or a local model directory.
        adapter: The fine-tuning method: ``lit_lora.adapters.FullFineTuning``, ``LoRA``, ``QLoRA`` …
        optim: Optimizer, learning rate, weight decay and warmup schedule.
        dtype: Dtype to load the weights in (``auto`` = as stored; ``float32``, ``bfloat16``, ``float16``).
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2`` or ``torch_varlen`` (PyTorch's varlen
            kernel: ``models/varlen_attention.py``); ``None``: see ``models/attention.py``.
        trust_remote_code: Run modelling code shipped with the checkpoint (off: only transformers' own classes).
        gradient_checkpointing: Recompute activations in backward to save memory. ``None``: the adapter's
            default (on for ``QLoRA``, as peft's ``prepare_model_for_kbit_training``; off otherwise).
        label_only_loss: Run the LM head only on labelled positions, in chunks, with the loss and its gradient
            computed chunk by chunk (``models/label_only_loss.py``): no ``[tokens, vocab]`` logits are kept. Same
            loss and gradients as full logits; causal LMs only (other heads always use full logits).
        label_only_chunk: Positions per chunk of the label-only head; ``None`` sizes chunks to the vocabulary.
        compile: ``torch.compile`` the transformer layers (``models/compiled_layers.py``): faster steps once the
            first ones have compiled; one device or DDP.
        tokenizer: Set by the CLI from the datamodule (``link_arguments``), and by ``connect`` from the data
            contract; not a YAML key.
    """

    task_type: ClassVar[str] = "CAUSAL_LM"
    auto_model_class: ClassVar[Any] = None
    loads_zero3_partitions: ClassVar[bool] = True  # see configure_model
    evaluator_class: ClassVar[type[Evaluator]] = LossEvaluator  # how validation / test evaluate (self.evaluator)
    encoder_decoder: ClassVar[bool] = False  # the model side of the data's tokenisation (lit_lora.data.contract)

    def __init__(
        self,
        model_name_or_path: str,
        adapter: Adapter = lazy_instance(LoRA),
        optim: OptimizerSettings = OptimizerSettings(),
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        attn_implementation: Optional[str] = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: Optional[bool] = None,
        label_only_loss: bool = True,
        label_only_chunk: Optional[int] = None,
        compile: bool = False,
        tokenizer: Any = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        # a local path as found (also inside the package); a hub id is checked when loading (estimate needs none)
        self.model_name_or_path = resolve_model_path(model_name_or_path, check_hub=False)
        self.adapter = adapter
        self.optim = optim
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.trust_remote_code = trust_remote_code
        self.gradient_checkpointing = gradient_checkpointing
        if label_only_chunk is not None and label_only_chunk < 1:
            raise ValueError(f"label_only_chunk must be a positive number of positions, got {label_only_chunk}")
        self.label_only_loss = label_only_loss
        self.label_only_chunk = label_only_chunk
        self.compile_layers = compile
        self.tokenizer = tokenizer
        self.data_contract: Optional[DataContract] = None  # what the data decided; set by connect
        self.model: Optional[torch.nn.Module] = None
        self.parameter_counts: dict = {}
        self._step_loss_sum: Optional[torch.Tensor] = None  # this optimizer step's summed token losses so far
        self._step_batches = 0
        self._logged_loss_path: Optional[tuple] = None
        # Frozen weights are not in our checkpoints; on_load_checkpoint checks the trainable ones instead.
        self.strict_loading = False
        self.evaluator = self.evaluator_class()  # a child module: its metrics follow the device, sync across ranks

    # ---- building -------------------------------------------------------------------------------
    def load_kwargs(self) -> dict:
        """Arguments for ``from_pretrained``; subclasses add e.g. ``num_labels``."""
        kwargs: dict = {"trust_remote_code": self.trust_remote_code}
        if self.dtype_name != "auto":
            kwargs["dtype"] = to_dtype(self.dtype_name)
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        quantization = self.adapter.quantization_config()
        if quantization is not None:
            kwargs["quantization_config"] = quantization
            kwargs["device_map"] = {"": self._load_device()}
        return kwargs

    def architecture_kwargs(self) -> dict:
        """``load_kwargs`` that shape the model (head size, labels, remote code), not how it is stored."""
        return {k: v for k, v in self.load_kwargs().items()
                if k not in ("quantization_config", "device_map", "dtype", "attn_implementation")}

    def _load_device(self):
        """The device a quantized base is loaded on: this rank's device under any strategy."""
        if attached_trainer(self) is not None:
            device = self.trainer.strategy.root_device
            return device.index if device.type == "cuda" else device.type
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _strategy_name(self) -> str:
        return type(self.trainer.strategy).__name__ if attached_trainer(self) is not None else ""

    def prepare_architecture(self, config) -> None:
        """Set what the module derives from the architecture before the base is loaded (``models.builder``
        calls it, for training and for ``estimate`` alike); a classifier sizes and names its head here."""

    def load_base_model(self) -> torch.nn.Module:
        return builder.load_base(self)  # e.g. Falcon's nn.Linear subclass is quantized too (plain_linear_layers)

    def configure_model(self) -> None:
        """Build base model + adapter.

        Under ZeRO-3 (Lightning calls this inside ``deepspeed.zero.Init``) the base is loaded straight into
        partitions, each rank keeping 1/N of it (``sharding.partitioned_loading``). A quantized base (bitsandbytes
        quantizes whole weights), or any base of a class with ``loads_zero3_partitions`` False, is loaded whole
        and partitioned by the engine. The adapter is always added outside ``zero.Init``: peft initialises its new
        weights in place (LoRA's B to zero), which a partitioned parameter would ignore.
        """
        if self.model is not None:
            return
        if self.compile_layers:
            check_strategy(self._strategy_name())
        builder.architecture(self)  # the module's settings on the architecture; the adapter may refuse it
        zero3 = zero3_config(self)
        sharded = zero3 is not None and self.loads_zero3_partitions and self.adapter.quantization_config() is None
        if sharded:
            with partitioned_loading(zero3) as hf_deepspeed_config:
                base = self.load_base_model()
            self._hf_deepspeed_config = hf_deepspeed_config  # transformers and peft look for it while the model lives
        with outside_zero3_init():
            self._build_model(base if sharded else self.load_base_model())
        if sharded:
            held, total = partitioned_share(self.model)
            log.info("[lit-lora] ZeRO-3: rank %d loaded %s of %s base weights (its partition)",
                     self.global_rank, f"{held:,}", f"{total:,}", extra=EVERY_RANK)

    def _build_model(self, model: torch.nn.Module) -> None:
        self.model = builder.adapt(self, model)
        if self.compile_layers:
            compile_layers(self.model, self._strategy_name())
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes as they are
        self.parameter_counts = parameter_report(self.model)

    # ---- the data (lit_lora.data.contract) --------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Take the data's contract once per stage: after ``datamodule.setup``, before ``configure_model``."""
        if stage == "fit":
            check_schedule_length(self.optim, self.trainer)  # before configure_model loads the base
        self.connect(contract_of(self.trainer))

    def connect(self, contract: DataContract) -> None:
        """Keep what the data decided; from here on the module reads ``self.data_contract``, never the datamodule."""
        if contract.encoder_decoder != self.encoder_decoder:
            kind = "an encoder-decoder" if contract.encoder_decoder else "a causal LM"
            raise ValueError(f"{contract.data_class} rows are tokenised for {kind} (data encoder_decoder: "
                             f"{contract.encoder_decoder}) but {type(self).__name__} is not one; drop the data's "
                             f"encoder_decoder setting (the module class decides it)")
        self.data_contract = contract
        self.tokenizer = contract.tokenizer if contract.tokenizer is not None else self.tokenizer

    # ---- training -------------------------------------------------------------------------------
    def forward(self, batch: dict, **kwargs: Any) -> Any:
        if "position_ids" in batch and "attention_mask" not in batch:
            kwargs["use_cache"] = False  # packed rows: with a KV cache transformers would not mask across them
        return self.model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}, **kwargs)

    shifts_labels: ClassVar[bool] = True  # a causal LM's position t predicts token t + 1

    def packing_refusal(self) -> Optional[str]:
        """Why this model and adapter cannot train on packed rows, or ``None`` (asked by the datamodule)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model_path(self.model_name_or_path),
                                            trust_remote_code=self.trust_remote_code)
        return model_packing_refusal(config, self.adapter)

    def flattens_packed_rows(self) -> bool:
        """Whether packed rows should arrive as one flattened row: FlashAttention varlen reads the row boundaries
        from ``position_ids`` (``packing_support.flattens``). Asked of the built model, on the strategy's device."""
        attention = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        return flattens(attention or self.attn_implementation, sharding.run_device(self))

    def loss_path(self) -> tuple[Optional[LabelOnlyHead], str]:
        """The head ``loss_terms`` runs on labelled positions only, or ``None`` for full logits; and why.

        Label-only needs a causal LM whose head ``find_label_only_head`` accepts, outside FSDP (which
        shards the head's weight); seq2seq and classifier modules keep their full-logits loss.
        """
        if not self.label_only_loss:
            return None, "label_only_loss: false"
        if not (self.shifts_labels and self.task_type == "CAUSAL_LM"):
            return None, f"{type(self).__name__} computes its loss from full logits"
        strategy = self._strategy_name()
        if "FSDP" in strategy or "ModelParallel" in strategy:
            return None, f"{strategy} shards the LM head"
        return find_label_only_head(self.model)

    def loss_terms(self, batch: dict, **forward_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss summed over the label positions, their count): training and evaluation score here (``token_loss``)."""
        forward_kwargs = {**self.loss_forward_kwargs(), **forward_kwargs}
        labels = batch["labels"]
        count = label_count(labels, self.shifts_labels)
        head = self._label_only_head()
        inputs = {k: v for k, v in batch.items() if k != "labels"} if self.shifts_labels else batch
        if head is not None:
            with head_input(head.linear) as caught:
                self(inputs, **forward_kwargs)
            return summed_label_only_loss(caught.hidden, labels, head, self.label_only_chunk), count
        logits = self(inputs, **forward_kwargs).logits  # a causal LM given no labels computes no loss of its own
        return summed_loss(logits, labels, self.shifts_labels), count

    def _label_only_head(self) -> Optional[LabelOnlyHead]:
        """``loss_path``'s head, its choice logged (debug level) when it first differs from the last one."""
        head, why = self.loss_path()
        choice = ("label-only chunked LM head" if head is not None else "full logits", why)
        if getattr(self, "_logged_loss_path", None) != choice:
            log.debug("[lit-lora] loss: %s (%s)", *choice)
            self._logged_loss_path = choice
        return head

    def loss_forward_kwargs(self) -> dict:
        """No KV cache in a forward that only scores: it is built for generation and only costs memory here."""
        return {"use_cache": False}

    def on_train_epoch_start(self) -> None:
        self._step_loss_sum, self._step_batches = None, 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Token losses summed, over the label tokens of the whole optimizer step on every rank.

        Lightning divides the returned loss by ``accumulate_grad_batches`` (and DeepSpeed's engine, which
        accumulates itself, divides it once more) and data-parallel training averages gradients over ranks;
        all are undone so the step's gradient is that of (sum of token losses) / (label tokens of the step).
        """
        summed, count = self.loss_terms(batch)
        step_labels = batch.get("step_labels")
        local = step_label_count(step_labels, self.shifts_labels) if step_labels else count
        step_tokens = self.trainer.strategy.reduce(local.to(summed.device).float(), reduce_op="sum").clamp(min=1)
        accumulate = self.trainer.accumulate_grad_batches
        scale = self.trainer.world_size * (accumulate if step_labels else 1) \
            * (accumulate if self.trainer.strategy.handles_gradient_accumulation else 1)  # DeepSpeed's scale_wrt_gas
        self._log_step_loss(summed.detach(), step_tokens, len(step_labels) if step_labels else 1, batch)
        return summed * scale / step_tokens

    def _log_step_loss(self, summed: torch.Tensor, step_tokens: torch.Tensor, step_batches: int, batch: dict) -> None:
        """Log ``train_loss`` once per optimizer step: the step's token-weighted mean, however it was split."""
        self._step_loss_sum = summed if self._step_loss_sum is None else self._step_loss_sum + summed
        self._step_batches += 1
        if self._step_batches < step_batches:
            return
        # DDP's all-reduce sums in place: a copy, never the storage of the loss training_step returns
        total = self.trainer.strategy.reduce(self._step_loss_sum.float().clone(), reduce_op="sum")
        self.log("train_loss", total / step_tokens, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self._step_loss_sum, self._step_batches = None, 0

    # ---- evaluation: the hooks once, the work in self.evaluator (lit_lora.evaluation.evaluators) ------------------
    def on_validation_epoch_start(self) -> None:
        self.evaluator.to(sharding.run_device(self)).start(self, "val")  # ZeRO-3 moves no module

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluator.step(self, batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.evaluator.end(self, "val")
        self.validated_at_step = None if self.trainer.sanity_checking else self.trainer.global_step  # console

    def on_test_epoch_start(self) -> None:
        self.evaluator.to(sharding.run_device(self)).start(self, "test")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluator.step(self, batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.evaluator.end(self, "test")

    @property
    def extra_metrics(self) -> dict:
        """The evaluator's non-scalar results (``details`` in ``metrics.json``)."""
        return self.evaluator.extra_metrics

    @property
    def predictions(self) -> list[dict]:
        """The rows the last evaluation generated (prompt, reference, prediction …); empty when it generates none."""
        return self.evaluator.predictions

    def configure_optimizers(self):
        return build_optimizer(self.optim, self.model, self.trainer)

    def on_train_start(self) -> None:
        continue_schedule(self.trainer, self.optim)  # a resume with another max_steps: this run's schedule

    def on_fit_start(self) -> None:
        report = self.parameter_counts or parameter_report(self.model)
        if self.trainer.is_global_zero:
            log.info("[lit-lora] %s on %s: %s", self.adapter.method, self.model_name_or_path,
                     format_parameter_report(report))  # a log line (stderr): stdout keeps the run's results
        for logger in self.loggers:
            logger.log_hyperparams({f"params/{k}": v for k, v in report.items()})

    # ---- checkpoints ----------------------------------------------------------------------------
    def trainable_state_keys(self) -> set[str]:
        return checkpoint_state.trainable_names(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = checkpoint_state.trainable_only(checkpoint["state_dict"], keep, self.adapter.method,
                                                                   writes=self._writes_files())
        checkpoint["lit_lora"] = {"model_name_or_path": self.model_name_or_path, "method": self.adapter.method,
                                  "data": self._training_split_settings(), "trainable_keys": sorted(keep)}

    def _training_split_settings(self) -> dict:
        """The data settings that decide which rows were trained on (for the train-overlap check); ``{}`` unconnected."""
        return dict(self.data_contract.training_settings) if self.data_contract is not None else {}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint_state.check_loaded(checkpoint, self, self.adapter.method,
                                      self._training_split_settings())

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """By norm under FSDP through its root unit (Lightning's FSDP precision plugin cannot; see fsdp_units)."""
        if not clip_fsdp_grad_norm(self, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- export ---------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the adapter (peft format) or the full model, plus the tokenizer, to ``out_dir``.

        Call it on every rank: under ZeRO-3 / FSDP the weights are gathered first (a collective),
        then global rank 0 writes, so the saved adapter is complete rather than empty shards.
        """
        out = Path(out_dir)
        state_dict = sharding.gathered_state_dict(self)
        # peft runs a p-tuning prompt encoder to save its prompt: the FSDP root unit's / ZeRO-3's weights, gathered
        with root_unit_gathered(self), sharding.zero3_prompt_embeddings(self.model):
            if self._writes_files():
                checkpoint_state.write_pretrained(self.model, out, state_dict, self.is_peft, self.tokenizer)
        return out

    def _writes_files(self) -> bool:
        """Global rank 0 writes: the trainer's rank, else the process group's (a module driven outside Lightning)."""
        if attached_trainer(self) is not None:
            return self.trainer.is_global_zero
        dist = torch.distributed
        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    @property
    def is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)
