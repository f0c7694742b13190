"""The arguments the CLI sets from another one (``link_arguments``), in one table: the parser links them, a value
given for one is refused (jsonargparse would drop it silently), a resume does not compare them, and the W&B run
config leaves them out (they are not in the saved config).

    >>> [link.target for link in LINKS if link.apply_on == "instantiate"]
    ['model.init_args.tokenizer', 'model.init_args.label_names']
    >>> sorted(linked_names("model"))
    ['label_names', 'tokenizer']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Link:
    """``target`` takes ``source``'s value when the config is parsed (or, ``instantiate``, from the built object)."""

    source: str
    target: str
    apply_on: str = "parse"
    comes_from: str = ""  # how an error names the source (default: ``source``)


LINKS = (
    Link("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path"),
    # the model owns trust_remote_code; its tokenizer is loaded with the same setting
    Link("model.init_args.trust_remote_code", "data.init_args.trust_remote_code"),
    Link("data.tokenizer", "model.init_args.tokenizer", "instantiate", "the datamodule's tokenizer"),
    # class names of classification data; skipped for a datamodule / module without label_names
    Link("data.label_names", "model.init_args.label_names", "instantiate", "the datamodule's label_names"),
)


def linked_names(section: Optional[str] = None) -> set[str]:
    """The argument names the links set (in ``section``, ``model`` or ``data``, where given)."""
    return {link.target.rsplit(".", 1)[-1] for link in LINKS
            if section is None or link.target.startswith(f"{section}.")}


def canonical(key: str) -> str:
    """``model.init_args.adapter.init_args.r`` -> ``model.adapter.r``: one name however the key is given (jsonargparse
    takes ``--data.batch_size`` for ``data.init_args.batch_size``)."""
    return ".".join(part for part in key.split(".") if part != "init_args")
