"""The CIFAR ResNet of He et al. (2016, section 4.2) as a transformers model, so real CIFAR checkpoints load.

akamaster/pytorch_resnet_cifar10 trained ResNet-20/32/44/56/110 on CIFAR-10 with this exact layout: a 3×3 stem
(16 channels), three stages of n BasicBlocks (16, 32, 64 channels, stride 2 at the start of stages 2 and 3), global
average pooling and one linear layer. Shortcuts are "option A": the identity, or where the shape changes, the
input subsampled by 2 and zero-padded with (out − in) / 2 channels on each side, so they have no parameters.
Module names match that repository's checkpoints (`conv1`, `bn1`, `layer1.0.conv1`, ..., `linear`), so
`convert_akamaster` only strips DataParallel's `module.` prefix.

As a `PreTrainedModel` it saves and loads with `save_pretrained` / `from_pretrained` (model_type `cifar_resnet`)
and returns `ImageClassifierOutput`, so the toolkit treats it like any transformers classifier.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from compressor.errors import CompressorError, SourceError

#: the normalisation the shared CIFAR figures (resnet20 0.8103, resnet56 0.8320) were measured with
CIFAR_RESNET_MEAN = (0.485, 0.456, 0.406)
CIFAR_RESNET_STD = (0.229, 0.224, 0.225)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CifarResNetConfig(PretrainedConfig):
    """`depth` = 6n + 2 (20, 32, 44, 56, 110); `widths` are the three stages' channels."""

    model_type = "cifar_resnet"

    def __init__(self, depth: int = 20, widths: tuple[int, int, int] | list[int] = (16, 32, 64),
                 num_channels: int = 3, image_size: int = 32, **kwargs):
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        self.depth = depth
        self.widths = list(widths)
        self.num_channels = num_channels
        self.image_size = image_size
        kwargs.setdefault("num_labels", 10)
        super().__init__(**kwargs)

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = PadShortcut(in_channels, out_channels) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetPreTrainedModel(PreTrainedModel):
    config_class = CifarResNetConfig
    base_model_prefix = "cifar_resnet"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class CifarResNetForImageClassification(CifarResNetPreTrainedModel):
    """The whole network; `hidden_states` (on request) are the stem's and each stage's feature maps."""

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        stem = config.widths[0]
        self.conv1 = nn.Conv2d(config.num_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        channels = stem
        for index, width in enumerate(config.widths):
            blocks = []
            for block in range(config.blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(channels, config.num_labels)
        self.post_init()

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{index + 1}") for index in range(len(self.config.widths))]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> ImageClassifierOutput:
        hidden = F.relu(self.bn1(self.conv1(pixel_values)))
        hidden_states = [hidden]
        for stage in self.stages:
            hidden = stage(hidden)
            hidden_states.append(hidden)
        logits = self.linear(hidden.mean(dim=(2, 3)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        want_hidden = output_hidden_states if output_hidden_states is not None else \
            self.config.output_hidden_states
        return ImageClassifierOutput(loss=loss, logits=logits,
                                     hidden_states=tuple(hidden_states) if want_hidden else None)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, non-tensor payloads
        raise SourceError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}); pass the .th "
                          "file of akamaster/pytorch_resnet_cifar10 or its safetensors conversion") from None
    return checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}


def is_akamaster_checkpoint(keys) -> bool:
    keys = {key.removeprefix("module.") for key in keys}
    return {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "linear.weight"} <= keys


def model_from_akamaster(path: str | os.PathLike) -> CifarResNetForImageClassification:
    """The CIFAR ResNet a checkpoint of akamaster/pytorch_resnet_cifar10 describes, with its weights, in eval mode.

    Reads `.th` files with `torch.load(weights_only=True)` (no code runs) or a `.safetensors` conversion. Depth,
    widths and classes are inferred from the weights; loading is strict, so a different network fails loudly.
    """
    path = Path(path)
    state = {key.removeprefix("module."): value for key, value in _read_state_dict(path).items()}
    if not is_akamaster_checkpoint(state):
        raise SourceError(f"{path} is not a CIFAR ResNet checkpoint (no conv1/bn1/layer1/linear weights); "
                          "other models load from the directory holding their config.json")
    blocks = len({key.split(".")[1] for key in state if key.startswith("layer1.")})
    widths = [state[f"layer{stage}.0.conv1.weight"].shape[0] for stage in (1, 2, 3)]
    num_labels = state["linear.weight"].shape[0]
    labels = CIFAR10_LABELS if num_labels == 10 else [f"LABEL_{i}" for i in range(num_labels)]
    config = CifarResNetConfig(depth=6 * blocks + 2, widths=widths, num_labels=num_labels,
                               id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
                               architectures=["CifarResNetForImageClassification"])
    model = CifarResNetForImageClassification(config)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a shape mismatch
        raise SourceError(f"{path} does not fit a CIFAR ResNet-{config.depth} ({str(error).splitlines()[-1].strip()})"
                          ) from None
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise SourceError(f"{path} does not fit a CIFAR ResNet-{config.depth} (missing {missing[:2]}, unexpected "
                          f"{result.unexpected_keys[:2]})")
    return model.eval()


def cifar_image_processor():
    """32×32 input with the normalisation the shared CIFAR figures were measured with."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(CIFAR_RESNET_MEAN),
                             image_std=list(CIFAR_RESNET_STD))


def convert_akamaster(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write `checkpoint` (akamaster .th or its safetensors) as a save_pretrained directory with a processor."""
    from compressor.atomic_dir import atomic_directory

    model = model_from_akamaster(checkpoint)
    with atomic_directory(out, overwrite=False) as staging:
        model.save_pretrained(staging)
        cifar_image_processor().save_pretrained(staging)
        (staging / "SOURCE.json").write_text(json.dumps({"converted_from": str(checkpoint)}, indent=2) + "\n")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """`python -m compressor.architectures.cifar_resnet CHECKPOINT OUT`: convert an akamaster checkpoint."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    try:
        print(convert_akamaster(args.checkpoint, args.out))
    except CompressorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
