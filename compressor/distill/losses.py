"""Distillation losses: logits KL with temperature, the embedding distance of models without logits (bare encoders
such as a sentence embedder), hidden-feature MSE at matched layers, and MTKD for DETR.

Each returns a scalar; the trainer weights and sums them. Hinton's T² factor keeps the KL gradient's scale
independent of the temperature.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def logits_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over every prediction (image or query)."""
    classes = student.shape[-1]
    student = F.log_softmax(student.reshape(-1, classes).float() / temperature, -1)
    teacher = F.log_softmax(teacher.reshape(-1, classes).float() / temperature, -1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2


#: how `embedding_distance` compares two embeddings
EMBEDDING_LOSSES = ("cosine", "mse")


def embedding_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """For a model without logits, the distance of its embedding (batch, features) to the teacher's: `cosine`
    (1 − cosine similarity, averaged: the direction, which is what retrieval and similarity search use) or `mse`."""
    student, teacher = student.flatten(1).float(), teacher.flatten(1).float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
    return F.mse_loss(student, teacher)


def matched_layers(student_count: int, teacher_count: int) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices: one to one when the depths agree, else spread evenly (first to first,
    last to last), as in DistilBERT/TinyBERT-style layer mapping."""
    if student_count == teacher_count:
        return [(i, i) for i in range(student_count)]
    if student_count == 1:
        return [(0, teacher_count - 1)]
    return [(i, round(i * (teacher_count - 1) / (student_count - 1))) for i in range(student_count)]


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None or tuple(mask.shape) != tuple(student.shape[:2]):
        return F.mse_loss(student, teacher)
    weights = mask.to(student.dtype).unsqueeze(-1)
    return ((student - teacher).pow(2) * weights).sum() / (weights.sum() * student.shape[-1]).clamp(min=1)


def feature_mse(student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between matched hidden states of equal shape (layers of other shapes are skipped).

    `mask` (batch, tokens), e.g. a text batch's attention mask, leaves padding tokens out of the mean.
    """
    losses = [_masked_mse(student_hidden[s].float(), teacher_hidden[t].float(), mask)
              for s, t in matched_layers(len(student_hidden), len(teacher_hidden))
              if student_hidden[s].shape == teacher_hidden[t].shape]
    if not losses:
        raise ValueError("no hidden states of matching shape to distil")
    return torch.stack(losses).mean()


def box_l2(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the boxes two set-prediction heads give for the same queries (MTKD)."""
    return (student_boxes.float() - teacher_boxes.float()).pow(2).sum(-1).mean()
