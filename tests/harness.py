"""The one way the tests drive lit-lora and read what a run wrote.

``tests/`` is on ``sys.path`` (pyproject's ``pythonpath = ["tests"]``), so a test module says
``from harness import …``. What is here:

* where things are: ``REPO``, ``CONFIGS``, ``DEMO`` (``configs/demo.yaml``), ``SAMPLES``, ``WORKERS``;
* the CLI in this process: ``run_cli(args)`` is ``lit-lora <args>`` through the entry point's ``main`` (every
  command: fit / validate / test, compare, incontext, configs, …); ``build_cli(args, run=…)`` returns the
  ``LitLoraCLI`` itself (``run=False``: built, nothing run, ``fit(cli)`` runs it); ``cli_exit(args)`` is the
  installed command's ``entry`` for a command that stops (its exit status and one-line message), ``cli_run``
  the same with its output captured; ``demo_args`` /
  ``demo_cli`` are the demo config on a tiny model, quiet, with the test's overrides last;
* the CLI in a fresh process: ``run_cli_subprocess(args, via=…)`` through the installed ``lit-lora``, ``python
  -m lit_lora.cli`` or ``tests/workers/cpu_as_cuda.py`` (Lightning's CUDA-only strategies on CPU ranks), under
  ``timeout``, which kills the whole process group (every DDP / DeepSpeed rank) when a run hangs;
* ranks: ``run_ranks(worker, *args)`` starts a worker of ``tests/workers/`` on N CPU ranks with ``torchrun``;
  ``deepspeed_on_cpu_env`` is the environment DeepSpeed's CPU accelerator needs; ``import_worker`` imports a
  worker module by path (no ``sys.path`` edits);
* what a run wrote: ``version_dir`` / ``metrics_dir`` find the run directory, ``metrics_rows`` / ``read_losses`` /
  ``logged_steps`` / ``validation_rows`` read its ``metrics.csv``, ``adapter_tensors`` its adapter;
* small builders: ``quiet_trainer`` (a CPU Trainer without logger, checkpoints, bars), ``overfit`` /
  ``mean_loss`` (a causal LM module trained a few steps on 8 rows), ``write_code_rows`` (SFT rows of very
  different lengths), ``KillBeforeStep`` / ``Killed`` (a process dying between two optimizer steps).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEMO = str(CONFIGS / "demo.yaml")
SAMPLES = REPO / "lit_lora" / "data" / "samples"
WORKERS = REPO / "tests" / "workers"
CPU_AS_CUDA = WORKERS / "cpu_as_cuda.py"

# No hub, no W&B server: what every test process runs with (conftest sets the same defaults in this process).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
# No progress bar, no model summary: the console of a test run is the part a test reads.
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def config(name: str) -> str:
    """The path of a bundled config, ``config("nli/phi2_qlora_snli")`` (``.yaml`` optional)."""
    path = CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"no config {path}")
    return str(path)


# ---- the CLI in this process ------------------------------------------------------------------------------
def run_cli(args: Sequence[str]) -> None:
    """``lit-lora <args>`` in this process, through the entry point's ``main``: every command (fit, validate,
    test, compare, incontext, estimate, configs, sweep …), ``--verbose``, the one-line error of a missing model
    (``SystemExit``). Errors the CLI raises reach the test."""
    from lit_lora.commands import main

    main(list(args))


def cli_exit(args: Sequence[str]) -> tuple[int, str]:
    """``lit-lora <args>`` through ``lit_lora.commands.entry`` (what the installed command runs), in this process,
    without ``--verbose``: the exit status and the message the interpreter prints as stderr's last line when a
    command stops with ``sys.exit("…")``. An error ``entry`` does not turn into that line (a user would see a
    traceback) reaches the test. A fresh process pays about 8 s of imports; this pays them once a session, so
    the refusals are checked here and ``run_cli_subprocess`` keeps the checks of the command itself."""
    from lit_lora.commands import entry

    argv, verbose = sys.argv, os.environ.pop("LIT_LORA_VERBOSE", None)
    sys.argv = ["lit-lora", *map(str, args)]
    try:
        entry()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0, ""
        return 1, str(stop.code)
    finally:
        sys.argv = argv
        if verbose is not None:
            os.environ["LIT_LORA_VERBOSE"] = verbose
    return 0, ""


def cli_run(args: Sequence[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``lit-lora <args>`` as ``cli_exit`` runs it, from ``cwd``, with what it prints captured: the
    ``CompletedProcess`` ``run_cli_subprocess`` gives (stderr ends with the line of a ``sys.exit("…")``). For a
    command whose work runs in processes of its own (``sweep``: each point is a ``lit-lora fit``), so that only
    the command's own start-up is saved. lit-lora's log lines go to the test's capture, not to this stderr."""
    from lit_lora.commands import configure_logging

    configure_logging()  # its handler keeps the stream it is made with: made here, outside the redirection
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status, message = cli_exit(args)
    stderr = err.getvalue() + (f"{message}\n" if message else "")
    return subprocess.CompletedProcess(["lit-lora", *map(str, args)], status, out.getvalue(), stderr)


