"""The task metric of the original and of the compressed model on the same labelled data: `compress --eval-data`.

Both are measured by the `evaluate` runner (each model through its own preprocessing): top-1/top-5 for classifiers,
COCO box AP for detectors. A bare encoder has no task metric; its metric is the embedding cosine to the original on
the data (1 before, by definition).
"""

from __future__ import annotations

from typing import Any

from compressor.data.loading import LabelledData
from compressor.evaluate.runner import check_modality, evaluate, task_scorer
from compressor.sources import LoadedModel

#: the metric of a model without a task head, from the runner's fidelity to the original
EMBEDDING_COSINE = "embedding_cosine"


def load_eval_data(spec: str, limit: int | None, *, progress: bool = False) -> LabelledData:
    """The labelled data `--eval-data` names, cut to `limit` examples: the seeded subset `evaluate --limit` takes
    (with `progress`, an image folder says how many images it found per class)."""
    from compressor.data.loading import load_labelled

    return load_labelled(spec, progress=progress).subset(limit)


def check_eval_data(loaded: LoadedModel, data: LabelledData) -> None:
    """Refuse data the model cannot be scored on (text for an image model, detection data for a classifier), before
    anything slow; the model itself stands in as the reference a bare encoder is measured against."""
    check_modality(loaded, data)
    task_scorer(loaded, data, reference=loaded)
    data.check_images()


def metric_before_after(original: LoadedModel, compressed: LoadedModel, data: LabelledData, *,
                        batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """{"data", "examples", "metrics": {name: {"before", "after"}}} for the metrics both models have a value of."""
    if not compressed.adapter.has_head():
        after = evaluate(compressed, data, reference=original, batch_size=batch_size, progress=progress)
        metrics = {EMBEDDING_COSINE: {"before": 1.0, "after": after["fidelity"]["cosine"]}}
    else:
        before = evaluate(original, data, batch_size=batch_size, progress=progress)["metrics"]
        after = evaluate(compressed, data, batch_size=batch_size, progress=progress)["metrics"]
        metrics = {name: {"before": value, "after": after[name]} for name, value in before.items()
                   if value is not None and after.get(name) is not None}
    return {"data": data.spec, "examples": len(data), "metrics": metrics}
