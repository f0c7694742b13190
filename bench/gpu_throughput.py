"""GPU training throughput of ``lit-lora fit``: LoRA bf16 and QLoRA NF4 on a random-init Llama-3-8B-shaped model.

    python bench/gpu_throughput.py --out bench/results            # one H100 / H200 (bench/gpu.sh runs this)
    python bench/gpu_throughput.py --dry-run --out /tmp/gpu-dry   # any machine: data, config, commands, estimates
    python bench/gpu_throughput.py --cpu-smoke --steps 4 --warmup 1 --out /tmp/gpu-smoke   # the whole path, tiny, CPU

The model is Llama-3-8B's architecture (``lit_lora.architectures``: hidden 4096, MLP 14336, 32 heads / 8 KV heads,
128,256-token vocabulary, untied head) with ``--layers`` of its 32 decoder layers (default 8, so that building,
saving and loading it twice fits in a few minutes; ``--layers 32`` is the full model), random bf16 weights built
on the GPU and saved once. The tokenizer is a byte-level BPE trained on the data (ids below 8192; the embedding and
head keep the full vocabulary, so their FLOPs and memory are Llama-3's). The data are the standard-library
instruction rows of ``bench/stdlib_rows.py``. Each variant runs ``lit-lora fit`` (configs/demo.yaml + overrides)
in its own process with ``bench/lit_probe.py``:

    lora_bf16    LoRA r=16 alpha 32 on all linear layers, bf16 base weights, bf16-mixed, no gradient checkpointing
    qlora_nf4    QLoRA: NF4 4-bit base with double quant, bf16 compute, the same LoRA, gradient checkpointing
                 (QLoRA's default)
    lora_bf16_varlen   lora_bf16 with --model.init_args.attn_implementation torch_varlen: the packed rows through
                 PyTorch's own FlashAttention varlen kernel (lit_lora/models/varlen_attention.py), where lora_bf16
                 gets flash-attn's when it is installed and sdpa's block mask when not
    lora_bf16_compile  lora_bf16 with --model.init_args.compile true (only when named in --variants: the
                 compile is timed out of the window by --warmup, but it costs the lease minutes)

both at sequence length 2048 with packing (``--data.init_args.packing true``, 4 packed sequences = 8192 token slots
per step) when the CLI accepts it, else 4 rows per batch padded to the longest (far fewer tokens per step; the
report then says "packing OFF").
Reported per variant: real tokens/s (timed after ``--warmup`` steps), MFU = 6·N·tokens/s / peak bf16 FLOP/s (N =
parameters of the model run, input embedding excluded; the peak used is printed: the usual convention), the same
with the LM head counted on labelled tokens only, and with the work a frozen base needs (4 FLOPs a parameter and
token, forward and input gradient, plus 6 for each LoRA parameter: its weight gradient too), CUDA peak memory (allocated,
reserved) next to ``lit-lora estimate``'s prediction for the same config (the estimates and the CLI's packing
check are CPU processes, run beside the GPU work). Every step that fails says so and the
next one runs; results go to ``<out>/gpu_throughput.{json,md}``, each variant's fit and estimate logs to stdout once it
is done (two files in ``<out>``: a lent machine's run returns few), the weights, logs and Lightning run directories to
a temporary ``--work`` directory (removed at the end), never under ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from stdlib_rows import describe, stdlib_rows, write_jsonl  # noqa: E402
from train_throughput import child_env, lit_lora_command  # noqa: E402

LLAMA3 = "meta-llama/Meta-Llama-3-8B"
# dense bf16 tensor-core peaks (no sparsity), FLOP/s, matched against torch.cuda.get_device_name()
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12),  # before the generic names
             ("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("GH200", 989e12),
             ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12)]
VARIANTS = ("lora_bf16", "qlora_nf4", "lora_bf16_varlen", "lora_bf16_compile")
# what bench/gpu.sh runs; the compile one takes minutes to compile
DEFAULT_VARIANTS = ("lora_bf16", "lora_bf16_varlen", "qlora_nf4")  # in order of need, for a budget that runs short
MIN_VARIANT_S = 60  # a fit of the 8-layer shape: ~25 s on an H100 plus the start; less is not tried (``measure``)
LORA_RANK = 16
LORA = ["--model.init_args.adapter.init_args.r", str(LORA_RANK), "--model.init_args.adapter.init_args.alpha", "32",
        "--model.init_args.adapter.init_args.dropout", "0.0",
        "--model.init_args.adapter.init_args.target_modules", "all-linear"]


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- model and data -------------------------------------------------------------------------------------
def llama3_config(tokenizer, layers: int):
    """Llama-3-8B's config with ``layers`` decoder layers and the tokenizer's special token ids."""
    from lit_lora.architectures import lookup

    config = lookup(LLAMA3).config()
    config.num_hidden_layers = layers
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.max_position_embeddings = max(config.max_position_embeddings, 2048)
    return config


def build_model_dir(rows: list[dict], out: Path, layers: int) -> dict:
    """Tokenizer and config of the bench model in ``out``; its parameter counts."""
    import torch
    from transformers import AutoModelForCausalLM

    from lit_lora.tiny import train_tokenizer

    tokenizer = train_tokenizer([f"{r['instruction']}\n{r['output']}" for r in rows], vocab_size=8192)
    config = llama3_config(tokenizer, layers)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    config.save_pretrained(out)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    return parameter_counts(meta)


def parameter_counts(model) -> dict:
    """All parameters; N for MFU (the input embedding is a lookup, not a matmul); the LM head's share of N; the
    LoRA parameters of ``LORA`` (rank ``LORA_RANK`` on every linear layer but the head, as peft's all-linear)."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    adapter = sum(LORA_RANK * (m.in_features + m.out_features) for m in model.modules()
                  if isinstance(m, torch.nn.Linear) and m is not head)
    return {"parameters": total, "flop_parameters": total - model.get_input_embeddings().weight.numel(),
            "head_parameters": head.weight.numel(), "adapter_parameters": adapter}


