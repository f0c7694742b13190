"""Instruction data: schema errors, counted drops, pad token, response-only labels, subsets."""

import json
import logging

import pytest

from lit_lora.data import InstructionDataModule
from lit_lora.data.collators import IGNORE_INDEX
from lit_lora.data.file_errors import DataFileError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def row(instruction="Add a and b.", input_="", output="```python\na + b\n```"):
    return {"instruction": instruction, "input": input_, "output": output, "text": f"{instruction} {output}"}


def make_dm(tiny_model, source, **kwargs):
    kwargs.setdefault("val_fraction", 0.25)
    return InstructionDataModule(source=source, tokenizer_name_or_path=tiny_model("llama"), **kwargs)


def test_missing_column_names_the_column_and_the_file(tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "broken.jsonl", [{"instruction": "x", "input": "", "text": "x"}] * 4)
    dm = make_dm(tiny_model, path)
    with pytest.raises(ValueError, match=r"broken\.jsonl.*missing column 'output'"):
        dm.setup("fit")


def test_empty_rows_are_dropped_and_counted(tmp_path, tiny_model, caplog):
    rows = [row() for _ in range(6)] + [row(instruction="  "), row(output=""), row(output="   ")]
    dm = make_dm(tiny_model, write_jsonl(tmp_path / "d.jsonl", rows), val_fraction=0.5, seed=1)
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        dm.setup("fit")
    counts = dm.drop_counts["train"] + dm.drop_counts["validation"]
    assert counts == {"empty instruction": 1, "empty output": 2}
    assert sum(len(d) for d in dm.datasets.values()) == 6
    assert "dropped" in caplog.text and "empty output" in caplog.text


def test_row_whose_response_would_be_truncated_away_is_dropped(tmp_path, tiny_model):
    long_instruction = "Explain this code in detail please " * 40
    rows = [row(f"Add a and b, case {i}.") for i in range(6)] + [row(instruction=long_instruction)] * 2
    dm = make_dm(tiny_model, write_jsonl(tmp_path / "d.jsonl", rows), max_length=160, val_fraction=0.25)
    dm.setup("fit")
    counts = dm.drop_counts["train"] + dm.drop_counts["validation"]
    assert counts["response truncated away"] == 2
    for dataset in dm.datasets.values():
        for labels in dataset["labels"]:
            assert any(t != IGNORE_INDEX for t in labels), "a row with no trainable token reached the loss"
            assert len(labels) <= 160


def test_missing_pad_token_borrows_eos_with_warning_and_keeps_eos_in_the_loss(tiny_model, caplog):
    with caplog.at_level(logging.WARNING, logger="lit_lora"):
        dm = InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), max_samples=16, batch_size=4)
    assert "no pad token" in caplog.text
    tok = dm.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    for i, n in enumerate(lengths):
        assert batch["labels"][i, n - 1] == tok.eos_token_id  # the closing EOS is a target
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()  # padding is not


def test_loss_is_on_the_response_only_unless_train_on_prompt(tiny_model):
    kwargs = dict(tokenizer_name_or_path=tiny_model("llama"), max_samples=8)
    prompt_masked = InstructionDataModule(**kwargs)
    prompt_masked.setup("fit")
    everything = InstructionDataModule(train_on_prompt=True, **kwargs)
    everything.setup("fit")
    masked, full = prompt_masked.datasets["train"][0], everything.datasets["train"][0]
    assert masked["input_ids"] == full["input_ids"]
    n_prompt = sum(1 for t in masked["labels"] if t == IGNORE_INDEX)
    assert n_prompt > 5
    assert full["labels"] == full["input_ids"]
    decoded = prompt_masked.tokenizer.decode([t for t in masked["labels"] if t != IGNORE_INDEX])
    assert "### Response" not in decoded and decoded.rstrip().endswith("</s>")


def test_subsets_first_n_and_seeded_fraction(tiny_model):
    first = InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), max_samples=20, val_fraction=0.25)
    first.setup("fit")
    assert len(first.datasets["train"]) + len(first.datasets["validation"]) == 20

    def sampled(seed):
        dm = InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), sample_fraction=0.1, seed=seed)
        dm.setup("fit")
        return list(dm.datasets["train"]["input_ids"]) + list(dm.datasets["validation"]["input_ids"])

    a, b, c = sampled(0), sampled(0), sampled(1)
    assert len(a) == 32  # 10% of the 320 bundled rows
    assert a == b and a != c


