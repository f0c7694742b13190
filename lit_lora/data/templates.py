"""Prompt templates: an alpaca-style instruction / input / response template, or the tokenizer's chat template.

    from lit_lora.data.templates import render_prompt
    render_prompt("alpaca", tokenizer, "Sort the list", "values = [3, 1]")
"""

from __future__ import annotations

from typing import Optional

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat", "plain")


def render_prompt(template: str, tokenizer, instruction: str, input_text: str = "",
                  system_prompt: Optional[str] = None) -> str:
    """The text the model sees before its response.

    ``alpaca``: the instruction / input / response template; ``chat``: the tokenizer's chat template
    (a user turn, plus a system turn when ``system_prompt`` is set) with the generation prompt;
    ``plain``: instruction and input joined by a blank line.
    """
    if template == "alpaca":
        if input_text:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "plain":
        return f"{instruction}\n\n{input_text}\n" if input_text else f"{instruction}\n"
    if template == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"template 'chat' needs a tokenizer with a chat template; {tokenizer.name_or_path} has none "
                f"(use template: alpaca)"
            )
        content = f"{instruction}\n\n{input_text}" if input_text else instruction
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": content}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
