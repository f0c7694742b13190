"""The data -> model contract (``lit_lora.data.contract``): each value the module needs is decided once, by one side.

(a) the tokenizer is loaded with the model's ``trust_remote_code``; (b) label-word generation cuts prompts to
``max_length`` as generative evaluation does; (c) whether a prompt already carries BOS is one contract field that
training tokenisation, likelihood scoring and generation all follow; (d) the encoder-decoder choice is the module
class's, so the datamodule never reads the model config. And no module reads ``trainer.datamodule`` itself.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import demo_cli, quiet_trainer

from lit_lora.adapters import LoRA
from lit_lora.data import InstructionDataModule
from lit_lora.data.contract import contract_of
from lit_lora.data.nli_prompts import MultiNLILabelWordDataModule
from lit_lora.evaluation.generation import GenerationSettings
from lit_lora.models import CausalLMModule, LabelWordModule, Seq2SeqModule

PACKAGE = Path(__file__).resolve().parents[1] / "lit_lora"
SETTINGS = GenerationSettings(max_new_tokens=2, during_validation=True)


def spy_prompt_batches(monkeypatch, tokenizer) -> list[dict]:
    """Every call that tokenises a list of prompts (likelihood scoring, generation), with its keyword arguments."""
    calls: list[dict] = []
    real = type(tokenizer).__call__

    def call(self, text=None, *args, **kwargs):
        if isinstance(text, list) and text and isinstance(text[0], str):
            calls.append({"generation": "truncation" in kwargs, **kwargs})
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", call)
    return calls


def label_word_run(path: str, dm) -> list[dict]:
    module = LabelWordModule(model_name_or_path=path, adapter=LoRA(r=4, alpha=8), evaluation=SETTINGS)
    quiet_trainer(num_sanity_val_steps=0).validate(module, dm, verbose=False)
    return module


# ---- (a) trust_remote_code -----------------------------------------------------------------------------------
def test_the_tokenizer_is_loaded_with_the_models_trust_remote_code(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    calls: list[dict] = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: calls.append(k) or real(*a, **k))
    cli = demo_cli(tiny_model("llama"), tmp_path, "--model.init_args.trust_remote_code", "true")
    assert cli.model.trust_remote_code is True
    assert calls and all(c.get("trust_remote_code") is True for c in calls), calls
    calls.clear()
    InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"))  # outside the CLI: off unless given
    assert calls and calls[-1].get("trust_remote_code") is False


# ---- (b) prompts cut to max_length ---------------------------------------------------------------------------
def test_label_word_generation_cuts_prompts_to_max_length_like_generative_evaluation(tiny_model, monkeypatch):
    path = tiny_model("llama")
    nli = MultiNLILabelWordDataModule(tokenizer_name_or_path=path, max_samples=8, max_eval_samples=2, max_length=128)
    sft = InstructionDataModule(tokenizer_name_or_path=path, max_samples=12, max_eval_samples=2, max_length=256)
    calls = spy_prompt_batches(monkeypatch, nli.tokenizer)
    label_word_run(path, nli)
    cut = [(c.get("truncation"), c.get("max_length")) for c in calls if c["generation"]]
    assert cut and set(cut) == {(True, 128)}, cut
    calls.clear()
    module = CausalLMModule(path, adapter=LoRA(r=4, alpha=8), evaluation=SETTINGS)
    quiet_trainer(num_sanity_val_steps=0).validate(module, sft, verbose=False)
    assert {(c.get("truncation"), c.get("max_length")) for c in calls if c["generation"]} == {(True, 256)}


# ---- (c) BOS: one decision ------------------------------------------------------------------------------------
def chat_model(path: str, tmp_path: Path) -> str:
    from transformers import AutoTokenizer

    chat = tmp_path / "chat-llama"
    shutil.copytree(path, chat)
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    tok.save_pretrained(chat)
    return str(chat)


@pytest.mark.parametrize("template, carries_bos", [("chat", True), ("alpaca", False), ("plain", False)])
def test_the_contract_says_whether_prompts_carry_bos(tiny_model, tmp_path, template, carries_bos):
    dm = InstructionDataModule(tokenizer_name_or_path=chat_model(tiny_model("llama"), tmp_path), template=template,
                               max_samples=8)
    dm.setup("fit")
    contract = dm.contract()
    assert contract.prompt_has_special_tokens is carries_bos and contract.add_special_tokens is not carries_bos
    bos = dm.tokenizer.bos_token_id
    for ids in dm.datasets["train"]["input_ids"]:  # one BOS, from the template or from the tokenizer
        assert ids[0] == bos and ids[1] != bos


class BOSInPrompt(MultiNLILabelWordDataModule):
    """Writes BOS into the prompt text itself, and says so in the one field the module reads."""

    def format_example(self, row: dict):
        example = super().format_example(row)
        return example if isinstance(example, str) else (self.tokenizer.bos_token + example[0], example[1])

    @property
    def prompt_has_special_tokens(self) -> bool:
        return True


def test_training_scoring_and_generation_follow_the_one_bos_field(tiny_model, monkeypatch):
    path = tiny_model("llama")
    dm = BOSInPrompt(tokenizer_name_or_path=path, max_samples=8, max_eval_samples=2)
    calls = spy_prompt_batches(monkeypatch, dm.tokenizer)
    label_word_run(path, dm)
    bos = dm.tokenizer.bos_token_id
    assert all(ids[0] == bos and ids[1] != bos for ids in dm.datasets["train"]["input_ids"])
    assert {c["generation"] for c in calls} == {True, False}  # likelihood scoring and generation both ran
    assert all(c["add_special_tokens"] is False for c in calls), calls


# ---- (d) encoder-decoder: the module's declaration -------------------------------------------------------------
def test_the_datamodule_tokenises_for_the_modules_kind_without_reading_the_model_config(tiny_model, monkeypatch):
    from transformers import AutoConfig

    real = AutoConfig.from_pretrained

    def refuse(*args, **kwargs):  # transformers' tokenizer loading may look at the config; lit-lora's data may not
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("lit_lora"):
            raise AssertionError(f"{caller} read the model config")
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", refuse)
    path = tiny_model("t5")
    dm = InstructionDataModule(tokenizer_name_or_path=path, max_samples=8, template="plain")
    dm.trainer = SimpleNamespace(lightning_module=Seq2SeqModule(path))  # what Lightning attaches
    dm.setup("fit")
    contract = dm.contract()
    assert dm.encoder_decoder and contract.encoder_decoder and not contract.prompt_has_special_tokens
    row = dm.datasets["train"][0]
    assert row["labels"] == dm.tokenizer(text_target=row["reference"])["input_ids"]  # encoder input, decoder labels
    assert row["input_ids"] == dm.tokenizer(row["prompt"])["input_ids"]

    causal = InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), max_samples=8)
    causal.trainer = SimpleNamespace(lightning_module=CausalLMModule(tiny_model("llama")))
    causal.setup("fit")
    assert not causal.contract().encoder_decoder and -100 in causal.datasets["train"][0]["labels"]


def test_packing_is_checked_by_asking_the_module_not_by_reading_the_model_config(tiny_model, monkeypatch):
    from transformers import AutoConfig

    from lit_lora.adapters.prompt import PromptTuning

    real, readers = AutoConfig.from_pretrained, []

    def record(*args, **kwargs):
        readers.append(sys._getframe(1).f_globals.get("__name__", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", record)
    path = tiny_model("llama")
    dm = InstructionDataModule(tokenizer_name_or_path=path, max_samples=8, packing=True)
    dm.trainer = SimpleNamespace(lightning_module=CausalLMModule(path, adapter=PromptTuning()))
    with pytest.raises(ValueError, match="does not work with prompt_tuning.*set packing: false"):
        dm.setup("fit")
    assert "lit_lora.models.base" in readers  # the module answered from its own config
    assert not [r for r in readers if r.startswith("lit_lora.data")]


def test_a_module_refuses_data_tokenised_for_the_other_kind(tiny_model):
    dm = InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), encoder_decoder=True, max_samples=8)
    dm.setup("fit")
    with pytest.raises(ValueError, match="encoder-decoder.*CausalLMModule is not one"):
        CausalLMModule(tiny_model("llama")).connect(dm.contract())


# ---- one way in -----------------------------------------------------------------------------------------------
def test_a_datamodule_without_a_contract_is_named():
    with pytest.raises(TypeError, match="datamodule with contract.*got a SimpleNamespace"):
        contract_of(SimpleNamespace(datamodule=SimpleNamespace()))
    with pytest.raises(TypeError, match="got no datamodule"):
        contract_of(SimpleNamespace(datamodule=None))


# trainer-side code that reads the datamodule on purpose: the contract's one reader, the CLI / commands layer, the
# callbacks the CLI installs (BaselineComparison iterates the validation loader) and the run-start path checks
ALLOWED = ("data/contract.py", "commands/", "cli.py", "callbacks.py", "cluster/launch_checks.py")


def reads_datamodule(node: ast.AST) -> bool:
    """``x.datamodule`` or ``getattr(x, "datamodule", …)``."""
    if isinstance(node, ast.Attribute):
        return node.attr == "datamodule"
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
        and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value == "datamodule"


def test_no_model_or_evaluation_code_reads_the_trainers_datamodule():
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if reads_datamodule(node) and not where.startswith(ALLOWED):
                readers.append(f"{where}:{node.lineno}")
    assert readers == [], f"read the data through module.data_contract instead: {readers}"


def test_no_data_code_reads_the_trainers_module():
    """The other direction: the data asks the module only through the declarations in ``data/contract.py``."""
    readers = []
    for path in sorted((PACKAGE / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "lightning_module" and path.name != "contract.py":
                readers.append(f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno}")
            if isinstance(node, ast.Constant) and node.value == "lightning_module" and path.name != "contract.py":
                readers.append(f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno}")
    assert readers == [], f"ask the module through a declared_… function in data/contract.py instead: {readers}"


def test_the_split_a_stage_scores_is_the_datamodules_own(tiny_model):
    """The generation evaluator's train-overlap check reads the contract's split; it must be the one the
    datamodule's loaders score (MultiNLI tests its matched and mismatched sets, it has no "validation")."""
    from lit_lora.data.nli import MultiNLIDataModule

    for dm in (InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), max_samples=8),
               MultiNLIDataModule(tokenizer_name_or_path=tiny_model("roberta"), max_samples=8)):
        dm.setup("fit")
        contract = dm.contract()
        for stage in ("validate", "test"):
            assert contract.split_of(stage) == dm.eval_splits(stage)[0] in contract.splits
    assert contract.split_of("test") == "matched"