def test_chat_template_without_one_is_an_input_error_before_any_row_is_rendered(tiny_model):
    """An input error (one line from the command), raised before tokenisation, naming the templates that work."""
    from harness import setup_error

    from lit_lora.data.nli_prompts import SNLILabelWordDataModule
    from lit_lora.errors import IncompatibleConfig

    for dm in (InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), template="chat"),
               SNLILabelWordDataModule(tokenizer_name_or_path=tiny_model("llama"), template="chat")):
        assert setup_error(dm, IncompatibleConfig) == (
            f"data.init_args.template: 'chat' needs a tokenizer with a chat template; {tiny_model('llama')} has "
            f"none (use template: alpaca or plain)")


def test_tokenisation_is_cached_by_datasets(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [row(instruction=f"Add {i} and b.") for i in range(12)])
    first = make_dm(tiny_model, source)
    first.setup("fit")

    second = make_dm(tiny_model, source)
    second.encode_row = lambda r: (_ for _ in ()).throw(AssertionError("tokenised again instead of cached"))
    second.setup("fit")
    assert list(second.datasets["train"]["input_ids"]) == list(first.datasets["train"]["input_ids"])

    changed = make_dm(tiny_model, source, max_length=100)  # another setting is another cache entry
    changed.encode_row = second.encode_row
    with pytest.raises(AssertionError, match="tokenised again"):
        changed.setup("fit")


