"""ACT attention speed against exact attention at the DETR-DC5 encoder's size.

The DETR-DC5 encoder attends over a 60×70 feature map (4,200 tokens) with d_model 256 in 8 heads (head_dim 32).
The baseline is one `F.scaled_dot_product_attention` over the full (1, 8, N, 32) q/k/v — what HF DETR's default
sdpa attention runs. ACT (`ACTKernel(cluster="queries")`) gets queries with a controlled cluster structure:
C = ratio·N well-separated centres per head, each query a centre plus small noise, and a bucket width that
recovers them, so the prototype count is known and the measured speed-up can be compared with the ideal N/C.
Both sides compute full attention outputs for all N queries.

Runs are interleaved (exact, ACT, then ACT's stages one by one, alternating which goes first) so machine drift
hits both sides alike; the medians are reported. ACT's time is broken down into hashing + clustering, prototype
means, attention, and gathering back, so the overhead of clustering is visible.

    .venv/bin/python benchmarks/act_speed.py [--runs 21] [--tokens 4200] [--out benchmarks/results/act_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.ops import ACTKernel, broadcast_to_members, cluster_means, cluster_tokens, e2lsh_codes  # noqa: E402

HEADS, HEAD_DIM = 8, 32  # DETR d_model 256
ROUNDS = 32  # the paper's L
RATIOS = (0.5, 0.25)
CENTRE_SPREAD = 4.0  # centre coordinates ~ N(0, spread²): centres ~45 apart, ~11 buckets along each projection
QUERY_NOISE = 1e-4  # a query is its centre plus this much Gaussian noise
BUCKET_WIDTH = 4.0  # wide against the noise (no splits), narrow against the centres' distance (no merges)
STAGES = ("hash_and_cluster", "prototype_means", "attention", "gather")


def planted_queries(tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(1, H, N, D) queries: N·ratio centres per head, each used by N/C queries, plus small noise."""
    num_centres = round(tokens * ratio)
    centres = CENTRE_SPREAD * torch.randn(1, HEADS, num_centres, HEAD_DIM, generator=generator)
    assignment = torch.randperm(tokens, generator=generator) % num_centres
    return centres[:, :, assignment] + QUERY_NOISE * torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator)


def act_stages(kernel: ACTKernel, query, key, value) -> dict:
    """ACT's forward split into its stages (the same public functions the kernel calls), one callable each."""
    rows, tokens = HEADS, query.shape[2]
    state: dict = {}

    def hash_and_cluster():
        codes = e2lsh_codes(query, kernel.projections, kernel.offsets_unit, kernel.bucket_width,
                            dtype=torch.float32)
        state["clusters"] = cluster_tokens(codes)

    def prototype_means():
        clusters = state["clusters"]
        means = cluster_means(query.reshape(rows, tokens, HEAD_DIM), clusters.ids, clusters.num_clusters,
                              clusters.members)
        state["prototypes"] = means.view(1, HEADS, clusters.num_clusters, HEAD_DIM)

    def attention():
        state["prototype_outputs"] = F.scaled_dot_product_attention(state["prototypes"], key, value)

    def gather():
        clusters = state["clusters"]
        outputs = state["prototype_outputs"].reshape(rows, clusters.num_clusters, HEAD_DIM)
        state["output"] = broadcast_to_members(outputs, clusters.ids)

    return dict(zip(STAGES, (hash_and_cluster, prototype_means, attention, gather)))


def elapsed_ms(function) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000.0


def measure(tokens: int, ratio: float, runs: int, warmup: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    query = planted_queries(tokens, ratio, generator)
    key = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator)
    value = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator)
    kernel = ACTKernel(HEAD_DIM, rounds=ROUNDS, bucket_width=BUCKET_WIDTH, cluster="queries", seed=seed)
    stages = act_stages(kernel, query, key, value)
    timed = {
        "exact": lambda: F.scaled_dot_product_attention(query, key, value),
        "act": lambda: kernel(query, key, value, None, None),
        "stages": lambda: [stage() for stage in stages.values()],
    }

    with torch.inference_mode():
        for _ in range(warmup):
            for function in timed.values():
                function()
        kernel.reset_statistics()
        samples: dict[str, list[float]] = {name: [] for name in ("exact", "act", *STAGES)}
        for run in range(runs):
            order = ("exact", "act", "stages") if run % 2 == 0 else ("stages", "act", "exact")
            for name in order:
                if name == "stages":
                    for stage, function in stages.items():
                        samples[stage].append(elapsed_ms(function))
                else:
                    samples[name].append(elapsed_ms(timed[name]))
        exact_error = (kernel(query, key, value, None, None)
                       - F.scaled_dot_product_attention(query, key, value)).abs().max().item()

    median = {name: statistics.median(values) for name, values in samples.items()}
    prototype_fraction = kernel.prototype_fraction()
    speedup = median["exact"] / median["act"]
    ideal = 1.0 / prototype_fraction
    stage_total = sum(median[stage] for stage in STAGES)
    return {
        "ratio": ratio,
        "tokens": tokens,
        "prototype_fraction": prototype_fraction,
        "exact_ms": median["exact"],
        "act_ms": median["act"],
        "speedup": speedup,
        "ideal_speedup": ideal,
        "efficiency": speedup / ideal,
        "breakdown_ms": {stage: median[stage] for stage in STAGES},
        "clustering_overhead_share": (stage_total - median["attention"]) / stage_total,
        "max_abs_difference_to_exact": exact_error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="timed runs per ratio (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per ratio first")
    parser.add_argument("--tokens", type=int, default=60 * 70, help="sequence length N (DETR-DC5: 60×70)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "act_speed.json")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.tokens < 8:
        parser.error("--runs must be >= 1 and --tokens >= 8")

    results = [measure(args.tokens, ratio, args.runs, args.warmup, args.seed) for ratio in RATIOS]

    header = (f"{'C/N planted':>11} {'C/N measured':>12} {'exact ms':>9} {'ACT ms':>8} {'speed-up':>8} "
              f"{'ideal N/C':>9} {'efficiency':>10} | {'hash+cluster':>12} {'means':>6} {'attention':>9} "
              f"{'gather':>6} {'overhead':>8}")
    print(f"N = {args.tokens}, {HEADS} heads × {HEAD_DIM}, batch 1, float32, {torch.get_num_threads()} threads, "
          f"L = {ROUNDS}, r = {BUCKET_WIDTH:g}, median of {args.runs} interleaved runs")
    print(header)
    for row in results:
        stage = row["breakdown_ms"]
        print(f"{row['ratio']:>11.2f} {row['prototype_fraction']:>12.4f} {row['exact_ms']:>9.1f} "
              f"{row['act_ms']:>8.1f} {row['speedup']:>8.2f} {row['ideal_speedup']:>9.2f} "
              f"{row['efficiency']:>10.3f} | {stage['hash_and_cluster']:>12.2f} {stage['prototype_means']:>6.2f} "
              f"{stage['attention']:>9.1f} {stage['gather']:>6.2f} {row['clustering_overhead_share']:>8.1%}")

    report = {
        "benchmark": "act_speed",
        "config": {"tokens": args.tokens, "heads": HEADS, "head_dim": HEAD_DIM, "batch": 1, "dtype": "float32",
                   "device": "cpu", "threads": torch.get_num_threads(), "rounds": ROUNDS,
                   "bucket_width": BUCKET_WIDTH, "centre_spread": CENTRE_SPREAD, "query_noise": QUERY_NOISE,
                   "runs": args.runs, "warmup": args.warmup, "seed": args.seed, "torch": torch.__version__},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".tmp")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
