"""A recipe's distill step trains the compressed model in memory against the original `compress` kept: the source is
loaded once, the student is written once (as the resume point) and never reloaded, and the run is the one the old
save-and-reload path gave (same losses, step by step), on real CIFAR ResNet-20 weights and CIFAR-10 images."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

import compressor
import compressor.distill.trainer
import compressor.pipeline
import compressor.serialization
import compressor.sources
from compressor.cli import main
from compressor.distill.recipe_stage import STUDENT, training_directory
from compressor.distill.settings import config_from_params
from compressor.distill.trainer import Distiller
from compressor.recipe import Recipe
from compressor.sources import load_source
from tests.shared_assets import shared

RECIPE = """description: ResNet tied per block, then distilled for two steps
compress_stage:
  tied_weights:
    share: block
distill_stage:
  distill:
    steps: 2
    batch_size: 8
    lr: 0.001
    limit: 16
    log_every: 1
"""


@pytest.fixture(scope="module")
def resnet20() -> Path:
    return shared("resnet-cifar10/resnet20.safetensors")


def _losses(run: Path) -> list[float]:
    return [record["loss"] for record in map(json.loads, (run / "log.jsonl").read_text().splitlines())
            if "loss" in record]


def test_compress_with_a_distill_step_loads_the_source_once_and_never_reloads_the_student(
        resnet20, cifar10_train_parquet, tmp_path, monkeypatch):
    loads, rebuilds = [], []

    def spy_load(source, *args, **kwargs):
        loads.append(str(source))
        return load_source(source, *args, **kwargs)

    real_load_compressed = compressor.serialization.load_compressed

    def spy_load_compressed(directory, *args, **kwargs):
        rebuilds.append(str(directory))
        return real_load_compressed(directory, *args, **kwargs)

    for module in (compressor.sources, compressor.pipeline):
        monkeypatch.setattr(module, "load_source", spy_load)
    monkeypatch.setattr(compressor.serialization, "load_compressed", spy_load_compressed)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(resnet20), "--recipe", str(recipe), "--out", str(out), "--quiet",
                 "--latency-runs", "1", "--data", str(cifar10_train_parquet)]) == 0
    assert loads == [str(resnet20)] and rebuilds == []
    # the student is still written where `cli.py distill ... --resume` starts from, and the output is trained
    assert (training_directory(out) / STUDENT / "model.safetensors").is_file()
    assert json.loads((out / "report.json").read_text())["distillation"]["steps"] == 2


def test_training_in_memory_gives_the_losses_of_the_old_save_and_reload_path(resnet20, cifar10_train_parquet,
                                                                             tmp_path):
    recipe = Recipe.from_yaml(RECIPE)
    new = compressor.compress(str(resnet20), recipe, progress=False, latency_runs=1)
    # the teacher is the original as loaded: it computes what a fresh load of the source computes
    fresh = load_source(str(resnet20)).model.eval()
    example = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(new.original.eval()(pixel_values=example).logits, fresh(pixel_values=example).logits)
    compressor.distill_and_save(new, tmp_path / "new", data=str(cifar10_train_parquet), progress=False)

    # the old path: write the student, reload it and load the teacher from the source again, then train
    old = compressor.compress(str(resnet20), recipe, progress=False, latency_runs=1)
    old.recipe = old.recipe.with_overrides([f"distill.data={cifar10_train_parquet}"])
    compressor.save(old, tmp_path / "old" / STUDENT)
    params = old.recipe.distill().params
    data = compressor.data.loading.load_labelled(params["data"]).subset(params["limit"])
    Distiller(load_source(str(tmp_path / "old" / STUDENT)), load_source(str(resnet20)), data, tmp_path / "old",
              config_from_params(params), progress=False, recipe=old.recipe).run()

    new_losses, old_losses = _losses(training_directory(tmp_path / "new")), _losses(tmp_path / "old")
    assert len(new_losses) == len(old_losses) == 2
    assert new_losses == pytest.approx(old_losses, abs=1e-6, rel=0)


def test_a_stopped_distill_step_resumes_with_the_printed_command_as_if_never_stopped(
        resnet20, cifar10_train_parquet, tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE + "    checkpoint_every: 1\n")

    def compress_to(out: Path) -> int:
        return main(["compress", str(resnet20), "--recipe", str(recipe), "--out", str(out), "--latency-runs", "1",
                     "--data", str(cifar10_train_parquet)])

    assert compress_to(tmp_path / "whole") == 0
    expected = _losses(training_directory(tmp_path / "whole"))
    assert len(expected) == 2

    def killed(step):
        if step == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(compressor.distill.trainer, "on_step_end", killed)
    capsys.readouterr()
    assert compress_to(tmp_path / "stopped") == 130
    monkeypatch.setattr(compressor.distill.trainer, "on_step_end", lambda step: None)
    printed = capsys.readouterr().err.split("continue with `", 1)[1].split("`", 1)[0]
    words = shlex.split(printed)
    assert words[:3] == ["python", "cli.py", "distill"] and "--resume" in words
    assert words[words.index("--data") + 1] == str(cifar10_train_parquet)
    assert main(words[2:] + ["--quiet"]) == 0
    assert _losses(training_directory(tmp_path / "stopped")) == pytest.approx(expected, abs=1e-6, rel=0)
