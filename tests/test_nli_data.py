"""NLI datamodules: pair encoding, SNLI -1 rows dropped and counted, bad labels named by row, eval sets apart."""

import json

import pytest

from lit_lora.data.nli import MultiNLIDataModule, SNLIDataModule
from lit_lora.data.sources import SAMPLES_DIR


def rows_of(name):
    return [json.loads(line) for line in (SAMPLES_DIR / name).read_text().splitlines() if line.strip()]


def test_snli_no_gold_label_rows_are_dropped_and_counted(tiny_model):
    dm = SNLIDataModule(tokenizer_name_or_path=tiny_model("roberta"), batch_size=4)
    dm.setup()
    for split, name in (("train", "snli_train.jsonl"), ("validation", "snli_validation.jsonl")):
        rows = rows_of(name)
        no_gold = sum(r["label"] == -1 for r in rows)
        assert no_gold > 0
        assert dm.drop_counts[split] == {"no gold label (-1)": no_gold}
        assert len(dm.datasets[split]) == len(rows) - no_gold
    assert set(dm.datasets["train"]["labels"]) == {0, 1, 2}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_label_outside_the_label_set_fails_with_its_row(tiny_model, tmp_path):
    rows = [{"premise": f"The dog is running {i}.", "hypothesis": "A dog is running.", "label": i % 3}
            for i in range(6)]
    rows[4]["label"] = 3
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    dm = SNLIDataModule(source=source, tokenizer_name_or_path=tiny_model("roberta"))
    with pytest.raises(ValueError, match=r"bad\.jsonl.*row 4 .*'label': 3"):
        dm.setup()
    # -1 is SNLI's documented "no gold label"; for MultiNLI it is an error like any other
    rows[4]["label"] = -1
    rows = [{**r, "genre": "fiction"} for r in rows]
    source = write_jsonl(tmp_path / "mnli.jsonl", rows)
    with pytest.raises(ValueError, match=r"row 4 .*'label': -1"):
        MultiNLIDataModule(source=source, tokenizer_name_or_path=tiny_model("roberta")).setup()


def test_label_names_as_strings_are_accepted(tiny_model, tmp_path):
    rows = [{"premise": f"The cat is eating {i}.", "hypothesis": "A cat is eating.",
             "label": ["entailment", "neutral", "contradiction"][i % 3]} for i in range(9)]
    dm = SNLIDataModule(source=write_jsonl(tmp_path / "named.jsonl", rows),
                        tokenizer_name_or_path=tiny_model("roberta"), val_fraction=0.34)
    dm.setup()
    assert sorted(list(dm.datasets["train"]["labels"]) + list(dm.datasets["validation"]["labels"])) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_snli_no_gold_label_given_as_text_is_dropped_and_counted(tiny_model, tmp_path):
    """A label column that also holds names is read as text: "-1" there is still SNLI's "no gold label"."""
    rows = [{"premise": f"The cat is eating {i}.", "hypothesis": "A cat is eating.",
             "label": "-1" if i == 4 else ["entailment", "1", "contradiction"][i % 3]} for i in range(9)]
    dm = SNLIDataModule(source=write_jsonl(tmp_path / "named.jsonl", rows),
                        tokenizer_name_or_path=tiny_model("roberta"), val_fraction=0.25)
    dm.setup()
    assert dm.drop_counts["train"] + dm.drop_counts["validation"] == {"no gold label (-1)": 1}
    kept = list(dm.datasets["train"]["labels"]) + list(dm.datasets["validation"]["labels"])
    assert sorted(kept) == [0, 0, 0, 1, 1, 2, 2, 2]

    labels = ["neutral", "-1", "0", "2"] * 2  # names among numbers: pandas reads text
    lines = "".join(f"A dog runs ({i}).,A dog moves.,{label}\n" for i, label in enumerate(labels))
    (tmp_path / "snli.csv").write_text("premise,hypothesis,label\n" + lines)
    dm = SNLIDataModule(source=str(tmp_path / "snli.csv"), tokenizer_name_or_path=tiny_model("roberta"),
                        val_fraction=0.25)
    dm.setup()
    assert dm.drop_counts["train"] + dm.drop_counts["validation"] == {"no gold label (-1)": 2}


def test_multinli_matched_and_mismatched_are_separate_eval_sets(tiny_model):
    dm = MultiNLIDataModule(tokenizer_name_or_path=tiny_model("roberta"), batch_size=8)
    dm.setup()
    assert dm.eval_names == ["matched", "mismatched"]
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    assert len(dm.datasets["matched"]) == len(rows_of("multinli_validation_matched.jsonl"))
    assert len(dm.datasets["mismatched"]) == len(rows_of("multinli_validation_mismatched.jsonl"))
    genres = {r["genre"] for r in rows_of("multinli_validation_matched.jsonl")}
    assert genres.isdisjoint(r["genre"] for r in rows_of("multinli_validation_mismatched.jsonl"))
    batch = next(iter(loaders[1]))
    assert batch["input_ids"].shape[0] == batch["labels"].shape[0] == 8