def model_flops_per_s(ctx: dict, measured: dict) -> dict:
    """MFU three ways: 6N per real token (the convention, which counts a weight gradient for every parameter); with
    the LM head counted only on labelled tokens, where lit-lora's label-only head runs it (the first figure credits
    the skipped head FLOPs as done); and the work a frozen base needs, 4N (forward and input gradient, head on
    labelled tokens) plus 6 FLOPs a token for each LoRA parameter. Gradient checkpointing's recomputed forward
    (QLoRA) is in none of them."""
    tokens, labels = measured.get("tokens_per_s"), measured.get("label_tokens_per_s")
    if not ctx["peak"] or not tokens:
        return {}
    flops = {"mfu": 6 * ctx["flop_parameters"] * tokens / ctx["peak"]}
    if labels is not None and ctx.get("head_parameters"):
        head = ctx["head_parameters"]
        body = ctx["flop_parameters"] - head
        flops["mfu_label_head"] = 6 * (body * tokens + head * labels) / ctx["peak"]
        if ctx.get("adapter_parameters"):
            frozen = 4 * (body * tokens + head * labels) + 6 * ctx["adapter_parameters"] * tokens
            flops["mfu_frozen_base"] = frozen / ctx["peak"]
    return flops


def build_tiny(rows: list[dict], out: Path) -> dict:
    """``--cpu-smoke``'s model: ``lit_lora.tiny``'s Llama, with weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_lora.tiny import build_tiny_model

    build_tiny_model("llama", out, texts=[f"{r['instruction']}\n{r['output']}" for r in rows], seed=0)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
    return parameter_counts(meta)


def save_random_weights(out: Path) -> None:
    """Random bf16 weights for the config in ``out``, initialised on the GPU and saved beside it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    log(f"built and saved the random-init bf16 weights in {time.perf_counter() - start:.0f} s")


