"""`cli.py compress SOURCE --recipe R`: rewrite a model, measure it, and write the output directory."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from compressor import strict_json
from compressor.atomic_dir import check_output_path
from compressor.checked_numbers import check_seed
from compressor.commands.base import (Command, add_recipe_arguments, add_source_arguments, check_positive,
                                      parse_input_size)
from compressor.commands.push import add_push_to_arguments, check_push_to, push_if_asked
from compressor.errors import CompressorError


def default_output_name(source: str, recipe: str) -> str:
    """`facebook/detr-resnet-50` + `act` → `detr-resnet-50-act`."""
    model = Path(source.rstrip("/")).name.removeprefix("hf-hub:") or "model"
    return re.sub(r"[^\w.-]+", "-", f"{model}-{Path(recipe).stem}")


class CompressCommand(Command):
    name = "compress"
    help = "apply a recipe to a model and write the compressed model, its recipe, report and card"

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        add_source_arguments(parser)
        add_recipe_arguments(parser, required=True)
        parser.add_argument("--out", metavar="DIR", help="output directory (default: <model>-<recipe>)")
        parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
        parser.add_argument("--calib", metavar="DATA",
                            help="calibration data: a parquet/json file, an image folder, a .txt of paragraphs, "
                                 "or a Hub dataset id")
        parser.add_argument("--calib-samples", type=int, default=64, metavar="N",
                            help="calibration examples to use (default 64)")
        parser.add_argument("--seed", type=int, default=0, help="seed for hashing and sampling (default 0)")
        parser.add_argument("--latency-runs", type=int, default=5, metavar="N",
                            help="timed forwards per model for the latency median (default 5)")
        parser.add_argument("--data", metavar="DATA",
                            help="training data for the recipe's distill step (overrides its `data`)")
        parser.add_argument("--eval-data", metavar="DATA",
                            help="labelled data (as for `evaluate --data`) to measure the task metric of the original "
                                 "and of the compressed model on (top-1 for classifiers, COCO AP for detectors, "
                                 "embedding cosine for bare encoders; in the table, report.json and the card), "
                                 "and to keep the best student of the recipe's distill step by")
        parser.add_argument("--eval-limit", type=int, metavar="N",
                            help="measure the before/after metric on N examples of --eval-data (a seeded random "
                                 "subset, as `evaluate --limit`; default: the distill step's eval_limit, else all)")
        parser.add_argument("--no-distill", action="store_true",
                            help="skip the recipe's distill step: write the compressed model untrained")
        parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
        parser.add_argument("--quiet", action="store_true", help="no progress messages")
        add_push_to_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from compressor.distill.recipe_stage import check_distill_data, resolve_distill_step, run_distill_step
        from compressor.pipeline import compress, resolve_recipe
        from compressor.report import format_table
        from compressor.serialization import save

        out = Path(args.out or default_output_name(args.source, args.recipe))
        check_seed(args.seed)
        check_output_path(out, args.overwrite, sources=[args.source])
        check_push_to(args)
        if args.calib_samples < 1 or args.latency_runs < 1:
            raise CompressorError("--calib-samples and --latency-runs must be at least 1")
        check_positive(eval_limit=args.eval_limit)
        recipe = resolve_recipe(args.recipe, args.overrides)
        distills = recipe.distill() is not None
        recipe = resolve_distill_step(recipe, out, data=args.data, eval_data=args.eval_data if distills else None,
                                      skip=args.no_distill, overwrite=args.overwrite)
        checked_data = check_distill_data(recipe)  # headers read once, before the passes
        eval_limit = args.eval_limit
        if eval_limit is None and recipe.distill() is not None:
            eval_limit = recipe.distill().params.get("eval_limit")
        result = compress(args.source, recipe, calib=args.calib,
                          calib_samples=args.calib_samples, seed=args.seed,
                          input_size=parse_input_size(args.input_size), latency_runs=args.latency_runs,
                          progress=not args.quiet, revision=args.revision,
                          trust_remote_code=args.trust_remote_code, eval_data=args.eval_data,
                          eval_limit=eval_limit)
        if result.recipe.distill() is not None:
            result.report["distillation"] = run_distill_step(
                result, out, progress=not args.quiet, overwrite=args.overwrite, revision=args.revision,
                trust_remote_code=args.trust_remote_code, checked_data=checked_data)
        else:
            save(result, out, overwrite=args.overwrite)
        if args.json:
            print(strict_json.dumps(result.report, indent=2))
        else:
            print(format_table(result.report))
            print(f"\nwrote {out}/ (config.json, model.safetensors, recipe.yaml, report.json, README.md)")
        push_if_asked(args, out)
        return 0
