"""`act` only where it pays: a layer where clustering costs more FLOPs than exact attention is left exact, the
report says which and why, and `act` never raises the FLOPs the report measures."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.report import format_table
from compressor.sources import load_source


def _kernels(model):
    return [m for m in model.modules() if type(m).__name__ == "ACTKernel"]


def test_short_sequences_stay_exact_and_the_report_warns(hf_vit_dir):
    """17 tokens of width 8: 32 rounds of hashing per token cost more than all of attention, for any clustering."""
    result = compressor.compress(hf_vit_dir, "act", progress=False, latency_runs=1)
    assert not _kernels(result.model)
    assert result.report["flops"]["after"] <= result.report["flops"]["before"]
    act = result.report["passes"][0]
    assert set(act["statistics"]["left_exact"]) == set(act["sites"])
    assert all("cannot pay at this sequence length" in why for why in act["statistics"]["left_exact"].values())
    assert all(entry == {"bucket_width": None} for entry in result.recipe.to_dict()["compress_stage"]["act"]["plan"].values())
    assert "warning: act changed nothing: every site is left exact" in format_table(result.report)


def test_a_layer_whose_clusters_do_not_pay_on_the_data_is_left_exact(hf_vit_dir):
    """16 rounds could pay at 17 tokens with few clusters, but not with the clusters this input forms."""
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.rounds=16"], progress=False, latency_runs=1)
    left = result.report["passes"][0]["statistics"]["left_exact"]
    assert left and all("on the example input" in why and "× exact attention" in why for why in left.values())
    assert result.report["flops"]["after"] <= result.report["flops"]["before"]


def test_calibration_data_decides_when_given(hf_vit_dir, cifar10_train_parquet):
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.rounds=16"], calib=str(cifar10_train_parquet),
                                 calib_samples=4, progress=False, latency_runs=1)
    left = result.report["passes"][0]["statistics"]["left_exact"]
    assert left and all("on the calibration data" in why for why in left.values())
    assert result.report["flops"]["after"] <= result.report["flops"]["before"]


def test_long_sequences_keep_act_and_save_flops(hf_detr_dir, tmp_path):
    result = compressor.compress(hf_detr_dir, "act", input_size=(256, 256), progress=False, latency_runs=1)
    assert len(_kernels(result.model)) == 2  # both encoder layers (64 tokens)
    assert result.report["passes"][0]["statistics"]["left_exact"] == {}
    assert result.report["flops"]["after"] < result.report["flops"]["before"]
    assert len(_kernels(load_source(compressor.save(result, tmp_path / "out")).model)) == 2


@pytest.mark.parametrize("cluster", ["queries", "keys", "both"])
def test_act_never_raises_the_measured_flops(hf_bert_dir, cluster):
    result = compressor.compress(hf_bert_dir, "act", overrides=[f"act.cluster={cluster}", "act.rounds=8"],
                                 input_size=(64,), progress=False, latency_runs=1)
    assert result.report["flops"]["after"] <= result.report["flops"]["before"]


def test_with_the_check_off_every_targeted_layer_is_clustered_even_where_it_costs_more(hf_vit_dir):
    """`only_where_it_pays: false` is how `act` behaved before it weighed the cost: the same 17-token layers that
    the check leaves exact get a bucket width and a kernel, and the FLOPs rise."""
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.only_where_it_pays=false"], progress=False,
                                 latency_runs=1)
    act = result.report["passes"][0]
    assert len(_kernels(result.model)) == len(act["sites"]) > 0
    assert act["statistics"]["left_exact"] == {}
    assert all(entry == {"bucket_width": 8.0} for entry in result.recipe.to_dict()["compress_stage"]["act"]["plan"].values())
    assert result.report["flops"]["after"] > result.report["flops"]["before"]


@pytest.mark.parametrize("fixture", ["hf_vit_dir", "hf_detr_dir"])
def test_with_the_check_off_singleton_clusters_still_reproduce_the_original_model(fixture, request):
    """The exact setting (a bucket width no two tokens share) stays exact with real kernels installed."""
    source = request.getfixturevalue(fixture)
    original = load_source(source)
    result = compressor.compress(source, "act", overrides=["act.bucket_width=1e-5", "act.only_where_it_pays=false"],
                                 progress=False, latency_runs=1)
    assert len(_kernels(result.model)) == len(result.report["passes"][0]["sites"]) > 0
    inputs = original.adapter.example_inputs(batch_size=2, seed=3)
    with torch.no_grad():
        before = original.adapter.primary_output(original.model(**inputs), inputs)
        after = result.loaded.adapter.primary_output(result.model(**inputs), inputs)
    assert (before - after).abs().max().item() <= 1e-5
    assert result.report["passes"][0]["summary"]["mean prototypes/N"] == 1.0


def test_a_switch_that_is_not_true_or_false_is_refused_in_one_line(hf_vit_dir, tmp_path, capsys):
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--set", "act.only_where_it_pays=maybe",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "only_where_it_pays" in error and "true or false" in error and "\n" not in error
    assert not (tmp_path / "out").exists()
