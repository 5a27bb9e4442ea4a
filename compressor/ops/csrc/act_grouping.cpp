// ACT's clustering stages natively: token vectors -> E2LSH codes -> 48-bit keys -> clusters (act_group_tokens),
// then the clusters' member means and each token's prototype slot (act_cluster_means, at the end of this file).
//
// compressor/ops/lsh.py defines the stage and implements it in torch (`e2lsh_codes`, `combine_codes`,
// `group_by_key`): some forty calls, each a pass over megabytes of codes. Here it is one parallel region:
//   1. per token, its `rounds` codes floor(offset_l + sum_d x_d * a_ld / r), accumulated in float32 registers
//      (fused multiply-adds over d in order; the codes are never stored), then its key h0 * P + h1 with
//      h_j = (sum_l c_l * m_lj) mod P, summed exactly in double (each product and partial sum is an integer
//      below 2^53 while |c| < 2^29 / rounds; beyond that, status 1 hands the call back to the torch path,
//      which also owns the errors for non-finite tokens);
//   2. per row, key * 2^b + position packed into one integer, sorted by a counting sort on the top key bits
//      (hashed keys spread evenly over the buckets) and a small sort inside each bucket, then one walk that
//      numbers the clusters in key order and writes ids, members and counts — the torch path's numbering.
// Keys are folded and grouped exactly as in torch. The projection sums in a different order than a BLAS matmul,
// so a code whose value lies within float32 rounding of an integer can differ by one between the two paths
// (as it can between two BLAS libraries). No Python or torch headers: compressor/ops/native_build.py builds this
// on first use, and compressor/ops/native_act.py calls it through ctypes.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kHashPrime = (int64_t{1} << 24) - 3;          // lsh.HASH_PRIME
constexpr int64_t kPaddingNamespace = kHashPrime * kHashPrime;  // lsh.PADDING_NAMESPACE
constexpr int kKeyBits = 49;                                    // lsh.KEY_BITS
constexpr int kMaxBucketBits = 12;  // counting-sort buckets: about one per token, at most 4096
constexpr int kLanes = 8;                                       // rounds per vector register (AVX: 8 floats)
constexpr int kMaxChunks = 8;                                   // up to 64 rounds

typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

enum Status { kDone = 0, kUseTorch = 1, kUnsupported = 2 };

// floor() of 8 lanes at once (one instruction with AVX; the compiler does not vectorise it by itself).
inline Lanes floor_lanes(Lanes values) {
#ifdef __AVX__
    return reinterpret_cast<Lanes>(_mm256_floor_ps(reinterpret_cast<__m256>(values)));
#else
    for (int lane = 0; lane < kLanes; ++lane) values[lane] = std::floor(values[lane]);
    return values;
#endif
}

// The codes of TOKENS consecutive tokens (TOKENS x CHUNKS*8 floats; lanes past `rounds` have zero projections
// and offsets, so their codes are 0). Several tokens at once keep enough independent accumulators in flight.
template <int CHUNKS, int TOKENS>
inline void project(const float* vectors, int64_t dim, const Lanes* scaled, const Lanes* offsets, float* codes) {
    Lanes sums[TOKENS][CHUNKS];
    for (int token = 0; token < TOKENS; ++token)
        for (int chunk = 0; chunk < CHUNKS; ++chunk) sums[token][chunk] = offsets[chunk];
    for (int64_t d = 0; d < dim; ++d)
        for (int token = 0; token < TOKENS; ++token) {
            const float coordinate = vectors[token * dim + d];
            for (int chunk = 0; chunk < CHUNKS; ++chunk) sums[token][chunk] += coordinate * scaled[d * CHUNKS + chunk];
        }
    for (int token = 0; token < TOKENS; ++token)
        for (int chunk = 0; chunk < CHUNKS; ++chunk) {
            const Lanes floored = floor_lanes(sums[token][chunk]);
            std::memcpy(codes + (token * CHUNKS + chunk) * kLanes, &floored, sizeof(Lanes));
        }
}

// The key of one token's CHUNKS * 8 codes (lanes past `rounds` are 0, with multipliers 0); false when a code is
// too large (or not finite) for the exact double sums.
template <int CHUNKS>
inline bool token_key(const float* codes, const double* first_multipliers, const double* second_multipliers,
                      double code_bound, int64_t* key) {
    double first = 0.0, second = 0.0, largest = 0.0;
#pragma omp simd reduction(+ : first, second) reduction(max : largest)
    for (int round = 0; round < CHUNKS * kLanes; ++round) {
        const double code = codes[round];
        first += code * first_multipliers[round];  // exact: integers below 2^53, so the order does not matter
        second += code * second_multipliers[round];
        largest = std::max(largest, std::fabs(code));
    }
    if (!(largest < code_bound)) return false;
    const double prime = static_cast<double>(kHashPrime), inverse = 1.0 / prime;
    // floor(sum / P) may be off by one after rounding; the remainder is exact, so one step fixes it
    double first_residue = std::fma(-std::floor(first * inverse), prime, first);
    double second_residue = std::fma(-std::floor(second * inverse), prime, second);
    if (first_residue < 0) first_residue += prime; else if (first_residue >= prime) first_residue -= prime;
    if (second_residue < 0) second_residue += prime; else if (second_residue >= prime) second_residue -= prime;
    *key = static_cast<int64_t>(first_residue) * kHashPrime + static_cast<int64_t>(second_residue);
    return true;
}

