"""Loading compressed models from the Hub by repo id, against a real Hub-protocol server (olah) on 127.0.0.1.

The compressed directory is published as a git repository that olah serves; `compressor.load("org/name")`,
every CLI SOURCE, and plain transformers then fetch it over HTTP exactly as from huggingface.co.
"""

from __future__ import annotations

import json

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.errors import SourceError
from compressor.sources import load_source


def outputs(loaded, model) -> torch.Tensor:
    inputs = loaded.adapter.example_inputs(batch_size=2, seed=11)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def test_compressor_load_by_repo_id_downloads_and_rebuilds_identical_outputs(hub_endpoint, compressed_vit_dir,
                                                                            tmp_path):
    sha = hub_endpoint.publish("tiny-org/vit-act", compressed_vit_dir)
    local = load_source(compressed_vit_dir)

    model = compressor.load("tiny-org/vit-act")

    assert (outputs(local, local.model) - outputs(local, model)).abs().max().item() <= 1e-5
    snapshot = tmp_path / "hub-cache" / "models--tiny-org--vit-act" / "snapshots" / sha
    assert {p.name for p in snapshot.iterdir()} >= {"config.json", "model.safetensors", "recipe.yaml", "README.md"}
    kernels = [m for m in model.modules() if type(m).__name__ == "ACTKernel"]
    assert len(kernels) == 2


def test_a_branch_is_loaded_with_revision(hub_endpoint, compressed_vit_dir):
    hub_endpoint.publish("tiny-org/vit-branch", compressed_vit_dir, branch="compressed")
    loaded = load_source("tiny-org/vit-branch", revision="compressed")
    assert loaded.compression["family"] == "hf-vit" and loaded.source == "tiny-org/vit-branch"
    with pytest.raises(SourceError):
        load_source("tiny-org/vit-branch")  # no main branch


def test_every_cli_source_accepts_a_repo_id(hub_endpoint, compressed_vit_dir, hf_vit_dir, tmp_path, monkeypatch,
                                           capsys):
    hub_endpoint.publish("tiny-org/vit-act", compressed_vit_dir)
    hub_endpoint.publish("tiny-org/vit", hf_vit_dir)
    monkeypatch.chdir(tmp_path)

    assert main(["inspect", "tiny-org/vit-act", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["compressed"] is True and info["family"] == "hf-vit"

    assert main(["compress", "tiny-org/vit", "--recipe", "act", "--set", "act.rounds=4", "--out", "from-hub",
                 "--quiet", "--latency-runs", "1"]) == 0
    report = json.loads((tmp_path / "from-hub" / "report.json").read_text())
    assert report["base_model"] == "tiny-org/vit"


def test_an_unknown_repo_is_one_line_naming_the_repo(hub_endpoint):
    with pytest.raises(SourceError) as raised:
        compressor.load("tiny-org/no-such-model")
    assert "tiny-org/no-such-model" in str(raised.value) and "\n" not in str(raised.value)


def test_plain_transformers_loads_the_uncompressed_base_model(hub_endpoint, compressed_vit_dir, hf_vit_dir):
    """`AutoModel...from_pretrained` on a compressed repo works but gives the base architecture with exact attention:
    the weights are the original ones, the ACT hash projections are reported unused. The compressed computation is
    only rebuilt by compressor.load (documented in the model card and the README)."""
    from transformers import AutoModelForImageClassification

    hub_endpoint.publish("tiny-org/vit-act", compressed_vit_dir)
    original = load_source(hf_vit_dir)
    compressed = load_source(compressed_vit_dir)

    plain = AutoModelForImageClassification.from_pretrained("tiny-org/vit-act").eval()

    assert not [m for m in plain.modules() if type(m).__name__ == "ACTKernel"]
    assert (outputs(original, original.model) - outputs(original, plain)).abs().max().item() <= 1e-5
    assert (outputs(original, compressed.model) - outputs(original, plain)).abs().max().item() > 1e-4  # ACT differs
