"""Label names of a module scored against classes (classifier, label word): given, or from the data contract.

The CLI links ``data.label_names`` to ``model.init_args.label_names`` (so they are in the module's hyperparameters
and checkpoints); ``connect`` takes them from the data contract when none were given, and refuses names that
differ from the data's::

    >>> from lit_lora.data.contract import DataContract
    >>> from lit_lora.models import SequenceClassifierModule
    >>> module = SequenceClassifierModule("lit_lora/assets/tiny-llama")
    >>> module.connect(DataContract(None, False, 64, False, label_names=("yes", "no")))
    >>> module.label_names
    ['yes', 'no']
"""

from __future__ import annotations

from typing import Optional

from lit_lora.errors import IncompatibleConfig


class LabelledModule:
    """Mixin for a ``FineTuneModule`` with ``label_names`` (class names in label-index order)."""

    label_names: Optional[list[str]]

    def connect(self, contract) -> None:
        """``label_names`` as given (CLI link) or from the data contract; both must agree."""
        super().connect(contract)
        from_data = list(contract.label_names) if contract.label_names else None
        if self.label_names is None and from_data:
            self.label_names = from_data
        elif from_data and from_data != self.label_names:
            raise IncompatibleConfig(f"model.init_args.label_names {self.label_names} differ from the datamodule's "
                                     f"{from_data}")

    def resolve_label_names(self) -> list[str]:
        """The label names (given, or taken from the data contract by ``connect``); fails without."""
        if not self.label_names:
            raise IncompatibleConfig(f"{type(self).__name__} needs label_names: pass them, or use a datamodule "
                                     "that defines label_names (e.g. lit_lora.data.MultiNLIDataModule)")
        return self.label_names
