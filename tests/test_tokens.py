"""The token kernels: bipartite merging, clipping, size-weighted combination, unmerge, proportional attention."""

from __future__ import annotations

import torch

from compressor.ops.token_reduction import (ClipStep, MergeStep, ScheduledTokenReducer, bipartite_merge_mapping,
                                            clip_mapping, combine, combine_sizes)
from compressor.ops.tokens import attend, size_bias


def test_merging_identical_pairs_keeps_their_value_and_adds_their_sizes():
    torch.manual_seed(0)
    distinct = torch.randn(1, 3, 8)
    x = torch.cat([torch.randn(1, 1, 8), distinct.repeat_interleave(2, dim=1)], dim=1)  # cls, a a b b c c
    mapping, count = bipartite_merge_mapping(x, r=3, prefix=1)
    assert count == 4 and mapping[0, 0] == 0
    merged = combine(x, mapping, count, torch.ones(1, 7))
    sizes = combine_sizes(torch.ones(1, 7), mapping, count)
    assert torch.allclose(merged[:, 0], x[:, 0])
    assert sorted(sizes[0].tolist()) == [1.0, 2.0, 2.0, 2.0]
    assert torch.allclose(merged[:, 1:].sort(dim=1).values, distinct.sort(dim=1).values, atol=1e-6)


def test_prefix_tokens_are_never_merged_or_clipped():
    torch.manual_seed(1)
    x = torch.randn(2, 12, 4)
    x[:, 1] = x[:, 2]  # the distillation token is identical to a patch: still never merged
    mapping, count = bipartite_merge_mapping(x, r=5, prefix=2)
    assert mapping[:, :2].tolist() == [[0, 1], [0, 1]]
    assert not (mapping[:, 2:] < 2).any()
    importance = torch.rand(2, 12)
    importance[:, :2] = -1  # least important of all, still kept
    mapping, count = clip_mapping(importance, keep=3, prefix=2, fuse=True)
    assert mapping[:, :2].tolist() == [[0, 1], [0, 1]] and count == 6


def test_clipping_keeps_the_most_important_tokens_in_order_and_fuses_the_rest():
    importance = torch.tensor([[9.0, 0.1, 0.8, 0.2, 0.9, 0.3]])
    mapping, count = clip_mapping(importance, keep=2, prefix=1, fuse=True)
    assert mapping.tolist() == [[0, 3, 1, 3, 2, 3]] and count == 4
    x = torch.arange(6.0).view(1, 6, 1)
    weight = torch.tensor([[1.0, 1.0, 1.0, 3.0, 1.0, 0.0]])
    fused = combine(x, mapping, count, weight)
    assert fused[0, :, 0].tolist() == [0.0, 2.0, 4.0, (1 * 1 + 3 * 3) / 4]


def test_proportional_attention_equals_attention_over_the_unmerged_tokens():
    """A token of size 2 with log(2) added gets exactly the weight of two identical tokens."""
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    k_full, v_full = torch.cat([k, k[:, :, 2:]], dim=2), torch.cat([v, v[:, :, 2:]], dim=2)
    module = torch.nn.Module()
    full, _ = attend(module, q, k_full, v_full, 0.5, None)
    merged, _ = attend(module, q, k, v, 0.5, size_bias(torch.tensor([[1.0, 1.0, 2.0]])))
    assert torch.allclose(full, merged, atol=1e-6)


def test_mean_importance_is_the_attention_each_token_receives():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    _, importance = attend(torch.nn.Module(), q, k, v, 0.5, None, importance="mean")
    expected = (q @ k.transpose(-1, -2) * 0.5).softmax(-1).mean(dim=2).mean(dim=1)
    assert torch.allclose(importance, expected, atol=1e-6)
    assert torch.allclose(importance.sum(-1), torch.ones(2))


def test_value_norm_importance_is_each_tokens_value_norm_and_padding_ranks_last():
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    output, importance = attend(torch.nn.Module(), q, k, v, 0.5, None, importance="value_norm")
    assert torch.allclose(output, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5), atol=1e-6)
    assert torch.allclose(importance, v.norm(dim=-1).mean(dim=1), atol=1e-6)
    size = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0] * 5])  # the first row's last two tokens are padding
    _, padded = attend(torch.nn.Module(), q, k, v, 0.5, size_bias(size), importance="value_norm", query_size=size)
    assert padded[0, 3:].eq(0).all() and padded[0, :3].gt(0).all()
    assert padded[0].topk(3).indices.sort().values.tolist() == [0, 1, 2]


def test_unmerge_gives_every_original_token_the_value_of_the_token_carrying_it():
    torch.manual_seed(4)
    reducer = ScheduledTokenReducer([MergeStep(3), ClipStep(0.5, fuse=False)], prefix=1, importance="mean",
                                    keep_all_tokens=True)
    x = torch.randn(1, 9, 4)
    reducer.start(x)
    merged = reducer.reduce(0, x, metric=x)
    assert merged.shape[1] == 6
    clipped = reducer.reduce(1, merged, importance=torch.tensor([[1.0, 0.9, 0.1, 0.8, 0.2, 0.3]]))
    assert clipped.shape[1] == 1 + 2
    restored = reducer.finish(clipped + 100.0)  # the later layers changed the kept tokens only
    assert restored.shape == x.shape
    assert reducer.last_tokens == [9, 6, 3]
    changed = (restored > 50).all(dim=-1)[0]
    assert changed[0] and 2 <= int(changed.sum()) - 1 <= 6  # kept tokens and everything merged into them
    frozen = ~changed
    values = {tuple(v.tolist()) for v in merged[0]}
    assert all(tuple(restored[0, i].tolist()) in values for i in range(9) if frozen[i])


def test_padding_tokens_are_merged_away_first_and_never_change_real_tokens():
    x = torch.randn(1, 7, 4)
    padding = torch.tensor([[True, True, True, True, True, False, False]])
    reducer = ScheduledTokenReducer([MergeStep(1)], prefix=1, keep_all_tokens=False)
    reducer.start(x, padding=padding)
    merged = reducer.reduce(0, x, metric=x)
    real = {tuple(v.tolist()) for v in x[0, :5]}
    sizes = reducer.size()[0].tolist()
    assert sorted(sizes) == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert sum(tuple(v.tolist()) in real for v in merged[0]) == 5
