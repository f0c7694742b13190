"""Generation speed of lit-lora's batched evaluation generation against one ``generate`` call per row, on CPU.

    python bench/generation.py                  # ~30M random-init Llama, 64 prompts, 64 new tokens, batches 64 and 8
    python bench/generation.py --quick          # smoke run: tiny model, 16 prompts, 16 new tokens

The prompts are alpaca-template prompts of instruction rows made from Python's standard library
(``bench/stdlib_rows.py``), as lit-lora's evaluation renders them; the model is the training bench's
random-init Llama (``--model DIR`` reuses one) with a LoRA adapter (r=16, all linear layers), as evaluation
generates with the peft model. Greedy decoding, ``max_new_tokens`` new tokens, KV cache on.

    sorted    what ``lit-lora test`` runs: one ``lit_lora.evaluation.generation.generate_texts`` call on every
              prompt, which sorts them by token length (longest first) and answers them in ``generate`` calls of
              ``generation_batch_size`` = each ``--batch-sizes`` value (within the default token budget
              ``generation_batch_tokens``), left padding, answers back in prompt order
    in order  batches of the same size in dataset order, one ``generate_texts`` call each (lit-lora's evaluation
              before it sorted: one call per loader batch); only for sizes under the prompt count
    per row   one ``model.generate`` call per prompt, no padding, the same generation config

Reported: rows/s of each (median of ``--repeats`` passes, after one warm-up call), the ratio of rows/s to per
row (``--per-row-prompts N`` times per row on the first N prompts only and compares outputs on those N), the
``generate`` calls and the share of pad tokens in the prompt batches, and whether the greedy outputs are
identical: every row whose batched text differs from its per-row text is listed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from stdlib_rows import describe, stdlib_rows  # noqa: E402


def load_model(model_dir: Path, device: str, lora: bool):
    """The model (with an untrained LoRA adapter unless ``lora`` is off) and lit-lora's tokenizer for it."""
    from transformers import AutoModelForCausalLM

    from lit_lora.data.base import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return model.to(device).eval(), tokenizer


def prompts_of(rows: list[dict], tokenizer) -> list[str]:
    from lit_lora.data.templates import render_prompt

    return [render_prompt("alpaca", tokenizer, r["instruction"], r["input"]) for r in rows]


def batched(model, tokenizer, prompts: list[str], settings, batch_size: int, max_length: int,
            sort: bool = True) -> list[str]:
    """``sort``: one ``generate_texts`` call on every prompt (sorted, batched by ``generation_batch_size``);
    otherwise one call per ``batch_size`` prompts in dataset order."""
    from dataclasses import replace

    from lit_lora.evaluation.generation import generate_texts

    settings = replace(settings, generation_batch_size=batch_size)
    step = len(prompts) if sort else batch_size
    texts: list[str] = []
    for start in range(0, len(prompts), step):
        outs = generate_texts(model, tokenizer, prompts[start:start + step], settings, max_length=max_length)
        texts += [o.text for o in outs]
    return texts


def batch_plan(lengths: list[int], settings, batch_size: int, sort: bool) -> dict:
    """The ``generate`` calls and the share of pad tokens in their prompt batches (each padded to its longest)."""
    from dataclasses import replace

    from lit_lora.evaluation.generation import batch_sizes

    if sort:
        lengths = sorted(lengths, reverse=True)
        sizes = batch_sizes(lengths, replace(settings, generation_batch_size=batch_size))
    else:
        sizes = [min(batch_size, len(lengths) - s) for s in range(0, len(lengths), batch_size)]
    slots = start = 0
    for rows in sizes:
        slots += rows * max(lengths[start:start + rows])
        start += rows
    return {"calls": len(sizes), "pad_share": 1 - sum(lengths) / slots}


def per_row(model, tokenizer, prompts: list[str], settings, max_length: int) -> list[dict]:
    """One ``generate`` call per prompt, decoded as ``generate_texts`` decodes; with its new-token count."""
    import torch

    config = settings.generation_config(tokenizer)
    device = next(model.parameters()).device
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=max_length).to(device)
            new = model.generate(**enc, generation_config=config)[0, enc["input_ids"].shape[1]:].tolist()
            ended = tokenizer.eos_token_id in new
            answers.append({"text": tokenizer.decode(new, skip_special_tokens=True).strip(),
                            "new_tokens": new.index(tokenizer.eos_token_id) + 1 if ended else len(new),
                            "hit_limit": not ended and len(new) >= settings.max_new_tokens})
    return answers


def timed(fn, repeats: int) -> tuple[list[str], float]:
    """The outputs of the first pass and the median seconds over ``repeats`` passes."""
    seconds, outputs = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
        outputs = outputs if outputs is not None else result
    return outputs, statistics.median(seconds)


def differences(reference: list[str], other: list[str]) -> list[dict]:
    """Rows whose texts differ, with the first differing character and a little context."""
    rows = []
    for i, (a, b) in enumerate(zip(reference, other)):
        if a != b:
            at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            rows.append({"row": i, "first_difference_at_char": at, "per_row": a[max(0, at - 20):at + 40],
                         "batched": b[max(0, at - 20):at + 40]})
    return rows


