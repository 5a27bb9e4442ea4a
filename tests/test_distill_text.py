"""`distill` for bare encoders on unlabelled text: the real all-MiniLM-L6-v2 with tied FFNs learns its original's
sentence embedding (cosine or MSE, optionally hidden-feature MSE without the padding), the best checkpoint is
picked by embedding cosine to the teacher, and a killed run resumes exactly (dropout included: accelerate restores
the RNG states).

The texts are the first 40 words of real passages (benchmarks/data/paragraphs-*.txt) so that a step takes a
fraction of a second; the full passages are for benchmarks/distill_minilm_tied.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compressor.cli import main
from compressor.data.loading import load_labelled, read_paragraphs
from compressor.distill import trainer
from compressor.distill.losses import embedding_distance, feature_mse
from compressor.distill.trainer import Distiller, DistillConfig
from compressor.errors import CompressorError
from compressor.sources import load_source


def _opening_words(source: Path, destination: Path, count: int) -> Path:
    destination.write_text("\n\n".join(" ".join(p.split()[:40]) for p in read_paragraphs(source)[:count]) + "\n")
    return destination


@pytest.fixture(scope="module")
def short_texts(paragraphs_calib, paragraphs_eval, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("texts")
    return (_opening_words(paragraphs_calib, folder / "train.txt", 16),
            _opening_words(paragraphs_eval, folder / "eval.txt", 8))


def _run(student_dir, texts, out, resume=False, eval_texts=None, **overrides):
    config = DistillConfig(**{"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3,
                              **overrides})
    student = load_source(student_dir)
    eval_data = load_labelled(str(eval_texts)) if eval_texts is not None else None
    return Distiller(student, load_source(student.base_model), load_labelled(str(texts)), out, config, eval_data,
                     progress=False).run(resume=resume)


def test_embedding_distance_is_zero_for_equal_embeddings_and_cosine_ignores_scale():
    embedding = torch.randn(4, 16)
    assert embedding_distance(embedding, embedding).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_distance(3 * embedding, embedding).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_distance(-embedding, embedding).item() == pytest.approx(2.0, abs=1e-6)
    assert embedding_distance(3 * embedding, embedding, "mse").item() == pytest.approx(
        float((2 * embedding).pow(2).mean()), rel=1e-5)
    with pytest.raises(CompressorError, match="embedding_loss 'l1'"):
        DistillConfig(embedding_loss="l1")


def test_feature_mse_leaves_padding_tokens_out():
    teacher = tuple(torch.randn(2, 5, 8) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student = tuple(t.clone() for t in teacher)
    for hidden in student:
        hidden[0, 3:] += 10.0  # differs on the padded tokens only
    assert feature_mse(student, teacher, mask).item() == 0.0
    assert feature_mse(student, teacher).item() > 1.0


def test_tied_minilm_learns_its_originals_embedding_and_keeps_the_best_by_cosine(tied_minilm_dir, short_texts,
                                                                                tmp_path):
    texts, eval_texts = short_texts
    summary = _run(tied_minilm_dir, texts, tmp_path / "run", eval_texts=eval_texts, steps=6, eval_every=3,
                   feature_weight=1.0)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert {"embedding", "feature"} <= set(log[1]) and "kd" not in log[1]
    assert losses[-1] < 0.8 * losses[0]
    evaluations = [r["eval"]["cosine"] for r in log if "eval" in r]
    assert len(evaluations) == 3 and summary["before"]["cosine"] == evaluations[0]
    assert summary["best"] == max(evaluations[1:]) > evaluations[0] + 0.1  # held-out texts, not the training ones
    best = load_source(tmp_path / "run" / "best")
    data = load_labelled(str(eval_texts))
    from compressor.evaluate.runner import evaluate

    again = evaluate(best, data, reference=load_source(best.base_model), progress=False)
    assert again["fidelity"]["cosine"] == pytest.approx(summary["best"], abs=1e-5)


def test_text_distillation_resumed_after_a_kill_ends_where_an_uninterrupted_run_does(tied_minilm_dir, short_texts, tmp_path,
                                                                       monkeypatch):
    texts, _ = short_texts
    _run(tied_minilm_dir, texts, tmp_path / "a", batch_size=4)

    def killed(step):
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "on_step_end", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(tied_minilm_dir, texts, tmp_path / "c", batch_size=4)
    monkeypatch.setattr(trainer, "on_step_end", lambda step: None)
    assert _run(tied_minilm_dir, texts, tmp_path / "c", resume=True, batch_size=4)["steps"] == 4
    a, c = (load_file(str(tmp_path / run / "best" / "model.safetensors")) for run in "ac")
    original = load_file(str(tied_minilm_dir / "model.safetensors"))
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], original[k]) for k in a)


def test_cli_distills_text_with_mse_and_refuses_images_for_a_text_student(tied_minilm_dir, short_texts,
                                                                         cifar10_test_parquet, tmp_path, capsys):
    texts, _ = short_texts
    args = ["distill", str(tied_minilm_dir), "--data", str(texts), "--batch-size", "8", "--steps", "1", "--quiet",
            "--embedding-loss", "mse"]
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert record["embedding"] > 0 and "feature" not in record
    capsys.readouterr()
    assert main(["distill", str(tied_minilm_dir), "--data", str(cifar10_test_parquet), "--limit", "8",
                 "--out", str(tmp_path / "images"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds images but" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as usage_error:  # argparse's choices: one line, exit 2 (compressor.cli)
        main(args + ["--embedding-loss", "l1", "--out", str(tmp_path / "bad")])
    assert usage_error.value.code == 2
    assert "invalid choice: 'l1'" in capsys.readouterr().err
