"""The key of a split's tokenised rows in the ``datasets`` cache: everything that shapes those rows.

A cached split is reused only where the raw rows, the datamodule class and its settings, the code that renders and
tokenises them and the tokenizer are all the same. The tokenizer counts by what it does, not by its path alone: a
``tokenizer_config.json`` edited in place (another EOS, BOS added or not) under the same path is another key, so
its rows are tokenised again rather than read back ending in the old EOS.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import weakref
from typing import Any

# modules outside a datamodule's own classes whose code decides its rows: the prompt templates, and the rule
# (``prompt_carries_special_tokens``) that says whether a prompt gets BOS
ROW_SHAPING_MODULES = ("lit_lora.data.templates", "lit_lora.data.contract")
# datamodule settings that batch the rows without shaping them
BATCHING = ("batch_size", "eval_batch_size", "num_workers", "group_by_length", "packing", "max_tokens_per_batch")


def encoding_code_hash(cls: type) -> str:
    """Hash of the source of every lit-lora module ``cls`` or a class it inherits from lives in (module helpers such
    as NLI's label reading included), and of ``ROW_SHAPING_MODULES``: changed code, fresh cache."""
    names = {klass.__module__ for klass in cls.__mro__ if klass.__module__.startswith("lit_lora")}
    names.update(ROW_SHAPING_MODULES)
    sources = [inspect.getsource(importlib.import_module(name)) for name in sorted(names)]
    return hashlib.sha256("".join(sources).encode()).hexdigest()[:16]


def tokenizer_identity(tokenizer) -> list[Any]:
    """What of ``tokenizer`` shapes tokenised rows: its path and size, its special tokens and their ids, whether it
    adds BOS / EOS, its chat template, and (a fast tokenizer) a hash of its whole state, which holds the vocabulary
    and the BOS / EOS its post-processor adds."""
    settings = [tokenizer.name_or_path, len(tokenizer), tokenizer.pad_token, tokenizer.pad_token_id,
                tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.special_tokens_map,
                getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None),
                getattr(tokenizer, "chat_template", None)]
    return settings + [backend_state_hash(tokenizer, json.dumps(settings, sort_keys=True, default=str))]


# one hash of a tokenizer's serialized state per tokenizer object and settings: at Llama 3's 128k tokens the state
# is megabytes (``python bench/cache_key.py``), and every split of a run asks for it
_STATE_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def backend_state_hash(tokenizer, settings: str) -> str | None:
    """sha256 of a fast tokenizer's ``tokenizer.json`` state (None for a slow one), computed again only where the
    object or its ``settings`` (size, special tokens, BOS / EOS flags: what adding tokens or flags changes) differ."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    known = _STATE_HASHES.get(tokenizer)
    if known is None or known[0] != settings:
        known = _STATE_HASHES[tokenizer] = (settings, hashlib.sha256(backend.to_str().encode()).hexdigest())
    return known[1]


def tokenised_rows_key(fingerprint: str, cls: type, settings: dict, split: str, tokenizer) -> str:
    """The ``new_fingerprint`` of a split's tokenised rows: the raw rows' ``fingerprint``, the class, its code, its
    ``settings`` (those in ``BATCHING`` left out), the split and the tokenizer."""
    settings = {name: value for name, value in settings.items() if name not in BATCHING}
    key = json.dumps([fingerprint, cls.__qualname__, encoding_code_hash(cls), settings, split,
                      tokenizer_identity(tokenizer)], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:32]
