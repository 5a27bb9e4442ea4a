"""Drive Torch-Pruning's dependency graph for the `prune` pass: which coupled channel groups may shrink, and how.

Torch-Pruning traces the model once and groups every set of channels that must be removed together (a linear
layer's outputs, the next layer's inputs, the LayerNorm between them, the residual stream through every block,
a class token...). This module decides which of those groups the recipe allows, runs the pruner with the chosen
importance, and then fixes what the graph cannot know: the head counts and head sizes attention modules reshape
with, and per-head parameters (Swin's relative position bias tables) that must lose the columns of removed heads.

A group may shrink when every layer it touches lies in one targeted module (an FFN's hidden width, an attention's
heads, a bottleneck's inner channels), or, with `hidden: true`, when it carries the width shared between blocks
(the residual stream, Torch-Pruning's "uniform" setting) and removes outputs of a layer in a targeted module.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from compressor.errors import CompressorError, RecipeError
from compressor.models.base import AttentionSite, ModelAdapter
from compressor.passes.prune_layers import customized_pruners, opaque_layers

#: the layer types whose output channels root a pruning group
ROOT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class HeadLayout:
    """One attention module as the pruner sees it: its projections and the per-head parameters beside them."""

    site: AttentionSite
    query: nn.Module
    projections: list[nn.Module]
    #: parameters indexed by head (name, parameter, dimension), sliced by hand after pruning
    per_head: list[tuple[str, nn.Parameter, int]] = field(default_factory=list)
    #: every parameter of the module outside its projections: the graph must not guess how to prune them
    loose: list[nn.Parameter] = field(default_factory=list)

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1


@dataclass
class PruneResult:
    """What a pruning run did beyond the widths: layers left alone because the trace could not follow them
    (never reached, or coupled through an operation it cannot map), heads per attention module."""

    untraced: list[str]
    heads: dict[str, int]
    head_dims: dict[str, int]


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def site_of(name: str, targets: list[str]) -> str | None:
    """The outermost targeted module containing module `name`, or None.

    Outermost, so that a pattern matching a module and everything inside it (`re:model\\.backbone\\.`) means
    "prune inside that module", as naming the module alone does.
    """
    matches = [target for target in targets if _inside(name, target)]
    return min(matches, key=len) if matches else None


def refuse_attention_kernels(adapter: ModelAdapter, targets: list[str]) -> None:
    """Refuse to prune where an attention kernel (act) already sits inside a targeted module: kernels are sized
    for the unpruned heads. Kernels outside the targets are left alone with their unchanged widths."""
    for name, _ in adapter.model.named_modules():
        if name.endswith(".attention_kernel") and site_of(name, targets) is not None:
            raise RecipeError(f"prune must run before the pass that installed {name} (e.g. act): attention "
                              f"kernels are sized for the unpruned heads; put prune first in the recipe, or leave "
                              f"{site_of(name, targets)} out with prune.ignore")


def head_layouts(adapter: ModelAdapter, targets: list[str]) -> list[HeadLayout]:
    """The attention modules inside the targeted modules, with their projections and per-head parameters."""
    layouts = []
    for site in adapter.all_attention_sites():
        if site_of(site.name, targets) is None:
            continue
        names = [site.query] if site.fused_qkv else [site.query, site.key, site.value]
        projections = [adapter.module(name) for name in names]
        projection_params = {id(p) for name in names + [site.output] for p in adapter.module(name).parameters()}
        per_head, loose = [], []
        for name, parameter in adapter.module(site.name).named_parameters():
            if id(parameter) in projection_params:
                continue
            loose.append(parameter)
            head_dims = [d for d, size in enumerate(parameter.shape) if size == site.num_heads]
            if head_dims and site.num_heads > 1:
                per_head.append((f"{site.name}.{name}", parameter, head_dims[-1]))
        layouts.append(HeadLayout(site, projections[0], projections, per_head, loose))
    return layouts


def _quiet_build(build: Callable[[], Any]) -> Any:
    """Torch-Pruning warns and prints while tracing; the report carries what matters."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return build()


def _out_modules(graph, group) -> list[nn.Module]:
    return [dep.target.module for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module)]


