"""Prompts kept during an evaluation epoch and answered at its end, longest first, in batched ``generate`` calls.

    >>> from lit_lora.evaluation.evaluators.answer_queue import AnswerQueue
    >>> queue = AnswerQueue()
    >>> queue.add({"prompt": ["2 + 2 =", "3 + 3 ="], "input_ids": [[1], [1]]}, reference=["4", "6"])  # in each step
    >>> [(row["prompt"], row["reference"], row["counted"]) for row in queue.rows]
    [('2 + 2 =', '4', True), ('3 + 3 =', '6', True)]

``queue.answer(module)`` at the end of the epoch returns each row with its ``Generated`` answer, in the order added.

Why at the end: ``generate_texts`` sorts every prompt of the epoch by length and batches them by
``evaluation.generation_batch_size`` / ``generation_batch_tokens``, whatever the loss batches were. Prompts are
tokenised as the data contract says (``add_special_tokens``, cut to ``max_length``, encoder-decoder or not), the
same for generative and label-word evaluation.
"""

from __future__ import annotations

import logging

from lit_lora.cluster.fsdp_units import root_unit_gathered
from lit_lora.data.eval_sharding import counted_indices
from lit_lora.evaluation.generation import Generated, generate_texts

log = logging.getLogger("lit_lora")


class AnswerQueue:
    """This epoch's rows to answer (each a dict with ``prompt``, ``counted`` and the columns given to ``add``)."""

    def __init__(self):
        self.rows: list[dict] = []

    def clear(self) -> None:
        self.rows = []

    def add(self, batch: dict, **columns: list) -> None:
        """Keep ``batch``'s prompts with ``columns`` (a value a row). Rows a padding rank repeats are kept too
        (``counted`` False): every rank answers as many rows, in as many ``generate`` calls, which ranks that
        gather weights in every forward (ZeRO-3, FSDP) need."""
        counted = set(counted_indices(batch).tolist())
        for i, prompt in enumerate(batch["prompt"]):
            self.rows.append({"prompt": prompt, "counted": i in counted, **{k: v[i] for k, v in columns.items()}})

    def answer(self, module) -> list[tuple[dict, Generated]]:
        """Every queued row with its answer, in the order queued; the queue is emptied. Every rank calls this,
        with rows or without (the ranks agree on the batches)."""
        queued, self.rows = self.rows, []
        if queued and module.trainer.is_global_zero:
            log.info("[lit-lora] generating %d answers%s, longest prompt first, up to %d per generate call",
                     len(queued), " on each rank" if module.trainer.world_size > 1 else "",
                     module.evaluation.generation_batch_size)
        contract = module.data_contract
        with module.evaluated_model(), root_unit_gathered(module):  # FSDP: generate bypasses the root's forward
            answers = generate_texts(module.model, contract.tokenizer, [r["prompt"] for r in queued],
                                     module.evaluation, encoder_decoder=contract.encoder_decoder,
                                     add_special_tokens=contract.add_special_tokens, max_length=contract.max_length,
                                     split_special_tokens=contract.prompt_is_row_text)
        return list(zip(queued, answers))
