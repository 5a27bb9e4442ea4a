"""How close a compressed model stays to the original: cosine similarity of their primary outputs.

The primary output is what the adapter says a user consumes (logits, a sentence embedding, detection logits and
boxes); one number per example, averaged, 1.0 meaning identical direction.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

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