def blocked_roots(graph, names: dict[nn.Module, str], targets: list[str], *, hidden: bool,
                  attention_projections: set[nn.Module], ffn_inputs: set[nn.Module], prune_attention: bool,
                  prune_ffn: bool) -> tuple[list[nn.Module], list[str]]:
    """Root layers to hand Torch-Pruning as ignored, so that only the groups the recipe allows are pruned.

    A group is internal when every layer it touches (outputs or inputs) lies in one targeted module; any other
    group carries a width shared with the rest of the model and needs `hidden`.

    Torch-Pruning skips a group when any layer whose outputs it removes is ignored, so ignoring every output
    layer of a disallowed group vetoes exactly that group.

    A group whose output layers have different widths was joined through an operation the trace maps as the
    identity although it is not (the zero-padded shortcut of CIFAR ResNets adds channels at an offset): it is
    never pruned, and its output layers are returned by name as unmapped, for the report.
    """
    blocked: list[nn.Module] = []
    unmapped: list[str] = []
    for group in graph.get_all_groups(root_module_types=ROOT_TYPES):
        outputs = [module for module in _out_modules(graph, group) if module in names]  # not traced ops
        members = [dep.target.module for dep, _ in group if dep.target.module in names]
        sites = {site_of(names[module], targets) for module in members}
        internal = len(sites) == 1 and None not in sites
        allowed = internal or (hidden and any(site_of(names[module], targets) for module in outputs))
        if any(module in attention_projections for module in outputs) and not prune_attention:
            allowed = False
        if any(module in ffn_inputs for module in outputs) and not prune_ffn:
            allowed = False
        if allowed and len({graph.get_out_channels(module) for module in outputs}) > 1:
            allowed = False
            unmapped += [names[module] for module in outputs if isinstance(module, ROOT_TYPES)]
        if not allowed:
            blocked += [module for module in outputs if isinstance(module, ROOT_TYPES)]
    return blocked, sorted(set(unmapped))


def head_ratios(layouts: list[HeadLayout], ratio: float) -> dict[nn.Module, float]:
    """Per attention module, a head ratio that removes floor(ratio × heads) heads and never the last one.

    Torch-Pruning removes ceil(ratio × heads): at ratio 0.3 that is 2 of 4 heads, and the only head of a
    one-head Swin stage (a division by zero later). ceil(k - 0.5) = k for whole k.
    """
    ratios = {}
    for layout in layouts:
        heads = layout.site.num_heads
        removed = min(int(ratio * heads + 1e-9), heads - 1)
        for projection in layout.projections:
            ratios[projection] = (removed - 0.5) / heads if removed > 0 else 0.0
    return ratios


