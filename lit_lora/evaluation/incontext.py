"""In-context evaluation with no training: zero-shot and k-shot prompts built from a DataModule.

    lit-lora incontext --config configs/<exp>.yaml --shots 0 1 3 --max_rows 100   # lit_lora.commands.incontext

    from lit_lora.evaluation.incontext import build_prompts, evaluate_incontext
    records = build_prompts(datamodule, k=1, seed=0, max_rows=10)   # prompts with one training demonstration
    results = evaluate_incontext(module, datamodule, [0, 1], 0, None, 10, Path("runs/incontext"))

Demonstrations are drawn (seeded, per evaluated row) from the *training* split only, and a
demonstration whose normalised input equals the evaluated row's is never used, so a prompt never
contains the example it is scored on. The pretrained model answers: the config's adapter (untrained) is
switched off. With a chat template the demonstrations are user / assistant turns; otherwise they are
concatenated as prompt + answer blocks. Generation data (SFT datamodules: ``format_example``) is scored
with BLEU / ROUGE / exact match; classification data (``label_names``, ``row_label``) by parsing the label
word out of the answer (``evaluation.labels.label_index``).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from lit_lora.errors import IncompatibleConfig
from lit_lora.data.contract import prompt_carries_special_tokens
from lit_lora.evaluation.generation import generate_texts
from lit_lora.evaluation.labels import UNPARSEABLE, label_index
from lit_lora.evaluation.overlap import normalize_input
from lit_lora.strict_json import dumps

log = logging.getLogger(__name__)


def example_pairs(datamodule, rows, where: str = "rows") -> list[tuple[str, str]]:
    """``(input, answer)`` of each usable raw row, as the datamodule formats it; unusable rows (SNLI's "no gold
    label", an empty answer …) are skipped, counted by reason and logged (``where``: the split), never silently."""
    pairs, skipped = [], Counter()
    if hasattr(datamodule, "label_names"):  # classification: text columns in, label word out
        text_columns = [c for c in datamodule.required_columns if c not in ("label", "genre")]
        names = ", ".join(datamodule.label_names)
        for row in rows:
            label = datamodule.row_label(row)
            if not isinstance(label, int):
                skipped[label] += 1
                continue
            text = "\n".join(f"{c.capitalize()}: {str(row[c]).strip()}" for c in text_columns)
            # ends with a cue, so that a demonstration's answer does not run on from the instruction
            pairs.append((f"{text}\nAnswer with one word: {names}.\nAnswer:", datamodule.label_names[label]))
        log_skipped(where, len(rows), skipped)
        return pairs
    if not hasattr(datamodule, "format_example"):
        raise TypeError(f"{type(datamodule).__name__} has neither format_example nor label_names")
    if getattr(datamodule, "template", None) == "chat":
        raise ValueError("set data.init_args.template to plain or alpaca: in-context prompts apply the chat "
                         "template themselves, around the demonstrations")
    for row in rows:
        example = datamodule.format_example(row)
        if isinstance(example, str):
            skipped[example] += 1
        else:
            pairs.append(example)
    log_skipped(where, len(rows), skipped)
    return pairs


def log_skipped(where: str, total: int, skipped: Counter) -> None:
    """One line per split with what was left out and why, as training's tokenisation logs its drops."""
    if skipped:
        detail = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
        log.warning("[lit-lora] incontext %s: skipped %d of %d rows (%s)", where, sum(skipped.values()), total, detail)


def kshot_prompt(tokenizer, demos: list[tuple[str, str]], query: str, use_chat_template: bool = True) -> str:
    """The prompt text: chat turns when the tokenizer has a chat template, else ``prompt answer`` blocks (a space
    between the two unless the prompt ends in whitespace, as a template's ``### Response:\\n`` does)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = []
        for prompt, answer in demos:
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": query})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{prompt}{'' if prompt[-1:].isspace() else ' '}{answer}\n\n" for prompt, answer in demos) + query


def build_prompts(datamodule, k: int, seed: int = 0, split: Optional[str] = None, max_rows: Optional[int] = None,
                  use_chat_template: bool = True) -> list[dict]:
    """One record per evaluated row: prompt (with ``k`` training demonstrations), reference, demo indices."""
    raw = datamodule.load_raw_splits()
    split = split or next(name for name in raw if name != "train")
    if split not in raw:
        raise IncompatibleConfig(f"--split {split}: the data has the splits {', '.join(raw)}")
    train = example_pairs(datamodule, raw["train"], "train")
    evaluated = example_pairs(datamodule, raw[split], split)[:max_rows]
    if k > len(train):
        raise IncompatibleConfig(f"--shots {k}: {k}-shot needs {k} training examples; the training split has "
                                 f"{len(train)}")
    records = []
    for i, (query, reference) in enumerate(evaluated):
        key = normalize_input(query)
        pool = [j for j, (p, _) in enumerate(train) if normalize_input(p) != key]
        if len(pool) < k:
            raise IncompatibleConfig(f"--shots {k}: {k}-shot needs {k} training examples other than the evaluated "
                                     f"one; row {i} of {split} has {len(pool)}")
        picks = random.Random(seed * 1_000_003 + i).sample(pool, k) if k else []
        demos = [train[j] for j in picks]
        records.append({"index": i, "split": split, "query": query, "reference": reference, "demos": picks,
                        "prompt": kshot_prompt(datamodule.tokenizer, demos, query, use_chat_template)})
    return records


def score(datamodule, records: list[dict], predictions: list[str]) -> dict:
    if hasattr(datamodule, "label_names"):
        from lit_lora.evaluation.classification import ClassificationMetrics

        names = list(datamodule.label_names)
        metrics = ClassificationMetrics(names, allow_unparseable=True)
        preds = torch.tensor([label_index(p, names) for p in predictions])
        metrics.update(preds, torch.tensor([names.index(r["reference"]) for r in records]))
        scalars, details = metrics.compute()
        return {**scalars, "unparseable": int((preds == UNPARSEABLE).sum()),
                "hit_max_new_tokens": sum(bool(r["hit_max_new_tokens"]) for r in records)}
    from lit_lora.evaluation.text_metrics import score_rows

    return score_rows(predictions, [r["reference"] for r in records], [r["hit_max_new_tokens"] for r in records])


def evaluate_incontext(module, datamodule, shots: list[int], seed: int, split: Optional[str], max_rows: Optional[int],
                       out_dir: Path) -> dict:
    """Score each ``k``-shot prompting of the pretrained model; one ``generate_texts`` call per ``k`` sorts every
    prompt by length and batches them by the evaluation's ``generation_batch_size`` / ``generation_batch_tokens``.

    The config's adapter is switched off while generating (as ``lit-lora compare`` scores its base column): it is
    untrained, and an untrained prompt-learning adapter would prepend random virtual tokens to every prompt."""
    module.configure_model()
    if torch.cuda.is_available() and getattr(module.model, "hf_quantizer", None) is None:
        module.model.to("cuda")  # no trainer places it here; a quantized base was loaded onto its device
    results = {}
    module.disable_adapter_in_eval = True
    try:
        with module.evaluated_model():
            for k in shots:
                results[f"{k}-shot"] = evaluate_shots(module, datamodule, k, seed, split, max_rows, out_dir)
    finally:
        module.disable_adapter_in_eval = False
    return results


def evaluate_shots(module, datamodule, k: int, seed: int, split: Optional[str], max_rows: Optional[int],
                   out_dir: Path) -> dict:
    """The ``k``-shot scores; the prompts and answers go to ``predictions_<k>shot.jsonl``."""
    records = build_prompts(datamodule, k, seed, split, max_rows)
    log.info("[lit-lora] incontext %d-shot: %d rows of the %s split", k, len(records),
             records[0]["split"] if records else split)
    chat = bool(getattr(datamodule.tokenizer, "chat_template", None))
    outs = generate_texts(module.model, datamodule.tokenizer, [r["prompt"] for r in records], module.evaluation,
                          encoder_decoder=module.encoder_decoder,
                          add_special_tokens=not prompt_carries_special_tokens("chat" if chat else "plain",
                                                                               module.encoder_decoder),
                          split_special_tokens=not chat)  # a row's own "</s>" is text, as in training
    for record, out in zip(records, outs):
        record.update(prediction=out.text, hit_max_new_tokens=out.hit_limit)
    scores = score(datamodule, records, [o.text for o in outs])
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f"predictions_{k}shot.jsonl").open("w") as f:
        for record in records:
            f.write(dumps(record) + "\n")
    return scores
