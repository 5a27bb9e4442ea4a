"""`cli.py sweep SOURCE --recipe R --grid act.rounds=8,16,32 --data DATA`: metric against FLOPs over a grid."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from compressor import strict_json
from compressor.atomic_dir import atomic_directory, check_output_path
from compressor.checked_numbers import check_seed
from compressor.commands.base import (Command, add_data_arguments, add_recipe_arguments, add_source_arguments,
                                      check_positive, load_data)
from compressor.errors import CompressorError


class SweepCommand(Command):
    name = "sweep"
    help = "compress at every setting of a grid, evaluate each, and write a table and a plot of metric vs FLOPs"

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        add_source_arguments(parser, input_size=False)
        add_recipe_arguments(parser, required=True)
        parser.add_argument("--grid", action="append", required=True, metavar="PASS.PARAM=V1,V2,...",
                            help="values to sweep (repeatable: every combination runs)")
        add_data_arguments(parser)
        parser.add_argument("--calib", metavar="DATA",
                            help="calibration data for the compressions and the image FLOPs are measured on "
                                 "(default: --data)")
        parser.add_argument("--calib-samples", type=int, default=8, metavar="N")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", metavar="DIR", help="output directory (default: <model>-sweep)")
        parser.add_argument("--overwrite", action="store_true")
        parser.add_argument("--quiet", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from compressor.sweep import format_sweep, parse_grid, plot_sweep, run_sweep

        check_seed(args.seed)
        check_positive(limit=args.limit, batch_size=args.batch_size, calib_samples=args.calib_samples)
        out = Path(args.out or re.sub(r"[^\w.-]+", "-", Path(args.source.rstrip("/")).stem) + "-sweep")
        check_output_path(out, args.overwrite, sources=[args.source])
        grid = parse_grid(args.grid)
        if args.trust_remote_code or args.revision:
            raise CompressorError("sweep works on local or public sources only; drop --revision/--trust-remote-code")
        data = load_data(args)
        sweep = run_sweep(args.source, args.recipe, grid, data, overrides=args.overrides,
                          calib=args.calib or args.data, calib_samples=args.calib_samples,
                          batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
        table = format_sweep(sweep)
        with atomic_directory(out, overwrite=args.overwrite, sources=[args.source]) as staging:
            (staging / "sweep.json").write_text(strict_json.dumps(sweep, indent=2) + "\n")
            (staging / "sweep.md").write_text(table + "\n")
            plot_sweep(sweep, staging / "sweep.png")
        print(table)
        print(f"\nwrote {out}/ (sweep.json, sweep.md, sweep.png)")
        return 0
