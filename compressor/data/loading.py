"""Labelled image data for evaluation and distillation, read through `datasets`.

DATA (the `--data` argument) is one of

- a local table file (`.parquet`, `.arrow`, `.csv`, `.json`, `.jsonl`) with the Hub's columns: an image column (an
  `Image` feature, or a column named `img`/`image`) and, for classification, a label column (a `ClassLabel`, or a
  column named `label`/`labels`), or, for detection, an `objects` column holding `bbox` and `category` lists;
- a folder of images with one sub-folder per class, read whole as one split (`image_folder`);
- a COCO-format detection folder: the images plus `annotations/instances_*.json` (or that JSON file itself);
- a Hub dataset id with an optional split, `uoft-cs/cifar10:test` or `detection-datasets/coco:val`;
- unlabelled text for text models: a `.txt` file of paragraphs separated by blank lines, or a table with a `text`
  column and no image column. It has no task metric; it serves fidelity to a reference (embedding cosine) and
  distillation.

Detection ground truth is always held in COCO format (`LabelledData.coco`), so one evaluator (pycocotools) serves
every source.

Images are kept undecoded and checked as they are read (`images.decode`): a bad one is one line naming its file, or
its row and column in a table; `LabelledData.check_images` reads every header first, so a broken or oversized image
stops a run before any work rather than minutes into it. Labels are checked whole when the data is opened (text
labels) and against the model's classes before scoring or training (`classification.check_labels`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from compressor.data import images as checked_images
from compressor.data.image_folder import read_image_folder, split_folder
from compressor.errors import SourceError

TABLE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
IMAGE_COLUMNS = ("img", "image")
LABEL_COLUMNS = ("label", "labels", "fine_label")
#: how the `objects.bbox` of known Hub detection datasets is written (the COCO default is x, y, width, height)
HUB_BOX_FORMATS = {"detection-datasets/coco": "xyxy"}
TEXT_COLUMN = "text"
CLASSIFICATION, DETECTION, UNLABELLED = "image-classification", "object-detection", "unlabelled"


@dataclass
class LabelledData:
    """A dataset and what it holds: rows with an image and a class label, images whose boxes are in `coco` (row i
    is `coco["images"][i]`), or unlabelled rows of text (`text_column`)."""

    spec: str
    task: str
    dataset: Any  # datasets.Dataset
    image_column: str | None
    label_column: str | None = None
    label_names: list[str] | None = None
    coco: dict | None = None
    text_column: str | None = None
    #: the row numbers in the data as given, of a subset's rows (None: row i is row i)
    rows: list[int] | None = None
    #: every image header has been read (`check_images`)
    headers_checked: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def subset(self, limit: int | None, seed: int = 0) -> "LabelledData":
        """A seeded random `limit` rows (all when None), in their original order, with the ground truth of those
        images only. Random, not the first rows: Hub tables are often sorted by class."""
        if limit is None or limit >= len(self):
            return self
        import torch

        chosen = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        chosen = chosen.tolist()
        coco = None
        if self.coco is not None:
            images = [self.coco["images"][index] for index in chosen]
            kept = {image["id"] for image in images}
            coco = {**self.coco, "images": images,
                    "annotations": [a for a in self.coco["annotations"] if a["image_id"] in kept]}
        rows = [self.rows[index] for index in chosen] if self.rows is not None else chosen
        return replace(self, dataset=self.dataset.select(chosen), coco=coco, rows=rows)

    def where(self, index: int, column: str | None = None, value: Any = None) -> str:
        """How to find row `index` in the data as given: its image file, else its row number and column."""
        path = checked_images.stored_path(value) if value is not None else None
        if path is not None:
            return path
        row = self.rows[index] if self.rows is not None else index
        return f"row {row} of {self.spec} (column {column or self.image_column})"

    def images(self, start: int, stop: int) -> list:
        """RGB PIL images of rows [start, stop), each checked as it is decoded."""
        values = self.dataset[start:stop][self.image_column]
        return [self.decode_image(start + offset, value) for offset, value in enumerate(values)]

    def decode_image(self, index: int, value: Any):
        """Row `index`'s image `value` (bytes or a path) as an RGB PIL image; a bad one is an error naming it."""
        return checked_images.decode(value, self.where(index, value=value))

    def check_images(self, chunk: int = 256) -> None:
        """Read every image's header (format and size, not the pixels): an undecodable, empty or oversized image
        is refused before any work, naming it."""
        if self.image_column is None or self.headers_checked:
            return
        for start in range(0, len(self), chunk):
            for offset, value in enumerate(self.dataset[start:start + chunk][self.image_column]):
                checked_images.check_header(value, self.where(start + offset, value=value))
        self.headers_checked = True

    def examples(self, start: int, stop: int) -> list:
        """The raw model inputs of rows [start, stop): strings for text data, else RGB PIL images."""
        if self.text_column is not None:
            return list(self.dataset[start:stop][self.text_column])
        return self.images(start, stop)

    def labels(self, start: int, stop: int) -> list[int]:
        return list(self.dataset[start:stop][self.label_column])

    def all_labels(self) -> list[int]:
        return list(self.dataset[self.label_column])

    def image_ids(self, start: int, stop: int) -> list[int]:
        return [image["id"] for image in self.coco["images"][start:stop]]


