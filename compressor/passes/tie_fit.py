"""Initialising tied weights from a pretrained model: the closed-form closest tie, and a data-aware fit.

Closed form: the W closest (in Frobenius norm) to every weight it replaces, each seen in W's orientation, is their
mean: W = (W1 + W2ᵀ)/2 for a pair, the mean over all members for a stage. A checkpoint that already satisfies the
tie is left exactly as it was.

Data-aware: each tied unit (an FFN, an attention module, a residual block) is a function whose output the original
model computed on calibration inputs. The inputs each unit received and the outputs it produced are recorded on the
original model (teacher forcing: a unit sees the original inputs, so errors do not compound while fitting); then
the shared weights and the tied layers' biases are fitted with Adam to minimise the units' relative squared output
error, starting from the closed form. FFNs act on tokens independently, so each step samples tokens from all
recorded ones; other units take one recorded mini-batch per step. A held-out part of the recordings measures the
relative error ||y - y_orig|| / ||y_orig|| of both initialisations per site, and the better one can be kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from compressor.models.base import ModelAdapter
from compressor.ops.tied_layers import adjoint
from compressor.passes.tie_layout import FUSED_PARAMS, Tie

#: examples per recorded forward: small mini-batches so some can be held out
RECORD_BATCH = 8


@dataclass
class Unit:
    """A function of the model whose output tying changes: call `module`, read `tap`'s output.

    `tap` may sit inside `module` (a ViT attention and its output projection) or after it (BERT's `output.dense`
    after `attention.self`): then it is applied to the module's output. `per_token` units (FFNs) map each token alone.
    """

    site: str
    module: str
    tap: str
    per_token: bool
    records: list[tuple[tuple, dict, torch.Tensor]] = field(default_factory=list)
    problem: str | None = None


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def run_unit(adapter: ModelAdapter, unit: Unit, args: tuple, kwargs: dict) -> torch.Tensor:
    """The unit's output for recorded inputs, computed by the model's current modules."""
    module, tap = adapter.module(unit.module), adapter.module(unit.tap)
    captured: list = []
    handle = tap.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        result = module(*args, **kwargs)
        if not captured:
            tap(_first_tensor(result))
    finally:
        handle.remove()
    return _first_tensor(captured[0])


def mini_batches(batches: list[dict[str, torch.Tensor]], size: int = RECORD_BATCH) -> list[dict[str, torch.Tensor]]:
    """The calibration batches cut into mini-batches of `size` examples (every tensor sliced along its batch)."""
    out = []
    for batch in batches:
        count = next(v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0).shape[0]
        for start in range(0, count, size):
            out.append({k: v[start:start + size] if isinstance(v, torch.Tensor) and v.dim() > 0 and
                        v.shape[0] == count else v for k, v in batch.items()})
    return out


@torch.no_grad()
def record_units(adapter: ModelAdapter, units: list[Unit], batches: list[dict[str, torch.Tensor]]) -> None:
    """Record every unit's inputs and output on the (original) model, one entry per mini-batch forward."""
    handles = []
    seen: dict[int, list] = {id(unit): [[], []] for unit in units}
    for unit in units:
        inputs, outputs = seen[id(unit)]
        handles.append(adapter.module(unit.module).register_forward_pre_hook(
            lambda _m, args, kwargs, store=inputs: store.append((_detached(args), _detached(kwargs))),
            with_kwargs=True))
        handles.append(adapter.module(unit.tap).register_forward_hook(
            lambda _m, _i, output, store=outputs: store.append(_first_tensor(output).detach())))
    try:
        for batch in mini_batches(batches):
            adapter.model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    for unit in units:
        inputs, outputs = seen[id(unit)]
        if len(inputs) != len(outputs) or not inputs:
            unit.problem = f"{unit.module} ran {len(inputs)} times but its output {unit.tap} {len(outputs)} times"
            continue
        unit.records = [(args, kwargs, target) for (args, kwargs), target in zip(inputs, outputs)]
        args, kwargs, target = unit.records[0]
        replay = run_unit(adapter, unit, args, kwargs)
        if replay.shape != target.shape or _relative_error([(replay, target)]) > 1e-4:
            unit.problem = f"replaying {unit.module} on its recorded inputs does not reproduce {unit.tap}"
            unit.records = []


