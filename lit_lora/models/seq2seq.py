"""Encoder-decoder models (T5, CodeT5, BART …) fine-tuned on input → output data.

    python -m lit_lora.tiny t5 /tmp/tiny-t5
    lit-lora fit --config configs/tutorials/codet5_lora.yaml --model.init_args.model_name_or_path /tmp/tiny-t5

The class declares itself an encoder-decoder (``encoder_decoder``); the SFT datamodules read that declaration at
``setup`` (``lit_lora.data.contract``), never the model config, and tokenise the prompt as the encoder input and
the answer as labels (padding → -100); the model shifts the labels right itself.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoModelForSeq2SeqLM

from lit_lora.models.generative import GenerativeModule


class Seq2SeqModule(GenerativeModule):
    """``AutoModelForSeq2SeqLM`` with full fine-tuning, LoRA (e.g. r=4 on q, k, v, o) or QLoRA."""

    task_type: ClassVar[str] = "SEQ_2_SEQ_LM"
    auto_model_class: ClassVar[Any] = AutoModelForSeq2SeqLM
    encoder_decoder: ClassVar[bool] = True
    shifts_labels: ClassVar[bool] = False  # the decoder's position t predicts labels[t] (the model shifts its inputs)
