"""A detector's backbone is made of sites: the AutoBackbone ResNet, the timm features-only ResNet and the Swin
backbone inside DETR expose their blocks through the standalone family adapters, under the detector's names.

`auto` keeps its meaning on a detector (the transformer only); backbone sites are chosen by name."""

from __future__ import annotations

import json

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.errors import RecipeError
from compressor.models.embedded_backbone import find_embedded_backbone
from compressor.ops.tied_layers import TiedConv2d, TiedLinear
from compressor.sources import load_source

BACKBONES = {"hf-resnet": "detr_resnet_backbone_dir", "timm-resnet": "detr_timm_backbone_dir",
             "hf-swin": "detr_swin_backbone_dir"}
#: the standalone family each backbone is described by
FAMILIES = {"hf-resnet": "hf-resnet", "timm-resnet": "timm-resnet", "hf-swin": "hf-swin"}
IN_BACKBONE = r"re:model\.backbone\."


def _outputs(loaded, model, seed=5):
    inputs = loaded.adapter.example_inputs(batch_size=2, seed=seed)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def _reload_difference(result, tmp_path) -> float:
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    return (_outputs(result.loaded, result.model) - _outputs(reloaded, reloaded.model)).abs().max().item()


def _compress(source, recipe: dict, *overrides):
    return compressor.compress(source, compressor.Recipe.from_dict({"compress_stage": recipe}),
                               overrides=list(overrides), progress=False, latency_runs=1)


@pytest.fixture(params=list(BACKBONES))
def backbone(request):
    """(case, checkpoint directory) for each kind of backbone."""
    return request.param, request.getfixturevalue(BACKBONES[request.param])


def test_the_backbone_is_described_by_its_standalone_family_adapter(backbone):
    case, source = backbone
    loaded = load_source(source)
    embedded = find_embedded_backbone(loaded.model)
    assert embedded.adapter.family == FAMILIES[case] and embedded.prefix == "model.backbone.model"
    blocks = [site for site in loaded.adapter.all_blocks() if site.name.startswith("model.backbone.")]
    assert [site.name for site in blocks] == [f"model.backbone.model.{site.name}" for site in embedded.adapter.blocks()]
    assert {site.stack for site in blocks} == {"backbone.stage0", "backbone.stage1", "backbone.stage2",
                                              "backbone.stage3"}
    for site in blocks:  # every name a site gives is a module of the detector
        for name in (site.name, *site.convs, *filter(None, (site.attention, site.ffn))):
            loaded.model.get_submodule(name)


