"""token_clip inside the Swin backbone of a DETR: the backbone's blocks are a token stack of their own, chosen by
`targets`, with its own reducer; the DETR encoder's clipping is another. Clipped stages run on fewer tokens (fewer
counted FLOPs), every block puts its tokens back, so patch merging and the feature map the encoder reads are
complete."""

from __future__ import annotations

import pytest
import torch

import compressor
from checkpoints_hf import _save_small_detr, _small_detr
from compressor.evaluate.cost import count_flops, flop_counter
from compressor.sources import load_source

#: the blocks of Swin stages 3 and 4 in the detector (two-stage clipping)
TWO_STAGES = r"'re:model\.backbone\.model\.swin\.encoder\.layers\.[23]\.'"
BACKBONE = r"'re:model\.backbone\.'"
ENCODER = r"'re:model\.encoder\.'"


def _clip(source, *overrides):
    return compressor.compress(source, "token-clip", overrides=list(overrides), progress=False, latency_runs=1)


def _outputs(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.logits, result.pred_boxes


def _backbone_flops_and_maps(model, inputs):
    """The backbone's counted FLOPs and the feature maps it hands to the detector."""
    seen = []
    handle = model.model.backbone.register_forward_hook(lambda module, args, out: seen.append(out))
    counter = flop_counter()
    with torch.no_grad(), counter:
        model(**inputs)
    handle.remove()
    flops = sum(counter.get_flop_counts()[f"{type(model).__name__}.model.backbone"].values())
    return flops, [feature_map for feature_map, _mask in seen[0]]


def _reduced_blocks(model) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "token_reducer")]


def _encoder_layers(model) -> list[str]:
    return [f"model.encoder.layers.{index}" for index in range(len(model.model.encoder.layers))]


@pytest.mark.parametrize("keep", ["1", "0.999"])
def test_keeping_every_token_reproduces_the_detector(detr_swin_backbone_dir, keep):
    """1 runs the original blocks; 0.999 keeps every token of every window through the gather/scatter path
    (window partition, shift and the padding of the 8×11 stage-3 grid as one index permutation): both exact."""
    original = load_source(detr_swin_backbone_dir)
    result = _clip(detr_swin_backbone_dir, f"token_clip.targets=[{TWO_STAGES}]", f"token_clip.keep_ratio={keep}")
    inputs = original.adapter.example_inputs(batch_size=2, seed=3)
    for expected, found in zip(_outputs(original.model, inputs), _outputs(result.model, inputs)):
        assert (expected - found).abs().max().item() <= 1e-5
    assert result.report["passes"][0]["summary"]["mean tokens/N"] == 1.0


def test_two_stage_clipping_lowers_backbone_flops_and_keeps_every_shape(detr_swin_backbone_dir, tmp_path):
    original = load_source(detr_swin_backbone_dir)
    result = _clip(detr_swin_backbone_dir, f"token_clip.targets=[{TWO_STAGES}]", "token_clip.keep_ratio=0.5")
    inputs = original.adapter.example_inputs(batch_size=2, seed=4)
    flops_before, maps_before = _backbone_flops_and_maps(original.model, inputs)
    flops_after, maps_after = _backbone_flops_and_maps(result.model, inputs)
    assert flops_after < flops_before  # what really ran (torch's counter), not zeroed tokens
    assert [m.shape for m in maps_after] == [m.shape for m in maps_before]
    assert [o.shape for o in _outputs(result.model, inputs)] == [o.shape for o in _outputs(original.model, inputs)]
    statistics = result.report["passes"][0]["statistics"]
    after = statistics["tokens_after_block"]
    stage0, stage1 = "model.backbone.model.swin.encoder.layers.0.blocks.0", \
        "model.backbone.model.swin.encoder.layers.1.blocks.0"
    clipped = [name for name in after if ".layers.2." in name or ".layers.3." in name]
    assert after[stage0] == statistics["tokens_in"]  # the first stages run whole
    assert all(after[name] < after[stage1] for name in clipped)
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    for expected, found in zip(_outputs(result.model, inputs), _outputs(reloaded.model, inputs)):
        assert (expected - found).abs().max().item() <= 1e-5


def test_encoder_targets_leave_the_backbone_untouched(detr_swin_backbone_dir):
    """The DETR encoder's clipping, as before: the backbone runs its own forward and hands the same maps over."""
    original = load_source(detr_swin_backbone_dir)
    result = _clip(detr_swin_backbone_dir, "token_clip.keep_ratio=0.5")  # auto: after the encoder's first layer
    assert result.report["passes"][0]["sites"] == ["model.encoder.layers.0"]
    assert _reduced_blocks(result.model) == _encoder_layers(result.model)
    inputs = original.adapter.example_inputs(batch_size=1, seed=5)
    flops_before, maps_before = _backbone_flops_and_maps(original.model, inputs)
    flops_after, maps_after = _backbone_flops_and_maps(result.model, inputs)
    assert flops_after == flops_before
    assert all(torch.equal(a, b) for a, b in zip(maps_before, maps_after))
    explicit = _clip(detr_swin_backbone_dir, f"token_clip.targets=[{ENCODER}]", "token_clip.keep_ratio=0.5")
    assert _reduced_blocks(explicit.model) == _encoder_layers(explicit.model)


