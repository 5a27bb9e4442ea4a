"""ACT attention speed against exact attention at the DETR-DC5 encoder's size.

The DETR-DC5 encoder attends over a 60×70 feature map (4,200 tokens) with d_model 256 in 8 heads (head_dim 32).
The baseline is one `F.scaled_dot_product_attention` over the full (1, 8, N, 32) q/k/v — what HF DETR's default
sdpa attention runs — on q/k/v laid out as HF makes them (transposed views of (1, N, 256) projections, "hf") and
contiguous. ACT (`ACTKernel(cluster="queries")`) gets the same tensors, with queries of a controlled structure:
C = ratio·N well-separated centres per head, each query a centre plus small noise, and a bucket width that
recovers them, so the prototype count is known and the measured speed-up can be compared with the ideal N/C.
Both sides compute full attention outputs for all N queries.

Runs are interleaved (exact, ACT, then ACT's stages one by one, alternating which goes first) so machine drift
hits both sides alike; the medians are reported. ACT's time is broken down into hashing + clustering, prototype
means, attention, and gathering back, so the overhead of clustering is visible. Page faults per call are
recorded for each side too: a fresh multi-megabyte allocation that the allocator takes from the OS costs about
3 µs per 4 KiB page on first touch, enough to swing a ratio, so a run where one side faults and the other does
not is visibly perturbed. As in `timeit`, Python's garbage collector is off while timing: a collection that lands
in one side's call costs it milliseconds that depend on the whole process's heap, not on that side. As in `timeit`, Python's garbage collector is off while timing (a collection that
lands in one side's call costs it milliseconds that depend on the whole process's heap, not on the side).

    .venv/bin/python benchmarks/act_speed.py [--runs 31] [--tokens 4200] [--layouts hf,contiguous]
                                             [--out benchmarks/results/act_speed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.ops import ACTKernel  # noqa: E402
from compressor.ops.clustered_attention import TokenTable, query_prototypes  # noqa: E402

HEADS, HEAD_DIM = 8, 32  # DETR d_model 256
ROUNDS = 32  # the paper's L
RATIOS = (0.5, 0.25)
CENTRE_SPREAD = 4.0  # centre coordinates ~ N(0, spread²): centres ~32 apart, ~8 buckets apart on each projection
QUERY_NOISE = 1e-5  # a query is its centre plus this much Gaussian noise
BUCKET_WIDTH = 4.0  # wide against the noise (no splits), narrow against the centres' distance (no merges)
STAGES = ("hash_and_cluster", "prototype_means", "attention", "gather")


def planted_queries(tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(1, H, N, D) queries: N·ratio centres per head, each used by N/C queries, plus small noise."""
    num_centres = round(tokens * ratio)
    centres = CENTRE_SPREAD * torch.randn(1, HEADS, num_centres, HEAD_DIM, generator=generator)
    assignment = torch.randperm(tokens, generator=generator) % num_centres
    return centres[:, :, assignment] + QUERY_NOISE * torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator)


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values laid out as HF DETR makes them — a (B, N, H·D) projection viewed as (B, H, N, D) through a
    transpose — or contiguous (B, H, N, D)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2) if layout == "hf" else x.contiguous()


def act_stages(kernel: ACTKernel, query, key, value) -> tuple[dict, dict]:
    """ACT's forward (cluster="queries", no mask) split into its stages, with the same functions the kernel calls:
    ({stage: callable}, the state they fill in, ending with "output")."""
    state: dict = {}

    def hash_and_cluster():
        state["table"] = TokenTable.of(query)
        state["clusters"] = kernel.clusters_of(query, None, "act_query_clusters")

    def prototype_means():
        prototypes, state["gather_index"] = query_prototypes(state["clusters"], state["table"],
                                                                "act_query_prototypes")
        state["prototypes"] = prototypes.view(1, HEADS, -1, HEAD_DIM)

    def attention():
        state["prototype_outputs"] = F.scaled_dot_product_attention(state["prototypes"], key, value)

    def gather():
        state["output"] = state["table"].gather(state["prototype_outputs"].reshape(-1, HEAD_DIM), state["gather_index"])

    return dict(zip(STAGES, (hash_and_cluster, prototype_means, attention, gather))), state


