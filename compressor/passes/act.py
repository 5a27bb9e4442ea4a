"""ACT attention (Zheng et al., "End-to-End Object Detection with Adaptive Clustering Transformer").

Queries (or keys, or both) are hashed with `rounds` rounds of E2LSH of bucket width `bucket_width`; tokens with the
same codes form a cluster whose prototype is their mean; attention is computed for prototypes only and broadcast
back. A drop-in on pretrained global self-attention, no retraining.
"""

from __future__ import annotations

import zlib
from typing import Any

from compressor.models.base import AttentionSite, ModelAdapter
from compressor.ops.act_kernel import ACTKernel
from compressor.passes.act_cost import describe_left_exact, sites_left_exact
from compressor.passes.base import Param, Pass, PassContext, scratch_adapter


class ACTPass(Pass):
    name = "act"
    summary = "Adaptive Clustering Transformer attention: E2LSH-clustered queries, attention per prototype."
    site_kind = "attention"
    replaces = "attention_kernel"
    params = {
        "rounds": Param("int", 32, "L, the number of E2LSH rounds; tokens share a cluster only if all L codes "
                        "agree, so more rounds give more, finer clusters.", minimum=1, maximum=1024),
        "bucket_width": Param("float", 8.0, "r, the E2LSH bucket width in the units of the per-head query "
                              "vectors; wider buckets give fewer, coarser clusters. The paper uses 8.",
                              greater_than=0),
        "cluster": Param("str", "queries", "What to cluster (paper Table 2): `queries` (prototype queries attend "
                         "to all keys), `keys` (queries attend to key/value prototypes, weighted by cluster "
                         "size) or `both`.", choices=("queries", "keys", "both")),
        "fidelity_target": Param("float", None, "Calibrate the bucket width per layer on `--calib` data: the "
                                 "cheapest per-layer widths whose fidelity to the original model is at least this: "
                                 "the mean output cosine, or for DETR-family detectors the detection agreement "
                                 "(confidence-weighted box IoU × class overlap per query). `null` uses "
                                 "`bucket_width` everywhere.", greater_than=0, maximum=1,
                                 nullable=True),
        "bucket_widths": Param("list[float]",
                               [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0],
                               "The bucket widths calibration chooses from, per layer (a layer may also be "
                               "left exact when no width meets the target cheaply).", greater_than=0),
        "only_where_it_pays": Param("bool", True, "Leave exact every layer where clustering would cost at least "
                                    "the FLOPs of exact attention (short sequences, many rounds), so `act` never "
                                    "raises FLOPs. `false` clusters every targeted layer even where that costs more "
                                    "(how `act` behaved before it weighed the cost)."),
    }

    def __init__(self) -> None:
        #: why planning left a site exact, by site name (for the report)
        self.left_exact: dict[str, str] = {}

    def candidate_sites(self, adapter: ModelAdapter) -> list[AttentionSite]:
        """Global self-attention: ACT clusters queries against the keys of the same tokens."""
        return [site for site in adapter.all_attention_sites() if site.kind == "self" and site.scope == "global"]

    def default_sites(self, adapter: ModelAdapter, candidates: list[AttentionSite]) -> list[AttentionSite]:
        """Encoders only: the DETR encoder (the paper's setting), every ViT/DeiT/BERT layer; not decoders."""
        return [site for site in candidates if site.stack != "decoder"]

    @classmethod
    def calibration_needed(cls, params: dict[str, Any]) -> str | None:
        if params["fidelity_target"] is None:
            return None
        return ("act.fidelity_target needs calibration data: pass --calib DATA, or set act.fidelity_target=null "
                "to use one bucket width everywhere")

    def plan(self, adapter: ModelAdapter, sites: list[AttentionSite], params: dict[str, Any],
             context: PassContext) -> dict[str, dict[str, Any]]:
        """Bucket widths per site (calibrated with `fidelity_target`), and exact attention where ACT does not pay
        (`act_cost`; unless `only_where_it_pays` is false). Kernels are tried on a scratch copy: the model stays exact while planning."""
        self.require_calibration(params, context)
        scratch = scratch_adapter(adapter)
        self.rewrite(scratch, sites, params, {s.name: {"bucket_width": params["bucket_width"]} for s in sites},
                     context.seed)
        kernels = [self.kernel(scratch, site) for site in sites]
        widths: list[float | None] = [float(params["bucket_width"])] * len(sites)
        if params["fidelity_target"] is not None:
            from compressor.passes.act_calibration import calibrate_bucket_widths

            widths = calibrate_bucket_widths(scratch, kernels, params, context)
            self.left_exact = {site.name: "calibration: exact attention is needed to reach fidelity_target"
                               for site, width in zip(sites, widths) if width is None}
        if params["only_where_it_pays"]:
            batches = context.calibration or [context.example
                                              or scratch.example_inputs(batch_size=1, seed=context.seed)]
            data = "the calibration data" if context.calibration else "the example input"
            self.left_exact.update(sites_left_exact(scratch, [site.name for site in sites], kernels, widths,
                                                    batches, data))
        return {site.name: {"bucket_width": None if site.name in self.left_exact else width}
                for site, width in zip(sites, widths)}

    def rewrite(self, adapter: ModelAdapter, sites: list[AttentionSite], params: dict[str, Any],
                plan: dict[str, dict[str, Any]], seed: int) -> None:
        for site in sites:
            width = plan[site.name]["bucket_width"]
            if width is None:  # left exact: ACT does not pay here, or calibration needs exact attention
                continue
            kernel = ACTKernel(site.head_dim, rounds=params["rounds"], bucket_width=float(width),
                               cluster=params["cluster"], seed=site_seed(seed, site.name))
            adapter.install_attention_kernel(site, kernel)

    @staticmethod
    def kernel(adapter: ModelAdapter, site: AttentionSite) -> ACTKernel | None:
        return getattr(adapter.module(site.name), "attention_kernel", None)

    def reset_statistics(self, adapter: ModelAdapter, sites: list[AttentionSite]) -> None:
        for site in sites:
            kernel = self.kernel(adapter, site)
            if kernel is not None:
                kernel.reset_statistics()

    def statistics(self, adapter: ModelAdapter, sites: list[AttentionSite]) -> dict[str, Any]:
        fractions = {}
        for site in sites:
            kernel = self.kernel(adapter, site)
            fractions[site.name] = 1.0 if kernel is None else round(kernel.prototype_fraction(), 4)
        widths = {site.name: (None if self.kernel(adapter, site) is None
                              else round(float(self.kernel(adapter, site).bucket_width), 4)) for site in sites}
        mean = sum(fractions.values()) / len(fractions)
        left_exact = {site.name: self.left_exact.get(site.name, "exact in the recipe's plan") for site in sites
                      if self.kernel(adapter, site) is None}
        return {
            "prototype_fraction": fractions,
            "bucket_width": widths,
            "left_exact": left_exact,
            "summary": {"mean prototypes/N": round(mean, 4),
                        "prototypes/N per layer": " ".join(f"{v:.2f}" for v in fractions.values()),
                        **describe_left_exact(left_exact, len(sites))},
        }


def site_seed(seed: int, site_name: str) -> int:
    """A distinct, reproducible hash seed per site, so layers do not share projections."""
    return (seed * 1_000_003 + zlib.crc32(site_name.encode())) % (2**31)
