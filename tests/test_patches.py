"""Host-library patches: every patched forward is written and installed in one place, and a patch is refused when
the host library's forward is not the one it was written against (real subclasses stand for a changed release)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from timm.layers import Attention
from transformers import ViTConfig, ViTForImageClassification
from transformers.models.vit.modeling_vit import ViTAttention, ViTLayer

import compressor
from checkpoints_timm import TINY_TIMM_MODELS, create_tiny_timm_model
from compressor.errors import CompressorError
from compressor.models import ADAPTER_CLASSES, AttentionKernel, adapter_for
from compressor.models.patches import (HOST_FORWARDS, PATCHES, SKIP_GUARD_VARIABLE, HostChangedError,
                                       unpatched_class)
from compressor.models.patches.guard import source_fingerprint
from compressor.models.patches.timm import ATTENTION, KERNEL_ATTENTION
from compressor.models.patches.transformers import VIT_ATTENTION, VIT_LAYER


class DoubledAttention(Attention):
    """timm's Attention as a later release might change it: the output doubled."""

    def forward(self, x, attn_mask=None, is_causal=False):
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal) * 2


class ScaledAttention(Attention):
    """timm's Attention with a new forward argument."""

    def forward(self, x, attn_mask=None, is_causal=False, output_scale=1.0):
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal) * output_scale


class PostNormViTLayer(ViTLayer):
    """ViTLayer as a later transformers release might change it: layer norms after the residuals."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attended, _ = self.attention(hidden_states, attention_mask, **kwargs)
        hidden_states = self.layernorm_before(attended + hidden_states)
        return self.layernorm_after(self.mlp(hidden_states) + hidden_states)


class GatedViTAttention(ViTAttention):
    """ViTAttention with its output gated: a change inside a module the token-reducing layer re-implements."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        output, weights = super().forward(hidden_states, attention_mask, **kwargs)
        return output * torch.sigmoid(output), weights


class ExactKernel(AttentionKernel):
    def forward(self, query, key, value, attention_mask, scale):
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                                scale=scale)


class Original:
    def forward(self, x):
        return x + 1


class Reformatted:
    def forward(self, x):
        """A docstring."""
        # a comment
        return (x
                + 1)


class Changed:
    def forward(self, x):
        return x + 2


def _timm_vit():
    architecture, kwargs = TINY_TIMM_MODELS["timm_vit_dir"]
    model = create_tiny_timm_model(architecture, **kwargs)
    return model, adapter_for(model)


def _hf_vit():
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=3)
    model = ViTForImageClassification(config).eval()
    return model, adapter_for(model)


def _known(host) -> str:
    return re.escape(f"{host.library}=={host.written_against[-1][0]}")


def test_every_patched_host_class_is_registered_once():
    paths = [host.path for host in HOST_FORWARDS]
    assert len(paths) == len(set(paths))
    assert {host for patch in PATCHES for host in patch.hosts} == set(HOST_FORWARDS)
    replaced = [host.path for patch in PATCHES for host in patch.replaces]
    assert len(replaced) == len(set(replaced))  # one patched forward per host class
    token_patches = {cls.token_block_patch for cls in ADAPTER_CLASSES if cls.token_block_patch is not None}
    assert token_patches | {KERNEL_ATTENTION} == set(PATCHES)


def test_only_the_patch_module_swaps_a_module_class():
    root = Path(compressor.__file__).parent
    swapping = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.py")
                      if re.search(r"\.__class__\s*=[^=]", path.read_text()))
    assert swapping == ["models/patches/patch.py"]


def test_every_recorded_host_forward_matches_the_installed_library():
    for host in HOST_FORWARDS:
        host.check(host.resolve())  # raises HostChangedError when a recorded fingerprint is stale


def test_the_fingerprint_ignores_formatting_comments_and_docstrings_but_not_statements():
    assert source_fingerprint(Original.forward) == source_fingerprint(Reformatted.forward)
    assert source_fingerprint(Original.forward) != source_fingerprint(Changed.forward)


def test_a_kernel_is_refused_on_a_changed_timm_attention_and_nothing_is_installed():
    model, adapter = _timm_vit()
    model.blocks[0].attn.__class__ = DoubledAttention
    site = adapter.attention_sites()[0]
    with pytest.raises(HostChangedError, match=r"cannot patch DoubledAttention \(a subclass of timm\.layers\."
                                               rf"Attention\): its forward\(\) source changed .*{_known(ATTENTION)}"
                                               rf".*{SKIP_GUARD_VARIABLE}=1"):
        adapter.install_attention_kernel(site, ExactKernel())
    assert type(model.blocks[0].attn) is DoubledAttention
    assert "attention_kernel" not in model.blocks[0].attn._modules


def test_a_changed_forward_signature_is_named():
    model, adapter = _timm_vit()
    model.blocks[1].attn.__class__ = ScaledAttention
    with pytest.raises(HostChangedError, match=re.escape(
            "its forward takes (self, x, attn_mask=None, is_causal=False, output_scale=1.0) instead of "
            "(self, x, attn_mask=None, is_causal=False)")):
        adapter.install_attention_kernel(adapter.attention_sites()[1], ExactKernel())


def test_token_reduction_is_refused_on_a_changed_transformers_layer_and_leaves_every_block_unchanged():
    model, adapter = _hf_vit()
    layers = [adapter.module(block.name) for block in adapter.token_reduction_blocks()]
    layers[1].__class__ = PostNormViTLayer
    with pytest.raises(HostChangedError, match=r"cannot patch PostNormViTLayer \(a subclass of transformers\."
                                               rf"models\.vit\.modeling_vit\.ViTLayer\).*{_known(VIT_LAYER)}"):
        adapter.install_token_reducer(object())
    assert [type(layer) for layer in layers] == [ViTLayer, PostNormViTLayer]
    assert not any(hasattr(layer, "token_reducer") for layer in layers)


def test_token_reduction_is_refused_when_a_module_it_re_implements_changed():
    model, adapter = _hf_vit()
    model.vit.layers[0].attention.__class__ = GatedViTAttention
    with pytest.raises(HostChangedError, match=rf"GatedViTAttention \(a subclass of .*ViTAttention\).*"
                                               rf"{_known(VIT_ATTENTION)}"):
        adapter.install_token_reducer(object())


def test_a_module_of_another_class_is_refused_with_the_classes_the_patch_is_written_for():
    model, adapter = _hf_vit()
    model.vit.layers[0].attention = torch.nn.Identity()
    with pytest.raises(CompressorError, match=r"vit\.layers\.0\.attention is a Identity, but "
                                              r"token_reducing_vit_layer_forward is written for .*ViTAttention or "
                                              r".*DeiTAttention only"):
        adapter.install_token_reducer(object())


def test_the_guard_can_be_skipped_at_the_users_risk(monkeypatch):
    model, adapter = _timm_vit()
    attention = model.blocks[0].attn
    attention.__class__ = DoubledAttention
    inputs = adapter.example_inputs()
    with torch.no_grad():
        doubled = model(**inputs)
    monkeypatch.setenv(SKIP_GUARD_VARIABLE, "1")
    adapter.install_attention_kernel(adapter.attention_sites()[0], ExactKernel())
    assert type(attention).__name__ == "KernelDoubledAttention"
    assert unpatched_class(type(attention)) is DoubledAttention
    adapter.remove_attention_kernel(adapter.attention_sites()[0])
    with torch.no_grad():  # without its kernel the patched module runs the host's own (changed) forward
        assert torch.equal(model(**inputs), doubled)
