"""Top-k accuracy, with the model's classes matched to the data's by name.

A model's class i is not necessarily the data's class i: transformers models name their classes (`id2label`), Hub
datasets name theirs (`ClassLabel`). When every data class is among the model's names, the model's logits are
reordered to the data's order; unnamed classes (LABEL_0, ...) are taken as the data's order only when the counts
agree. Anything else is refused: an ImageNet head scored against CIFAR labels would print a meaningless number.

A timm ImageNet model has 1,000 classes and no names in its config; timm knows them (`timm.data.ImageNetInfo`), so
a folder of ImageNet classes named by synset (`n01440764/`) or by class name (`tench/`), or a subset of them, is
matched to the model's class indices.
"""

from __future__ import annotations

import torch

from compressor.errors import CompressorError

IMAGENET_CLASSES = 1000


def model_label_names(model) -> list[str] | None:
    """The model's class names in logit order (transformers' id2label), None when it has none."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        return None
    return [str(id2label[index]) for index in sorted(id2label, key=int)]


def model_class_count(model) -> int | None:
    """How many classes the model predicts: its named classes, else a timm model's `num_classes`."""
    names = model_label_names(model)
    return len(names) if names else getattr(model, "num_classes", None)


def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def imagenet_aliases() -> list[list[str]]:
    """The names of each ImageNet-1k class in logit order: its synset (n01440764), its description ("tench, Tinca
    tinca") and the description's first name ("tench") when no other class shares it."""
    from collections import Counter

    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    descriptions = info.label_descriptions()
    first = [description.split(",")[0] for description in descriptions]
    shared = {name for name, count in Counter(map(_normalise, first)).items() if count > 1}
    return [[synset, description] + ([name] if _normalise(name) not in shared else [])
            for synset, description, name in zip(info.label_names(), descriptions, first)]


def _model_aliases(model_names: list[str] | None, num_outputs: int) -> list[list[str]] | None:
    if model_names:
        return [[name] for name in model_names]
    return imagenet_aliases() if num_outputs == IMAGENET_CLASSES else None


def class_columns(model_names: list[str] | None, num_outputs: int, data_names: list[str] | None,
                  num_data_classes: int | None = None) -> torch.Tensor | None:
    """Which logit column holds each data class (None: the identity, the columns already are the data's classes).
    A model with 1,000 unnamed outputs is taken as an ImageNet-1k classifier when the data's names are ImageNet's."""
    aliases = _model_aliases(model_names, num_outputs) if data_names else None
    if aliases:
        position = {_normalise(name): index for index, names in enumerate(aliases) for name in names}
        wanted = [position.get(_normalise(name)) for name in data_names]
        if all(index is not None for index in wanted):
            identity = wanted == list(range(len(wanted))) and len(wanted) == num_outputs
            return None if identity else torch.tensor(wanted)
    classes = len(data_names) if data_names else num_data_classes
    if classes is None or classes == num_outputs:
        return None
    raise CompressorError(f"the model predicts {num_outputs} classes and the data has {classes} with other names; "
                          "evaluate a model trained on these classes (or data labelled with the model's classes)")


def check_labels(labels: list[int], classes: int, where) -> None:
    """Every label is one of `classes` classes (0 to classes-1); `where(i)` names row i for the error. A label
    outside them would be scored as wrong, or crash training, instead of being reported."""
    bad = next((i for i, label in enumerate(labels) if not 0 <= label < classes), None)
    if bad is not None:
        raise CompressorError(f"{where(bad)} has the label {labels[bad]}, outside the {classes:,} classes it is "
                              f"scored on (0 to {classes - 1:,}); fix or remove that row, or use a model trained "
                              "on these classes")


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
