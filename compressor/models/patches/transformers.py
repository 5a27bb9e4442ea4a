"""Every patch of a transformers forward: the token-reducing layers of ViT/DeiT, Swin, BERT and the DETR (and
Conditional DETR) encoder.

Attention kernels need no patch in transformers (they are routed through its AttentionInterface, see
`compressor.models.hf_common`). Each forward below replaces a layer's forward and computes the layer's attention
itself, so the guard checks both the layer's forward and the attention module's. transformers is never imported at
module level: the host classes are resolved when a patch is installed.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.models.patches.guard import HostForward
from compressor.models.patches.patch import ForwardPatch
from compressor.ops.token_reduction import block_attention
from compressor.ops.tokens import split_heads

TRANSFORMERS_VERSION = "5.25.0"
_LAYER_SIGNATURE = "(self, hidden_states, attention_mask=None, **kwargs)"


def real_tokens(attention_mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """(batch, tokens) bool, True for real tokens, from the key-padding mask an encoder layer receives (bool
    (batch, 1, q, k) with True where attended, an additive float mask, or None when nothing is padded)."""
    if attention_mask is None:
        return None
    row = attention_mask.reshape(attention_mask.shape[0], -1, attention_mask.shape[-1])[:, -1]
    valid = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
    return valid.expand(batch, -1)


def _host(path: str, signature: str, fingerprint: str, methods: tuple[str, ...] = ("forward",)) -> HostForward:
    return HostForward(library="transformers", path=f"transformers.models.{path}", signature=signature,
                       written_against=((TRANSFORMERS_VERSION, fingerprint),), methods=methods)


VIT_LAYER = _host("vit.modeling_vit:ViTLayer", _LAYER_SIGNATURE, "149e263a10a4208e")
VIT_ATTENTION = _host("vit.modeling_vit:ViTAttention", _LAYER_SIGNATURE, "ba6bc73869923dd2")
DEIT_LAYER = _host("deit.modeling_deit:DeiTLayer", _LAYER_SIGNATURE, "149e263a10a4208e")
DEIT_ATTENTION = _host("deit.modeling_deit:DeiTAttention", _LAYER_SIGNATURE, "ba6bc73869923dd2")
SWIN_LAYER = _host("swin.modeling_swin:SwinLayer",
                   "(self, hidden_states, input_dimensions, always_partition=False, **kwargs)", "afe7bb61de46911e")
SWIN_ATTENTION = _host("swin.modeling_swin:SwinAttention", _LAYER_SIGNATURE, "9bd264b0524b9673")
BERT_LAYER = _host("bert.modeling_bert:BertLayer", "(self, hidden_states, attention_mask=None, "
                   "encoder_hidden_states=None, encoder_attention_mask=None, cache=None, **kwargs)",
                   "cec24151308737b5+5609aaf849c5c0ae", methods=("forward", "feed_forward_chunk"))
BERT_ATTENTION = _host("bert.modeling_bert:BertAttention", "(self, hidden_states, attention_mask=None, "
                       "encoder_hidden_states=None, encoder_attention_mask=None, cache=None, **kwargs)",
                       "ed466303b001fe19")
BERT_SELF_ATTENTION = _host("bert.modeling_bert:BertSelfAttention", "(self, hidden_states, attention_mask=None, "
                            "cache=None, **kwargs)", "285454586e7d7434")
BERT_SELF_OUTPUT = _host("bert.modeling_bert:BertSelfOutput", "(self, hidden_states, input_tensor)",
                         "9237a14afe256801")
BERT_OUTPUT = _host("bert.modeling_bert:BertOutput", "(self, hidden_states, input_tensor)", "9237a14afe256801")
DETR_ENCODER_LAYER = _host("detr.modeling_detr:DetrEncoderLayer",
                           "(self, hidden_states, attention_mask, spatial_position_embeddings=None, **kwargs)",
                           "adb2d5b97946c1dc")
DETR_SELF_ATTENTION = _host("detr.modeling_detr:DetrSelfAttention", "(self, hidden_states, attention_mask=None, "
                            "position_embeddings=None, **kwargs)", "aa60b151dc754263")
#: Conditional DETR's encoder is DETR's, line for line (same fingerprints): the DETR encoder-layer patch serves both
CONDITIONAL_DETR_ENCODER_LAYER = _host("conditional_detr.modeling_conditional_detr:ConditionalDetrEncoderLayer",
                                       DETR_ENCODER_LAYER.signature, "adb2d5b97946c1dc")
CONDITIONAL_DETR_SELF_ATTENTION = _host("conditional_detr.modeling_conditional_detr:ConditionalDetrSelfAttention",
                                        DETR_SELF_ATTENTION.signature, "aa60b151dc754263")


def token_reducing_vit_layer_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None,
                                     **kwargs) -> torch.Tensor:
    """ViTLayer / DeiTLayer.forward (pre-norm, inference) with the tokens reduced between attention and MLP."""
    reducer, attention = layer.token_reducer, layer.attention
    if layer.token_block == 0:
        reducer.start(hidden_states)
    normed = layer.layernorm_before(hidden_states)
    q, k, v = (split_heads(projection(normed), attention.head_dim)
               for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
    attended, metric, importance = block_attention(layer, attention, q, k, v, attention.scaling)
    hidden_states = reducer.reduce(layer.token_block, attention.o_proj(attended) + hidden_states, metric, importance)
    hidden_states = hidden_states + layer.mlp(layer.layernorm_after(hidden_states))
    return reducer.finish(hidden_states) if layer.token_last else hidden_states


def token_reducing_swin_layer_forward(layer: nn.Module, hidden_states: torch.Tensor,
                                      input_dimensions: tuple[int, int], always_partition: bool = False,
                                      **kwargs) -> tuple[torch.Tensor, None]:
    """SwinLayer.forward (inference) keeping the same number of tokens in every window (see
    `compressor.ops.window_tokens`); attention weights are not returned."""
    reducer = layer.token_reducer
    if layer.token_block == 0:
        reducer.start(hidden_states.shape[1])
    if reducer.uses_original_forward(layer.token_block):
        output = super(type(layer), layer).forward(hidden_states, input_dimensions, always_partition, **kwargs)
        reducer.record(hidden_states.shape[1], 1.0)
        return output[0], None
    if not always_partition:
        layer.set_shift_and_window_size(input_dimensions)
    attention = layer.attention
    height, width = input_dimensions
    window, shift = int(layer.window_size), int(layer.shift_size)
    padded = (-(-height // window) * window, -(-width // window) * window)
    hidden_states = reducer.run_block(
        layer.token_block, hidden_states, (height, width), (window, window), (shift, shift), pad_then_roll=True,
        norm=layer.layernorm_before,
        qkv=lambda x: tuple(split_heads(p(x), attention.head_dim)
                            for p in (attention.q_proj, attention.k_proj, attention.v_proj)),
        output=attention.o_proj, ffn=lambda x: layer.mlp(layer.layernorm_after(x)),
        position_bias=attention.relative_position_bias()[0],
        shift_mask=layer.get_attn_mask(*padded, dtype=hidden_states.dtype, device=hidden_states.device),
        scale=attention.scaling)
    return hidden_states, None


def token_reducing_bert_layer_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None,
                                      *args, **kwargs) -> torch.Tensor:
    """BertLayer.forward (post-norm encoder, inference) with the tokens reduced between attention and FFN.

    Padding enters the reducer as size-0 tokens at the first layer; from then on the reducer's bias masks it.
    """
    reducer, attention = layer.token_reducer, layer.attention.self
    if layer.token_block == 0:
        reducer.start(hidden_states, padding=real_tokens(attention_mask, hidden_states.shape[0]))
    q, k, v = (split_heads(projection(hidden_states), attention.attention_head_size)
               for projection in (attention.query, attention.key, attention.value))
    attended, metric, importance = block_attention(layer, attention, q, k, v, attention.scaling)
    output = layer.attention.output
    hidden_states = output.LayerNorm(output.dense(attended) + hidden_states)
    hidden_states = reducer.reduce(layer.token_block, hidden_states, metric, importance)
    hidden_states = layer.output.LayerNorm(layer.output.dense(layer.intermediate(hidden_states)) + hidden_states)
    return reducer.finish(hidden_states) if layer.token_last else hidden_states


def token_reducing_detr_encoder_layer_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None,
                                              spatial_position_embeddings=None, **kwargs) -> torch.Tensor:
    """DetrEncoderLayer.forward (post-norm, inference; ConditionalDetrEncoderLayer's is the same) with the tokens
    reduced after the whole layer: a token that leaves has been through complete layers only, and passes the
    remaining ones unchanged (sparse updates)."""
    reducer, attention = layer.token_reducer, layer.self_attn
    if layer.token_block == 0:
        reducer.start(hidden_states, padding=real_tokens(attention_mask, hidden_states.shape[0]),
                      position=spatial_position_embeddings)
    position = reducer.position()
    query_key_input = hidden_states + position if position is not None else hidden_states
    q, k = (split_heads(projection(query_key_input), attention.head_dim)
            for projection in (attention.q_proj, attention.k_proj))
    v = split_heads(attention.v_proj(hidden_states), attention.head_dim)
    attended, metric, importance = block_attention(layer, attention, q, k, v, attention.scaling)
    hidden_states = layer.self_attn_layer_norm(hidden_states + attention.o_proj(attended))
    hidden_states = layer.final_layer_norm(hidden_states + layer.mlp(hidden_states))
    hidden_states = reducer.reduce(layer.token_block, hidden_states, metric, importance)
    return reducer.finish(hidden_states) if layer.token_last else hidden_states


TOKEN_REDUCING_VIT_LAYER = ForwardPatch(
    "TokenReducing", token_reducing_vit_layer_forward, replaces=(VIT_LAYER, DEIT_LAYER),
    inlines=(("attention", (VIT_ATTENTION, DEIT_ATTENTION)),))
TOKEN_REDUCING_SWIN_LAYER = ForwardPatch(
    "TokenReducing", token_reducing_swin_layer_forward, replaces=(SWIN_LAYER,),
    inlines=(("attention", (SWIN_ATTENTION,)),))
TOKEN_REDUCING_BERT_LAYER = ForwardPatch(
    "TokenReducing", token_reducing_bert_layer_forward, replaces=(BERT_LAYER,),
    inlines=(("attention", (BERT_ATTENTION,)), ("attention.self", (BERT_SELF_ATTENTION,)),
             ("attention.output", (BERT_SELF_OUTPUT,)), ("output", (BERT_OUTPUT,))))
TOKEN_REDUCING_DETR_ENCODER_LAYER = ForwardPatch(
    "TokenReducing", token_reducing_detr_encoder_layer_forward,
    replaces=(DETR_ENCODER_LAYER, CONDITIONAL_DETR_ENCODER_LAYER),
    inlines=(("self_attn", (DETR_SELF_ATTENTION, CONDITIONAL_DETR_SELF_ATTENTION)),))
PATCHES = (TOKEN_REDUCING_VIT_LAYER, TOKEN_REDUCING_SWIN_LAYER, TOKEN_REDUCING_BERT_LAYER,
           TOKEN_REDUCING_DETR_ENCODER_LAYER)
