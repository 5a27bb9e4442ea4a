"""Token reduction fidelity on real weights: accuracy against executed FLOPs for several schedules of both passes.

- the HF ViT trained on CIFAR-10 (`../shared/data/vit-cifar10`, 6 blocks, 65 tokens): top-1 on 2,000
  class-balanced images of `cifar10/test.parquet`;
- all-MiniLM-L6-v2: mean cosine of its mean-pooled sentence embeddings to the original model's on 24 real
  256-token passages.

Schedules: ToMe (`token_merge`, r pairs per block, proportional attention); plain bipartite merging (the same
matching without proportional attention: the baseline ToMe must beat at equal FLOPs); EViT clipping at 1/4, 1/2 and
3/4 of the depth with the clipped tokens fused, or dropped, or fused and ranked by value norms instead of the class
token's attention; one early clip (block 1 only); both passes on one model
(ToMe in blocks 0-2, one clip keeping half the tokens after block 3). FLOPs are counted by
torch's FLOP counter on the first evaluation batch, as a ratio to the original model's. Every setting goes through
`compressor.compress`, as a user would run it.

    python benchmarks/token_fidelity.py             # ≈ 35 min; writes JSON and docs/token_fidelity.png
    python benchmarks/token_fidelity.py --quick
    python benchmarks/token_fidelity.py --schedules "ToMe early + clip later"   # one schedule; keeps the others
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import compressor  # noqa: E402
from compressor.recipe import Recipe  # noqa: E402
from compressor.evaluate.cost import count_flops  # noqa: E402
from compressor.evaluate.fidelity import per_example_cosine, primary_outputs  # noqa: E402
from compressor.sources import load_source  # noqa: E402

from common import HERE, VIT_CIFAR10, cifar_batches, minilm_batches, minilm_source, plot_panels  # noqa: E402

#: schedule name -> (recipe, fixed overrides, the swept parameter, its values for the ViT, for MiniLM)
SCHEDULES = {
    "ToMe (proportional attention)": ("tome", [], "token_merge.r", [2, 4, 6, 8, 10, 12, 14, 16],
                                      [4, 8, 16, 24, 32, 48]),
    "plain bipartite merging": ("tome", ["token_merge.proportional_attention=false"], "token_merge.r",
                                [2, 4, 6, 8, 10, 12, 14, 16], [4, 8, 16, 24, 32, 48]),
    "EViT clip, fused (blocks at 1/4, 1/2, 3/4)": ("token-clip", [], "token_clip.keep_ratio",
                                                  [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0.9, 0.8, 0.7, 0.5, 0.3]),
    "EViT clip, fused, value-norm ranking": ("token-clip", ["token_clip.importance=value_norm"],
                                             "token_clip.keep_ratio", [0.9, 0.7, 0.5, 0.3], [0.9, 0.7, 0.5, 0.3]),
    "EViT clip, dropped": ("token-clip", ["token_clip.fuse=false"], "token_clip.keep_ratio",
                           [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0.9, 0.7, 0.5]),
    "one clip after block 1": ("token-clip", ["token_clip.targets=['re:.*layers?\\.1$']"], "token_clip.keep_ratio",
                               [0.8, 0.6, 0.4, 0.3, 0.2], [0.8, 0.6, 0.4]),
    "ToMe early + clip later": (Recipe.from_dict({"description": "ToMe in blocks 0-2, clipping after block 3",
                                                  "compress_stage": {
                                                      "token_merge": {"targets": ["re:.*layers?\\.[0-2]$"]},
                                                      "token_clip": {"targets": ["re:.*layers?\\.3$"],
                                                                     "keep_ratio": 0.5}}}),
                                [], "token_merge.r", [4, 8, 12, 16], [8, 16, 32]),
}


class Task:
    def __init__(self, name: str, source: Path, batches: list[dict], labels: torch.Tensor | None, metric: str):
        self.name, self.source, self.batches, self.labels, self.metric = name, source, batches, labels, metric
        exact = load_source(source)
        self.adapter = exact.adapter
        self.reference = primary_outputs(exact.model, exact.adapter, batches)
        self.flops = count_flops(exact.model, batches[0])
        self.exact = self.score(exact.model)

    def score(self, model) -> float:
        outputs = primary_outputs(model, self.adapter, self.batches)
        if self.metric == "top1":
            return float((torch.cat(outputs).argmax(dim=1) == self.labels).float().mean())
        return float(per_example_cosine(self.reference, outputs).mean())

    def run(self, recipe: str, overrides: list[str]) -> dict:
        start = time.perf_counter()
        result = compressor.compress(self.source, recipe, overrides=overrides, progress=False, latency_runs=1)
        summary = result.report["passes"][0]["summary"]
        return {"overrides": overrides, self.metric: round(self.score(result.model), 4),
                "flops_ratio": round(count_flops(result.model, self.batches[0]) / self.flops, 4),
                "tokens_per_layer": summary["tokens per layer"], "seconds": round(time.perf_counter() - start, 1)}


def make_task(name: str, quick: bool) -> Task:
    if name == "vit":
        batches, labels = cifar_batches(20 if quick else 200)
        return Task("vit-cifar10", VIT_CIFAR10, batches, labels, "top1")
    return Task("all-MiniLM-L6-v2", minilm_source(), minilm_batches(8 if quick else 24), None, "cosine")


def benchmark(task: Task, quick: bool, schedules: list[str]) -> dict:
    print(f"\n{task.name}: original {task.metric} {task.exact:.4f}", flush=True)
    curves = {}
    for label, (recipe, fixed, swept, vit_values, minilm_values) in SCHEDULES.items():
        if label not in schedules:
            continue
        values = vit_values if task.metric == "top1" else minilm_values
        points = []
        for value in values[::3] if quick else values:
            entry = task.run(recipe, fixed + [f"{swept}={value}"])
            entry["setting"] = f"{swept.split('.')[1]}={value}"
            points.append(entry)
            print(f"  {label:45s} {entry['setting']:16s} FLOPs ×{entry['flops_ratio']:.3f}  "
                  f"{task.metric} {entry[task.metric]:.4f}   tokens {entry['tokens_per_layer']}", flush=True)
        curves[label] = points
    return {"model": task.name, "metric": task.metric, "original": round(task.exact, 4), "curves": curves,
            "evaluation_examples": sum(len(next(iter(b.values()))) for b in task.batches)}


def compare_merging(result: dict) -> list[dict]:
    """ToMe against plain bipartite merging at the same r (the same executed FLOPs)."""
    metric = result["metric"]
    tome, plain = (result["curves"][name] for name in ("ToMe (proportional attention)", "plain bipartite merging"))
    return [{"setting": a["setting"], "flops_ratio": a["flops_ratio"], "tome": a[metric], "plain": b[metric]}
            for a, b in zip(tome, plain)]


def draw_curves(axis, result: dict) -> None:
    for label, points in result["curves"].items():
        xy = sorted((p["flops_ratio"], p[result["metric"]]) for p in points)
        axis.plot(*zip(*xy), marker="o", ms=4, lw=1.2, label=label)


def plot(results: list[dict], path: Path) -> None:
    plot_panels(results, draw_curves, path, xlabel="executed FLOPs / original (torch FLOP counter)",
                reference_key="original", reference_label="original model",
                title_suffix=": token reduction, no retraining")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit", "minilm"], choices=["vit", "minilm"])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (fewer examples and settings)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "token_fidelity.json")
    parser.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "token_fidelity.png")
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES),
                        help="measure only these; the others keep their curves from --out")
    args = parser.parse_args()
    torch.manual_seed(0)
    earlier = {result["model"]: result for result in json.loads(args.out.read_text())["results"]} \
        if args.out.exists() and set(args.schedules) != set(SCHEDULES) else {}
    results = []
    for name in args.models:
        result = benchmark(make_task(name, args.quick), args.quick, args.schedules)
        kept = earlier.get(result["model"], {}).get("curves", {})
        result["curves"] = {label: result["curves"].get(label) or kept[label] for label in SCHEDULES
                            if label in result["curves"] or label in kept}
        result["tome_vs_plain"] = compare_merging(result)
        wins = sum(row["tome"] >= row["plain"] for row in result["tome_vs_plain"])
        print(f"  ToMe ≥ plain bipartite merging at {wins} of {len(result['tome_vs_plain'])} FLOPs levels")
        results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "threads": torch.get_num_threads()}, indent=2) + "\n")
    plot(results, args.plot)
    print(f"\nwrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
