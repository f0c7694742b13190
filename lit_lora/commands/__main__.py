"""``python -m lit_lora.commands …`` is ``lit-lora …`` (sweep points run their ``fit`` this way)."""

from lit_lora.commands import entry

if __name__ == "__main__":
    entry()