def test_chat_template_renders_system_and_user_turns_and_labels_the_answer_only(tiny_model, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    model_dir = tmp_path / "chat-model"
    shutil.copytree(tiny_model("llama"), model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer.save_pretrained(model_dir)
    dm = InstructionDataModule(tokenizer_name_or_path=str(model_dir), template="chat",
                               system_prompt="You write Python.", max_samples=8)
    dm.setup("fit")
    example = dm.datasets["train"][0]
    text = dm.tokenizer.decode(example["input_ids"])
    assert text.startswith("<s><|system|>You write Python.\n<|user|>") and "<|assistant|>" in text
    assert text.count("<s>") == 1  # the template's BOS is not doubled
    answer = dm.tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert "<|assistant|>" not in answer and answer.endswith("</s>")


def test_rows_cut_at_max_length_are_counted_and_logged(tmp_path, tiny_model, caplog):
    long_output = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(60)) + "\n```"
    rows = [row() for _ in range(6)] + [row(output=long_output)] * 3
    dm = make_dm(tiny_model, write_jsonl(tmp_path / "d.jsonl", rows), max_length=160, val_fraction=0.3, seed=0)
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        dm.setup("fit")
    assert sum(dm.truncated_counts.values()) == 3
    assert "cut at max_length=160" in caplog.text
    eos = dm.tokenizer.eos_token_id
    for dataset in dm.datasets.values():
        for ids in dataset["input_ids"]:
            assert len(ids) <= 160
            assert (ids[-1] == eos) == (len(ids) < 160)  # only the cut rows lost their closing EOS


def test_missing_local_file_is_a_clear_error_not_a_hub_lookup(tiny_model, tmp_path):
    dm = make_dm(tiny_model, str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataFileError, match=r"nope\.jsonl: no such file"):  # one line from the CLI
        dm.setup("fit")


def test_a_split_off_validation_holds_no_training_prompt(tmp_path, tiny_model, caplog):
    """Repeated prompts (one instruction answered several times) are split by prompt, so generation evaluation
    of the validation rows finds none of them in training (it would stop the run); data without repeats keeps
    the plain seeded split."""
    from datasets import Dataset

    from lit_lora.evaluation.overlap import find_overlap

    rows = [row(f"Task {i % 10}.", output=f"answer {i}") for i in range(40)]  # each prompt four times
    dm = make_dm(tiny_model, write_jsonl(tmp_path / "repeats.jsonl", rows))
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["validation"]
    assert len(train) + len(val) == 40 and len(val) == 8  # two whole prompts: 10 validation rows asked for
    assert find_overlap(train["prompt"], val["prompt"]).count == 0
    assert "split by prompt so that validation stays held out (10 prompts, 32 train / 8 validation rows)" in caplog.text

    unique = [row(f"Task {i}.", output=f"answer {i}") for i in range(40)]
    plain = make_dm(tiny_model, write_jsonl(tmp_path / "unique.jsonl", unique))
    plain.setup("fit")
    expected = Dataset.from_list(unique).train_test_split(test_size=0.25, seed=plain.seed)
    assert len(plain.datasets["validation"]) == len(expected["test"])
    assert sorted(plain.datasets["validation"]["reference"]) == sorted(r["output"] for r in expected["test"])


def test_a_split_named_for_a_local_file_is_refused_not_read_as_the_training_rows(tmp_path, tiny_model):
    """A local file has no splits: ``datasets`` reads it whole, so a ``validation_split`` of it validated on the
    training rows, without a word. It is one input error naming the key and the file, before anything loads."""
    from harness import setup_error

    from lit_lora.data import DS1000DataModule
    from lit_lora.errors import IncompatibleConfig

    source = write_jsonl(tmp_path / "rows.jsonl", [row(f"Task {i}.") for i in range(20)])
    message = setup_error(make_dm(tiny_model, source, validation_split="validation"), IncompatibleConfig)
    assert message.startswith(f"data.init_args.validation_split: 'validation' names a split of a hub dataset, but "
                              f"{source} is a local file, which has no splits: it is read whole as the training rows, "
                              "and validation would be those same rows.")
    assert "validation_source (a file)" in message and "val_fraction" in message
    assert setup_error(make_dm(tiny_model, source, split="test"), IncompatibleConfig).startswith(
        f"data.init_args.split: 'test' names a split of a hub dataset, but {source} is a local file")
    other = write_jsonl(tmp_path / "val.jsonl", [row(f"Other {i}.") for i in range(4)])
    assert f"but {other} is a local file" in setup_error(
        make_dm(tiny_model, source, validation_source=other, validation_split="validation"), IncompatibleConfig)

    make_dm(tiny_model, source, validation_source=other).setup("fit")  # a validation file, whole, still works
    DS1000DataModule(tokenizer_name_or_path=tiny_model("llama"), max_samples=8).setup("fit")  # its own split: test


def test_a_tokenizer_changed_in_place_is_not_served_stale_rows(tmp_path, tiny_model):
    """The cache key holds what the tokenizer does, not only its path: another EOS under the same directory."""
    import shutil

    model_dir = tmp_path / "tok"
    shutil.copytree(tiny_model("llama"), model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = {**json.loads(config_path.read_text()), "pad_token": "<unk>"}
    config_path.write_text(json.dumps(config))
    source = write_jsonl(tmp_path / "d.jsonl", [row(f"Add {i} and b.") for i in range(12)])
    first = InstructionDataModule(source=source, tokenizer_name_or_path=str(model_dir))
    first.setup("fit")
    assert first.datasets["train"][0]["input_ids"][-1] == first.tokenizer.convert_tokens_to_ids("</s>")

    config_path.write_text(json.dumps({**config, "eos_token": "<s>"}))
    changed = InstructionDataModule(source=source, tokenizer_name_or_path=str(model_dir))
    changed.setup("fit")
    assert changed.tokenizer.eos_token == "<s>"
    assert all(ids[-1] == changed.tokenizer.eos_token_id for ids in changed.datasets["train"]["input_ids"])


def test_the_code_hash_of_the_cache_covers_the_templates_and_the_bos_rule(monkeypatch):
    """Rows are rendered by ``templates`` and get BOS by ``contract``'s rule: edited, they are tokenised again."""
    import inspect

    from lit_lora.data import cache_key, contract, templates

    before = cache_key.encoding_code_hash(InstructionDataModule)
    for module in (templates, contract):
        source = inspect.getsource
        monkeypatch.setattr(cache_key.inspect, "getsource", lambda obj, m=module: source(obj) + "#" * (obj is m))
        assert cache_key.encoding_code_hash(InstructionDataModule) != before, module.__name__
        monkeypatch.undo()


def test_special_token_text_in_a_row_stays_text(tiny_model, tmp_path):
    """``"<s>"`` / ``"</s>"`` written in a code answer or a plain prompt is text: one BOS first, one EOS last; a chat
    template's own special tokens stay special."""
    import shutil

    from transformers import AutoTokenizer

    code = 'html = "<s>old</s> new"'
    dm = InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), template="plain")
    tok = dm.tokenizer
    for prompt in ("### Response:\n", "Strip </s> and <s> tags.\n"):
        ids = dm.tokenize_example(prompt, code)["input_ids"]
        assert [i for i, t in enumerate(ids) if t in (tok.bos_token_id, tok.eos_token_id)] == [0, len(ids) - 1]
        assert tok.decode(ids) == f"<s>{prompt}{code}</s>"

    chat = tmp_path / "chat-model"
    shutil.copytree(tiny_model("llama"), chat)
    chat_tok = AutoTokenizer.from_pretrained(chat)
    chat_tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    chat_tok.save_pretrained(chat)
    chat_dm = InstructionDataModule(tokenizer_name_or_path=str(chat), template="chat")
    prompt = chat_dm.format_example(row("Strip tags.", output=code))[0]
    ids = chat_dm.tokenize_example(prompt, code)["input_ids"]
    assert ids[0] == chat_tok.bos_token_id and ids.count(chat_tok.eos_token_id) == 2  # the template's, and the last

    seq2seq = InstructionDataModule(tokenizer_name_or_path=tiny_model("t5"), encoder_decoder=True)
    features = seq2seq.tokenize_seq2seq("Strip </s> tags.", code)
    eos = seq2seq.tokenizer.eos_token_id
    assert features["input_ids"].count(eos) == 1 and features["labels"].count(eos) == 1


