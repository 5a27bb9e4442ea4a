"""Where the cost is: params and FLOPs per top-level part, in report.json, the CLI table and the model card.

The parts come from the family adapters and must cover the model exactly (nothing counted twice, nothing lost), and a
pass must show up in the part it rewrote and nowhere else.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import compressor
from compressor.cli import main
from compressor.evaluate.cost import count_flops, count_parameters
from compressor.evaluate.cost_parts import OTHER, measure_cost
from compressor.model_card import render_model_card
from compressor.models import adapter_for
from compressor.recipe import Recipe
from compressor.report import format_table
from compressor.sources import load_source

#: fixture -> the parts its report lists, in order
EXPECTED_PARTS = {
    "hf_vit_dir": ["embeddings", "blocks", "head"],
    "hf_vit_encoder_dir": ["embeddings", "blocks", "head"],
    "hf_deit_dir": ["embeddings", "blocks", "head"],
    "hf_swin_dir": ["embeddings", "blocks", "head"],
    "hf_resnet_dir": ["stem", "stages", "head"],
    "hf_bert_dir": ["embeddings", "blocks", "head"],
    "hf_detr_dir": ["backbone", "encoder", "decoder", "heads"],
    "timm_vit_dir": ["embeddings", "blocks", "head"],
    "timm_deit_dir": ["embeddings", "blocks", "head"],
    "timm_swin_dir": ["embeddings", "blocks", "head"],
    "timm_resnet_dir": ["stem", "stages", "head"],
    "resnet20_dir": ["stem", "stages", "head"],
}


@pytest.mark.parametrize("fixture", sorted(EXPECTED_PARTS))
def test_parts_cover_every_parameter_and_flop_exactly_once(fixture, request):
    loaded = load_source(request.getfixturevalue(fixture))
    example = loaded.adapter.example_inputs()
    cost = measure_cost(loaded.adapter, example)
    assert list(cost.parts) == EXPECTED_PARTS[fixture]  # no "other": the family's map leaves nothing out
    assert sum(part["params"] for part in cost.parts.values()) == cost.params == count_parameters(loaded.model)
    assert sum(part["flops"] for part in cost.parts.values()) == cost.flops == count_flops(loaded.model, example)
    assert all(part["params"] > 0 and part["flops"] > 0 for name, part in cost.parts.items()
               if name != "embeddings" or "bert" not in fixture)  # BERT's embeddings are lookups: no FLOPs


def test_detr_with_a_timm_backbone_splits_the_same_way():
    """facebook/detr-resnet-50's layout (timm backbone), shrunk: the backbone part holds the whole timm ResNet."""
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(
        use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10)).eval()
    example = {"pixel_values": torch.randn(1, 3, 64, 64)}
    cost = measure_cost(adapter_for(model), example)
    assert list(cost.parts) == ["backbone", "encoder", "decoder", "heads"]
    assert cost.parts["backbone"]["params"] == count_parameters(model.model.backbone)
    assert sum(part["flops"] for part in cost.parts.values()) == cost.flops == count_flops(model, example)


class _RootWork(nn.Module):
    """A model whose root does work of its own: a parameter and a matrix product outside every child."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4, 4))

    def forward(self, x):
        return self.body(x) @ self.scale


class _BodyOnly:
    display_name = "test model"

    def __init__(self, model):
        self.model = model

    def cost_parts(self):
        return [("body", ("body",))]


def test_what_no_part_holds_is_listed_as_other():
    model = _RootWork()
    cost = measure_cost(_BodyOnly(model), {"x": torch.randn(2, 4)})
    assert cost.parts == {"body": {"params": 20, "flops": 2 * 2 * 4 * 4},
                          OTHER: {"params": 16, "flops": 2 * 2 * 4 * 4}}
    assert cost.params == 36 and cost.flops == 128


def test_a_kernels_uncounted_flops_go_to_the_part_holding_it(hf_detr_dir):
    """ACT on the DETR encoder: its kernels' sorting and scattering is encoder work, not root or decoder work."""
    result = compressor.compress(hf_detr_dir, "act", overrides=["act.rounds=8", "act.bucket_width=2"],
                                 progress=False, latency_runs=1, input_size=(128, 128))
    adapter = result.loaded.adapter
    example = adapter.example_inputs(size=(128, 128))
    cost = measure_cost(adapter, example)
    uncounted = sum(getattr(m, "uncounted_flops", 0) for m in adapter.model.modules())
    assert uncounted > 0 and OTHER not in cost.parts
    assert cost.flops == count_flops(adapter.model, example)
    parts = result.report["parts"]
    assert parts["backbone"]["flops"]["after"] == parts["backbone"]["flops"]["before"]
    assert parts["heads"]["flops"]["after"] == parts["heads"]["flops"]["before"]


