"""``lit-lora sweep report`` of points whose last validation diverged (``nan`` in ``metrics.csv``).

The report is built from hand-written run directories (what a finished point leaves), no training.
"""

from __future__ import annotations

import csv
import json
import math

from harness import cli_run

from lit_lora.sweep.report import build_report, last_validation_metrics
from lit_lora.sweep.state import save_sweep


def finished_point(sweep_dir, index: int, name: str, labels: dict, val_losses: list) -> dict:
    """A finished point's run directory (final files, exit 0) whose ``metrics.csv`` logged ``val_losses``."""
    run_dir = sweep_dir / name
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    (run_dir / "run_summary.json").write_text(json.dumps({"adapter_dir": str(run_dir / "adapter")}))
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "local", "returncode": 0}))
    rows = "".join(f"{10 * (i + 1)},{loss},\n" for i, loss in enumerate(val_losses))
    (run_dir / "metrics.csv").write_text("step,val_loss,train_loss\n" + rows)
    return {"index": index, "name": name, "run_dir": name, "labels": labels, "overrides": {},
            "config": f"{name}/point.yaml"}


def write_sweep(sweep_dir, points: list[dict]) -> None:
    save_sweep(sweep_dir, {"name": "div", "configs": [], "base_args": [], "points": points, "slurm": [],
                           "axes": [{"key": "model.init_args.optim.lr", "label": "lr", "values": []},
                                    {"key": "seed_everything", "label": "seed", "values": ["0", "1"]}]})


def table_row(report: str, point: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(f"| [{point}]("))


def test_a_last_validation_loss_of_nan_is_reported_not_replaced_by_an_earlier_one(tmp_path):
    """Before: the nan was skipped, so the point showed (and won ★ with) the loss of an earlier validation."""
    assert math.isnan(last_validation_metrics(_csv(tmp_path, ["2.0", "nan"]))["val_loss"])
    write_sweep(tmp_path, [finished_point(tmp_path, 0, "lr=1-seed=0", {"lr": "1", "seed": "0"}, [1.0, "nan"]),
                           finished_point(tmp_path, 1, "lr=0.1-seed=0", {"lr": "0.1", "seed": "0"}, [2.5, 2.4])])
    build_report(tmp_path)
    rows = {r["point"]: r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert rows["lr=1-seed=0"]["val_loss"] == "nan" and rows["lr=0.1-seed=0"]["val_loss"] == "2.4"
    report = (tmp_path / "report.md").read_text()
    assert "| nan |" in table_row(report, "lr=1-seed=0") and "★" not in table_row(report, "lr=1-seed=0")
    assert "**2.4** ★" in table_row(report, "lr=0.1-seed=0")


def test_a_diverged_seed_makes_its_groups_mean_nan_not_the_mean_of_the_others(tmp_path):
    """Before: the group's mean left the nan seed out (one seed's 1.0, shown as the best mean)."""
    write_sweep(tmp_path, [
        finished_point(tmp_path, 0, "lr=1-seed=0", {"lr": "1", "seed": "0"}, [1.0]),
        finished_point(tmp_path, 1, "lr=1-seed=1", {"lr": "1", "seed": "1"}, [1.5, "nan"]),
        finished_point(tmp_path, 2, "lr=0.1-seed=0", {"lr": "0.1", "seed": "0"}, [2.0]),
        finished_point(tmp_path, 3, "lr=0.1-seed=1", {"lr": "0.1", "seed": "1"}, [2.2])])
    build_report(tmp_path)
    seeds = (tmp_path / "report.md").read_text().split("## Mean ± std over seeds", 1)[1]
    diverged = next(line for line in seeds.splitlines() if line.startswith("| lr=1 |"))
    assert diverged == "| lr=1 | 2 | nan |", diverged
    assert "**2.1** ★" in next(line for line in seeds.splitlines() if line.startswith("| lr=0.1 |"))


def test_an_unreadable_sweep_json_is_one_line_naming_it(tmp_path):
    """Before: ``sweep report`` ended in a JSONDecodeError traceback (a sweep.json cut short, e.g. a full disk)."""
    (tmp_path / "sweep.json").write_text('{"name": "div", "poi')
    result = cli_run(["sweep", "report", str(tmp_path)])
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"lit-lora: SweepFileError: {tmp_path / 'sweep.json'} is not readable JSON"), result.stderr


def _csv(tmp_path, losses: list[str]):
    path = tmp_path / "alone.csv"
    path.write_text("step,val_loss\n" + "".join(f"{i},{loss}\n" for i, loss in enumerate(losses)))
    return path
