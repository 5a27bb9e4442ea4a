"""`cli.py evaluate SOURCE --data DATA`: top-1/top-5 or COCO box AP, and fidelity to `--reference`."""

from __future__ import annotations

import argparse

from compressor import strict_json
from compressor.commands.base import (Command, add_data_arguments, add_source_arguments, check_file_output,
                                      check_positive, load_data)


class EvaluateCommand(Command):
    name = "evaluate"
    help = "measure a model on labelled data (top-1/top-5, COCO AP) and its fidelity to a reference model"

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        add_source_arguments(parser, input_size=False)
        add_data_arguments(parser)
        parser.add_argument("--reference", metavar="SOURCE",
                            help="also measure fidelity to this model (logit KL, output cosine, box L2), e.g. the "
                                 "original of a compressed model")
        parser.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
        parser.add_argument("--no-card", action="store_true",
                            help="do not record the result in a compressed model's report.json and model card")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from compressor.atomic_dir import write_text_atomically
        from compressor.evaluate.runner import evaluate, format_evaluation
        from compressor.sources import load_source

        check_positive(limit=args.limit, batch_size=args.batch_size)
        check_file_output(args.json)
        data = load_data(args)
        loaded = load_source(args.source, revision=args.revision, trust_remote_code=args.trust_remote_code)
        reference = load_source(args.reference, trust_remote_code=args.trust_remote_code) if args.reference else None
        result = evaluate(loaded, data, reference=reference, batch_size=args.batch_size, progress=not args.quiet)
        print(format_evaluation(result))
        if args.json:
            write_text_atomically(args.json, strict_json.dumps(result, indent=2) + "\n")
        if loaded.compression is not None and loaded.directory is not None and not args.no_card:
            from compressor.evaluate.record import record_evaluation

            print(f"recorded in {record_evaluation(loaded.directory, result)}")
        return 0
