"""Every patch of a timm forward: the attention kernel route of `Attention`, and the token-reducing ViT and Swin
blocks.

timm's `Attention.forward` is split here once into its projection half (`attention_qkv`) and its output half
(`attention_output`); the kernel route and the token-reducing ViT block both put softmax(qkᵀ)v of their own
between the two. timm is never imported at module level: the host classes are resolved when a patch is installed.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.models.patches.guard import HostForward
from compressor.models.patches.patch import ForwardPatch
from compressor.ops.token_reduction import block_attention

ATTENTION = HostForward(
    library="timm", path="timm.layers:Attention", signature="(self, x, attn_mask=None, is_causal=False)",
    written_against=(("1.0.31", "0523c39558ef54be"),))
VIT_BLOCK = HostForward(
    library="timm", path="timm.models.vision_transformer:Block",
    signature="(self, x, attn_mask=None, is_causal=False)", written_against=(("1.0.31", "332de2ad66dc19dc"),))
SWIN_BLOCK = HostForward(
    library="timm", path="timm.models.swin_transformer:SwinTransformerBlock", signature="(self, x)",
    written_against=(("1.0.31", "c990ae53ce1102bf+f70f0f61b8998d47"),), methods=("forward", "_attn"))
WINDOW_ATTENTION = HostForward(
    library="timm", path="timm.models.swin_transformer:WindowAttention", signature="(self, x, mask=None)",
    written_against=(("1.0.31", "3796f1c54f42f857"),))


def attention_qkv(attention: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's `Attention.forward` up to the attention: (batch, heads, tokens, head_dim) q, k, v of `x`."""
    batch, tokens, _ = x.shape
    qkv = attention.qkv(x).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attention.q_norm(q), attention.k_norm(k)
    return q, k, v


def attention_output(attention: nn.Module, attended: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """timm's `Attention.forward` after the attention, without `proj_drop`: the scale norm, the gate (computed
    from the attention's input `x`) and the output projection of the (batch, tokens, channels) `attended`."""
    attended = attention.norm(attended)
    if attention.gate is not None:
        attended = attended * attention.gate(x).sigmoid()
    return attention.proj(attended)


def kernel_attention_forward(attention: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                             is_causal: bool = False) -> torch.Tensor:
    """timm's `Attention.forward` with softmax(qkᵀ)v computed by `attention.attention_kernel`.

    Attention dropout is not applied (a kernel sees no attention matrix to drop from). Without an
    `attention_kernel` submodule (after `ModelAdapter.remove_attention_kernel` deletes it) this is timm's own
    forward, so removing a kernel restores the original outputs exactly.
    """
    if "attention_kernel" not in attention._modules:
        return super(type(attention), attention).forward(x, attn_mask=attn_mask, is_causal=is_causal)
    batch, tokens, _ = x.shape
    q, k, v = attention_qkv(attention, x)
    if is_causal:  # timm lets is_causal take precedence over attn_mask
        attn_mask = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()
    attended = attention.attention_kernel(q, k, v, attn_mask, attention.scale)
    attended = attended.transpose(1, 2).reshape(batch, tokens, attention.attn_dim)
    return attention.proj_drop(attention_output(attention, attended, x))


def token_reducing_vit_block_forward(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                                     is_causal: bool = False) -> torch.Tensor:
    """timm's Block.forward (inference) with the tokens reduced between attention and MLP."""
    reducer, attention = block.token_reducer, block.attn
    if attn_mask is not None or is_causal:
        raise ValueError("token-reduced timm ViT blocks take no attention mask")
    if block.token_block == 0:
        reducer.start(x)
    normed = block.norm1(x)
    q, k, v = attention_qkv(attention, normed)
    attended, metric, importance = block_attention(block, attention, q, k, v, attention.scale)
    x = x + block.ls1(attention_output(attention, attended, normed))
    x = reducer.reduce(block.token_block, x, metric, importance)
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return reducer.finish(x) if block.token_last else x


def token_reducing_swin_block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SwinTransformerBlock.forward (inference) keeping the same number of tokens in every window (see
    `compressor.ops.window_tokens`)."""
    reducer = block.token_reducer
    batch, height, width, channels = x.shape
    if block.token_block == 0:
        reducer.start(height * width)
    if reducer.uses_original_forward(block.token_block):
        reducer.record(height * width, 1.0)
        return super(type(block), block).forward(x)
    attention = block.attn
    if getattr(block, "dynamic_mask", False):
        padded = [-(-size // w) * w for size, w in zip((height, width), block.window_size)]
        shift_mask = block.get_attn_mask(x.new_zeros(batch, *padded, 1))
    else:
        shift_mask = block.attn_mask

    def qkv(tokens: torch.Tensor):
        b, n, _ = tokens.shape
        return attention.qkv(tokens).reshape(b, n, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    hidden = reducer.run_block(
        block.token_block, x.reshape(batch, height * width, channels), (height, width), block.window_size,
        block.shift_size, pad_then_roll=False, norm=block.norm1, qkv=qkv, output=attention.proj,
        ffn=lambda t: block.mlp(block.norm2(t)), position_bias=attention._get_rel_pos_bias()[0],
        shift_mask=shift_mask, scale=attention.scale)
    return hidden.view(batch, height, width, channels)


KERNEL_ATTENTION = ForwardPatch("Kernel", kernel_attention_forward, replaces=(ATTENTION,))
TOKEN_REDUCING_VIT_BLOCK = ForwardPatch("TokenReducing", token_reducing_vit_block_forward, replaces=(VIT_BLOCK,),
                                        inlines=(("attn", (ATTENTION,)),))
TOKEN_REDUCING_SWIN_BLOCK = ForwardPatch("TokenReducing", token_reducing_swin_block_forward,
                                         replaces=(SWIN_BLOCK,), inlines=(("attn", (WINDOW_ATTENTION,)),))
PATCHES = (KERNEL_ATTENTION, TOKEN_REDUCING_VIT_BLOCK, TOKEN_REDUCING_SWIN_BLOCK)