def _relative_error(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    error = sum(float((y - t).double().pow(2).sum()) for y, t in pairs)
    norm = sum(float(t.double().pow(2).sum()) for _, t in pairs)
    return math.sqrt(error / norm) if norm > 0 else math.sqrt(error)


def split_records(records: list) -> tuple[list, list]:
    """(fit, held out): the last quarter is held out; a single recording serves both (said in the report)."""
    if len(records) < 2:
        return records, records
    held = max(1, len(records) // 4)
    return records[:-held], records[-held:]


@torch.no_grad()
def held_out_error(adapter: ModelAdapter, unit: Unit) -> float | None:
    if not unit.records:
        return None
    _, held = split_records(unit.records)
    return _relative_error([(run_unit(adapter, unit, args, kwargs), target) for args, kwargs, target in held])


# --- closed form -------------------------------------------------------------------------------------------------

def slot_weight(weights: dict[str, torch.Tensor], module: str, part: str) -> torch.Tensor:
    """The original weight of a slot: a module's weight, or one row block of a fused qkv weight."""
    weight = weights[module]
    if part == "weight":
        return weight
    rows = weight.shape[0] // 3
    index = "qkv".index(part)
    return weight[index * rows:(index + 1) * rows]


def owner_parameter(adapter: ModelAdapter, tie: Tie) -> nn.Parameter:
    owner = tie.owner
    return getattr(adapter.module(owner.module), FUSED_PARAMS.get(owner.part, "weight"))


@torch.no_grad()
def closed_form(adapter: ModelAdapter, ties: list[Tie], weights: dict[str, torch.Tensor]) -> None:
    """Set each tie's shared weight to the mean of the original weights it replaces, in the owner's orientation."""
    for tie in ties:
        owner = tie.owner
        members = [slot_weight(weights, slot.module, slot.part) for slot in tie.slots]
        oriented = [adjoint(w) if slot.transposed != owner.transposed else w for slot, w in zip(tie.slots, members)]
        owner_parameter(adapter, tie).copy_(torch.stack(oriented).mean(0))


# --- data-aware ----------------------------------------------------------------------------------------------------

def trainable_parameters(adapter: ModelAdapter, ties: list[Tie]) -> list[nn.Parameter]:
    """The shared weights of `ties` and the biases of every layer in them."""
    found: dict[int, nn.Parameter] = {}
    for tie in ties:
        parameter = owner_parameter(adapter, tie)
        found[id(parameter)] = parameter
        for slot in tie.slots:
            bias = getattr(adapter.module(slot.module), "bias", None)
            if isinstance(bias, nn.Parameter):
                found[id(bias)] = bias
    return list(found.values())


def _token_pool(unit: Unit, fit: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All recorded (input, output) tokens of a per-token unit, or None when it takes more than one input."""
    if not unit.per_token or any(len(args) != 1 or kwargs for args, kwargs, _ in fit):
        return None
    inputs = torch.cat([args[0].reshape(-1, args[0].shape[-1]) for args, _, _ in fit])
    targets = torch.cat([target.reshape(-1, target.shape[-1]) for _, _, target in fit])
    return inputs, targets


def fit_units(adapter: ModelAdapter, units: list[Unit], parameters: list[nn.Parameter], steps: int, lr: float,
              tokens: int, seed: int) -> None:
    """Adam on the mean relative squared error of `units`, from the current (closed-form) weights."""
    generator = torch.Generator().manual_seed(seed)
    plans: list[Callable[[int], tuple[tuple, dict, torch.Tensor]]] = []
    for unit in units:
        fit, _ = split_records(unit.records)
        pool = _token_pool(unit, fit)
        if pool is not None:
            def sample(step, pool=pool):
                index = torch.randint(pool[0].shape[0], (min(tokens, pool[0].shape[0]),), generator=generator)
                return (pool[0][index].unsqueeze(0),), {}, pool[1][index].unsqueeze(0)
            plans.append(sample)
        else:
            plans.append(lambda step, fit=fit: fit[step % len(fit)])
    optimiser = torch.optim.Adam(parameters, lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss = 0.0
            for unit, draw in zip(units, plans):
                args, kwargs, target = draw(step)
                output = run_unit(adapter, unit, args, kwargs)
                loss = loss + (output - target).pow(2).sum() / target.pow(2).sum().clamp(min=1e-12)
            (loss / len(units)).backward()
            optimiser.step()
