"""The rewriting passes, by the name recipes use."""

from __future__ import annotations

from compressor.passes.act import ACTPass
from compressor.passes.prune import PrunePass
from compressor.passes.quantize import QuantizePass
from compressor.passes.base import AUTO, COMMON_PARAMS, Param, Pass, PassContext, PassOutcome
from compressor.passes.tied_weights import TiedWeightsPass
from compressor.passes.token_clip import TokenClipPass
from compressor.passes.token_merge import TokenMergePass

PASSES: dict[str, type[Pass]] = {cls.name: cls for cls in [ACTPass, TokenMergePass, TokenClipPass, TiedWeightsPass,
                                                                  PrunePass, QuantizePass]}

__all__ = ["AUTO", "COMMON_PARAMS", "PASSES", "Param", "Pass", "PassContext", "PassOutcome"]
