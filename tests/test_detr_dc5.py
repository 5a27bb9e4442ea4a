"""DETR-DC5 (facebook/detr-resnet-50-dc5's layout: the timm ResNet's last stage dilated, stride 16): the token layout
is the stride-16 grid, ACT applies, its exact setting and reload give identical outputs."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.recipe import Recipe
from compressor.sources import load_source

#: 256×256: a 16×16 grid of encoder tokens, where ACT pays (at the processor's 64×85 there are 24)
ACT_SIZE = (256, 256)


@pytest.fixture(scope="module")
def detr_dc5_dir(tmp_path_factory):
    """DetrForObjectDetection with `dilation=True` on a small timm ResNet (resnet10t), d_model 32, 2 + 2 layers; its
    processor resizes a 640×480 image to 64×85. Encoder attention sharpened and amplified: random attention is near
    uniform and its output small beside the residual, so clustering would change almost nothing."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    config = DetrConfig(backbone="resnet10t", dilation=True, use_pretrained_backbone=False, d_model=32,
                        encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_labels=5)
    torch.manual_seed(0)
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        for layer in model.model.encoder.layers:
            for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(layer.self_attn, projection).weight.mul_(8)
    directory = tmp_path_factory.mktemp("detr-dc5")
    model.save_pretrained(directory)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(directory)
    return directory


def _outputs(loaded, model, size=ACT_SIZE):
    inputs = loaded.adapter.example_inputs(batch_size=2, size=size, seed=5)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def _encoder_output(loaded, model, size=ACT_SIZE):
    """The encoder's output: a random DETR's heads barely react to it (its logits and boxes move by ~1e-7)."""
    inputs = loaded.adapter.example_inputs(batch_size=2, size=size, seed=5)
    with torch.no_grad():
        return model(**inputs).encoder_last_hidden_state


def _act(**params) -> Recipe:
    return Recipe.from_dict({"compress_stage": {"act": params}})


@pytest.mark.parametrize("size, grid", [(None, (4, 6)), (ACT_SIZE, (16, 16)), ((800, 1066), (50, 67))])
def test_token_layout_is_the_stride_16_grid_the_encoder_sees(detr_dc5_dir, size, grid):
    loaded = load_source(detr_dc5_dir)
    inputs = loaded.adapter.example_inputs(size=size)
    layout = loaded.adapter.token_layout(inputs)
    assert layout.grid == grid and layout.sequence_length == grid[0] * grid[1]
    with torch.no_grad():
        features = loaded.model.model.backbone(inputs["pixel_values"], inputs["pixel_mask"])[-1][0]
    assert tuple(features.shape[-2:]) == grid


def test_act_exact_setting_gives_identical_outputs(detr_dc5_dir):
    original = load_source(detr_dc5_dir)
    result = compressor.compress(detr_dc5_dir, _act(bucket_width=1e-5), progress=False, latency_runs=1,
                                 input_size=ACT_SIZE)
    assert result.report["passes"][0]["summary"]["mean prototypes/N"] == 1.0
    assert (_outputs(original, original.model) - _outputs(result.loaded, result.model)).abs().max().item() <= 1e-5


def test_act_applies_and_reload_gives_identical_outputs(detr_dc5_dir, tmp_path):
    original = load_source(detr_dc5_dir)
    result = compressor.compress(detr_dc5_dir, _act(rounds=1, bucket_width=1000), progress=False, latency_runs=1,
                                 input_size=ACT_SIZE)  # one cluster per head: far from exact
    assert result.report["passes"][0]["sites"] == ["model.encoder.layers.0.self_attn",
                                                   "model.encoder.layers.1.self_attn"]
    assert result.report["flops"]["after"] < result.report["flops"]["before"]
    changed = _encoder_output(original, original.model) - _encoder_output(result.loaded, result.model)
    assert changed.abs().max().item() > 1e-2
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    for output in (_outputs, _encoder_output):
        assert (output(result.loaded, result.model) - output(reloaded, reloaded.model)).abs().max().item() <= 1e-5
