"""The tied_weights pass: exact on checkpoints that satisfy the tie, stored once, rebuilt on reload, real counts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import compressor
from compressor.errors import CompressorError, RecipeError
from compressor.evaluate.cost import count_parameters
from compressor.models import adapter_for
from compressor.ops.tied_layers import TiedConv2d, TiedLinear, TiedQKV, adjoint
from compressor.passes import PassContext
from compressor.recipe_runner import apply_recipe
from compressor.recipe import Recipe
from compressor.sources import LoadedModel, load_source

from checkpoints_timm import write_timm_checkpoint

TIED = (TiedLinear, TiedConv2d, TiedQKV)


def _outputs(loaded, model, batch_size=2, seed=5):
    inputs = loaded.adapter.example_inputs(batch_size=batch_size, seed=seed)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def _recipe(**params) -> Recipe:
    return Recipe.from_dict({"compress_stage": {"tied_weights": params or None}})


@pytest.fixture(scope="session")
def timm_resnet_two_block_dir(tmp_path_factory):
    """A timm ResNet-50 architecture with two bottlenecks in the first stages, so blocks after the first exist."""
    return write_timm_checkpoint(tmp_path_factory.mktemp("timm-resnet-2"), "resnet50", layers=(2, 2, 1, 1),
                                 num_classes=10)


def _save_like(loaded: LoadedModel, directory):
    """Write `loaded.model` as an ordinary checkpoint of its library."""
    if loaded.adapter.library == "timm":
        from timm.models import save_for_hf

        save_for_hf(loaded.model, directory, safe_serialization=True)
    else:
        loaded.model.save_pretrained(directory)
        if loaded.adapter.processor is not None:
            loaded.adapter.processor.save_pretrained(directory)
    return directory


def tie_satisfying_checkpoint(source, directory, recipe: Recipe):
    """`source` with every weight the recipe ties replaced by what the tied model uses: a checkpoint that already
    satisfies the tie (fc2 == fc1ᵀ, V == W_kᵀ, ...), written as an ordinary checkpoint."""
    tied = compressor.compress(source, recipe.with_overrides(["tied_weights.init=closed_form"]), progress=False,
                               latency_runs=1)
    original = load_source(source)
    with torch.no_grad():
        for name, module in tied.model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, (nn.Linear, nn.Conv2d, *TIED)) and isinstance(weight, torch.Tensor):
                original.model.get_submodule(name).weight.copy_(weight)
    return _save_like(original, directory)


EXACT_CASES = {
    "hf-vit": ("hf_vit_dir", {}),
    "hf-deit": ("hf_deit_dir", {}),
    "hf-swin": ("hf_swin_dir", {}),
    "hf-detr": ("hf_detr_dir", {}),
    "hf-bert": ("hf_bert_dir", {}),
    "hf-resnet-block": ("hf_resnet_dir", {}),
    "hf-resnet-stage": ("hf_resnet_dir", {"share": "stage", "share_middle": True}),
    "timm-vit": ("timm_vit_dir", {}),
    "timm-swin": ("timm_swin_dir", {}),
    "timm-resnet-stage": ("timm_resnet_two_block_dir", {"share": "stage", "share_middle": True}),
    "cifar-resnet-block": ("resnet20_dir", {}),
    "cifar-resnet-stage": ("resnet20_dir", {"share": "stage"}),
}


@pytest.mark.parametrize("case", EXACT_CASES)
def test_tying_a_checkpoint_that_satisfies_the_tie_leaves_outputs_unchanged(case, request, tmp_path):
    fixture, params = EXACT_CASES[case]
    recipe = _recipe(**params)
    source = tie_satisfying_checkpoint(request.getfixturevalue(fixture), tmp_path / "satisfied", recipe)
    original = load_source(source)
    result = compressor.compress(source, recipe, progress=False, latency_runs=1)
    assert any(isinstance(m, TIED) for m in result.model.modules())
    assert result.report["params"]["after"] < result.report["params"]["before"]
    diff = (_outputs(original, original.model) - _outputs(result.loaded, result.model)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("fixture", ["hf_vit_dir", "timm_vit_dir", "hf_resnet_dir"])
def test_reload_rebuilds_the_ties_and_the_file_stores_each_tied_weight_once(fixture, request, tmp_path):
    source = request.getfixturevalue(fixture)
    overrides = ["tied_weights.share=stage", "tied_weights.share_middle=true"] if "resnet" in fixture else []
    result = compressor.compress(source, _recipe(), overrides=overrides, progress=False, latency_runs=1)
    out = compressor.save(result, tmp_path / "out")
    reloaded = load_source(out)
    assert (_outputs(result.loaded, result.model) - _outputs(result.loaded, reloaded.model)).abs().max() <= 1e-6
    borrowers = {name: m for name, m in reloaded.model.named_modules() if isinstance(m, (TiedLinear, TiedConv2d))}
    assert borrowers
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
        stored = sum(math.prod(weights.get_slice(key).get_shape()) for key in keys)
    assert not any(f"{name}.weight" in keys for name in borrowers)
    assert stored == sum(t.numel() for t in reloaded.model.state_dict().values())
    assert count_parameters(reloaded.model) == result.report["params"]["after"]
    # a borrower reads a parameter of the reloaded model itself: one tensor in memory too; a deep copy keeps that
    for model in (reloaded.model, copy.deepcopy(reloaded.model)):
        parameters = {id(p) for p in model.parameters()}
        tied = [m for m in model.modules() if isinstance(m, (TiedLinear, TiedConv2d))]
        assert all(id(getattr(m.source.owner, m.source.name)) in parameters for m in tied)


def test_timm_fused_qkv_becomes_two_square_matrices_with_v_the_transpose_of_k(timm_vit_dir):
    result = compressor.compress(timm_vit_dir, _recipe(parts=["attention"]), progress=False, latency_runs=1)
    qkv = result.model.blocks[0].attn.qkv
    assert isinstance(qkv, TiedQKV)
    dim = qkv.in_features
    q, k, v = qkv.weight.split(dim)
    assert torch.equal(v, k.t()) and torch.equal(q, qkv.weight_q)
    assert torch.equal(result.model.blocks[0].attn.proj.weight, qkv.weight_q.t())


def test_conv_adjoint_is_the_transposed_convolution():
    torch.manual_seed(0)
    weight, x, y = torch.randn(6, 4, 3, 3), torch.randn(2, 4, 8, 8), torch.randn(2, 6, 8, 8)
    # <conv(x), y> == <x, conv_adjoint(y)>: the adjoint's weight is adjoint(weight)
    left = (F.conv2d(x, weight, padding=1) * y).sum()
    right = (x * F.conv2d(y, adjoint(weight), padding=1)).sum()
    assert torch.allclose(left, right, rtol=1e-5)
    assert torch.equal(adjoint(adjoint(weight)), weight)


def _meta_loaded(model: nn.Module) -> LoadedModel:
    return LoadedModel(model, adapter_for(model), "meta", "meta")


def _block_weights(model: nn.Module, prefix: str) -> int:
    seen = {id(p): p.numel() for n, p in model.named_parameters() if n.startswith(prefix) and p.dim() >= 2}
    return sum(seen.values())


def test_vit_b16_transformer_block_weights_are_halved_exactly():
    from transformers import ViTConfig, ViTForImageClassification

    with torch.device("meta"):
        model = ViTForImageClassification(ViTConfig(num_labels=1000))
    before_total, before_blocks = count_parameters(model), _block_weights(model, "vit.layers.")
    assert before_blocks == 12 * 12 * 768 * 768  # q, k, v, o (4 d²) and fc1, fc2 (8 d²) per layer
    apply_recipe(_meta_loaded(model), _recipe(init="closed_form"), seed=0, progress=False)
    after_blocks = _block_weights(model, "vit.layers.")
    assert after_blocks * 2 == before_blocks
    assert before_total - count_parameters(model) == before_blocks // 2


def test_resnet50_with_stage_sharing_is_at_most_13_5_million_parameters():
    from transformers import ResNetConfig, ResNetForImageClassification

    counts = {}
    for label, params in {"original": None, "block": {}, "stage": {"share": "stage"},
                          "stage+middle": {"share": "stage", "share_middle": True}}.items():
        with torch.device("meta"):
            model = ResNetForImageClassification(ResNetConfig(num_labels=1000))
        if params is not None:
            apply_recipe(_meta_loaded(model), _recipe(init="closed_form", **params), seed=0, progress=False)
        counts[label] = count_parameters(model)
    assert 25.5e6 < counts["original"] < 25.6e6
    assert counts["original"] > counts["block"] > counts["stage"] > counts["stage+middle"]
    assert counts["stage+middle"] <= 13.5e6


def test_first_blocks_of_a_stage_stay_untied_and_say_why(hf_resnet_dir):
    result = compressor.compress(hf_resnet_dir, _recipe(), progress=False, latency_runs=1)
    statistics = result.report["passes"][0]["statistics"]
    first_block = "resnet.encoder.stages.0.layers.0"
    assert "not the transpose" in statistics["untied"][first_block]
    assert "resnet.encoder.stages.1.layers.1" not in statistics["untied"]


def test_data_aware_init_beats_the_closed_form_on_minilm(minilm_dir):
    from compressor.recipe import RECIPES_DIR

    passages = (RECIPES_DIR.parent / "benchmarks" / "data" / "paragraphs-calib.txt").read_text().split("\n\n")
    loaded = load_source(minilm_dir)
    batch = loaded.adapter.prepare_inputs([p.strip() for p in passages[:16]])
    batch = {key: value[:, :96] for key, value in batch.items()}  # real text, shortened to keep the test quick
    recipe = _recipe(targets=["re:.*layer\\.5\\."], init="data_aware", fit_steps=25, fit_tokens=512)
    _, applied = apply_recipe(loaded, recipe, seed=0, context=PassContext(calibration=[batch], progress=False),
                              progress=False)
    initialisation = applied[0].rewriter.statistics(loaded.adapter, applied[0].sites)["initialisation"]
    assert len(initialisation) == 2  # layer 5's attention and FFN
    for site, errors in initialisation.items():
        assert errors["data_aware"] < errors["closed_form"], site
        assert errors["held_out"]


@pytest.mark.parametrize("params, message", [
    ({"share_middle": True}, "needs share: stage"),
    ({"init": "data_aware"}, "needs calibration data"),
    ({"stages": [7]}, "beyond the model's"),
    ({"parts": ["convs"]}, "none of the targeted sites"),
])
def test_bad_settings_fail_with_one_clear_line(params, message, hf_vit_dir, hf_resnet_dir):
    source = hf_resnet_dir if "stages" in params else hf_vit_dir
    with pytest.raises(RecipeError, match=message):
        compressor.compress(source, _recipe(**params), progress=False, latency_runs=1)


def test_stage_numbers_must_be_positive_integers():
    with pytest.raises(RecipeError, match="stages expects a list of integers >= 1"):
        _recipe(stages=[0])


def test_a_plan_edited_to_borrow_a_missing_weight_fails_on_reload(hf_vit_dir, tmp_path):
    result = compressor.compress(hf_vit_dir, _recipe(), progress=False, latency_runs=1)
    out = compressor.save(result, tmp_path / "out")
    recipe = out / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("T(vit.layers.0.mlp.fc1.weight)", "T(vit.layers.0.mlp.fc9.weight)"))
    with pytest.raises(CompressorError, match="fc9"):
        load_source(out)


def test_share_middle_on_basic_blocks_is_refused_naming_the_fix(resnet20_dir):
    with pytest.raises(RecipeError, match=r"share_middle: the targeted sites \(basic blocks\) have no middle conv "
                                          r".*set tied_weights.share_middle=false"):
        compressor.compress(resnet20_dir, _recipe(parts=["convs"], share="stage", share_middle=True),
                            progress=False)


def test_share_middle_on_bottlenecks_is_accepted(hf_resnet_dir):
    result = compressor.compress(hf_resnet_dir, _recipe(parts=["convs"], share="stage", share_middle=True),
                                 progress=False, latency_runs=1)
    assert any(isinstance(m, TiedConv2d) and m.kernel_size == (3, 3) for m in result.model.modules())
