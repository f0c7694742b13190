"""Tiny models of real architectures with a tokenizer trained on the fly, for offline tests and the demo.

No model hub is needed: the architecture comes from the real ``transformers`` config class
(Llama, Gemma, Phi, Falcon, T5, RoBERTa), shrunk to a few layers, and the tokenizer is a
byte-level BPE trained with ``tokenizers`` on the texts you give it. The result is an ordinary
Hugging Face model directory that ``from_pretrained`` (and therefore lit-lora) loads like any other.

    python -m lit_lora.tiny llama /tmp/tiny-llama          # trains the tokenizer on bundled samples
    lit-lora fit --config configs/demo.yaml --model.init_args.model_name_or_path /tmp/tiny-llama
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    FalconConfig,
    GemmaConfig,
    LlamaConfig,
    PhiConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    T5Config,
)

SAMPLES_DIR = Path(__file__).parent / "data" / "samples"

CAUSAL_ARCHITECTURES = ("llama", "gemma", "phi", "falcon")
ARCHITECTURES = CAUSAL_ARCHITECTURES + ("t5", "roberta")


def bundled_texts() -> list[str]:
    """Every string value of every bundled sample row: enough text to train a small BPE."""
    texts: list[str] = []
    for path in sorted(SAMPLES_DIR.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                texts.extend(str(v) for v in json.loads(line).values() if isinstance(v, (str, int)))
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, kind: str = "causal") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer; causal kinds get bos/eos/unk and *no* pad token, like Llama's."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if kind == "causal":
        specials = ["<unk>", "<s>", "</s>"]
    elif kind == "seq2seq":
        specials = ["<pad>", "</s>", "<unk>"]
    else:  # encoder (RoBERTa style)
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    if kind == "causal":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    if kind == "seq2seq":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
        )
    tokenizer.post_processor = processors.RobertaProcessing(  # positional: tokenizers 0.23 takes no keywords here
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>"))
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


# Wider than the usual 0.02: frozen random embeddings and heads must be expressive enough for an
# adapter to fit data, as a pretrained model's are (at 0.02 the logits of a frozen tiny head stay ~uniform).
INIT_RANGE = 0.1


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2):
    """The real config class of ``arch`` with a few layers and a small hidden size."""
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  initializer_range=INIT_RANGE)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=False, **common)
    if arch == "gemma":
        return GemmaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=hidden // 4,
                           max_position_embeddings=1024, **common)
    if arch == "phi":
        return PhiConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=1024, **common)
    if arch == "falcon":
        return FalconConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                            new_decoder_architecture=False, multi_query=True, parallel_attn=True,
                            alibi=False, **common)
    if arch == "t5":
        return T5Config(vocab_size=vocab, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden, num_layers=layers,
                        num_decoder_layers=layers, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                        tie_word_embeddings=False)
    if arch == "roberta":
        return RobertaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=514,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, type_vocab_size=1, initializer_range=INIT_RANGE)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")


def build_tiny_model(arch: str, out_dir: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 512,
                     hidden: int = 64, layers: int = 2, seed: int = 0, num_labels: int = 3) -> Path:
    """Write a randomly initialised ``arch`` model and its tokenizer to ``out_dir``; return the path."""
    kind = "causal" if arch in CAUSAL_ARCHITECTURES else ("seq2seq" if arch == "t5" else "encoder")
    tokenizer = train_tokenizer(texts if texts is not None else bundled_texts(), vocab_size, kind)
    config = tiny_config(arch, tokenizer, hidden=hidden, layers=layers)
    torch.manual_seed(seed)
    if kind == "causal":
        model = AutoModelForCausalLM.from_config(config)
    elif kind == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_config(config)
        with torch.no_grad():  # T5 draws its untied head at std initializer_factor (1.0): an untrained twin would
            model.lm_head.weight.mul_(INIT_RANGE)  # start at a loss of ~34, not ln(vocab) ~6; the rest stays as
            # expressive as the other twins' (a smaller factor throughout makes every greedy answer empty)
    else:
        config.num_labels = num_labels
        model = AutoModelForSequenceClassification.from_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=ARCHITECTURES)
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.arch, args.out_dir, vocab_size=args.vocab_size, hidden=args.hidden,
                            layers=args.layers, seed=args.seed)
    print(f"wrote tiny {args.arch} model to {path}")


if __name__ == "__main__":
    main()