def test_inspect_lists_the_backbone_sites(backbone, capsys):
    case, source = backbone
    assert main(["inspect", str(source), "--json"]) == 0
    passes = json.loads(capsys.readouterr().out)["passes"]
    blocks = [site.name for site in load_source(source).adapter.all_blocks() if site.name.startswith("model.backbone.")]
    assert set(blocks) <= set(passes["prune"]["candidates"])
    assert set(blocks) <= set(passes["tied_weights"]["candidates"]) or case == "hf-swin"
    assert not any(site.startswith("model.backbone.") for entry in passes.values() for site in entry["sites"])
    assert main(["inspect", str(source), "--recipe", "prune", "--set", f"prune.targets=[{IN_BACKBONE}]"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {block}\n" in listed for block in blocks)


def test_auto_targets_leave_the_backbone_alone(backbone):
    """Recipes written for the transformer (`prune`, `tied_weights`) keep their meaning on a detector."""
    _, source = backbone
    plan = _compress(source, {"prune": {"ratio": 0.5}}).recipe.to_dict()["compress_stage"]["prune"]["plan"]
    assert plan and not any(name.startswith("model.backbone.") for name in plan)
    tied = _compress(source, {"tied_weights": None})
    assert not any(isinstance(module, (TiedConv2d, TiedLinear)) for name, module in tied.model.named_modules()
                   if name.startswith("model.backbone."))


def test_pruning_the_backbone_at_ratio_zero_leaves_outputs_unchanged(backbone):
    _, source = backbone
    original = load_source(source)
    result = _compress(source, {"prune": {"targets": [IN_BACKBONE], "ratio": 0.0}})
    assert (_outputs(original, original.model) - _outputs(result.loaded, result.model)).abs().max().item() == 0.0


def test_pruned_backbone_is_cheaper_and_reloads_with_identical_outputs(backbone, tmp_path):
    """Frozen batch norms (DETR's DetrFrozenBatchNorm2d) lose the pruned channels with their convolutions, and
    the residual adds keep one channel set per stage."""
    case, source = backbone
    result = _compress(source, {"prune": {"targets": [IN_BACKBONE], "ratio": 0.5}})
    plan = result.recipe.to_dict()["compress_stage"]["prune"]["plan"]
    assert plan and all(name.startswith("model.backbone.model.") for name in plan)
    if case != "hf-swin":
        assert any("running_var" in widths for widths in plan.values())
    assert result.report["flops"]["after"] < 0.7 * result.report["flops"]["before"]
    assert _reload_difference(result, tmp_path) == 0.0


def test_tying_a_backbone_that_satisfies_the_tie_leaves_outputs_unchanged(backbone, tmp_path):
    from test_tied_weights import tie_satisfying_checkpoint

    _, source = backbone
    recipe = compressor.Recipe.from_dict({"compress_stage": {"tied_weights": {"targets": [IN_BACKBONE]}}})
    satisfied = tie_satisfying_checkpoint(source, tmp_path / "satisfied", recipe)
    original = load_source(satisfied)
    result = compressor.compress(satisfied, recipe, progress=False, latency_runs=1)
    assert result.report["params"]["after"] < result.report["params"]["before"]
    assert (_outputs(original, original.model) - _outputs(result.loaded, result.model)).abs().max().item() <= 1e-5


def test_tied_backbone_reloads_with_identical_outputs(backbone, tmp_path):
    case, source = backbone
    result = _compress(source, {"tied_weights": {"targets": [IN_BACKBONE], "init": "closed_form"}})
    tied = [name for name, module in result.model.named_modules() if isinstance(module, (TiedConv2d, TiedLinear))]
    assert tied and all(name.startswith("model.backbone.model.") for name in tied)
    assert result.report["params"]["after"] < result.report["params"]["before"]
    assert _reload_difference(result, tmp_path) <= 1e-6


def test_a_target_that_selects_nothing_in_the_backbone_fails_with_one_line(backbone, capsys):
    _, source = backbone
    with pytest.raises(RecipeError, match=r"matches no prune site"):
        _compress(source, {"prune": {"targets": [r"re:model\.backbone\.model\.nothing"]}})
    code = main(["compress", str(source), "--recipe", "act", "--set", f"act.targets=[{IN_BACKBONE}]", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "matches no act site" in error


# --- detr-max and detr-r50-backbone: the passes go where the cost is ------------------------------------------------
COCO_IMAGE = "coco-fixture/000000039769.png"


@pytest.mark.parametrize("recipe", ["detr-max", "detr-r50-backbone"])
def test_detector_recipes_prune_the_backbone_with_taylor_importance_and_reload(recipe, detr_timm_backbone_dir,
                                                                               tmp_path):
    """On DETR's own backbone (timm ResNet, frozen batch norms): the backbone loses most of its FLOPs, ranked by
    Taylor importance on the calibration image, and the saved model reloads with identical outputs."""
    from shared_assets import shared

    result = compressor.compress(detr_timm_backbone_dir, recipe, calib=str(shared(COCO_IMAGE)),
                                 overrides=["compress_stage.act.rounds=4"] if recipe == "detr-max" else [],
                                 progress=False, latency_runs=1)
    prune = result.report["passes"][0]
    assert prune["name"] == "prune" and prune["summary"]["importance"] == "taylor"
    plan = result.recipe.to_dict()["compress_stage"]["prune"]["plan"]
    assert any(name.startswith("model.backbone.model.layer") for name in plan)
    assert any(name.endswith(".mlp.fc1") for name in plan) == (recipe == "detr-max")
    assert result.report["flops"]["after"] < 0.55 * result.report["flops"]["before"]
    assert _reload_difference(result, tmp_path) == 0.0


def test_auto_importance_is_magnitude_without_calibration_data(detr_resnet_backbone_dir):
    result = _compress(detr_resnet_backbone_dir, {"prune": {"targets": [IN_BACKBONE], "importance": "auto"}})
    assert result.report["passes"][0]["summary"]["importance"] == "magnitude"


def test_detr_max_ends_with_mtkd_distillation_of_the_pruned_detector(detr_timm_backbone_dir, tmp_path, capsys):
    """`compress --data COCO` trains the pruned, clipped ACT student MTKD-style: the ACT path and the exact path
    together, their boxes pulled together; the trained output reloads."""
    from shared_assets import shared

    out = tmp_path / "out"
    status = main(["compress", str(detr_timm_backbone_dir), "--recipe", "detr-max", "--out", str(out), "--quiet",
                   "--latency-runs", "1", "--calib", str(shared(COCO_IMAGE)), "--data", str(shared("coco128-val")),
                   "--set", "compress_stage.act.rounds=4", "--set", "distill.steps=2", "--set", "distill.batch_size=2",
                   "--set", "distill.limit=4"])
    assert status == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out.distill" / "log.jsonl").read_text().splitlines()[0])
    assert {"task", "task_original", "box_l2", "kd"} <= set(record)
    stem = compressor.load(out).get_submodule("model.backbone.model.conv1")
    assert stem.out_channels == stem.weight.shape[0] < 64  # ResNet-18's stem, pruned, rebuilt on reload


def test_the_token_layout_is_the_sequence_the_encoder_reads(backbone):
    """The encoder's grid comes from the backbone that feeds it (its last out_features stage), not a fixed 32."""
    _, source = backbone
    loaded = load_source(source)
    inputs = loaded.adapter.example_inputs(size=(96, 160))
    lengths = []
    encoder_layer = loaded.adapter.module(loaded.adapter.token_reduction_blocks()[0].name)
    hook = encoder_layer.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(
        (args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True)
    with torch.no_grad():
        loaded.model(**inputs)
    hook.remove()
    assert lengths == [loaded.adapter.token_layout(inputs).sequence_length]
