"""Token reduction speed on full-size architectures (random weights: cost does not depend on them).

In one run, for each model: executed FLOPs (torch's FLOP counter) and throughput of the original and the
token-reduced model, timed interleaved (original, reduced, original, ...) so both see the same machine drift.

- `vit`: timm ViT-B/16 at 224, batch 8, ToMe r = 13 (ToMe's own measurement: FLOPs × 0.616, 1.65× throughput).
- `swin-hf`, `swin-timm`: Swin-T at 224 (transformers' SwinConfig() = microsoft/swin-tiny-patch4-window7-224, and
  timm swin_tiny_patch4_window7_224), batch 8, `token_clip` keep_ratio 0.5: every window keeps 25 of its 49
  tokens in every block after the first.
- `detr`: DETR-R50 (facebook/detr-resnet-50's architecture) at 800×1066, sparse encoder updates with ρ = 0.5
  (`token_clip` after the first encoder layer, clipped tokens pass the other five unchanged); the encoder alone is
  timed and counted, on the inputs it receives in a full forward.

    python benchmarks/token_speed.py                 # 1 thread (the machine is shared), writes JSON
    python benchmarks/token_speed.py --models vit --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from compressor.evaluate.cost import count_flops, flop_counter  # noqa: E402
from compressor.models import adapter_for  # noqa: E402
from compressor.recipe_runner import apply_recipe  # noqa: E402
from compressor.recipe import Recipe  # noqa: E402
from compressor.sources import LoadedModel  # noqa: E402

from common import HERE  # noqa: E402


def reduced_copy(model: torch.nn.Module, passes: dict) -> torch.nn.Module:
    """A deep copy of `model` with the recipe `passes` applied (the same rewrite `compress` runs)."""
    import copy

    copied = copy.deepcopy(model)
    loaded = LoadedModel(copied, adapter_for(copied), "in-memory", "in-memory")
    apply_recipe(loaded, Recipe.from_dict({"compress_stage": passes}), seed=0, progress=False)
    return copied.eval()


@torch.no_grad()
def interleaved_seconds(models: list, run, runs: int, warmup: int) -> list[float]:
    """Median seconds of `run(model)` per model, runs interleaved."""
    for model in models:
        for _ in range(warmup):
            run(model)
    times = [[] for _ in models]
    for _ in range(runs):
        for model, record in zip(models, times):
            start = time.perf_counter()
            run(model)
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def timm_vit_case(runs: int) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    reduced = reduced_copy(model, {"token_merge": {"r": 13}})
    inputs = {"x": torch.randn(8, 3, 224, 224)}
    flops = [count_flops(m, inputs) for m in (model, reduced)]
    seconds = interleaved_seconds([model, reduced], lambda m: m(**inputs), runs, warmup=1)
    return {"model": "timm vit_base_patch16_224 (random weights)", "input": "8×3×224×224", "pass": "token_merge r=13",
            "what_is_timed": "whole model forward", "flops": flops, "seconds": seconds,
            "flops_ratio": flops[1] / flops[0], "throughput_ratio": seconds[0] / seconds[1]}


def swin_case(model: torch.nn.Module, name: str, inputs: dict, runs: int) -> dict:
    reduced = reduced_copy(model, {"token_clip": {"keep_ratio": 0.5}})
    flops = [count_flops(m, inputs) for m in (model, reduced)]
    seconds = interleaved_seconds([model, reduced], lambda m: m(**inputs), runs, warmup=1)
    return {"model": f"{name} (random weights)", "input": "8×3×224×224", "pass": "token_clip keep_ratio=0.5",
            "what_is_timed": "whole model forward", "flops": flops, "seconds": seconds,
            "flops_ratio": flops[1] / flops[0], "throughput_ratio": seconds[0] / seconds[1]}


def hf_swin_case(runs: int) -> dict:
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig()).eval()
    return swin_case(model, "HF Swin-T", {"pixel_values": torch.randn(8, 3, 224, 224)}, runs)


def timm_swin_case(runs: int) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    return swin_case(model, "timm swin_tiny_patch4_window7_224", {"x": torch.randn(8, 3, 224, 224)}, runs)


def module_inputs(model: torch.nn.Module, module: torch.nn.Module, inputs: dict) -> tuple[tuple, dict]:
    """The (args, kwargs) `module` receives during a forward of `model` on `inputs`."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return seen[0]


@torch.no_grad()
def call_flops(run) -> int:
    counter = flop_counter()
    with counter:
        run()
    return int(counter.get_total_flops())


def detr_case(runs: int) -> dict:
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False)).eval()
    reduced = reduced_copy(model, {"token_clip": {"keep_ratio": 0.5, "fuse": False}})
    inputs = {"pixel_values": torch.randn(1, 3, 800, 1066), "pixel_mask": torch.ones(1, 800, 1066, dtype=torch.long)}
    args, kwargs = module_inputs(model, model.model.encoder, inputs)
    encoders = [model.model.encoder, reduced.model.encoder]
    flops = [call_flops(lambda e=e: e(*args, **kwargs)) for e in encoders]
    seconds = interleaved_seconds(encoders, lambda e: e(*args, **kwargs), runs, warmup=1)
    tokens = kwargs.get("inputs_embeds", args[0] if args else None).shape[1]
    return {"model": "DETR-R50 (random weights)", "input": f"1×3×800×1066 ({tokens} encoder tokens)",
            "pass": "token_clip keep_ratio=0.5 after encoder layer 0, fuse=false", "what_is_timed": "encoder",
            "flops": flops, "seconds": seconds, "flops_ratio": flops[1] / flops[0],
            "throughput_ratio": seconds[0] / seconds[1]}


CASES = {"vit": timm_vit_case, "swin-hf": hf_swin_case, "swin-timm": timm_swin_case, "detr": detr_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "token_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        result = CASES[name](args.runs)
        result.update(threads=args.threads, runs=args.runs)
        results.append(result)
        print(f"{result['model']}, {result['pass']}, {result['input']}: FLOPs ×{result['flops_ratio']:.3f}, "
              f"{result['what_is_timed']} {result['seconds'][0]:.3f} s → {result['seconds'][1]:.3f} s "
              f"({result['throughput_ratio']:.2f}× throughput)", flush=True)
    previous = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    merged = {entry["model"]: entry for entry in previous + results}  # a partial run keeps the other models
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": list(merged.values())}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
