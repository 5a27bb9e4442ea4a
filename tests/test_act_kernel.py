"""ACT attention kernel (compressor.ops): exactness, a slow reference, clustering, masks, determinism, gradients.

Everything runs on small random tensors, twice: with the native clustering kernels (built here on first use) and
with the torch path users without a compiler get. The speed claims live in benchmarks/act_speed.py, not here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from compressor.ops import ACTKernel, cluster_ids, cluster_tokens, e2lsh_codes, native_act
from compressor.ops.lsh import HASH_PRIME, _hash_multipliers, combine_codes, sort_rows

MODES = ("queries", "keys", "both")
SINGLETON_WIDTH = 1e-4  # so narrow that no two random tokens share all 32 codes


@pytest.fixture(autouse=True, params=["native", "torch"])
def act_path(request, monkeypatch):
    """Every test here runs on both implementations of ACT's clustering stages."""
    if request.param == "torch":
        monkeypatch.setattr(native_act, "_kernel", lambda: None)
        monkeypatch.setattr(native_act, "_means_kernel", lambda: None)
    else:
        assert native_act.native_grouping_available(), "the native ACT kernels did not build on this machine"
    return request.param


def random_qkv(batch=2, heads=3, tokens=37, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3))


def padding(batch, tokens, padded_per_image):
    """(B, N) validity with the last `padded_per_image[b]` tokens of image b padded."""
    valid = torch.ones(batch, tokens, dtype=torch.bool)
    for image, padded in enumerate(padded_per_image):
        valid[image, tokens - padded:] = False
    return valid


def hf_padding_mask(valid):
    """The (B, 1, N, N) bool mask HF builds for a padded batch: every query sees the valid keys."""
    batch, tokens = valid.shape
    return valid[:, None, None, :].expand(batch, 1, tokens, tokens)


def hf_layout(x):
    """The same values laid out as HF makes q/k/v: a (B, N, H·D) projection viewed as (B, H, N, D)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def planted(batch, heads, tokens, dim, num_centres, noise, seed, spread=3.0):
    """Tokens = one of `num_centres` well-separated centres (per image and head) + small noise; and the labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(batch, heads, num_centres, dim, generator=generator)
    labels = torch.randint(0, num_centres, (batch, heads, tokens), generator=generator)
    labels[..., :num_centres] = torch.arange(num_centres)  # every centre used
    members = torch.gather(centres, 2, labels[..., None].expand(-1, -1, -1, dim))
    return members + noise * torch.randn(members.shape, generator=generator), labels


