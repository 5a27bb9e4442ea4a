"""How close a compressed model stays to the original: cosine similarity of their primary outputs.

The primary output is what the adapter says a user consumes (logits, a sentence embedding, detection logits and
boxes); one number per example, averaged, 1.0 meaning identical direction.
"""

from __future__ import annotations

from typing import Iterable

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


def logit_kl(reference: torch.Tensor, logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """KL(reference ‖ model) of the class probabilities (softmax over the last dimension, or per-class sigmoids), per
    example (averaged over any query axis)."""
    kl = prediction_kl(logits, reference, activation)
    return kl.reshape(kl.shape[0], -1).mean(1)


class FidelityMeter:
    """Per-example fidelity of a model to a reference on the same inputs, averaged over everything seen.

    - `cosine`: of the adapter's primary outputs (logits, an embedding, detection logits and boxes);
    - `logit_kl` and `top1_agreement`: for classifiers;
    - `logit_kl` per query and `box_l2` (Euclidean distance of normalised cx, cy, w, h per query) for set-prediction
      detectors, whose queries correspond one to one.
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
        elif task == "image-classification":
            self._add("logit_kl", logit_kl(reference_primary, primary))
            self._add("top1_agreement", (primary.argmax(-1) == reference_primary.argmax(-1)).float())
        self.count += primary.shape[0]

    def result(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()} if self.count else {}