def build_cli(args: Sequence[str], run: bool = True):
    """The ``LitLoraCLI`` of ``args``. ``run=True``: ``args`` start with the subcommand, which has run when this
    returns (its trainer, model and datamodule are there to look at). ``run=False``: no subcommand; the
    trainer, model and datamodule are built and nothing has run (``fit(cli)`` runs it)."""
    from lit_lora.commands.train import LitLoraCLI

    return LitLoraCLI(args=list(args), run=run)


def demo_args(model_dir: str, root: Path, *extra: str, config_path: str = DEMO) -> list[str]:
    """Arguments of ``config_path`` (the demo config) on ``model_dir`` with its run under ``root``, quiet;
    ``extra`` comes last, so it overrides anything before it."""
    return ["--config", str(config_path), "--model.init_args.model_name_or_path", str(model_dir),
            "--trainer.default_root_dir", str(root), *QUIET, *extra]


def demo_cli(model_dir: str, root: Path, *extra: str):
    """The ``lit-lora fit`` CLI of the demo config on ``model_dir``, built but not run (``fit(cli)``)."""
    return build_cli(demo_args(model_dir, root, *extra), run=False)


def resumable_demo_cli(model_dir: str, root: Path, every: int, max_steps: int, *extra: str):
    """The demo ``lit-lora fit`` CLI on a tiny model, built but not run, for interrupt-and-resume tests: 25 rows,
    ``max_steps`` steps, the loss logged to CSV every step, validation and a checkpoint (``{step}.ckpt`` under
    ``root/checkpoints``) every ``every`` steps, no baseline evaluation."""
    return demo_cli(
        model_dir, root,
        "--data.init_args.max_samples", "25", "--data.init_args.val_fraction", "0.2",
        "--trainer.max_steps", str(max_steps), "--trainer.log_every_n_steps", "1",
        "--trainer.val_check_interval", str(every), "--trainer.limit_val_batches", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
        "--checkpoint.dirpath", str(root / "checkpoints"), "--checkpoint.filename", "{step}",
        "--checkpoint.every_n_train_steps", str(every), "--checkpoint.save_top_k", "-1",
        "--baseline.enabled", "false",
        *extra,
    )


def fit(cli, ckpt_path: Optional[str] = None) -> None:
    """Run a CLI built with ``run=False`` as ``lit-lora fit`` would (``ckpt_path``: resume from it)."""
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))


# ---- the CLI in a fresh process ---------------------------------------------------------------------------
def entry_point() -> str:
    """The ``lit-lora`` installed beside this Python (the one a user of this environment runs), else on PATH."""
    beside = Path(sys.executable).with_name("lit-lora")
    if beside.is_file():
        return str(beside)
    found = shutil.which("lit-lora")
    if found is None:
        raise FileNotFoundError(f"no lit-lora entry point beside {sys.executable} or on PATH")
    return found