def test_token_clip_on_the_detr_encoder_changes_only_the_encoder_part(hf_detr_dir):
    result = compressor.compress(hf_detr_dir, "token-clip", progress=False, latency_runs=1, input_size=(128, 128))
    parts = result.report["parts"]
    assert list(parts) == ["backbone", "encoder", "decoder", "heads"]
    for unchanged in ("backbone", "decoder", "heads"):  # the decoder cross-attends the restored full feature map
        assert parts[unchanged]["flops"]["after"] == parts[unchanged]["flops"]["before"]
        assert parts[unchanged]["ratio"] == {"params": 1.0, "flops": 1.0}
    assert parts["encoder"]["flops"]["after"] < parts["encoder"]["flops"]["before"]
    saved = result.report["flops"]["before"] - result.report["flops"]["after"]
    assert parts["encoder"]["flops"]["before"] - parts["encoder"]["flops"]["after"] == saved


def test_tied_weights_on_a_vit_halve_the_block_weights_and_leave_embeddings_and_head(hf_vit_dir):
    recipe = Recipe.from_dict({"compress_stage": {"tied_weights": {"init": "closed_form"}}})
    result = compressor.compress(hf_vit_dir, recipe, progress=False, latency_runs=1)
    parts = result.report["parts"]
    for unchanged in ("embeddings", "head"):
        assert parts[unchanged]["params"]["after"] == parts[unchanged]["params"]["before"]
    # 2 layers, width 32, FFN 64: V = W_kvᵀ and output = W_qᵀ save two 32×32 matrices, fc2 = fc1ᵀ one 64×32
    blocks = parts["blocks"]["params"]
    assert blocks["before"] - blocks["after"] == 2 * (2 * 32 * 32 + 64 * 32)
    assert result.report["params"]["before"] - result.report["params"]["after"] == 2 * (2 * 32 * 32 + 64 * 32)
    assert 0.45 < parts["blocks"]["ratio"]["params"] < 0.55  # the weight matrices halve; biases and norms stay


def test_report_json_table_and_card_show_the_parts(hf_vit_dir, tmp_path, capsys):
    out = tmp_path / "vit-tome"
    assert main(["compress", str(hf_vit_dir), "--recipe", "tome", "--set", "token_merge.r=2", "--out", str(out),
                 "--latency-runs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["embeddings", "blocks", "head"]
    assert sum(part["flops"]["after"] for part in parts.values()) == report["flops"]["after"]
    assert parts["blocks"]["flops"]["after"] < parts["blocks"]["flops"]["before"]
    assert parts["embeddings"]["ratio"]["flops"] == 1.0
    blocks_ratio = f"×{parts['blocks']['flops']['after'] / parts['blocks']['flops']['before']:.3f}"
    table_lines = [line for line in printed.splitlines() if line.startswith("blocks ")]
    assert len(table_lines) == 1 and blocks_ratio in table_lines[0] and "FLOPs share" in printed
    card = (out / "README.md").read_text()
    assert "### Where the cost is" in card
    assert any(line.startswith("| blocks |") and blocks_ratio in line for line in card.splitlines())


def test_reports_without_parts_still_render(hf_vit_dir):
    """A report written before the parts table existed (an older output directory) renders without it."""
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.rounds=4"], progress=False, latency_runs=1)
    del result.report["parts"]
    assert "FLOPs share" not in format_table(result.report)
    assert "Where the cost is" not in render_model_card(result, {})
