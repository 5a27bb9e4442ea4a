"""`compress --eval-data DATA [--eval-limit N]`: the task metric of the original and of the compressed model, side
by side in report.json, the CLI table and the model card, measured by the `evaluate` runner on real data."""

from __future__ import annotations

import json

import compressor
from compressor.cli import main
from compressor.data.loading import load_labelled
from compressor.evaluate.runner import evaluate
from compressor.sources import load_source


def test_compress_with_eval_data_reports_top1_before_and_after_in_the_table_report_and_card(
        hf_vit_dir, cifar10_test_parquet, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["compress", str(hf_vit_dir), "--recipe", "tome", "--set", "token_merge.r=2", "--out", str(out),
                   "--eval-data", str(cifar10_test_parquet), "--eval-limit", "24", "--latency-runs", "1",
                   "--quiet"])
    assert status == 0
    table = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    top1 = report["metrics"]["top1"]
    assert report["metrics_measured_on"] == {"data": str(cifar10_test_parquet), "examples": 24}
    # the original's figure is exactly what `evaluate --limit 24` gives for it
    original = evaluate(load_source(str(hf_vit_dir)), load_labelled(str(cifar10_test_parquet)).subset(24),
                        progress=False)
    assert top1["before"] == original["metrics"]["top1"]
    assert 0 <= top1["after"] <= 1 and set(report["metrics"]) == {"top1", "top5"}

    row = f"top1 {top1['before']:.4f} {top1['after']:.4f} {top1['after'] - top1['before']:+.4f}"
    assert row in " ".join(table.split())
    assert f"Task metrics on {cifar10_test_parquet} (24 examples)" in table
    card = (out / "README.md").read_text()
    assert f"| top1 | {top1['before']:.4f} | {top1['after']:.4f} | {top1['after'] - top1['before']:+.4f} |" in card
    assert f"Task metrics on {cifar10_test_parquet} (24 examples)" in card


def test_compress_without_eval_data_measures_no_task_metric(compressed_vit_dir):
    report = json.loads((compressed_vit_dir / "report.json").read_text())
    assert "metrics" not in report and "metrics_measured_on" not in report


def test_api_compress_eval_data_gives_a_bare_encoder_its_embedding_cosine(hf_vit_encoder_dir, cifar10_test_parquet):
    result = compressor.compress(hf_vit_encoder_dir, "tome", overrides=["token_merge.r=2"], progress=False,
                                 latency_runs=1, eval_data=str(cifar10_test_parquet), eval_limit=8)
    cosine = result.report["metrics"]["embedding_cosine"]
    assert cosine["before"] == 1.0 and -1 <= cosine["after"] < 1
    assert result.report["metrics_measured_on"]["examples"] == 8



def test_with_a_distill_step_the_after_metric_is_said_to_precede_training():
    from compressor.report import describe_metric_data

    line = describe_metric_data({"metrics_measured_on": {"data": "test.parquet", "examples": 32,
                                                         "after": "the passes, before the distill step"}})
    assert line == "Task metrics on test.parquet (32 examples, after: the passes, before the distill step)"


def test_api_compress_eval_data_gives_a_detector_its_coco_ap_before_and_after(hf_detr_dir):
    from checkpoints_compressed import SMALL_ACT
    from shared_assets import shared

    coco = str(shared("coco128-val"))
    result = compressor.compress(hf_detr_dir, "act", overrides=SMALL_ACT, progress=False, latency_runs=1,
                                 eval_data=coco, eval_limit=8)
    metrics = result.report["metrics"]
    assert "AP" in metrics and "top1" not in metrics
    assert all(0 <= entry["before"] <= 1 and 0 <= entry["after"] <= 1 for entry in metrics.values())
    assert result.report["metrics_measured_on"] == {"data": coco, "examples": 8}
