"""A small directory written by `compress` (ACT on the tiny HF ViT), built once per test run.

Tests that corrupt, reload, publish or serve a compressed model copy it first (`copy_compressed`), so the
session's copy stays pristine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: overrides that keep the compressed fixture quick and its kernels small
SMALL_ACT = ["act.rounds=4", "act.bucket_width=2"]


@pytest.fixture(scope="session")
def compressed_vit_dir(tmp_path_factory, hf_vit_dir) -> Path:
    """`compress hf_vit_dir --recipe act --set act.rounds=4 --set act.bucket_width=2`, saved."""
    import compressor

    result = compressor.compress(hf_vit_dir, "act", overrides=SMALL_ACT, progress=False, latency_runs=1)
    return compressor.save(result, tmp_path_factory.mktemp("compressed") / "vit-act")


def copy_compressed(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


@pytest.fixture(scope="session")
def tied_minilm_dir(tmp_path_factory, minilm_dir) -> Path:
    """The real all-MiniLM-L6-v2 with every FFN tied in closed form (`vit-pe`, parts [ffn]): its sentence
    embeddings are far from the original's, which distillation must then recover."""
    import compressor

    result = compressor.compress(minilm_dir, "vit-pe", overrides=["tied_weights.parts=[ffn]"], progress=False,
                                 latency_runs=1)
    return compressor.save(result, tmp_path_factory.mktemp("compressed") / "minilm-tied-ffn")
