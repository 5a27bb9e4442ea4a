"""Architectures transformers lacks but real checkpoints need, registered with transformers' Auto classes.

Registration happens on first use (`register_architectures`), so importing the toolkit stays light; afterwards
`AutoConfig` / `AutoModelForImageClassification.from_pretrained` load their save_pretrained directories like any
transformers model.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def _classes() -> dict[str, type]:
    from transformers import AutoConfig, AutoModelForImageClassification

    from compressor.architectures.cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification

    AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig, exist_ok=True)
    AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification, exist_ok=True)
    return {"CifarResNetForImageClassification": CifarResNetForImageClassification}


def register_architectures() -> None:
    """Make transformers' Auto classes know the toolkit's architectures (idempotent)."""
    _classes()


def architecture_class(name: str | None) -> type | None:
    """The toolkit's model class called `name` (a config.json `architectures` entry), or None."""
    return _classes().get(name) if name else None
