"""Training data (labelled images, COCO detection, or unlabelled text) as a torch Dataset whose batches the model's
own processor prepares (in the DataLoader's collate, so accelerate shards and prefetches them like any DataLoader)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils.data import Dataset

from compressor.data.loading import CLASSIFICATION, DETECTION, LabelledData
from compressor.models.base import ModelAdapter


class Examples(Dataset):
    """Row i: (raw example, target): an RGB image with its class label or its COCO annotations, or a text (or an
    image) with no target (None) for unlabelled data."""

    def __init__(self, data: LabelledData):
        self.data = data
        self.annotations: dict[int, list[dict]] = defaultdict(list)
        if data.coco is not None:
            for annotation in data.coco["annotations"]:
                self.annotations[annotation["image_id"]].append(annotation)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        row = self.data.dataset[int(index)]
        if self.data.text_column is not None:
            return row[self.data.text_column], None
        image = self.data.decode_image(int(index), row[self.data.image_column])
        if self.data.task == CLASSIFICATION:
            return image, int(row[self.data.label_column])
        if self.data.task != DETECTION:
            return image, None
        image_id = self.data.coco["images"][int(index)]["id"]
        return image, {"image_id": image_id, "annotations": self.annotations[image_id]}


class Collate:
    """Batches of (model inputs, targets): class labels as a tensor, DETR-style `labels` made by the processor
    from COCO annotations (normalised cx, cy, w, h boxes and class ids, what transformers' DETR loss expects), or
    None for unlabelled data (texts go through the model's tokenizer)."""

    def __init__(self, adapter: ModelAdapter, task: str, class_of_category: dict[int, int] | None = None):
        self.adapter, self.task = adapter, task
        #: COCO category id → the model's class index (None: the ids are the model's classes)
        self.class_of_category = class_of_category

    def _targets(self, batch: list[tuple[Any, Any]]) -> list[dict]:
        if self.class_of_category is None:
            return [target for _, target in batch]
        return [{**target, "annotations": [{**a, "category_id": self.class_of_category[a["category_id"]]}
                                           for a in target["annotations"]
                                           if a["category_id"] in self.class_of_category]}
                for _, target in batch]

    def __call__(self, batch: list[tuple[Any, Any]]) -> tuple[dict[str, torch.Tensor], Any]:
        examples = [example for example, _ in batch]
        if self.task == CLASSIFICATION:
            return self.adapter.prepare_inputs(examples), torch.tensor([label for _, label in batch])
        if self.task != DETECTION:
            return self.adapter.prepare_inputs(examples), None
        processor = self.adapter.processor if self.adapter.processor is not None else \
            self.adapter.default_image_processor()
        encoded = processor(images=examples, annotations=self._targets(batch), return_tensors="pt")
        labels = encoded.pop("labels")
        return dict(encoded), labels
