"""Window-level token clipping for shifted-window attention (Swin), with no model knowledge.

Every window keeps the same number `k` of its tokens, the most important ones, so the kept tokens form smaller
windows of k tokens: window attention (with the relative-position bias and shift mask gathered to the kept pairs)
and the MLP run on them only, and their new values are scattered back into the full map before the block ends,
so the next block's (shifted) windows and patch merging see a complete map. Tokens not kept pass the block
unchanged. Importance is the mean attention a token received inside its window, normalised so that uniform
attention is 1, kept as a map from block to block (averaged 2×2 across patch merging); a block with no map yet
runs in full and scores every token.

Window partition, cyclic shift and padding are one fixed permutation of positions, so the kept tokens are gathered
straight from the (batch, height·width, channels) map by index, and scattered back the same way. Padding positions
serve as keys only (zeros, as the model pads them): the output projection and MLP skip them, which also keeps the
denormal values their masked-out attention produces out of the matrix products (3× slower on CPU).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from compressor.ops.tokens import gather_tokens, scatter_tokens


@functools.lru_cache(maxsize=64)
def window_positions(height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
                     pad_then_roll: bool, device: str = "cpu") -> Tensor:
    """(windows, window area) flat positions in the height×width map, in the order the model partitions windows;
    padding positions are height·width (a zero row appended to the map).

    HF Swin pads and then rolls the map; timm rolls and then pads (`pad_then_roll=False`).
    """
    padded = (math.ceil(height / window[0]) * window[0], math.ceil(width / window[1]) * window[1])
    grid = torch.arange(height * width, device=device).view(height, width)

    def roll(t: Tensor) -> Tensor:
        return torch.roll(t, shifts=(-shift[0], -shift[1]), dims=(0, 1)) if any(shift) else t

    def pad(t: Tensor) -> Tensor:
        return F.pad(t, (0, padded[1] - width, 0, padded[0] - height), value=height * width)

    grid = roll(pad(grid)) if pad_then_roll else pad(roll(grid))
    rows, cols = padded[0] // window[0], padded[1] // window[1]
    return grid.view(rows, window[0], cols, window[1]).permute(0, 2, 1, 3).reshape(rows * cols, -1)


def _select(bias: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """bias (batch, windows, heads, A, A) at kept (rows, cols): (batch, windows, heads, k, k)."""
    batch, windows, heads, area, _ = bias.shape
    k = rows.shape[-1]
    picked = bias.gather(3, rows[:, :, None, :, None].expand(batch, windows, heads, k, area))
    return picked.gather(4, cols[:, :, None, None, :].expand(batch, windows, heads, k, k))


def _residual_branches(x: Tensor, attended: Tensor, output: Callable, ffn: Callable) -> Tensor:
    """The rest of a block after attention, on (tokens, channels) rows."""
    x = x + output(attended)
    return x + ffn(x)


def sparse_window_block(hidden: Tensor, grid: tuple[int, int], positions: Tensor, keep: int,
                        importance: Tensor | None, *, norm: Callable, qkv: Callable, output: Callable, ffn: Callable,
                        position_bias: Tensor, shift_mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """One Swin block on `keep` tokens per window: (new hidden (batch, H·W, C), new importance (batch, H·W)).

    `positions` comes from `window_positions`; `norm`, `qkv` ((b, n, C) -> three (b, heads, n, d)), `output` (the
    attention's output projection) and `ffn` (norm2 + MLP, the residual branch) are the block's own modules;
    `position_bias` is (heads, A, A), `shift_mask` (windows, A, A) or None.
    """
    batch, tokens, channels = hidden.shape
    windows, area = positions.shape
    keep = max(1, min(int(keep), area))
    padded = torch.cat([hidden, hidden.new_zeros(batch, 1, channels)], dim=1)
    slots = positions.expand(batch, windows, area)
    if importance is None or keep == area:
        chosen = torch.arange(area, device=hidden.device).expand(batch, windows, area)
    else:
        scores = torch.cat([importance, importance.new_full((batch, 1), float("-inf"))], dim=1)
        window_scores = scores.gather(1, slots.reshape(batch, -1)).view(batch, windows, area)
        chosen = window_scores.topk(keep, dim=-1).indices.sort(dim=-1).values
    kept = slots.gather(2, chosen)                                       # (batch, windows, k) map positions
    flat = kept.reshape(batch, windows * keep)
    x = gather_tokens(padded, flat).view(batch * windows, keep, channels)
    real = (kept < tokens).view(batch * windows, keep, 1)
    normed = norm(x) * real                                              # padding enters attention as zeros
    q, k, v = qkv(normed)
    bias = position_bias[None, None].expand(batch, windows, -1, -1, -1)
    if shift_mask is not None:
        bias = bias + shift_mask[None, :, None]
    heads = q.shape[1]
    if keep < area:  # the kept pairs (with every token kept, the bias is already in window order)
        bias = _select(bias, chosen, chosen)
    bias = bias.reshape(batch * windows, heads, keep, keep)
    probabilities = (torch.matmul(q, k.transpose(-1, -2)) * scale + bias).softmax(dim=-1)
    attended = torch.matmul(probabilities, v).transpose(1, 2).reshape(batch * windows * keep, -1)
    x = x.reshape(batch * windows * keep, channels)
    if not bool(real.all()):  # padding serves only as keys: the projection and MLP run on real tokens only
        rows = real.reshape(-1).nonzero().squeeze(1)
        x = x.index_copy(0, rows, _residual_branches(x.index_select(0, rows), attended.index_select(0, rows),
                                                     output, ffn))
    else:
        x = _residual_branches(x, attended, output, ffn)
    received = probabilities.mean(dim=(1, 2)) * keep                     # 1 = uniform attention
    updated = scatter_tokens(padded, flat, x.view(batch, windows * keep, channels))[:, :tokens]
    base = importance if importance is not None else hidden.new_ones(batch, tokens)
    new_importance = torch.cat([base, base.new_zeros(batch, 1)], dim=1).scatter(
        1, flat, received.reshape(batch, -1))[:, :tokens]
    return updated, new_importance


def importance_at(importance: Tensor | None, source: tuple[int, int] | None, grid: tuple[int, int]) -> Tensor | None:
    """The importance map at `grid`: as is, averaged down across a patch merging, or None without one."""
    if importance is None or source is None:
        return None
    if tuple(source) == tuple(grid):
        return importance
    pooled = F.adaptive_avg_pool2d(importance.view(-1, 1, *source), grid)
    return pooled.reshape(importance.shape[0], -1)


class WindowTokenReducer:
    """Drives `sparse_window_block` over a model's Swin blocks (numbered 0..n-1 in forward order) from a schedule
    of `ClipStep`s (None: the block keeps every token). Clipped tokens always pass unchanged (nothing is fused).

    The first block calls `start`; each block calls `run_block`. Blocks after the last clipping block, blocks
    before the one that scores tokens for the first clipping block (its predecessor), and every block when nothing
    is clipped, run their original forward (`uses_original_forward`): clipping the last two stages of a backbone
    leaves its first stages exactly as they were, at their original cost.
    """

    def __init__(self, steps: list):
        self.steps = list(steps)
        reducing = [i for i, step in enumerate(self.steps) if step is not None and step.keep_ratio < 1]
        self.last_reducing = reducing[-1] if reducing else -1
        self.first_scoring = reducing[0] - 1 if reducing else len(self.steps)
        self.importance: Tensor | None = None
        self.grid: tuple[int, int] | None = None
        self._tokens: list[int] = []
        self._fractions: list[float] = []
        #: tokens entering the first block, then the tokens each block ran on, in the last forward
        self.last_tokens: list[int] = []
        #: the fraction of its tokens each block ran on, in the last forward
        self.last_fractions: list[float] = []

    def uses_original_forward(self, block: int) -> bool:
        return block > self.last_reducing or block < self.first_scoring

    def start(self, tokens: int) -> None:
        self.importance, self.grid, self._tokens, self._fractions = None, None, [tokens], []

    def run_block(self, block: int, hidden: Tensor, grid: tuple[int, int], window: tuple[int, int],
                  shift: tuple[int, int], pad_then_roll: bool, **modules) -> Tensor:
        step = self.steps[block]
        positions = window_positions(grid[0], grid[1], tuple(window), tuple(shift), pad_then_roll,
                                     str(hidden.device))
        area = positions.shape[1]
        importance = importance_at(self.importance, self.grid, grid)
        keep = area if step is None or importance is None else max(1, round(step.keep_ratio * area))
        hidden, self.importance = sparse_window_block(hidden, grid, positions, keep, importance, **modules)
        self.grid = grid
        self.record(positions.shape[0] * keep, keep / area)
        return hidden

    def record(self, tokens: int, fraction: float) -> None:
        """Count a block's tokens (also for blocks that ran their original forward)."""
        self._tokens.append(tokens)
        self._fractions.append(fraction)
        if len(self._fractions) == len(self.steps):
            self.last_tokens, self.last_fractions = self._tokens, self._fractions
            self.importance = None
