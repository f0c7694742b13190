"""QLoRA on an encoder-decoder: 4-bit NF4 q/k/v/o layers with LoRA train and generate on the CPU."""

import torch
from harness import quiet_trainer

from lit_lora.adapters import QLoRA
from lit_lora.data import PythonCodesDataModule
from lit_lora.evaluation.generation import GenerationSettings
from lit_lora.models import Seq2SeqModule


def test_qlora_seq2seq_trains_and_generates(tiny_model, tmp_path):
    path = tiny_model("t5")
    dm = PythonCodesDataModule(tokenizer_name_or_path=path, max_samples=32, batch_size=8, max_eval_samples=4,
                               template="plain")
    module = Seq2SeqModule(path, adapter=QLoRA(r=4, alpha=32, dropout=0.01, target_modules=["q", "k", "v", "o"],
                                                compute_dtype="float32"),
                           tokenizer=dm.tokenizer, evaluation=GenerationSettings(max_new_tokens=8))
    trainer = quiet_trainer(max_steps=2, default_root_dir=str(tmp_path))
    trainer.fit(module, dm)
    assert dm.encoder_decoder  # declared by Seq2SeqModule, never read from the model config
    q = module.model.base_model.model.encoder.block[0].layer[0].SelfAttention.q
    assert type(q.base_layer).__name__ == "Linear4bit"
    assert any(p.requires_grad for n, p in module.model.named_parameters() if "lora_" in n)
    result = trainer.test(module, dm, verbose=False)[0]
    assert torch.isfinite(torch.tensor(result["test_loss"])) and result["test_generated_rows"] == len(module.predictions)
    assert (tmp_path / "predictions.jsonl").read_text().count("\n") == len(module.predictions)
