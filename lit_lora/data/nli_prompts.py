"""MultiNLI and SNLI as prompt → label word, for fine-tuning a causal LM to answer with the label.

    lit-lora fit --config configs/tutorials/nli_llama_label_word.yaml
    lit-lora fit --config configs/tutorials/nli_llama_label_word.yaml --data.init_args.template chat \\
        --data.init_args.system_prompt "You classify natural language inference pairs." \\
        --model.init_args.model_name_or_path <an instruction-tuned model: its tokenizer has a chat template>

The prompt is the instruction plus ``Premise: …`` / ``Hypothesis: …`` (``plain`` or ``alpaca``
template, or the tokenizer's chat template with an optional system turn); the response is the label
word (``entailment``, ``neutral`` or ``contradiction``) and the EOS that ends it. Only the response is
in the loss. Loading, label checks, SNLI's dropped -1 rows and the matched / mismatched evaluation
sets are those of ``lit_lora.data.nli``.
"""

from __future__ import annotations

from typing import Optional

from lit_lora.data.nli import NLIRows, MultiNLI, SNLI
from lit_lora.data.sft import Example, SFTDataModule
from lit_lora.data.templates import render_prompt

INSTRUCTION = ("Does the premise entail the hypothesis? "
               "Answer with one word: entailment, neutral or contradiction.")


class NLILabelWordDataModule(NLIRows, SFTDataModule):
    """NLI pairs rendered as a prompt whose response is the label word (see ``SFTDataModule`` for the rest).

    Args:
        template: ``plain`` (instruction, then the pair), ``alpaca``, or ``chat`` (tokenizer's chat template).
        instruction: The task instruction placed before the pair.
    """

    def __init__(self, *args, template: str = "plain", instruction: str = INSTRUCTION,
                 system_prompt: Optional[str] = None, **kwargs):
        super().__init__(*args, template=template, system_prompt=system_prompt, **kwargs)
        self.instruction = instruction

    def format_example(self, row: dict) -> Example:
        label = self.row_label(row)
        if isinstance(label, str):
            return label  # drop reason, counted
        pair = f"Premise: {row['premise'].strip()}\nHypothesis: {row['hypothesis'].strip()}"
        prompt = render_prompt(self.template, self.tokenizer, self.instruction, pair, self.system_prompt)
        if self.template == "plain":
            prompt += "Answer:"
        return prompt, self.label_names[label]  # tokenised apart from the prompt, as the scorer does


class MultiNLILabelWordDataModule(MultiNLI, NLILabelWordDataModule):
    """MultiNLI as prompt → label word (matched and mismatched evaluated apart)."""


class SNLILabelWordDataModule(SNLI, NLILabelWordDataModule):
    """SNLI as prompt → label word (-1 rows dropped and counted)."""