def test_backbone_targets_leave_the_encoder_untouched(detr_swin_backbone_dir):
    result = _clip(detr_swin_backbone_dir, f"token_clip.targets=[{BACKBONE}]", "token_clip.keep_ratio=0.5")
    reduced = _reduced_blocks(result.model)
    assert reduced and all(name.startswith("model.backbone.") for name in reduced)
    after = result.report["passes"][0]["statistics"]["tokens_after_block"]
    assert after and all(name.startswith("model.backbone.") for name in after)


def test_backbone_and_encoder_each_get_their_own_reducer(detr_swin_backbone_dir, tmp_path):
    original = load_source(detr_swin_backbone_dir)
    result = _clip(detr_swin_backbone_dir, f"token_clip.targets=[{TWO_STAGES}, auto]", "token_clip.keep_ratio=0.5")
    model = result.model
    backbone_block = model.get_submodule("model.backbone.model.swin.encoder.layers.3.blocks.0")
    encoder_layer = model.get_submodule("model.encoder.layers.0")
    assert backbone_block.token_reducer is not encoder_layer.token_reducer
    assert set(result.report["passes"][0]["statistics"]["tokens_in"]) == {
        "model.backbone.model.swin.encoder.layers", "model.encoder.layers"}
    inputs = original.adapter.example_inputs(batch_size=1, seed=6)
    assert count_flops(model, inputs) < count_flops(original.model, inputs)
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    for expected, found in zip(_outputs(model, inputs), _outputs(reloaded.model, inputs)):
        assert (expected - found).abs().max().item() <= 1e-5


def test_inspect_lists_the_backbone_blocks_as_token_clip_sites(detr_swin_backbone_dir):
    """The built-in `detr-swin-clip` recipe chooses the blocks of the last two stages."""
    from compressor.commands.inspect import describe_sites
    from compressor.pipeline import resolve_recipe

    loaded = load_source(detr_swin_backbone_dir)
    recipe = resolve_recipe("detr-swin-clip", [])
    described = describe_sites(loaded, recipe)["token_clip"]
    backbone = [name for name in described["candidates"] if name.startswith("model.backbone.")]
    assert len(backbone) == 5  # stages of 1, 1, 2 and 1 blocks
    assert described["sites"] == [name for name in backbone if ".layers.2." in name or ".layers.3." in name]
    assert "model.encoder.layers.0" in described["candidates"]


@pytest.fixture(scope="module")
def detr_swin_three_maps_dir(tmp_path_factory):
    """The small Swin-backbone DETR with the backbone returning the maps of stages 2, 3 and 4."""
    from transformers import SwinConfig

    backbone = SwinConfig(embed_dim=16, patch_size=2, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2,
                          out_features=["stage2", "stage3", "stage4"])
    return _save_small_detr(tmp_path_factory, "detr-swin-3-maps",
                            _small_detr(use_timm_backbone=False, backbone_config=backbone))


def test_every_feature_map_stays_complete_with_several_out_features(detr_swin_three_maps_dir):
    """Stages 3 and 4 clipped: the stage-2 map is the original's, the clipped stages' maps keep their full grids."""
    original = load_source(detr_swin_three_maps_dir)
    result = _clip(detr_swin_three_maps_dir, f"token_clip.targets=[{TWO_STAGES}]", "token_clip.keep_ratio=0.5")
    inputs = original.adapter.example_inputs(batch_size=1, seed=7)
    flops_before, maps_before = _backbone_flops_and_maps(original.model, inputs)
    flops_after, maps_after = _backbone_flops_and_maps(result.model, inputs)
    assert flops_after < flops_before
    assert [m.shape for m in maps_after] == [m.shape for m in maps_before] and len(maps_after) == 3
    assert (maps_after[0] - maps_before[0]).abs().max().item() <= 1e-5
    assert (maps_after[2] - maps_before[2]).abs().max().item() > 1e-3  # clipping really changed stage 4


def test_the_two_stage_recipe_on_a_resnet_backbone_says_its_targets_match_nothing(detr_resnet_backbone_dir):
    from compressor.errors import RecipeError

    with pytest.raises(RecipeError, match=r"token_clip.targets: .* matches no token_clip site .*model\.encoder"):
        compressor.compress(detr_resnet_backbone_dir, "detr-swin-clip", progress=False, latency_runs=1)
