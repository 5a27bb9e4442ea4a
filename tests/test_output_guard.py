"""`--overwrite` replaces an earlier output of this toolkit (a compressed model, a sweep, a training run) and
nothing else: the recognition of each kind, and what stays protected even when it looks like one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.errors import CompressorError
from compressor.output_guard import output_kind, refuse_unsafe_replacement


def _compressed(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "vit", "compression_config": {}}))
    return directory


def test_each_kind_of_toolkit_output_is_recognised(tmp_path):
    assert output_kind(_compressed(tmp_path / "model")) == "compressed model"
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"rows": []}))
    assert output_kind(sweep) == "sweep"
    run = tmp_path / "run"
    _compressed(run / "student")
    (run / "checkpoints").mkdir()
    assert output_kind(run) == "training run"
    (run / "log.jsonl").write_text("{}\n")
    assert output_kind(run) == "training run"


@pytest.mark.parametrize("content", [{"notes.txt": "mine"}, {"config.json": '{"model_type": "vit"}'},
                                     {"sweep.json": "[1, 2]"}, {"log.jsonl": "{}", "thesis.tex": "x"}])
def test_a_directory_the_toolkit_did_not_write_is_not_an_output(tmp_path, content):
    for name, text in content.items():
        (tmp_path / name).write_text(text)
    assert output_kind(tmp_path) is None
    with pytest.raises(CompressorError, match="not an earlier output of this toolkit"):
        refuse_unsafe_replacement(tmp_path)


def test_an_earlier_output_or_an_empty_directory_may_be_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refuse_unsafe_replacement(_compressed(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    refuse_unsafe_replacement(tmp_path / "empty")


def test_an_output_holding_the_source_or_the_working_directory_stays(tmp_path, monkeypatch):
    out = _compressed(tmp_path / "out")
    (out / "vit").mkdir()
    with pytest.raises(CompressorError, match="holds the source model"):
        refuse_unsafe_replacement(out, sources=[str(out / "vit")])
    monkeypatch.chdir(out / "vit")
    with pytest.raises(CompressorError, match="holding the current directory"):
        refuse_unsafe_replacement(out)
    with pytest.raises(CompressorError, match="holding the current directory"):
        (tmp_path / "link").symlink_to(out)
        refuse_unsafe_replacement(tmp_path / "link")