struct Problem {
    const float* vectors;  // (batch * heads * tokens, dim) in table order
    int64_t dim, rounds, batch, heads, tokens;
    bool heads_last;       // table order (b, n, h) instead of (b, h, n)
    const uint8_t* valid;  // (rows, tokens), 1 = real token; or null
    std::vector<Lanes> scaled, offsets;  // a_ld / r as (dim, chunks) registers; b_l / r as (chunks)
    std::vector<double> first_multipliers, second_multipliers;  // chunks * 8, zero past `rounds`
    int64_t* row_keys;     // (rows, tokens) scratch
};

// Phase 1 for the entries of this thread (inside a parallel region): every token's key, at its row position.
template <int CHUNKS>
bool key_all_tokens(const Problem& problem) {
    const int64_t entries = problem.batch * problem.heads * problem.tokens, dim = problem.dim;
    const double code_bound = std::ldexp(1.0, 29) / static_cast<double>(problem.rounds);
    constexpr int kTokensAtOnce = CHUNKS <= 4 ? 2 : 1;  // 8 accumulators fill the registers without spilling
    alignas(32) float codes[kTokensAtOnce * CHUNKS * kLanes];
    bool exact = true;
#pragma omp for schedule(static)
    for (int64_t first = 0; first < entries; first += kTokensAtOnce) {
        const int64_t count = std::min<int64_t>(kTokensAtOnce, entries - first);
        if (count == kTokensAtOnce)
            project<CHUNKS, kTokensAtOnce>(problem.vectors + first * dim, dim, problem.scaled.data(),
                                           problem.offsets.data(), codes);
        else
            project<CHUNKS, 1>(problem.vectors + first * dim, dim, problem.scaled.data(), problem.offsets.data(),
                               codes);
        for (int64_t entry = first; entry < first + count; ++entry) {
            int64_t key = 0;
            exact &= token_key<CHUNKS>(codes + (entry - first) * CHUNKS * kLanes, problem.first_multipliers.data(),
                                       problem.second_multipliers.data(), code_bound, &key);
            int64_t row = entry / problem.tokens, position = entry % problem.tokens;
            if (problem.heads_last) {
                const int64_t image_token = entry / problem.heads;
                row = (image_token / problem.tokens) * problem.heads + entry % problem.heads;
                position = image_token % problem.tokens;
            }
            problem.row_keys[row * problem.tokens + position] = key;
        }
    }
    return exact;
}

bool key_all_tokens(const Problem& problem, int chunks) {
    switch (chunks) {
        case 1: return key_all_tokens<1>(problem);
        case 2: return key_all_tokens<2>(problem);
        case 3: return key_all_tokens<3>(problem);
        case 4: return key_all_tokens<4>(problem);
        case 5: return key_all_tokens<5>(problem);
        case 6: return key_all_tokens<6>(problem);
        case 7: return key_all_tokens<7>(problem);
        default: return key_all_tokens<8>(problem);
    }
}

// Sort one row's packed (key, position) values: counting sort on the top `bucket_bits` key bits
// (bucket_ends holds 2^bucket_bits + 1 counters), then each bucket.
void sort_packed(std::vector<uint64_t>& packed, std::vector<uint64_t>& sorted, std::vector<int32_t>& bucket_ends,
                 int position_bits, int bucket_bits) {
    const int64_t tokens = static_cast<int64_t>(packed.size());
    const int shift = position_bits + kKeyBits - bucket_bits;
    std::fill(bucket_ends.begin(), bucket_ends.end(), 0);
    for (int64_t n = 0; n < tokens; ++n) ++bucket_ends[(packed[n] >> shift) + 1];
    for (size_t bucket = 1; bucket < bucket_ends.size(); ++bucket) bucket_ends[bucket] += bucket_ends[bucket - 1];
    for (int64_t n = 0; n < tokens; ++n) sorted[bucket_ends[packed[n] >> shift]++] = packed[n];
    int64_t begin = 0;
    for (size_t bucket = 0; bucket + 1 < bucket_ends.size(); ++bucket) {
        const int64_t end = bucket_ends[bucket];
        if (end - begin <= 16) {  // usually 0-2 values, already in position order when their keys are equal
            for (int64_t i = begin + 1; i < end; ++i) {
                const uint64_t value = sorted[i];
                int64_t j = i;
                for (; j > begin && sorted[j - 1] > value; --j) sorted[j] = sorted[j - 1];
                sorted[j] = value;
            }
        } else {
            std::sort(sorted.begin() + begin, sorted.begin() + end);
        }
        begin = end;
    }
}

}  // namespace

