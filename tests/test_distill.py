"""`distill`: losses, a reproducible accelerate loop that resumes after a kill, two CPU processes matching one,
the best student saved in the compressed-model format, and DETR's MTKD."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import compressor
from compressor.cli import main
from compressor.data.loading import load_labelled
from compressor.distill import trainer
from compressor.distill.losses import feature_mse, logits_kl, matched_layers
from compressor.distill.trainer import Distiller, DistillConfig
from compressor.sources import load_source
from tests.shared_assets import shared

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vit_student(hf_vit_dir, tmp_path_factory) -> Path:
    """The small HF ViT compressed with coarse ACT (so it differs from its teacher)."""
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.rounds=1", "act.bucket_width=16"],
                                 progress=False, latency_runs=1)
    return compressor.save(result, tmp_path_factory.mktemp("student") / "vit-act")


@pytest.fixture(scope="module")
def cifar_rows(cifar10_train_parquet):
    return load_labelled(str(cifar10_train_parquet)).subset(48)


def _run(student_dir, data, out, resume=False, **overrides):
    config = DistillConfig(**{"steps": 6, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3,
                              **overrides})
    student = load_source(student_dir)
    teacher = load_source(student.base_model)
    return Distiller(student, teacher, data, out, config, progress=False).run(resume=resume)


def test_kl_is_zero_for_equal_logits_and_scaled_by_temperature_squared():
    logits = torch.randn(4, 10)
    assert logits_kl(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(4, 10)
    plain = torch.nn.functional.kl_div(torch.log_softmax(other / 3, -1), torch.log_softmax(logits / 3, -1),
                                       log_target=True, reduction="batchmean")
    assert logits_kl(other, logits, 3.0).item() == pytest.approx(9 * plain.item(), rel=1e-5)


def test_layers_are_matched_first_to_first_and_last_to_last():
    assert matched_layers(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert matched_layers(3, 7) == [(0, 0), (1, 3), (2, 6)]
    hidden = tuple(torch.randn(2, 5, 4) for _ in range(3))
    assert feature_mse(hidden, hidden).item() == 0.0


def test_same_seed_reproduces_and_resume_after_a_kill_continues_exactly(vit_student, cifar_rows, tmp_path,
                                                                       monkeypatch):
    _run(vit_student, cifar_rows, tmp_path / "a")
    _run(vit_student, cifar_rows, tmp_path / "b")
    weights_a = load_file(str(tmp_path / "a" / "best" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "best" / "model.safetensors"))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)

    def killed(step):
        if step == 3:  # after the checkpoint at step 2, before the one at step 4
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "on_step_end", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(vit_student, cifar_rows, tmp_path / "c")
    monkeypatch.setattr(trainer, "on_step_end", lambda step: None)
    summary = _run(vit_student, cifar_rows, tmp_path / "c", resume=True)
    assert summary["steps"] == 6
    weights_c = load_file(str(tmp_path / "c" / "best" / "model.safetensors"))
    assert all(torch.allclose(weights_a[k], weights_c[k], atol=1e-6) for k in weights_a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4, 5, 6]  # step 3 ran twice: once before the kill, once after resuming
    changed = [k for k in weights_a if not torch.equal(weights_a[k], load_file(
        str(vit_student / "model.safetensors"))[k])]
    assert changed  # training really moved the weights


def test_best_student_reloads_in_the_compressed_format(vit_student, cifar_rows, tmp_path):
    _run(vit_student, cifar_rows, tmp_path / "run", steps=2)
    best = load_source(tmp_path / "run" / "best")
    assert best.compression is not None and best.base_model == load_source(vit_student).base_model
    report = json.loads((tmp_path / "run" / "best" / "report.json").read_text())
    assert report["distillation"]["steps"] == 2
    assert "## Distillation" in (tmp_path / "run" / "best" / "README.md").read_text()
    inputs = best.adapter.example_inputs(batch_size=2)
    with torch.no_grad():
        assert torch.isfinite(best.model(**inputs).logits).all()


def _cli(*args, launcher=(sys.executable,)):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, str(REPO / "cli.py"), *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_two_cpu_processes_match_one_with_the_same_global_batch(vit_student, cifar10_train_parquet, tmp_path):
    args = ["distill", str(vit_student), "--data", str(cifar10_train_parquet), "--limit", "32", "--batch-size", "8",
            "--steps", "3", "--lr", "0.001", "--log-every", "1", "--quiet"]
    one = _cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    two = _cli(*args, "--out", str(tmp_path / "two"), launcher=(str(torchrun), "--nproc_per_node", "2"))
    assert two.returncode == 0, two.stderr[-2000:]
    weights_one = load_file(str(tmp_path / "one" / "best" / "model.safetensors"))
    weights_two = load_file(str(tmp_path / "two" / "best" / "model.safetensors"))
    original = load_file(str(vit_student / "model.safetensors"))
    for key in weights_one:
        assert torch.allclose(weights_one[key], weights_two[key], atol=1e-5), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # written once by the main process: not two lone processes on the whole batch
    assert any(not torch.equal(weights_one[k], original[k]) for k in original)


@pytest.fixture(scope="module")
def detr_act_student(tmp_path_factory) -> Path:
    """A small DETR with COCO's 91 class ids (as facebook/detr-resnet-50), compressed with ACT at its coarsest; no dropout,
    so that one process and two draw nothing at random differently."""
    from transformers import DetrForObjectDetection, DetrImageProcessor

    from tests.checkpoints_hf import small_detr_config

    config = small_detr_config()
    config.num_labels, config.dropout = 91, 0.0
    torch.manual_seed(0)
    teacher_dir = tmp_path_factory.mktemp("detr") / "detr"
    teacher = DetrForObjectDetection(config)
    with torch.no_grad():  # random attention is near uniform, so clustering queries would change nothing: sharpen it
        for layer in teacher.model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    teacher.save_pretrained(teacher_dir)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(teacher_dir)
    result = compressor.compress(teacher_dir, "act", overrides=["act.rounds=1", "act.bucket_width=1000"],
                                 progress=False, latency_runs=1)  # one cluster per head: far from exact
    return compressor.save(result, teacher_dir.parent / "detr-act")


def test_detr_mtkd_trains_the_act_and_the_original_path_together(detr_act_student, tmp_path):
    data = load_labelled(str(shared("coco128-val"))).subset(4)
    student = load_source(detr_act_student)
    Distiller(student, load_source(student.base_model), data, tmp_path / "run", DistillConfig(
        steps=2, batch_size=2, log_every=1, checkpoint_every=2), progress=False).run()
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert {"task", "task_original", "box_l2", "kd"} <= set(record) and record["box_l2"] > 0


def _same_size_coco(folder: Path, count: int) -> Path:
    """`count` coco128-val images of one size (640×480), so that one process and two pad batches alike."""
    source = shared("coco128-val")
    coco = json.loads((source / "annotations" / "instances_val2017.json").read_text())
    images = [image for image in coco["images"] if (image["width"], image["height"]) == (640, 480)][:count]
    ids = {image["id"] for image in images}
    (folder / "val2017").mkdir(parents=True)
    (folder / "annotations").mkdir()
    for image in images:
        (folder / "val2017" / image["file_name"]).symlink_to(source / "val2017" / image["file_name"])
    coco.update(images=images, annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
    (folder / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    return folder


def test_detr_mtkd_in_two_cpu_processes_matches_one(detr_act_student, tmp_path):
    """The MTKD losses (logits KL and the L2 between the two paths' boxes) are means over queries, so two halves of a
    batch give the same gradient as the whole. DETR's Hungarian task loss is not (its class weights and box count
    normalise per process), so it is off here; it is trained in the test above."""
    data = _same_size_coco(tmp_path / "coco", 4)
    args = ["distill", str(detr_act_student), "--data", str(data), "--batch-size", "4", "--steps", "2",
            "--lr", "0.001", "--task-weight", "0", "--quiet"]
    one = _cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    two = _cli(*args, "--out", str(tmp_path / "two"), launcher=(str(torchrun), "--nproc_per_node", "2"))
    assert two.returncode == 0, two.stderr[-2000:]
    logged = json.loads((tmp_path / "two" / "log.jsonl").read_text().splitlines()[0])
    assert {"box_l2", "task_original"} <= set(logged)  # the original path ran beside the ACT path in each process
    weights_one = load_file(str(tmp_path / "one" / "best" / "model.safetensors"))
    weights_two = load_file(str(tmp_path / "two" / "best" / "model.safetensors"))
    original = load_file(str(detr_act_student / "model.safetensors"))
    for key in weights_one:
        assert torch.allclose(weights_one[key], weights_two[key], atol=1e-5), key
    assert any(not torch.equal(weights_one[k], original[k]) for k in original)


def test_distill_needs_a_compressed_student(resnet20_checkpoint, cifar10_train_parquet, tmp_path, capsys):
    assert main(["distill", str(resnet20_checkpoint), "--data", str(cifar10_train_parquet), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a directory written by compress" in err and err.count("\n") == 1


def test_distill_push_to_publishes_the_best_student(vit_student, cifar10_train_parquet, writable_hub, tmp_path,
                                                    capsys):
    status = main(["distill", str(vit_student), "--data", str(cifar10_train_parquet), "--limit", "16",
                   "--batch-size", "8", "--steps", "1", "--out", str(tmp_path / "run"), "--quiet",
                   "--push-to", "my-org/vit-act-distilled"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    files = writable_hub.files("my-org/vit-act-distilled")
    best = tmp_path / "run" / "best"
    assert files["model.safetensors"] == (best / "model.safetensors").read_bytes()
    assert "## Distillation" in files["README.md"].decode()
    assert json.loads(captured.out)["steps"] == 1  # stdout stays the JSON summary; the "pushed" line is on stderr
    assert "pushed" in captured.err
