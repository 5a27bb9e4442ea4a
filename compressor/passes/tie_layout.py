"""Which weight of a model is shared with which: the layout of a tied-weights rewrite, as plain plan data.

A `Tie` is a set of weight `Slot`s that become one matrix W: the first slot that keeps a parameter (the owner), the
others borrow it, as it is or as its adjoint (`transposed`, relative to W's orientation). The layout is written into
the resolved recipe as strings, per site and per module, so reload rebuilds the same ties from the recipe alone:

- `own`: the module keeps its weight; other modules borrow it.
- `<module>.<param>` / `T(<module>.<param>)`: the module borrows that parameter, or its adjoint.
- `fused_qkv`: a fused qkv projection becomes a TiedQKV owning `weight_q` and `weight_kv` (V uses W_kvᵀ).
- `untied`: why the site (or one of its pairs) cannot be tied.

Per site (the paper's tying):

- FFN: fc2 = fc1ᵀ (always square in shape: fc1 is hidden→inner, fc2 inner→hidden).
- attention: output projection = W_qᵀ, V = W_kvᵀ where K = W_kv x; needs the value projection to have the key
  projection's transposed shape (a square key projection), which fails when keys come from a space of another width.
- bottleneck: conv1 = Wᵀ-pair of conv3 (`Wᵀ G(W x)`), needs the block's input and output channels to match (not the
  first block of a stage, which changes them); `share: stage` gives every block of a stage one W, `share_middle`
  one 3×3 weight per stage.
- basic block: conv2 = adjoint(conv1) (3×3: channels swapped, kernel flipped), where conv1's channels do not change.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from compressor.errors import RecipeError
from compressor.models.base import AttentionSite, BlockSite, FFNSite, ModelAdapter
from compressor.ops.tied_layers import adjoint_shape

OWN = "own"
FUSED_QKV = "fused_qkv"
UNTIED = "untied"
#: the owned parameters of a TiedQKV, by the row block of the fused weight they replace
FUSED_PARAMS = {"q": "weight_q", "k": "weight_kv"}
_REFERENCE = re.compile(r"^(T\()?([\w.]+)\.(\w+)(\))?$")


@dataclass(frozen=True)
class Slot:
    """One weight that joins a tie: `module`'s weight, or one row block (`q`, `k`, `v`) of a fused qkv weight."""

    site: str
    module: str
    transposed: bool = False
    part: str = "weight"


@dataclass
class Tie:
    """Slots sharing one matrix; the first is the owner."""

    slots: list[Slot]

    @property
    def owner(self) -> Slot:
        return self.slots[0]