// vectors: (batch * heads * tokens, dim) float32 in table order, rows (b, h, n) or (b, n, h) when heads_last;
// scaled_projections: (rounds, dim) float32, a_l / r; offsets: (rounds,) float32, b_l / r; valid: (rows, tokens)
// bytes (1 = real token) or null; multipliers: (rounds, 2) int64; row_keys: rows * tokens int64 of scratch.
// Writes ids and members (rows, tokens) and the per-row counts (see lsh.Clusters).
// Returns 0, 1 (codes too large or not finite: use the torch path) or 2 (shape outside what this handles).
extern "C" int act_group_tokens(const float* vectors, int64_t dim, const float* scaled_projections,
                                const float* offsets, int64_t rounds, int64_t batch, int64_t heads, int64_t tokens,
                                int heads_last, const uint8_t* valid, const int64_t* multipliers, int64_t* row_keys,
                                int64_t* ids, int64_t* members, int64_t* counts_per_row, int64_t* valid_clusters,
                                int64_t* valid_tokens, int num_threads) {
    const int64_t rows = batch * heads;
    const int chunks = static_cast<int>((rounds + kLanes - 1) / kLanes);
    int position_bits = 1;
    while ((int64_t{1} << position_bits) < tokens) ++position_bits;
    if (rounds < 1 || chunks > kMaxChunks || dim < 1 || tokens < 1 || kKeyBits + position_bits > 63)
        return kUnsupported;

    Problem problem{vectors, dim, rounds, batch, heads, tokens, heads_last != 0, valid, {}, {}, {}, {}, row_keys};
    problem.scaled.assign(dim * chunks, Lanes{});
    problem.offsets.assign(chunks, Lanes{});
    problem.first_multipliers.assign(chunks * kLanes, 0.0);
    problem.second_multipliers.assign(chunks * kLanes, 0.0);
    for (int64_t round = 0; round < rounds; ++round) {
        for (int64_t d = 0; d < dim; ++d)
            problem.scaled[d * chunks + round / kLanes][round % kLanes] = scaled_projections[round * dim + d];
        problem.offsets[round / kLanes][round % kLanes] = offsets[round];
        problem.first_multipliers[round] = static_cast<double>(multipliers[2 * round]);
        problem.second_multipliers[round] = static_cast<double>(multipliers[2 * round + 1]);
    }
    const uint64_t position_mask = (uint64_t{1} << position_bits) - 1;
    int status = kDone;
#pragma omp parallel num_threads(num_threads)
    {
        if (!key_all_tokens(problem, chunks)) {
#pragma omp atomic write
            status = kUseTorch;
        }
#pragma omp barrier
        int current_status;
#pragma omp atomic read
        current_status = status;
        if (current_status == kDone) {  // the same for every thread after the barrier
            std::vector<uint64_t> packed(tokens), sorted(tokens);
            // about one bucket per token: a fixed 4096 would cost more than the sort itself on short rows
            const int bucket_bits = std::min(kMaxBucketBits, std::max(1, position_bits));
            std::vector<int32_t> bucket_ends((int64_t{1} << bucket_bits) + 1);
#pragma omp for schedule(static)
            for (int64_t row = 0; row < rows; ++row) {
                int64_t row_valid_tokens = 0;
                for (int64_t n = 0; n < tokens; ++n) {
                    int64_t key = row_keys[row * tokens + n];
                    if (valid != nullptr && !valid[row * tokens + n]) key += kPaddingNamespace;
                    else ++row_valid_tokens;
                    packed[n] = (static_cast<uint64_t>(key) << position_bits) | static_cast<uint64_t>(n);
                }
                sort_packed(packed, sorted, bucket_ends, position_bits, bucket_bits);
                int64_t* row_ids = ids + row * tokens;
                int64_t* row_members = members + row * tokens;
                int64_t id = -1, last_valid_id = -1;
                uint64_t previous_key = ~uint64_t{0};
                for (int64_t i = 0; i < tokens; ++i) {
                    const uint64_t key = sorted[i] >> position_bits;
                    const int64_t position = static_cast<int64_t>(sorted[i] & position_mask);
                    if (key != previous_key) { ++id; previous_key = key; }
                    row_members[i] = position;
                    row_ids[position] = id;
                    if (i == row_valid_tokens - 1) last_valid_id = id;  // valid keys sort before padded ones
                }
                counts_per_row[row] = id + 1;
                valid_tokens[row] = row_valid_tokens;
                valid_clusters[row] = last_valid_id + 1;
            }
        }
    }
    return status;
}