def importance_criterion(kind: str):
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def taylor_loss(adapter: ModelAdapter, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss whose gradients Taylor importance uses, without labels.

    Classifiers: cross-entropy against their own predictions (the labels a calibration set lacks). Other models:
    the energy of the primary output (boxes and logits for DETR), so channels that move it most rank highest.
    """
    prediction = adapter.primary_output(outputs, inputs)
    if adapter.task == "image-classification" and prediction.dim() == 2:
        return nn.functional.cross_entropy(prediction, prediction.argmax(dim=1).detach())
    return 0.5 * prediction.pow(2).mean()


def accumulate_gradients(adapter: ModelAdapter, batches: list[dict[str, torch.Tensor]]) -> None:
    model = adapter.model
    model.zero_grad(set_to_none=True)
    for batch in batches:
        taylor_loss(adapter, model(**batch), batch).backward()


def removed_heads(layout: HeadLayout, pruned: list[int]) -> list[int]:
    """Heads all of whose query channels were removed (indices into the heads before pruning)."""
    heads, head_dim = layout.site.num_heads, layout.site.head_dim
    gone = set(pruned)
    return [h for h in range(heads) if all(h * head_dim + d in gone for d in range(head_dim))]


def slice_per_head(layout: HeadLayout, removed: list[int]) -> None:
    """Drop the removed heads from the attention's per-head parameters, in place."""
    if not removed:
        return
    keep = [h for h in range(layout.site.num_heads) if h not in set(removed)]
    for _, parameter, dim in layout.per_head:
        parameter.data = parameter.data.index_select(dim, torch.tensor(keep, device=parameter.device)).contiguous()


def set_head_attributes(module: nn.Module, heads: int, head_dim: int) -> None:
    """Make an attention module's own bookkeeping agree with its pruned projections (HF and timm names)."""
    for attribute, value in (("num_heads", heads), ("num_attention_heads", heads), ("head_dim", head_dim),
                             ("attention_head_size", head_dim), ("all_head_size", heads * head_dim),
                             ("attn_dim", heads * head_dim)):
        if attribute in module.__dict__:
            setattr(module, attribute, value)


def run_pruner(adapter: ModelAdapter, targets: list[str], params: dict[str, Any], example: dict[str, torch.Tensor],
               calibration: list[dict[str, torch.Tensor]] | None) -> PruneResult:
    """Prune `adapter.model` in place as `params` asks; returns what the report needs."""
    with opaque_layers(adapter.model):
        return _prune(adapter, targets, params, example, calibration)


def _prune(adapter: ModelAdapter, targets: list[str], params: dict[str, Any], example: dict[str, torch.Tensor],
           calibration: list[dict[str, torch.Tensor]] | None) -> PruneResult:
    import torch_pruning as tp

    model = adapter.model
    names = {module: name for name, module in model.named_modules()}
    layouts = head_layouts(adapter, targets)
    attention_projections = {p for layout in layouts for p in layout.projections}
    ffn_inputs = {adapter.module(site.fc1) for site in adapter.all_ffn_sites() if site_of(site.name, targets)}
    loose_params = [parameter for layout in layouts for parameter in layout.loose]

    def output_transform(outputs):
        return adapter.primary_output(outputs, example).sum()

    # traced twice: this graph decides which groups to veto, the pruner below traces again with the veto list
    custom = customized_pruners(model)
    try:
        graph = _quiet_build(lambda: tp.DependencyGraph().build_dependency(
            model, example_inputs=example, output_transform=output_transform, ignored_params=loose_params,
            customized_pruners=custom, verbose=False))
    except Exception as error:  # the trace runs the model's forward: any failure there is the model's
        raise CompressorError(f"prune: Torch-Pruning cannot trace this {adapter.display_name} model "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                              ) from None
    untraced = sorted(name for module, name in names.items()
                      if isinstance(module, ROOT_TYPES) and site_of(name, targets) is not None
                      and module not in graph.module2node)
    blocked, unmapped = blocked_roots(graph, names, targets, hidden=params["hidden"],
                                      attention_projections=attention_projections, ffn_inputs=ffn_inputs,
                                      prune_attention=params["attention"] != "none", prune_ffn=params["ffn"])
    whole_heads = params["attention"] == "heads"
    num_heads = {projection: layout.site.num_heads for layout in layouts for projection in layout.projections}
    importance = importance_criterion(params["importance"])
    pruner = _quiet_build(lambda: tp.pruner.BasePruner(
        model, example, importance=importance, pruning_ratio=float(params["ratio"]),
        global_pruning=params["global_ranking"], max_pruning_ratio=0.95, ignored_layers=blocked + loose_params,
        round_to=params["round_to"], num_heads=dict(num_heads), prune_num_heads=whole_heads,
        prune_head_dims=not whole_heads, head_pruning_ratio=float(params["ratio"]) if whole_heads else 0.0,
        head_pruning_ratio_dict=head_ratios(layouts, float(params["ratio"])) if whole_heads else None,
        customized_pruners=custom, output_transform=output_transform))
    if params["importance"] == "taylor":
        accumulate_gradients(adapter, calibration or [])
    pruned_queries: dict[int, list[int]] = {}
    queries = {id(layout.query): layout for layout in layouts}
    for group in pruner.step(interactive=True):
        for dep, indices in group:
            if id(dep.target.module) in queries and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                pruned_queries.setdefault(id(dep.target.module), []).extend(int(i) for i in indices)
        try:
            group.prune()
        except Exception as error:  # Torch-Pruning's own bookkeeping of an operation it cannot prune
            root = names.get(group[0].dep.target.module, type(group[0].dep.target.module).__name__)
            hint = "set prune.hidden=false" if params["hidden"] else f"exclude {root} with prune.ignore"
            raise CompressorError(f"prune: Torch-Pruning cannot prune the channels of {root} in this "
                                  f"{adapter.display_name} model ({type(error).__name__}); {hint}") from None
    model.zero_grad(set_to_none=True)

    heads, head_dims = {}, {}
    for layout in layouts:
        new_heads = pruner.num_heads.get(layout.query, layout.site.num_heads)
        width = layout.query.out_features // (3 if layout.fused else 1)
        slice_per_head(layout, removed_heads(layout, pruned_queries.get(id(layout.query), [])))
        set_head_attributes(adapter.module(layout.site.name), new_heads, width // new_heads)
        heads[layout.site.name], head_dims[layout.site.name] = new_heads, width // new_heads
    return PruneResult(untraced=sorted(set(untraced + unmapped)), heads=heads, head_dims=head_dims)
