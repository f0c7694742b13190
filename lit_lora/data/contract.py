"""What a datamodule hands the module it feeds: one frozen ``DataContract``, connected once per stage.

The datamodule decides everything about its rows (the tokenizer, whether a prompt already carries BOS, the
length rows are cut to, label names, evaluation set names, which rows were trained on) and the module reads
those decisions from ``module.data_contract`` only, never from ``trainer.datamodule``::

    >>> from lit_lora.data import InstructionDataModule
    >>> dm = InstructionDataModule(tokenizer_name_or_path="lit_lora/assets/tiny-llama", max_samples=8)
    >>> dm.setup("fit")
    >>> contract = dm.contract()
    >>> contract.prompt_has_special_tokens, contract.add_special_tokens   # alpaca prompts: BOS is added
    (False, True)
    >>> contract.max_length, contract.eval_names, contract.encoder_decoder, contract.splits
    (512, ('validation',), False, ('train', 'validation'))

``FineTuneModule.setup`` takes it with ``contract_of(trainer)``, the one place that reads ``trainer.datamodule``
for a module, and calls ``module.connect(contract)``. Lightning runs ``datamodule.setup``, then
``module.setup``, then ``configure_model``, so a classifier's head is sized from ``contract.label_names``.

The other direction, model -> data, is one declaration: a module class says whether it is an encoder-decoder
(``FineTuneModule.encoder_decoder``) and ``declared_encoder_decoder(trainer)`` reads it for the datamodule that
tokenises for that module (an explicit ``encoder_decoder: true`` in the data section still wins; the module
refuses a contract that disagrees with it). The datamodule never reads the model's config for this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# datamodule settings that decide which rows a run trained on (stored in checkpoints, compared on load)
TRAINING_SPLIT_KEYS = ("source", "split", "subset", "validation_source", "validation_split", "val_fraction",
                       "max_samples", "sample_fraction", "seed", "cleaning", "eval_sources")


def no_prompts(split: str) -> Optional[list[str]]:
    """A contract's ``prompts`` for data without prompt text (classification pairs)."""
    return None


def prompt_carries_special_tokens(template: str, encoder_decoder: bool) -> bool:
    """The one rule: a chat-template prompt of a causal LM already holds BOS (the template writes it); any other
    prompt gets the tokenizer's special tokens when tokenised (an encoder input gets them whatever the template)."""
    return template == "chat" and not encoder_decoder


@dataclass(frozen=True)
class DataContract:
    """What the data decided, for the module that trains and evaluates on it (see the module doc)."""

    tokenizer: Any
    """The tokenizer the rows were tokenised with; the module generates, scores, pads and saves with it."""
    prompt_has_special_tokens: bool
    """Whether prompt text already carries the special tokens (BOS): True for a causal LM's chat template. Training
    rows, likelihood scoring and generation all tokenise prompts with ``add_special_tokens`` derived from it."""
    max_length: int
    """Longest tokenised row; generation cuts prompts to it as training did."""
    encoder_decoder: bool
    """Rows are tokenised for an encoder-decoder (prompt -> encoder input, response -> labels)."""
    label_names: Optional[tuple[str, ...]] = None
    """Class names in label-index order (classification data), else None."""
    eval_names: tuple[str, ...] = ()
    """Names of the validation dataloaders in loader order (MultiNLI: ``("matched", "mismatched")``)."""
    splits: tuple[str, ...] = ()
    """The tokenised splits, ``"train"`` included (the train-overlap check compares each evaluated one)."""
    test_splits: tuple[str, ...] = ("validation",)
    """The splits ``test`` scores (the datamodule's ``eval_splits("test")``: ``test`` where the data has one)."""
    training_settings: dict = field(default_factory=dict)
    """The data settings that decide which rows were trained on, plus the datamodule class (checkpointed)."""
    source: str = ""
    """Where the training rows come from, for messages."""
    data_class: str = ""
    """The datamodule's class name, for messages."""
    prompts: Callable[[str], Optional[list[str]]] = no_prompts
    """The prompt texts of a split (``"train"``, ``"validation"``, ``"matched"`` …); None when it has none."""
    prompt_is_row_text: bool = True
    """Whether a prompt is the row's own text (every template but ``chat``), whose ``"</s>"`` stays text
    (``split_special_tokens``): generation and likelihood scoring tokenise prompts as the training rows were."""

    @property
    def add_special_tokens(self) -> bool:
        """What to pass as ``add_special_tokens`` when tokenising a prompt alone (the reverse of the field)."""
        return not self.prompt_has_special_tokens

    def split_of(self, stage: str) -> str:
        """The (first) split a stage evaluates: what ``test`` scores, else the first validation set."""
        return (self.test_splits if stage == "test" else self.eval_names or ("validation",))[0]

    def evaluated_splits(self) -> list[str]:
        """Every split but the training one (MultiNLI: matched and mismatched)."""
        return [name for name in self.splits if name != "train"]


def contract_of(trainer) -> DataContract:
    """The contract of the trainer's datamodule: the one read of ``trainer.datamodule`` a module makes."""
    datamodule = getattr(trainer, "datamodule", None)
    make = getattr(datamodule, "contract", None)
    if make is None:
        what = f"a {type(datamodule).__name__}" if datamodule is not None else "no datamodule"
        raise TypeError(f"lit-lora modules take their rows and tokenizer from a datamodule with contract() "
                        f"(a lit_lora.data.TextDataModule), passed as trainer.fit(module, datamodule=…); got {what}")
    return make()


def module_of(trainer):
    """The LightningModule the trainer runs, or ``None``: the one place the data side looks at the model side."""
    return getattr(trainer, "lightning_module", None) if trainer is not None else None


def declared_packing_refusal(trainer) -> Optional[str]:
    """Why the module the trainer runs cannot train on packed rows (its model and adapter), or ``None``.

    The module answers from its own model config (``FineTuneModule.packing_refusal``); without a module to ask
    (a datamodule used on its own) nothing is refused here, and the data's own refusal still applies.
    """
    module = module_of(trainer)
    ask = getattr(module, "packing_refusal", None)
    return ask() if callable(ask) else None


def declared_encoder_decoder(trainer) -> Optional[bool]:
    """Whether the module the trainer runs declares itself an encoder-decoder (``None``: no module to ask)."""
    module = module_of(trainer)
    if module is None:
        return None
    return bool(getattr(module, "encoder_decoder", False))


def declared_flattened_packing(trainer) -> bool:
    """Whether the module the trainer runs wants packed rows as one flattened row (FlashAttention varlen).

    The module answers from the model it built (``FineTuneModule.flattens_packed_rows``); without a module to ask,
    packed sequences are stacked, which every attention implementation reads correctly.
    """
    module = module_of(trainer)
    ask = getattr(module, "flattens_packed_rows", None)
    return bool(ask()) if callable(ask) else False