namespace {

// One row's cluster means (and gather slots): members are walked in order, each cluster's vectors summed
// lane-wise in CHUNKS registers of 8 floats when the head dimension is CHUNKS * 8 (CHUNKS = 0: any dimension,
// summed in memory). Either way each lane adds the members in order, so the sums are the same.
template <int CHUNKS>
void row_means(const float* vectors, int64_t dim, int64_t row, int64_t heads, int64_t tokens, bool heads_last,
               const int64_t* row_ids, const int64_t* row_members, int64_t count, int64_t num_clusters,
               float* means, int64_t* gather_index, std::vector<float>& scratch_sum) {
    const int64_t image = row / heads, head = row % heads;
    auto entry_of = [&](int64_t position) {
        return heads_last ? (image * tokens + position) * heads + head : row * tokens + position;
    };
    constexpr int kPrefetchDistance = 8;
    Lanes sums[CHUNKS > 0 ? CHUNKS : 1];
    int64_t i = 0;
    for (int64_t cluster = 0; cluster < count; ++cluster) {
        for (int chunk = 0; chunk < CHUNKS; ++chunk) sums[chunk] = Lanes{};
        if (CHUNKS == 0) std::fill(scratch_sum.begin(), scratch_sum.end(), 0.0f);
        int64_t size = 0;
        for (; i < tokens && row_ids[row_members[i]] == cluster; ++i, ++size) {
            if (i + kPrefetchDistance < tokens)
                __builtin_prefetch(vectors + entry_of(row_members[i + kPrefetchDistance]) * dim);
            const int64_t entry = entry_of(row_members[i]);
            const float* vector = vectors + entry * dim;
            for (int chunk = 0; chunk < CHUNKS; ++chunk) {
                Lanes lanes;
                std::memcpy(&lanes, vector + chunk * kLanes, sizeof(Lanes));  // an unaligned load
                sums[chunk] += lanes;
            }
            if (CHUNKS == 0)
                for (int64_t d = 0; d < dim; ++d) scratch_sum[d] += vector[d];
            if (gather_index != nullptr) gather_index[entry] = row * num_clusters + cluster;
        }
        const float divisor = static_cast<float>(std::max<int64_t>(size, 1));
        float* mean = means + (row * num_clusters + cluster) * dim;
        for (int chunk = 0; chunk < CHUNKS; ++chunk) {
            const Lanes quotient = sums[chunk] / divisor;
            std::memcpy(mean + chunk * kLanes, &quotient, sizeof(Lanes));
        }
        if (CHUNKS == 0)
            for (int64_t d = 0; d < dim; ++d) mean[d] = scratch_sum[d] / divisor;
    }
    std::fill(means + (row * num_clusters + count) * dim, means + (row + 1) * num_clusters * dim, 0.0f);
}

}  // namespace

// The member means of every cluster — what clustered_attention.ClusterLayout.means gives, summed in the same
// order (members in position order, float32) — and, optionally, each token's prototype slot in table order
// (what ClusterLayout.broadcast gathers by). ids, members, counts_per_row: a grouping (lsh.Clusters) of
// (batch * heads) rows; means: (rows * num_clusters, dim), zero past a row's clusters; gather_index:
// (batch * heads * tokens) int64 or null. Returns 0, or 2 when a row has more than num_clusters clusters.
extern "C" int act_cluster_means(const float* vectors, int64_t dim, int64_t batch, int64_t heads, int64_t tokens,
                                 int heads_last, const int64_t* ids, const int64_t* members,
                                 const int64_t* counts_per_row, int64_t num_clusters, float* means,
                                 int64_t* gather_index, int num_threads) {
    const int64_t rows = batch * heads;
    for (int64_t row = 0; row < rows; ++row)
        if (counts_per_row[row] > num_clusters) return kUnsupported;
#pragma omp parallel num_threads(num_threads)
    {
        std::vector<float> scratch_sum(dim);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t* row_ids = ids + row * tokens;
            const int64_t* row_members = members + row * tokens;
            if (dim == 32)  // DETR's, Swin's and MiniLM's head dimension
                row_means<4>(vectors, dim, row, heads, tokens, heads_last != 0, row_ids, row_members,
                             counts_per_row[row], num_clusters, means, gather_index, scratch_sum);
            else if (dim == 64)  // ViT-B's
                row_means<8>(vectors, dim, row, heads, tokens, heads_last != 0, row_ids, row_members,
                             counts_per_row[row], num_clusters, means, gather_index, scratch_sum);
            else
                row_means<0>(vectors, dim, row, heads, tokens, heads_last != 0, row_ids, row_members,
                             counts_per_row[row], num_clusters, means, gather_index, scratch_sum);
        }
    }
    return kDone;
}