def test_rows_dropped_later_leave_a_prompt_in_training_when_split_by_prompt(tmp_path, tiny_model):
    """Split by prompt, the validation size counts the rows that train: counted, seven empty answers made room for
    every prompt in validation, and training failed with "every row was dropped"."""
    rows = [row("A."), row("A."), row("B.")] + [row(f"Empty {i}.", output="") for i in range(7)]
    dm = make_dm(tiny_model, write_jsonl(tmp_path / "mostly_empty.jsonl", rows), val_fraction=0.5, seed=2)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["validation"]
    assert len(train) >= 1 and len(val) >= 1 and not set(train["prompt"]) & set(val["prompt"])
    assert dm.drop_counts["train"]["empty output"] + dm.drop_counts["validation"]["empty output"] == 7


def test_a_run_serialises_its_tokenizer_once_for_all_splits_and_again_once_tokens_are_added(tiny_model, monkeypatch):
    """The tokenizer's state is megabytes at a 128k vocabulary (``bench/cache_key.py``): hashed once per tokenizer,
    not per split, and hashed again where adding a token changed it."""
    from transformers import AutoTokenizer

    from lit_lora.data import cache_key

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    backend_type = type(tokenizer.backend_tokenizer)
    serialised = []
    monkeypatch.setattr(cache_key, "_STATE_HASHES", cache_key.weakref.WeakKeyDictionary())

    class CountingBackend:
        def __init__(self, backend):
            self.backend = backend

        def to_str(self):
            serialised.append(1)
            return self.backend.to_str()

    monkeypatch.setattr(type(tokenizer), "backend_tokenizer", property(lambda t: CountingBackend(t._tokenizer)))
    assert isinstance(tokenizer._tokenizer, backend_type)
    keys = [cache_key.tokenised_rows_key("raw", InstructionDataModule, {}, split, tokenizer)
            for split in ("train", "validation", "test")]
    assert len(serialised) == 1 and len(set(keys)) == 3  # one hash, three splits

    before = cache_key.tokenizer_identity(tokenizer)[-1]
    tokenizer.add_tokens(["<new-token>"])
    assert cache_key.tokenizer_identity(tokenizer)[-1] != before and len(serialised) == 2
