"""What a CLI command is, and the arguments several commands share."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod

from compressor.checked_numbers import check_input_side
from compressor.errors import CompressorError


class Command(ABC):
    name: str
    help: str

    @classmethod
    @abstractmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments to its subparser."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit status. Raise CompressorError for bad input."""


def parse_input_size(text: str | None) -> tuple[int, ...] | None:
    """`800x1066` → (800, 1066) for images, `256` → (256,) for text."""
    if text is None:
        return None
    try:
        size = tuple(int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        size = ()
    if not size or len(size) > 2 or any(s <= 0 for s in size):
        raise CompressorError(f"--input-size {text!r}: expected HEIGHTxWIDTH for images (e.g. 800x1066) or a "
                              "token count for text (e.g. 256)")
    return tuple(check_input_side(side, text) for side in size)


def add_source_arguments(parser: argparse.ArgumentParser, input_size: bool = True) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="a Hub id (facebook/detr-resnet-50, timm/vit_base_patch16_224.augreg_in21k), a local "
                             "save_pretrained directory, or a directory written by compress")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the Hub repository to run (off unless you ask)")
    if input_size:
        parser.add_argument("--input-size", metavar="HxW",
                            help="size of the example input used for FLOPs and latency (default: the model's own)")


def add_recipe_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--recipe", required=required, metavar="NAME|PATH",
                        help="a built-in recipe name (see `cli.py recipes`) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe parameter, e.g. --set act.rounds=16 (repeatable)")


def check_file_output(path: str | None) -> None:
    """Fail before any heavy work when a result file (--json FILE) could not be written."""
    if path is None:
        return
    import os
    from pathlib import Path

    target = Path(path).absolute()
    if target.is_dir():
        raise CompressorError(f"{path} is a directory; give a file name for the JSON result")
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise CompressorError(f"cannot write {path}: {target.parent} is not a writable directory")


def add_data_arguments(parser: argparse.ArgumentParser, batch_size: int | None = 32) -> None:
    """--data and how much of it to use: shared by evaluate, sweep and distill (batch_size None: the command declares
    --batch-size itself)."""
    parser.add_argument("--data", required=True, metavar="DATA",
                        help="labelled data: a parquet/json file (Hub columns), an image folder with one folder per "
                             "class, a COCO folder (images + annotations/instances_*.json), or a Hub dataset id "
                             "(uoft-cs/cifar10:test)")
    parser.add_argument("--split", help="split of a Hub dataset or image folder (default: train, or id:split)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use N examples only (a seeded random subset, the same on every run)")
    if batch_size is not None:
        parser.add_argument("--batch-size", type=int, default=batch_size, metavar="B",
                            help=f"images per forward (default {batch_size})")
    parser.add_argument("--box-format", choices=("xywh", "xyxy"),
                        help="how a Hub detection dataset writes objects.bbox (default: xywh, COCO's; xyxy for "
                             "detection-datasets/coco)")


def check_positive(**values: int | None) -> None:
    """One line for the first of the given options that is set but not positive."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise CompressorError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def load_data(args: argparse.Namespace):
    """The labelled data an --data argument names, cut to --limit (with a line saying what an image folder held,
    unless --quiet)."""
    from compressor.data.loading import load_labelled

    return load_labelled(args.data, split=args.split, box_format=args.box_format,
                         progress=not getattr(args, "quiet", False)).subset(args.limit)
