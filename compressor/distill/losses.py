"""Distillation losses: logits KL with temperature (softmax classes, or sigmoid ones for focal-loss detectors), the
embedding distance of models without logits (bare encoders such as a sentence embedder), hidden-feature MSE at
matched layers, and MTKD for DETR.

Each returns a scalar; the trainer weights and sums them. Hinton's T² factor keeps the KL gradient's scale
independent of the temperature.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


#: how class logits become probabilities: one softmax over the classes, or an independent sigmoid per class
CLASS_ACTIVATIONS = ("softmax", "sigmoid")


def prediction_kl(student: torch.Tensor, teacher: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """KL(teacher ‖ student) of each prediction's class probabilities: (..., classes) logits -> (...).

    `softmax`: one distribution over the classes. `sigmoid` (focal-loss detectors such as Conditional DETR, which
    have no "no object" class): each class is a Bernoulli of probability σ(logit), and the KLs of the classes add up.
    A softmax over sigmoid logits would compare shares of a total that the model never normalised.
    """
    student, teacher = student.float(), teacher.float()
    if activation == "sigmoid":  # log p and log(1 − p) of each class, as a two-outcome distribution
        student = torch.stack([F.logsigmoid(student), F.logsigmoid(-student)], -1)
        teacher = torch.stack([F.logsigmoid(teacher), F.logsigmoid(-teacher)], -1)
    elif activation == "softmax":
        student, teacher = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    else:
        raise ValueError(f"activation must be one of {CLASS_ACTIVATIONS}, not {activation!r}")
    kl = F.kl_div(student, teacher, log_target=True, reduction="none")
    return kl.sum(-1).sum(-1) if activation == "sigmoid" else kl.sum(-1)


def logits_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
              activation: str = "softmax") -> torch.Tensor:
    """T² · KL(p(teacher / T) ‖ p(student / T)), averaged over every prediction (image or query); p is the softmax
    over classes, or with `activation="sigmoid"` each class's own sigmoid (see `prediction_kl`)."""
    return prediction_kl(student.float() / temperature, teacher.float() / temperature, activation).mean() * \
        temperature ** 2


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
