"""`cli.py inspect SOURCE [--recipe R] [--json]`: the sites each pass would touch, params and FLOPs."""

from __future__ import annotations

import argparse
import dataclasses

from compressor import strict_json
from compressor.commands.base import Command, add_recipe_arguments, add_source_arguments, parse_input_size


def describe_sites(loaded, recipe) -> dict[str, dict]:
    """For each pass (the recipe's, or every registered pass): the sites it would rewrite and its candidates."""
    from compressor.errors import RecipeError
    from compressor.passes import PASSES
    from compressor.recipe_runner import sites_for

    if recipe is not None:
        specs = [(spec.name, spec) for spec in recipe.passes()]
    else:
        from compressor.recipe import PassSpec

        specs = [(name, PassSpec(stage="", name=name, params=cls.defaults(), plan=None, line=None))
                 for name, cls in sorted(PASSES.items())]
    described = {}
    for name, spec in specs:
        rewriter = PASSES[name]()
        candidates = rewriter.candidate_sites(loaded.adapter)
        try:
            chosen = [site.name for site in sites_for(rewriter, spec, loaded)]
            problem = None
        except RecipeError as error:
            if recipe is not None:
                raise
            chosen, problem = [], str(error)
        described[name] = {"sites": chosen, "candidates": [site.name for site in candidates]}
        if problem:
            described[name]["note"] = problem
    return described


class InspectCommand(Command):
    name = "inspect"
    help = "show a model's family, params, FLOPs and the sites each pass would rewrite"

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        add_source_arguments(parser)
        add_recipe_arguments(parser, required=False)
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def run(self, args: argparse.Namespace) -> int:
        from compressor.evaluate.cost import count_flops, count_parameters
        from compressor.pipeline import resolve_recipe
        from compressor.sources import load_source

        recipe = resolve_recipe(args.recipe, args.overrides) if args.recipe else None
        loaded = load_source(args.source, revision=args.revision, trust_remote_code=args.trust_remote_code)
        adapter = loaded.adapter
        example = adapter.example_inputs(size=parse_input_size(args.input_size))
        info = {
            "source": args.source,
            "family": adapter.family,
            "architecture": type(loaded.model).__name__,
            "task": adapter.task,
            "input": adapter.describe_input(example),
            "params": count_parameters(loaded.model),
            "flops": count_flops(loaded.model, example),
            "token_layout": dataclasses.asdict(adapter.token_layout(example)),
            "compressed": loaded.compression is not None,
            "passes": describe_sites(loaded, recipe),
        }
        if args.json:
            print(strict_json.dumps(info, indent=2))
            return 0
        print(f"{info['source']}: {adapter.display_name}, {info['architecture']} ({info['task']})")
        print(f"params {info['params'] / 1e6:.3f} M, FLOPs {info['flops'] / 1e9:.3f} G on {info['input']}")
        layout = {k: v for k, v in info["token_layout"].items() if v not in (None, (), [], False)}
        if layout:
            print("tokens: " + ", ".join(f"{k}={v}" for k, v in layout.items()))
        for name, entry in info["passes"].items():
            print(f"\n{name}: {len(entry['sites'])} of {len(entry['candidates'])} candidate sites")
            for site in entry["sites"]:
                print(f"  {site}")
            if entry.get("note"):
                print(f"  ({entry['note']})")
        return 0
