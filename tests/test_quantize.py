"""int8 quantization: the int8 layers equal their float references, `bits: 32` is exact, the output reloads with
identical outputs and int8 tensors in model.safetensors, and the pass composes with the others (or refuses, with
the reason)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

import compressor
from compressor.errors import RecipeError
from compressor.ops.int8_conv2d import Int8Conv2d
from compressor.ops.int8_linear import Int8Linear
from compressor.ops.int8_weights import dequantize, quantize_per_channel
from compressor.ops.tied_layers import TiedConv2d, TiedLinear
from compressor.recipe import Recipe
from compressor.report import format_table
from compressor.sources import load_source


def _recipe(**stages) -> Recipe:
    return Recipe.from_dict({"description": "test", **stages})


def _outputs(loaded, model, seed: int = 5):
    inputs = loaded.adapter.example_inputs(batch_size=2, seed=seed)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(48, 40)


def test_per_channel_rounding_errs_by_at_most_half_a_step_per_channel():
    weight = torch.randn(16, 8) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different scales
    quantized, scale = quantize_per_channel(weight)
    assert quantized.dtype == torch.int8 and scale.shape == (16, 1)
    assert int(quantized.abs().amax(1).min()) == 127  # every row uses its full range
    assert bool(((dequantize(quantized, scale) - weight).abs() <= scale / 2 + 1e-7).all())


def test_weight_only_linear_equals_its_dequantized_float_reference_exactly():
    linear = _linear()
    layer = Int8Linear.from_float(linear, activations="none").eval()
    x = torch.randn(3, 7, 48)
    reference = nn.functional.linear(x, dequantize(layer.weight, layer.weight_scale), linear.bias)
    assert torch.equal(layer(x), reference) and torch.equal(layer.reference(x), reference)


def test_dynamic_linear_equals_the_float_reference_that_rounds_activations_the_same_way():
    """The int8 kernel accumulates in int32, the reference in float32: equal to float rounding (1e-5 relative)."""
    layer = Int8Linear.from_float(_linear(), activations="dynamic").eval()
    x = torch.randn(3, 7, 48) * 4
    output, reference = layer(x), layer.reference(x)
    assert output.shape == (3, 7, 40)
    assert (output - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()
    unrounded = nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
    assert (output - unrounded).abs().max().item() > 1e-4  # the activations really were rounded to int8


@pytest.mark.parametrize("reduce_range", [False, True])
def test_activation_rounding_in_plain_arithmetic_equals_torchs_quantized_tensor(reduce_range):
    """`fake_quantize_activations` rounds without torch's (deprecated) quantized tensor types: bit-equal to them."""
    import warnings

    from compressor.ops.int8_weights import fake_quantize_activations

    generator = torch.Generator().manual_seed(0)
    for x in (torch.randn(8, 197, 64, generator=generator) * 3, torch.rand(5, 100, generator=generator) + 0.5,
              -torch.rand(4, 33, generator=generator), torch.zeros(2, 3)):
        scale, zero_point = torch._choose_qparams_per_tensor(x, reduce_range)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).dequantize()
        assert torch.equal(fake_quantize_activations(x, reduce_range), expected)


def test_a_torch_without_the_dynamic_int8_kernel_runs_the_float_reference(monkeypatch):
    from compressor.ops import int8_linear

    layer = Int8Linear.from_float(_linear(), activations="dynamic").eval()
    x = torch.randn(3, 7, 48) * 4
    with_kernel = layer(x)
    monkeypatch.setattr(int8_linear, "dynamic_kernel_available", lambda: False)
    without = layer(x)
    assert torch.equal(without, layer.reference(x)) and layer.uncounted_flops == 2 * 21 * 48 * 40
    assert (without - with_kernel).abs().max().item() <= 1e-5 * with_kernel.abs().max().item()


def test_dynamic_linear_repacks_when_its_weights_are_loaded():
    layer = Int8Linear.from_float(_linear(0)).eval()
    x = torch.randn(4, 48)
    before = layer(x)
    layer.load_state_dict(Int8Linear.from_float(_linear(1)).state_dict())
    assert not torch.allclose(layer(x), before) and torch.allclose(layer(x), layer.reference(x), atol=1e-5)


