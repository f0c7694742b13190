"""``lit-lora estimate``: registry shapes, peft-equal parameter counts on the meta device, memory parts, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_lora.architectures import REGISTRY, UnknownArchitectureError, load_config, lookup, meta_model
from lit_lora.memory import Shape, activation_bytes, optimizer_state_bytes, quant_constant_bytes, tensor_bytes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GEMMA_CONFIG = CONFIGS / "code" / "gemma2b_qlora_python_codes.yaml"


@pytest.mark.parametrize("model_id", sorted(REGISTRY))
def test_registry_builds_the_published_parameter_count(model_id):
    arch = REGISTRY[model_id]
    model = meta_model(arch.config(), arch.head)
    assert all(p.device.type == "meta" for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / arch.published_params - 1) < 0.01, f"{model_id}: {total:,} vs {arch.published_params:,.0f}"


@pytest.mark.parametrize("model_id", sorted(REGISTRY))
def test_registry_kwargs_are_fields_of_the_config_class(model_id):
    arch = REGISTRY[model_id]
    known = set(arch.config_class().to_dict())
    assert set(arch.kwargs) - known == set()  # a misspelt key would be silently accepted by transformers


def test_lookup_accepts_aliases_and_case():
    assert lookup("roberta-large") is REGISTRY["FacebookAI/roberta-large"]
    assert lookup("Google/Gemma-2B") is REGISTRY["google/gemma-2b"]
    assert lookup("someone/unknown") is None


def test_every_shipped_config_names_a_model_estimate_builds_offline():
    """``lit-lora estimate && sbatch`` on a login node without the hub: a hub id in a shipped config that the
    registry lacks waited ~30 s of hub retries, then stopped (the CodeT5-small tutorial did)."""
    import yaml

    named = {path.relative_to(CONFIGS): yaml.safe_load(path.read_text())["model"]["init_args"]["model_name_or_path"]
             for path in CONFIGS.rglob("*.yaml")
             if "model_name_or_path" in ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("init_args", {})}
    hub_ids = {path: name for path, name in named.items() if not name.startswith(("/", "lit_lora/"))}
    assert len(hub_ids) >= 8
    assert [f"{path}: {name}" for path, name in hub_ids.items() if lookup(name) is None] == []


def test_unknown_model_without_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownArchitectureError) as err:
        load_config("some-lab/not-a-registered-model")
    message = str(err.value)
    assert "some-lab/not-a-registered-model" in message
    assert "google/gemma-2b" in message and "microsoft/phi-2" in message


def estimate_for(config: Path | str, *overrides: str):
    from lit_lora.commands.experiment import model_of
    from lit_lora.commands.experiment import parse_experiment as parse_config
    from lit_lora.estimate import build

    cfg = parse_config(["--config", str(config), *overrides])
    module = model_of(cfg)
    return cfg, module, build(module)


def test_trainable_count_equals_peft_on_the_full_size_meta_model():
    from peft import LoraConfig, get_peft_model

    _, module, built = estimate_for(GEMMA_CONFIG)
    arch = REGISTRY["google/gemma-2b"]
    reference = get_peft_model(meta_model(arch.config(), "causal"),
                               LoraConfig(r=module.adapter.r, lora_alpha=module.adapter.alpha,
                                          target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable, total = reference.get_nb_trainable_parameters()
    assert (built.trainable, built.total) == (trainable, total)
    # every linear layer of the 18 blocks carries r x (in + out) LoRA weights, nothing else trains
    linears = [m for n, m in reference.get_base_model().named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n and n.endswith("base_layer")]
    assert len(linears) == 18 * 7
    assert trainable == sum(module.adapter.r * (m.in_features + m.out_features) for m in linears)


def test_4bit_counts_and_storage_match_a_real_quantized_load(tiny_model):
    """Meta-device quantization stores and counts exactly what bitsandbytes does on a real load."""
    from lit_lora.adapters import QLoRA, count_parameters
    from lit_lora.models import CausalLMModule

    path = tiny_model("gemma")
    adapter = dict(r=4, alpha=8, target_modules="all-linear", compute_dtype="float32")
    real = CausalLMModule(path, adapter=QLoRA(**adapter))
    real.configure_model()
    _, _, built = estimate_for(GEMMA_CONFIG, "--model.init_args.model_name_or_path", path,
                               "--model.init_args.adapter.init_args.compute_dtype", "float32",
                               "--model.init_args.adapter.init_args.r", "4",
                               "--model.init_args.adapter.init_args.alpha", "8")
    assert (built.trainable, built.total) == real.model.get_nb_trainable_parameters()
    assert (built.trainable, built.total) == count_parameters(real.model)
    real_bytes = {n: tensor_bytes(p) for n, p in real.model.named_parameters()}
    meta_bytes = {n: tensor_bytes(p) for n, p in built.model.named_parameters()}
    assert meta_bytes == real_bytes


@pytest.mark.parametrize("name", ["adamw", "adamw_8bit", "paged_adamw_8bit"])
def test_optimizer_state_bytes_match_the_real_optimizer(name):
    from lit_lora.optim import optimizer_class

    params = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(100))]  # 8192 / 100 values
    optimizer = optimizer_class(name)(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    real = sum(tensor_bytes(v) for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v) and v.numel() > 1)  # moments, absmax and maps; not the step counter
    assert optimizer_state_bytes(params, name) == real


def test_quant_constants_and_activation_formulas_move_the_right_way():
    n = 4096 * 4096
    # one fp32 absmax per 64 values, plus the layer's 16-entry fp32 code table
    single = quant_constant_bytes(n, 4, double_quant=False)
    assert quant_constant_bytes(n, 4, double_quant=True) < single == n // 16 + 64
    assert quant_constant_bytes([n, n], 4, double_quant=True) == 2 * quant_constant_bytes(n, 4, double_quant=True)
    shape = Shape.from_config(REGISTRY["meta-llama/Meta-Llama-3-8B-Instruct"].config(), gated_mlp=True)
    assert (shape.kv_dim, shape.q_dim, shape.layers) == (1024, 4096, 32)
    full = activation_bytes(shape, 4, 512, 2, checkpointing=False)
    ckpt = activation_bytes(shape, 4, 512, 2, checkpointing=True)
    assert ckpt["layers"] < full["layers"] / 5 and ckpt["logits"] == full["logits"]
    assert activation_bytes(shape, 8, 512, 2, checkpointing=False)["layers"] == 2 * full["layers"]
    eager = activation_bytes(shape, 4, 512, 2, checkpointing=False, eager_attention=True)
    assert eager["layers"] - full["layers"] == 32 * 2 * 4 * 32 * 512 * 512 * 2
    falcon = Shape.from_config(REGISTRY["tiiuae/falcon-7b"].config(), gated_mlp=False)
    assert (falcon.kv_dim, falcon.intermediate) == (64, 4 * 4544)  # multi-query attention, 4h MLP


def test_cli_prints_counts_memory_and_fit(capsys):
    from lit_lora.commands import main

    _, _, built = estimate_for(GEMMA_CONFIG)
    main(["estimate", "--config", str(GEMMA_CONFIG), "--gpu_memory_gib", "24"])
    out = capsys.readouterr().out
    assert f"trainable params: {built.trainable:,} || all params: {built.total:,}" in out
    assert "GemmaForCausalLM" in out and "quant constants" in out and "activations/logits" in out
    assert "fits in 24 GiB: yes" in out
    with pytest.raises(SystemExit) as exit_status:  # exit status 1: `estimate … && sbatch …` queues what fits
        main(["estimate", "--config", str(GEMMA_CONFIG), "--gpu_memory_gib", "4"])
    assert exit_status.value.code == 1
    said = capsys.readouterr()
    assert "fits in 4 GiB: no" in said.out and "exceeds --gpu_memory_gib 4: exit status 1" in said.err


def test_classifier_counts_take_labels_from_the_datamodule_and_train_the_head():
    """RoBERTa-large LoRA for MultiNLI: 3 labels from the datamodule class, the head in modules_to_save."""
    from peft import LoraConfig, get_peft_model

    from lit_lora.commands.experiment import model_of
    from lit_lora.commands.experiment import parse_experiment as parse_config
    from lit_lora.estimate import build
    from lit_lora.models.from_config import module_from_config

    config_path = Path(__file__).resolve().parents[1] / "configs" / "nli" / "roberta_large_lora_multinli.yaml"
    cfg = parse_config(["--config", str(config_path)])
    assert module_from_config(cfg.model).label_names is None  # linked from the datamodule at instantiation by the CLI
    module = model_of(cfg)
    built = build(module)
    assert module.label_names == ["entailment", "neutral", "contradiction"] and module.head_modules == ["classifier"]
    config = REGISTRY["FacebookAI/roberta-large"].config()
    config.num_labels = 3
    reference = get_peft_model(meta_model(config, "sequence_classification"),
                               LoraConfig(r=8, lora_alpha=0.5, target_modules=["query", "dense"],
                                          modules_to_save=["classifier"], task_type="SEQ_CLS"))
    assert (built.trainable, built.total) == reference.get_nb_trainable_parameters()
    head = sum(p.numel() for p in reference.base_model.model.classifier.modules_to_save.parameters())
    assert head == 1024 * 1024 + 1024 + 1024 * 3 + 3 and built.trainable > head


def test_a_config_that_trains_nothing_is_estimated_as_inference(capsys):
    from lit_lora.commands import main

    config = Path(__file__).resolve().parents[1] / "configs" / "nli" / "llama3_8b_incontext_multinli.yaml"
    main(["estimate", "--config", str(config)])
    out = capsys.readouterr().out
    assert "trainable params: 0 ||" in out
    assert "activations/kv_cache" in out  # a forward pass with a KV cache, not stored backward activations
    assert "gradients              0.00 GiB" in out and "optimizer state        0.00 GiB" in out
    # its batch is the largest generate call lit-lora incontext makes, not data.batch_size: generation_batch_size
    # (64) rows within generation_batch_tokens (16384 slots) of 512-token prompts + max_new_tokens (10)
    rows = 16384 // (512 + 10)
    assert f"batch {rows} (the largest generate call) per device, every row padded to 522 tokens" in out
    kv_gib = 2 * 32 * rows * 522 * 1024 * 2 / 2**30  # Llama-3-8B: 32 layers, 8 KV heads x 128, bf16
    assert f"activations/kv_cache   {kv_gib:.2f} GiB" in out
    assert "the last position's logits (generate)" in out


def test_logits_are_counted_as_the_label_only_head_keeps_them():
    """A causal LM trains with the label-only chunked head by default: the estimate counts its gathered rows, their
    gradient and one chunk of float32 logits, not ``[tokens, vocab]`` logits (Gemma's 256k vocabulary: 5 GiB of them
    at 4 x 1024 tokens); ``label_only_loss: false`` and a seq2seq model count the full logits."""
    from lit_lora.estimate import memory_estimate
    from lit_lora.memory import label_only_head_bytes
    from lit_lora.models.label_only_loss import default_chunk_size

    def logits_part(config, *overrides):
        cfg, module, built = estimate_for(config, *overrides)
        estimate, assumptions = memory_estimate(built, module, cfg, 4, 1024, 256, 1.0)
        return estimate.activations["logits"], assumptions, Shape.from_config(built.config, gated_mlp=True)

    chunked, assumptions, shape = logits_part(GEMMA_CONFIG)
    value_bytes = assumptions["activation_bytes"]
    assert chunked == label_only_head_bytes(shape, 4 * 1024, value_bytes, default_chunk_size(shape.vocab))
    assert assumptions["lm_head"].startswith("label-only LM head")
    full, assumptions, _ = logits_part(GEMMA_CONFIG, "--model.init_args.label_only_loss", "false")
    assert full == 4 * 1024 * shape.vocab * (value_bytes + 8) and assumptions["lm_head"] == "full logits"
    assert chunked < full / 10
    _, assumptions, _ = logits_part(CONFIGS / "code" / "codet5_base_lora_python_codes.yaml")
    assert assumptions["lm_head"] == "full logits"  # Seq2SeqModule: the full-logits loss


def test_activations_assume_the_checkpointing_the_run_would_use(capsys):
    """QLoRA checkpoints by default; ``model.init_args.gradient_checkpointing false`` turns it off in the run,
    and the estimate's activations grow to match."""
    from lit_lora.commands import main

    main(["estimate", "--config", str(GEMMA_CONFIG)])
    default = capsys.readouterr().out
    main(["estimate", "--config", str(GEMMA_CONFIG), "--model.init_args.gradient_checkpointing", "false"])
    off = capsys.readouterr().out
    assert "gradient checkpointing on" in default and "gradient checkpointing off" in off

    def layers_gib(report: str) -> float:
        return float(next(line for line in report.splitlines() if "activations/layers" in line).split()[1])

    assert layers_gib(off) > 2 * layers_gib(default)


