"""`evaluate`: a model's task metrics on labelled data, and its fidelity to a reference model, in one pass.

Each batch of images goes through each model's own preprocessing (`adapter.prepare_inputs`: the image processor or
timm's data config), so a compressed model and its original are compared on exactly what each would see in use.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from compressor.data.loading import CLASSIFICATION, DETECTION, UNLABELLED, LabelledData
from compressor.errors import CompressorError
from compressor.evaluate.classification import TopKAccuracy, check_labels, class_columns, model_label_names
from compressor.evaluate.coco import category_ids, coco_box_ap, to_coco_results
from compressor.evaluate.fidelity import FidelityMeter
from compressor.loaders.loaded_model import LoadedModel

#: the metric a task is judged by: what a sweep plots, and what the distill step keeps its best checkpoint for
HEADLINE = {CLASSIFICATION: "top1", DETECTION: "AP"}


class _ClassificationScorer:
    def __init__(self, loaded: LoadedModel, data: LabelledData):
        self.loaded, self.data = loaded, data
        self.accuracy = TopKAccuracy()
        self.columns: torch.Tensor | None = None
        self.checked = False

    def update(self, outputs: Any, inputs: dict, start: int, stop: int, images: list) -> None:
        adapter = self.loaded.adapter
        head = getattr(adapter, "head_output", None)
        if not self.checked and head is not None and head(outputs) is None:
            raise CompressorError(f"{self.loaded.source} has no classification head (no logits); evaluate a "
                                  "...ForImageClassification model, or pass --reference to measure fidelity only")
        logits = adapter.primary_output(outputs, inputs)
        if not self.checked:
            self.columns = class_columns(model_label_names(self.loaded.model), logits.shape[-1],
                                         self.data.label_names)
            check_labels(self.data.all_labels(), len(self.data.label_names or []) or logits.shape[-1],
                         lambda row: self.data.where(row, self.data.label_column))
            self.checked = True
        if self.columns is not None:
            logits = logits[:, self.columns]
        self.accuracy.update(logits, torch.tensor(self.data.labels(start, stop)))

    def result(self) -> dict[str, Any]:
        return self.accuracy.result()


class _DetectionScorer:
    def __init__(self, loaded: LoadedModel, data: LabelledData):
        self.loaded, self.data = loaded, data
        self.mapping = category_ids(model_label_names(loaded.model), data.coco["categories"])
        self.results: list[dict] = []

    def update(self, outputs: Any, inputs: dict, start: int, stop: int, images: list) -> None:
        sizes = [(image.height, image.width) for image in images]
        for image_id, detection in zip(self.data.image_ids(start, stop),
                                       self.loaded.adapter.detections(outputs, sizes)):
            self.results += to_coco_results(image_id, detection, self.mapping)

    def result(self) -> dict[str, Any]:
        return coco_box_ap(self.data.coco, self.results)


SCORERS = {CLASSIFICATION: _ClassificationScorer, DETECTION: _DetectionScorer}


def check_modality(loaded: LoadedModel, data: LabelledData) -> None:
    """Text data for text models, images for the rest: one clear line otherwise."""
    text_model = loaded.adapter.token_layout().text
    if data.text_column is not None and not text_model:
        raise CompressorError(f"{data.spec} holds text but {loaded.source} takes images; pass image data")
    if data.text_column is None and text_model:
        raise CompressorError(f"{data.spec} holds images but {loaded.source} is a text model; pass a .txt file of "
                              "paragraphs separated by blank lines, or a table with a `text` column")


def _check_task(loaded: LoadedModel, data: LabelledData) -> None:
    task = loaded.adapter.task
    if data.task == DETECTION and task != DETECTION:
        raise CompressorError(f"{data.spec} is detection data but {loaded.source} is a {task} model")
    if data.task == CLASSIFICATION and task not in (CLASSIFICATION,):
        raise CompressorError(f"{data.spec} is classification data but {loaded.source} is a {task} model")


def task_scorer(loaded: LoadedModel, data: LabelledData, reference: LoadedModel | None):
    """The scorer of the task metric, or None when only fidelity can be measured: unlabelled data, or a bare
    encoder without a task head (e.g. a sentence-embedding BERT or a ViTModel)."""
    if data.task != UNLABELLED and loaded.adapter.has_head():
        _check_task(loaded, data)
        return SCORERS[data.task](loaded, data)
    if reference is None:
        what = f"{data.spec} has no labels" if data.task == UNLABELLED else \
            f"{loaded.source} has no task head (a bare encoder)"
        raise CompressorError(f"{what}, so only fidelity can be measured: pass --reference ORIGINAL (e.g. the model "
                              "it was compressed from) for embedding cosine")
    return None


@torch.no_grad()
def evaluate(loaded: LoadedModel, data: LabelledData, *, reference: LoadedModel | None = None,
             batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """Task metrics (top-1/top-5, or COCO box AP) and, with a reference, fidelity to it; plus wall time.

    Unlabelled data (text paragraphs) and headless models have no task metric: fidelity to the reference only.
    """
    from tqdm.auto import tqdm

    for item in [loaded] + ([reference] if reference is not None else []):
        check_modality(item, data)
        item.model.eval()
    scorer = task_scorer(loaded, data, reference)
    data.check_images()
    fidelity = FidelityMeter() if reference is not None else None
    # a bare encoder's output is an embedding, not logits: no logit KL or top-1 agreement on it
    outputs_are = data.task if loaded.adapter.has_head() else "feature-extraction"
    started = time.perf_counter()
    unit = "text" if data.text_column is not None else "img"
    with tqdm(total=len(data), unit=unit, desc="evaluate", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            examples = data.examples(start, stop)
            inputs = loaded.adapter.prepare_inputs(examples)
            outputs = loaded.model(**inputs)
            if scorer is not None:
                scorer.update(outputs, inputs, start, stop, examples)
            if fidelity is not None:
                reference_inputs = reference.adapter.prepare_inputs(examples)
                reference_outputs = reference.model(**reference_inputs)
                fidelity.update(outputs_are, loaded.adapter.primary_output(outputs, inputs),
                                reference.adapter.primary_output(reference_outputs, reference_inputs),
                                loaded.adapter.query_predictions(outputs),
                                reference.adapter.query_predictions(reference_outputs),
                                loaded.adapter.query_class_activation)
            bar.update(stop - start)
    seconds = time.perf_counter() - started
    return {
        "model": loaded.source,
        "data": data.spec,
        "task": data.task,
        "examples": len(data),
        "metrics": scorer.result() if scorer is not None else {},
        "reference": reference.source if reference is not None else None,
        "fidelity": fidelity.result() if fidelity is not None else None,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(data) / seconds, 2) if seconds > 0 else None,
    }


def format_evaluation(result: dict[str, Any]) -> str:
    """The result as aligned `name  value` lines."""
    lines = [("model", result["model"]), ("data", f"{result['data']} ({result['examples']} examples, "
                                                  f"{result['task']})")]
    lines += [(name, "n/a" if value is None else f"{value:.4f}") for name, value in result["metrics"].items()]
    if result.get("fidelity"):
        lines.append(("reference", result["reference"]))
        lines += [(name, f"{value:.6g}") for name, value in result["fidelity"].items()]
    unit = "examples" if result["task"] == UNLABELLED else "images"
    lines.append(("time", f"{result['seconds']:.1f} s ({result['images_per_second']} {unit}/s)"))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in lines)