def planted_qkv(batch=2, heads=3, tokens=37, dim=16):
    """Queries and keys with planted clusters (so a moderate bucket width really groups them), random values."""
    query, _ = planted(batch, heads, tokens, dim, num_centres=tokens // 4, noise=1e-3, seed=21)
    key, _ = planted(batch, heads, tokens, dim, num_centres=tokens // 4, noise=1e-3, seed=22)
    return query, key, torch.randn(query.shape, generator=torch.Generator().manual_seed(23))


# --------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-padding"])
@pytest.mark.parametrize("cluster", MODES)
def test_singleton_clusters_reproduce_exact_attention(cluster, masked):
    query, key, value = random_qkv()
    mask = hf_padding_mask(padding(2, 37, [0, 9])) if masked else None
    kernel = ACTKernel(16, rounds=32, bucket_width=SINGLETON_WIDTH, cluster=cluster)
    output = kernel(query, key, value, mask, None)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    assert (output - expected).abs().max() <= 1e-5
    assert kernel.prototype_fraction() == 1.0


@pytest.mark.parametrize("cluster", MODES)
def test_singleton_clusters_give_exact_attention_gradients(cluster):
    inputs = [t.requires_grad_() for t in random_qkv(batch=1, heads=2, tokens=20)]
    kernel = ACTKernel(16, bucket_width=SINGLETON_WIDTH, cluster=cluster)
    grads = torch.autograd.grad(kernel(*inputs, None, None).square().sum(), inputs)
    expected = torch.autograd.grad(F.scaled_dot_product_attention(*inputs).square().sum(), inputs)
    for grad, reference in zip(grads, expected):
        assert (grad - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("cluster", MODES)
def test_hf_transposed_inputs_give_the_same_output_in_sdpa_layout(cluster):
    query, key, value = planted_qkv()
    mask = hf_padding_mask(padding(2, 37, [0, 6]))
    kernel = ACTKernel(16, bucket_width=1.0, cluster=cluster)
    contiguous_output = kernel(query, key, value, mask, None)
    hf_inputs = [hf_layout(t) for t in (query, key, value)]
    hf_output = kernel(*hf_inputs, mask, None)
    assert kernel.prototype_fraction() < 0.9
    assert torch.allclose(hf_output, contiguous_output, atol=1e-6)
    # laid out like SDPA's own output for these inputs, so HF's transpose back to (B, N, H·D) is free
    assert hf_output.stride() == F.scaled_dot_product_attention(*hf_inputs, attn_mask=mask).stride()


def test_disabled_kernel_runs_exact_attention():
    query, key, value = random_qkv()
    mask = hf_padding_mask(padding(2, 37, [3, 0]))
    kernel = ACTKernel(16, bucket_width=100.0)  # everything would collapse into one cluster if enabled
    kernel.enabled = False
    assert torch.equal(kernel(query, key, value, mask, 0.3),
                       F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3))
    assert kernel.uncounted_flops == 0


def test_additive_padding_mask_matches_bool_mask():
    query, key, value = planted_qkv()
    valid = padding(2, 37, [5, 11])
    additive = torch.zeros(2, 1, 1, 37).masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)
    for cluster in MODES:
        kernel = ACTKernel(16, bucket_width=1.0, cluster=cluster)
        assert torch.allclose(kernel(query, key, value, additive, None),
                              kernel(query, key, value, hf_padding_mask(valid), None), atol=1e-6)
        assert kernel.prototype_fraction() < 0.9


# ----------------------------------------------------------------------------------------- slow reference
def reference_act(kernel, query, key, value, key_valid, scale):
    """ACT written out with Python loops: per (image, head) row, per cluster, per query."""
    projections, offsets = kernel.projections.double(), kernel.offsets_unit.double()
    width = float(kernel.bucket_width)

    def clusters_of(tokens, valid):
        """{(is_valid, codes): [token positions]} with h(v) = floor((a·v + b) / r), b = offsets · r."""
        groups = {}
        for position, vector in enumerate(tokens.double()):
            codes = tuple(math.floor((float(a @ vector) + float(u) * width) / width)
                          for a, u in zip(projections, offsets))
            groups.setdefault((bool(valid[position]), codes), []).append(position)
        return list(groups.items())

    batch, heads, query_tokens, _ = query.shape
    output = torch.zeros(batch, heads, query_tokens, value.shape[-1], dtype=torch.float64)
    for image in range(batch):
        valid = key_valid[image]
        for head in range(heads):
            q, k, v = (t[image, head].double() for t in (query, key, value))
            if kernel.cluster == "queries":  # every valid key stands for itself
                key_protos = [(k[j], v[j], 1) for j in range(k.shape[0]) if valid[j]]
            else:
                key_protos = [(k[members].mean(0), v[members].mean(0), len(members))
                              for (is_valid, _), members in clusters_of(k, valid) if is_valid]
            if kernel.cluster == "keys":
                query_groups = [[i] for i in range(query_tokens)]
            else:
                query_groups = [members for _, members in clusters_of(q, valid)]
            for members in query_groups:
                prototype = q[members].mean(0)
                logits = torch.stack([prototype @ kp * scale + math.log(n) for kp, _, n in key_protos])
                weights = torch.softmax(logits, 0)
                output[image, head, members] = sum(w * vp for w, (_, vp, _) in zip(weights, key_protos))
    return output


@pytest.mark.parametrize("cluster", MODES)
def test_kernel_matches_slow_reference_on_planted_clusters(cluster):
    batch, heads, tokens, dim = 2, 2, 24, 8
    query, _ = planted(batch, heads, tokens, dim, num_centres=6, noise=1e-3, seed=1)
    key, _ = planted(batch, heads, tokens, dim, num_centres=5, noise=1e-3, seed=2)
    value = torch.randn(batch, heads, tokens, dim, generator=torch.Generator().manual_seed(3))
    valid = padding(batch, tokens, [0, 5])
    kernel = ACTKernel(dim, rounds=8, bucket_width=1.0, cluster=cluster, seed=4)
    output = kernel(query, key, value, hf_padding_mask(valid), 0.5)
    expected = reference_act(kernel, query, key, value, valid, 0.5)
    assert kernel.prototype_fraction() < 0.5  # real clusters formed, not singletons
    assert (output.double() - expected).abs().max() <= 1e-5


# --------------------------------------------------------------------------------------------- clustering
def test_planted_centres_are_found_as_clusters():
    num_centres = 12
    query, labels = planted(2, 4, 300, 32, num_centres=num_centres, noise=1e-5, seed=5)
    kernel = ACTKernel(32, rounds=32, bucket_width=1.0)
    kernel(query, query, query, None, None)
    codes = e2lsh_codes(query, kernel.projections, kernel.offsets_unit, kernel.bucket_width)
    ids, counts, _ = cluster_ids(codes)
    # never two centres in one cluster; a centre lying on a bucket boundary may rarely split in two
    assert all(len((labels_row * 1000 + ids_row).unique()) == count
               for labels_row, ids_row, count in zip(labels.reshape(8, -1), ids, counts))
    assert counts.min() >= num_centres and counts.float().mean() <= 1.05 * num_centres
    assert kernel.prototype_fraction() == pytest.approx(num_centres / 300, rel=0.05)


def test_wider_buckets_give_fewer_clusters():
    query, key, value = random_qkv(tokens=200)
    fractions = []
    for width in (16.0, 64.0, 256.0):
        kernel = ACTKernel(16, bucket_width=width)
        kernel(query, key, value, None, None)
        fractions.append(kernel.prototype_fraction())
    assert fractions[0] > fractions[1] > fractions[2]


def test_cluster_ids_number_identical_code_tuples_alike():
    codes = torch.tensor([[[1, 2], [3, 4], [1, 2], [-7, 0], [3, 4]],
                          [[0, 0], [0, 0], [0, 0], [0, 0], [5, 5]]])
    ids, counts, valid_clusters = cluster_ids(codes)
    assert counts.tolist() == [3, 2] and valid_clusters.tolist() == [3, 2]
    for row_ids, row_codes in zip(ids, codes):
        for i in range(5):
            for j in range(5):
                assert (row_ids[i] == row_ids[j]) == torch.equal(row_codes[i], row_codes[j])
        assert sorted(set(row_ids.tolist())) == list(range(len(set(row_ids.tolist()))))
    members = cluster_tokens(codes).members  # each row's tokens in cluster order
    assert (ids.gather(1, members).diff(dim=1) >= 0).all()


@pytest.fixture
def reduced_precision_float32_matmul():
    """Allow bf16 float32 matmuls on CPU (what set_float32_matmul_precision("medium") does), then restore."""
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    yield
    torch.backends.mkldnn.matmul.fp32_precision = previous


def assert_keys_follow_modular_hash_definition(codes):
    """key = h1·P + h2, h_j = Σ c_l·m_lj mod P, checked with Python integers (no overflow possible)."""
    multipliers = _hash_multipliers(codes.shape[-1], codes.device)
    keys = combine_codes(codes)
    for row in range(codes.shape[0]):
        for token in range(codes.shape[1]):
            c = [int(code) for code in codes[row, token].tolist()]
            h1, h2 = (sum(ci * int(m) for ci, m in zip(c, multipliers[:, j])) % HASH_PRIME for j in (0, 1))
            assert int(keys[row, token]) == h1 * HASH_PRIME + h2


@pytest.mark.parametrize("magnitude", [50, 30_000, 10**9], ids=["wide-limbs", "narrow-limbs", "int64-modular"])
def test_code_keys_follow_the_modular_hash_definition(magnitude):
    generator = torch.Generator().manual_seed(6)
    assert_keys_follow_modular_hash_definition(torch.randint(-magnitude, magnitude, (2, 7, 5), generator=generator))
    float_codes = torch.randint(-magnitude, magnitude, (2, 7, 32), generator=generator).float()
    assert_keys_follow_modular_hash_definition(float_codes)


def test_code_keys_stay_exact_when_float32_matmuls_may_use_bf16(reduced_precision_float32_matmul):
    # big enough for oneDNN to take its bf16 path, which rounds these sums by thousands when allowed
    codes = torch.randint(-3000, 3000, (1, 3000, 32), generator=torch.Generator().manual_seed(9)).float()
    assert_keys_follow_modular_hash_definition(codes)


@pytest.mark.parametrize("tokens", [50, 2**14 + 1], ids=["packed-numpy", "torch-sort"])
def test_sort_rows_sorts_each_row_and_returns_its_permutation(tokens):
    keys = torch.randint(0, 40, (3, tokens), generator=torch.Generator().manual_seed(10)) * 2**40  # many ties
    sorted_keys, positions = sort_rows(keys)
    expected_keys, _ = torch.sort(keys, dim=1)
    assert torch.equal(sorted_keys, expected_keys)
    assert torch.equal(torch.gather(keys, 1, positions), sorted_keys)
    assert torch.equal(positions.sort(dim=1).values, torch.arange(tokens).expand(3, -1))


def test_padded_tokens_never_share_a_cluster_with_valid_tokens():
    generator = torch.Generator().manual_seed(7)
    codes = torch.randint(0, 3, (4, 30, 2), generator=generator)  # few distinct tuples: lots of sharing
    codes[:, 20:] = codes[:, :10]  # padded tokens copy valid tokens' codes exactly
    valid = torch.ones(4, 30, dtype=torch.bool)
    valid[:, 20:] = False
    clusters = cluster_tokens(codes, valid)
    for row in range(4):
        valid_ids = set(clusters.ids[row, :20].tolist())
        padded_ids = set(clusters.ids[row, 20:].tolist())
        assert not valid_ids & padded_ids
        assert len(valid_ids) == clusters.valid_clusters[row]
        assert min(padded_ids) >= clusters.valid_clusters[row]  # valid clusters are numbered first
    assert clusters.valid_tokens.tolist() == [20] * 4


@pytest.mark.parametrize("cluster", MODES)
def test_masked_keys_get_no_attention(cluster):
    query, key, value = planted_qkv(tokens=40)
    valid = padding(2, 40, [12, 3])
    kernel = ACTKernel(16, bucket_width=1.0, cluster=cluster)
    output = kernel(query, key, value, hf_padding_mask(valid), None)
    padded = ~valid[:, None, :, None]
    garbage = 100 * torch.randn(key.shape, generator=torch.Generator().manual_seed(8))
    changed = kernel(query, torch.where(padded, garbage, key), torch.where(padded, garbage, value),
                     hf_padding_mask(valid), None)
    valid_queries = valid[:, None, :, None].expand_as(output)
    assert kernel.prototype_fraction() < 0.9
    assert torch.allclose(output[valid_queries], changed[valid_queries], atol=1e-6)


def test_query_dependent_masks_are_refused():
    query, key, value = random_qkv(tokens=10)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="key-padding masks only"):
        ACTKernel(16)(query, key, value, causal, None)


