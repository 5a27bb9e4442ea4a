"""ACT on real weights with the native clustering kernels and with the torch path: do they agree?

The native kernel (compressor/ops/csrc/act_grouping.cpp) sums each hash projection in its own order, not BLAS's,
so a projection within float32 rounding of a bucket edge may fall on the other side. This measures what that means
on the two really trained transformers of benchmarks/act_fidelity.py (the CIFAR-10 ViT on 2,000 test images,
all-MiniLM-L6-v2 on 24 passages), for fixed (L, r) settings compressed once through `compressor.compress`:

- the metric (top-1 or embedding cosine to the exact model) and prototypes/N on each path;
- how many (example, layer, head) rows are clustered into exactly the same partition (compared in-process, on
  the very same queries, by hooks on every ACT kernel);
- the largest difference between the two paths' outputs.

The torch path is forced in-process the way the tests do it (the native entry points report "unavailable"),
which is what `COMPRESSOR_NATIVE=0` or a machine without a compiler gives.

    python benchmarks/act_native_agreement.py [--quick]     # writes benchmarks/results/act_native_agreement.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import compressor  # noqa: E402
from compressor.evaluate.fidelity import primary_outputs  # noqa: E402
from compressor.ops import native_act  # noqa: E402
from compressor.ops.act_kernel import ACTKernel  # noqa: E402
from compressor.ops.clustered_attention import TokenTable  # noqa: E402

from act_fidelity import make_task  # noqa: E402
from common import HERE  # noqa: E402

SETTINGS = ((8, 8.0), (16, 16.0), (8, 16.0), (32, 24.0))


@contextlib.contextmanager
def torch_path():
    """The native ACT kernels reported unavailable inside (as without a compiler)."""
    saved = native_act._kernel, native_act._means_kernel
    native_act._kernel = native_act._means_kernel = lambda: None
    try:
        yield
    finally:
        native_act._kernel, native_act._means_kernel = saved


def same_partition_rows(native_ids: torch.Tensor, torch_ids: torch.Tensor) -> torch.Tensor:
    """(R,) bool: rows whose tokens are grouped alike (however the clusters are numbered)."""
    same = lambda ids: ids[:, :, None] == ids[:, None, :]  # noqa: E731
    return (same(native_ids) == same(torch_ids)).flatten(1).all(dim=1)


class PartitionProbe:
    """Forward pre-hooks on every ACT kernel: cluster the incoming queries both ways and count agreeing rows."""

    def __init__(self, model):
        self.rows = self.agreeing = 0
        self.handles = [module.register_forward_pre_hook(self.compare) for module in model.modules()
                        if isinstance(module, ACTKernel)]

    def compare(self, kernel: ACTKernel, inputs: tuple) -> None:
        table = TokenTable.of(inputs[0])
        native = native_act.group_tokens_natively(table.vectors, kernel.projections, kernel.offsets_unit,
                                                  kernel.bucket_width, table.batch, table.heads, table.tokens,
                                                  table.heads_last)
        if native is None:
            raise RuntimeError("the native ACT kernel is unavailable here: nothing to compare")
        with torch_path():
            reference = kernel.clusters_of(inputs[0])
        agree = same_partition_rows(native.ids, reference.ids)
        self.rows += agree.numel()
        self.agreeing += int(agree.sum())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def compare(task, rounds: int, width: float) -> dict:
    result = compressor.compress(task.source, "act", overrides=[f"act.rounds={rounds}", f"act.bucket_width={width}"],
                                 progress=False, latency_runs=1)
    model = result.model
    probe = PartitionProbe(model)
    native_metric, native_fraction = task.score(model)
    probe.remove()
    native_outputs = primary_outputs(model, task.adapter, task.batches)
    with torch_path():
        torch_metric, torch_fraction = task.score(model)
        torch_outputs = primary_outputs(model, task.adapter, task.batches)
    difference = max(float((a - b).abs().max()) for a, b in zip(native_outputs, torch_outputs))
    return {"rounds": rounds, "bucket_width": width, task.metric: {"native": round(native_metric, 4),
                                                                   "torch": round(torch_metric, 4)},
            "prototypes_per_token": {"native": round(native_fraction, 4), "torch": round(torch_fraction, 4)},
            "rows": probe.rows, "rows_with_the_same_partition": probe.agreeing,
            "max_abs_output_difference": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples and settings")
    parser.add_argument("--out", default=str(HERE / "results" / "act_native_agreement.json"))
    args = parser.parse_args()
    if not native_act.native_grouping_available():
        raise SystemExit("the native ACT kernel could not be built here (see the warning above); nothing to compare")
    report = {"benchmark": "act_native_agreement", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "results": []}
    for name in ("vit", "minilm"):
        task = make_task(name, args.quick)
        start = time.perf_counter()
        for rounds, width in SETTINGS[:2] if args.quick else SETTINGS:
            entry = compare(task, rounds, width)
            entry["model"] = task.name
            report["results"].append(entry)
            metric = entry[task.metric]
            print(f"{task.name:>18} L={rounds:<3} r={width:<5g} {task.metric} native {metric['native']:.4f} "
                  f"torch {metric['torch']:.4f} | prototypes/N {entry['prototypes_per_token']['native']:.4f} "
                  f"{entry['prototypes_per_token']['torch']:.4f} | same partition "
                  f"{entry['rows_with_the_same_partition']}/{entry['rows']} rows | max |Δ output| "
                  f"{entry['max_abs_output_difference']:.1e}")
        print(f"  ({time.perf_counter() - start:.0f} s)")
    with open(args.out + ".tmp", "w") as handle:
        json.dump(report, handle, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
