"""Two-stage token clipping in the Swin-T backbone of a DETR, on the full-size architecture at 800×1066.

The detector is `DetrConfig(use_timm_backbone=False, backbone_config=SwinConfig(<swin-tiny>, out_features=
["stage4"]))` with random weights (right for cost, silent about accuracy). Variants, each the same rewrite
`compress` runs (`token_clip` with `targets`):

- `backbone`: the blocks of Swin stages 3 and 4 (`encoder.layers.2` and `.3`: 8 of the 12 blocks) keep
  `keep_ratio` of every window; the last block of stage 2 scores the tokens; every block puts its tokens back, so
  patch merging and the feature map handed to the DETR encoder are complete;
- `encoder`: today's DETR clipping (after the first encoder layer, clipped tokens pass the other five unchanged);
- `both`: the two together, each stack with its own reducer.

Executed FLOPs (torch's FlopCounterMode) per part of the model (backbone / encoder / decoder / the rest) for
keep ratios 0.7, 0.5 and 0.3, and whole-model latency interleaved (original, variants, original, ...) at keep 0.5,
with 1 and 2 threads.

    python benchmarks/swin_detr_clip.py                      # writes benchmarks/results/swin_detr_clip.json
    python benchmarks/swin_detr_clip.py --keep-ratios 0.5 --threads 1 2   # the latency only; other entries kept
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from compressor.evaluate.cost import flop_counter, interleaved_latency_ms  # noqa: E402

from common import HERE  # noqa: E402
from token_speed import reduced_copy  # noqa: E402

#: the blocks of Swin stages 3 and 4 inside the DETR backbone
TWO_STAGES = r"re:model\.backbone\.model\.swin\.encoder\.layers\.[23]\."
#: where each part of a DetrForObjectDetection lives; everything else (input projection, heads) is "rest"
PARTS = {"backbone": "model.backbone", "encoder": "model.encoder", "decoder": "model.decoder"}
KEEP_RATIOS = (0.7, 0.5, 0.3)


def swin_tiny_detr() -> torch.nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection, SwinConfig

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False)
    return DetrForObjectDetection(config).eval()


def variants(keep: float) -> dict[str, dict]:
    """The `compress_stage` of each variant at `keep`."""
    backbone = {"targets": [TWO_STAGES], "keep_ratio": keep}
    encoder = {"keep_ratio": keep, "fuse": False}
    return {"backbone": {"token_clip": backbone},
            "encoder": {"token_clip": encoder},
            "both": {"token_clip": {**encoder, "targets": [TWO_STAGES, "auto"]}}}


@torch.no_grad()
def flops_by_part(model: torch.nn.Module, inputs: dict) -> dict[str, int]:
    counter = flop_counter()
    with counter:
        model(**inputs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    total = int(sum(counts["Global"].values()))
    parts = {part: int(sum(counts.get(f"{root}.{path}", {}).values())) for part, path in PARTS.items()}
    return {**parts, "rest": total - sum(parts.values()), "total": total}


@torch.no_grad()
def outputs(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    result = model(**inputs)
    return torch.cat([result.logits.flatten(), result.pred_boxes.flatten()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=list(KEEP_RATIOS),
                        help="FLOPs are counted at each; latency is timed at 0.5 (when listed)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "swin_detr_clip.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = swin_tiny_detr()
    inputs = {"pixel_values": torch.randn(1, 3, 800, 1066, generator=torch.Generator().manual_seed(0)),
              "pixel_mask": torch.ones(1, 800, 1066, dtype=torch.long)}
    original = flops_by_part(model, inputs)
    reference = outputs(model, inputs)
    print(f"original: {original['total'] / 1e9:.1f} GFLOPs, backbone {original['backbone'] / 1e9:.1f}", flush=True)
    results = {"model": "DETR, HF Swin-T backbone (swin-tiny config, out_features [stage4]), random weights",
               "input": "1×3×800×1066", "two_stage_targets": TWO_STAGES, "flops": {"original": original},
               "latency_ms": {}}
    timed = {}
    for keep in args.keep_ratios:
        for name, passes in variants(keep).items():
            reduced = reduced_copy(model, passes)
            counted = flops_by_part(reduced, inputs)
            cosine = torch.nn.functional.cosine_similarity(outputs(reduced, inputs), reference, dim=0).item()
            label = f"{name} keep {keep}"
            results["flops"][label] = {**counted, "output_cosine_to_original": cosine}
            print(f"{label}: total ×{counted['total'] / original['total']:.3f}, backbone "
                  f"×{counted['backbone'] / original['backbone']:.3f}, encoder "
                  f"×{counted['encoder'] / original['encoder']:.3f} (output cosine {cosine:.4f})", flush=True)
            if keep == 0.5:
                timed[name] = reduced
    models = [model, *timed.values()]
    for threads in args.threads:
        torch.set_num_threads(threads)
        milliseconds = interleaved_latency_ms(models, inputs, runs=args.runs, warmup=1)
        results["latency_ms"][f"{threads} thread(s)"] = dict(zip(["original", *timed], milliseconds))
        print(f"{threads} thread(s): original {milliseconds[0]:.0f} ms; " + ", ".join(
            f"{name} keep 0.5 {ms:.0f} ms (×{ms / milliseconds[0]:.3f})" for name, ms in zip(timed, milliseconds[1:])),
            flush=True)
    results.update(runs=args.runs, machine="2 shared cores, loaded by other jobs and a niced training")
    if args.out.exists():  # a partial run keeps the entries it did not measure
        previous = json.loads(args.out.read_text())
        results["flops"] = {**previous.get("flops", {}), **results["flops"]}
        results["latency_ms"] = {**previous.get("latency_ms", {}), **results["latency_ms"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