def test_key_clustering_refuses_additive_biases():
    query, key, value = random_qkv(tokens=10)
    bias = torch.randn(1, 1, 1, 10)
    assert ACTKernel(16, cluster="queries")(query, key, value, bias, None).shape == query.shape
    with pytest.raises(ValueError, match="finite biases"):
        ACTKernel(16, cluster="keys")(query, key, value, bias, None)


# -------------------------------------------------------------------------------- determinism and reloading
def test_same_seed_gives_same_buffers_and_outputs():
    query, key, value = planted_qkv()
    first, second = (ACTKernel(16, bucket_width=1.0, cluster="both", seed=3) for _ in range(2))
    for name, buffer in first.state_dict().items():
        assert torch.equal(buffer, second.state_dict()[name])
    assert torch.equal(first(query, key, value, None, None), second(query, key, value, None, None))
    assert first.prototype_fraction() < 0.9


def test_different_seeds_give_different_projections():
    assert not torch.equal(ACTKernel(16, seed=0).projections, ACTKernel(16, seed=1).projections)
    assert not torch.equal(ACTKernel(16, seed=0).offsets_unit, ACTKernel(16, seed=1).offsets_unit)


def test_safetensors_round_trip_reproduces_outputs(tmp_path):
    query, key, value = planted_qkv()
    original = ACTKernel(16, rounds=16, cluster="both", seed=11)
    original.set_bucket_width(1.5)
    save_file(original.state_dict(), tmp_path / "kernel.safetensors")
    reloaded = ACTKernel(16, rounds=16, cluster="both", seed=0)
    reloaded.load_state_dict(load_file(tmp_path / "kernel.safetensors"))
    assert float(reloaded.bucket_width) == 1.5
    assert torch.equal(original(query, key, value, None, None), reloaded(query, key, value, None, None))
    assert original.prototype_fraction() < 0.9


