"""HF DETR: a CNN backbone, a transformer encoder over the flattened stride-32 feature map, and a decoder whose
object queries self-attend and cross-attend to the encoder output.

In transformers 5.23 `DetrSelfAttention` (`<model>.encoder.layers.<i>.self_attn`,
`<model>.decoder.layers.<i>.self_attn`) and `DetrCrossAttention` (`<model>.decoder.layers.<i>.encoder_attn`) own
`q_proj/k_proj/v_proj/o_proj` and call the AttentionInterface; position embeddings are added to the query and key
inputs, never to values. `DetrMLP` (`mlp`) owns `fc1/fc2/activation_fn`. `<model>` is `model` under
DetrForObjectDetection, `detr.model` under DetrForSegmentation and the root for DetrModel. The segmentation head's
`DetrMHAttentionMap` only produces attention maps for the mask head and is not an attention site.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from compressor.models.base import AttentionSite, BlockSite, FFNSite, TokenLayout
from compressor.models.embedded_backbone import EmbeddedBackboneSites
from compressor.models.hf_common import HFVisionAdapter, flatten_per_example, size_field
from compressor.models.patches.transformers import TOKEN_REDUCING_DETR_ENCODER_LAYER

#: the size DETR is benchmarked at: a 640×480 COCO image resized to shortest edge 800 (DetrImageProcessor defaults)
COCO_BENCHMARK_SIZE = (800, 1066)
#: (height, width) of a typical COCO val2017 image, e.g. 000000039769
COCO_IMAGE_SIZE = (480, 640)


class HFDetrAdapter(EmbeddedBackboneSites, HFVisionAdapter):
    """DetrModel / DetrForObjectDetection / DetrForSegmentation.

    Stacks: "encoder" (global self-attention over the feature map) and "decoder" (self-attention among object
    queries, kind "self", and cross-attention to the encoder output, kind "cross", both with the decoder layer's
    index as `layer`). primary_output: per image, the class logits and boxes of every query flattened and
    concatenated (detection and segmentation heads); for DetrModel the flattened decoder output.

    The backbone's blocks are sites too (`all_blocks()` etc.), described by its standalone family adapter
    (`compressor.models.embedded_backbone`); `auto` targets leave them out.
    """

    family = "hf-detr"
    display_name = "DETR (transformers)"
    task = "object-detection"
    model_types = ("detr",)
    default_image_size = COCO_BENCHMARK_SIZE
    #: the report's parts; the input projection and sine positions feed the encoder, the object queries the heads
    cost_part_children = (("backbone", ("backbone",)),
                          ("encoder", ("input_projection", "position_embedding", "encoder")),
                          ("decoder", ("decoder",)),
                          ("heads", ("query_position_embeddings",)))
    head_part = "heads"
    #: (child, kind) of the decoder layer's attention modules the passes can rewrite (q/k/v/o projections around
    #: one softmax); a family that lists none has its decoder layers' MLPs as sites, not their attention or blocks
    decoder_attention: ClassVar[tuple[tuple[str, str], ...]] = (("self_attn", "self"), ("encoder_attn", "cross"))

    def core_module(self) -> str:
        """The DetrModel (the root, `model`, or `detr.model` under DetrForSegmentation): backbone, encoder and
        decoder are its children."""
        return next(name for name, module in self.model.named_modules()
                    if {"backbone", "encoder", "decoder"} <= set(module._modules))

    @staticmethod
    def layer_classes() -> tuple[type, type]:
        """The family's (encoder layer, decoder layer) classes."""
        from transformers.models.detr.modeling_detr import DetrDecoderLayer, DetrEncoderLayer

        return DetrEncoderLayer, DetrDecoderLayer

    def _layers(self) -> list[tuple[str, str, int]]:
        """(stack, layer name, index within the stack) for every encoder then decoder layer."""
        encoder_layer, decoder_layer = self.layer_classes()
        found = []
        for stack, layer_class in (("encoder", encoder_layer), ("decoder", decoder_layer)):
            found += [(stack, name, index) for index, (name, _) in enumerate(self.named_modules_of_type(layer_class))]
        return found

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for stack, name, index in self._layers():
            children = (("self_attn", "self"),) if stack == "encoder" else self.decoder_attention
            sites += [self.make_attention_site(f"{name}.{child}", stack, index, kind=kind) for child, kind in children]
        return sites

    def ffn_sites(self) -> list[FFNSite]:
        return [self.make_ffn_site(f"{name}.mlp", stack, index) for stack, name, index in self._layers()]

    def blocks(self) -> list[BlockSite]:
        return [BlockSite(name=name, stack=stack, layer=index, kind="transformer", attention=f"{name}.self_attn",
                          ffn=f"{name}.mlp") for stack, name, index in self._layers()
                if stack == "encoder" or self.decoder_attention]

    # --- token reduction ------------------------------------------------------------------------------------------
    token_block_patch = TOKEN_REDUCING_DETR_ENCODER_LAYER

    def token_reduction_blocks(self) -> list[BlockSite]:
        """The encoder layers; the decoder cross-attends the restored full feature map."""
        return [block for block in self.blocks() if block.stack == "encoder"]

    # --- inputs --------------------------------------------------------------------------------------------------
    def native_image_size(self) -> tuple[int, int]:
        """What the processor makes of a 640×480 COCO image (800×1066 with DETR's defaults; its fixed size when it
        resizes to one)."""
        from transformers.image_transforms import get_size_with_aspect_ratio

        size = getattr(self.processor, "size", None)
        if size is not None and size_field(size, "height") and size_field(size, "width"):
            return size_field(size, "height"), size_field(size, "width")
        shortest = size_field(size, "shortest_edge") if size is not None else None
        if not shortest:
            return self.default_image_size
        height, width = get_size_with_aspect_ratio(COCO_IMAGE_SIZE, shortest, size_field(size, "longest_edge"))
        return int(height), int(width)

    def example_inputs(self, batch_size: int = 1, size: tuple[int, ...] | None = None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
        """Pixel values at 800×1066 (or `size`) with a pixel mask of ones: one unpadded image per row."""
        inputs = super().example_inputs(batch_size, size, seed)
        pixel_values = inputs["pixel_values"]
        inputs["pixel_mask"] = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.long)
        return inputs

    def default_image_processor(self):
        """DetrImageProcessor() defaults: shortest edge 800 (longest ≤ 1333), ImageNet mean/std, padded batch."""
        from transformers import DetrImageProcessor

        return DetrImageProcessor()

    def feature_stride(self) -> int:
        """The backbone's total stride at the feature map the encoder reads: for transformers' AutoBackbone
        ResNet and Swin, that of its last `out_features` stage (a ResNet's stem has stride 4 and each later stage
        halves, a Swin's patches are `patch_size` and each later stage halves); for timm's ResNet-50, 32, or 16 for
        the dilated-C5 (DC5) variants."""
        backbone = getattr(self.config, "backbone_config", None)
        last_stage = max(getattr(backbone, "out_indices", None) or [0])
        model_type = getattr(backbone, "model_type", None)
        if model_type == "resnet" and last_stage:
            first = 2 if backbone.downsample_in_first_stage else 1
            return 4 * first * 2 ** (last_stage - 1)
        if model_type == "swin" and last_stage:
            return int(backbone.patch_size) * 2 ** (last_stage - 1)
        output_stride = getattr(backbone, "output_stride", None) if backbone is not None else None
        return int(output_stride or (16 if getattr(self.config, "dilation", False) else 32))

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        """The encoder's tokens: the backbone feature map, each stride-2 step rounding up as padded convs do."""
        inputs = inputs if inputs is not None else self.example_inputs()
        height, width = inputs["pixel_values"].shape[-2:]
        stride = self.feature_stride()
        grid = (math.ceil(height / stride), math.ceil(width / stride))
        return TokenLayout(grid=grid, sequence_length=grid[0] * grid[1])

    # --- outputs -------------------------------------------------------------------------------------------------
    def detections(self, outputs: Any, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """The processor's post-processing with no score threshold: every query is a detection (100 for DETR,
        COCO's maxDets)."""
        processor = self.processor if self.processor is not None else self.default_image_processor()
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=image_sizes)

    def query_predictions(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        if getattr(outputs, "pred_boxes", None) is None:
            return None
        return outputs.logits, outputs.pred_boxes

    def primary_output(self, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if getattr(outputs, "pred_boxes", None) is not None:
            return torch.cat([flatten_per_example(outputs.logits), flatten_per_example(outputs.pred_boxes)], dim=1)
        return flatten_per_example(outputs.last_hidden_state)
