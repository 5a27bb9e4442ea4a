"""`evaluate` for models without a task metric: bare encoders (the real all-MiniLM-L6-v2 sentence embedder, a bare
ViTModel) and unlabelled text, measured by fidelity to a reference only (embedding cosine)."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.cli import main
from compressor.data.loading import UNLABELLED, load_labelled
from compressor.evaluate.runner import evaluate
from compressor.sources import load_source


def test_text_paragraphs_load_as_unlabelled_rows(paragraphs_eval, tmp_path):
    data = load_labelled(str(paragraphs_eval))
    assert data.task == UNLABELLED and len(data) == 64
    first = data.examples(0, 2)
    assert all(isinstance(text, str) and "\n" not in text and len(text.split()) > 50 for text in first)
    assert data.subset(5).examples(0, 5) != data.examples(0, 5)  # a seeded random subset, not the first rows
    import datasets

    datasets.Dataset.from_dict({"text": first, "source": ["a", "b"]}).to_parquet(str(tmp_path / "t.parquet"))
    table = load_labelled(str(tmp_path / "t.parquet"))
    assert table.task == UNLABELLED and table.examples(0, 2) == first


def test_tied_minilm_against_its_original_gives_embedding_cosine_json_and_a_card_row(
        tied_minilm_dir, minilm_dir, paragraphs_eval, tmp_path, capsys):
    args = ["evaluate", str(tied_minilm_dir), "--data", str(paragraphs_eval), "--limit", "4", "--batch-size", "2",
            "--reference", str(minilm_dir), "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["task"] == UNLABELLED and result["metrics"] == {} and result["examples"] == 4
    assert result["fidelity"]["cosine"] < 0.5  # closed-form FFN ties wreck the embedding (docs/benchmarks.md)
    assert f"{result['fidelity']['cosine']:.6g}" in captured.out
    assert "evaluate" in captured.err  # the progress bar
    card = (tied_minilm_dir / "README.md").read_text()
    assert "paragraphs-eval.txt" in card and "cosine" in card


def test_minilm_against_itself_is_exactly_faithful(minilm_dir, paragraphs_eval):
    data = load_labelled(str(paragraphs_eval)).subset(3)
    result = evaluate(load_source(minilm_dir), data, reference=load_source(minilm_dir), progress=False)
    assert result["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_bare_vit_encoder_is_measured_by_fidelity_on_image_data(hf_vit_encoder_dir, hf_vit_dir,
                                                                cifar10_test_parquet):
    data = load_labelled(str(cifar10_test_parquet)).subset(8)
    encoder = load_source(hf_vit_encoder_dir)
    result = evaluate(encoder, data, reference=load_source(hf_vit_encoder_dir), progress=False)
    assert result["metrics"] == {} and result["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    perturbed = load_source(hf_vit_encoder_dir)
    torch.manual_seed(1)
    for parameter in perturbed.model.parameters():
        parameter.data.add_(torch.randn_like(parameter) * 0.2)
    assert evaluate(encoder, data, reference=perturbed, progress=False)["fidelity"]["cosine"] < 0.999


@pytest.mark.parametrize("model, data, message", [
    ("minilm", "paragraphs", "has no labels, so only fidelity can be measured: pass --reference"),
    ("vit-encoder", "cifar", "has no task head (a bare encoder), so only fidelity can be measured"),
    ("minilm", "cifar", "holds images but"),
    ("vit-encoder", "paragraphs", "holds text but"),
])
def test_fidelity_only_cases_without_a_usable_reference_are_one_line_and_exit_2(
        model, data, message, minilm_dir, hf_vit_encoder_dir, paragraphs_eval, cifar10_test_parquet, capsys):
    source = {"minilm": minilm_dir, "vit-encoder": hf_vit_encoder_dir}[model]
    spec = {"paragraphs": paragraphs_eval, "cifar": cifar10_test_parquet}[data]
    assert main(["evaluate", str(source), "--data", str(spec), "--limit", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
