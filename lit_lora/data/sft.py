"""Prompt → response data for causal LMs: the shared tokenisation of every SFT dataset.

A dataset subclass implements ``format_example(row) -> (prompt, response)`` (or a drop reason);
this class tokenises ``prompt + response + EOS`` and labels the response only (``train_on_prompt``
labels everything). A row whose response would be truncated away entirely is dropped and counted:
a row with no trainable token never reaches the loss.
"""

from __future__ import annotations

from typing import Optional, Union

from lit_lora.data.base import TextDataModule
from lit_lora.data.collators import IGNORE_INDEX

Example = Union[tuple[str, str], str]  # (prompt, response), or a drop reason


class SFTDataModule(TextDataModule):
    """Supervised fine-tuning data for a causal LM (see ``TextDataModule`` for the shared settings).

    Args:
        template: ``alpaca`` (instruction / input / response), ``chat`` (the tokenizer's chat template) or ``plain``.
        system_prompt: System turn of the chat template.
        train_on_prompt: Put the prompt tokens in the loss too (default: response only).
    """

    def __init__(self, *args, template: str = "alpaca", system_prompt: Optional[str] = None,
                 train_on_prompt: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.template = template
        self.system_prompt = system_prompt
        self.train_on_prompt = train_on_prompt

    def format_example(self, row: dict) -> Example:
        raise NotImplementedError

    def tokenize_example(self, prompt: str, response: str) -> dict:
        """Features of one prompt / response pair, or ``{"_drop": reason}``."""
        tok = self.tokenizer
        # a chat-template prompt already carries its special tokens (BOS included)
        prompt_ids = tok(prompt, add_special_tokens=self.template != "chat")["input_ids"]
        response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(prompt_ids) >= self.max_length:
            return {"_drop": "response truncated away"}
        response_ids = response_ids[: self.max_length - len(prompt_ids)]
        input_ids = prompt_ids + response_ids
        if self.train_on_prompt:
            labels = list(input_ids)
        else:
            labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    def encode_row(self, row: dict) -> dict:
        example = self.format_example(row)
        if isinstance(example, str):
            return {"_drop": example}
        return self.tokenize_example(*example)
