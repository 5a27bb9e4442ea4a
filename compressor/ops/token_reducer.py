"""The contract between a token-reduction pass's reducer (in this package) and the blocks an adapter rewrites for
it."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class TokenReducer(ABC):
    """The contract between a token-reduction pass and the blocks an adapter rewrites for it.

    Blocks are numbered 0..n-1 in the order `ModelAdapter.token_reduction_blocks` lists them. The first block calls
    `start` (with the padding mask (batch, tokens) bool, True for real tokens, and any per-token position
    embeddings), every block computes its attention with `attention_bias()` added (None: no bias), reports the
    importance `importance_for(block)` asks for, and calls `reduce` between its attention and its MLP (ToMe, EViT),
    or at its end where tokens must leave complete layers (DETR's sparse encoder updates); the last block returns
    `finish(hidden)`.
    """

    @abstractmethod
    def start(self, hidden: torch.Tensor, padding: torch.Tensor | None = None,
              position: torch.Tensor | None = None) -> None: ...

    @abstractmethod
    def attention_bias(self) -> torch.Tensor | None: ...

    @abstractmethod
    def position(self) -> torch.Tensor | None: ...

    @abstractmethod
    def size(self) -> torch.Tensor | None: ...

    @abstractmethod
    def importance_for(self, block: int) -> str | None: ...

    @abstractmethod
    def reduce(self, block: int, hidden: torch.Tensor, metric: torch.Tensor | None = None,
               importance: torch.Tensor | None = None) -> torch.Tensor: ...

    @abstractmethod
    def finish(self, hidden: torch.Tensor) -> torch.Tensor: ...
