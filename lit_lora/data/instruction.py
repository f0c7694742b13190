"""Instruction data in the python-codes-25k schema: ``instruction``, ``input``, ``output``, ``text``.

    lit-lora fit --config configs/demo.yaml --data.init_args.source flytech/python-codes-25k
"""

from __future__ import annotations

from typing import ClassVar, Optional

from lit_lora.data.sft import Example, SFTDataModule
from lit_lora.data.templates import render_prompt


class InstructionDataModule(SFTDataModule):
    """Instruction / input / output rows (python-codes-25k and any alpaca-style data).

    Rows with an empty instruction or an empty output are dropped and counted.
    """

    required_columns: ClassVar[tuple[str, ...]] = ("instruction", "input", "output")
    text_columns: ClassVar[tuple[str, ...]] = ("instruction", "input", "output")  # null input = no input
    row_may_omit: ClassVar[tuple[str, ...]] = ("input",)  # alpaca-style rows leave out an empty input
    default_source: ClassVar[Optional[str]] = "python_codes_25k.jsonl"

    def format_example(self, row: dict) -> Example:
        instruction = (row["instruction"] or "").strip()
        output = (row["output"] or "").strip()
        if not instruction:
            return "empty instruction"
        if not output:
            return "empty output"
        prompt = render_prompt(self.template, self.tokenizer, instruction, (row["input"] or "").strip(),
                               self.system_prompt)
        return prompt, output