def test_a_varlen_kernel_is_counted_with_keys_and_values_at_their_own_heads():
    """``torch_varlen`` on packed rows in half precision keeps k and v at the key-value heads
    (``tests/test_activation_memory.py`` measures it), where SDPA with a mask repeats them to the query heads:
    Gemma-2B's one key-value head makes that 2 x (2048 - 256) values a token and layer fewer. Unpacked, or with
    float32 activations (the demo's LoRA), torch_varlen is sdpa and is counted as sdpa; a token budget sets the
    packed batch's sequences."""
    from lit_lora.estimate import data_settings, memory_estimate

    def estimate(config: Path, attention: str, *overrides: str):
        cfg, module, built = estimate_for(config, "--model.init_args.attn_implementation", attention,
                                          "--model.init_args.gradient_checkpointing", "false", *overrides)
        return memory_estimate(built, module, cfg, 2, 1024, 1024, 1.0), built.config

    packed = ("--data.init_args.packing", "true")
    (varlen, said), config = estimate(GEMMA_CONFIG, "torch_varlen", *packed)
    (sdpa, said_sdpa), _ = estimate(GEMMA_CONFIG, "sdpa", *packed)
    assert said["attention"] == "torch_varlen's varlen kernel (k/v at their own heads)"
    assert said_sdpa["attention"].startswith("SDPA (k/v repeated")
    q_dim, kv_dim = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    fewer = config.num_hidden_layers * 2 * 1024 * 2 * (q_dim - kv_dim) * said["activation_bytes"]
    assert sdpa.activations["layers"] - varlen.activations["layers"] == fewer > 0
    for config, overrides in ((GEMMA_CONFIG, ()), (CONFIGS / "demo.yaml", packed)):
        (_, said_other), _ = estimate(config, "torch_varlen", *overrides)
        assert said_other["attention"] == said_sdpa["attention"], (config, overrides)
    (_, said_bf16), _ = estimate(CONFIGS / "demo.yaml", "torch_varlen", *packed, "--trainer.precision", "bf16-mixed")
    assert said_bf16["attention"] == said["attention"]

    cfg, _, _ = estimate_for(GEMMA_CONFIG, *packed, "--data.init_args.max_tokens_per_batch", "16384",
                             "--data.init_args.max_length", "2048")
    assert data_settings(cfg)["batch_size"] == 8


def test_a_module_of_a_head_estimate_cannot_build_is_an_input_error():
    """The command prints an ``InputError`` as one line; a plain ValueError was a traceback."""
    from types import SimpleNamespace

    from transformers import AutoModelForTokenClassification

    from lit_lora.errors import InputError
    from lit_lora.estimate import head_of

    with pytest.raises(InputError, match="model.class_path: SimpleNamespace loads AutoModelForTokenClassification; "
                                         "estimate builds the heads causal, seq2seq, masked"):
        head_of(SimpleNamespace(auto_model_class=AutoModelForTokenClassification))
