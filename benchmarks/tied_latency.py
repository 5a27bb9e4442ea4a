"""Inference latency of a tied model against its original: the real CIFAR-10 ResNet-20, tied per block.

`resnet-pe` with `share=block`, `share_middle=false`: in every block whose channels do not change, conv2 borrows
the adjoint of conv1 (channels swapped, 3×3 kernel flipped). Batch 32 at 32×32, one thread; timed interleaved
(original, tied, tied rebuilding, original, ...) so all see the same machine drift: the tied model as it runs (the
derived weight built once and reused, `compressor.ops.tied_layers`) and the same model rebuilding the derived weight
at every forward (as before the reuse).

    python benchmarks/tied_latency.py            # ≈ 2 min; writes benchmarks/results/tied_latency.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import compressor  # noqa: E402
from compressor.evaluate.cost import interleaved_latency_ms  # noqa: E402
from compressor.ops.tied_layers import TiedConv2d, TiedLinear  # noqa: E402
from compressor.sources import load_source  # noqa: E402

HERE = Path(__file__).resolve().parent
RESNET20 = HERE.parent.parent / "shared" / "data" / "resnet-cifar10" / "resnet20.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--share", choices=("block", "stage"), default="block")
    parser.add_argument("--out", default=str(HERE / "results" / "tied_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    original = load_source(str(RESNET20)).model.eval()
    result = compressor.compress(str(RESNET20), "resnet-pe", progress=False, latency_runs=1,
                                 overrides=[f"tied_weights.share={args.share}", "tied_weights.share_middle=false",
                                            "tied_weights.init=closed_form"])
    tied = result.model.eval()
    rebuilding = copy.deepcopy(tied)
    for layer in rebuilding.modules():
        if isinstance(layer, (TiedConv2d, TiedLinear)):
            layer.source.derived = lambda _layer, _sources, build: build()
    borrowed = [layer.source for layer in tied.modules() if isinstance(layer, (TiedConv2d, TiedLinear))]
    start = time.perf_counter()
    for _ in range(100):
        for source in borrowed:
            source()
    build_ms = (time.perf_counter() - start) * 10.0  # per forward: every derived weight built once
    inputs = {"pixel_values": torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    times = interleaved_latency_ms([original, tied, rebuilding], inputs, runs=args.runs, warmup=3)
    original_ms, tied_ms, rebuilding_ms = (round(t, 2) for t in times)
    figures = {"model": "resnet20", "recipe": f"resnet-pe share={args.share} share_middle=false", "batch": args.batch,
               "threads": 1, "runs": args.runs, "original_ms": original_ms, "tied_ms": tied_ms,
               "tied_rebuilding_ms": rebuilding_ms, "tied_ratio": round(times[1] / times[0], 3),
               "tied_rebuilding_ratio": round(times[2] / times[0], 3), "tied_layers": len(borrowed),
               "derived_weights_build_ms_per_forward": round(build_ms, 3)}
    print(json.dumps(figures))
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
