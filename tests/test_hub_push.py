"""Publishing: `cli.py push`, `compress --push-to`, and the model card a pushed repository carries.

The writes go to `HubWriteStandIn` (tests/hub_servers.py), a local endpoint implementing only what create_repo,
create_branch and upload_folder call — a stand-in, because no writable Hub server can run here. Its docstring lists
what only the real Hub can confirm (token and namespace checks, LFS/Xet upload, card validation, privacy, branch
semantics). What it received is then served by the real olah mirror and loaded back by repo id.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import compressor
from checkpoints_compressed import SMALL_ACT, copy_compressed
from compressor.cli import main
from compressor.errors import PublishError
from compressor.hub import push_to_hub
from compressor.model_card import card_metadata
from compressor.sources import load_source
from hub_servers import point_hub_at
from file_trees import tree

TOKEN = "hf_standin_secret_token_value"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def outputs(loaded, model) -> torch.Tensor:
    inputs = loaded.adapter.example_inputs(batch_size=2, seed=3)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def test_push_uploads_every_file_with_the_token_and_loads_back_by_repo_id(writable_hub, compressed_vit_dir, olah_hub,
                                                                          monkeypatch, tmp_path, capsys):
    status = main(["push", str(compressed_vit_dir), "--repo-id", "my-org/vit-act", "--private",
                   "--commit-message", "first upload"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "my-org/vit-act" in printed.out and TOKEN not in printed.out + printed.err
    repo = writable_hub.repos["my-org/vit-act"]
    assert repo["visibility"] == "private" and repo["commits"] == [{"branch": "main", "summary": "first upload"}]
    assert [call for call in writable_hub.unhandled if call[0] == "POST"] == []  # every write was served
    assert len(writable_hub.validated_cards) == 1 and front_matter(writable_hub.validated_cards[0])["tags"]
    assert set(writable_hub.authorizations) == {f"Bearer {TOKEN}"}
    files = writable_hub.files("my-org/vit-act")
    assert set(files) == {p.name for p in compressed_vit_dir.iterdir()}
    assert files["model.safetensors"] == (compressed_vit_dir / "model.safetensors").read_bytes()
    assert 'compressor.load("my-org/vit-act")' in files["README.md"].decode()
    assert 'compressor.load("my-org/vit-act")' not in (compressed_vit_dir / "README.md").read_text()  # not edited

    # what was pushed, served by a real Hub-protocol server, loads back in one line
    served = writable_hub.write_out("my-org/vit-act", tmp_path / "pushed")
    olah_hub.publish("my-org/vit-act", served)
    point_hub_at(monkeypatch, olah_hub.endpoint, tmp_path / "cache")
    local = load_source(compressed_vit_dir)
    model = compressor.load("my-org/vit-act")
    assert (outputs(local, local.model) - outputs(local, model)).abs().max().item() <= 1e-5


def test_push_to_a_branch_creates_it_and_commits_there(writable_hub, compressed_vit_dir):
    url = compressor.push_to_hub(compressed_vit_dir, "my-org/vit-act", revision="act-l4")
    repo = writable_hub.repos["my-org/vit-act"]
    assert ("POST", "/api/models/my-org/vit-act/branch/act-l4") in writable_hub.requests
    assert repo["commits"][0]["branch"] == "act-l4" and "model.safetensors" in writable_hub.files("my-org/vit-act",
                                                                                                     "act-l4")
    assert writable_hub.files("my-org/vit-act") == {}  # main untouched
    assert url.startswith(writable_hub.endpoint)
    push_to_hub(compressed_vit_dir, "my-org/vit-act", revision="act-l4")  # again: repo and branch exist
    assert len(repo["commits"]) == 2


def test_compress_push_to_publishes_the_output_at_the_end(writable_hub, hf_vit_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(["compress", str(hf_vit_dir), "--recipe", "act", *sum((["--set", o] for o in SMALL_ACT), []),
                   "--out", "vit-act", "--quiet", "--latency-runs", "1", "--push-to", "my-org/vit-act",
                   "--push-revision", "v1"])
    assert status == 0, capsys.readouterr().err
    files = writable_hub.files("my-org/vit-act", "v1")
    assert files["model.safetensors"] == (tmp_path / "vit-act" / "model.safetensors").read_bytes()
    assert json.loads(files["report.json"])["source"] == str(hf_vit_dir)


# --- bad input: one line, exit 2, nothing sent or written ------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("no token", "no Hugging Face token"),
    ("bad repo id", "not a valid Hub repository id"),
    ("repo id without namespace", "ORG/NAME"),
    ("not a compressed directory", "not written by `cli.py compress`"),
    ("incomplete directory", "incomplete (no README.md)"),
    ("missing directory", "is not a directory"),
])
def test_bad_push_is_one_line_exit_2_and_sends_nothing(case, expected, writable_hub, compressed_vit_dir, hf_vit_dir,
                                                       tmp_path, monkeypatch, capsys):
    directory, repo_id = copy_compressed(compressed_vit_dir, tmp_path / "vit-act"), "my-org/vit-act"
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    elif case == "bad repo id":
        repo_id = "my org/vit act!"
    elif case == "repo id without namespace":
        repo_id = "vit-act"
    elif case == "not a compressed directory":
        directory = hf_vit_dir
    elif case == "incomplete directory":
        (directory / "README.md").unlink()
    elif case == "missing directory":
        directory = tmp_path / "nothing"
    before = tree(tmp_path)
    assert main(["push", str(directory), "--repo-id", repo_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert writable_hub.requests == [] and tree(tmp_path) == before


@pytest.mark.parametrize("repo_id, expected", [("my-org/vit-act", "no Hugging Face token"),
                                               ("my-org/vit act", "not a valid Hub repository id")])
def test_compress_checks_push_to_before_any_work(repo_id, expected, writable_hub, hf_vit_dir, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.chdir(tmp_path)
    if expected.startswith("no Hugging Face token"):
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--out", "vit-act", "--quiet",
                 "--push-to", repo_id]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [] and writable_hub.requests == []


def test_a_refused_push_names_the_status_never_the_token(writable_hub, compressed_vit_dir, capsys):
    writable_hub.refuse_with = 401
    with pytest.raises(PublishError) as raised:
        push_to_hub(compressed_vit_dir, "other-org/vit-act")
    message = str(raised.value)
    assert "HTTP 401" in message and "write access" in message and TOKEN not in message and "\n" not in message


# --- the model card ----------------------------------------------------------------------------------------------

def test_card_has_hub_metadata_the_measured_table_the_recipe_and_how_to_load(compressed_vit_dir):
    card = (compressed_vit_dir / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "compressor" and meta["pipeline_tag"] == "image-classification"
    assert {"compressor", "act", "hf-vit"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local directory is not a Hub id
    report = json.loads((compressed_vit_dir / "report.json").read_text())
    for row in ("| parameters |", "| FLOPs |", "| latency |", "| example cosine to the original |"):
        assert row in card
    assert f"{report['fidelity']['example_cosine']:.4f}" in card
    recipe_block = card.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(recipe_block) == yaml.safe_load((compressed_vit_dir / "recipe.yaml").read_text())
    assert f'compressor.load("{compressed_vit_dir}")' in card and "AutoModel.from_pretrained" in card


def test_card_carries_base_model_and_license_from_the_base_models_card(hub_endpoint, hf_vit_dir, tmp_path):
    base = tmp_path / "base"
    copy_compressed(hf_vit_dir, base)
    (base / "README.md").write_text("---\nlicense: mit\ntags: [vision]\n---\n# A tiny ViT\n")
    hub_endpoint.publish("tiny-org/vit-with-card", base)
    result = compressor.compress("tiny-org/vit-with-card", "act", overrides=SMALL_ACT, progress=False, latency_runs=1)
    meta = card_metadata(result, {})
    assert meta["base_model"] == "tiny-org/vit-with-card" and meta["license"] == "mit"


def test_card_lists_task_metrics_when_a_run_measured_them(compressed_vit_dir):
    from compressor.model_card import before_after_rows

    report = json.loads((compressed_vit_dir / "report.json").read_text())
    report["metrics"] = {"top1": {"before": 0.6159, "after": 0.6124}}
    assert ("top1", "0.6159", "0.6124", "-0.0035") in before_after_rows(report)
