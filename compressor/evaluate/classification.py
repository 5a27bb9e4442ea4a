"""Top-k accuracy, with the model's classes matched to the data's by name.

A model's class i is not necessarily the data's class i: transformers models name their classes (`id2label`), Hub
datasets name theirs (`ClassLabel`). When every data class is among the model's names, the model's logits are
reordered to the data's order; unnamed classes (LABEL_0, ...) are taken as the data's order only when the counts
agree. Anything else is refused: an ImageNet head scored against CIFAR labels would print a meaningless number.
"""

from __future__ import annotations

import torch

from compressor.errors import CompressorError


def model_label_names(model) -> list[str] | None:
    """The model's class names in logit order (transformers' id2label), None when it has none."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        return None
    return [str(id2label[index]) for index in sorted(id2label, key=int)]


def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def class_columns(model_names: list[str] | None, num_outputs: int, data_names: list[str] | None,
                  num_data_classes: int | None = None) -> torch.Tensor | None:
    """Which logit column holds each data class (None: the identity, the columns already are the data's classes)."""
    if model_names and data_names:
        position = {_normalise(name): index for index, name in enumerate(model_names)}
        wanted = [position.get(_normalise(name)) for name in data_names]
        if all(index is not None for index in wanted):
            identity = wanted == list(range(len(wanted))) and len(wanted) == num_outputs
            return None if identity else torch.tensor(wanted)
    classes = len(data_names) if data_names else num_data_classes
    if classes is None or classes == num_outputs:
        return None
    raise CompressorError(f"the model predicts {num_outputs} classes and the data has {classes} with other names; "
                          "evaluate a model trained on these classes (or data labelled with the model's classes)")


class TopKAccuracy:
    """Running top-1 / top-5 over batches of (logits, labels)."""

    def __init__(self, ks: tuple[int, ...] = (1, 5)):
        self.ks = ks
        self.correct = {k: 0 for k in ks}
        self.total = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        top = logits.topk(min(max(self.ks), logits.shape[-1]), dim=-1).indices
        hits = top == labels[:, None]
        for k in self.ks:
            self.correct[k] += int(hits[:, :k].any(dim=1).sum())
        self.total += len(labels)

    def result(self) -> dict[str, float]:
        return {f"top{k}": self.correct[k] / self.total if self.total else 0.0 for k in self.ks}
