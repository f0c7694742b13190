"""Batched generation equals one-by-one generation; k-shot prompts never hold the evaluated example."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from lit_lora.compatibility import IncompatibleConfig
from lit_lora.data import CounsellingDataModule, DS1000DataModule, InstructionDataModule
from lit_lora.evaluation.generation import GenerationSettings, generate_texts
from lit_lora.evaluation.incontext import build_prompts
from lit_lora.evaluation.overlap import TrainOverlapError, check_overlap

PROMPTS = ["Sort the list using Python.", "Write a Python function that returns the sum of a and b.",
           "I feel anxious at work. I can't sleep.", "Problem:\nHow do I get the sum of the array a?"]


def load(path, seq2seq):
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(path)
    return model, tokenizer


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_batched_greedy_equals_unbatched(tiny_model, arch):
    torch.manual_seed(0)
    model, tokenizer = load(tiny_model(arch), seq2seq=arch == "t5")
    settings = GenerationSettings(max_new_tokens=12)
    batched = generate_texts(model, tokenizer, PROMPTS, settings, encoder_decoder=arch == "t5")
    single = [generate_texts(model, tokenizer, [p], settings, encoder_decoder=arch == "t5")[0] for p in PROMPTS]
    assert batched == single
    assert any(out.text for out in batched)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_a_prompt_learning_adapter_is_never_given_padding(tiny_model, method):
    """peft ignores position_ids under prompt learning: a left-padded prompt would be read from shifted
    positions. Batches then hold equal-length prompts only, and answers and label likelihoods equal
    the one-at-a-time ones."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from lit_lora.evaluation.generation import drops_position_ids
    from lit_lora.evaluation.likelihood import candidate_log_likelihoods

    torch.manual_seed(0)
    base, tokenizer = load(tiny_model("llama"), seq2seq=False)
    config = (PromptTuningConfig if method == "prompt_tuning" else PrefixTuningConfig)(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    model = get_peft_model(base, config)
    assert drops_position_ids(model) and not drops_position_ids(base)
    prompts = PROMPTS + ["Sort the list using Rust."]  # two prompts of one length share a batch
    settings = GenerationSettings(max_new_tokens=8)
    batched = generate_texts(model, tokenizer, prompts, settings)
    single = [generate_texts(model, tokenizer, [p], settings)[0] for p in prompts]
    assert batched == single

    words = ["entailment", "neutral", "contradiction"]
    together = candidate_log_likelihoods(model, tokenizer, prompts, words)
    alone = torch.cat([candidate_log_likelihoods(model, tokenizer, [p], words) for p in prompts])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_sampling_is_seeded(tiny_model):
    model, tokenizer = load(tiny_model("llama"), seq2seq=False)
    settings = GenerationSettings(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, top_k=20, seed=3)
    first = generate_texts(model, tokenizer, PROMPTS, settings)
    assert first == generate_texts(model, tokenizer, PROMPTS, settings)
    greedy = generate_texts(model, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=10))
    assert first != greedy


@pytest.mark.parametrize("eos_bias", [-1e4, 1e4])
def test_an_encoder_decoder_starting_with_eos_flags_its_cut_off_answers(tiny_model, eos_bias):
    """BART / mBART start decoding with ``</s>``, their EOS: that start token is no answer token, so an answer
    that never emits EOS is flagged ``hit_limit`` (it read as ended), and one that ends at once is not."""
    from transformers import BartConfig, BartForConditionalGeneration

    _, tokenizer = load(tiny_model("t5"), seq2seq=True)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                        bos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=None)
    model = BartForConditionalGeneration(config).eval()
    model.final_logits_bias[0, eos] = eos_bias  # -1e4: EOS never wins, every answer runs to max_new_tokens
    outs = generate_texts(model, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=3), encoder_decoder=True)
    assert [out.hit_limit for out in outs] == [eos_bias < 0] * len(PROMPTS)


def test_generation_stops_at_the_models_own_end_of_turn_token(tiny_model):
    """An instruct model's ``generation_config`` lists its end-of-turn token beside EOS (Llama-3, Gemma-it):
    the answer stops there, as ``model.generate`` alone stops, and is not counted as cut off."""
    model, tokenizer = load(tiny_model("llama"), seq2seq=False)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    end_of_turn = int(model.generate(**ids, max_new_tokens=2, do_sample=False)[0, -1])  # greedy's second token
    assert end_of_turn != tokenizer.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    own = model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1]:]
    out = generate_texts(model, tokenizer, [PROMPTS[0]], GenerationSettings(max_new_tokens=8))[0]
    assert out == (tokenizer.decode(own, skip_special_tokens=True).strip(), False)


