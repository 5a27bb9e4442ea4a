"""How close a compressed model stays to the original: cosine similarity of their primary outputs, and for
set-prediction detectors the agreement of their detections.

The primary output is what the adapter says a user consumes (logits, a sentence embedding, detection logits and
boxes); one number per example, averaged, 1.0 meaning identical direction. A detector's primary output is mostly the
boxes of its many "no object" queries, so its cosine barely moves while AP falls; `detection_agreement` weighs each
query by how much the original believes in it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from compressor.distill.losses import prediction_kl
from compressor.models.base import ModelAdapter


@torch.no_grad()
def primary_outputs(model: nn.Module, adapter: ModelAdapter,
                    batches: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The adapter's primary output for each batch, as (batch, features) float32 tensors."""
    return [adapter.primary_output(model(**batch), batch).float() for batch in batches]


def per_example_cosine(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> torch.Tensor:
    """Cosine similarity per example between two lists of (batch, features) tensors."""
    return torch.cat([F.cosine_similarity(r.flatten(1), o.flatten(1), dim=1)
                      for r, o in zip(reference, outputs)])


def mean_cosine(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    return float(per_example_cosine(reference, outputs).mean())


def class_probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Per-query probabilities of the real classes: each class's sigmoid, or the softmax without DETR's last
    ("no object") class."""
    logits = logits.float()
    return logits.sigmoid() if activation == "sigmoid" else logits.softmax(-1)[..., :-1]


def paired_box_iou(boxes: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """IoU of each box with the box at the same position, for normalised (cx, cy, w, h): (..., 4) -> (...)."""
    def corners(b):
        return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)

    a, b = corners(boxes.float()), corners(other.float())
    sides = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = sides[..., 0] * sides[..., 1]
    area = (a[..., 2:] - a[..., :2]).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1)
    return inter / (area - inter).clamp(min=1e-12)


def detection_agreement(reference: tuple[torch.Tensor, torch.Tensor], queries: tuple[torch.Tensor, torch.Tensor],
                        activation: str = "softmax") -> torch.Tensor:
    """Per image, how far a detector's queries still say what the original's said, from 0 to 1 (identical).

    Each query scores the IoU of its box with the original's box times the overlap of their class probabilities
    (Σ min / Σ max over classes), and counts with the original's confidence in it (its highest class
    probability): a confident detection that moves or changes class costs much, a "no object" query almost nothing.
    """
    reference_probs = class_probabilities(reference[0], activation)
    probs = class_probabilities(queries[0], activation)
    overlap = torch.minimum(probs, reference_probs).sum(-1) / torch.maximum(probs, reference_probs).sum(-1).clamp(
        min=1e-12)
    weight = reference_probs.amax(-1)
    agreement = paired_box_iou(queries[1], reference[1]) * overlap
    return (weight * agreement).sum(-1) / weight.sum(-1).clamp(min=1e-12)


@dataclass
class FidelityOutputs:
    """What fidelity compares for one batch: the primary output, and a set-prediction detector's per-query
    (logits, boxes)."""
    primary: torch.Tensor
    queries: tuple[torch.Tensor, torch.Tensor] | None


@torch.no_grad()
def fidelity_outputs(model: nn.Module, adapter: ModelAdapter,
                     batches: Iterable[dict[str, torch.Tensor]]) -> list[FidelityOutputs]:
    outputs = []
    for batch in batches:
        raw: Any = model(**batch)
        queries = adapter.query_predictions(raw)
        outputs.append(FidelityOutputs(adapter.primary_output(raw, batch).float(),
                                       None if queries is None else (queries[0].float(), queries[1].float())))
    return outputs


def mean_fidelity(reference: list[FidelityOutputs], outputs: list[FidelityOutputs],
                  activation: str = "softmax") -> float:
    """The fidelity calibration targets: the mean `detection_agreement` for set-prediction detectors, else the mean
    cosine of the primary outputs."""
    if all(r.queries is not None and o.queries is not None for r, o in zip(reference, outputs)):
        return float(torch.cat([detection_agreement(r.queries, o.queries, activation)
                                for r, o in zip(reference, outputs)]).mean())
    return mean_cosine([r.primary for r in reference], [o.primary for o in outputs])


def logit_kl(reference: torch.Tensor, logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """KL(reference ‖ model) of the class probabilities (softmax over the last dimension, or per-class sigmoids), per
    example (averaged over any query axis)."""
    kl = prediction_kl(logits, reference, activation)
    return kl.reshape(kl.shape[0], -1).mean(1)


class FidelityMeter:
    """Per-example fidelity of a model to a reference on the same inputs, averaged over everything seen.

    - `cosine`: of the adapter's primary outputs (logits, an embedding, detection logits and boxes);
    - `logit_kl` and `top1_agreement`: for classifiers;
    - `logit_kl` per query, `box_l2` (Euclidean distance of normalised cx, cy, w, h per query) and
      `detection_agreement` for set-prediction detectors, whose queries correspond one to one.
    """

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def _add(self, name: str, values: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())

    def update(self, task: str, primary: torch.Tensor, reference_primary: torch.Tensor,
               queries: tuple[torch.Tensor, torch.Tensor] | None = None,
               reference_queries: tuple[torch.Tensor, torch.Tensor] | None = None,
               query_class_activation: str = "softmax") -> None:
        """One batch: primary outputs (batch, features) and, for detectors, (logits, boxes) per query and how their
        class logits become probabilities (the adapter's `query_class_activation`)."""
        primary, reference_primary = primary.float(), reference_primary.float()
        self._add("cosine", F.cosine_similarity(primary.flatten(1), reference_primary.flatten(1), dim=1))
        if queries is not None and reference_queries is not None:
            self._add("logit_kl", logit_kl(reference_queries[0], queries[0], query_class_activation))
            distance = (queries[1].float() - reference_queries[1].float()).norm(dim=-1)
            self._add("box_l2", distance.mean(dim=1))
            self._add("detection_agreement", detection_agreement(reference_queries, queries, query_class_activation))
        elif task == "image-classification":
            self._add("logit_kl", logit_kl(reference_primary, primary))
            self._add("top1_agreement", (primary.argmax(-1) == reference_primary.argmax(-1)).float())
        self.count += primary.shape[0]

    def result(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()} if self.count else {}
