"""A chat template that refuses the turns a config asks for (Gemma's refuses a system turn) is one input error
naming the setting, before any row is rendered, not the template's own error from inside the tokenizer."""

from __future__ import annotations

import json

import pytest
from harness import SAMPLES, code_row, setup_error, write_lines

from lit_lora.data import InstructionDataModule
from lit_lora.data.nli_prompts import SNLILabelWordDataModule
from lit_lora.errors import IncompatibleConfig

pytestmark = pytest.mark.faults

NO_SYSTEM_ROLE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture
def no_system_tokenizer(tmp_path, tiny_model) -> str:
    """The tiny Llama's tokenizer with a chat template that, like Gemma's, has no system role."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    tokenizer.chat_template = NO_SYSTEM_ROLE
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    return str(tmp_path / "tokenizer")


def code_file(tmp_path) -> str:
    return write_lines(tmp_path / "codes.jsonl", [json.dumps(code_row(i)) for i in range(8)])


@pytest.mark.parametrize("datamodule, source", [(InstructionDataModule, code_file),
                                                (SNLILabelWordDataModule, lambda _: str(SAMPLES / "snli_train.jsonl"))])
def test_a_system_prompt_the_chat_template_refuses_is_named(tmp_path, no_system_tokenizer, datamodule, source):
    dm = datamodule(source=source(tmp_path), tokenizer_name_or_path=no_system_tokenizer, val_fraction=0.25,
                    template="chat", system_prompt="You are a careful assistant.")
    message = setup_error(dm, IncompatibleConfig)
    assert message.startswith("data.init_args.system_prompt: the chat template of ")
    assert "System role not supported" in message and "drop system_prompt" in message


def test_the_same_template_without_a_system_prompt_renders_every_row(tmp_path, no_system_tokenizer):
    dm = InstructionDataModule(source=code_file(tmp_path), tokenizer_name_or_path=no_system_tokenizer,
                               val_fraction=0.25, template="chat")
    dm.setup("fit")
    prompts = list(dm.datasets["train"]["prompt"]) + list(dm.datasets["validation"]["prompt"])
    assert len(prompts) == 8 and all(p.endswith("<start_of_turn>model\n") for p in prompts)
