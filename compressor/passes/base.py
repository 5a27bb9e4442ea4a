"""What a rewriting pass is: a named set of parameters, a choice of sites, a plan, a rewrite, statistics.

A pass runs in two steps so that a compressed model can be rebuilt exactly on reload:

1. `plan` decides the per-site settings (and may calibrate on data): `{site_name: {setting: value}}`.
   The plan is written into the resolved recipe, so it is plain YAML-able data. Planning leaves the model exactly
   as it was (weights, modules, settings): a pass that must try its rewrite to decide does so on a scratch copy
   (`scratch_adapter`).
2. `rewrite` changes the model's structure from the parameters and the plan alone, deterministically from the seed;
   `initialise` then sets the new weights from what planning kept (never on reload).

On reload, only `rewrite` runs (with the plan read back from `recipe.yaml`), then the saved weights are loaded.
A pass sees the model only through its adapter.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from compressor.errors import RecipeError
from compressor.models.base import ModelAdapter

#: the value of `targets` that means "where this pass belongs in this family" (resolved by the adapter's sites)
AUTO = "auto"


@dataclass(frozen=True)
class Param:
    """One recipe parameter of a pass: its type, default, bounds and documentation.

    `type` is one of "int", "float", "bool", "str", "list[str]", "list[float]", "list[int]". Bounds are inclusive
    (`minimum`, `maximum`) or exclusive (`greater_than`). `nullable` allows `null` (meaning "off").
    """

    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    greater_than: float | None = None
    nullable: bool = False

    def describe_allowed(self) -> str:
        """Human text for "what is allowed", used in error messages and the docs."""
        if self.choices is not None:
            allowed = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            noun = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                    "list[str]": "a list of strings", "list[float]": "a list of numbers",
                    "list[int]": "a list of integers"}[self.type]
            bounds = []
            if self.greater_than is not None:
                bounds.append(f"> {self.greater_than:g}")
            if self.minimum is not None:
                bounds.append(f">= {self.minimum:g}")
            if self.maximum is not None:
                bounds.append(f"<= {self.maximum:g}")
            allowed = noun + (" " + " and ".join(bounds) if bounds else "")
        return allowed + (", or null" if self.nullable else "")


#: parameters every pass has
COMMON_PARAMS: dict[str, Param] = {
    "targets": Param(
        "list[str]", [AUTO],
        "Which sites to rewrite: `auto` (the pass's natural sites for the model's family), a module name, a glob "
        "(`encoder.layers.*.self_attn`) or a regex prefixed with `re:`."),
    "ignore": Param(
        "list[str]", [],
        "Sites to leave alone, with the same patterns as `targets`."),
}


def scratch_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """An adapter over a deep copy of the model: where `plan` may try a rewrite (calibrate kernels, run the pruner)
    and leave the model itself as it was. Sites are named, so they name the same modules in the copy."""
    return type(adapter)(copy.deepcopy(adapter.model), adapter.processor)


@dataclass
class PassContext:
    """What a pass may use while planning: calibration inputs, the example input the report measures on, the seed,
    and whether to show progress."""

    seed: int = 0
    calibration: list[dict[str, torch.Tensor]] | None = None
    progress: bool = True
    calibration_source: str | None = None
    example: dict[str, torch.Tensor] | None = None


@dataclass
class PassOutcome:
    """What applying a pass produced: the plan (for the resolved recipe) and numbers for the report."""

    plan: dict[str, dict[str, Any]]
    sites: list[str]
    notes: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    """Base class of all rewriting passes."""

    #: the name used in recipes (`act`, `token_merge`, ...)
    name: ClassVar[str]
    #: one line for `cli.py recipes` and the docs
    summary: ClassVar[str]
    #: the pass's own parameters (COMMON_PARAMS are added to every pass)
    params: ClassVar[dict[str, Param]]
    #: what kind of site the targets select from: "attention", "ffn" or "block"
    site_kind: ClassVar[str]
    #: what the pass replaces outright at a site (e.g. "attention_kernel"); two passes replacing the same thing at
    #: the same site conflict, and the recipe is rejected before anything runs
    replaces: ClassVar[str | None] = None
    #: passes this one cannot run after anywhere in the same recipe, each with the reason (one line, saying which
    #: order works); checked before anything runs (`compressor.pass_order`)
    cannot_follow: ClassVar[dict[str, str]] = {}

    @classmethod
    def all_params(cls) -> dict[str, Param]:
        return {**COMMON_PARAMS, **cls.params}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {key: param.default for key, param in cls.all_params().items()}

    # --- sites -------------------------------------------------------------------------------------------------
    @abstractmethod
    def candidate_sites(self, adapter: ModelAdapter) -> list:
        """Every site of `adapter`'s model this pass could rewrite."""

    @abstractmethod
    def default_sites(self, adapter: ModelAdapter, candidates: list) -> list:
        """The sites `targets: [auto]` means for this family."""

    def check_settings(self, adapter: ModelAdapter, sites: list, params: dict[str, Any]) -> None:
        """Raise RecipeError (one line: the setting, why it cannot apply here, the fix) for a setting that cannot
        apply to these sites, rather than ignore it. Run once per recipe, before anything slow."""

    # --- calibration data ---------------------------------------------------------------------------------------
    @classmethod
    def calibration_needed(cls, params: dict[str, Any]) -> str | None:
        """The one-line error (what needs it, how to do without) when planning with `params` needs calibration
        data, else None. Checked before the model loads (`pipeline.check_calibration_given`) and in `plan`."""
        return None

    def require_calibration(self, params: dict[str, Any], context: PassContext) -> None:
        """Raise `calibration_needed`'s error when `context` holds no calibration data."""
        message = self.calibration_needed(params)
        if message is not None and not context.calibration:
            raise RecipeError(message)

    # --- the two steps -----------------------------------------------------------------------------------------
    @abstractmethod
    def plan(self, adapter: ModelAdapter, sites: list, params: dict[str, Any],
             context: PassContext) -> dict[str, dict[str, Any]]:
        """Per-site settings, possibly calibrated on `context.calibration`; the model is left as it was."""

    @abstractmethod
    def rewrite(self, adapter: ModelAdapter, sites: list, params: dict[str, Any],
                plan: dict[str, dict[str, Any]], seed: int) -> None:
        """Change the model in place, from parameters and plan only (deterministic given `seed`)."""

    def initialise(self, adapter: ModelAdapter, sites: list, params: dict[str, Any],
                   plan: dict[str, dict[str, Any]], context: PassContext) -> None:
        """Set new weights from the original model's, after `rewrite`, when this run planned.

        Never called on reload, where every weight comes from the saved file (tied weights fitted here).
        """

    def conflict(self, adapter: ModelAdapter, sites: list, params: dict[str, Any], other: Pass,
                 other_sites: list) -> str | None:
        """Why this pass cannot share the model with `other` at these sites, in either order (None: it can)."""
        return None

    def statistics(self, adapter: ModelAdapter, sites: list) -> dict[str, Any]:
        """Numbers for the report, gathered after a forward pass of the rewritten model."""
        return {}

    def reset_statistics(self, adapter: ModelAdapter, sites: list) -> None:
        """Forget what earlier forwards recorded, before a measured forward."""
