"""Tiny timm checkpoints in timm's Hub layout (config.json + model.safetensors), real architectures, random weights.

Each directory is what `timm.models.save_for_hf` writes, so loading one exercises exactly the path a model
pushed to the Hub with `push_to_hf_hub` takes. Sizes are shrunk through the architectures' own keyword arguments,
which timm records in config.json's `model_args`.
"""

from pathlib import Path

import pytest

#: fixture name -> (timm architecture, the keyword arguments that make it tiny)
TINY_TIMM_MODELS = {
    "timm_vit_dir": ("vit_tiny_patch16_224",
                     dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)),
    "timm_deit_dir": ("deit_tiny_distilled_patch16_224",
                      dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)),
    "timm_swin_dir": ("swin_tiny_patch4_window7_224",
                      dict(img_size=56, window_size=7, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                           num_classes=10)),
    "timm_resnet_dir": ("resnet50", dict(layers=(1, 1, 1, 1), num_classes=10)),
}


def create_tiny_timm_model(architecture: str, seed: int = 0, **kwargs):
    """A randomly initialised timm model; `timm.create_model` records `kwargs` for the saved config."""
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model(architecture, pretrained=False, **kwargs).eval()


def write_timm_checkpoint(directory: Path, architecture: str, **kwargs) -> Path:
    """Save a tiny `architecture` as timm's save_for_hf / push_to_hf_hub would, weights as safetensors only."""
    from timm.models import save_for_hf

    save_for_hf(create_tiny_timm_model(architecture, **kwargs), directory, safe_serialization=True)
    return directory


def _checkpoint_fixture(fixture_name: str):
    architecture, kwargs = TINY_TIMM_MODELS[fixture_name]

    @pytest.fixture(scope="session", name=fixture_name)
    def checkpoint(tmp_path_factory) -> Path:
        return write_timm_checkpoint(tmp_path_factory.mktemp(fixture_name), architecture, **kwargs)

    checkpoint.__doc__ = f"A tiny {architecture} in timm's Hub layout."
    return checkpoint


timm_vit_dir = _checkpoint_fixture("timm_vit_dir")
timm_deit_dir = _checkpoint_fixture("timm_deit_dir")
timm_swin_dir = _checkpoint_fixture("timm_swin_dir")
timm_resnet_dir = _checkpoint_fixture("timm_resnet_dir")
