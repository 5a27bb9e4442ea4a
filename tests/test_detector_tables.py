"""benchmarks/detector_tables.py's core on a tiny Conditional DETR and 4 canvases: every row measured, the exact row
the original model's AP, bad input refused in one line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "fixtures"))

import detector_canvases  # noqa: E402
import detector_tables  # noqa: E402
from test_conditional_detr import small_conditional_detr  # noqa: E402

SIZE = 128


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny Conditional DETR with CIFAR's class names, 4 val canvases (test split) and 4 train canvases."""
    from transformers import ConditionalDetrImageProcessor

    root = tmp_path_factory.mktemp("detector-tables")
    model = small_conditional_detr(num_labels=10)
    model.config.id2label = dict(enumerate(detector_canvases.CIFAR_NAMES))
    model.config.label2id = {name: index for index, name in model.config.id2label.items()}
    model.save_pretrained(root / "detector")
    ConditionalDetrImageProcessor(size={"height": SIZE, "width": SIZE}, do_pad=False).save_pretrained(
        root / "detector")
    detector_canvases.write_coco_val(root / "val", count=4, size=SIZE,
                                     source=detector_canvases.load_cifar("test", limit=16))
    detector_canvases.write_coco_train(root / "train", count=4, size=SIZE,
                                       source=detector_canvases.load_cifar("train", limit=16))
    context = detector_tables.Context(root / "detector", str(root / "val"), str(root / "train"), None, 2,
                                      root / "work")
    context.workdir.mkdir()
    return root, context


def test_every_row_has_finite_ap_and_the_exact_row_is_the_original_models_ap(tiny_setup):
    from compressor.evaluate.before_after import load_eval_data
    from compressor.evaluate.runner import evaluate
    from compressor.sources import load_source

    root, context = tiny_setup
    rows = detector_tables.run_tables(context, ["act", "clip"], distill_steps=1, log=lambda line: None)
    names = [row["setting"] for row in rows]
    assert names[0] == "exact" and "ACT L=32 r=8, every layer" in names and "token clip keep 0.5, value-norm ranking" in names
    assert len(rows) == 1 + len(detector_tables.ACT_ROUNDS) + len(detector_tables.CLIP_KEEP) * 2  # two rankings
    assert all(math.isfinite(row["AP"]) and math.isfinite(row["gflops_total"]) for row in rows)
    original = evaluate(load_source(root / "detector"), load_eval_data(str(root / "val"), None), progress=False)
    assert rows[0]["AP"] == original["metrics"]["AP"]
    clipped = rows[-1]
    assert clipped["gflops_encoder_decoder"] < rows[0]["gflops_encoder_decoder"]
    assert all(row["prototypes_per_token"] is not None for row in rows if row["setting"].startswith("ACT"))


def test_the_mtkd_row_trains_the_act_model_for_the_steps_asked(tiny_setup):
    _, context = tiny_setup
    trained = detector_tables.measure(detector_tables.mtkd_settings(steps=1, batch=2)[1], context)
    assert trained["distill_steps"] == 1 and math.isfinite(trained["AP"])


def test_the_mtkd_control_trains_the_exact_model_at_the_exact_models_cost(tiny_setup):
    _, context = tiny_setup
    exact = detector_tables.measure(detector_tables.act_settings()[0], context)
    control = detector_tables.measure(detector_tables.control_setting(steps=1, batch=2), context)
    assert control["distill_steps"] == 1 and math.isfinite(control["AP"])
    assert control["gflops_total"] == exact["gflops_total"]


def test_calibrating_on_the_val_canvases_is_refused_in_one_line(tiny_setup, capsys):
    root, _ = tiny_setup
    status = detector_tables.main(["--detector", str(root / "detector"), "--val", str(root / "val"),
                                   "--calib", str(root / "val"), "--out", str(root / "out.json")])
    assert status == 2 and not (root / "out.json").exists()
    assert capsys.readouterr().err.count("\n") == 1


def test_runs_made_in_parallel_merge_into_one_table_with_one_exact_row(tiny_setup, tmp_path):
    root, context = tiny_setup
    outputs = []
    for tables in (["clip"], ["calibrated"]):
        outputs.append(tmp_path / f"{tables[0]}.json")
        assert detector_tables.main(["--detector", str(root / "detector"), "--val", context.val, "--calib",
                                     context.calib, "--calib-samples", "2", "--tables", *tables, "--out",
                                     str(outputs[-1]), "--plot", str(tmp_path / "part.png")]) == 0
    merged = tmp_path / "merged.json"
    assert detector_tables.main(["--merge", *map(str, outputs), "--out", str(merged), "--plot",
                                 str(tmp_path / "merged.png")]) == 0
    rows = json.loads(merged.read_text())["rows"]
    assert [row["setting"] for row in rows].count("exact") == 1
    assert {row["table"] for row in rows[1:]} == {"clip", "calibrated"}
    assert (tmp_path / "merged.png").stat().st_size > 0
    # a table measured again (here: the clip run, one row changed) replaces its rows, in their place
    again = json.loads(outputs[0].read_text())
    again["rows"][1]["AP"] = -1.0
    (tmp_path / "again.json").write_text(json.dumps(again))
    assert detector_tables.main(["--merge", *map(str, outputs), str(tmp_path / "again.json"), "--out", str(merged),
                                 "--plot", str(tmp_path / "merged.png")]) == 0
    remerged = json.loads(merged.read_text())["rows"]
    assert [row["setting"] for row in remerged] == [row["setting"] for row in rows]
    assert remerged[1]["setting"] == again["rows"][1]["setting"] and remerged[1]["AP"] == -1.0


def test_merging_runs_of_different_detectors_is_refused_in_one_line(tmp_path, capsys):
    for name, detector in (("a", "one"), ("b", "two")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"detector": detector, "rows": []}))
    status = detector_tables.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                   "--out", str(tmp_path / "out.json")])
    assert status == 2 and not (tmp_path / "out.json").exists()
    assert "detector" in capsys.readouterr().err
