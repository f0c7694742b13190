"""Rerunning ``lit-lora sweep`` finds the points it wrote before, whatever order or spelling the grid is given in.

Dry runs only (``--dry_run`` writes ``sweep.json`` and the configs, runs nothing); a finished point is the files
its run leaves, written by hand.
"""

from __future__ import annotations

import json

from harness import DEMO, cli_run

LR, R, SOURCE = "model.init_args.optim.lr", "model.init_args.adapter.init_args.r", "data.init_args.source"


def sweep(tmp_path, *args: str):
    return cli_run(["sweep", "--config", DEMO, "--runs_dir", str(tmp_path), "--name", "s", "--dry_run", *args])


def points(tmp_path) -> list[tuple[str, dict]]:
    return [(p["name"], p["overrides"]) for p in json.loads((tmp_path / "s" / "sweep.json").read_text())["points"]]


def finish(run_dir) -> None:
    """What a finished run leaves: its final adapter, ``run_summary.json`` and exit status 0."""
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    (run_dir / "run_summary.json").write_text(json.dumps({"adapter_dir": str(run_dir / "adapter")}))
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "local", "returncode": 0}))


def test_the_grid_options_in_another_order_name_the_same_points(tmp_path):
    """Before: ``r=2-lr=0.001`` … were new points beside ``lr=0.001-r=2`` …, the same configs trained twice."""
    assert sweep(tmp_path, "--grid", f"{LR}=1e-3,3e-3", "--grid", f"{R}=2").returncode == 0
    before = points(tmp_path)
    again = sweep(tmp_path, "--grid", f"{R}=2,4", "--grid", f"{LR}=1e-3,3e-3")
    assert again.returncode == 0, again.stderr
    assert points(tmp_path)[:2] == before and [name for name, _ in points(tmp_path)] == \
        ["lr=0.001-r=2", "lr=0.003-r=2", "lr=0.001-r=4", "lr=0.003-r=4"]


def test_a_value_added_that_relabels_the_others_keeps_their_points(tmp_path):
    """``a/b`` is labelled ``a_b``; once ``a_b`` is swept too, both would be renumbered (``a_b.0``, ``a_b.1``) and
    the point that ran as ``source=a_b`` would be listed and run a second time under a new name."""
    assert sweep(tmp_path, "--grid", f"{SOURCE}=a/b").returncode == 0
    again = sweep(tmp_path, "--grid", f"{SOURCE}=a/b,a_b")
    assert again.returncode == 0, again.stderr
    listed = points(tmp_path)
    assert listed[0] == ("source=a_b", {SOURCE: "a/b"}) and len(listed) == 2
    assert listed[1][1] == {SOURCE: "a_b"} and listed[1][0] != "source=a_b"


def test_a_finished_point_given_with_its_value_spelled_otherwise_is_accepted_and_kept(tmp_path):
    """Before: refused as "ran with other settings … would change:" followed by no setting (only the comment
    header of its point.yaml, which spells the value as given, differed)."""
    assert sweep(tmp_path, "--grid", f"{LR}=1e-3").returncode == 0
    config = tmp_path / "s" / "lr=0.001" / "point.yaml"
    finish(config.parent)
    written = config.read_text()
    respelled = sweep(tmp_path, "--grid", f"{LR}=0.001,3e-3")
    assert respelled.returncode == 0, respelled.stderr
    assert config.read_text() == written  # its digest unchanged: a stopped point would still resume
    assert [name for name, _ in points(tmp_path)] == ["lr=0.001", "lr=0.003"]


def test_zero_seeds_is_refused_not_a_sweep_without_seeds(tmp_path):
    result = sweep(tmp_path, "--grid", f"{R}=2", "--seeds", "0")
    assert result.returncode != 0 and "--seeds 0: expected 1 or more" in result.stderr, result.stderr
    assert not (tmp_path / "s").exists()
