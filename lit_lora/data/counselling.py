"""Mental-health counselling conversations: ``Context`` (what the person wrote) → ``Response`` (the counsellor's).

    lit-lora fit --config configs/dialogue/falcon7b_qlora_counselling.yaml --data.init_args.source Amod/mental_health_counseling_conversations

The published data repeats many contexts with several counsellors' answers: keep ``dedupe_contexts``
on (the default) so that no context sits in both the training and the evaluated split.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Optional

from datasets import Dataset

from lit_lora.data.held_out import normalize_input
from lit_lora.data.sft import Example, SFTDataModule
from lit_lora.data.templates import render_prompt

log = logging.getLogger("lit_lora")

INSTRUCTION = "You are a supportive counsellor. Reply to the person below with empathy and practical guidance."


class CounsellingDataModule(SFTDataModule):
    """Context / Response rows; the prompt is ``instruction`` plus the context in the chosen template.

    Args:
        instruction: The task description put before each context.
        dedupe_contexts: Keep only the first response of a repeated context (counted in the log).
    """

    required_columns: ClassVar[tuple[str, ...]] = ("Context", "Response")
    text_columns: ClassVar[tuple[str, ...]] = ("Context", "Response")
    default_source: ClassVar[Optional[str]] = "counselling.jsonl"

    def __init__(self, *args, instruction: str = INSTRUCTION, dedupe_contexts: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.instruction = instruction
        self.dedupe_contexts = dedupe_contexts

    def clean_rows(self, dataset: Dataset, where: str) -> Dataset:
        if not self.dedupe_contexts:
            return dataset
        seen: set[str] = set()
        keep = []
        for i, context in enumerate(dataset["Context"]):
            key = normalize_input(context or "")
            if key not in seen:
                seen.add(key)
                keep.append(i)
        if len(keep) < len(dataset):
            log.info("[lit-lora] %s: %d repeated contexts removed (dedupe_contexts)", where, len(dataset) - len(keep))
        return dataset.select(keep)

    def format_example(self, row: dict) -> Example:
        context, response = (row["Context"] or "").strip(), (row["Response"] or "").strip()
        if not context:
            return "empty Context"
        if not response:
            return "empty Response"
        return render_prompt(self.template, self.tokenizer, self.instruction, context, self.system_prompt), response
