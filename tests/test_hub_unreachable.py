"""An unreachable Hub fails in seconds with the usual one-line error, and the local cache still serves what it
holds; a reachable Hub is used as before (the Hub-loading tests)."""

from __future__ import annotations

import time

import pytest

import compressor
from compressor.errors import SourceError
from compressor.loaders.hub_reachability import hub_reachable
from compressor.sources import load_source
from hub_servers import free_port, point_hub_at

#: what the error may take at most: no retry with backoff (about 30 s) on a closed port
FAST_S = 5.0


@pytest.fixture
def closed_port_endpoint(monkeypatch, tmp_path) -> str:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    point_hub_at(monkeypatch, endpoint, tmp_path / "hub-cache")
    return endpoint


def test_an_unreachable_hub_fails_in_seconds_with_the_clear_error(closed_port_endpoint):
    assert not hub_reachable()
    for source in ("some-org/some-model", "timm/deit_tiny_patch16_224.fb_in1k"):
        with pytest.raises(SourceError):
            load_source(source)  # the first call also imports the library (timm): not what is timed
        started = time.perf_counter()
        with pytest.raises(SourceError, match="from the Hugging Face Hub") as caught:
            load_source(source)
        assert time.perf_counter() - started < FAST_S, source
        assert "\n" not in str(caught.value)


def test_the_cache_still_serves_a_model_while_the_hub_is_unreachable(olah_hub, compressed_vit_dir, monkeypatch,
                                                                       tmp_path):
    cache = tmp_path / "hub-cache"
    point_hub_at(monkeypatch, olah_hub.endpoint, cache)
    olah_hub.publish("tiny-org/vit-cached", compressed_vit_dir)
    assert hub_reachable()
    compressor.load("tiny-org/vit-cached", progress=False)  # downloads into the cache

    point_hub_at(monkeypatch, f"http://127.0.0.1:{free_port()}", cache)
    started = time.perf_counter()
    model = compressor.load("tiny-org/vit-cached", progress=False)
    assert time.perf_counter() - started < FAST_S + 5
    assert sum(type(module).__name__ == "ACTKernel" for module in model.modules()) == 2
    import huggingface_hub.constants as constants

    assert constants.HF_HUB_OFFLINE is False  # offline only for the call, not for the process
