"""Render the reference part of `docs/recipes.md` from the pass registry, so the docs cannot drift from the code.

    python -m compressor.recipe_docs --write   # rewrite the generated section in place
    python -m compressor.recipe_docs --check   # exit 1 if it is stale (CI, tests)

Only the text between the markers is generated; the hand-written guide above them is left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from compressor.distill import recipe_stage
from compressor.distill.settings import DISTILL, DISTILL_PARAMS
from compressor.passes import COMMON_PARAMS, PASSES, Param, Pass
from compressor.recipe import RECIPES_DIR, Recipe, builtin_recipes, yaml_text

BEGIN = "<!-- BEGIN GENERATED REFERENCE -->"
END = "<!-- END GENERATED REFERENCE -->"
DOC_PATH = RECIPES_DIR.parent / "docs" / "recipes.md"
COMMAND = "python -m compressor.recipe_docs --write"


def inline_yaml(value: Any) -> str:
    """A value as one line of YAML (`[auto]`, `null`, `8.0`), the way a user would type it in a recipe."""
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def first_paragraph(docstring: str | None) -> str:
    return " ".join((docstring or "").strip().split("\n\n")[0].split())


def parameter_row(name: str, param: Param) -> list[str]:
    return [f"`{name}`", param.type, f"`{inline_yaml(param.default)}`", param.describe_allowed(), param.help]


def render_pass(pass_class: type[Pass]) -> str:
    """A pass's section: summary, what it does, every parameter, and its defaults as a recipe."""
    module_doc = first_paragraph(sys.modules[pass_class.__module__].__doc__)
    rows = [parameter_row(name, param) for name, param in pass_class.all_params().items()]
    defaults = Recipe.from_dict({"compress_stage": {pass_class.name: None}}).to_dict()
    del defaults["description"]
    parts = [
        f"#### `{pass_class.name}`",
        pass_class.summary,
        module_doc,
        f"Rewrites {pass_class.site_kind} sites. Parameters (the first {len(COMMON_PARAMS)} are common to every "
        "pass):",
        table(["Parameter", "Type", "Default", "Allowed values", "Description"], rows),
        "Every default, spelled out:",
        f"```yaml\n{yaml_text(defaults).rstrip()}\n```",
    ]
    return "\n\n".join(part for part in parts if part)


def render_distill_step() -> str:
    """The training step's section: what `compress` does with it, and every setting."""
    rows = [parameter_row(name, param) for name, param in DISTILL_PARAMS.items()]
    example = Recipe.from_dict({"compress_stage": {min(PASSES): None}, "distill_stage": {DISTILL: None}}).to_dict()
    return "\n\n".join([
        f"### The `{DISTILL}` step",
        first_paragraph(recipe_stage.__doc__),
        f"It must be the last step of a recipe (usually alone in a `distill_stage`). `cli.py compress --data DATA` "
        f"fills in `data`, `--eval-data` fills in `eval_data`, and `--no-distill` skips the step. The same settings "
        f"are the options of `cli.py {DISTILL}`. Parameters:",
        table(["Parameter", "Type", "Default", "Allowed values", "Description"], rows),
        "Every default, spelled out:",
        f"```yaml\n{yaml_text({'distill_stage': example['distill_stage']}).rstrip()}\n```",
    ])


def render_reference() -> str:
    """The generated section (without the markers): built-in recipes, then every pass by name."""
    repository = RECIPES_DIR.parent
    builtins = table(["Name", "Description", "File"],
                     [[f"`{name}`", description, f"`{path.relative_to(repository).as_posix()}`"]
                      for name, description, path in builtin_recipes()])
    sections = [
        f"<!-- Generated from the pass registry by `{COMMAND}`; edit the code, not this section. -->",
        "## Reference",
        "### Built-in recipes",
        builtins,
        "### Passes",
        *(render_pass(PASSES[name]) for name in sorted(PASSES)),
        render_distill_step(),
    ]
    return "\n" + "\n\n".join(sections) + "\n"


def split_document(text: str, path: Path = DOC_PATH) -> tuple[str, str, str]:
    """(before BEGIN, generated, from END on) of the docs file; both markers must be there, in order."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: needs the markers {BEGIN} and {END}, in that order, around the reference")
    return text[:start + len(BEGIN)], text[start + len(BEGIN):end], text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compressor.recipe_docs", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated section in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if the generated section is stale")
    parser.add_argument("--path", type=Path, default=DOC_PATH, help=f"the docs file (default: {DOC_PATH})")
    args = parser.parse_args(argv)
    before, generated, after = split_document(args.path.read_text(encoding="utf-8"), args.path)
    reference = render_reference()
    if args.check:
        if generated != reference:
            print(f"{args.path}: the generated reference is stale; run `{COMMAND}`", file=sys.stderr)
            return 1
        print(f"{args.path}: up to date")
        return 0
    if generated != reference:
        args.path.write_text(before + reference + after, encoding="utf-8")
        print(f"{args.path}: reference rewritten")
    else:
        print(f"{args.path}: already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