def test_int8_linear_trains_its_float_parameters_around_the_fixed_int8_weight():
    layer = Int8Linear.from_float(_linear()).train()
    x = torch.randn(4, 48, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.bias.grad is not None and not layer.weight.requires_grad


def test_conv2d_equals_its_dequantized_float_reference_exactly():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2)
    layer = Int8Conv2d(conv).eval()
    x = torch.randn(2, 6, 9, 9)
    reference = nn.functional.conv2d(x, dequantize(layer.weight, layer.weight_scale), conv.bias, 2, 1, 1, 2)
    assert torch.equal(layer(x), reference)


def test_bits_32_leaves_the_model_unchanged(hf_vit_dir, tmp_path):
    result = compressor.compress(hf_vit_dir, _recipe(compress_stage={"quantize": {"bits": 32}}), progress=False,
                                 latency_runs=1)
    original = load_source(hf_vit_dir)
    assert torch.equal(_outputs(result.loaded, result.model), _outputs(original, original.model))
    assert not any(isinstance(m, (Int8Linear, Int8Conv2d)) for m in result.model.modules())
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    assert torch.equal(_outputs(reloaded, reloaded.model), _outputs(original, original.model))


@pytest.mark.parametrize("fixture, activations", [("hf_vit_dir", "dynamic"), ("timm_vit_dir", "none"),
                                                  ("timm_resnet_dir", "dynamic")])
def test_reload_gives_identical_outputs_from_int8_tensors_in_the_file(fixture, activations, request, tmp_path):
    source = request.getfixturevalue(fixture)
    result = compressor.compress(source, "int8", overrides=[f"quantize.activations={activations}"], progress=False,
                                 latency_runs=1)
    out = compressor.save(result, tmp_path / "out")
    reloaded = load_source(out)
    assert torch.equal(_outputs(result.loaded, result.model), _outputs(reloaded, reloaded.model))
    quantized = [name for name, m in reloaded.model.named_modules() if isinstance(m, (Int8Linear, Int8Conv2d))]
    assert quantized
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        for name in quantized:
            assert weights.get_slice(f"{name}.weight").get_dtype() == "I8"
            assert weights.get_slice(f"{name}.weight_scale").get_shape()[1] == 1
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert sorted(t for group in config["config_groups"].values() for t in group["targets"]) == sorted(quantized)
    card = (out / "README.md").read_text()
    assert "bits: 8" in card and "weights in model.safetensors" in card
    assert ("compressed-tensors" in card) == (fixture == "hf_vit_dir")  # what plain transformers does with it


def test_resnet_convolutions_are_quantized_weight_only_and_linear_layers_dynamic(timm_resnet_dir):
    result = compressor.compress(timm_resnet_dir, "int8", progress=False, latency_runs=1)
    kinds = {type(m) for m in result.model.modules()}
    assert Int8Conv2d in kinds and Int8Linear in kinds and nn.Conv2d not in kinds
    assert result.report["flops"]["after"] == result.report["flops"]["before"]  # int8 kernels' work is counted


def test_a_recipe_that_quantizes_twice_is_refused(hf_vit_dir):
    recipe = _recipe(a_stage={"quantize": None}, b_stage={"quantize": None})
    with pytest.raises(RecipeError, match="b_stage.quantize runs after a_stage.quantize: the layers are int8 "
                                          "already: a recipe quantizes once") as raised:
        compressor.compress(hf_vit_dir, recipe, progress=False)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("later, reason", [("prune", "put prune before quantize"),
                                           ("tied_weights", "put tied_weights before quantize")])
def test_passes_that_need_float_layers_are_refused_after_quantize(later, reason, hf_vit_dir):
    with pytest.raises(RecipeError, match=reason):
        compressor.compress(hf_vit_dir, _recipe(a_stage={"quantize": None}, b_stage={later: None}), progress=False)


def test_targets_that_cannot_be_quantized_are_refused_with_the_reason(hf_vit_dir):
    recipe = _recipe(compress_stage={"quantize": {"targets": ["vit.embeddings.patch_embeddings.projection"]}})
    with pytest.raises(RecipeError, match="none of the 1 targeted layers can be quantized .*cast pixel values"):
        compressor.compress(hf_vit_dir, recipe, progress=False)


