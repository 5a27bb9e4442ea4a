"""`cli.py distill STUDENT --data DATA [--teacher SOURCE]`: train a compressed model to match its original."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from compressor import strict_json
from compressor.commands.base import Command, add_data_arguments, check_positive, load_data
from compressor.commands.push import add_push_to_arguments, check_push_to, push_if_asked
from compressor.errors import CompressorError


class DistillCommand(Command):
    name = "distill"
    help = "recover a compressed model's accuracy by distillation from the original (accelerate; resumable)"

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        from compressor.distill.settings import DISTILL, DISTILL_PARAMS, TRAINING_PARAMS
        from compressor.settings_schema import add_setting_options

        parser.add_argument("student", metavar="STUDENT", help="a directory written by compress")
        parser.add_argument("--teacher", metavar="SOURCE",
                            help="the teacher (default: the model STUDENT was compressed from)")
        add_data_arguments(parser, batch_size=None)
        parser.add_argument("--eval-data", metavar="DATA",
                            help="data to pick the best checkpoint on: by its task metric, or for a model without "
                                 "logits or unlabelled text (.txt paragraphs) by embedding cosine to the teacher")
        parser.add_argument("--out", metavar="DIR", required=True,
                            help="where checkpoints, log.jsonl, distill.json and best/ go")
        parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
        # the recipe's distill settings, checked by the same schema: what a recipe refuses, these options refuse
        add_setting_options(parser, DISTILL, {"eval_limit": DISTILL_PARAMS["eval_limit"], **TRAINING_PARAMS})
        parser.add_argument("--quiet", action="store_true")
        add_push_to_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from compressor.distill.settings import DistillConfig
        from compressor.distill.trainer import Distiller
        from compressor.sources import load_source

        config = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
        check_positive(limit=args.limit)
        check_push_to(args)
        out = Path(args.out)
        if out.exists() and not args.resume and any(out.iterdir()):
            raise CompressorError(f"{out} is not empty; pass --resume to continue that run or choose another --out")
        student = load_source(args.student)
        if student.compression is None:
            raise CompressorError(f"{args.student} is not a directory written by compress; compress the model "
                                  "first, then distill the output")
        teacher = load_source(args.teacher or student.base_model)
        data = load_data(args)
        eval_data = None
        if args.eval_data:
            from compressor.data.loading import load_labelled

            eval_data = load_labelled(args.eval_data, box_format=args.box_format).subset(args.eval_limit)
        summary = Distiller(student, teacher, data, out, config, eval_data, progress=not args.quiet).run(args.resume)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate launch, one process publishes
            push_if_asked(args, out / "best", stdout_is_data=True)
        print(strict_json.dumps(summary, indent=2))
        return 0
