"""`sweep`: every grid setting compressed and evaluated, a table and a plot of the metric against FLOPs."""

from __future__ import annotations

import json

import pytest

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.sweep import parse_grid


def test_grid_expands_to_every_combination():
    assert parse_grid(["act.rounds=2,4", "act.bucket_width=1,8"]) == [
        ["act.rounds=2", "act.bucket_width=1"], ["act.rounds=2", "act.bucket_width=8"],
        ["act.rounds=4", "act.bucket_width=1"], ["act.rounds=4", "act.bucket_width=8"]]
    with pytest.raises(CompressorError, match="expected PASS.PARAM"):
        parse_grid(["act.rounds"])


def test_sweep_writes_table_json_and_plot(vit_cifar10_dir, cifar10_test_parquet, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(vit_cifar10_dir), "--recipe", "act", "--grid", "act.rounds=1,16", "--data",
                 str(cifar10_test_parquet), "--limit", "8", "--out", str(out), "--quiet"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [row["setting"] for row in sweep["rows"]] == ["original", "act.rounds=1", "act.rounds=16"]
    original, coarse, fine = sweep["rows"]
    assert coarse["flops"] < original["flops"]  # one round: coarse clusters, fewer prototypes
    assert fine["flops"] > coarse["flops"]
    assert fine["fidelity"]["logit_kl"] < coarse["fidelity"]["logit_kl"]  # the trained ViT: finer is closer
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| act.rounds=16 |" in (out / "sweep.md").read_text() and "| original |" in capsys.readouterr().out


def test_a_bad_grid_key_fails_before_any_work(hf_vit_dir, cifar10_test_parquet, tmp_path, capsys):
    assert main(["sweep", str(hf_vit_dir), "--recipe", "act", "--grid", "act.roundz=1,2", "--data",
                 str(cifar10_test_parquet), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "roundz" in capsys.readouterr().err and not (tmp_path / "s").exists()
