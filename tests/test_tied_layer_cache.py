"""Tied layers at inference: the derived weight (transpose, flipped kernel, fused qkv) is built once and reused
while its source parameters are unchanged; in training it is built every forward so gradients reach the owner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.ops.tied_layers import BorrowedWeight, TiedConv2d, TiedLinear, TiedQKV


class TiedPair(nn.Module):
    """A layer and its tied adjoint, as tied_weights builds them."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        if kind == "conv":
            self.first = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.second = TiedConv2d(BorrowedWeight(self.first, "weight", True), nn.Conv2d(8, 8, 3, padding=1))
            self.example = torch.randn(2, 8, 6, 6)
        elif kind == "linear":
            self.first = nn.Linear(8, 16)
            self.second = TiedLinear(BorrowedWeight(self.first, "weight", True), torch.randn(8))
            self.example = torch.randn(2, 8)
        else:
            self.first = nn.Identity()
            self.second = TiedQKV(torch.randn(8, 8), torch.randn(8, 8), torch.randn(24))
            self.example = torch.randn(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))

    def derived(self):
        return self.second.derived if isinstance(self.second, TiedQKV) else self.second.source.derived


KINDS = ["conv", "linear", "qkv"]


@pytest.mark.parametrize("kind", KINDS)
def test_cached_and_rebuilt_derived_weights_give_identical_outputs(kind):
    model = TiedPair(kind).eval()
    with torch.enable_grad():  # parameters need gradients: rebuilt every forward, nothing cached
        rebuilt = model(model.example).detach()
    assert model.derived().value is None
    with torch.no_grad():
        first = model(model.example)
        cached = model.derived().value
        second = model(model.example)
    assert cached is not None and model.derived().value is cached  # built once, then reused
    assert torch.equal(first, rebuilt) and torch.equal(second, rebuilt)


@pytest.mark.parametrize("kind", KINDS)
def test_an_optimizer_step_in_training_reaches_the_next_inference(kind):
    model = TiedPair(kind)
    model.eval()
    with torch.no_grad():
        before = model(model.example)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(model.example).square().mean().backward()
    owner = model.second.weight_kv if kind == "qkv" else model.first.weight
    assert owner.grad is not None and owner.grad.abs().sum() > 0  # gradients flow through the derived weight
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(model.example)
    with torch.enable_grad():
        expected = model(model.example).detach()
    assert not torch.allclose(after, before)
    assert torch.equal(after, expected)


def test_loading_weights_invalidates_the_cache():
    model = TiedPair("conv").eval()
    with torch.no_grad():
        model(model.example)
        state = {key: value + 1 for key, value in model.state_dict().items()}
        model.load_state_dict(state)
        after = model(model.example)
    with torch.enable_grad():
        expected = model(model.example).detach()
    assert torch.equal(after, expected)