def warm_up(model, tokenizer, prompt: str, settings) -> None:
    from dataclasses import replace

    from lit_lora.evaluation.generation import generate_texts

    generate_texts(model, tokenizer, [prompt, prompt[: len(prompt) // 2]], replace(settings, max_new_tokens=2))


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a model directory to reuse (default: build one)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts (default 64; --quick 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="new tokens (default 64; --quick 16)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 64,8; --quick 16,4)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed passes, the median reported (default 3; --quick 1)")
    parser.add_argument("--hidden", type=int, default=None, help="built model's hidden size (default 512; --quick 64)")
    parser.add_argument("--layers", type=int, default=None, help="built model's layers (default 9; --quick 2)")
    parser.add_argument("--vocab-size", type=int, default=None, help="built BPE vocabulary (default 8192; --quick 512)")
    parser.add_argument("--per-row-prompts", type=int, default=None,
                        help="time one call per row on only the first N prompts (a rate: rows/s), and compare greedy "
                             "outputs on those N; for a GPU, where a tiny model's per-row decoding is bound by "
                             "Python and kernel launches (default: every prompt)")
    parser.add_argument("--max-length", type=int, default=512, help="prompt truncation, as data.max_length")
    parser.add_argument("--no-lora", action="store_true", help="generate with the bare model, no LoRA adapter")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json-out", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 16 prompts, 16 new tokens")
    args = parser.parse_args(argv)
    defaults = dict(prompts=16, max_new_tokens=16, batch_sizes="16,4", repeats=1, hidden=64, layers=2,
                    vocab_size=512) if args.quick else \
        dict(prompts=64, max_new_tokens=64, batch_sizes="64,8", repeats=3, hidden=512, layers=9, vocab_size=8192)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    if args.per_row_prompts is None:
        args.per_row_prompts = args.prompts
    elif not 0 < args.per_row_prompts <= args.prompts:
        parser.error(f"--per-row-prompts takes 1 to --prompts ({args.prompts}), not {args.per_row_prompts}")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    import torch

    from lit_lora.evaluation.generation import GenerationSettings

    rows = stdlib_rows(4000 if args.model is None else args.prompts)
    with tempfile.TemporaryDirectory(prefix="lit-lora-genbench-") as tmp:
        model_dir = args.model
        if model_dir is None:
            from train_throughput import build_model

            model_dir, params = build_model(rows, Path(tmp) / "model", args.hidden, args.layers, args.vocab_size)
            print(f"model: random-init LlamaForCausalLM, {params / 1e6:.1f}M parameters (hidden {args.hidden}, "
                  f"{args.layers} layers, vocab {args.vocab_size})")
        model, tokenizer = load_model(model_dir, args.device, lora=not args.no_lora)
        prompts = prompts_of(rows[:args.prompts], tokenizer)
        print(f"prompts: {len(prompts)} alpaca prompts from {describe(rows[:args.prompts])}; greedy, "
              f"{args.max_new_tokens} new tokens, {'LoRA r=16 adapter' if not args.no_lora else 'no adapter'}, "
              f"{args.device}, {torch.get_num_threads()} threads; median of {args.repeats} pass(es)", flush=True)
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=False)
        warm_up(model, tokenizer, prompts[0], settings)
        answers, one_seconds = timed(
            lambda: per_row(model, tokenizer, prompts[:args.per_row_prompts], settings, args.max_length), args.repeats)
        reference = [a["text"] for a in answers]
        lengths = [len(ids) for ids in tokenizer(prompts, truncation=True, max_length=args.max_length)["input_ids"]]
        one_rate = len(answers) / one_seconds
        results = {"per_row": {"seconds": one_seconds, "rows_per_s": one_rate, "calls": len(answers),
                               "pad_share": 0.0}}
        runs = [(size, sort) for size in args.batch_sizes for sort in (True, False) if sort or size < len(prompts)]
        for size, sort in runs:
            texts, seconds = timed(lambda: batched(model, tokenizer, prompts, settings, size, args.max_length, sort),
                                   args.repeats)
            results[f"{'sorted' if sort else 'in_order'}_{size}"] = {
                "seconds": seconds, "rows_per_s": len(prompts) / seconds,
                "ratio_vs_per_row": len(prompts) / seconds / one_rate,
                **batch_plan(lengths, settings, size, sort), "differing_rows": differences(reference, texts)}
        results["per_row"]["new_tokens"] = [a["new_tokens"] for a in answers]
        results["per_row"]["hit_limit"] = sum(a["hit_limit"] for a in answers)
        print(report(results, len(answers), args.max_new_tokens))
    if args.json_out:
        args.json_out.write_text(json.dumps({"settings": {**vars(args), "model": str(args.model),
                                                          "json_out": str(args.json_out)},
                                             "results": results}, indent=2, default=str))


def report(results: dict, prompts: int, max_new_tokens: int) -> str:
    lines = [f"{'method':<14}{'rows/s':>9}{'seconds':>9}{'× per row':>11}{'calls':>7}{'pad %':>7}"
             "  greedy outputs vs per row"]
    one = results["per_row"]
    lines.append(f"{'per row':<14}{one['rows_per_s']:>9.2f}{one['seconds']:>9.2f}{1.0:>11.2f}{one['calls']:>7}"
                 f"{0.0:>7.1f}  (reference)")
    for name, r in results.items():
        if name == "per_row":
            continue
        diff = r["differing_rows"]
        same = "identical" if not diff else f"{len(diff)} of {prompts} rows differ"
        lines.append(f"{name.replace('_', ' '):<14}{r['rows_per_s']:>9.2f}{r['seconds']:>9.2f}"
                     f"{r['ratio_vs_per_row']:>11.2f}{r['calls']:>7}{100 * r['pad_share']:>7.1f}  {same}")
        for d in diff:
            lines.append(f"    row {d['row']}: from char {d['first_difference_at_char']}: per row {d['per_row']!r}"
                         f" | batched {d['batched']!r}")
    new_tokens = one["new_tokens"]
    lines.append(f"per-row answers: {sum(new_tokens)} new tokens in all, median {statistics.median(new_tokens):.0f}; "
                 f"{one['hit_limit']} of {prompts} ran to max_new_tokens={max_new_tokens}, the others stopped at EOS")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