def subprocess_env(env: Optional[dict] = None) -> dict[str, str]:
    """This process's environment, offline, with this Python's ``bin/`` first on PATH (a ``lit-lora`` that a run
    starts, e.g. a sweep point, is this one), then ``env`` (a ``None`` value removes the variable)."""
    merged = {**os.environ, **OFFLINE,
              "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged


def run_cli_subprocess(args: Sequence[str], *, via: str = "entry_point", cwd: Path = REPO,
                       env: Optional[dict] = None, timeout: int = 600,
                       check: bool = True) -> subprocess.CompletedProcess:
    """``lit-lora <args>`` in a fresh process, as a user runs it; stdout and stderr captured as text.

    ``via``: ``"entry_point"`` (the installed ``lit-lora`` script), ``"module"`` (``python -m lit_lora.cli``) or
    ``"cpu_as_cuda"`` (``tests/workers/cpu_as_cuda.py``: Lightning's CUDA-only strategies on CPU processes; give
    it ``deepspeed_on_cpu_env(...)``). ``env`` is added to ``subprocess_env()``. The command runs under
    ``timeout -k 5 <timeout>``, which signals its whole process group: a hung multi-rank run (a collective
    called on one rank only) ends as a failure instead of hanging the test session.
    ``check``: a non-zero exit fails the test with the end of stdout and stderr.
    """
    commands = {"entry_point": lambda: [entry_point()],
                "module": lambda: [sys.executable, "-m", "lit_lora.cli"],
                "cpu_as_cuda": lambda: [sys.executable, str(CPU_AS_CUDA)]}
    if via not in commands:
        raise ValueError(f"via must be one of {sorted(commands)}, not {via!r}")
    command = [*commands[via](), *map(str, args)]
    proc = subprocess.Popen(["timeout", "-k", "5", str(timeout), *command], cwd=cwd, env=subprocess_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout + 30)
    except BaseException:  # pytest cut by its timeout or Ctrl-C: GNU timeout leads its own process group, and
        with contextlib.suppress(ProcessLookupError):  # killing only it would leave the run going
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"lit-lora {' '.join(map(str, args))} exited {result.returncode}"
                             f"{' (timed out)' if result.returncode in (124, 137) else ''}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def output(result: subprocess.CompletedProcess) -> str:
    """stdout and stderr of a finished process together, progress-bar carriage returns as new lines."""
    return (result.stdout + result.stderr).replace("\r", "\n")


# ---- ranks ------------------------------------------------------------------------------------------------
def deepspeed_on_cpu_env(torch_extensions_dir: str) -> dict[str, str]:
    """DeepSpeed on CPU processes (its CPU accelerator, gloo): the environment of every rank. The session's
    ``torch_extensions_dir`` fixture keeps DeepSpeed's JIT-built CPU op out of any stale build lock."""
    return {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
            "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir)}


def run_ranks(worker: str | Path, *args: str, ranks: int = 2, env: Optional[dict] = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node <ranks> <worker> <args>`` (a file of ``tests/workers/`` by name
    or a path), under ``timeout`` like ``run_cli_subprocess``; the finished process, not checked."""
    script = Path(worker) if str(worker).endswith(".py") else WORKERS / f"{worker}.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               str(script), *args]
    return subprocess.run(["timeout", "-k", "5", str(timeout), *command], env=subprocess_env(env),
                          capture_output=True, text=True, timeout=timeout + 30)


def import_worker(name: str):
    """The module ``tests/workers/<name>.py``, imported by path (its helpers, e.g. ``zero_cpu.build_module``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, WORKERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---- what a run wrote -------------------------------------------------------------------------------------
def without_dropout(model_dir: str, out: Path) -> str:
    """A copy of ``model_dir`` whose config has its dropout off (the tiny RoBERTa keeps transformers' 0.1)."""
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    settings = json.loads((out / "config.json").read_text())
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout"):
        if key in settings:
            settings[key] = 0.0
    (out / "config.json").write_text(json.dumps(settings))
    return str(out)


def fake_trainer(batches_done: int = 0, accumulate: int = 1, limit: float = float("inf")):
    """The part of a Trainer a ``ResumableDataLoader`` reads: batches trained in this epoch, accumulation, limit."""
    from types import SimpleNamespace

    progress = SimpleNamespace(current=SimpleNamespace(ready=batches_done))
    return SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
                           accumulate_grad_batches=accumulate, num_training_batches=limit)


def version_dir(root: Path) -> Path:
    """The one run directory ``<root>/lightning_logs/version_N`` (fails when there is none or several)."""
    found = sorted((Path(root) / "lightning_logs").iterdir())
    assert len(found) == 1, f"expected one run under {root}/lightning_logs, found {[p.name for p in found]}"
    return found[0]


def metrics_dir(root: Path) -> Path:
    """The directory under ``root`` (or ``root`` itself) that holds the run's ``metrics.csv``."""
    found = next(Path(root).rglob("metrics.csv"), None)
    if found is None:
        written = sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())
        raise AssertionError(f"no metrics.csv under {root}; the run wrote {written[:20]}")
    return found.parent


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """Every row of ``<run>/metrics.csv`` (the CSVLogger's), as written: a column a row has no value for is ``""``."""
    with open(Path(run) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_losses(run: Path, key: str = "train_loss") -> dict[int, float]:
    """Optimizer steps done (1-based) -> ``key`` from ``<run>/metrics.csv``. Lightning logs a training step's
    loss under the 0-based step it ran as: the row of step ``s`` holds the loss of optimizer step ``s + 1``."""
    return {int(r["step"]) + 1: float(r[key]) for r in metrics_rows(run) if r.get(key)}


def logged_steps(run: Path, key: str = "train_loss") -> list[int]:
    """The ``step`` column (0-based, as logged) of the rows of ``<run>/metrics.csv`` that hold ``key``, sorted; a
    step logged twice (a resume that repeated it) shows twice."""
    return sorted(int(r["step"]) for r in metrics_rows(run) if r.get(key))


def validation_rows(run: Path, key: str = "val_loss") -> list[dict[str, float]]:
    """The rows of ``<run>/metrics.csv`` that hold ``key``, as floats (their empty cells left out)."""
    return [{k: float(v) for k, v in r.items() if v} for r in metrics_rows(run) if r.get(key)]


def adapter_tensors(adapter_dir: Path) -> dict:
    """The tensors of ``<adapter_dir>/adapter_model.safetensors`` (a peft adapter as lit-lora saves it)."""
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


def assert_complete_lora_adapter(adapter_dir: Path, model_dir: str, scratch: Path, lora_args: dict) -> None:
    """What a sharded run (ZeRO-3, FSDP) saved in ``adapter_dir`` is a whole adapter: every tensor of an unsharded
    LoRA adapter of the same ``lora_args`` (written on the CPU by peft into ``scratch``), none empty (an
    ungathered shard would be), the same shapes, B moved off zero by training, and plain
    ``PeftModel.from_pretrained`` loads it to the same values."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from lit_lora.adapters import LoRA
    from lit_lora.models import CausalLMModule

    saved = adapter_tensors(adapter_dir)
    reference = CausalLMModule(model_dir, adapter=LoRA(**lora_args))
    reference.configure_model()
    reference.save_pretrained(scratch)
    expected = adapter_tensors(scratch)
    assert set(saved) == set(expected), sorted(set(saved) ^ set(expected))[:5]
    for name, tensor in expected.items():
        assert saved[name].numel() > 0, f"{name} is empty (an ungathered shard?)"
        assert saved[name].shape == tensor.shape, (name, saved[name].shape, tensor.shape)
    assert any(n.endswith("lora_B.weight") and saved[n].abs().sum() > 0 for n in saved)  # B starts at zero

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    loaded = get_peft_model_state_dict(PeftModel.from_pretrained(base, str(adapter_dir)))
    for name, tensor in saved.items():
        torch.testing.assert_close(loaded[name].float(), tensor.float(), msg=name)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


# ---- small builders ---------------------------------------------------------------------------------------
def quiet_trainer(**kwargs):
    """A Lightning Trainer on the CPU with no logger, checkpoints, progress bar or model summary; ``kwargs``
    (steps, validation, ``default_root_dir`` …) are the Trainer's own and may override any of these. Its run
    directory is a new temporary one, so evaluation outputs (``predictions.jsonl``) never land in the checkout."""
    import tempfile

    import lightning as L

    settings = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tempfile.mkdtemp(prefix="lit-lora-test-"))
    return L.Trainer(**{**settings, **kwargs})


def mean_loss(module, loader) -> float:
    """The module's mean batch loss over ``loader``, in eval mode, without gradients (train mode restored)."""
    import torch

    module.eval()
    with torch.no_grad():
        losses = [float(module(batch).loss) for batch in loader]
    module.train()
    return sum(losses) / len(losses)


def overfit(model_dir: str, adapter, steps: int = 30, lr: float = 1e-2, dtype: str = "float32"):
    """A ``CausalLMModule`` with ``adapter`` trained ``steps`` steps (constant ``lr``) on 8 rows of the bundled
    python-codes sample; returns (mean loss before, mean loss after, module)."""
    import lightning as L

    from lit_lora.data import InstructionDataModule
    from lit_lora.models import CausalLMModule
    from lit_lora.optim import OptimizerSettings

    L.seed_everything(0)
    data = InstructionDataModule(tokenizer_name_or_path=model_dir, max_samples=10, val_fraction=0.2,
                                 batch_size=8, max_length=128)
    module = CausalLMModule(model_dir, adapter=adapter, optim=OptimizerSettings(lr=lr, scheduler="constant"),
                            dtype=dtype, tokenizer=data.tokenizer)
    data.setup("fit")
    module.configure_model()
    before = mean_loss(module, data.train_dataloader())
    quiet_trainer(max_steps=steps, limit_val_batches=0).fit(module, datamodule=data)
    return before, mean_loss(module, data.train_dataloader()), module


def write_code_rows(path: Path, n: int = 8) -> Path:
    """``n`` python-codes-25k rows (instruction, input, output, text) whose answers range from a few to about
    250 tokens: a per-micro-batch mean loss differs from a token-normalised one on them by far more than 1e-5."""
    with Path(path).open("w") as f:
        for i in range(n):
            body = "\n".join(f"    total += {j} * value" for j in range(1 + i ** 3 // 4))
            output_ = f"def f{i}(value):\n    total = 0\n{body}\n    return total"
            f.write(json.dumps({"instruction": f"Write function number {i}.", "input": "", "output": output_,
                                "text": ""}) + "\n")
    return Path(path)


class Killed(Exception):
    """Stands in for the process dying between two optimizer steps."""


class KillBeforeStep(Callback):
    """Raise ``Killed`` at the start of the batch that would run optimizer step ``step + 1``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed after step {self.step}")


# ---- data files with one thing wrong (tests/test_bad_input*.py) ----------------------------------------
def code_row(i: int = 0, **fields) -> dict:
    """A python-codes-25k row (instruction, input, output, text), ``fields`` replaced."""
    row = {"instruction": f"Add a and b ({i}).", "input": "", "output": "```python\na + b\n```", "text": "Add a + b"}
    return {**row, **fields}


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def instruction_dm(tiny_model, source: str, **kwargs):
    """An ``InstructionDataModule`` on ``source`` with the tiny Llama's tokenizer, a quarter held out."""
    from lit_lora.data import InstructionDataModule

    return InstructionDataModule(source=source, tokenizer_name_or_path=tiny_model("llama"), val_fraction=0.25, **kwargs)


def setup_error(dm, kind=ValueError) -> str:
    """The message ``dm.setup()`` stops with; nothing may have been tokenised by then."""
    import pytest

    with pytest.raises(kind) as info:
        dm.setup("fit")
    assert not dm.datasets, "the error came after tokenisation started"
    return str(info.value)


def snli_csv(path: Path, labels: list[str]) -> str:
    """An SNLI CSV (premise, hypothesis, label) with one row per label cell of ``labels``, as written."""
    pairs = [("A dog runs in the park.", "A dog moves."), ("A man sings.", "Nobody sings."),
             ("A cat eats fish.", "A cat is eating."), ("Two kids play.", "The kids sleep.")]
    lines = ["premise,hypothesis,label"]
    lines += [f"{p} ({i}),{h},{label}" for i, (label, (p, h)) in enumerate(zip(labels, pairs * 4))]
    return write_lines(path, lines)
