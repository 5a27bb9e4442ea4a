"""compress → save → load, end to end on real architectures (small local checkpoints and the real trained models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import compressor
from compressor.errors import RecipeError
from compressor.passes.act import ACTPass
from compressor.sources import load_source

#: fixtures of every family ACT applies to (global self-attention), HF and timm
ACT_FAMILIES = ["hf_vit_dir", "hf_deit_dir", "hf_detr_dir", "hf_bert_dir", "timm_vit_dir", "timm_deit_dir"]

OUTPUT_FILES = {"config.json", "model.safetensors", "recipe.yaml", "report.json", "README.md"}


def _outputs(loaded, model, batch_size=2, seed=5):
    inputs = loaded.adapter.example_inputs(batch_size=batch_size, seed=seed)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


@pytest.mark.parametrize("fixture", ACT_FAMILIES)
def test_compressed_model_reloads_with_identical_outputs(fixture, request, tmp_path):
    source = request.getfixturevalue(fixture)
    # the DETR fixture's own example has 6 encoder tokens, where ACT never pays (and is left exact): measure at 128²
    result = compressor.compress(source, "act", overrides=["act.rounds=8", "act.bucket_width=2"], progress=False,
                                 latency_runs=1, input_size=(128, 128) if fixture == "hf_detr_dir" else None)
    out = compressor.save(result, tmp_path / "out")
    assert OUTPUT_FILES <= {p.name for p in out.iterdir()}
    reloaded = load_source(out)
    assert reloaded.compression["family"] == result.loaded.adapter.family
    expected = _outputs(result.loaded, result.model)
    actual = _outputs(result.loaded, reloaded.model)
    assert (expected - actual).abs().max().item() <= 1e-5
    # the hash projections really are in the file (a reloaded kernel does not draw its own)
    kernels = [m for m in reloaded.model.modules() if type(m).__name__ == "ACTKernel"]
    assert kernels and all(k.projections.shape[0] == 8 for k in kernels)


@pytest.mark.parametrize("fixture", ["hf_vit_dir", "hf_detr_dir", "timm_deit_dir"])
def test_singleton_clusters_reproduce_the_original_model(fixture, request):
    source = request.getfixturevalue(fixture)
    original = load_source(source)
    result = compressor.compress(source, "act", overrides=["act.bucket_width=1e-5"], progress=False,
                                 latency_runs=1)
    diff = (_outputs(original, original.model) - _outputs(result.loaded, result.model)).abs().max().item()
    assert diff <= 1e-5
    assert result.report["passes"][0]["summary"]["mean prototypes/N"] == 1.0


def test_singleton_clusters_reproduce_bert_with_padding(hf_bert_dir):
    original = load_source(hf_bert_dir)
    result = compressor.compress(hf_bert_dir, "act", overrides=["act.bucket_width=1e-5", "act.cluster=both"],
                                 progress=False, latency_runs=1)
    batch = original.adapter.prepare_inputs(["a short one", "a much longer sentence that forces some padding in"])
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        before = original.model(**batch).logits
        after = result.model(**batch).logits
    assert (before - after).abs().max().item() <= 1e-5


def test_report_has_params_flops_latency_and_per_layer_prototypes(hf_detr_dir, tmp_path):
    result = compressor.compress(hf_detr_dir, "act", progress=False, latency_runs=2)
    report = json.loads((compressor.save(result, tmp_path / "out") / "report.json").read_text())
    for key in ("params", "flops", "latency_ms"):
        assert report[key]["before"] > 0 and report[key]["after"] > 0
    assert report["params"]["before"] == report["params"]["after"] - sum(
        0 for _ in range(1))  # ACT adds buffers, never parameters
    act = report["passes"][0]
    assert act["name"] == "act"
    encoder_sites = [s for s in act["sites"] if ".encoder." in s]
    assert encoder_sites == act["sites"] and len(encoder_sites) == 2  # default targets: DETR encoder only
    assert set(act["statistics"]["prototype_fraction"]) == set(act["sites"])
    assert all(0 < f <= 1 for f in act["statistics"]["prototype_fraction"].values())


def test_flops_fall_when_tokens_share_clusters(hf_bert_dir):
    """Coarse buckets put many tokens in one cluster: the executed FLOPs (torch's counter) must drop."""
    result = compressor.compress(hf_bert_dir, "act", overrides=["act.bucket_width=1000", "act.rounds=4"],
                                 input_size=(128,), progress=False, latency_runs=1)
    flops = result.report["flops"]
    assert flops["after"] < flops["before"]
    assert result.report["passes"][0]["summary"]["mean prototypes/N"] < 0.1


def test_resolved_recipe_spells_out_defaults_and_the_per_site_plan(hf_vit_dir, tmp_path):
    # 8 rounds: at 17 tokens of width 8, 16 rounds of hashing cost more than the attention they save (left exact)
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.rounds=8"], progress=False, latency_runs=1)
    resolved = yaml.safe_load((compressor.save(result, tmp_path / "out") / "recipe.yaml").read_text())
    act = resolved["compress_stage"]["act"]
    assert set(ACTPass.all_params()) <= set(act)
    assert act["rounds"] == 8
    assert set(act["plan"]) == set(result.report["passes"][0]["sites"])
    assert all(entry == {"bucket_width": 8.0} for entry in act["plan"].values())


def test_same_seed_gives_byte_identical_weights(hf_vit_dir, tmp_path):
    paths = []
    for name in ("a", "b"):
        result = compressor.compress(hf_vit_dir, "act", seed=7, progress=False, latency_runs=1)
        paths.append(compressor.save(result, tmp_path / name) / "model.safetensors")
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_targets_select_sites_and_ignore_removes_them(hf_detr_dir):
    recipe = compressor.Recipe.load("act").with_overrides([
        "act.targets=[model.encoder.layers.*.self_attn, model.decoder.layers.0.self_attn]",
        "act.ignore=[model.encoder.layers.0.self_attn]"])
    result = compressor.compress(hf_detr_dir, recipe, progress=False, latency_runs=1)
    assert result.report["passes"][0]["sites"] == ["model.encoder.layers.1.self_attn",
                                                   "model.decoder.layers.0.self_attn"]


def test_pattern_that_matches_nothing_is_a_recipe_error(hf_vit_dir):
    with pytest.raises(RecipeError, match="matches no act site"):
        compressor.compress(hf_vit_dir, "act", overrides=["act.targets=[re:encoder\\.nothing]"], progress=False)


def test_act_on_a_model_without_global_attention_says_so(hf_swin_dir):
    with pytest.raises(RecipeError, match="finds no sites for act"):
        compressor.compress(hf_swin_dir, "act", progress=False)


def test_calibration_without_data_asks_for_calib(hf_vit_dir):
    with pytest.raises(RecipeError, match="--calib"):
        compressor.compress(hf_vit_dir, "act-calibrated", progress=False)


def test_calibrated_widths_meet_the_fidelity_target_on_real_text(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 on real paragraphs: the calibrated model keeps the requested cosine on calibration data,
    uses fewer prototypes than tokens, and the per-layer widths survive save/reload."""
    paragraphs = Path(__file__).parents[1] / "benchmarks" / "data" / "paragraphs-calib.txt"
    result = compressor.compress(minilm_dir, "act-calibrated", calib=str(paragraphs), calib_samples=8,
                                 overrides=["act.rounds=8", "act.fidelity_target=0.98",
                                            "act.bucket_widths=[4, 8, 16, 32]"],
                                 progress=False, latency_runs=1)
    assert result.report["fidelity"]["calibration_cosine"] >= 0.98
    assert result.report["passes"][0]["summary"]["mean prototypes/N"] < 0.9
    plan = result.recipe.to_dict()["compress_stage"]["act"]["plan"]
    assert len(plan) == 6
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    batch = result.loaded.adapter.prepare_inputs(["Calibration chooses a bucket width per layer."])
    with torch.no_grad():
        diff = (result.model(**batch).last_hidden_state - reloaded.model(**batch).last_hidden_state).abs().max()
    assert diff.item() <= 1e-5
