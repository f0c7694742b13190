"""What a split's cache key costs at a Llama-3-sized vocabulary: the key hashes the fast tokenizer's whole
serialized state (``lit_lora/data/cache_key.py``), which grows with the vocabulary; a run hashes it at its first
split and reuses the hash for the next ones.

    python bench/cache_key.py                   # a byte-level BPE of 128,256 tokens (Llama 3's size), 5 rounds
    python bench/cache_key.py --vocab 32000     # Llama 2's size
    python bench/cache_key.py --quick           # smoke run: 4,096 tokens, 1 round

The tokenizer is built on the machine (no download): 256 byte symbols and merges of them up to ``--vocab``
tokens, so its ``tokenizer.json`` has a vocabulary and a merge list of the real size. The report prints, per
round, the key of a run's first split (``tokenised_rows_key``, the state hashed) and of its next split (the hash
reused) next to tokenising 1,000 rows of 200 words with the same tokenizer, the work the key lets a second run
skip, and the medians.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working tree's lit_lora


def byte_level_bpe(vocab_size: int):
    """A ``PreTrainedTokenizerFast`` over a BPE of ``vocab_size`` tokens: 256 symbols, then merges of pairs and
    triples of them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = [chr(code) for code in range(0x100, 0x200)]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    pairs = itertools.product(symbols, symbols)
    triples = ((a + b, c) for a, b in itertools.product(symbols, symbols) for c in symbols)
    merges = []
    for left, right in itertools.chain(pairs, triples):
        if len(vocab) >= vocab_size:
            break
        merges.append((left, right))
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=symbols[0], pad_token=symbols[1])


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.rounds = 4096, 1

    from lit_lora.data.instruction import InstructionDataModule
    from lit_lora.data import cache_key

    tokenizer = byte_level_bpe(args.vocab)
    rows = [" ".join(f"word{(row * 7 + index) % 997}" for index in range(200)) for row in range(1000)]
    print(f"tokenizer: {len(tokenizer):,} tokens, tokenizer.json "
          f"{len(tokenizer.backend_tokenizer.to_str()) / 2**20:.1f} MiB")
    firsts, nexts, tokenising = [], [], []
    for round_index in range(args.rounds):
        cache_key._STATE_HASHES.clear()  # a new run
        for split, times in (("train", firsts), ("validation", nexts)):
            times.append(timed(lambda: cache_key.tokenised_rows_key("raw", InstructionDataModule, {}, split, tokenizer)))
        tokenising.append(timed(lambda: tokenizer(rows)))
        print(f"round {round_index + 1}: key of the first split {firsts[-1] * 1000:.1f} ms, of the next "
              f"{nexts[-1] * 1000:.1f} ms, tokenising 1,000 rows {tokenising[-1] * 1000:.1f} ms")
    first, later, work = (statistics.median(times) for times in (firsts, nexts, tokenising))
    print(f"median: key of the first split {first * 1000:.1f} ms, of the next {later * 1000:.1f} ms, tokenising "
          f"1,000 rows {work * 1000:.1f} ms; first key ÷ tokenising {first / work:.3f}")

if __name__ == "__main__":
    main()