def test_statistics_are_not_saved_and_reset():
    kernel = ACTKernel(16, cluster="both", bucket_width=2.0)
    kernel(*random_qkv(), None, None)
    assert set(kernel.state_dict()) == {"projections", "offsets_unit", "bucket_width"}
    assert kernel.query_statistics.tokens == 2 * 3 * 37 and kernel.key_statistics.prototypes > 0
    kernel.reset_statistics()
    assert kernel.query_statistics.tokens == 0 and math.isnan(kernel.prototype_fraction())


# ---------------------------------------------------------------------------------- gradients, dtype, cost
@pytest.mark.parametrize("cluster", MODES)
def test_gradients_flow_to_query_key_and_value(cluster):
    inputs = [t.requires_grad_() for t in planted_qkv()]
    kernel = ACTKernel(16, bucket_width=1.0, cluster=cluster)
    kernel(*inputs, hf_padding_mask(padding(2, 37, [4, 0])), None).square().sum().backward()
    assert kernel.prototype_fraction() < 0.9
    for tensor in inputs:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_output_keeps_input_dtype_also_after_the_module_is_cast():
    query, key, value = (t.to(torch.bfloat16) for t in random_qkv())
    kernel = ACTKernel(16, bucket_width=2.0, cluster="both")
    assert kernel(query, key, value, None, None).dtype == torch.bfloat16
    kernel.to(torch.bfloat16)  # model.to(dtype) casts the hash buffers too; hashing still runs in float32
    output = kernel(query, key, value, None, None)
    assert output.dtype == torch.bfloat16 and output.shape == query.shape


def test_hash_projection_is_counted_and_the_rest_reported():
    query, key, value = random_qkv(batch=2, heads=3, tokens=37, dim=16)
    kernel = ACTKernel(16, rounds=32, bucket_width=2.0)
    with FlopCounterMode(display=False) as counter:
        kernel(query, key, value, None, None)
    projection_flops = 2 * (2 * 3 * 37) * 16 * 32
    assert counter.get_total_flops() >= projection_flops
    assert kernel.uncounted_flops > 0
