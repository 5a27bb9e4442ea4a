"""Local transformers checkpoints for every supported family, written with save_pretrained.

Real architectures (the same classes the Hub checkpoints use), shrunk so each builds and runs in well under a
second, with random weights and the processor a user's checkpoint would carry. Session-scoped: each is written
once per test run. `detr_r50_dir` is the exception: the full-size facebook/detr-resnet-50 architecture
(41 M parameters, random weights), slow to build and about 7 s per forward at 800×1066 — only for tests that
need the real cost of DETR-R50.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: (height, width) small enough for quick forwards, per family; DETR's comes from its processor's size instead
SMALL_SIZES = {"hf-vit": (32, 32), "hf-swin": (64, 64), "hf-resnet": (64, 64), "hf-detr": (64, 85)}


def small_size(family: str) -> tuple[int, ...]:
    """The native input size of the small checkpoint of `family` (BERT: a short sequence)."""
    return SMALL_SIZES.get(family, (16,))


def _save(directory: Path, config, model_class, processor=None) -> Path:
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    return directory


def _image_processor(height: int, width: int):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": height, "width": width}, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="session")
def hf_vit_dir(tmp_path_factory) -> Path:
    """ViTForImageClassification: 32×32 input, patch 8 (16 patches + class token), 2 layers, 4 heads."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=10)
    return _save(tmp_path_factory.mktemp("hf-vit"), config, ViTForImageClassification, _image_processor(32, 32))


@pytest.fixture(scope="session")
def hf_vit_encoder_dir(tmp_path_factory) -> Path:
    """A bare ViTModel (no classification head; pooler output as its embedding), otherwise as hf_vit_dir."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64)
    return _save(tmp_path_factory.mktemp("hf-vit-encoder"), config, ViTModel, _image_processor(32, 32))


@pytest.fixture(scope="session")
def hf_deit_dir(tmp_path_factory) -> Path:
    """DeiTForImageClassificationWithTeacher: class + distillation tokens and both heads, 32×32, patch 8."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, DeiTImageProcessor

    config = DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=10)
    processor = DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})
    return _save(tmp_path_factory.mktemp("hf-deit"), config, DeiTForImageClassificationWithTeacher, processor)


@pytest.fixture(scope="session")
def hf_swin_dir(tmp_path_factory) -> Path:
    """SwinForImageClassification: 64×64, patch 2, window 4, four stages (grids 32, 16, 8, 4), shifted windows.

    Every stage's grid is at least the window: transformers 5.23 Swin fails when a stage's grid is smaller than
    the window (it shrinks the window but not the relative position bias).
    """
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=64, patch_size=2, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                        window_size=4, num_labels=10)
    return _save(tmp_path_factory.mktemp("hf-swin"), config, SwinForImageClassification, _image_processor(64, 64))


@pytest.fixture(scope="session")
def hf_resnet_dir(tmp_path_factory) -> Path:
    """ResNetForImageClassification with bottleneck blocks (1, 2, 1, 1 per stage) and a 64×64 processor."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 2, 1, 1],
                          layer_type="bottleneck", num_labels=10)
    return _save(tmp_path_factory.mktemp("hf-resnet"), config, ResNetForImageClassification, _image_processor(64, 64))


def small_detr_config():
    """DETR with an HF ResNet backbone (basic blocks, stride 32), d_model 32, 2 encoder and 2 decoder layers."""
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])
    return DetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, d_model=32,
                      encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                      encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_labels=5)


@pytest.fixture(scope="session")
def hf_detr_dir(tmp_path_factory) -> Path:
    """DetrForObjectDetection, small; its processor resizes to shortest edge 64 (a 640×480 image -> 64×85)."""
    from transformers import DetrForObjectDetection, DetrImageProcessor

    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return _save(tmp_path_factory.mktemp("hf-detr"), small_detr_config(), DetrForObjectDetection, processor)


@pytest.fixture(scope="session")
def hf_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """BertForSequenceClassification (2 layers, width 32, 3 labels) with MiniLM's real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=160, num_labels=3)
    return _save(tmp_path_factory.mktemp("hf-bert"), config, BertForSequenceClassification, tokenizer)


@pytest.fixture(scope="session")
def detr_r50_dir(tmp_path_factory) -> Path:
    """Full-size facebook/detr-resnet-50 architecture (timm ResNet-50 backbone), random weights. Slow: 10–15 s
    to build and save, 7–15 s per forward at 800×1066 — use only where the real DETR-R50 cost matters."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    return _save(tmp_path_factory.mktemp("detr-r50"), DetrConfig(use_pretrained_backbone=False),
                 DetrForObjectDetection, DetrImageProcessor())


def _small_detr(**backbone):
    """A small DETR transformer (d_model 32, two encoder layers and one decoder layer, COCO's 91 class ids) over
    the given backbone."""
    from transformers import DetrConfig

    return DetrConfig(use_pretrained_backbone=False, d_model=32, encoder_layers=2, decoder_layers=1,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32,
                      num_queries=5, num_labels=91, **backbone)


def _save_small_detr(tmp_path_factory, name: str, config) -> Path:
    """Saved with a processor that resizes to shortest edge 64 (a 640×480 image -> 64×85)."""
    from transformers import DetrForObjectDetection, DetrImageProcessor

    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return _save(tmp_path_factory.mktemp(name), config, DetrForObjectDetection, processor)


@pytest.fixture(scope="session")
def detr_resnet_backbone_dir(tmp_path_factory) -> Path:
    """DETR over an AutoBackbone HF ResNet of bottlenecks (1, 2, 1, 1 per stage), stride 32."""
    from transformers import ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[16, 16, 32, 32], depths=[1, 2, 1, 1],
                            layer_type="bottleneck", out_features=["stage4"])
    return _save_small_detr(tmp_path_factory, "detr-hf-resnet",
                            _small_detr(use_timm_backbone=False, backbone_config=backbone))


@pytest.fixture(scope="session")
def detr_timm_backbone_dir(tmp_path_factory) -> Path:
    """DETR over a timm ResNet-18 built features-only, as facebook/detr-resnet-50's own config builds its
    ResNet-50 (`use_timm_backbone: true`)."""
    return _save_small_detr(tmp_path_factory, "detr-timm-resnet", _small_detr(backbone="resnet18"))


@pytest.fixture(scope="session")
def detr_swin_backbone_dir(tmp_path_factory) -> Path:
    """DETR over an AutoBackbone HF Swin (patch 2, window 2, stages of 1, 1, 2, 1 blocks, last stage out)."""
    from transformers import SwinConfig

    backbone = SwinConfig(embed_dim=16, patch_size=2, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2,
                          out_features=["stage4"])
    return _save_small_detr(tmp_path_factory, "detr-swin",
                            _small_detr(use_timm_backbone=False, backbone_config=backbone))
