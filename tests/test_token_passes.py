"""token_merge and token_clip end to end: exact settings reproduce every family, executed FLOPs really fall,
saved models reload with identical outputs, padding and prefix tokens are respected, act composes."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.errors import CompressorError, RecipeError
from compressor.evaluate.cost import count_flops
from compressor.sources import load_source
from probes import output_of

TOKEN_FAMILIES = ["hf_vit_dir", "hf_deit_dir", "hf_bert_dir", "timm_vit_dir", "timm_deit_dir", "hf_detr_dir"]
#: families with windowed attention: clipping only, the same number of tokens kept in every window
WINDOW_FAMILIES = ["hf_swin_dir", "timm_swin_dir"]


def _outputs(loaded, model, inputs):
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def _compress(source, recipe, *overrides):
    return compressor.compress(source, recipe, overrides=list(overrides), progress=False, latency_runs=1)


@pytest.mark.parametrize("fixture", TOKEN_FAMILIES)
@pytest.mark.parametrize("recipe, exact", [("tome", "token_merge.r=0"), ("token-clip", "token_clip.keep_ratio=1")])
def test_exact_settings_reproduce_the_original_model(fixture, recipe, exact, request):
    source = request.getfixturevalue(fixture)
    original = load_source(source)
    result = _compress(source, recipe, exact)
    inputs = original.adapter.example_inputs(batch_size=2, seed=3)
    diff = (_outputs(original, original.model, inputs) - _outputs(result.loaded, result.model, inputs)).abs().max()
    assert diff.item() <= 1e-5
    assert result.report["flops"]["after"] == result.report["flops"]["before"]


@pytest.mark.parametrize("fixture", TOKEN_FAMILIES)
@pytest.mark.parametrize("recipe, setting", [("tome", "token_merge.r=16"), ("token-clip", "token_clip.keep_ratio=0.5")])
def test_executed_flops_fall_and_reload_gives_identical_outputs(fixture, recipe, setting, request, tmp_path):
    source = request.getfixturevalue(fixture)
    result = _compress(source, recipe, setting)
    inputs = result.loaded.adapter.example_inputs(batch_size=2, seed=4)
    original = load_source(source)
    # torch's FlopCounterMode counts what really ran, not a formula
    assert count_flops(result.model, inputs) < count_flops(original.model, inputs)
    summary = result.report["passes"][0]["summary"]
    assert summary["mean tokens/N"] < 1
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    diff = (_outputs(result.loaded, result.model, inputs) - _outputs(reloaded, reloaded.model, inputs)).abs().max()
    assert diff.item() <= 1e-5


def test_tome_on_the_trained_vit_keeps_most_predictions_at_lower_cost(vit_cifar10_dir):
    result = _compress(vit_cifar10_dir, "tome", "token_merge.r=8")
    original = load_source(vit_cifar10_dir)
    inputs = original.adapter.example_inputs(batch_size=8, seed=0)
    before, after = _outputs(original, original.model, inputs), _outputs(result.loaded, result.model, inputs)
    assert result.report["flops"]["after"] < 0.7 * result.report["flops"]["before"]
    assert torch.nn.functional.cosine_similarity(before, after).mean() > 0.9
    assert result.report["passes"][0]["statistics"]["tokens_in"] == 65


@pytest.mark.parametrize("recipe, setting", [("tome", "token_merge.r=3"), ("token-clip", "token_clip.keep_ratio=0.5")])
def test_bert_padding_never_reaches_real_tokens(hf_bert_dir, recipe, setting):
    """Whatever sits in the padded positions, the sentence embedding of the real tokens is the same."""
    result = _compress(hf_bert_dir, recipe, setting)
    batch = result.loaded.adapter.prepare_inputs(["short", "a much longer sentence that forces padding in the batch"])
    assert (batch["attention_mask"] == 0).any()
    scrambled = dict(batch)
    scrambled["input_ids"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"],
                                         torch.randint(1000, 2000, batch["input_ids"].shape))
    before, after = _outputs(result.loaded, result.model, batch), _outputs(result.loaded, result.model, scrambled)
    assert (before - after).abs().max().item() <= 1e-5


def test_token_states_of_a_bert_stay_complete(minilm_dir):
    result = _compress(minilm_dir, "tome", "token_merge.r=8")
    inputs = result.loaded.adapter.example_inputs(batch_size=1, seed=0)
    with torch.no_grad():
        hidden = result.model(**inputs).last_hidden_state
    assert hidden.shape[1] == inputs["input_ids"].shape[1]
    assert result.report["passes"][0]["statistics"]["tokens_after_block"]


def test_plain_bipartite_merging_differs_from_proportional_attention(vit_cifar10_dir):
    inputs = load_source(vit_cifar10_dir).adapter.example_inputs(batch_size=2, seed=0)
    plain = _compress(vit_cifar10_dir, "tome", "token_merge.r=8", "token_merge.proportional_attention=false")
    proportional = _compress(vit_cifar10_dir, "tome", "token_merge.r=8")
    assert plain.report["flops"]["after"] == proportional.report["flops"]["after"]
    diff = _outputs(plain.loaded, plain.model, inputs) - _outputs(proportional.loaded, proportional.model, inputs)
    assert diff.abs().max().item() > 1e-4


def test_tome_composes_with_act_query_clustering(hf_vit_dir):
    recipe = compressor.Recipe.from_dict({"compress_stage": {"token_merge": {"r": 2},
                                                             "act": {"rounds": 4, "bucket_width": 1e-5}}})
    result = compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    merged_only = _compress(hf_vit_dir, "tome", "token_merge.r=2")
    inputs = result.loaded.adapter.example_inputs(batch_size=2, seed=1)
    # singleton clusters: ACT is exact, so act + ToMe computes what ToMe alone computes
    diff = _outputs(result.loaded, result.model, inputs) - _outputs(merged_only.loaded, merged_only.model, inputs)
    assert diff.abs().max().item() <= 1e-4


def test_act_clustering_keys_cannot_weigh_merged_tokens_and_says_so(hf_vit_dir):
    recipe = compressor.Recipe.from_dict({"compress_stage": {"token_merge": {"r": 2},
                                                             "act": {"rounds": 4, "cluster": "keys"}}})
    with pytest.raises(CompressorError, match="act.cluster=queries"):
        compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)


def test_mean_importance_clipping_with_act_is_refused_in_one_line(hf_vit_dir):
    recipe = compressor.Recipe.from_dict({"compress_stage": {"act": {"rounds": 4},
                                                             "token_clip": {"importance": "mean"}}})
    with pytest.raises(CompressorError, match="attention kernel"):
        compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)


@pytest.mark.parametrize("order", [("token_merge", "token_clip"), ("token_clip", "token_merge")])
def test_token_merge_and_token_clip_on_one_block_are_refused_naming_it(order, hf_vit_dir):
    recipe = compressor.Recipe.from_dict({"compress_stage": {name: None for name in order}})
    with pytest.raises(RecipeError, match="a block reduces them one way") as raised:
        compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    assert "vit.layers.1" in str(raised.value) or "vit.encoder.layer.1" in str(raised.value)


MERGE_EARLY = {"targets": ["re:.*layers?\\.0$"], "r": 3}
CLIP_LATER = {"targets": ["re:.*layers?\\.1$"], "keep_ratio": 0.5}


@pytest.mark.parametrize("order", [("token_merge", "token_clip"), ("token_clip", "token_merge")])
def test_merging_one_block_and_clipping_another_share_the_reducer_and_reload_identically(order, hf_vit_dir, tmp_path):
    settings = {"token_merge": MERGE_EARLY, "token_clip": CLIP_LATER}
    recipe = compressor.Recipe.from_dict({"compress_stage": {name: settings[name] for name in order}})
    result = compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    tokens = result.report["passes"][0]["statistics"]["tokens_after_block"]
    first, second = tokens.values()
    assert first == 17 - 3  # the merge: 16 patches + the class token, 3 pairs merged
    assert second == 1 + round(0.5 * (first - 1)) + 1  # the clip: the class token, half the rest, the fused token
    assert result.report["flops"]["after"] < result.report["flops"]["before"]
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    inputs = reloaded.adapter.example_inputs(batch_size=2, seed=1)
    assert torch.equal(_outputs(result.loaded, result.model, inputs), _outputs(reloaded, reloaded.model, inputs))


def test_merge_and_clip_at_their_exact_settings_together_reproduce_the_model(hf_vit_dir):
    recipe = compressor.Recipe.from_dict({"compress_stage": {"token_merge": {**MERGE_EARLY, "r": 0},
                                                             "token_clip": {**CLIP_LATER, "keep_ratio": 1.0}}})
    result = compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    original = load_source(hf_vit_dir)
    inputs = original.adapter.example_inputs(batch_size=2, seed=1)
    difference = _outputs(original, original.model, inputs) - _outputs(result.loaded, result.model, inputs)
    assert difference.abs().max().item() <= 1e-5


@pytest.mark.parametrize("fixture", ["hf_resnet_dir", "hf_swin_dir"])
def test_unsupported_family_is_a_recipe_error(fixture, request):
    with pytest.raises(RecipeError, match="finds no sites for token_merge"):
        _compress(request.getfixturevalue(fixture), "tome")


@pytest.mark.parametrize("fixture", WINDOW_FAMILIES)
def test_swin_exact_settings_reproduce_the_original_model(fixture, request):
    """keep_ratio 1 runs the original blocks; just below 1 every window keeps all its tokens but they go through
    the gather/scatter path (window partition, shift and padding as an index permutation): both are exact."""
    source = request.getfixturevalue(fixture)
    original = load_source(source)
    inputs = original.adapter.example_inputs(batch_size=2, seed=3)
    expected = _outputs(original, original.model, inputs)
    for keep in ("1", "0.999"):
        result = _compress(source, "token-clip", f"token_clip.keep_ratio={keep}")
        assert (expected - _outputs(result.loaded, result.model, inputs)).abs().max().item() <= 1e-5
        assert result.report["passes"][0]["summary"]["mean tokens/N"] == 1.0


@pytest.mark.parametrize("fixture", WINDOW_FAMILIES)
def test_swin_windows_really_shrink_and_reload_identically(fixture, request, tmp_path):
    source = request.getfixturevalue(fixture)
    result = _compress(source, "token-clip", "token_clip.keep_ratio=0.5")
    inputs = result.loaded.adapter.example_inputs(batch_size=2, seed=4)
    assert count_flops(result.model, inputs) < count_flops(load_source(source).model, inputs)
    statistics = result.report["passes"][0]["statistics"]
    after = list(statistics["tokens_after_block"].values())
    window = result.loaded.adapter.token_layout().window
    area = window[0] * window[1]
    kept = round(area / 2)
    assert after[0] == statistics["tokens_in"]  # the first block only scores
    assert after[1] == statistics["tokens_in"] // area * kept  # half of every window from then on
    assert all(count % kept == 0 for count in after[1:])
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    diff = (_outputs(result.loaded, result.model, inputs) - _outputs(reloaded, reloaded.model, inputs)).abs().max()
    assert diff.item() <= 1e-5



def test_class_importance_without_a_class_token_is_a_recipe_error(hf_detr_dir):
    with pytest.raises(RecipeError, match="needs a class token"):
        _compress(hf_detr_dir, "token-clip", "token_clip.importance=cls")


def test_detr_sparse_encoder_keeps_the_full_feature_map_for_the_decoder(hf_detr_dir):
    """Clipping after the first encoder layer: later layers update half the tokens, the decoder still
    cross-attends every position, and positions that left keep their first-layer state."""
    result = _compress(hf_detr_dir, "token-clip", "token_clip.keep_ratio=0.5", "token_clip.fuse=false")
    inputs = result.loaded.adapter.example_inputs(batch_size=1, seed=2)
    tokens = result.loaded.adapter.token_layout(inputs).sequence_length
    last = output_of(result.model.model.encoder.layers[-1], result.model, inputs)
    original = load_source(hf_detr_dir).model
    first_original = output_of(original.model.encoder.layers[0], original, inputs)
    assert last.shape[1] == tokens
    assert result.report["passes"][0]["statistics"]["tokens_after_block"]["model.encoder.layers.0"] == tokens // 2
    unchanged = (last - first_original).abs().amax(dim=-1)[0] <= 1e-5
    assert int(unchanged.sum()) == tokens - tokens // 2


def test_value_norm_clipping_reproduces_the_model_at_keep_1_and_runs_under_act(hf_detr_dir):
    """Ranking by value norms needs no attention matrix, so ACT's kernel may serve the same layers; with singleton
    clusters (ACT exact) the pair computes what clipping alone computes."""
    original = load_source(hf_detr_dir)
    inputs = original.adapter.example_inputs(batch_size=2, seed=3)
    exact = _compress(hf_detr_dir, "token-clip", "token_clip.keep_ratio=1", "token_clip.importance=value_norm")
    diff = _outputs(original, original.model, inputs) - _outputs(exact.loaded, exact.model, inputs)
    assert diff.abs().max().item() <= 1e-5
    clip = {"keep_ratio": 0.5, "importance": "value_norm"}
    both = compressor.compress(hf_detr_dir, compressor.Recipe.from_dict(
        {"compress_stage": {"act": {"rounds": 4, "bucket_width": 1e-5}, "token_clip": clip}}),
        progress=False, latency_runs=1)
    alone = _compress(hf_detr_dir, "token-clip", "token_clip.keep_ratio=0.5", "token_clip.importance=value_norm")
    assert both.report["flops"]["after"] < both.report["flops"]["before"]
    diff = _outputs(both.loaded, both.model, inputs) - _outputs(alone.loaded, alone.model, inputs)
    assert diff.abs().max().item() <= 1e-4


def test_value_norm_ranking_in_windowed_attention_is_a_recipe_error(hf_swin_dir):
    with pytest.raises(RecipeError, match="windowed attention"):
        _compress(hf_swin_dir, "token-clip", "token_clip.importance=value_norm")


def test_cli_refuses_clipping_by_mean_attention_under_act_with_exit_2(hf_detr_dir, tmp_path, capsys):
    from compressor.cli import main

    recipe = tmp_path / "both.yaml"
    recipe.write_text("description: act and sparse encoder\ncompress_stage:\n  act: {rounds: 4}\n"
                      "  token_clip: {keep_ratio: 0.5}\n")
    out = tmp_path / "out"
    assert main(["compress", str(hf_detr_dir), "--recipe", str(recipe), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "attention kernel" in error
    assert not out.exists()


def _padded_inputs(fixture, loaded):
    if fixture == "hf_bert_dir":
        return loaded.adapter.prepare_inputs(["short", "a much longer sentence that forces padding in the batch"])
    inputs = loaded.adapter.example_inputs(batch_size=2, size=(128, 160), seed=1)
    inputs["pixel_mask"][1, :, 96:] = 0  # the second image is narrower: DETR's padded batch
    return inputs


@pytest.mark.parametrize("fixture", ["hf_bert_dir", "hf_detr_dir"])
@pytest.mark.parametrize("recipe, exact", [("tome", "token_merge.r=0"), ("token-clip", "token_clip.keep_ratio=1")])
def test_exact_settings_reproduce_padded_batches(fixture, recipe, exact, request):
    source = request.getfixturevalue(fixture)
    original = load_source(source)
    inputs = _padded_inputs(fixture, original)
    result = _compress(source, recipe, exact)
    diff = (_outputs(original, original.model, inputs) - _outputs(result.loaded, result.model, inputs)).abs().max()
    assert diff.item() <= 1e-5


def test_timm_average_pooling_gets_every_token_back():
    """A timm ViT that averages its tokens reads the full token map after the blocks (unmerge); class-token
    pooling reads the reduced sequence."""
    import copy

    import timm

    from compressor.models import adapter_for
    from compressor.recipe_runner import apply_recipe
    from compressor.sources import LoadedModel
    from probes import input_of

    for pool, restored in (("avg", True), ("token", False)):
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                                  depth=2, num_heads=2, num_classes=10, global_pool=pool).eval()
        original = copy.deepcopy(model)
        loaded = LoadedModel(model, adapter_for(model), "memory", "memory")
        apply_recipe(loaded, compressor.Recipe.from_dict({"compress_stage": {"token_merge": {"r": 4}}}), seed=0,
                     progress=False)
        inputs = loaded.adapter.example_inputs(batch_size=2)
        tokens = input_of(model.norm, model, inputs).shape[1]
        assert (tokens == input_of(original.norm, original, inputs).shape[1]) == restored
