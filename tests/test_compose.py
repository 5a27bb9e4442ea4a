"""Recipes that chain passes: orders that cannot work are rejected before anything runs, with the reason; the
others run, reload with the same outputs, and the report says what each pass saved."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.errors import RecipeError
from compressor.recipe import Recipe
from compressor.report import format_table
from compressor.sources import load_source

#: small settings so the chains run in seconds (ACT's hashing and ToMe's merging stay real)
FAST = {"act": {"rounds": 4}, "token_merge": {"r": 2}, "tied_weights": {"fit_steps": 0}}


def chain(*names: str) -> Recipe:
    return Recipe.from_dict({"description": "chain", "compress_stage": {name: FAST.get(name) for name in names}})


def _outputs(loaded, model):
    inputs = loaded.adapter.example_inputs(batch_size=2, seed=5)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


@pytest.mark.parametrize("earlier, later, reason", [
    ("act", "prune", "sized for the unpruned heads; put prune first, before act"),
    ("tied_weights", "prune", "dependency graph cannot follow (a ViT is left unpruned, a ResNet no longer runs)"),
    ("token_clip", "prune", "put prune before token_clip"),
])
def test_orders_that_cannot_work_are_rejected_with_the_reason(earlier, later, reason, hf_vit_dir):
    with pytest.raises(RecipeError) as raised:
        compressor.compress(hf_vit_dir, chain(earlier, later), calib="/no/such/data.parquet", progress=False)
    message = str(raised.value)
    assert "\n" not in message
    assert f"compress_stage.{later} runs after compress_stage.{earlier}: " in message and reason in message


@pytest.mark.parametrize("order", [("act", "token_clip"), ("token_clip", "act")])
def test_clipping_by_mean_attention_where_act_replaces_attention_is_rejected(order, hf_detr_dir):
    """DETR has no class token: token_clip ranks by mean attention, which needs the matrix ACT never forms."""
    with pytest.raises(RecipeError, match="leave that layer out") as raised:
        compressor.compress(hf_detr_dir, chain(*order), progress=False)
    assert "model.encoder.layers.0.self_attn" in str(raised.value)


def test_clipping_and_act_on_different_layers_work(hf_detr_dir, tmp_path):
    recipe = chain("act", "token_clip").with_overrides(["act.ignore=[model.encoder.layers.0.self_attn]"])
    result = compressor.compress(hf_detr_dir, recipe, progress=False, latency_runs=1)
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    assert (_outputs(result.loaded, result.model) - _outputs(reloaded, reloaded.model)).abs().max().item() <= 1e-5


def test_order_is_checked_across_stages(hf_vit_dir):
    recipe = Recipe.from_dict({"description": "x", "a_stage": {"tied_weights": None}, "b_stage": {"prune": None}})
    with pytest.raises(RecipeError, match="b_stage.prune runs after a_stage.tied_weights"):
        compressor.compress(hf_vit_dir, recipe, progress=False)


@pytest.mark.parametrize("fixture, names", [
    ("hf_vit_dir", ("prune", "tied_weights", "act", "token_merge")),
    ("hf_vit_dir", ("prune", "act", "token_clip")),
    ("hf_vit_dir", ("token_merge", "act", "tied_weights")),
    ("hf_detr_dir", ("prune", "tied_weights", "act", "token_merge")),
    ("hf_resnet_dir", ("prune", "tied_weights")),
])
def test_accepted_chains_run_and_reload_with_identical_outputs(fixture, names, request, tmp_path):
    result = compressor.compress(request.getfixturevalue(fixture), chain(*names), progress=False, latency_runs=1)
    assert [entry["name"] for entry in result.report["passes"]] == list(names)
    assert result.report["flops"]["after"] < result.report["flops"]["before"]
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    assert (_outputs(result.loaded, result.model) - _outputs(reloaded, reloaded.model)).abs().max().item() <= 1e-5


def test_report_attributes_params_and_flops_to_each_pass(hf_vit_dir):
    """Measured after each pass on the same input: consecutive passes share a measurement, so savings add up."""
    result = compressor.compress(hf_vit_dir, chain("prune", "tied_weights", "token_merge"), progress=False,
                                 latency_runs=1)
    report = result.report
    prune, tied, merge = report["passes"]
    for key in ("params", "flops"):
        links = [report[key]["before"]] + [entry[key]["after"] for entry in report["passes"]]
        assert [entry[key]["before"] for entry in report["passes"]] == links[:-1]
        assert links[-1] == report[key]["after"]
    assert prune["params"]["after"] < prune["params"]["before"]  # pruning removes weights and work
    assert prune["flops"]["after"] < prune["flops"]["before"]
    assert tied["params"]["after"] < tied["params"]["before"]  # tying removes weights only
    assert tied["flops"]["after"] == tied["flops"]["before"]
    assert merge["params"]["after"] == merge["params"]["before"]  # merging removes work only
    assert merge["flops"]["after"] < merge["flops"]["before"]
    table = format_table(report)
    assert f"params {prune['params']['before'] / 1e6:.3f} M → {prune['params']['after'] / 1e6:.3f} M" in table


@pytest.mark.parametrize("fixture, recipe, calib", [("hf_vit_dir", "vit-max", "cifar10_train_parquet"),
                                                     ("hf_detr_dir", "detr-max", None)])
def test_built_in_max_recipes_chain_every_pass_and_reload(fixture, recipe, calib, request, tmp_path):
    calib_data = str(request.getfixturevalue(calib)) if calib else None
    result = compressor.compress(request.getfixturevalue(fixture), recipe, calib=calib_data, calib_samples=8,
                                 overrides=["compress_stage.act.rounds=4"] if recipe == "detr-max" else [],
                                 progress=False, latency_runs=1)
    names = [spec.name for spec in Recipe.load(recipe).passes()]
    assert [entry["name"] for entry in result.report["passes"]] == names and len(names) >= 2
    assert result.report["params"]["after"] < result.report["params"]["before"]
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    assert (_outputs(result.loaded, result.model) - _outputs(reloaded, reloaded.model)).abs().max().item() <= 1e-5