def read_paragraphs(path: Path) -> list[str]:
    """The paragraphs of a text file (separated by blank lines), each on one line."""
    blocks = [" ".join(block.split()) for block in path.read_text(encoding="utf-8").split("\n\n")]
    return [block for block in blocks if block]


def _error_detail(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no detail'}"


def open_dataset(spec: str, split: str | None = None, progress: bool = False):
    """A `datasets.Dataset` from a table file, an image folder (its `split` sub-folder when there is one) or a
    Hub id (`id` or `id:split`)."""
    import datasets

    path = Path(spec).expanduser()
    if path.is_dir():
        return read_image_folder(split_folder(path, split), progress)
    # datasets logs a failure before raising it; the one-line SourceError below says the same thing
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        if path.is_file() and path.suffix.lower() in TABLE_FORMATS:
            return datasets.load_dataset(TABLE_FORMATS[path.suffix.lower()], data_files=str(path), split="train")
        name, _, hub_split = spec.partition(":")
        return datasets.load_dataset(name, split=hub_split or split or "train")
    except Exception as error:  # datasets raises many types for unreadable or unreachable data
        raise SourceError(f"cannot read data {spec!r} ({_error_detail(error)}); pass a parquet/json file, an image "
                          "folder, a COCO folder or a Hub dataset id like uoft-cs/cifar10:test") from None
    finally:
        logger.setLevel(level)


def _image_columns(dataset) -> list[str]:
    """The `Image` features, then any column named img/image."""
    from datasets import Image as ImageFeature

    names = list(dataset.features)
    found = [n for n in names if isinstance(dataset.features[n], ImageFeature)]
    return found + [n for n in IMAGE_COLUMNS if n in names and n not in found]


def image_column(dataset, spec: str) -> str:
    """The first `Image` feature, else a column named img/image."""
    found = _image_columns(dataset)
    if not found:
        raise SourceError(f"data {spec} has no image column (columns: {', '.join(dataset.features)}); expected an "
                          "Image feature or a column named img/image (or a `text` column for text models)")
    return found[0]


def _label_column(dataset) -> str | None:
    from datasets import ClassLabel

    names = list(dataset.features)
    found = [n for n in names if isinstance(dataset.features[n], ClassLabel)] + [n for n in LABEL_COLUMNS if n in names]
    return found[0] if found else None


def find_coco_annotations(path: Path) -> Path | None:
    """`path` itself when it is a COCO JSON, else the folder's `annotations/instances_*.json` (first by name)."""
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir():
        candidates = sorted(path.glob("annotations/instances_*.json")) or sorted(path.glob("instances_*.json"))
        return candidates[0] if candidates else None
    return None


def _coco_image_path(root: Path, annotations: Path, file_name: str) -> Path:
    """COCO keeps only file names: look beside the annotations' folder, in `<root>/<split>/`, then recursively."""
    split = annotations.stem.removeprefix("instances_")
    for candidate in (root / split / file_name, root / "images" / split / file_name, root / "images" / file_name,
                      root / file_name):
        if candidate.is_file():
            return candidate
    found = next(root.rglob(Path(file_name).name), None)
    if found is None:
        raise SourceError(f"{annotations} lists {file_name}, which is not under {root}; put the images in "
                          f"{root / split}/")
    return found


def load_coco_folder(spec: str, annotations: Path) -> LabelledData:
    import datasets

    try:
        coco = json.loads(annotations.read_text())
        images = coco["images"]
        coco.setdefault("annotations", [])
        coco.setdefault("categories", [])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SourceError(f"{annotations} is not a COCO annotation file ({_error_detail(error)})") from None
    root = annotations.parent.parent if annotations.parent.name == "annotations" else annotations.parent
    paths = [str(_coco_image_path(root, annotations, image["file_name"])) for image in images]
    dataset = datasets.Dataset.from_dict({"image": paths, "image_id": [image["id"] for image in images]})
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    for annotation in coco["annotations"]:
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    return LabelledData(spec, DETECTION, dataset, "image", coco=coco)


def _xywh(box: list[float], box_format: str) -> list[float]:
    if box_format == "xyxy":
        return [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    return list(box)


def _innermost(feature):
    """The feature inside any List/Sequence wrappers."""
    while hasattr(feature, "feature") and not isinstance(feature, dict):
        feature = feature.feature
    return feature


def _boxes_and_categories(objects) -> tuple[list, list]:
    """`objects` as a dict of lists (Hub `Sequence` of a struct) or a list of dicts."""
    if isinstance(objects, dict):
        return objects["bbox"], objects["category"]
    return [o["bbox"] for o in objects], [o["category"] for o in objects]


def coco_from_objects(dataset, column: str, box_format: str, spec: str = "the data") -> dict:
    """COCO-format ground truth from a Hub-style detection dataset (`objects` = {bbox: [...], category: [...]})."""
    from datasets import ClassLabel

    category_feature = _innermost(_innermost(dataset.features["objects"])["category"])
    names = category_feature.names if isinstance(category_feature, ClassLabel) else None
    keep = [c for c in ("objects", "image_id", "width", "height") if c in dataset.column_names]
    images, annotations, seen = [], [], set()
    for index, row in enumerate(dataset.select_columns(keep)):
        image_id = int(row.get("image_id", index))
        width, height = row.get("width"), row.get("height")
        if width is None or height is None:
            where = f"row {index} of {spec} (column {column})"
            width, height = checked_images.decode(dataset[index][column], where).size
        images.append({"id": image_id, "width": int(width), "height": int(height), "file_name": str(image_id)})
        for box, category in zip(*_boxes_and_categories(row["objects"])):
            xywh = _xywh(box, box_format)
            seen.add(int(category))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(category),
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    ids = range(len(names)) if names else sorted(seen)
    categories = [{"id": i, "name": names[i] if names else str(i)} for i in ids]
    return {"images": images, "annotations": annotations, "categories": categories}


def _text_paragraphs(spec: str, path: Path) -> LabelledData:
    import datasets

    try:
        paragraphs = read_paragraphs(path)
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"cannot read text data {spec} ({_error_detail(error)}); pass a UTF-8 .txt file of "
                          "paragraphs separated by blank lines") from None
    if not paragraphs:
        raise SourceError(f"data {spec} holds no paragraphs; separate paragraphs by blank lines")
    dataset = datasets.Dataset.from_dict({TEXT_COLUMN: paragraphs})
    return LabelledData(spec, UNLABELLED, dataset, None, text_column=TEXT_COLUMN)


def undecoded(dataset, column: str):
    """`dataset` with its `Image` column left as bytes or paths, for `checked_images.decode` to read."""
    from datasets import Image as ImageFeature

    if isinstance(dataset.features[column], ImageFeature) and dataset.features[column].decode:
        return dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


def check_label_values(dataset, label: str, spec: str) -> None:
    """Class labels are integers: a column of text (or fractions) would be compared with class indices and score
    every row as wrong."""
    from datasets import ClassLabel

    feature = dataset.features[label]
    dtype = str(getattr(feature, "dtype", ""))
    if isinstance(feature, ClassLabel) or dtype.startswith(("int", "uint")):
        return
    values = list(dataset[label])
    row = next((i for i, value in enumerate(values) if not isinstance(value, int) or isinstance(value, bool)), 0)
    raise SourceError(f"row {row} of {spec} (column {label}) has the label {values[row]!r}, not a class index "
                      f"(the column is {dtype or type(feature).__name__}); store class indices in a ClassLabel "
                      "column (its names say which class each is), or use a folder with one sub-folder per class")


def load_labelled(spec: str, *, split: str | None = None, box_format: str | None = None,
                  progress: bool = False) -> LabelledData:
    """What `spec` holds, as classification rows or detection images with COCO ground truth; with `progress`, a
    line saying how many images an image folder held."""
    path = Path(spec).expanduser()
    if not path.exists() and (spec.startswith((".", "/", "~")) or path.suffix):
        raise SourceError(f"data {spec} does not exist; pass a parquet/json file, an image folder, a COCO folder "
                          "or a Hub dataset id")
    annotations = find_coco_annotations(path)
    if annotations is not None:
        return load_coco_folder(spec, annotations)
    if path.is_file() and path.suffix.lower() == ".txt":
        return _text_paragraphs(spec, path)
    dataset = open_dataset(spec, split, progress)
    if len(dataset) == 0:
        raise SourceError(f"data {spec} is empty")
    if TEXT_COLUMN in dataset.column_names and not _image_columns(dataset):
        return LabelledData(spec, UNLABELLED, dataset, None, text_column=TEXT_COLUMN)
    column = image_column(dataset, spec)
    dataset = undecoded(dataset, column)
    if "objects" in dataset.column_names:
        box_format = box_format or HUB_BOX_FORMATS.get(spec.partition(":")[0], "xywh")
        return LabelledData(spec, DETECTION, dataset, column, coco=coco_from_objects(dataset, column, box_format, spec))
    label = _label_column(dataset)
    if label is None:
        raise SourceError(f"data {spec} has no label column (columns: {', '.join(dataset.column_names)}); "
                          "expected a ClassLabel feature, a column named label/labels, or detection `objects`")
    check_label_values(dataset, label, spec)
    names = getattr(dataset.features[label], "names", None)
    return LabelledData(spec, CLASSIFICATION, dataset, column, label_column=label, label_names=names)
