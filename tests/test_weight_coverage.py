"""The bound on a model's size from its weights' headers counts what construction registers, once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import SourceError
from compressor.models.weight_coverage import bounded_by_weights


def test_loading_that_assigns_every_parameter_again_is_not_counted_twice():
    """transformers 5 builds on the meta device and then sets every parameter: the full-size DETR-R50 (timm
    ResNet-50 with its unused classifier, 43.6 M values built, 41.5 M in the file) was refused as larger than its
    weights when the assignments were counted as well."""
    with bounded_by_weights((2, 3_000_000), "a checkpoint"):
        layer = nn.Linear(1000, 3000)
        for _ in range(3):  # what loading does, slot by slot
            layer.weight = nn.Parameter(torch.zeros(3000, 1000))
            layer.bias = nn.Parameter(torch.zeros(3000))


def test_a_model_far_larger_than_its_weights_is_still_refused():
    with pytest.raises(SourceError, match="describes a model larger than its weights"):
        with bounded_by_weights((2, 1000), "a checkpoint"):
            nn.Sequential(*(nn.Linear(1000, 1000) for _ in range(3)))
