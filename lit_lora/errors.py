"""The errors that say what is wrong with a run's input: the ``lit-lora`` command prints them as one line.

Each derives from ``InputError`` and from the built-in error it is (``ValueError``, ``FileNotFoundError`` …), so
Python callers catch it as before and the command knows it by one ``isinstance``. A new kind of input error
derives from ``InputError`` too; the two raised from every layer (data, models, evaluation, commands) live here,
in a module that imports nothing::

    >>> from lit_lora.errors import IncompatibleConfig, InputError
    >>> isinstance(IncompatibleConfig("val_fraction must be in (0, 1), got 1.5"), (InputError, ValueError))
    True
"""

from __future__ import annotations


class InputError(Exception):
    """An error whose message is the whole answer: the file, line, key or setting at fault and what to do."""


class IncompatibleConfig(InputError, ValueError):
    """A setting, or a combination of settings, that cannot run (method × strategy × quantisation, a value out of
    range, a data option the model cannot use), refused before anything loads, with the fix in the message."""


class CheckpointSettingsMismatch(InputError, ValueError):
    """A ``--ckpt_path`` that does not fit the run given: other model settings, another module, or a batch order,
    world size or data seed the data cannot resume exactly."""
