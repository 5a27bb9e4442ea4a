"""What a CLI command is, and the arguments several commands share."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod

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
    return size


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="a Hub id (facebook/detr-resnet-50, timm/vit_base_patch16_224.augreg_in21k), a local "
                             "save_pretrained directory, or a directory written by compress")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the Hub repository to run (off unless you ask)")
    parser.add_argument("--input-size", metavar="HxW",
                        help="size of the example input used for FLOPs and latency (default: the model's own)")


def add_recipe_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--recipe", required=required, metavar="NAME|PATH",
                        help="a built-in recipe name (see `cli.py recipes`) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe parameter, e.g. --set act.rounds=16 (repeatable)")
