"""What every timm family shares: inputs, outputs, attention kernels, and loading from the Hub or a local directory.

timm is imported inside the functions that need it: importing it costs seconds (it pulls in torchvision), and a
model can only be a timm model once something has imported timm, so transformers-only runs never pay for it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from abc import abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from compressor.errors import CompressorError, SourceError, UnsupportedModelError
from compressor.models.base import AttentionKernel, AttentionSite, BlockSite, FFNSite, ModelAdapter
from compressor.models.patches.timm import KERNEL_ATTENTION
from compressor.models.weight_coverage import bounded_by_weights, header_totals

#: the weight files read from the Hub, best first (timm's own order); .bin is read with torch.load(weights_only=True)
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_is_loaded() -> bool:
    """A model can only be a timm model if timm has been imported: `handles` checks this before importing timm."""
    return "timm" in sys.modules


# ----------------------------------------------------------------------------------------------------------------
# Attention kernels
# ----------------------------------------------------------------------------------------------------------------
def install_timm_attention_kernel(module: nn.Module, name: str, kernel: AttentionKernel) -> None:
    """Route the timm attention `module` (called `name` in messages) through `kernel`, or say why it cannot be."""
    if not KERNEL_ATTENTION.applies_to(type(module)):
        raise CompressorError(
            f"{name} is a timm {type(module).__name__}: only global self-attention (timm.layers.Attention) can be "
            "routed through an attention kernel yet; leave this module out of the pass's targets")
    KERNEL_ATTENTION.install({name: module})
    module.add_module("attention_kernel", kernel)


# ----------------------------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------------------------
class TimmAdapter(ModelAdapter):
    """Inputs, outputs and kernels for any timm image model; subclasses say where the blocks are.

    `self.processor` may hold a timm data config (as `load_timm_model` returns it); without one the adapter
    resolves it from the model, as timm's own scripts do.
    """

    library: ClassVar[str] = "timm"
    task: ClassVar[str] = "image-classification"
    #: the timm registry modules whose architectures this adapter describes: checked before building a model
    timm_modules: ClassVar[tuple[str, ...]] = ()

    def data_config(self) -> dict[str, Any]:
        """timm's preprocessing for this model: input size, interpolation, mean/std, crop."""
        if isinstance(self.processor, dict):
            return self.processor
        from timm.data import resolve_input_data_config

        return resolve_input_data_config(self.model)

    def example_inputs(self, batch_size: int = 1, size: tuple[int, ...] | None = None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
        from timm.models import get_model_input_config

        channels, *native_size = get_model_input_config(self.model)["input_size"]
        height, width = size or native_size
        generator = torch.Generator().manual_seed(seed)
        return {"x": torch.randn(batch_size, channels, height, width, generator=generator)}

    def prepare_inputs(self, examples: list) -> dict[str, torch.Tensor]:
        """Images through timm's eval transform (resize, center crop, normalise) for this model."""
        from timm.data import create_transform

        transform = create_transform(**self.data_config(), is_training=False)
        return {"x": torch.stack([transform(image.convert("RGB")) for image in examples])}

    def has_head(self) -> bool:
        return getattr(self.model, "num_classes", 1) > 0

    def primary_output(self, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits; pooled features for a model built with num_classes=0 (its head is then the identity).

        A distilled DeiT in distillation-training mode returns (class logits, distillation logits): they are
        averaged, as timm does at inference.
        """
        if isinstance(outputs, (tuple, list)):
            outputs = torch.stack(list(outputs)).mean(0)
        return outputs.flatten(1)

    def install_attention_kernel(self, site: AttentionSite, kernel: AttentionKernel) -> None:
        try:
            module = self.module(site.name)
        except AttributeError:
            raise CompressorError(f"no attention module named {site.name!r} in this {self.display_name} "
                                  "model; take site names from the adapter's attention_sites()") from None
        install_timm_attention_kernel(module, site.name, kernel)

    def patch_grid(self, inputs: dict[str, torch.Tensor] | None) -> tuple[int, int]:
        """The (rows, columns) of patch tokens the model's patch embedding makes from `inputs`."""
        height, width = (inputs or self.example_inputs())["x"].shape[-2:]
        return tuple(self.model.patch_embed.dynamic_feat_size((height, width)))


class TimmTransformerAdapter(TimmAdapter):
    """Sites of timm transformers whose blocks each hold an `attn` and an `mlp` (fc1, act, fc2) module."""

    #: "global" or "window", for every attention site of the family
    attention_scope: ClassVar[str]

    @abstractmethod
    def named_blocks(self) -> Iterator[tuple[str, int, str, nn.Module]]:
        """(stack, index in stack, qualified name, block) for every transformer block, in forward order."""

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for stack, layer, name, block in self.named_blocks():
            attention = block.attn
            head_dim = getattr(attention, "head_dim", None) or attention.qkv.out_features // (3 * attention.num_heads)
            qkv = f"{name}.attn.qkv"
            sites.append(AttentionSite(
                name=f"{name}.attn", stack=stack, layer=layer, kind="self", scope=self.attention_scope,
                num_heads=attention.num_heads, head_dim=head_dim, query=qkv, key=qkv, value=qkv,
                output=f"{name}.attn.proj"))
        return sites

    def ffn_sites(self) -> list[FFNSite]:
        return [FFNSite(name=f"{name}.mlp", stack=stack, layer=layer, fc1=f"{name}.mlp.fc1", fc2=f"{name}.mlp.fc2",
                        activation=f"{name}.mlp.act")
                for stack, layer, name, _ in self.named_blocks()]

    def blocks(self) -> list[BlockSite]:
        return [BlockSite(name=name, stack=stack, layer=layer, kind="transformer", attention=f"{name}.attn",
                          ffn=f"{name}.mlp")
                for stack, layer, name, _ in self.named_blocks()]


# ----------------------------------------------------------------------------------------------------------------
# Loading, saving the config, rebuilding
# ----------------------------------------------------------------------------------------------------------------
def _hub_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no", "off"):
        return "HF_HUB_OFFLINE is set: pass a local directory, or unset HF_HUB_OFFLINE to download"
    return "check the repo id, your network, and `hf auth login` for private models, or pass a local directory"


def _hub_download(repo_id: str, revision: str | None, filename: str, token: str | bool | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))


def _fetch_hub_config(repo_id: str, revision: str | None, token: str | bool | None) -> Path:
    """config.json of a Hub repo (from the cache when offline); its folder is where the weights land too."""
    try:
        return _hub_download(repo_id, revision, "config.json", token)
    except Exception as error:  # huggingface_hub raises many types: offline, 404, gated, auth, network
        raise SourceError(f"cannot fetch config.json of timm model {repo_id!r} from the Hugging Face Hub "
                          f"({type(error).__name__}); {_hub_hint()}") from None


def _fetch_hub_weights(repo_id: str, revision: str | None, token: str | bool | None) -> None:
    failures = []
    for filename in HUB_WEIGHT_FILES:
        try:
            _hub_download(repo_id, revision, filename, token)
            return
        except Exception as error:
            failures.append(f"{filename}: {type(error).__name__}")
    raise SourceError(f"cannot fetch the weights of timm model {repo_id!r} from the Hugging Face Hub "
                      f"({'; '.join(failures)}); {_hub_hint()}")


def _split_source(source: str) -> tuple[Path | None, str | None, str | None]:
    """(local directory, Hub repo id, revision) for a source string; exactly one of the first two is set."""
    if source.startswith("local-dir:"):
        return Path(source.removeprefix("local-dir:")).expanduser(), None, None
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser(), None, None
    repo = source.removeprefix("hf-hub:")
    if repo.count("/") == 1 and not repo.startswith((".", "/", "~")):
        repo_id, _, revision = repo.partition("@")
        return None, repo_id, revision or None
    raise SourceError(f"{source!r} is neither a local timm model directory nor a Hub id; pass a directory with "
                      "config.json and model.safetensors, or a Hub id like timm/vit_base_patch16_224.augreg_in1k")


def _read_timm_config(path: Path) -> dict[str, Any]:
    layout = "a directory in timm's Hub layout (config.json with \"architecture\" + model.safetensors)"
    if not path.is_file():
        raise SourceError(f"{path.parent} has no config.json: expected {layout}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceError(f"{path} is not valid JSON ({error}); expected {layout}") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise SourceError(f"{path} has no \"architecture\" entry, so it is not a timm config; expected {layout}")
    if not isinstance(config["architecture"], str):
        raise SourceError(f"{path}: \"architecture\" must be a timm model name, got {config['architecture']!r}")
    return config


def check_supported_architecture(architecture: str, where: str) -> None:
    """Refuse, before any weight is read, an architecture that no timm adapter describes."""
    import timm
    from timm.models import is_model_in_modules

    from compressor.models import ADAPTER_CLASSES, SUPPORTED_FAMILIES  # lazy: the registry imports this module

    modules = [module for cls in ADAPTER_CLASSES if issubclass(cls, TimmAdapter) for module in cls.timm_modules]
    if not timm.is_model(architecture):
        found = f"timm architecture {architecture!r}, unknown to timm {timm.__version__}"
    elif not is_model_in_modules(architecture, modules):
        found = f"timm architecture {architecture!r}"
    else:
        return
    raise UnsupportedModelError(f"{where}: unsupported {found}; supported: {SUPPORTED_FAMILIES}")


def _create_from_directory(directory: Path, *, pretrained: bool) -> nn.Module:
    """timm's own local-dir loader: it reads the config, builds with its model_args, then loads the weights
    (safetensors first; other formats with torch.load(weights_only=True), never unrestricted pickle)."""
    import timm
    from safetensors import SafetensorError

    weights = directory / "model.safetensors"
    bound = bounded_by_weights(header_totals([weights]), str(directory)) if pretrained and weights.is_file() \
        else nullcontext()
    try:
        with bound:
            return timm.create_model(f"local-dir:{directory}", pretrained=pretrained).eval()
    except (RuntimeError, OSError, ValueError, TypeError, AssertionError, SafetensorError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise SourceError(f"cannot build the timm model in {directory}: {detail}; re-save it with "
                          "timm.models.save_for_hf(model, dir, safe_serialization=True)") from None


def load_timm_model(source: str | os.PathLike, *, token: str | bool | None = None) -> tuple[nn.Module, dict]:
    """A pretrained timm model in eval mode and its data config, from the Hub or a local directory.

    `source` is `timm/<name>` or `hf-hub:<owner>/<name>[@revision]` (any Hub repo in timm's layout), or a local
    directory (optionally `local-dir:<path>`) holding config.json + model.safetensors as timm's `save_for_hf` /
    `push_to_hf_hub` write them. The architecture is checked against the supported families from config.json
    alone, so an unsupported model fails before any weight is downloaded. Hub files are fetched with `token`
    and then built exactly like a local directory, from the Hub cache.
    """
    import timm
    from timm.data import resolve_input_data_config

    directory, repo_id, revision = _split_source(str(source))
    if repo_id is not None:
        directory = _fetch_hub_config(repo_id, revision, token).parent
    config = _read_timm_config(directory / "config.json")
    check_supported_architecture(config["architecture"], str(source))
    if repo_id is not None:
        _fetch_hub_weights(repo_id, revision, token)
    model = _create_from_directory(directory, pretrained=True)
    if repo_id is not None:  # record where the weights really come from, as timm's hf-hub loader would
        model.pretrained_cfg.update(source="hf-hub", hf_hub_id=repo_id if revision is None else f"{repo_id}@{revision}")
        model.pretrained_cfg.pop("file", None)
    return model, resolve_input_data_config(model)


def timm_config_dict(model: nn.Module) -> dict[str, Any]:
    """The config.json timm's `save_for_hf` writes for `model`, `model_args` included.

    timm 1.0.31's `create_model` records the keyword arguments a model was built with (`model._model_args`),
    so non-default architectures (a 2-block ViT, a ResNet with layers=(1, 1, 1, 1)) rebuild identically.
    """
    from timm.models._hub import save_config_for_hf  # what save_for_hf / push_to_hf_hub call; not re-exported

    if not hasattr(model, "pretrained_cfg"):
        raise CompressorError(f"{type(model).__name__} was not built by timm.create_model, so its architecture "
                              "cannot be recorded; create it with timm.create_model(name, **kwargs)")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "config.json"
        try:
            save_config_for_hf(model, path)
        except ValueError as error:  # a constructor argument that JSON cannot hold (a class, a function)
            raise CompressorError(f"cannot record the timm architecture of {type(model).__name__}: {error}") from None
        return json.loads(path.read_text())


def build_timm_model(config: dict[str, Any]) -> nn.Module:
    """The architecture a timm config describes, with random weights and no download (eval mode).

    Used to reload a compressed model before its weights are loaded. The config goes through timm's own
    local-dir parsing, so the model is built with exactly the arguments a timm load of that config would use.
    """
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "config.json").write_text(json.dumps(config))
        model = _create_from_directory(Path(scratch), pretrained=False)
    for key in ("file", "source"):  # the scratch directory is gone: do not point at it
        model.pretrained_cfg.pop(key, None)
    return model


def load_processor(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The data config of a saved timm model: timm keeps its resolved preprocessing in config.json's
    `pretrained_cfg`, so `directory` holds nothing more to read (the signature matches the transformers side)."""
    from timm.data import resolve_data_config

    saved = config.get("pretrained_cfg") or config  # older single-dict configs keep the fields at the top
    pretrained_cfg = {key: tuple(value) if isinstance(value, list) else value for key, value in saved.items()}
    return resolve_data_config(pretrained_cfg=pretrained_cfg)