def peak_flops(device_name: str, override_tflops: Optional[float]) -> tuple[Optional[float], str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (--peak-tflops)"
    for key, flops in PEAK_BF16:
        if key.lower() in device_name.lower():
            return flops, f"{flops / 1e12:g} TFLOP/s dense bf16 ({key}, matched in {device_name!r})"
    return None, f"unknown for {device_name!r}: pass --peak-tflops for MFU"


# ---- the lit-lora command lines -------------------------------------------------------------------------
def config_args(variant: str, model: Path, data: Path, packing: bool, steps: int, run_dir: Path,
                accelerator: str = "gpu") -> list[str]:
    """The overrides of ``variant`` (shared by ``fit`` and ``estimate``)."""
    args = ["--config", str(ROOT / "configs" / "demo.yaml"), "--model.init_args.model_name_or_path", str(model),
            "--model.init_args.dtype", "bfloat16", "--trainer.accelerator", accelerator, "--trainer.devices", "1",
            "--trainer.precision", "bf16-mixed", "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
            "--baseline.enabled", "false", "--seed_everything", "42",
            "--model.init_args.optim.lr", "3e-4", "--model.init_args.optim.scheduler", "constant",
            "--model.init_args.optim.warmup_steps", "0",
            "--data.init_args.source", str(data), "--data.init_args.max_length", "2048",
            "--data.init_args.batch_size", "4"]
    if packing:
        args += ["--data.init_args.packing", "true"]
    if variant == "qlora_nf4":
        args += ["--model.init_args.adapter", "lit_lora.adapters.QLoRA", *LORA,
                 "--model.init_args.adapter.init_args.bits", "4",
                 "--model.init_args.adapter.init_args.quant_type", "nf4",
                 "--model.init_args.adapter.init_args.double_quant", "true",
                 "--model.init_args.adapter.init_args.compute_dtype", "bfloat16"]
    else:
        args += LORA
    if variant == "lora_bf16_compile":
        args += ["--model.init_args.compile", "true"]
    if variant == "lora_bf16_varlen":
        args += ["--model.init_args.attn_implementation", "torch_varlen"]
    return args


def run(cmd: list[str], env: dict, timeout: float, log_path: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` (output to ``log_path``); a timeout is reported as exit code 124."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        errs = (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        done = subprocess.CompletedProcess(cmd, 124, out, errs + f"\n[gpu-bench] timed out after {timeout:.0f} s\n")
    log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    return done


def packing_supported(env: dict, args: list[str], log_path: Path) -> bool:
    done = run(lit_lora_command() + ["fit", *args, "--data.init_args.packing", "true", "--print_config"], env, 120,
               log_path)
    return done.returncode == 0


def estimate(variant: str, env: dict, args: list[str], gpu_gib: float, log_path: Path) -> dict:
    """``lit-lora estimate`` for the same config: its total (GiB) and full report."""
    done = run(lit_lora_command() + ["estimate", *args, "--gpu_memory_gib", f"{gpu_gib:g}"], env, 300, log_path)
    match = re.search(r"^\s*total\s+([\d.]+) GiB", done.stdout, re.MULTILINE)
    if done.returncode not in (0, 1) or match is None:  # 1 and a total: no fit in gpu_gib; 1 alone: an error
        raise RuntimeError(f"lit-lora estimate exited {done.returncode}{'' if match else ', no total'}: {log_path}")
    return {"estimate_total_gib": float(match.group(1)), "estimate_report": done.stdout.strip()}


def fit(variant: str, env: dict, args: list[str], warmup: int, timeout: float, run_dir: Path) -> dict:
    result_path = run_dir / "result.json"
    env = {**env, "BENCH_RESULT": str(result_path), "BENCH_WARMUP_STEPS": str(warmup),
           "BENCH_LAUNCH_TIME": repr(time.time())}
    cmd = lit_lora_command() + ["fit", *args, "--trainer.callbacks+=lit_probe.Probe"]
    done = run(cmd, env, timeout, run_dir / "fit.log")
    if not result_path.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"lit-lora fit exited {done.returncode} without a result; see {run_dir / 'fit.log'}\n{tail}")
    if done.returncode != 0:
        log(f"WARNING: {variant}: fit exited {done.returncode} after the measured steps (see {run_dir / 'fit.log'})")
    return json.loads(result_path.read_text())


# ---- the run ---------------------------------------------------------------------------------------------
def gpu_facts() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"device": "no CUDA device", "memory_gib": 80.0}
    props = torch.cuda.get_device_properties(0)
    return {"device": torch.cuda.get_device_name(0), "memory_gib": props.total_memory / 1024 ** 3,
            "torch": torch.__version__, "cuda": torch.version.cuda}


def shown(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def variant_args(variant: str, ctx: dict) -> list[str]:
    return config_args(variant, ctx["model"], ctx["data"], ctx["packing"], ctx["steps"], ctx["work"] / variant,
                       ctx["accelerator"])


def variant_logs(variant: str, ctx: dict) -> Path:
    """The folder of ``variant``'s logs and result, in the work directory (printed by ``print_logs``)."""
    folder = ctx["work"] / "logs" / variant
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def print_logs(variant: str, ctx: dict) -> None:
    """``variant``'s estimate and fit logs on stdout, whole: the copy of them that leaves the machine."""
    for path in sorted(variant_logs(variant, ctx).glob("*.log")):
        print(f"----- {variant}: {path.name} -----\n{path.read_text(errors='replace').rstrip()}\n----- end -----",
              flush=True)


def estimate_variant(variant: str, ctx: dict) -> dict:
    """``lit-lora estimate`` of ``variant`` (a CPU process: it runs beside the GPU fits), or its error."""
    run_dir = variant_logs(variant, ctx)
    try:
        found = estimate(variant, ctx["env"], variant_args(variant, ctx), ctx["gpu"]["memory_gib"],
                         run_dir / "estimate.log")
        log(f"{variant}: lit-lora estimate total {found['estimate_total_gib']} GiB")
        return found
    except Exception as err:  # noqa: BLE001 - report and go on to the measurement
        log(f"FAILED {variant} estimate: {err}")
        return {"estimate_error": str(err)}


def bench_variant(variant: str, ctx: dict, deadline: float, estimated: Future) -> dict:
    """The fit of ``variant``, then its estimate (started earlier, see ``bench``) beside the measurement."""
    run_dir = variant_logs(variant, ctx)
    args = variant_args(variant, ctx)
    result: dict = {"variant": variant, "command": " ".join(lit_lora_command() + ["fit", *args])}
    if ctx["dry_run"]:
        result.update(estimated.result())
        log(f"{variant} (dry run) would run:\n  {result['command']} --trainer.callbacks+=lit_probe.Probe")
        return result
    result.update(measure(variant, ctx, deadline, args, run_dir))
    result.update(estimated.result())
    return result


def measure(variant: str, ctx: dict, deadline: float, args: list[str], run_dir: Path) -> dict:
    """``lit-lora fit`` of ``variant`` with the probe: tokens/s, MFU and CUDA peak memory, or why not."""
    result: dict = {}
    left = deadline - time.time()
    if left < MIN_VARIANT_S:
        result["error"] = f"skipped: {left:.0f} s of the time budget left"
        log(f"FAILED {variant}: {result['error']}")
        return result
    try:
        measured = fit(variant, ctx["env"], args, ctx["warmup"], left, run_dir)
        result.update(measured)
        result.update(model_flops_per_s(ctx, measured))
        log(f"{variant}: {shown(measured.get('tokens_per_s'), '.0f')} tokens/s, MFU {shown(result.get('mfu'), '.1%')} "
            f"({shown(result.get('mfu_label_head'), '.1%')} with the head on labelled tokens only, "
            f"{shown(result.get('mfu_frozen_base'), '.1%')} counting the work of a frozen base), "
            f"CUDA peak allocated {shown(measured.get('cuda_peak_allocated_gib'), '.1f')} GiB")
    except Exception as err:  # noqa: BLE001
        result["error"] = str(err)
        log(f"FAILED {variant}: {err}")
    return result


def note(result: dict, setup: dict) -> str:
    text = result.get("error") or result.get("estimate_error") or ("dry run: not measured" if setup["dry_run"] else "")
    return text.replace("|", "/").replace("\n", " ")[:100]


def attention_cell(result: dict) -> str:
    """The attention a variant ran; for ``torch_varlen``, the share of packed attention calls the kernel took."""
    paths = result.get("attention_paths")
    if paths is None:
        return result.get("attention") or "-"
    if not paths:  # lit_lora.models.varlen_attention.flattens_on: no kernel on this device
        return f"{result['attention']}: packed sequences stacked, through sdpa"
    kernel = paths.get("varlen kernel", 0)
    fallback = "; ".join(reason for reason in paths if reason != "varlen kernel")
    return (f"{result['attention']}: kernel in {kernel} of {sum(paths.values())} packed calls"
            + (f", sdpa for {fallback}" if fallback else "")).replace("|", "/")


def markdown(report: dict) -> str:
    ctx = report["setup"]
    shape = "tiny Llama (CPU smoke run)" if ctx.get("cpu_smoke") else f"Llama-3-8B shape, {ctx['layers']} of 32 layers"
    lines = [f"GPU: {ctx['gpu']['device']}; model: {shape}, "
             f"{ctx['parameters'] / 1e9:.2f}B parameters (N = {ctx['flop_parameters'] / 1e9:.2f}B without the input "
             f"embedding); seq 2048, {'packing on' if ctx['packing'] else 'packing OFF (not accepted by the CLI)'}; "
             f"{ctx['steps']} steps, timed after {ctx['warmup']}; MFU peak: {ctx['peak_note']}",
             *([f"ERROR: {ctx['error']}"] if ctx.get("error") else []), "",
             "| variant | attention | tokens/s | MFU (6N) | MFU (head on labels) | MFU (frozen base) | padding "
             "| CUDA peak allocated GiB | reserved GiB | estimate GiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        def cell(key, spec):
            return shown(r.get(key), spec)
        lines.append(f"| {r['variant']} | {attention_cell(r)}"
                     f" | {cell('tokens_per_s', '.0f')} | {cell('mfu', '.1%')} | {cell('mfu_label_head', '.1%')}"
                     f" | {cell('mfu_frozen_base', '.1%')}"
                     f" | {cell('padding', '.1%')}"
                     f" | {cell('cuda_peak_allocated_gib', '.2f')} | {cell('cuda_peak_reserved_gib', '.2f')}"
                     f" | {cell('estimate_total_gib', '.2f')} | {note(r, ctx)} |")
    return "\n".join(lines) + "\n"


def variant_deadline(now: float, deadline: float, after: int) -> float:
    """When a variant must end, ``after`` variants still to run: each of those keeps a quarter of the time left (at
    most half in all), but a variant gets ``MIN_VARIANT_S`` while the budget has it, so a short budget measures the
    first variants whole instead of skipping every one."""
    own = deadline if not after else now + (deadline - now) * max(0.5, 1 - 0.25 * after)
    return max(own, min(deadline, now + MIN_VARIANT_S + 5))


def write_report(out: Path, report: dict) -> None:
    (out / "gpu_throughput.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_throughput.md").write_text(markdown(report))


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or BENCH / "results"))
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of Llama-3-8B's 32 (default 8)")
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timed window")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, of {VARIANTS}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by GPU)")
    parser.add_argument("--budget-s", type=float, default=420, help="seconds this script may take in all")
    parser.add_argument("--work", type=Path, default=None,
                        help="model weights, data cache and Lightning run directories (default: a temporary "
                             "directory, removed at the end; never under --out, which holds only logs and results)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check the whole path on a CPU: a tiny Llama (not Llama-3's shape), CPU accelerator")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: write data, tokenizer and config, check the CLI, run the estimates, "
                             "print the commands")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    deadline = time.time() + args.budget_s
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or Path(tempfile.mkdtemp(prefix="lit-lora-gpu-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return bench(args, out, work, deadline)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, out: Path, work: Path, deadline: float) -> int:
    env = child_env(work)
    os.environ.update(env)
    gpu = gpu_facts()
    log(f"device: {gpu}")
    dry_run = args.dry_run
    setup: dict = {"gpu": gpu, "layers": args.layers, "steps": args.steps, "warmup": args.warmup, "dry_run": dry_run,
                   "cpu_smoke": args.cpu_smoke}
    results: list[dict] = []
    if not dry_run and not args.cpu_smoke and gpu["device"] == "no CUDA device":
        log("FAILED: no CUDA device; only the estimates run (--dry-run checks the rest without one)")
        setup["error"], dry_run = "no CUDA device", True
    rows = stdlib_rows()
    data = write_jsonl(rows, work / "rows.jsonl")
    setup["data"] = describe(rows)
    log(f"data: {setup['data']}")
    model_dir = work / ("tiny-llama" if args.cpu_smoke else f"llama3-8b-shape-{args.layers}-layers")
    if args.cpu_smoke:
        setup.update(build_tiny(rows, model_dir))
        log("CPU smoke run: a tiny Llama on the CPU accelerator; the numbers say nothing about a GPU")
    else:
        setup.update(build_model_dir(rows, model_dir, args.layers))
    # the CLI check and the estimates are CPU processes: they run while the GPU builds the weights and trains
    pool = ThreadPoolExecutor(max_workers=1 + len(args.variants))
    packing_check = pool.submit(packing_supported, env, config_args("lora_bf16", model_dir, data, False, args.steps,
                                                                    work / "probe"), work / "packing_check.log")
    if not dry_run and not args.cpu_smoke:
        try:
            save_random_weights(model_dir)
        except Exception:  # noqa: BLE001 - the estimates still run from the config
            log(f"FAILED building the model; only the estimates run:\n{traceback.format_exc()}")
            last = traceback.format_exc().strip().splitlines()[-1]
            setup["error"], dry_run = f"building the model failed: {last}", True
    peak, setup["peak_note"] = peak_flops(gpu["device"], args.peak_tflops)
    setup["peak_flops"] = peak
    log(f"model: {setup['parameters'] / 1e9:.2f}B parameters ({args.layers} layers); MFU peak: {setup['peak_note']}")
    packing = packing_check.result()
    setup["packing"] = packing
    log(f"packing: {'on' if packing else 'OFF: lit-lora fit does not accept --data.init_args.packing here'}")
    if not packing:
        print((work / "packing_check.log").read_text(errors="replace"), flush=True)
    ctx = {**setup, "out": out, "work": work, "env": env, "model": model_dir, "data": data, "peak": peak,
           "dry_run": dry_run, "accelerator": "cpu" if args.cpu_smoke else "gpu"}
    estimates = {variant: pool.submit(estimate_variant, variant, ctx) for variant in args.variants}
    printed: set = set()
    for i, variant in enumerate(args.variants):
        own = variant_deadline(time.time(), deadline, after=len(args.variants) - i - 1)
        try:
            results.append(bench_variant(variant, ctx, own, estimates[variant]))
        except Exception:  # noqa: BLE001 - one variant's failure must not lose the others
            log(f"FAILED {variant}:\n{traceback.format_exc()}")
            results.append({"variant": variant, "error": traceback.format_exc().strip().splitlines()[-1]})
        write_report(out, {"setup": setup, "variants": results})  # each result kept even if the run is cut later
        if estimates[variant].done():  # else its estimate still writes its log: printed below
            print_logs(variant, ctx)
            printed.add(variant)
    pool.shutdown(wait=True)
    for variant in args.variants:
        if variant not in printed:
            print_logs(variant, ctx)
    report = {"setup": setup, "variants": results}
    write_report(out, report)
    print(markdown(report))
    failed = [r["variant"] for r in results if "error" in r or "estimate_error" in r]
    return 1 if failed or (setup.get("error") and not args.dry_run) else 0


if __name__ == "__main__":
    sys.exit(main())
