"""Prompt → response data for causal LMs: the shared tokenisation of every SFT dataset.

A dataset subclass implements ``format_example(row) -> (prompt, response)`` (or a drop reason);
this class tokenises ``prompt + response + EOS`` and labels the response only (``train_on_prompt``
labels everything). A row whose response would be truncated away entirely is dropped and counted:
a row with no trainable token never reaches the loss.

For an encoder-decoder model (T5 / CodeT5: declared by the module class it trains, ``Seq2SeqModule``, read at
``setup`` through ``lit_lora.data.contract.declared_encoder_decoder``; or ``encoder_decoder: true``) the prompt is
the encoder input and the response the labels (padding → -100). Whether a prompt already carries BOS (a causal
LM's chat template) is decided here, once, and handed to the module in the ``DataContract``. Every row also keeps
its ``prompt``, full ``reference`` response and ``group`` (e.g. a DS-1000 library) as strings, so that
generation-based evaluation compares against the untruncated answer.

Training batches group rows of similar length by default (``group_by_length: true``: less padding, still
seeded and resumable mid-epoch); a causal LM can pack rows instead (``packing: true``, see
``lit_lora.data.packing``)::

    lit-lora fit --config configs/demo.yaml --data.init_args.packing true --data.init_args.max_tokens_per_batch 4096
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from lit_lora.errors import IncompatibleConfig
from lit_lora.data.base import TextDataModule
from lit_lora.data.collators import IGNORE_INDEX
from lit_lora.data.contract import declared_encoder_decoder, prompt_carries_special_tokens
from lit_lora.data.held_out import keep_prompts_apart, normalize_input
from lit_lora.data.templates import TEMPLATES, render_prompt

Example = Union[tuple[str, str], str]  # (prompt, response), or a drop reason


class SFTDataModule(TextDataModule):
    """Supervised fine-tuning data for a causal LM (see ``TextDataModule`` for the shared settings).

    Args:
        group_by_length: Batch rows of similar length together (default here; see ``TextDataModule``);
            ``false`` draws a seeded random order.
        template: ``alpaca`` (instruction / input / response), ``chat`` (the tokenizer's chat template) or ``plain``.
        system_prompt: System turn of the chat template.
        train_on_prompt: Put the prompt tokens in the loss too (default: response only).
        encoder_decoder: Tokenise for an encoder-decoder model (prompt → encoder, response → labels);
            ``None``: as the module declares (``Seq2SeqModule``), decided at ``setup``; causal without one.
    """

    templates: ClassVar[tuple[str, ...]] = TEMPLATES  # the ``template`` values this dataset renders

    def __init__(self, *args, group_by_length: bool = True, template: str = "alpaca",
                 system_prompt: Optional[str] = None, train_on_prompt: bool = False,
                 encoder_decoder: Optional[bool] = None, **kwargs):
        super().__init__(*args, group_by_length=group_by_length, **kwargs)
        if template not in self.templates:
            raise IncompatibleConfig(f"data.init_args.template must be one of {', '.join(self.templates)} for "
                                     f"{type(self).__name__}, got {template!r}")
        if system_prompt is not None and template != "chat":
            raise IncompatibleConfig(f"data.init_args.system_prompt is the system turn of the chat template; with "
                                     f"template {template!r} it would be ignored: set template: chat or drop it")
        self.template = template
        self.system_prompt = system_prompt
        self.train_on_prompt = train_on_prompt
        self.encoder_decoder_arg = encoder_decoder
        self.encoder_decoder = bool(encoder_decoder)  # until setup asks the module (None)

    def setup(self, stage: Optional[str] = None) -> None:
        """Tokenise for the module this data is paired with: its class declares whether it is an encoder-decoder."""
        if not self.datasets and self.encoder_decoder_arg is None:
            self.encoder_decoder = bool(declared_encoder_decoder(self.trainer))
        if not self.datasets:
            self.check_chat_template()
        super().setup(stage)

    def check_chat_template(self) -> None:
        """Refuse ``template: chat`` for a tokenizer without a chat template, or whose template refuses the turns
        asked for (Gemma's: "System role not supported"), before any row is rendered: otherwise the template's
        own error stops the run from inside the tokenizer, naming no setting."""
        if self.template != "chat":
            return
        others = " or ".join(t for t in self.templates if t != "chat")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise IncompatibleConfig(f"data.init_args.template: 'chat' needs a tokenizer with a chat template; "
                                     f"{self.tokenizer.name_or_path} has none (use template: {others})")
        from jinja2 import TemplateError

        try:
            render_prompt("chat", self.tokenizer, "Say hello.", "", self.system_prompt)
        except TemplateError as err:
            name = self.tokenizer.name_or_path
            if self.system_prompt is not None:
                raise IncompatibleConfig(f"data.init_args.system_prompt: the chat template of {name} refuses a system "
                                         f"turn ({err}): drop system_prompt") from err
            raise IncompatibleConfig(f"data.init_args.template: the chat template of {name} refuses a user turn "
                                     f"({err}): use template: {others}") from err

    @property
    def prompt_has_special_tokens(self) -> bool:
        return prompt_carries_special_tokens(self.template, self.encoder_decoder)

    def packing_refusal(self) -> Optional[str]:
        if self.encoder_decoder:
            return (f"packing: true needs a causal LM; {type(self).__name__} is tokenised for an encoder-decoder "
                    "model (prompt -> encoder, response -> decoder), whose rows cannot share a sequence")
        return None

    def split_off_validation(self, train):
        """The base class's split, or where it puts a prompt on both sides, a split by prompt
        (``data/held_out.py``): generation evaluation would find those rows in training and stop."""
        train, val = super().split_off_validation(train)
        return keep_prompts_apart(train, val, self.prompt_key, self.seed, str(self.source))

    def prompt_key(self, row: dict) -> Optional[str]:
        """A raw row's normalised prompt, as the evaluation's train-overlap check compares it (``None``: dropped)."""
        example = self.format_example(row)
        return None if isinstance(example, str) else normalize_input(example[0])

    def row_group(self, row: dict) -> str:
        """The group a row is reported under (e.g. its library); ``""`` for none."""
        return ""

    def format_example(self, row: dict) -> Example:
        raise NotImplementedError

    @property
    def prompt_is_row_text(self) -> bool:
        """Whether the prompt is the row's text, whose ``"<s>"`` stays text like a response's (``split_special_tokens``):
        not where a chat template, or a datamodule's own ``format_example`` (``prompt_has_special_tokens``), writes
        special tokens as text, which stay special."""
        return not self.prompt_has_special_tokens and self.template != "chat"

    def tokenize_example(self, prompt: str, response: str) -> dict:
        """Features of one prompt / response pair, or ``{"_drop": reason}``."""
        tok = self.tokenizer
        # a chat-template prompt already carries its special tokens (BOS included): the contract's one decision
        prompt_ids = tok(prompt, add_special_tokens=not self.prompt_has_special_tokens,
                         split_special_tokens=self.prompt_is_row_text)["input_ids"]
        # "</s>" in a code answer is text, not an EOS mid-response: the one EOS is the one appended here
        response_ids = tok(response, add_special_tokens=False, split_special_tokens=True)["input_ids"] \
            + [tok.eos_token_id]
        if len(prompt_ids) >= self.max_length:
            return {"_drop": "response truncated away"}
        truncated = len(prompt_ids) + len(response_ids) > self.max_length
        response_ids = response_ids[: self.max_length - len(prompt_ids)]
        input_ids = prompt_ids + response_ids
        if self.train_on_prompt:
            labels = list(input_ids)
        else:
            labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels,
                "_truncated": truncated}

    def tokenize_seq2seq(self, prompt: str, response: str) -> dict:
        """Encoder input and decoder labels of one pair (special tokens as the tokenizer adds them; the row's own
        special-token text stays text, as in ``tokenize_example``)."""
        tok = self.tokenizer
        input_ids = tok(prompt, split_special_tokens=self.prompt_is_row_text)["input_ids"]
        labels = tok(text_target=response, split_special_tokens=True)["input_ids"]
        if len(input_ids) > self.max_length:
            return {"_drop": "prompt longer than max_length"}
        if len(labels) > self.max_length:
            return {"_drop": "response longer than max_length"}
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    def encode_row(self, row: dict) -> dict:
        example = self.format_example(row)
        if isinstance(example, str):
            return {"_drop": example}
        features = self.tokenize_seq2seq(*example) if self.encoder_decoder else self.tokenize_example(*example)
        if "_drop" in features:
            return features
        return {**features, "prompt": example[0], "reference": example[1], "group": self.row_group(row)}

    def empty_features(self) -> dict[str, Any]:
        return {**super().empty_features(), "prompt": "", "reference": "", "group": ""}
