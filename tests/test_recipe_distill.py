"""A recipe's `distill` step: validated like a pass, run by `compress` after the passes, on real CIFAR ResNet-20
weights and real CIFAR-10 images (a few steps: the point is the plumbing; recovery figures are in benchmarks)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import compressor
from compressor.cli import main
from compressor.distill.settings import DISTILL_PARAMS, DistillConfig, config_from_params
from compressor.recipe import Recipe
from tests.shared_assets import shared

RECIPE = """description: ResNet tied per block, then distilled
compress_stage:
  tied_weights:
    share: block
distill_stage:
  distill:
    steps: 3
    batch_size: 8
    lr: 0.001
    limit: 48
    eval_limit: 32
    checkpoint_every: 2
"""


def test_distill_parameters_are_the_trainer_settings_with_the_same_defaults():
    params = {name: param.default for name, param in DISTILL_PARAMS.items()}
    assert config_from_params(params) == DistillConfig()
    assert set(asdict(DistillConfig())) <= set(DISTILL_PARAMS)


def test_a_distill_step_round_trips_overrides_and_is_not_a_pass():
    recipe = Recipe.from_yaml(RECIPE).with_overrides(["distill.steps=7", "distill_stage.distill.data=x.parquet"])
    assert [spec.name for spec in recipe.passes()] == ["tied_weights"]
    assert recipe.distill().params["steps"] == 7 and recipe.distill().params["data"] == "x.parquet"
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert recipe.without_distill().distill() is None
    assert [stage.name for stage in recipe.without_distill().stages] == ["compress_stage"]


@pytest.fixture(scope="module")
def resnet20() -> Path:
    return shared("resnet-cifar10/resnet20.safetensors")


def _compress(resnet20, tmp_path, *extra) -> int:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    return main(["compress", str(resnet20), "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--quiet",
                 "--latency-runs", "1", *extra])


def test_compress_with_a_distill_step_writes_the_trained_student(resnet20, cifar10_train_parquet,
                                                                  cifar10_test_parquet, tmp_path, capsys,
                                                                  monkeypatch):
    from compressor.data import images

    checked = []  # where each header check looked: the training rows must be read once, before the passes
    real_check = images.check_header
    monkeypatch.setattr(images, "check_header", lambda value, where: (checked.append(where),
                                                                      real_check(value, where)))
    status = _compress(resnet20, tmp_path, "--data", str(cifar10_train_parquet), "--eval-data",
                       str(cifar10_test_parquet))
    assert status == 0
    training_rows = [where for where in checked if str(cifar10_train_parquet) in where]
    assert len(training_rows) == len(set(training_rows)) == 48  # the step's limit
    out, work = tmp_path / "out", tmp_path / "out.distill"
    assert "distill: 3 steps of batch 8" in capsys.readouterr().out

    report = json.loads((out / "report.json").read_text())
    assert report["distillation"]["steps"] == 3 and report["distillation"]["data"] == str(cifar10_train_parquet)
    assert "## Distillation" in (out / "README.md").read_text()
    resolved = Recipe.load(str(out / "recipe.yaml"))
    assert resolved.distill().params["data"] == str(cifar10_train_parquet)

    # the training run stays beside the output, without its bulky checkpoints
    assert (work / "log.jsonl").is_file() and (work / "distill.json").is_file()
    assert not (work / "checkpoints").exists() and not (work / "best").exists()

    # the output is the trained student: other weights than the untrained one, and it reloads to run
    trained, untrained = load_file(str(out / "model.safetensors")), load_file(str(work / "student" /
                                                                                 "model.safetensors"))
    assert trained.keys() == untrained.keys()
    assert any(not torch.equal(trained[key], untrained[key]) for key in trained)
    model = compressor.load(out)
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 10)


def test_no_distill_writes_the_compressed_model_and_a_recipe_without_the_step(resnet20, tmp_path):
    assert _compress(resnet20, tmp_path, "--no-distill") == 0
    out = tmp_path / "out"
    assert Recipe.load(str(out / "recipe.yaml")).distill() is None
    assert "distillation" not in json.loads((out / "report.json").read_text())
    assert not (tmp_path / "out.distill").exists()


def test_the_python_api_saves_what_it_did_not_a_distill_step_it_skipped(resnet20, tmp_path):
    result = compressor.compress(str(resnet20), Recipe.from_yaml(RECIPE), progress=False, latency_runs=1)
    assert result.recipe.distill() is not None  # the intent is kept in memory
    saved = compressor.save(result, tmp_path / "api")
    assert Recipe.load(str(saved / "recipe.yaml")).distill() is None


def test_the_python_api_runs_the_distill_step_like_the_cli(resnet20, cifar10_train_parquet, tmp_path):
    result = compressor.compress(str(resnet20), Recipe.from_yaml(RECIPE), progress=False, latency_runs=1)
    out = compressor.distill_and_save(result, tmp_path / "api", data=str(cifar10_train_parquet), progress=False)
    assert json.loads((out / "report.json").read_text())["distillation"]["steps"] == 3
    assert Recipe.load(str(out / "recipe.yaml")).distill().params["data"] == str(cifar10_train_parquet)


def test_data_paths_are_taken_as_given_not_read_as_yaml(tmp_path):
    from compressor.distill.recipe_stage import resolve_distill_step

    recipe = resolve_distill_step(Recipe.from_yaml(RECIPE), tmp_path / "out", data="2024", eval_data="yes: no",
                                  skip=False, overwrite=False)
    assert recipe.distill().params["data"] == "2024" and recipe.distill().params["eval_data"] == "yes: no"
