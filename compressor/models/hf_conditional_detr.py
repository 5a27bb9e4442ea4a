"""HF Conditional DETR (Meng et al., "Conditional DETR for Fast Training Convergence"): DETR's backbone and encoder,
a decoder whose cross-attention separates content from spatial queries, and focal-loss (sigmoid) classification.

In transformers 5.25 `ConditionalDetrEncoderLayer` and its `ConditionalDetrSelfAttention` are DETR's line for line
(q/k/v/o projections, position embeddings added to queries and keys), so the encoder's sites, ACT, token clipping
(the DETR encoder-layer patch), tied weights and pruning are DETR's. The decoder's attention is not standard and is
left out of the sites (its MLPs stay sites):

- `ConditionalDetrDecoderSelfAttention` computes Q and K as sums of a content and a position projection
  (`q_content_proj(x) + q_pos_proj(p)`), so tying W_q/W_kv or pruning heads would have to keep two projections per
  side consistent, which the tie layout and the pruner's head bookkeeping do not;
- `ConditionalDetrDecoderCrossAttention` concatenates per head a content half and a sine-position half of queries
  and keys (the head dimension doubles to 2·d/h while values keep d/h), which neither a tie (V = W_kvᵀ needs K's
  width) nor head pruning can map, and ACT clusters self-attention only.

The decoder's layers are therefore not blocks either (pruning a whole layer would shrink those projections). Each
query scores every class with an independent sigmoid and there is no "no object" class: detections are the 100 best
(query, class) pairs of an image (ConditionalDetrImageProcessor's post-processing), and MTKD and fidelity compare the
per-class Bernoulli distributions (`query_class_activation = "sigmoid"`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch

from compressor.models.hf_detr import HFDetrAdapter

#: COCO's maxDets: the (query, class) pairs kept per image
DETECTIONS_PER_IMAGE = 100


class HFConditionalDetrAdapter(HFDetrAdapter):
    """ConditionalDetrModel / ConditionalDetrForObjectDetection / ConditionalDetrForSegmentation.

    Stacks: "encoder" (sites as in DETR) and "decoder" (MLP sites only, see the module docstring); the backbone's
    sites are DETR's (`compressor.models.embedded_backbone`).
    """

    family = "hf-conditional-detr"
    display_name = "Conditional DETR (transformers)"
    model_types = ("conditional_detr",)
    decoder_attention = ()
    query_class_activation = "sigmoid"

    @staticmethod
    def layer_classes() -> tuple[type, type]:
        from transformers.models.conditional_detr.modeling_conditional_detr import (ConditionalDetrDecoderLayer,
                                                                                    ConditionalDetrEncoderLayer)

        return ConditionalDetrEncoderLayer, ConditionalDetrDecoderLayer

    def default_image_processor(self):
        """ConditionalDetrImageProcessor() defaults: DETR's preprocessing, sigmoid top-k post-processing."""
        from transformers import ConditionalDetrImageProcessor

        return ConditionalDetrImageProcessor()

    @cached_property
    def _post_processor(self):
        return self.default_image_processor()

    def detections(self, outputs: Any, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """The 100 best (query, class) pairs of each image by sigmoid score, with no score threshold.

        Always ConditionalDetrImageProcessor's post-processing (it depends on no processor setting): a DETR processor
        saved beside the model would read the last class as "no object" and drop it.
        """
        return self._post_processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=image_sizes, top_k=DETECTIONS_PER_IMAGE)
