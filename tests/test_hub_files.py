"""One offline check, one config reader and one Hub fetch: every loader fails the same way on the same problem.

The transformers loader, the timm loader, the source dispatcher, compressed outputs and the publisher all read
config.json and the Hub through `compressor.loaders`, so a given bad input gives one message wherever it is met.
Offline mode is huggingface_hub's own setting, which is what its downloads obey.
"""

from __future__ import annotations

import json
import shutil

import pytest

from compressor.errors import SourceError
from compressor.hub import check_publishable
from compressor.loaders.hf_models import load_hf_model
from compressor.loaders.hub_files import hub_file, offline_hint
from compressor.loaders.timm_models import load_timm_model
from compressor.serialization import load_compressed
from compressor.sources import load_source
from hub_servers import put_in_hub_cache


def message_of(load, *args) -> str:
    with pytest.raises(SourceError) as raised:
        load(*args)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_the_offline_hint_follows_huggingface_hub_not_the_raw_variable(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # what the Hub library obeys
    assert offline_hint() == ""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE is set" in offline_hint()


def test_an_unknown_hub_id_offline_fails_alike_in_every_loader(empty_hub_cache):
    messages = {message_of(load_source, "some-org/no-such-model"),
                message_of(load_hf_model, "some-org/no-such-model"),
                message_of(load_timm_model, "hf-hub:some-org/no-such-model")}

    assert len(messages) == 1, messages
    message = messages.pop()
    assert "some-org/no-such-model" in message and "config.json" in message and "HF_HUB_OFFLINE" in message


def test_a_missing_optional_hub_file_is_none_and_a_missing_required_one_names_it(empty_hub_cache):
    assert hub_file("some-org/no-such-model", "preprocessor_config.json", required=False) is None
    assert "model.safetensors" in message_of(hub_file, "some-org/no-such-model", "model.safetensors")


@pytest.mark.parametrize("config", [[1, 2], "text", 3])
def test_a_config_that_is_not_an_object_fails_alike_in_every_loader(config, hf_vit_dir, compressed_vit_dir,
                                                                     tmp_path):
    plain, compressed = tmp_path / "plain", tmp_path / "compressed"
    shutil.copytree(hf_vit_dir, plain)
    shutil.copytree(compressed_vit_dir, compressed)
    for directory in (plain, compressed):
        (directory / "config.json").write_text(json.dumps(config))

    messages = {message_of(load_source, str(plain)), message_of(load_hf_model, str(plain)),
                message_of(load_timm_model, str(plain)), message_of(load_compressed, plain),
                message_of(check_publishable, plain)}

    assert messages == {f"{plain / 'config.json'} holds a JSON {type(config).__name__}, not an object of settings; "
                        "re-save the model with save_pretrained"}
    assert message_of(load_source, str(compressed)).startswith(f"{compressed / 'config.json'} holds a JSON")


def test_a_config_that_is_not_json_or_missing_fails_alike_in_every_loader(hf_vit_dir, tmp_path):
    broken, empty = tmp_path / "broken", tmp_path / "empty"
    shutil.copytree(hf_vit_dir, broken)
    (broken / "config.json").write_text("{not json")
    empty.mkdir()

    for directory, expected in ((broken, f"{broken / 'config.json'} is not valid JSON"),
                                (empty, f"{empty} has no config.json: expected ")):
        for load in (load_source, load_hf_model, load_timm_model, load_compressed, check_publishable):
            assert message_of(load, str(directory)).startswith(expected), load


def test_a_timm_hub_repo_is_loaded_at_the_requested_revision(timm_vit_dir, empty_hub_cache):
    put_in_hub_cache(empty_hub_cache, "some-org/timm-vit", timm_vit_dir, revision="v1")  # no main branch

    loaded = load_source("some-org/timm-vit", revision="v1")

    assert loaded.adapter.family == "timm-vit" and loaded.model.pretrained_cfg["hf_hub_id"] == "some-org/timm-vit@v1"
