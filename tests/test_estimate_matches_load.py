"""``lit-lora estimate`` predicts the bytes lit-lora loads: weights and bitsandbytes constants, exactly.

Each reference architecture's tiny twin (``lit_lora.tiny``: Llama, Gemma, Phi, Falcon, T5, RoBERTa) is loaded
as training loads it (the module's ``configure_model``: ``from_pretrained`` with the quantization config,
``prepare_model_for_kbit_training``, peft) and its bytes are summed: parameters and buffers at their storage
dtype (a 4-bit weight as its packed storage) and the constants bitsandbytes keeps beside the weights
(``QuantState``: absmax, code table, nested absmax / map / offset; LLM.int8's ``SCB``). The estimate builds
the same model on the meta device; both must agree to the byte. Under QLoRA with ``dtype: auto`` the twin is
stored in its reference checkpoint's dtype (bf16 Llama / Gemma / Falcon, fp16 Phi), so what stays 16-bit and
what peft casts to fp32 is checked as a real run meets it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from lit_lora.adapters import LoRA, QLoRA
from lit_lora.architectures import REGISTRY, config_dtype, lookup
from lit_lora.commands.experiment import parse_experiment as parse_config
from lit_lora.commands.experiment import model_of
from lit_lora.estimate import build, quant_bytes, weight_bytes
from lit_lora.memory import tensor_bytes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TWIN_OF = {"LlamaConfig": "llama", "GemmaConfig": "gemma", "PhiConfig": "phi", "FalconConfig": "falcon",
           "T5Config": "t5", "RobertaConfig": "roberta"}
REFERENCE = {TWIN_OF[a.config_class.__name__]: a for a in REGISTRY.values()}  # one reference per twin
ADAPTERS = {  # name -> (adapter, module dtype, twin stored in the reference's dtype)
    "lora-fp32": (lambda: LoRA(r=4, alpha=8), "float32", False),
    "lora-bf16": (lambda: LoRA(r=4, alpha=8), "bfloat16", False),
    "qlora-nf4-double-quant": (lambda: QLoRA(r=4, alpha=8), "auto", True),
    "qlora-nf4": (lambda: QLoRA(r=4, alpha=8, double_quant=False), "auto", True),
    "qlora-int8": (lambda: QLoRA(r=4, alpha=8, bits=8), "auto", True),
    "qlora-nf4-bf16-storage": (lambda: QLoRA(r=4, alpha=8, quant_storage="bfloat16"), "auto", True),  # FSDP's
}


@pytest.fixture(scope="module")
def twin(tiny_model, tmp_path_factory):
    """``twin("phi", torch.float16)``: the tiny twin's directory with its weights stored in that dtype."""
    made: dict = {}

    def make(arch: str, dtype: torch.dtype) -> str:
        path = tiny_model(arch)
        if dtype == torch.float32:
            return path
        if (arch, dtype) not in made:
            from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
            from transformers import AutoTokenizer

            auto = {"t5": AutoModelForSeq2SeqLM, "roberta": AutoModelForSequenceClassification}.get(arch,
                                                                                                 AutoModelForCausalLM)
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{str(dtype).split('.')[-1]}")
            auto.from_pretrained(path, dtype=dtype).save_pretrained(out)
            AutoTokenizer.from_pretrained(path).save_pretrained(out)
            made[arch, dtype] = str(out)
        return made[arch, dtype]

    return make


def module_for(arch: str, path: str, adapter, dtype: str):
    from lit_lora.models import CausalLMModule, Seq2SeqModule
    from lit_lora.models.classifier import SequenceClassifierModule

    if arch == "t5":
        return Seq2SeqModule(path, adapter=adapter, dtype=dtype)
    if arch == "roberta":
        return SequenceClassifierModule(path, adapter=adapter, dtype=dtype, label_names=["a", "b", "c"])
    return CausalLMModule(path, adapter=adapter, dtype=dtype)