@dataclass
class Layout:
    """The ties of a rewrite and, per site, why some weights stay untied."""

    ties: list[Tie] = field(default_factory=list)
    untied: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _shape(module: nn.Module, part: str = "weight") -> tuple[int, ...]:
    shape = tuple(module.weight.shape)
    return shape if part == "weight" else (shape[0] // 3, *shape[1:])


def _describe(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape)


def _short(name: str, site: str) -> str:
    return name[len(site) + 1:] if name.startswith(site + ".") else name


class _Planner:
    def __init__(self, adapter: ModelAdapter):
        self.adapter, self.layout = adapter, Layout()

    def module(self, name: str) -> nn.Module:
        return self.adapter.module(name)

    def pair(self, site: str, first: str, second: str, what: str, first_part: str = "weight",
             second_part: str = "weight") -> None:
        """Tie `second` to the adjoint of `first` when its shape allows, else say why not."""
        kinds = (nn.Linear, nn.Conv2d)
        a, b = self.module(first), self.module(second)
        if not isinstance(a, kinds) or not isinstance(b, kinds) or type(a) is not type(b):
            self.layout.untied[site].append(f"{what}: {type(a).__name__} and {type(b).__name__} are not a pair of "
                                            "Linear or Conv2d layers")
            return
        if isinstance(a, nn.Conv2d) and (a.groups != 1 or b.groups != 1):
            self.layout.untied[site].append(f"{what}: grouped convolutions have no adjoint of the same form")
            return
        shape_a, shape_b = _shape(a, first_part), _shape(b, second_part)
        if shape_b != adjoint_shape(shape_a):
            self.layout.untied[site].append(
                f"{what}: {_short(second, site)} is {_describe(shape_b)}, not the transpose of {_short(first, site)} "
                f"({_describe(shape_a)})")
            return
        self.layout.ties.append(Tie([Slot(site, first, False, first_part), Slot(site, second, True, second_part)]))

    # --- transformer sites -----------------------------------------------------------------------------------------
    def ffn(self, site: FFNSite) -> None:
        self.pair(site.name, site.fc1, site.fc2, "fc2 = fc1ᵀ")

    def attention(self, site: AttentionSite) -> None:
        if site.fused_qkv:
            qkv = self.module(site.query)
            if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * qkv.in_features:
                self.layout.untied[site.name].append(
                    f"fused qkv is {_describe(_shape(qkv))}: Q = W_q x, K = W_kv x, V = W_kvᵀ x need three square "
                    "blocks")
                return
            self.pair(site.name, site.query, site.output, "output = W_qᵀ", first_part="q")
            self.layout.ties.append(Tie([Slot(site.name, site.key, False, "k"), Slot(site.name, site.value, True, "v")]))
            return
        self.pair(site.name, site.query, site.output, "output = W_qᵀ")
        self.pair(site.name, site.key, site.value, "V = W_kvᵀ")

    # --- convolutional blocks --------------------------------------------------------------------------------------
    def blocks_per_site(self, site: BlockSite) -> None:
        if site.kind == "bottleneck":
            self.pair(site.name, site.convs[0], site.convs[-1], "conv1 = conv3ᵀ (Wᵀ G(W x))")
        else:
            self.pair(site.name, site.convs[0], site.convs[1], "conv2 = adjoint(conv1)")

    def blocks_per_stage(self, sites: list[BlockSite], share_middle: bool) -> None:
        """One W per stage for every main-path conv whose shape fits it (and one 3×3 weight with share_middle)."""
        by_stack: dict[str, list[BlockSite]] = defaultdict(list)
        for site in sites:
            by_stack[site.stack].append(site)
        for stack_sites in by_stack.values():
            members: list[tuple[Slot, tuple[int, ...]]] = []  # (slot, shape in W's orientation)
            middles: list[Slot] = []
            for site in stack_sites:
                first, last = site.convs[0], site.convs[-1]
                members += [(Slot(site.name, first), _shape(self.module(first))),
                            (Slot(site.name, last, True), adjoint_shape(_shape(self.module(last))))]
                if site.kind == "bottleneck":
                    middles += [Slot(site.name, conv) for conv in site.convs[1:-1]]
            self._stage_tie(members, "stage W")
            if share_middle and middles:
                shapes = [(slot, _shape(self.module(slot.module))) for slot in middles]
                self._stage_tie(shapes, "stage 3×3")

    def _stage_tie(self, members: list[tuple[Slot, tuple[int, ...]]], what: str) -> None:
        """The most common shape of the stage wins; convs of another shape (the channel change) stay untied."""
        counts: dict[tuple[int, ...], int] = defaultdict(int)
        for _, shape in members:
            counts[shape] += 1
        common = max(counts, key=lambda shape: counts[shape])
        fitting = []
        for slot, shape in members:
            module = self.module(slot.module)
            if not isinstance(module, nn.Conv2d) or (module.groups != 1 and slot.transposed):
                self.layout.untied[slot.site].append(f"{what}: {_short(slot.module, slot.site)} is not an ungrouped "
                                                     "Conv2d")
            elif shape != common:
                self.layout.untied[slot.site].append(
                    f"{what}: {_short(slot.module, slot.site)} is {_describe(shape)} (in W's orientation), the stage "
                    f"shares {_describe(common)} (the channel count changes here)")
            else:
                fitting.append(slot)
        if len(fitting) > 1:
            self.layout.ties.append(Tie(fitting))


def plan_ties(adapter: ModelAdapter, sites: list, share: str, share_middle: bool) -> Layout:
    """The ties for `sites` (attention, FFN and convolutional block sites of `adapter`'s model)."""
    planner = _Planner(adapter)
    conv_blocks = [site for site in sites if isinstance(site, BlockSite)]
    for site in sites:
        if isinstance(site, FFNSite):
            planner.ffn(site)
        elif isinstance(site, AttentionSite):
            planner.attention(site)
        elif share == "block":
            planner.blocks_per_site(site)
    if share == "stage" and conv_blocks:
        planner.blocks_per_stage(conv_blocks, share_middle)
    return planner.layout


# --- the layout as plan data, and back ---------------------------------------------------------------------------

def _parameter_of(slot: Slot) -> str:
    """The qualified name of the parameter an owner slot keeps."""
    return f"{slot.module}.{FUSED_PARAMS[slot.part]}" if slot.part in FUSED_PARAMS else f"{slot.module}.weight"


def layout_to_plan(layout: Layout, sites: list) -> dict[str, dict[str, str]]:
    """{site: {module: spec}} for the resolved recipe; every selected site appears (untied ones with the reason)."""
    plan: dict[str, dict[str, str]] = {site.name: {} for site in sites}
    for tie in layout.ties:
        owner = tie.owner
        reference = _parameter_of(owner)
        for slot in tie.slots:
            if slot.part != "weight":
                plan[slot.site][slot.module] = FUSED_QKV
            elif slot is owner:
                plan[slot.site][slot.module] = OWN
            else:
                plan[slot.site][slot.module] = f"T({reference})" if slot.transposed != owner.transposed else reference
    for site, reasons in layout.untied.items():
        plan[site][UNTIED] = "; ".join(reasons)
    return plan


@dataclass(frozen=True)
class Borrow:
    """A module that borrows `parameter` of `owner` (transposed or not)."""

    module: str
    owner: str
    parameter: str
    transposed: bool


def parse_reference(text: str, where: str) -> tuple[str, str, bool]:
    """`T(a.b.weight)` -> ("a.b", "weight", True)."""
    match = _REFERENCE.match(text)
    if not match or bool(match.group(1)) != bool(match.group(4)):
        raise RecipeError(f"{where}: {text!r} is not a tied-weights plan entry; expected own, fused_qkv, "
                          "<module>.<param> or T(<module>.<param>)")
    return match.group(2), match.group(3), bool(match.group(1))


def plan_entries(plan: dict[str, dict[str, str]]) -> tuple[list[str], list[str], list[Borrow]]:
    """(owner modules, fused qkv modules, borrows) named by a plan, checked for form."""
    owners, fused, borrows = [], [], []
    for site, settings in plan.items():
        for module, spec in settings.items():
            where = f"tied_weights.plan[{site!r}][{module!r}]"
            if module == UNTIED:
                continue
            if not isinstance(spec, str):
                raise RecipeError(f"{where}: expected a string, got {spec!r}")
            if spec == OWN:
                owners.append(module)
            elif spec == FUSED_QKV:
                fused.append(module)
            else:
                borrows.append(Borrow(module, *parse_reference(spec, where)))
    return owners, fused, borrows


def ties_from_plan(plan: dict[str, dict[str, str]]) -> list[Tie]:
    """The ties a plan describes, owner first (what initialisation averages over)."""
    owners, fused, borrows = plan_entries(plan)
    site_of = {module: site for site, settings in plan.items() for module in settings}
    ties: dict[str, Tie] = {}
    for module in owners:
        ties[f"{module}.weight"] = Tie([Slot(site_of[module], module)])
    for module in fused:
        site = site_of[module]
        ties[f"{module}.weight_q"] = Tie([Slot(site, module, False, "q")])
        ties[f"{module}.weight_kv"] = Tie([Slot(site, module, False, "k"), Slot(site, module, True, "v")])
    for borrow in borrows:
        key = f"{borrow.owner}.{borrow.parameter}"
        if key not in ties:
            raise RecipeError(f"tied_weights.plan: {borrow.module} borrows {key}, which no plan entry owns; the "
                              "recipe's plan was edited or comes from another model")
        ties[key].slots.append(Slot(site_of[borrow.module], borrow.module, borrow.transposed))
    return list(ties.values())
