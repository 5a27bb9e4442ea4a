"""Which tokens token clipping keeps in a real detector's encoder (the trained Conditional DETR of
benchmarks/fixtures/detector-cifar-canvases/, on val canvases of CIFAR-10 test photos with exact boxes).

Ranking by the mean attention received keeps the background: this encoder's attention gathers on background cells,
so at keep 0.7 most object cells leave after the first layer and AP collapses (docs/benchmarks.md, the clip table).
Ranking by value norms keeps nearly every object cell. Measured through the pass itself by
benchmarks/clip_object_coverage.py (on 40 canvases: 0.387 and 0.995); here on 6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import clip_object_coverage  # noqa: E402


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    return clip_object_coverage.val_canvases(tmp_path_factory.mktemp("detector-val") / "val", count=6)


def test_value_norm_ranking_keeps_the_object_cells_that_mean_attention_drops(canvases):
    by_value_norm = clip_object_coverage.object_cells_kept("value_norm", 0.7, *canvases)
    by_mean_attention = clip_object_coverage.object_cells_kept("mean", 0.7, *canvases)
    assert by_value_norm >= 0.9
    assert by_mean_attention <= 0.6  # below the 0.7 a random choice would keep
