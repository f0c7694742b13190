"""``lit-lora compare``'s numbers, recomputed: each column's BLEU / ROUGE / exact match equal torchmetrics run directly
on that column's written predictions, both columns scored the same rows, and the console prints report.json's
numbers."""

import json

import pytest
from test_seq2seq_compare import compare, trained  # noqa: F401  (the fixture: a LoRA-tuned tiny T5)
from torchmetrics.text import ROUGEScore, SacreBLEUScore


def test_report_numbers_are_the_predictions_scored_directly(trained, tmp_path, capsys):  # noqa: F811
    report, _ = compare(trained, tmp_path)
    console = capsys.readouterr().out
    rows = {side: [json.loads(line) for line in (tmp_path / side / "predictions.jsonl").read_text().splitlines()]
            for side in ("base", "tuned")}
    assert [(r["prompt"], r["reference"]) for r in rows["base"]] == [(r["prompt"], r["reference"]) for r in
                                                                      rows["tuned"]]
    for side, written in rows.items():
        preds, refs = [r["prediction"] for r in written], [r["reference"] for r in written]
        bleu = float(SacreBLEUScore(tokenize="13a")(preds, [[r] for r in refs]))
        rouge = ROUGEScore(rouge_keys="rougeL")(preds, refs)
        exact = sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(preds, refs)) / len(refs)
        metrics = {name: row[side] for name, row in report["metrics"].items()}
        assert metrics["bleu"] == pytest.approx(bleu, abs=1e-6), side
        assert metrics["rougeL_fmeasure"] == pytest.approx(float(rouge["rougeL_fmeasure"]), abs=1e-6), side
        assert metrics["exact_match"] == pytest.approx(exact), side
        assert metrics["generated_rows"] == len(written) == report["run"]["rows"]
    for name in ("loss", "bleu", "rougeL_fmeasure"):
        row = report["metrics"][name]
        assert f"{row['base']:.4g} -> {row['tuned']:.4g}" in console, name