def test_quantize_composes_after_every_pass_and_reloads_exactly(hf_vit_dir, tmp_path):
    """prune, tied FFNs, ACT and ToMe, then int8: a tied weight is quantized once (in its owner) and stays tied."""
    recipe = _recipe(compress_stage={"prune": {"ratio": 0.25}, "tied_weights": {"parts": ["ffn"], "fit_steps": 0},
                                     "act": {"rounds": 4}, "token_merge": {"r": 2}, "quantize": None})
    result = compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    entry = result.report["passes"][-1]
    assert any("borrows" in reason for reason in entry["statistics"]["left_float"].values())
    assert "left float" in format_table(result.report)
    out = compressor.save(result, tmp_path / "out")
    reloaded = load_source(out)
    assert torch.equal(_outputs(result.loaded, result.model), _outputs(reloaded, reloaded.model))
    assert sum(isinstance(m, Int8Linear) for m in reloaded.model.modules()) == len(entry["statistics"]["quantized"])
    modules = list(reloaded.model.modules())
    tied = {name: m for name, m in reloaded.model.named_modules() if isinstance(m, TiedLinear)}
    assert tied and all(isinstance(m.source.owner, Int8Linear) and any(m.source.owner is o for o in modules)
                        for m in tied.values())
    layer = next(iter(tied.values()))
    assert torch.equal(layer.source(), layer.source.owner.dequantized_weight().t())  # reads the int8 weight
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert not any(f"{name}.weight" in weights.keys() for name in tied)  # stored once, in the owner


def test_quantize_after_token_clip_reloads_exactly(hf_vit_dir, tmp_path):
    recipe = _recipe(compress_stage={"token_clip": None, "quantize": {"activations": "none"}})
    result = compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    assert torch.equal(_outputs(result.loaded, result.model), _outputs(reloaded, reloaded.model))


def test_tied_convolutions_read_their_quantized_owner_and_reload_exactly(resnet20_dir, tmp_path):
    recipe = _recipe(compress_stage={"tied_weights": {"parts": ["convs"], "init": "closed_form"}, "quantize": None})
    result = compressor.compress(resnet20_dir, recipe, progress=False, latency_runs=1)
    tied = [m for m in result.model.modules() if isinstance(m, TiedConv2d)]
    assert tied and all(isinstance(m.source.owner, Int8Conv2d) for m in tied)
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    assert torch.equal(_outputs(result.loaded, result.model), _outputs(reloaded, reloaded.model))


@pytest.mark.parametrize("activations", ["dynamic", "none"])
def test_plain_transformers_with_compressed_tensors_runs_the_int8_model_like_compressor_load(activations, hf_vit_dir,
                                                                                             tmp_path):
    """The format's other reader, for real: transformers hands config.json's `quantization_config` to the
    compressed-tensors package, which rebuilds the int8 Linear layers from our tensors and runs them."""
    from transformers import AutoModelForImageClassification

    result = compressor.compress(hf_vit_dir, "int8", overrides=[f"quantize.activations={activations}"],
                                 progress=False, latency_runs=1)
    out = compressor.save(result, tmp_path / "out")
    ours = load_source(out)
    plain = AutoModelForImageClassification.from_pretrained(out)
    inputs = ours.adapter.example_inputs(batch_size=2, seed=3)
    with torch.no_grad():
        expected, got = ours.model(**inputs).logits, plain(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    float_model = load_source(hf_vit_dir).model
    with torch.no_grad():  # and the int8 rounding is really there: not a float model that happens to match
        assert not torch.allclose(float_model(**inputs).logits, got, atol=1e-5)
    assert "same outputs as `compressor.load`" in (out / "README.md").read_text()


def test_int8_convolutions_are_named_in_config_and_the_card_says_plain_transformers_cannot_run_them(hf_resnet_dir,
                                                                                                   tmp_path):
    from transformers import AutoModelForImageClassification

    from compressor.ops.int8_format import int8_convolutions

    result = compressor.compress(hf_resnet_dir, "int8", progress=False, latency_runs=1)
    out = compressor.save(result, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    convolutions = {name for name, m in result.model.named_modules() if isinstance(m, Int8Conv2d)}
    assert convolutions and set(int8_convolutions(config)) == convolutions
    assert "cannot run it" in (out / "README.md").read_text()
    plain = AutoModelForImageClassification.from_pretrained(out)  # what the card warns of: int8 weights, no scales
    with pytest.raises(RuntimeError), torch.no_grad():
        plain(pixel_values=torch.randn(1, 3, 64, 64))