@pytest.mark.parametrize("datamodule", [InstructionDataModule, CounsellingDataModule, DS1000DataModule])
@pytest.mark.parametrize("k", [0, 3])
def test_kshot_prompts_never_contain_the_evaluated_example(tiny_model, datamodule, k):
    dm = datamodule(tokenizer_name_or_path=tiny_model("llama"), template="plain", max_eval_samples=15)
    records = build_prompts(dm, k, seed=1)
    raw = dm.load_raw_splits()
    train_pairs = [dm.format_example(r) for r in raw["train"]]
    assert len(records) == 15
    for record in records:
        assert len(record["demos"]) == k
        demos_text = record["prompt"][: -len(record["query"])]
        assert record["query"] not in demos_text
        for j in record["demos"]:
            assert train_pairs[j][0] in demos_text  # demonstrations come from the training split
            assert train_pairs[j][0].split() != record["query"].split()
    if k:
        assert len({tuple(r["demos"]) for r in records}) > 1  # drawn per row, not one fixed set


def test_kshot_excludes_a_training_duplicate_of_the_evaluated_row(tmp_path, tiny_model):
    rows = [{"Context": f"I feel sad case {i}.", "Response": f"Answer {i}."} for i in range(6)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = CounsellingDataModule(source=str(train), validation_source=str(train), tokenizer_name_or_path=tiny_model("llama"),
                               template="plain")
    for record in build_prompts(dm, 5, seed=0):
        assert record["query"] not in record["prompt"][: -len(record["query"])]
    with pytest.raises(ValueError, match="6-shot needs 6"):
        build_prompts(dm, 6, seed=0)


def test_overlap_check_names_the_row_and_the_switch():
    with pytest.raises(TrainOverlapError, match=r"1 of 2 evaluated rows.*row 1.*allow_train_overlap"):
        check_overlap(["Sort  the list", "b"], ["new", "sort the LIST"], allow=False, where="x.jsonl")
    assert check_overlap(["a"], ["A ", "c"], allow=True, where="x").count == 1


def test_ds1000_filters_libraries_and_groups_rows(tiny_model, tmp_path):
    dm = DS1000DataModule(tokenizer_name_or_path=tiny_model("llama"), libraries=["numpy", "Scipy"])
    dm.setup("fit")
    groups = set(dm.datasets["train"]["group"]) | set(dm.datasets["validation"]["group"])
    assert groups == {"Numpy", "Scipy"}
    with pytest.raises(IncompatibleConfig, match="data.init_args.libraries: .*Keras"):  # one line, no traceback
        DS1000DataModule(tokenizer_name_or_path=tiny_model("llama"), libraries=["Keras"]).setup("fit")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "reference_code": "c", "metadata": {"library": "Numpy"}}) + "\n"
                   + json.dumps({"prompt": "p2", "reference_code": "c", "metadata": {}}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl \(train\): data row 1 \(0-based; line 2\), field 'metadata'"):
        DS1000DataModule(source=str(bad), tokenizer_name_or_path=tiny_model("llama")).setup("fit")


def test_each_group_of_rows_gets_a_console_line_with_its_headline_metrics():
    """``lit-lora test`` on DS-1000 prints a line per library (every metric stays in metrics.json)."""
    from lit_lora.console import group_lines

    lines = group_lines({"Numpy": {"rows": 3, "bleu": 0.25, "rougeL_fmeasure": 0.5, "loss": 1.0}, "Pandas": {"rows": 1}})
    assert lines == ["  by group (2, all metrics in details.per_group):",
                     "    Numpy (3 rows): bleu 0.25, rougeL_fmeasure 0.5", "    Pandas (1 row)"]
    assert group_lines({}) == []


@pytest.mark.parametrize("template", ["plain", "alpaca"])
def test_a_prompt_holding_special_token_text_is_generated_from_as_it_was_trained(template, tiny_model, tmp_path,
                                                                              monkeypatch):
    """``"</s>"`` written in an instruction is text in the training row (``split_special_tokens``); tokenised as the
    data contract says (what the answer queue passes), the prompt reaches ``generate`` as the same ids, not with an
    EOS in its middle."""
    from lit_lora.data.collators import IGNORE_INDEX

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Strip the </s> and <s> tags, case {i}.", "input": "",
                                        "output": "x = 1"}) + "\n" for i in range(4)))
    dm = InstructionDataModule(source=str(rows), tokenizer_name_or_path=tiny_model("llama"), template=template,
                               val_fraction=0.25)
    dm.setup("fit")
    contract, trained = dm.contract(), dm.datasets["train"][0]
    prompt_ids = trained["input_ids"][:trained["labels"].count(IGNORE_INDEX)]  # the prompt's labels are ignored
    assert contract.tokenizer.eos_token_id not in prompt_ids  # the "</s>" of the instruction stayed text
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).eval()
    seen, real = [], model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: (seen.append(kw["input_ids"][0].tolist()), real(**kw))[1])
    generate_texts(model, contract.tokenizer, [trained["prompt"]], GenerationSettings(max_new_tokens=2),
                   add_special_tokens=contract.add_special_tokens, max_length=contract.max_length,
                   split_special_tokens=contract.prompt_is_row_text)
    assert seen == [prompt_ids]
