"""HF BERT: the text encoder family, here because the one real pretrained transformer installable offline
(all-MiniLM-L6-v2) is a BERT — it measures how faithfully the attention and weight passes preserve a trained model.

In transformers 5.23 each `<base>.encoder.layer.<i>` (BertLayer) holds `attention.self` (BertSelfAttention:
`query/key/value`, calls the AttentionInterface) and `attention.output.dense` (the output projection); its FFN is
split between `intermediate` (`dense` = fc1, `intermediate_act_fn`) and `output` (`dense` = fc2, then residual and
LayerNorm). Padding reaches the attention as a bool (batch, 1, q, k) mask, False on padded keys.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.errors import CompressorError
from compressor.models.base import AttentionSite, BlockSite, FFNSite, TRANSFORMER_PARTS, TokenLayout
from compressor.models.hf_common import HFAdapter
from compressor.models.patches.transformers import TOKEN_REDUCING_BERT_LAYER

#: sentence-transformers' max_seq_length for MiniLM-style encoders; longer texts are truncated
DEFAULT_MAX_LENGTH = 256
DEFAULT_SEQUENCE_LENGTH = 128
#: the [CLS] / [SEP] ids of the standard BERT WordPiece vocabularies, used when no tokenizer is known
BERT_CLS_ID, BERT_SEP_ID = 101, 102
#: ids below this are [PAD], [unusedN] and special tokens in the standard vocabularies
FIRST_WORDPIECE_ID = 999


class HFBertAdapter(HFAdapter):
    """BertModel and the Bert*For* heads.

    primary_output: for BertModel the attention-mask-weighted mean of the last hidden states (sentence-transformers'
    mean pooling: the sentence embedding MiniLM is trained for); for heads their logits, flattened.
    """

    family = "hf-bert"
    display_name = "BERT (transformers)"
    task = "feature-extraction"
    model_types = ("bert",)
    processor_kind = "tokenizer"
    cost_part_children = TRANSFORMER_PARTS

    def _layers(self) -> list[str]:
        from transformers.models.bert.modeling_bert import BertLayer

        return [name for name, _ in self.named_modules_of_type(BertLayer)]

    def attention_sites(self) -> list[AttentionSite]:
        return [self.make_attention_site(
            f"{name}.attention.self", "encoder", index,
            projections=(f"{name}.attention.self.query", f"{name}.attention.self.key",
                         f"{name}.attention.self.value", f"{name}.attention.output.dense"))
            for index, name in enumerate(self._layers())]

    def ffn_sites(self) -> list[FFNSite]:
        """Named after `intermediate` (fc1 and activation); fc2 is the sibling `output.dense`."""
        return [FFNSite(name=f"{name}.intermediate", stack="encoder", layer=index, fc1=f"{name}.intermediate.dense",
                        fc2=f"{name}.output.dense", activation=f"{name}.intermediate.intermediate_act_fn")
                for index, name in enumerate(self._layers())]

    def blocks(self) -> list[BlockSite]:
        return [BlockSite(name=name, stack="encoder", layer=index, kind="transformer",
                          attention=f"{name}.attention.self", ffn=f"{name}.intermediate")
                for index, name in enumerate(self._layers())]

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        inputs = inputs if inputs is not None else self.example_inputs()
        return TokenLayout(prefix_tokens=("cls",), sequence_length=int(inputs["input_ids"].shape[1]), text=True)

    # --- token reduction ------------------------------------------------------------------------------------------
    token_block_patch = TOKEN_REDUCING_BERT_LAYER

    def token_reduction_blocks(self) -> list[BlockSite]:
        """Encoder layers only: a BERT decoder's causal and cross attention are not reduced."""
        return [] if self.config.is_decoder else self.blocks()

    # --- inputs --------------------------------------------------------------------------------------------------
    def _special_ids(self) -> tuple[int, int]:
        tokenizer = self.processor
        if tokenizer is not None and tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
            return int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)
        return BERT_CLS_ID, BERT_SEP_ID

    def max_length(self) -> int:
        return min(DEFAULT_MAX_LENGTH, int(self.config.max_position_embeddings))

    def example_inputs(self, batch_size: int = 1, size: tuple[int, ...] | None = None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
        """[CLS], random word-piece ids, [SEP]: 128 tokens (or `size[0]`), no padding, one segment."""
        length = int(size[0]) if size is not None else min(DEFAULT_SEQUENCE_LENGTH, self.max_length())
        cls_id, sep_id = self._special_ids()
        vocab_size = int(self.config.vocab_size)
        low = FIRST_WORDPIECE_ID if vocab_size > 2 * FIRST_WORDPIECE_ID else max(cls_id, sep_id) + 1
        generator = torch.Generator().manual_seed(seed)
        body = torch.randint(low, vocab_size, (batch_size, max(length - 2, 0)), generator=generator)
        input_ids = torch.cat([torch.full((batch_size, 1), cls_id), body, torch.full((batch_size, 1), sep_id)], dim=1)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "token_type_ids": torch.zeros_like(input_ids)}

    def prepare_inputs(self, examples: list) -> dict[str, torch.Tensor]:
        """Tokenise strings, padded to the longest and truncated at 256 tokens (or the model's maximum)."""
        if self.processor is None:
            raise CompressorError("this BERT model was loaded without a tokenizer, so text cannot be encoded; "
                                  "load it from a directory or Hub repo that has tokenizer files")
        encoded = self.processor(list(examples), padding=True, truncation=True, max_length=self.max_length(),
                                 return_tensors="pt")
        return dict(encoded)

    # --- outputs -------------------------------------------------------------------------------------------------
    def primary_output(self, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        head = self.head_output(outputs)
        if head is not None:
            return head
        hidden = outputs.last_hidden_state
        mask = inputs.get("attention_mask")
        weights = hidden.new_ones(hidden.shape[:2]) if mask is None else mask.to(hidden.dtype)
        weights = weights.unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
