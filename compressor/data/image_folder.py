"""A folder of images with one sub-folder per class, read whole as one split.

`datasets`' image-folder loader infers splits from words in file names: the ImageNet validation sample laid out one
image per class, with names like `n02917067_bullet_train.JPEG`, became a one-image "train" split. Here every image
file under the folder is listed explicitly and labelled by the sub-folder it lies in (its first folder under the
root), so nothing is dropped and the count is said.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from compressor.data.images import IMAGE_SUFFIXES, image_files
from compressor.errors import SourceError

#: the column names the rest of the toolkit finds (loading.IMAGE_COLUMNS, loading.LABEL_COLUMNS)
IMAGE, LABEL = "image", "label"
#: sub-folder names that hold splits, not classes
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "dev"}


def split_folder(folder: Path, split: str | None) -> Path:
    """The folder whose sub-folders are the classes: `folder/split` when a split is asked for and exists; a folder
    of split folders alone (train/, test/) is refused rather than read as two classes."""
    if split and (folder / split).is_dir():
        return folder / split
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if split is None and subfolders and all(name.lower() in SPLIT_NAMES for name in subfolders):
        raise SourceError(f"{folder} holds splits ({', '.join(subfolders)}), not class folders; pass --split "
                          f"{subfolders[-1]} or the folder {folder / subfolders[-1]}")
    return folder


def class_of(root: Path, path: Path) -> str | None:
    """The class folder of `path` (its first folder under `root`); None for an image lying directly in `root`."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def _per_class(counts: Counter) -> str:
    low, high = min(counts.values()), max(counts.values())
    return f"{low:,} each" if low == high else f"{low:,} to {high:,} per class"


def read_image_folder(folder: Path, progress: bool = False):
    """A `datasets.Dataset` of every image under `folder` (an `Image` column of paths, decoded later) and its class
    (a `ClassLabel` of the sub-folder names, sorted)."""
    import datasets

    files = image_files(folder)
    if not files:
        raise SourceError(f"data folder {folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = [class_of(folder, path) for path in files]
    loose = [path for path, name in zip(files, classes) if name is None]
    if loose:
        raise SourceError(f"{len(loose):,} images lie directly in {folder}, outside a class folder (e.g. "
                          f"{loose[0].name}); put each class's images in {folder}/CLASS/")
    names = sorted(set(classes))
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features({IMAGE: datasets.Image(decode=False), LABEL: datasets.ClassLabel(names=names)})
    dataset = datasets.Dataset.from_dict({IMAGE: [str(path) for path in files],
                                          LABEL: [index[name] for name in classes]}, features=features)
    if progress:
        counts = Counter(classes)
        print(f"read {len(files):,} images in {len(names):,} classes ({_per_class(counts)}) from {folder}",
              file=sys.stderr)
    return dataset
