"""`cli.py recipes`: the built-in recipes, one line each."""

from __future__ import annotations

import argparse

from compressor.commands.base import Command


class RecipesCommand(Command):
    name = "recipes"
    help = "list the built-in recipes"

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        """`recipes` takes no arguments."""

    def run(self, args: argparse.Namespace) -> int:
        from compressor.recipe import builtin_recipes

        entries = builtin_recipes()
        width = max(len(name) for name, _, _ in entries)
        for name, description, _ in entries:
            print(f"{name.ljust(width)}  {description}")
        return 0
