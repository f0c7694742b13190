"""Lightning's DeepSpeedStrategy, ZeRO-2 / ZeRO-3 × LoRA / QLoRA: a few steps of ``lit-lora fit``.

Each case runs the CLI in a subprocess (DeepSpeed sets up a process group and patches module
construction for ZeRO-3; a fresh process keeps the cases independent)::

    lit-lora fit --config configs/demo.yaml --config configs/strategies/deepspeed_zero3.yaml \
        --model.init_args.model_name_or_path <tiny llama> --trainer.max_steps 4 ...

on two kinds of device:

* ``cuda`` (marker ``gpu``): one GPU, the run a user makes;
* ``cpu``: two CPU ranks through ``tests/workers/cpu_as_cuda.py``, which lets Lightning's CUDA-only
  strategy drive DeepSpeed's CPU accelerator (gloo). Every line of lit-lora, Lightning and DeepSpeed
  between the YAML and the saved adapter is the one a GPU run takes; only the kernels differ.

Each checks that the loss is finite and goes down on a repeated batch, and that the adapter written
at the end (``<run dir>/adapter/adapter_model.safetensors``) is complete: every LoRA tensor of an
unsharded adapter of the same configuration is there, none is empty (an ungathered ZeRO-3 shard
would be), the shapes match, and plain ``peft.PeftModel.from_pretrained`` loads it. Under ZeRO-3 each
rank loads only its partition of a LoRA base and starts from ZeRO-2's first loss. A run resumed
from its step-2 DeepSpeed checkpoint repeats the losses of the whole run.
The argument lists themselves are checked by ``--print_config``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from harness import (CONFIGS, DEMO, WORKERS, assert_complete_lora_adapter, deepspeed_on_cpu_env, metrics_dir,
                     metrics_rows, read_losses, run_cli, run_cli_subprocess, validation_rows)

STEPS = 4
ROWS = 8  # training rows: one global batch, repeated every step
CASES = {  # id -> (strategy fragment, ZeRO stage, adapter arguments)
    "zero2-lora": ("deepspeed_zero2.yaml", 2, ["--model.init_args.adapter", "lit_lora.adapters.LoRA"]),
    "zero3-lora": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.LoRA"]),
    "zero2-qlora": ("deepspeed_zero2.yaml", 2, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                "--model.init_args.adapter.init_args.quant_storage", "bfloat16",
                                                "--model.init_args.adapter.init_args.compute_dtype", "bfloat16",
                                                "--model.init_args.dtype", "bfloat16"]),
    "zero3-qlora": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                "--model.init_args.adapter.init_args.quant_storage", "bfloat16",
                                                "--model.init_args.adapter.init_args.compute_dtype", "bfloat16",
                                                "--model.init_args.dtype", "bfloat16"]),
    "zero3-qlora-uint8-storage": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                              "--model.init_args.dtype", "float32"]),
    "zero3-qlora8": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                 "--model.init_args.adapter.init_args.bits", "8",
                                                 "--model.init_args.dtype", "bfloat16"]),
}
DEVICES = {"cpu": 2, "cuda": 1}  # device -> ranks
ON = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]
REFERENCE_LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}  # LORA below, as LoRA()'s
LORA = ["--model.init_args.adapter.init_args.r", "8", "--model.init_args.adapter.init_args.alpha", "16",
        "--model.init_args.adapter.init_args.dropout", "0.0",
        "--model.init_args.adapter.init_args.target_modules", "all-linear"]


def fit_args(case: str, model_dir: str, root: Path, device: str = "cuda") -> list[str]:
    """``lit-lora fit`` arguments: one global batch of ``ROWS`` rows repeated for ``STEPS`` steps, a flat
    learning rate, and a validation (loss and generated answers, every rank's rows gathered) each step."""
    strategy, _, adapter = CASES[case]
    ranks = DEVICES[device]
    return [
        "fit", "--config", DEMO, "--config", str(CONFIGS / "strategies" / strategy),
        "--model.init_args.model_name_or_path", model_dir, *adapter, *LORA,
        "--model.init_args.optim.lr", "1e-2", "--model.init_args.optim.warmup_steps", "0",
        "--model.init_args.optim.scheduler", "constant",
        "--model.init_args.evaluation.during_validation", "true", "--model.init_args.evaluation.max_new_tokens", "8",
        "--data.init_args.max_samples", str(ROWS + 2), "--data.init_args.val_fraction", "0.2",
        "--data.init_args.batch_size", str(ROWS // ranks), "--data.init_args.max_length", "256",
        "--trainer.devices", str(ranks), "--trainer.max_steps", str(STEPS), "--trainer.log_every_n_steps", "1",
        "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), "--baseline.enabled", "false",
    ]


def run_lit_lora(*args: str, cwd: Path, device: str, torch_extensions_dir: str) -> subprocess.CompletedProcess:
    """``lit-lora <args>`` in a fresh process; on ``cpu`` through ``tests/workers/cpu_as_cuda.py``."""
    if device == "cuda":
        return run_cli_subprocess(args, via="module", cwd=cwd)
    return run_cli_subprocess(args, via="cpu_as_cuda", cwd=cwd, env=deepspeed_on_cpu_env(torch_extensions_dir))


@pytest.fixture
def lit_lora(torch_extensions_dir):
    """``lit_lora(*args, cwd=…, device=…)``: ``run_lit_lora`` with this session's DeepSpeed op build dir."""
    return lambda *args, cwd, device: run_lit_lora(*args, cwd=cwd, device=device,
                                                   torch_extensions_dir=torch_extensions_dir)


@pytest.mark.parametrize("device", sorted(DEVICES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_arguments_parse_into_the_intended_strategy(case, device, tiny_model, tmp_path, capsys):
    """The cases' arguments are valid CLI input and select the ZeRO stage, ranks and 4-bit storage meant."""
    with pytest.raises(SystemExit) as exit_:
        run_cli([*fit_args(case, tiny_model("llama"), tmp_path, device), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed[printed.index("# lightning.pytorch"):])
    _, stage, adapter_args = CASES[case]
    assert config["trainer"]["strategy"]["init_args"]["stage"] == stage
    assert config["trainer"]["accelerator"] == "gpu" and config["trainer"]["max_steps"] == STEPS
    assert int(config["trainer"]["devices"]) * config["data"]["init_args"]["batch_size"] == ROWS
    adapter = config["model"]["init_args"]["adapter"]
    if "qlora" in case:
        given = dict(zip(adapter_args[::2], adapter_args[1::2]))
        assert adapter["class_path"].endswith("QLoRA")
        assert adapter["init_args"]["quant_storage"] == given.get("--model.init_args.adapter.init_args.quant_storage")
        assert adapter["init_args"]["bits"] == int(given.get("--model.init_args.adapter.init_args.bits", 4))
    else:
        assert adapter["class_path"].endswith(".LoRA")


def train_losses(run_dir: Path) -> list[float]:
    return [loss for _, loss in sorted(read_losses(run_dir).items())]


@pytest.fixture(scope="module")
def fitted(tiny_model, torch_extensions_dir, tmp_path_factory):
    """``fitted(case, device)`` -> (run dir, stderr) of a finished ``lit-lora fit``, each run once per module."""
    runs: dict = {}

    def get(case: str, device: str) -> tuple[Path, str]:
        if (case, device) not in runs:
            cwd = tmp_path_factory.mktemp(f"{case}-{device}")
            result = run_lit_lora(*fit_args(case, tiny_model("llama"), cwd / "run", device), cwd=cwd, device=device,
                                  torch_extensions_dir=torch_extensions_dir)
            runs[case, device] = (metrics_dir(cwd / "run"), result.stderr)
        return runs[case, device]

    return get


@pytest.mark.parametrize("device", ON)
@pytest.mark.parametrize("case", sorted(CASES))
def test_deepspeed_fit_saves_a_complete_adapter(case, device, tiny_model, fitted, tmp_path):
    model_dir = tiny_model("llama")
    run_dir, _ = fitted(case, device)
    losses = train_losses(run_dir)
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses  # the same rows every step: training must lower the loss
    validations = validation_rows(run_dir)
    assert len(validations) == STEPS and all(math.isfinite(r["val_loss"]) for r in validations), validations
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2, predictions  # both validation rows, generated on different ranks on cpu
    assert_complete_lora_adapter(run_dir / "adapter", model_dir, tmp_path / "reference", REFERENCE_LORA)


PARTITION_LINE = re.compile(r"ZeRO-3: rank (\d+) loaded ([\d,]+) of ([\d,]+) base weights")


@pytest.mark.parametrize("device", ON)
@pytest.mark.parametrize("case", ["zero3-lora", "zero3-qlora"])
def test_zero3_loads_the_base_into_partitions_unless_quantized(case, device, fitted):
    """Under ZeRO-3 each rank loads only its partition of the base (the 4-bit base is loaded whole:
    bitsandbytes quantizes whole weights), and the partitioned model starts exactly where the whole
    one does: the first loss equals ZeRO-2's, whose ranks hold the whole model."""
    run_dir, stderr = fitted(case, device)
    shares = {int(r): (int(held.replace(",", "")), int(total.replace(",", "")))
              for r, held, total in PARTITION_LINE.findall(stderr)}
    if "qlora" in case:
        assert shares == {}, shares
        return
    ranks = DEVICES[device]
    assert sorted(shares) == list(range(ranks)), stderr[-3000:]
    for held, total in shares.values():
        assert total > 0 and total / ranks <= held < total / ranks + 1000, (held, total)  # 1/N, plus padding
    whole_run_dir, _ = fitted(case.replace("zero3", "zero2"), device)
    assert train_losses(run_dir)[0] == pytest.approx(train_losses(whole_run_dir)[0], rel=1e-6)


@pytest.mark.parametrize("device", ON)
@pytest.mark.parametrize("case", ["zero2-qlora", "zero3-lora"])
def test_deepspeed_checkpoint_resumes_to_the_losses_of_the_whole_run(case, device, tiny_model, lit_lora, tmp_path):
    """A run resumed (``--ckpt_path``) from its step-2 DeepSpeed checkpoint repeats steps 3-4 exactly.

    The checkpoint holds no frozen weights (``exclude_frozen_parameters``) and DeepSpeed hands Lightning
    a client state without ``state_dict``: lit-lora's resume check must accept it.
    """
    model_dir = tiny_model("llama")
    every = ["--checkpoint.dirpath", str(tmp_path / "checkpoints"), "--checkpoint.filename", "{step}",
             "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1"]
    lit_lora(*fit_args(case, model_dir, tmp_path / "whole", device), *every, cwd=tmp_path, device=device)
    whole = read_losses(metrics_dir(tmp_path / "whole"))
    checkpoint = tmp_path / "checkpoints" / "step=2.ckpt"
    assert (checkpoint / "latest").is_file() and not list(tmp_path.glob("checkpoints/.partial-*"))

    lit_lora(*fit_args(case, model_dir, tmp_path / "resumed", device), "--ckpt_path", str(checkpoint),
             cwd=tmp_path, device=device)
    resumed = read_losses(metrics_dir(tmp_path / "resumed"))
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-3), (step, resumed, whole)


def test_accumulated_micro_batches_give_deepspeed_the_gradient_of_the_whole_step(tiny_model, torch_extensions_dir,
                                                                                  tmp_path):
    """ZeRO-2 on 2 CPU ranks: one step of 8 rows as 2 ranks × 4 or as 2 ranks × 2 × ``accumulate_grad_batches`` 2
    has the same gradient norm. Lightning divides an accumulated loss by the accumulation and DeepSpeed's
    ``engine.backward`` divides it again (``scale_wrt_gas``); lit-lora's step loss must undo both, or every
    accumulated DeepSpeed step is clipped and updated with a gradient that is 1/accumulation too small."""
    model_dir, norms = tiny_model("llama"), {}
    for batch, accumulate in ((4, 1), (2, 2)):
        out = tmp_path / f"norm-{batch}x{accumulate}.pt"
        run_cli_subprocess([*fit_args("zero2-lora", model_dir, tmp_path / f"{batch}x{accumulate}", "cpu"),
                            "--data.init_args.batch_size", str(batch),
                            "--trainer.accumulate_grad_batches", str(accumulate), "--trainer.max_steps", "1",
                            "--trainer.limit_val_batches", "0", "--trainer.callbacks+=grad_dump.FirstStepGradNorm"],
                           via="cpu_as_cuda", cwd=tmp_path,
                           env={**deepspeed_on_cpu_env(torch_extensions_dir), "GRAD_DUMP": str(out),
                                "PYTHONPATH": str(WORKERS)})
        norms[accumulate] = float(torch.load(out))
    assert norms[1] > 0 and norms[2] == pytest.approx(norms[1], rel=1e-4), norms


def test_zero3_trains_a_sequence_classifier_from_a_whole_loaded_base(tiny_model, lit_lora, tmp_path):
    """configs/tutorials/nli_roberta_lora.yaml under ZeRO-3 on 2 CPU ranks: the classifier's base is loaded whole
    (``loads_zero3_partitions = False``: a partitioned head copy would be 16-bit beside float32 LoRA
    weights, which ZeRO-3 refuses), partitioned by the engine, and trains and validates."""
    lit_lora("fit", "--config", str(CONFIGS / "tutorials" / "nli_roberta_lora.yaml"),
             "--config", str(CONFIGS / "strategies" / "deepspeed_zero3.yaml"),
             "--model.init_args.model_name_or_path", tiny_model("roberta"), "--data.init_args.batch_size", "4",
             "--trainer.devices", "2", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
             "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
             cwd=tmp_path, device="cpu")
    run_dir = metrics_dir(tmp_path / "run")
    rows = metrics_rows(run_dir)
    assert [int(r["step"]) for r in rows if r.get("train_loss")] == [0, 1]
    assert any(r.get("val_matched/accuracy") for r in rows)
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def epochs_ending_inside_a_window(model_dir: str, root: Path, strategy: str) -> list[str]:
    """Two epochs of 12 training rows on 2 ranks × batch 2: 3 micro-batches per rank and epoch, with
    ``accumulate_grad_batches`` 2 a whole window and a partial one; a linear LR schedule to zero, float32."""
    args = fit_args("zero2-lora", model_dir, root, "cpu")
    args[args.index(str(CONFIGS / "strategies" / "deepspeed_zero2.yaml"))] = str(CONFIGS / "strategies" / strategy)
    return [*args, "--data.init_args.max_samples", "15", "--data.init_args.batch_size", "2",
            "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "-1", "--trainer.max_epochs", "2",
            "--trainer.precision", "32-true", "--trainer.limit_val_batches", "0",
            "--model.init_args.optim.lr", "1e-3", "--model.init_args.optim.scheduler", "linear"]


def test_epochs_ending_inside_an_accumulation_window_take_the_steps_ddp_takes(tiny_model, torch_extensions_dir,
                                                                              tmp_path):
    """Lightning ends an epoch's last step early; DeepSpeed's engine cannot (it counts micro-batches across
    epochs), so its steps drifted from Lightning's: 2 logged steps instead of 4, the LR schedule stepped apart
    from the updates, and one update mixing two epochs' windows. The loader now completes the last window with
    unlabelled micro-batches, and ZeRO-2 takes DDP's steps with DDP's losses."""
    model_dir, losses, said = tiny_model("llama"), {}, {}
    for strategy in ("deepspeed_zero2.yaml", "ddp.yaml"):
        result = run_cli_subprocess(epochs_ending_inside_a_window(model_dir, tmp_path / strategy, strategy),
                                    via="cpu_as_cuda", cwd=tmp_path, env=deepspeed_on_cpu_env(torch_extensions_dir))
        losses[strategy] = read_losses(metrics_dir(tmp_path / strategy))
        output = result.stderr + result.stdout
        said[strategy] = "each epoch's 3 micro-batches per rank are followed by 1 without labels" in output
    assert sorted(losses["deepspeed_zero2.yaml"]) == sorted(losses["ddp.yaml"]) == [1, 2, 3, 4], losses
    for step, loss in losses["ddp.yaml"].items():
        assert losses["deepspeed_zero2.yaml"][step] == pytest.approx(loss, rel=1e-6), (step, losses)
    assert said == {"deepspeed_zero2.yaml": True, "ddp.yaml": False}  # DDP ends the step early itself


def test_an_epoch_of_packed_batches_shorter_than_one_accumulation_window_counts_its_step(tiny_model,
                                                                                         torch_extensions_dir,
                                                                                         tmp_path):
    """8 rows packed into 2 batches on 2 ranks is one micro-batch per rank and epoch; with
    ``accumulate_grad_batches`` 2 under DeepSpeed Lightning never counted a step and the run went on through
    epochs without end. Each epoch is now one whole window (its micro-batch and one without labels): one step per
    epoch. Packed batches have no batch sampler, where Lightning's DeepSpeed set-up read the micro-batch size.
    (Unpacked rows take the same path: the two-epoch comparison with DDP above.)"""
    result = run_cli_subprocess([*fit_args("zero2-lora", tiny_model("llama"), tmp_path / "run", "cpu"),
                                 "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "2",
                                 "--trainer.limit_val_batches", "0", "--data.init_args.packing", "true",
                                 "--data.init_args.max_tokens_per_batch", "1024"],
                                via="cpu_as_cuda", cwd=tmp_path, env=deepspeed_on_cpu_env(torch_extensions_dir),
                                timeout=240)
    output = result.stdout + result.stderr
    assert "2 batches of <= 4 sequences (max_tokens_per_batch 1024) per epoch, 1 per rank" in output, output[-3000:]
    said = "each epoch's 1 micro-batches per rank are followed by 1 without labels"
    assert output.count(said) == 1  # once, from rank 0
    rows = [r for r in metrics_rows(metrics_dir(tmp_path / "run")) if r.get("train_loss")]
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(0, 0), (1, 1)], rows
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)


def test_zero3_saves_a_p_tuning_prompt_computed_on_every_rank(tiny_model, lit_lora, tmp_path):
    """peft saves a p-tuning prompt by running its prompt encoder, whose weights ZeRO-3 partitions: run on rank 0
    alone, that forward waited for the other rank's shards and the first checkpoint hung. Every rank now computes
    the prompt before rank 0 writes it: the run ends and its adapter holds the whole prompt."""
    from safetensors.torch import load_file

    lit_lora("fit", "--config", str(CONFIGS / "tutorials" / "nli_roberta_lora.yaml"),
             "--config", str(CONFIGS / "strategies" / "deepspeed_zero3.yaml"),
             "--model.init_args.model_name_or_path", tiny_model("roberta"),
             "--model.init_args.adapter", "lit_lora.adapters.PTuning",
             "--model.init_args.adapter.init_args.num_virtual_tokens", "4",
             "--model.init_args.adapter.init_args.encoder_hidden_size", "16", "--data.init_args.batch_size", "4",
             "--trainer.devices", "2", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
             "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", str(tmp_path / "run"), cwd=tmp_path, device="cpu")
    saved = load_file(metrics_dir(tmp_path / "run") / "adapter" / "adapter_model.safetensors")
    prompt = saved["prompt_embeddings"]
    hidden = json.loads((Path(tiny_model("roberta")) / "config.json").read_text())["hidden_size"]
    assert prompt.shape == (4, hidden) and torch.isfinite(prompt).all() and prompt.abs().sum() > 0, prompt
