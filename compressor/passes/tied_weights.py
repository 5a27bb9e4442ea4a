"""Tied row/column weights (Koyun & Töreyin, "Do deep neural networks utilize the weight space efficiently?").

One matrix W serves a layer and its transpose serves the paired layer: FFN `Wᵀ F(W x + b1) + b2`; attention
`Q = W_q x`, `K = W_kv x`, `V = W_kvᵀ x`, output projection `W_qᵀ`; ResNet bottleneck `Wᵀ G(W x)`, optionally one W
for all blocks of a stage (the paper's ResNet50-PE). The paper trains such models from scratch; here W starts from a
pretrained model's weights (closed form or fitted on calibration data), ready for distillation.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

from torch import nn

from compressor.errors import RecipeError
from compressor.models.base import AttentionSite, BlockSite, FFNSite, ModelAdapter
from compressor.ops.tied_layers import BorrowedWeight, TiedConv2d, TiedLinear, TiedQKV
from compressor.passes.base import Param, Pass, PassContext
from compressor.passes.tie_fit import (Unit, closed_form, fit_units, held_out_error, record_units, split_records,
                                       trainable_parameters)
from compressor.passes.tie_layout import UNTIED, Tie, layout_to_plan, plan_entries, plan_ties, ties_from_plan

PARTS = ("ffn", "attention", "convs")


def _part(site) -> str:
    return "ffn" if isinstance(site, FFNSite) else "attention" if isinstance(site, AttentionSite) else "convs"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new.train(getattr(parent, child).training)
    setattr(parent, child, new)


class TiedWeightsPass(Pass):
    name = "tied_weights"
    summary = "Tied row/column weights: one matrix W serves a layer and Wᵀ its pair (FFN, attention, ResNet convs)."
    site_kind = "attention, FFN and residual-block"
    params = {
        "parts": Param("list[str]", list(PARTS), "What to tie: `ffn` (fc2 = fc1ᵀ), `attention` (V = W_kvᵀ with "
                       "K = W_kv x, output = W_qᵀ), `convs` (ResNet bottleneck conv1/conv3 as Wᵀ G(W x); basic "
                       "blocks' two 3×3 convs as a conv and its adjoint).", choices=PARTS),
        "share": Param("str", "block", "For `convs`: `block` ties the pair inside each block; `stage` gives all "
                       "blocks of a stage one W (the paper's ResNet50-PE). Transformer sites always tie within "
                       "the block.", choices=("block", "stage")),
        "share_middle": Param("bool", False, "With `share: stage`, also share one 3×3 middle weight per stage "
                              "(bottlenecks)."),
        "stages": Param("list[int]", None, "For `convs`: the stages to tie, counted from 1 (ResNet-50 has 4; "
                        "[3, 4] is the paper's PE² variant); null ties every stage.", minimum=1, nullable=True),
        "init": Param("str", "best", "How W starts from the pretrained weights: `closed_form` (the mean of the "
                      "weights it replaces, e.g. (W1 + W2ᵀ)/2), `data_aware` (fitted to the units' outputs on "
                      "`--calib` data), or `best` (data_aware where it beats closed_form on held-out calibration "
                      "data; closed_form without calibration data).",
                      choices=("best", "closed_form", "data_aware")),
        "fit_steps": Param("int", 200, "Adam steps of the data-aware fit, per unit (0: closed form only).",
                           minimum=0),
        "fit_lr": Param("float", 1e-3, "Adam learning rate of the data-aware fit.", greater_than=0),
        "fit_tokens": Param("int", 2048, "Tokens sampled per step when fitting an FFN (it maps tokens "
                            "independently).", minimum=1),
    }

    # --- sites ---------------------------------------------------------------------------------------------------
    def candidate_sites(self, adapter: ModelAdapter) -> list:
        blocks = [b for b in adapter.all_blocks() if b.kind in ("basic", "bottleneck") and len(b.convs) >= 2]
        return [*adapter.all_attention_sites(), *adapter.all_ffn_sites(), *blocks]

    def default_sites(self, adapter: ModelAdapter, candidates: list) -> list:
        return candidates

    @staticmethod
    def chosen_sites(sites: list, params: dict[str, Any]) -> list:
        """The sites of the chosen parts, and for convs of the chosen stages."""
        stacks: list[str] = []
        for site in sites:
            if isinstance(site, BlockSite) and site.stack not in stacks:
                stacks.append(site.stack)
        wanted = params["stages"]
        if wanted is not None and any(stage > len(stacks) for stage in wanted):
            raise RecipeError(f"tied_weights.stages: {wanted} names a stage beyond the model's {len(stacks)} "
                              "convolutional stages (counted from 1)")
        return [site for site in sites if _part(site) in params["parts"] and
                (not isinstance(site, BlockSite) or wanted is None or stacks.index(site.stack) + 1 in wanted)]

    def check_settings(self, adapter: ModelAdapter, sites: list, params: dict[str, Any]) -> None:
        if params["share_middle"] and params["share"] != "stage":
            raise RecipeError("tied_weights.share_middle shares a weight across a stage: it needs share: stage")
        chosen = self.chosen_sites(sites, params)
        if not chosen:
            raise RecipeError(f"tied_weights: none of the targeted sites is of the parts {params['parts']}; "
                              f"sites here are {sorted({_part(s) for s in sites})}")
        if params["share_middle"] and not any(isinstance(s, BlockSite) and s.kind == "bottleneck" for s in chosen):
            kinds = sorted({s.kind + " blocks" if isinstance(s, BlockSite) else _part(s) for s in chosen})
            raise RecipeError(f"tied_weights.share_middle: the targeted sites ({', '.join(kinds)}) have no middle "
                              "conv to share (only bottleneck blocks do); set tied_weights.share_middle=false")

    # --- plan ----------------------------------------------------------------------------------------------------
    @classmethod
    def calibration_needed(cls, params: dict[str, Any]) -> str | None:
        if params["init"] != "data_aware":
            return None
        return ("tied_weights.init: data_aware needs calibration data: pass --calib DATA, or set "
                "tied_weights.init=closed_form")

    def plan(self, adapter: ModelAdapter, sites: list, params: dict[str, Any],
             context: PassContext) -> dict[str, dict[str, Any]]:
        self.require_calibration(params, context)
        chosen = self.chosen_sites(sites, params)
        layout = plan_ties(adapter, chosen, params["share"], params["share_middle"])
        if not layout.ties:
            reasons = "; ".join(f"{site}: {why[0]}" for site, why in list(layout.untied.items())[:2])
            raise RecipeError(f"tied_weights: no weight of the targeted sites can be tied ({reasons})")
        plan = layout_to_plan(layout, chosen)
        ties = ties_from_plan(plan)
        # initialise() runs after rewrite: keep what it needs from the original model now
        self._weights = {slot.module: adapter.module(slot.module).weight.detach().clone()
                         for tie in ties for slot in tie.slots}
        self._units = [self._unit(site) for site in chosen if any(k != UNTIED for k in plan[site.name])]
        self._initialisation: dict[str, dict[str, Any]] = {}
        if context.calibration:
            _log(f"tied_weights: recording {len(self._units)} units on calibration data", context.progress)
            record_units(adapter, self._units, context.calibration)
        return plan

    @staticmethod
    def _unit(site) -> Unit:
        if isinstance(site, FFNSite):
            return Unit(site.name, site.name, site.fc2, per_token=True)
        if isinstance(site, AttentionSite):
            return Unit(site.name, site.name, site.output, per_token=False)
        return Unit(site.name, site.name, site.name, per_token=False)

    # --- rewrite -------------------------------------------------------------------------------------------------
    def rewrite(self, adapter: ModelAdapter, sites: list, params: dict[str, Any],
                plan: dict[str, dict[str, Any]], seed: int) -> None:
        self._plan = plan
        _, fused, borrows = plan_entries(plan)
        for name in fused:
            qkv = _module(adapter, name)
            if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * qkv.in_features:
                raise RecipeError(f"tied_weights.plan: {name} is not a fused qkv Linear with three square blocks; "
                                  "the plan comes from another model")
            rows = qkv.in_features
            replace_module(adapter.model, name, TiedQKV(qkv.weight[:rows], qkv.weight[rows:2 * rows], qkv.bias))
        for borrow in borrows:
            owner, layer = _module(adapter, borrow.owner), _module(adapter, borrow.module)
            if not isinstance(getattr(owner, borrow.parameter, None), nn.Parameter):
                raise RecipeError(f"tied_weights.plan: {borrow.module} borrows {borrow.owner}.{borrow.parameter}, "
                                  "which is not a parameter of this model; the plan comes from another model")
            source = BorrowedWeight(owner, borrow.parameter, borrow.transposed)
            if not isinstance(layer, (nn.Linear, nn.Conv2d)) or tuple(source().shape) != tuple(layer.weight.shape):
                raise RecipeError(f"tied_weights.plan: {borrow.module} cannot borrow {source!r} (shape "
                                  f"{tuple(source().shape)}); the plan comes from another model")
            tied = TiedLinear(source, layer.bias) if isinstance(layer, nn.Linear) else TiedConv2d(source, layer)
            replace_module(adapter.model, borrow.module, tied)

    # --- initialise ----------------------------------------------------------------------------------------------
    def initialise(self, adapter: ModelAdapter, sites: list, params: dict[str, Any],
                   plan: dict[str, dict[str, Any]], context: PassContext) -> None:
        ties = ties_from_plan(plan)
        closed_form(adapter, ties, self._weights)
        fitting = params["init"] != "closed_form" and params["fit_steps"] > 0
        for group_ties, units in _components(ties, self._units):
            units = [unit for unit in units if unit.records]
            if not units:
                continue
            closed = {unit.site: held_out_error(adapter, unit) for unit in units}
            entry = {site: {"closed_form": round(error, 6)} for site, error in closed.items()}
            chosen = "closed_form"
            if fitting:
                _log(f"tied_weights: fitting {', '.join(u.site for u in units)}", context.progress)
                parameters = trainable_parameters(adapter, group_ties)
                saved = [p.detach().clone() for p in parameters]
                fit_units(adapter, units, parameters, params["fit_steps"], params["fit_lr"], params["fit_tokens"],
                          context.seed)
                fitted = {unit.site: held_out_error(adapter, unit) for unit in units}
                for site, error in fitted.items():
                    entry[site]["data_aware"] = round(error, 6)
                chosen = "data_aware"
                if params["init"] == "best" and sum(fitted.values()) > sum(closed.values()):
                    for parameter, value in zip(parameters, saved):
                        parameter.data.copy_(value)
                    chosen = "closed_form"
            for unit in units:
                entry[unit.site]["chosen"] = chosen
                entry[unit.site]["held_out"] = len(split_records(unit.records)[1]) < len(unit.records)
            self._initialisation.update(entry)
        del self._weights, self._units

    # --- report --------------------------------------------------------------------------------------------------
    def statistics(self, adapter: ModelAdapter, sites: list) -> dict[str, Any]:
        initialisation = getattr(self, "_initialisation", {})
        plan = getattr(self, "_plan", {})
        untied = {site: settings[UNTIED] for site, settings in plan.items() if UNTIED in settings}
        tied = sum(any(key != UNTIED for key in settings) for settings in plan.values())
        summary: dict[str, Any] = {"tied sites": f"{tied} of {len(plan)}"}
        for init in ("closed_form", "data_aware"):
            errors = [e[init] for e in initialisation.values() if init in e]
            if errors:
                summary[f"mean rel. error {init}"] = round(sum(errors) / len(errors), 4)
        if initialisation:
            summary["chosen"] = ", ".join(sorted({e["chosen"] for e in initialisation.values()}))
        return {"untied": untied, "initialisation": initialisation, "summary": summary}


def _module(adapter: ModelAdapter, name: str) -> nn.Module:
    try:
        return adapter.module(name)
    except AttributeError:
        raise RecipeError(f"tied_weights.plan names {name!r}, which is not a module of this model; the plan comes "
                          "from another model") from None


def _components(ties: list[Tie], units: list[Unit]) -> list[tuple[list[Tie], list[Unit]]]:
    """Groups of ties and units that share a weight (a stage shared across blocks is one group)."""
    parent: dict[str, str] = {}

    def find(site: str) -> str:
        while parent.setdefault(site, site) != site:
            site = parent[site]
        return site

    for tie in ties:
        for slot in tie.slots[1:]:
            parent[find(slot.site)] = find(tie.owner.site)
    grouped_ties: dict[str, list[Tie]] = defaultdict(list)
    grouped_units: dict[str, list[Unit]] = defaultdict(list)
    for tie in ties:
        grouped_ties[find(tie.owner.site)].append(tie)
    for unit in units:
        grouped_units[find(unit.site)].append(unit)
    return [(grouped_ties[root], grouped_units[root]) for root in grouped_ties]


def _log(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
