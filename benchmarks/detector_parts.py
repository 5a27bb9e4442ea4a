"""Where each detector recipe cuts (issue 14): params and FLOPs per part (backbone / encoder / decoder / heads),
before and after, for the full-size detector architectures under `act`, token clipping and `detr-max`.

Four architectures, random weights (right for cost, silent about accuracy), built from their configs and saved with
`save_pretrained`: DETR-R50 and DETR-DC5 (facebook/detr-resnet-50[-dc5]: timm ResNet-50), Conditional DETR-R50
(microsoft/conditional-detr-resnet-50) and a DETR with a Swin-T AutoBackbone. Each recipe runs through
`compressor.compress` exactly as `cli.py compress DIR --recipe R --calib IMAGE` does (the COCO fixture image makes the
measured input a real 800×1066 image and feeds detr-max's Taylor importance); the per-part table is the report's own
(`report.json` "parts", what the CLI table and the model card show). Token clipping is `token-clip` (the encoder) on
the ResNet detectors and `detr-swin-clip` (Swin stages 3 and 4 of the backbone) on the Swin one; `detr-max` prunes a
ResNet backbone and is not run on the Swin one. The distill step of `detr-max` is not run (no training data): the
figures are those of the compressed model before distillation, which distillation does not change.

    python benchmarks/detector_parts.py [--architectures ...] [--recipes ...] [--latency-runs N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import compressor  # noqa: E402
from compressor.model_card import markdown_table  # noqa: E402
from compressor.report import PART_HEADER, part_rows  # noqa: E402
from compressor.strict_json import dumps  # noqa: E402

from common import HERE  # noqa: E402
from detr_r50_act import IMAGE, build_checkpoint  # noqa: E402
from swin_detr_clip import swin_tiny_detr  # noqa: E402

ARCHITECTURES = ("detr-r50", "detr-r50-dc5", "conditional-detr-r50", "swin-t-detr")
RECIPES = ("act", "token-clip", "detr-max")


def build(architecture: str, directory: Path) -> Path:
    """The architecture's random-weight checkpoint in `directory` (built once, reused by later runs)."""
    if (directory / "config.json").is_file():
        return directory
    if architecture == "swin-t-detr":
        from transformers import DetrImageProcessor

        swin_tiny_detr().save_pretrained(directory)
        DetrImageProcessor().save_pretrained(directory)
    else:
        build_checkpoint(directory, dc5=architecture.endswith("-dc5"), conditional=architecture.startswith("cond"))
    return directory


def recipe_for(architecture: str, recipe: str) -> str | None:
    """The built-in recipe that does `recipe` on `architecture`, or None where it does not apply."""
    if architecture == "swin-t-detr":
        return {"act": "act", "token-clip": "detr-swin-clip"}.get(recipe)
    return recipe


def run(architecture: str, recipe: str, checkpoint: Path, latency_runs: int) -> dict:
    start = time.perf_counter()
    result = compressor.compress(checkpoint, recipe, calib=str(IMAGE), progress=False, latency_runs=latency_runs)
    report = result.report
    entry = {"architecture": architecture, "recipe": recipe, "input": report["input"],
             "compress_seconds": round(time.perf_counter() - start, 1),
             **{key: report[key] for key in ("params", "flops", "latency_ms", "parts")}}
    flops = report["flops"]["after"] / report["flops"]["before"]
    latency = report["latency_ms"]["after"] / report["latency_ms"]["before"]
    table = markdown_table(part_rows(report), PART_HEADER)
    print(f"\n### {architecture}, `{recipe}`: FLOPs ×{flops:.3f}, latency ×{latency:.3f} "
          f"({report['input']}, {entry['compress_seconds']} s)\n\n{table}", flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--latency-runs", type=int, default=1, help="interleaved runs per latency (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="where the checkpoints are built (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "detector_parts.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="detector-parts-"))
    results = []
    for architecture in args.architectures:
        checkpoint = build(architecture, workdir / architecture)
        for recipe in args.recipes:
            name = recipe_for(architecture, recipe)
            if name is None:
                print(f"\n### {architecture}, {recipe}: not applicable", flush=True)
                continue
            results.append(run(architecture, name, checkpoint, args.latency_runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps({"threads": args.threads, "results": results}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
