"""The detector fixture's trainer (benchmarks/fixtures/train_detector.py) end to end in its quick mode, and its
validation canvases: deterministic, built from CIFAR-10's test split only.

The quick mode is a tiny real Conditional DETR on real CIFAR pixels for a few steps: it proves the plumbing
(pretraining, backbone transfer, Hungarian loss, checkpoint, resume, COCO evaluation, export), not accuracy.
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "benchmarks" / "fixtures"
sys.path.insert(0, str(FIXTURES))

import detector_canvases  # noqa: E402
import train_detector  # noqa: E402


def train(*args: str) -> int:
    """The script's main in this process, leaving torch's thread count as the test session had it."""
    import torch

    return train_detector.main([*args, "--threads", str(torch.get_num_threads())])


def events(run_dir: Path, name: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == name]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("detector-run")
    assert train("--quick", "--run-dir", str(run_dir), "--steps", "4") == 0
    return run_dir


def test_quick_run_pretrains_loads_every_backbone_tensor_and_trains(quick_run):
    assert events(quick_run, "backbone_done")[0]["top1_test_64px"] is not None
    start = events(quick_run, "detector_start")[0]
    assert start["backbone_tensors_loaded"] > 0  # load_pretrained_backbone raises unless the keys match exactly
    steps = [record["step"] for record in events(quick_run, "detector_train")]
    assert steps == [1, 2, 3, 4]
    assert all(record["loss"] > 0 for record in events(quick_run, "detector_train"))
    assert [record["step"] for record in events(quick_run, "detector_eval")] == [3, 4]


def test_a_second_start_without_resume_is_refused(quick_run, capsys):
    assert train("--quick", "--run-dir", str(quick_run)) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_from_the_saved_step(quick_run):
    assert train("--run-dir", str(quick_run), "--resume", "--steps", "6") == 0
    assert events(quick_run, "detector_resumed")[0]["step"] == 4
    assert [record["step"] for record in events(quick_run, "detector_train")] == [1, 2, 3, 4, 5, 6]
    assert len(events(quick_run, "backbone_done")) == 1  # the finished backbone phase is not redone


def test_resume_with_new_learning_rates_trains_at_them_and_records_the_change(tmp_path):
    import torch

    run_dir = tmp_path / "run"
    assert train("--quick", "--run-dir", str(run_dir), "--steps", "2") == 0
    assert train("--run-dir", str(run_dir), "--resume", "--steps", "3", "--backbone-lr", "0.0005",
                 "--lr", "0.0002", "--lr-drop-at", "0.9") == 0
    resumed = events(run_dir, "detector_resumed")[0]
    assert (resumed["backbone_lr"], resumed["lr"], resumed["lr_drop_step"]) == (0.0005, 0.0002, 2)
    state = torch.load(run_dir / "detector-latest-state.pt", weights_only=True)
    # the saved optimizer trained at the new rates (step 2 is past the drop at 0.9 * 3 = 2: ×0.1)
    backbone_group, rest_group = state["optimizer"]["param_groups"]
    assert backbone_group["initial_lr"] == 0.0005 and rest_group["initial_lr"] == 0.0002
    assert backbone_group["lr"] == pytest.approx(0.0005 * 0.1) and rest_group["lr"] == pytest.approx(0.0002 * 0.1)
    assert state["schedule_changes"][-1] == {"step": 2, "backbone_lr": 0.0005, "lr": 0.0002, "steps": 3,
                                          "lr_drop_step": 2}
    assert state["schedule_changes"][0]["step"] == 0 and len(state["schedule_changes"]) == 2


def test_stop_at_ends_training_early_on_the_full_schedule_and_the_card_says_how_to_repeat_it(tmp_path):
    run_dir = tmp_path / "run"
    assert train("--quick", "--run-dir", str(run_dir), "--steps", "6", "--stop-at", "3") == 0
    assert [record["step"] for record in events(run_dir, "detector_train")] == [1, 2, 3]
    assert [record["step"] for record in events(run_dir, "detector_eval")] == [3]  # the last step is scored
    info = json.loads((run_dir / "export" / "train_info.json").read_text())
    assert info["steps"] == 3 and info["schedule_changes"][0]["lr_drop_step"] == int(0.85 * 6)
    assert "--stop-at 3" in (run_dir / "export" / "README.md").read_text()


def test_export_loads_with_its_processor_and_keeps_val_canvases_at_their_size(quick_run, tmp_path):
    from PIL import Image
    from transformers import ConditionalDetrForObjectDetection, ConditionalDetrImageProcessor

    target = tmp_path / "detector"
    assert train("--run-dir", str(quick_run), "--export", str(target)) == 0
    model = ConditionalDetrForObjectDetection.from_pretrained(target)
    processor = ConditionalDetrImageProcessor.from_pretrained(target)
    info = json.loads((target / "train_info.json").read_text())
    assert info["steps"] == events(quick_run, "detector_train")[-1]["step"]
    assert set(info["val"]) >= {"AP", "AP50"} and set(info["val_first_100"]) >= {"AP", "AP50"}
    card = (target / "README.md").read_text()
    assert f"{info['val']['AP']:.3f}" in card and "from_pretrained" in card
    assert info["data"]["encoder_tokens_at_val_size"] == (info["config"]["val_size"] // 8) ** 2  # stride 8
    assert model.config.id2label[0] == "airplane" and model.config.id2label[9] == "truck"
    size = info["config"]["val_size"]
    canvas = Image.open(next((quick_run / "val" / "val2017").glob("*.png")))
    inputs = processor(images=[canvas], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (size, size) == canvas.size
    outputs = model(**inputs)
    assert outputs.pred_boxes.shape == (1, info["config"]["queries"], 4)


def file_digests(directory: Path) -> dict[str, str]:
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_val_canvases_are_deterministic_and_come_from_the_test_split(tmp_path, monkeypatch):
    splits = []
    real_load = detector_canvases.load_cifar

    def spying_load(split, limit=None):
        splits.append(split)
        return real_load(split, limit)

    monkeypatch.setattr(detector_canvases, "load_cifar", spying_load)
    first, second = tmp_path / "a", tmp_path / "b"
    detector_canvases.write_coco_val(first, count=6, size=128)
    detector_canvases.write_coco_val(second, count=6, size=128)
    assert splits == ["test", "test"]
    assert file_digests(first) == file_digests(second)
    ground_truth = json.loads((first / "annotations" / "instances_val2017.json").read_text())
    assert [category["id"] for category in ground_truth["categories"]] == list(range(1, 11))
    assert {annotation["iscrowd"] for annotation in ground_truth["annotations"]} == {0}
    for annotation in ground_truth["annotations"]:
        x, y, width, height = annotation["bbox"]
        assert annotation["area"] == width * height and x + width <= 128 and y + height <= 128


def test_canvases_refuse_the_wrong_split():
    train_images = detector_canvases.CifarImages(*[None, None], split="train")
    with pytest.raises(ValueError, match="test split"):
        detector_canvases.write_coco_val(Path("/nonexistent"), source=train_images)


def test_paper_init_spreads_the_reference_points_over_the_canvas():
    """HF's N(0, 0.02) init puts every Conditional DETR reference point at the centre; the paper's does not."""
    import torch

    config = train_detector.RunConfig(**{**train_detector.QUICK, "queries": 30})
    spreads = {}
    for init in ("hf", "paper"):
        model = train_detector.build_detector(train_detector.RunConfig(**{**vars(config), "init": init}))
        with torch.no_grad():
            points = model.model.decoder.ref_point_head(model.model.query_position_embeddings.weight).sigmoid()
        spreads[init] = float(points.std(dim=0).min())
    assert spreads["hf"] < 0.03 < 0.1 < spreads["paper"]