def quant_state_tensors(param) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps to dequantize ``param`` (none for a plain parameter)."""
    tensors = [param.SCB] if getattr(param, "SCB", None) is not None else []  # LLM.int8: a scale per row
    state = getattr(param, "quant_state", None)
    if state is not None:
        tensors += [state.absmax, state.code]
        if state.nested:
            tensors += [state.offset, state.state2.absmax, state.state2.code]
    return tensors


def loaded_bytes(model: torch.nn.Module) -> tuple[Counter, int]:
    """(bytes of the parameters and buffers by dtype, bytes of the quantization constants) of a loaded model."""
    params = {id(p): p for p in model.parameters()}.values()
    by_dtype: Counter = Counter()
    for t in [*params, *model.buffers()]:
        by_dtype[t.dtype] += tensor_bytes(t)
    constants = {(t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype): tensor_bytes(t)
                 for p in params for t in quant_state_tensors(p)}  # a tensor shared by layers counts once
    return by_dtype, sum(constants.values())


def meta_bytes_by_dtype(model: torch.nn.Module) -> Counter:
    by_dtype: Counter = Counter()
    for t in [*{id(p): p for p in model.parameters()}.values(), *model.buffers()]:
        by_dtype[t.dtype] += tensor_bytes(t)
    return by_dtype


def assert_estimate_equals_load(real, estimated) -> None:
    """``real`` is loaded by ``configure_model``; ``estimated`` (a fresh module of the same settings) is built
    by the estimate on the meta device."""
    real.configure_model()
    built = build(estimated)
    by_dtype, constants = loaded_bytes(real.model)
    assert meta_bytes_by_dtype(built.model) == by_dtype  # the same bytes in the same dtypes
    assert weight_bytes(built.model) == sum(by_dtype.values())
    assert quant_bytes(built, estimated.adapter) == constants
    assert (constants > 0) == (real.adapter.quantization_config() is not None)


@pytest.mark.parametrize("method", sorted(ADAPTERS))
@pytest.mark.parametrize("arch", sorted(REFERENCE))
def test_estimate_equals_the_loaded_tiny_twin(twin, arch, method):
    adapter, dtype, reference_dtype = ADAPTERS[method]
    path = twin(arch, config_dtype(REFERENCE[arch].config()) if reference_dtype else torch.float32)
    assert_estimate_equals_load(module_for(arch, path, adapter(), dtype), module_for(arch, path, adapter(), dtype))


def reference_configs() -> list[str]:
    """The shipped configs whose model is a reference architecture (``model_name_or_path`` in the registry)."""
    found = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        names = re.findall(r"^\s+model_name_or_path:\s*(\S+)", path.read_text(), flags=re.MULTILINE)
        if any(lookup(name) for name in names):
            found.append(path.relative_to(CONFIGS).as_posix())
    return found


@pytest.mark.parametrize("config", reference_configs())
def test_estimate_of_each_reference_config_equals_its_loaded_twin(twin, config):
    """The shipped configs' own adapters (targets, double quant or not, classifier heads kept unquantized,
    prompt tuning, no adapter), with the full-size model swapped for its tiny twin stored in its dtype."""
    from lit_lora.data.base import load_tokenizer

    cfg = parse_config(["--config", str(CONFIGS / config)])
    arch = lookup(cfg.model.init_args.model_name_or_path)
    name = TWIN_OF[arch.config_class.__name__]
    path = twin(name, config_dtype(arch.config()))
    cfg = parse_config(["--config", str(CONFIGS / config), "--model.init_args.model_name_or_path", path])
    modules = []
    for _ in range(2):
        module = model_of(cfg)  # with the label names the CLI links from the datamodule
        module.tokenizer = load_tokenizer(path)  # linked by the CLI too (a classifier pools on its pad token)
        modules.append(module)
    assert_estimate_equals_load(*modules)


def test_every_reference_architecture_has_a_twin_and_a_config():
    assert set(REFERENCE) == set(TWIN_OF.values())
    configs = {TWIN_OF[lookup(parse_config(["--config", str(CONFIGS / c)]).model.init_args.model_name_or_path)
                       .config_class.__name__] for c in reference_configs()}
    assert configs == set(TWIN_OF.values())
