"""`evaluate`: top-k accuracy on real CIFAR-10 models, COCO box AP on coco128-val, fidelity to a reference, the
data sources `datasets` reads, and results recorded in a compressed model's card."""

from __future__ import annotations

import json

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.data.loading import load_labelled
from compressor.errors import CompressorError
from compressor.evaluate.classification import TopKAccuracy, class_columns
from compressor.evaluate.coco import coco_box_ap
from compressor.evaluate.runner import evaluate
from compressor.sources import load_source
from tests.shared_assets import shared


@pytest.fixture(scope="module")
def coco128():
    return load_labelled(str(shared("coco128-val")))


def _as_results(annotations, shift=0.0):
    """Ground-truth boxes as detections, moved right by `shift` of their width."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]]} for a in annotations]


def test_ground_truth_as_predictions_scores_ap_one(coco128):
    metrics = coco_box_ap(coco128.coco, _as_results(coco128.coco["annotations"]))
    assert metrics == {name: 1.0 for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")}


def test_boxes_shifted_by_a_fifth_score_the_iou_two_thirds_value(coco128):
    # shifting a box by 0.2 of its width gives IoU 0.8/1.2 = 2/3: a match at the thresholds 0.50-0.65 (4 of the 10),
    # none at 0.70-0.95, so AP = 0.4, AP50 = 1, AP75 = 0 - up to a few crowded boxes that match a neighbour
    metrics = coco_box_ap(coco128.coco, _as_results(coco128.coco["annotations"], shift=0.2))
    assert metrics["AP"] == pytest.approx(0.4, abs=0.005)
    assert metrics["AP50"] > 0.99 and metrics["AP75"] < 0.01


def test_coco_folder_holds_every_image_and_box(coco128):
    assert coco128.task == "object-detection" and len(coco128) == 128
    assert len(coco128.coco["annotations"]) == 898
    part = coco128.subset(4)
    assert len(part) == 4 and {a["image_id"] for a in part.coco["annotations"]} == set(part.image_ids(0, 4))
    for image, entry in zip(part.images(0, 4), part.coco["images"]):
        assert (image.height, image.width) == (entry["height"], entry["width"])
    assert part.dataset["image_id"] == part.image_ids(0, 4)


def test_hub_style_detection_table_becomes_coco_ground_truth(coco128, tmp_path):
    import datasets

    boxes_xyxy = [[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 30.0, 30.0]]
    table = datasets.Dataset.from_dict({
        "image": coco128.dataset.select(range(2))["image"], "image_id": [7, 8],
        "objects": [{"bbox": [boxes_xyxy[0]], "category": [2]}, {"bbox": [boxes_xyxy[1]], "category": [0]}]})
    table = table.cast_column("objects", datasets.Sequence(
        {"bbox": datasets.Sequence(datasets.Value("float32"), length=4),
         "category": datasets.ClassLabel(names=["cat", "dog", "person"])}))
    table.to_parquet(str(tmp_path / "det.parquet"))
    data = load_labelled(str(tmp_path / "det.parquet"), box_format="xyxy")
    assert data.task == "object-detection"
    assert [a["bbox"] for a in data.coco["annotations"]] == [[10.0, 20.0, 100.0, 50.0], [0.0, 0.0, 30.0, 30.0]]
    assert [c["name"] for c in data.coco["categories"]] == ["cat", "dog", "person"]
    assert coco_box_ap(data.coco, _as_results(data.coco["annotations"]))["AP"] == pytest.approx(1.0, abs=1e-9)


def test_resnet20_top1_matches_an_independent_count(resnet20_checkpoint, cifar10_test_parquet):
    data = load_labelled(str(cifar10_test_parquet)).subset(300)
    loaded = load_source(resnet20_checkpoint)
    result = evaluate(loaded, data, batch_size=128, progress=False)
    images, labels = data.images(0, 300), torch.tensor(data.labels(0, 300))
    with torch.no_grad():
        logits = loaded.model(**loaded.adapter.prepare_inputs(images)).logits
    assert result["metrics"]["top1"] == int((logits.argmax(-1) == labels).sum()) / 300
    assert result["metrics"]["top5"] == int((logits.topk(5).indices == labels[:, None]).any(1).sum()) / 300
    assert result["examples"] == 300


def test_topk_accuracy_counts_hits_within_k():
    meter = TopKAccuracy()
    logits = torch.tensor([[0.1, 0.9, 0.0, 0, 0, 0], [0.9, 0.1, 0.0, 0, 0, 0], [0.5, 0.4, -1.0, 0.3, 0.2, 0.1]])
    meter.update(logits, torch.tensor([1, 1, 2]))
    assert meter.result() == {"top1": 1 / 3, "top5": 2 / 3}


def test_classes_are_matched_by_name_and_mismatches_refused():
    assert class_columns(["cat", "dog"], 2, ["cat", "dog"]) is None
    assert class_columns(["dog", "cat", "bird"], 3, ["cat", "dog"]).tolist() == [1, 0]
    assert class_columns(["LABEL_0", "LABEL_1"], 2, ["cat", "dog"]) is None  # unnamed: taken in order
    with pytest.raises(CompressorError, match="1000 classes"):
        class_columns(None, 1000, ["cat", "dog"])


def test_image_folder_classes_map_onto_the_model_by_name(resnet20_checkpoint, cifar10_test_parquet, tmp_path):
    rows = load_labelled(str(cifar10_test_parquet)).subset(100)
    names = rows.label_names
    for index, (image, label) in enumerate(zip(rows.images(0, 100), rows.labels(0, 100))):
        if names[label] in ("cat", "ship"):
            (tmp_path / names[label]).mkdir(exist_ok=True)
            image.save(tmp_path / names[label] / f"{index}.png")
    data = load_labelled(str(tmp_path))
    assert data.label_names == ["cat", "ship"]
    result = evaluate(load_source(resnet20_checkpoint), data, progress=False)
    assert result["metrics"]["top1"] > 0.5  # two real classes; a wrong column mapping would score near 0


def test_detr_on_coco_reports_ap_and_perfect_fidelity_to_itself(hf_detr_dir, coco128):
    loaded, twin = load_source(hf_detr_dir), load_source(hf_detr_dir)
    result = evaluate(loaded, coco128.subset(2), reference=twin, batch_size=2, progress=False)
    assert set(result["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= result["metrics"]["AP"] <= 1.0
    assert result["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert result["fidelity"]["logit_kl"] == pytest.approx(0.0, abs=1e-6)
    assert result["fidelity"]["box_l2"] == pytest.approx(0.0, abs=1e-6)


def test_fidelity_of_a_different_classifier_is_measured(resnet20_checkpoint, resnet56_checkpoint,
                                                        cifar10_test_parquet):
    data = load_labelled(str(cifar10_test_parquet)).subset(64)
    result = evaluate(load_source(resnet20_checkpoint), data, reference=load_source(resnet56_checkpoint),
                      progress=False)
    fidelity = result["fidelity"]
    assert 0.5 < fidelity["top1_agreement"] < 1.0 and fidelity["logit_kl"] > 0.01 and fidelity["cosine"] < 1.0


def test_cli_evaluate_writes_json_and_records_in_the_card(hf_vit_dir, cifar10_test_parquet, tmp_path, capsys):
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.rounds=8"], progress=False, latency_runs=1)
    out = compressor.save(result, tmp_path / "vit-act")
    args = ["evaluate", str(out), "--data", str(cifar10_test_parquet), "--limit", "16", "--quiet",
            "--reference", str(hf_vit_dir)]
    assert main(args + ["--json", str(tmp_path / "result.json")]) == 0
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "result.json").read_text())
    assert f"{written['metrics']['top1']:.4f}" in printed and written["examples"] == 16
    assert main(args) == 0  # the same evaluation again replaces the entry
    report = json.loads((out / "report.json").read_text())
    assert len(report["evaluation"]) == 1 and report["evaluation"][0]["fidelity"]["cosine"] > 0
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "top1" in card
    assert compressor.load(out) is not None  # the directory still loads


@pytest.mark.parametrize("args, message", [
    (["--data", "./missing.parquet"], "does not exist"),
    (["--data", "COCO", "--limit", "1"], "detection data"),
    (["--data", "CIFAR", "--limit", "0"], "--limit must be at least 1"),
    (["--data", "CIFAR", "--json", "."], "is a directory"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, resnet20_checkpoint, cifar10_test_parquet, capsys):
    args = [str(shared("coco128-val")) if a == "COCO" else str(cifar10_test_parquet) if a == "CIFAR" else a
            for a in args]
    assert main(["evaluate", str(resnet20_checkpoint), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_timm_models_evaluate_through_their_data_config(timm_vit_dir, cifar10_test_parquet):
    data = load_labelled(str(cifar10_test_parquet)).subset(16)
    loaded = load_source(timm_vit_dir)
    result = evaluate(loaded, data, reference=load_source(timm_vit_dir), progress=False)
    assert result["examples"] == 16 and 0.0 <= result["metrics"]["top1"] <= 1.0
    assert result["fidelity"]["top1_agreement"] == 1.0
    # the inputs were made by timm's eval transform at the model's 32×32, not by a transformers processor
    assert tuple(loaded.adapter.prepare_inputs(data.images(0, 2))["x"].shape) == (2, 3, 32, 32)