def test_pair_truncation_shortens_the_longer_side(tiny_model, tmp_path):
    long_premise = " ".join(["The old knight is laughing in the forest."] * 10)
    rows = [{"premise": long_premise, "hypothesis": "The knight is not laughing.", "label": 2}] * 4
    dm = SNLIDataModule(source=write_jsonl(tmp_path / "long.jsonl", rows), tokenizer_name_or_path=tiny_model("roberta"),
                        max_length=24, val_fraction=0.5)
    dm.setup()
    ids = list(dm.datasets["train"][0]["input_ids"])
    assert len(ids) == 24
    hypothesis = dm.tokenizer("The knight is not laughing.", add_special_tokens=False)["input_ids"]
    assert ids[-len(hypothesis) - 1:-1] == hypothesis  # the short hypothesis survives whole
    assert dm.truncated_counts == {"train": 2, "validation": 2}  # cut rows are counted, not hidden


def test_bundled_validation_rows_never_repeat_training_rows():
    for train, evals in (("multinli_train.jsonl", ["multinli_validation_matched.jsonl",
                                                   "multinli_validation_mismatched.jsonl"]),
                         ("snli_train.jsonl", ["snli_validation.jsonl"])):
        seen = {(r["premise"], r["hypothesis"]) for r in rows_of(train)}
        for name in evals:
            assert seen.isdisjoint((r["premise"], r["hypothesis"]) for r in rows_of(name))


def test_the_truncation_count_says_what_each_datamodule_shortens():
    """A classifier pair loses its longer sentence; a label-word row (prompt → label word) is SFT-cut."""
    from lit_lora.data.nli import MultiNLIDataModule, SNLIDataModule
    from lit_lora.data.nli_prompts import MultiNLILabelWordDataModule, SNLILabelWordDataModule

    for pair in (SNLIDataModule, MultiNLIDataModule):
        assert pair.truncation == "the longer of premise and hypothesis shortened", pair
    for label_word in (SNLILabelWordDataModule, MultiNLILabelWordDataModule):
        assert label_word.truncation == "response shortened", label_word


@pytest.mark.parametrize("settings, message", [
    ({"val_fraction": 0.0}, "val_fraction must be between 0 and 1 (both excluded), got 0.0"),
    ({"val_fraction": 1.0}, "val_fraction must be between 0 and 1 (both excluded), got 1.0"),
    ({"val_fraction": 0.9}, "val_fraction 0.9 of 5 rows leaves train or validation empty"),
    ({"max_samples": 1}, "1 row(s) cannot be split into train and validation"),
])
def test_an_nli_split_that_cannot_be_made_is_one_input_error(tiny_model, tmp_path, settings, message):
    """NLI datamodules split their own validation rows as every datamodule does, with the same checks
    (datasets' own ``test_size`` error was a traceback)."""
    from lit_lora.commands import input_error_types

    rows = [{"premise": f"A man sleeps {i}.", "hypothesis": "A man sleeps.", "label": i % 3} for i in range(5)]
    dm = SNLIDataModule(source=write_jsonl(tmp_path / "five.jsonl", rows),
                        tokenizer_name_or_path=tiny_model("roberta"), **settings)
    with pytest.raises(input_error_types()) as error:
        dm.setup()
    assert message in str(error.value)


def test_a_validation_split_of_a_local_file_is_refused(tiny_model, tmp_path):
    """``validation_split`` names a hub split; of a local file (read whole) it validated on the training rows."""
    from harness import setup_error

    from lit_lora.errors import IncompatibleConfig

    rows = [{"premise": f"A man walks {i}.", "hypothesis": "He moves.", "label": i % 3} for i in range(8)]
    source = write_jsonl(tmp_path / "nli.jsonl", rows)
    dm = SNLIDataModule(source=source, validation_split="validation", tokenizer_name_or_path=tiny_model("roberta"))
    assert setup_error(dm, IncompatibleConfig).startswith(
        f"data.init_args.validation_split: 'validation' names a split of a hub dataset, but {source} is a local file")


def test_special_token_text_in_a_sentence_stays_text(tiny_model, tmp_path):
    """A premise that writes ``</s>`` holds no extra separator: the pair keeps the tokenizer's own special tokens."""
    rows = [{"premise": f"The page ends with </s> {i}.", "hypothesis": "A <s> tag.", "label": i % 3} for i in range(4)]
    dm = SNLIDataModule(source=write_jsonl(tmp_path / "tags.jsonl", rows), tokenizer_name_or_path=tiny_model("roberta"),
                        val_fraction=0.5)
    dm.setup()
    plain = dm.tokenizer("The page ends with 0.", "A tag.")["input_ids"]
    specials = set(dm.tokenizer.all_special_ids)
    for ids in list(dm.datasets["train"]["input_ids"]) + list(dm.datasets["validation"]["input_ids"]):
        assert [t for t in ids if t in specials] == [t for t in plain if t in specials]