def minor_page_faults() -> int:
    """Page faults of this process so far: each first touch of a fresh 4 KiB page costs about 3 µs here, so a
    side that gets its big allocations fresh from the OS while the other reuses memory is timed unfairly."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def elapsed_ms(function, faults: list[int]) -> float:
    """Wall time of one call in ms; appends the page faults it caused to `faults`."""
    faults_before = minor_page_faults()
    start = time.perf_counter()
    function()
    elapsed = (time.perf_counter() - start) * 1000.0
    faults.append(minor_page_faults() - faults_before)
    return elapsed


@contextlib.contextmanager
def garbage_collector_off():
    """Collect once, then keep Python's garbage collector off inside (as `timeit` does)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure(tokens: int, ratio: float, layout: str, runs: int, warmup: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    query = in_layout(planted_queries(tokens, ratio, generator), layout)
    key = in_layout(torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator), layout)
    value = in_layout(torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator), layout)
    kernel = ACTKernel(HEAD_DIM, rounds=ROUNDS, bucket_width=BUCKET_WIDTH, cluster="queries", seed=seed)
    stages, stage_state = act_stages(kernel, query, key, value)
    timed = {
        "exact": lambda: F.scaled_dot_product_attention(query, key, value),
        "act": lambda: kernel(query, key, value, None, None),
        "stages": lambda: [stage() for stage in stages.values()],
    }

    with torch.inference_mode(), garbage_collector_off():
        for _ in range(warmup):
            for function in timed.values():
                function()
        kernel.reset_statistics()
        samples: dict[str, list[float]] = {name: [] for name in ("exact", "act", *STAGES)}
        faults: dict[str, list[int]] = {name: [] for name in samples}
        for run in range(runs):
            order = ("exact", "act", "stages") if run % 2 == 0 else ("stages", "act", "exact")
            for name in order:
                if name == "stages":
                    for stage, function in stages.items():
                        samples[stage].append(elapsed_ms(function, faults[stage]))
                else:
                    samples[name].append(elapsed_ms(timed[name], faults[name]))
        act_output = kernel(query, key, value, None, None)
        exact_error = (act_output - F.scaled_dot_product_attention(query, key, value)).abs().max().item()
        stages_reproduce_kernel = torch.equal(stage_state["output"], act_output)

    median = {name: statistics.median(values) for name, values in samples.items()}
    prototype_fraction = kernel.prototype_fraction()
    speedup = median["exact"] / median["act"]
    ideal = 1.0 / prototype_fraction
    stage_total = sum(median[stage] for stage in STAGES)
    return {
        "layout": layout,
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
        "stages_reproduce_kernel_output": stages_reproduce_kernel,
        "page_faults_per_call": {name: statistics.mean(counts) for name, counts in faults.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=31, help="timed runs per ratio and layout (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per ratio and layout first")
    parser.add_argument("--tokens", type=int, default=60 * 70, help="sequence length N (DETR-DC5: 60×70)")
    parser.add_argument("--layouts", default="hf,contiguous",
                        help="q/k/v memory layouts, comma-separated: hf (HF DETR's transposed projections), "
                             "contiguous")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "act_speed.json")
    args = parser.parse_args(argv)
    layouts = [layout.strip() for layout in args.layouts.split(",") if layout.strip()]
    if args.runs < 1 or args.tokens < 8 or not layouts or set(layouts) - {"hf", "contiguous"}:
        parser.error("--runs must be >= 1, --tokens >= 8, --layouts a list of hf and/or contiguous")

    results = [measure(args.tokens, ratio, layout, args.runs, args.warmup, args.seed)
               for layout in layouts for ratio in RATIOS]

    print(f"N = {args.tokens}, {HEADS} heads × {HEAD_DIM}, batch 1, float32, {torch.get_num_threads()} threads, "
          f"L = {ROUNDS}, r = {BUCKET_WIDTH:g}, median of {args.runs} interleaved runs")
    print(f"{'layout':>10} {'C/N':>5} {'C/N meas.':>9} {'exact ms':>9} {'ACT ms':>7} {'speed-up':>8} "
          f"{'ideal N/C':>9} {'efficiency':>10} | {'hash+cluster':>12} {'means':>6} {'attention':>9} "
          f"{'gather':>6} {'overhead':>8} | {'page faults/call exact, ACT':>27}")
    for row in results:
        stage = row["breakdown_ms"]
        print(f"{row['layout']:>10} {row['ratio']:>5.2f} {row['prototype_fraction']:>9.4f} {row['exact_ms']:>9.1f} "
              f"{row['act_ms']:>7.1f} {row['speedup']:>8.2f} {row['ideal_speedup']:>9.2f} "
              f"{row['efficiency']:>10.3f} | {stage['hash_and_cluster']:>12.2f} {stage['prototype_means']:>6.2f} "
              f"{stage['attention']:>9.1f} {stage['gather']:>6.2f} {row['clustering_overhead_share']:>8.1%} | "
              f"{row['page_faults_per_call']['exact']:>17.0f}, {row['page_faults_per_call']['act']:>8.0f}")

    report = {
        "benchmark": "act_speed",
        "config": {"tokens": args.tokens, "heads": HEADS, "head_dim": HEAD_DIM, "batch": 1, "dtype": "float32",
                   "device": "cpu", "threads": torch.get_num_threads(), "rounds": ROUNDS,
                   "bucket_width": BUCKET_WIDTH, "centre_spread": CENTRE_SPREAD, "query_noise": QUERY_NOISE,
                   "runs": args.runs, "warmup": args.warmup, "seed": args.seed, "torch": torch.__version__,
                   "malloc_environment": {name: value for name, value in os.environ.items()
                                          if name.startswith(("MALLOC_", "LD_PRELOAD"))}},
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
