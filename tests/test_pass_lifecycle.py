"""The pass lifecycle: `plan` decides and leaves the model exactly as it was, `rewrite` changes it; the recipe is
checked once per compress and each pass object is built once."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor import pipeline
from compressor.passes import PASSES, PassContext
from compressor.recipe import Recipe
from compressor.sources import load_source


def _state(model: torch.nn.Module) -> dict:
    """Everything planning must not change: weights and buffers, module structure, settings, gradients, mode."""
    config = getattr(model, "config", None)
    return {
        "tensors": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        "modules": [(name, type(module).__name__) for name, module in model.named_modules()],
        "repr": repr(model),
        "attention": getattr(config, "_attn_implementation", None),
        "grads": [name for name, parameter in model.named_parameters() if parameter.grad is not None],
        "training": [module.training for module in model.modules()],
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, tensor in before["tensors"].items():
        assert torch.equal(tensor, after["tensors"][name]), name
    for key in ("modules", "repr", "attention", "grads", "training"):
        assert after[key] == before[key], key


@pytest.mark.parametrize("fixture, name, params", [
    ("hf_vit_dir", "act", {"rounds": 8, "fidelity_target": 0.9, "bucket_widths": [2.0, 8.0]}),
    ("hf_vit_dir", "act", {}),
    ("hf_vit_dir", "prune", {"ratio": 0.5}),
    ("hf_vit_dir", "prune", {"ratio": 0.5, "importance": "taylor", "attention": "heads"}),
    ("hf_resnet_dir", "prune", {"ratio": 0.5}),
    ("hf_vit_dir", "tied_weights", {"fit_steps": 2}),
    ("hf_resnet_dir", "tied_weights", {"init": "closed_form"}),
    ("hf_vit_dir", "token_merge", {"r": 2}),
    ("hf_vit_dir", "token_clip", {}),
])
def test_plan_leaves_the_model_exactly_as_it_was(fixture, name, params, request):
    loaded = load_source(request.getfixturevalue(fixture))
    recipe = Recipe.from_dict({"compress_stage": {name: params}})
    [step] = pipeline.fit_recipe(loaded, recipe)
    calibration = [loaded.adapter.example_inputs(batch_size=2, seed=seed) for seed in (1, 2)]
    before = _state(loaded.model)
    plan = step.rewriter.plan(loaded.adapter, step.sites, step.spec.params,
                              PassContext(seed=0, calibration=calibration, progress=False))
    assert plan is not None
    _assert_same(before, _state(loaded.model))


def test_compress_checks_the_recipe_once_and_builds_each_pass_once(hf_vit_dir, monkeypatch):
    built: dict[str, int] = {}
    for name, cls in list(PASSES.items()):
        counting = type(cls.__name__, (cls,), {
            "__init__": lambda self, _cls=cls: (built.__setitem__(_cls.name, built.get(_cls.name, 0) + 1),
                                                _cls.__init__(self))[1]})
        monkeypatch.setitem(PASSES, name, counting)
    fits = []
    real_fit = pipeline.fit_recipe
    monkeypatch.setattr(pipeline, "fit_recipe", lambda *args, **kwargs: fits.append(1) or real_fit(*args, **kwargs))
    recipe = Recipe.from_dict({"compress_stage": {"prune": {"ratio": 0.25}, "act": {"rounds": 8},
                                                  "token_merge": {"r": 1}}})
    result = compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    assert [entry["name"] for entry in result.report["passes"]] == ["prune", "act", "token_merge"]
    assert built == {"prune": 1, "act": 1, "token_merge": 1}
    assert len(fits) == 1


def test_a_later_pass_sees_the_sites_as_earlier_passes_left_them(hf_vit_dir):
    """Sites are chosen once, before any pass runs; prune then halves the head size act's kernels are built for."""
    result = compressor.compress(hf_vit_dir, Recipe.from_dict({"compress_stage": {
        "prune": {"ratio": 0.5}, "act": {"rounds": 8}}}), progress=False, latency_runs=1)
    kernels = [m for m in result.model.modules() if type(m).__name__ == "ACTKernel"]
    assert kernels and all(kernel.head_dim == 4 for kernel in kernels)  # 32 wide, 4 heads: 8 -> 4 per head
