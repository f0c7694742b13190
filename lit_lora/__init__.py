"""lit-lora: fine-tune Hugging Face language models (full, LoRA, QLoRA, prompt adapters) with Lightning."""

__version__ = "0.1.0"
