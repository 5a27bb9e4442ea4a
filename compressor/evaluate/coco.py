"""COCO box AP with pycocotools, the reference implementation every detection paper reports.

Ground truth is a COCO-format dict (`compressor.data.loading` builds one for every detection source); detections
are per-image (scores, labels, xyxy pixel boxes) from the adapter's post-processing, with the model's class indices
translated to the data's category ids by name when the names agree (else taken as ids, as facebook/detr-resnet-50's
labels are COCO's own category ids).
"""

from __future__ import annotations

import contextlib
import copy
import io

import torch

#: pycocotools' `stats` order for box AP
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def category_ids(model_names: list[str] | None, categories: list[dict]) -> dict[int, int] | None:
    """Model class index → category id, matched by name; None (use indices as ids) when no name matches."""
    if not model_names:
        return None
    by_name = {category["name"].lower(): category["id"] for category in categories}
    mapping = {index: by_name[name.lower()] for index, name in enumerate(model_names) if name.lower() in by_name}
    return mapping or None


def to_coco_results(image_id: int, detection: dict[str, torch.Tensor], mapping: dict[int, int] | None) -> list[dict]:
    """One image's detections as COCO result entries (x, y, width, height); classes outside the data are dropped."""
    results = []
    for score, label, box in zip(detection["scores"].tolist(), detection["labels"].tolist(),
                                 detection["boxes"].tolist()):
        category = mapping.get(label) if mapping is not None else label
        if category is None:
            continue
        x0, y0, x1, y1 = box
        results.append({"image_id": image_id, "category_id": int(category), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score)})
    return results


def coco_box_ap(ground_truth: dict, results: list[dict]) -> dict[str, float | None]:
    """AP, AP50, AP75, APs, APm, APl (None where the data has no object of that size)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in AP_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.params.imgIds = [image["id"] for image in ground_truth["images"]]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (float(value) if value >= 0 else None) for name, value in zip(AP_NAMES, evaluator.stats)}
