"""Structural pruning through Torch-Pruning's dependency graph: attention heads, FFN width, convolution channels.

Channels are really removed (smaller matrices, fewer FLOPs), ranked by weight magnitude or by first-order Taylor
importance on `--calib` data. The plan records every new width and head count, so `compressor.load` rebuilds the
pruned shapes before loading the weights; `ratio: 0` leaves the model unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compressor.errors import CompressorError, RecipeError
from compressor.models.base import ModelAdapter
from compressor.passes.base import Param, Pass, PassContext, scratch_adapter
from compressor.passes.prune_graph import PruneResult, refuse_attention_kernels, run_pruner
from compressor.passes.prune_shapes import apply_widths, changed_widths, snapshot_widths


@dataclass(frozen=True)
class ModuleSite:
    """A module of the model, by qualified name: pruning may shrink the widths inside a targeted module."""

    name: str


def resolved_importance(importance: str, context: PassContext) -> str:
    """`auto`: Taylor importance where calibration data is given, weight magnitude where none is."""
    if importance == "auto":
        return "taylor" if context.calibration else "magnitude"
    return importance


class PrunePass(Pass):
    name = "prune"
    summary = "Structural pruning (Torch-Pruning): remove attention heads or head dims, FFN width, conv channels."
    site_kind = "block"
    cannot_follow = {
        "act": "ACT's attention kernels are sized for the unpruned heads; put prune first, before act",
        "tied_weights": "a tied layer borrows its pair's weight, which Torch-Pruning's dependency graph cannot "
                        "follow (a ViT is left unpruned, a ResNet no longer runs); put prune before tied_weights",
        "token_clip": "Torch-Pruning's dependency search does not end (over 20 min on a 4-layer ViT) through the "
                      "gathers and scatters of clipping; put prune before token_clip",
        "quantize": "int8 layers are no Linear/Conv2d layers Torch-Pruning can shrink; put prune before quantize",
    }
    params = {
        "ratio": Param("float", 0.3, "Fraction of the channels removed from every pruned width (per layer; over "
                       "the whole model with `global_ranking`). 0 leaves the model unchanged.",
                       minimum=0, maximum=0.95),
        "importance": Param("str", "magnitude", "How channels are ranked: `magnitude` (L2 norm of each coupled "
                            "group of weights), `taylor` (|weight × gradient| on `--calib` data, labels taken "
                            "from the model's own predictions), or `auto` (taylor when `--calib` data is given, "
                            "else magnitude).", choices=("magnitude", "taylor", "auto")),
        "attention": Param("str", "head_dim", "How attention shrinks: `head_dim` (every head keeps its place, "
                           "each loses `ratio` of its dimensions), `heads` (whole heads removed, `ratio` of them) "
                           "or `none`.", choices=("head_dim", "heads", "none")),
        "ffn": Param("bool", True, "Prune the hidden width of feed-forward layers (fc1 outputs, fc2 inputs)."),
        "hidden": Param("bool", False, "Also prune the width shared between blocks (the residual stream: "
                        "embedding size, Swin/ResNet stage widths), as Torch-Pruning's uniform ViT recipe does. "
                        "Changes the width of hidden states, so feature-level distillation and bare backbones "
                        "without a head cannot use it."),
        "round_to": Param("int", None, "Keep every pruned width a multiple of this (e.g. 8 for fast kernels); "
                          "null keeps exact counts.", minimum=1, nullable=True),
        "global_ranking": Param("bool", False, "Rank channels across all layers at once, so layers lose "
                                "different amounts (Torch-Pruning's global pruning); the widths land in the plan."),
    }

    def __init__(self) -> None:
        self.result: PruneResult | None = None
        #: the ranking planning used (`auto` resolved), for the report
        self.importance: str | None = None
        #: the pruned copy's state dict, between `plan` and `initialise`
        self.pruned_weights: dict[str, torch.Tensor] | None = None

    # --- sites -------------------------------------------------------------------------------------------------
    def candidate_sites(self, adapter: ModelAdapter) -> list[ModuleSite]:
        """Every module: a target is a module whose inner widths may shrink; the plan names modules too."""
        return [ModuleSite(name) for name, _ in adapter.model.named_modules()]

    def default_sites(self, adapter: ModelAdapter, candidates: list[ModuleSite]) -> list[ModuleSite]:
        """The residual blocks: transformer layers (DETR encoder and decoder), ResNet blocks; and the FFNs of layers
        that are not blocks (Conditional DETR's decoder layers, whose attention no pass maps onto)."""
        blocks = {block.name for block in adapter.blocks()}

        def in_a_block(name: str) -> bool:
            return any(name.startswith(block + ".") for block in blocks)

        ffns = {site.name for site in adapter.ffn_sites() if not in_a_block(site.name)}
        return [site for site in candidates if site.name in blocks | ffns]

    @classmethod
    def calibration_needed(cls, params: dict[str, Any]) -> str | None:
        if params["importance"] != "taylor":
            return None
        return "prune.importance=taylor needs calibration data: pass --calib DATA, or set prune.importance=magnitude"

    # --- the two steps -----------------------------------------------------------------------------------------
    def plan(self, adapter: ModelAdapter, sites: list[ModuleSite], params: dict[str, Any],
             context: PassContext) -> dict[str, dict[str, Any]]:
        """Prune a scratch copy: its new widths are the plan, its weights what `initialise` gives the model."""
        self.require_calibration(params, context)
        self.pruned_weights = None
        self.importance = resolved_importance(params["importance"], context)
        if params["ratio"] == 0:
            self.result = PruneResult(untraced=[], heads={}, head_dims={})
            return {}
        refuse_attention_kernels(adapter, [site.name for site in sites])
        scratch = scratch_adapter(adapter)
        example = scratch.example_inputs(batch_size=1, seed=context.seed)
        reference = self._output_shape(scratch, example)
        before = snapshot_widths(scratch.model)
        self.result = run_pruner(scratch, [site.name for site in sites], {**params, "importance": self.importance},
                                 example, context.calibration)
        try:
            after_shape = self._output_shape(scratch, example)
        except Exception as error:  # a layer the graph could not follow kept a stale width
            hint = ("set prune.hidden=false: this model computes something of the shared width that is not a "
                    "weight (e.g. DETR's sine position embeddings)") if params["hidden"] else \
                "exclude the module that fails with prune.ignore"
            raise CompressorError(f"prune: the pruned {adapter.display_name} model no longer runs "
                                  f"({type(error).__name__}: {str(error).splitlines()[0]}); {hint}") from None
        if after_shape != reference:
            raise RecipeError(f"prune: pruning changed the model's output from {reference} to {after_shape} (a "
                              f"model without a task head outputs its hidden width); set prune.hidden=false")
        self.pruned_weights = scratch.model.state_dict()
        return changed_widths(before, snapshot_widths(scratch.model))

    @staticmethod
    @torch.no_grad()
    def _output_shape(adapter: ModelAdapter, example: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return tuple(adapter.primary_output(adapter.model(**example), example).shape)

    def rewrite(self, adapter: ModelAdapter, sites: list[ModuleSite], params: dict[str, Any],
                plan: dict[str, dict[str, Any]], seed: int) -> None:
        """Give the model the planned widths (uninitialised where they shrink: weights come from `initialise`, or
        from the saved file on reload)."""
        apply_widths(adapter.model, plan)

    def initialise(self, adapter: ModelAdapter, sites: list[ModuleSite], params: dict[str, Any],
                   plan: dict[str, dict[str, Any]], context: PassContext) -> None:
        """The channels the pruner kept, from the pruned copy."""
        if self.pruned_weights is not None:
            adapter.model.load_state_dict(self.pruned_weights)
            self.pruned_weights = None

    def statistics(self, adapter: ModelAdapter, sites: list[ModuleSite]) -> dict[str, Any]:
        result = self.result or PruneResult(untraced=[], heads={}, head_dims={})
        ffn_width = {site.name: adapter.module(site.fc1).out_features for site in adapter.all_ffn_sites()}
        summary = {"untraced layers": len(result.untraced)}
        if self.importance is not None:
            summary["importance"] = self.importance
        if result.heads:
            summary["heads per layer"] = " ".join(str(h) for h in result.heads.values())
            summary["head dim per layer"] = " ".join(str(d) for d in result.head_dims.values())
        if ffn_width:
            summary["FFN width per layer"] = " ".join(str(w) for w in ffn_width.values())
        return {"heads": result.heads, "head_dim": result.head_dims, "ffn_width": ffn_width,
                "untraced": result.untraced, "summary": summary}
