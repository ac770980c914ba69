// The KV cache in TQ4 (ops/kv_tq4.h; techniques.md §4, gemma4-and-gemma3.md §4): writes encode
// each K and V vector with tq4_encode_into (the same bits as tq4_encode; a key less the cache's
// centre when it has one: kv_tq4.h, "Key centring"), and attention runs in the rotated space
// without decoding a vector, as tq4_attend defines it:
//   q' = R q;  s_j = scale * norm_kj * (q' . c_kj), softcap;  p = softmax(s);
//   out = R^T (sum_j p_j norm_vj c_vj)
// in fp32 with the CPU backend's fixed summation order (dot()), so a row's result does not depend
// on the thread count or on how a prompt is chunked. tq4_attend sums in double; the two agree to
// fp32 rounding (tests/unit/cpu_ops_tq4_test.cpp).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <span>
#include <vector>

#include "core/half.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/parallel.h"
#include "ops/kv_tq4.h"

namespace kestrel::cpu {

namespace {

// Codebook values of both nibbles of every byte: pairs[b] = {level[b & 15], level[b >> 4]} (element
// 2i in the low nibble), so unpacking a vector is one 8-byte copy per byte of indices.
using LevelPairs = std::array<std::array<float, 2>, 256>;

LevelPairs level_pairs(int64_t head_dim) {
    const std::array<float, kTq4Levels> levels = tq4_levels(head_dim);
    LevelPairs pairs{};
    for (int b = 0; b < 256; ++b) pairs[b] = {levels[b & 0x0F], levels[b >> 4]};
    return pairs;
}

// c [d] = the codebook values of one stored vector's indices [d / 2].
inline void unpack(const uint8_t* indices, int64_t d, const LevelPairs& pairs, float* c) {
    for (int64_t b = 0; b < d / 2; ++b)
        std::memcpy(c + 2 * b, pairs[indices[b]].data(), 2 * sizeof(float));
}

struct Scratch {
    std::vector<float> q_rotated;  // [group, d]
    std::vector<float> scores;     // [group, n_keys]
    std::vector<float> codes;      // [d]
    std::vector<float> acc;        // [group, d], the rotated output
};

// The `group` query heads that read one kv head, for one query at `pos`: each stored key is
// unpacked once and scored against every head of the group (GQA).
KESTREL_HOT_LOOP void attend_group(const float* q, int64_t pos, int64_t kv_head, int64_t group,
                                   const KvLayerView& cache, const AttentionParams& params,
                                   const LevelPairs& pairs, Scratch& scratch, float* out) {
    const int64_t d = cache.head_dim;  // == v_head_dim: KvCache refuses TQ4 otherwise
    const int64_t first = first_visible_position(pos, params.window);
    const int64_t n_keys = pos - first + 1;
    const float* rotation = cache.rotation;
    const auto* k_indices = static_cast<const uint8_t*>(cache.k);
    const auto* v_indices = static_cast<const uint8_t*>(cache.v);
    scratch.q_rotated.resize(static_cast<size_t>(group * d));
    scratch.scores.resize(static_cast<size_t>(group * n_keys));
    scratch.codes.resize(static_cast<size_t>(d));
    scratch.acc.assign(static_cast<size_t>(group * d), 0.0f);
    float* codes = scratch.codes.data();

    // q' = R q, once per (query, head).
    for (int64_t g = 0; g < group; ++g) {
        for (int64_t i = 0; i < d; ++i)
            scratch.q_rotated[g * d + i] = dot(rotation + i * d, q + g * d, d);
    }
    for (int64_t j = 0; j < n_keys; ++j) {
        const int64_t entry = ((first + j) % cache.capacity) * cache.n_kv_heads + kv_head;
        unpack(k_indices + entry * (d / 2), d, pairs, codes);
        const float norm_scale = params.scale * bf16_to_fp32(cache.k_norm[entry]);
        for (int64_t g = 0; g < group; ++g) {
            float s = norm_scale * dot(scratch.q_rotated.data() + g * d, codes, d);
            if (params.softcap > 0.0f) s = params.softcap * std::tanh(s / params.softcap);
            scratch.scores[g * n_keys + j] = s;
        }
    }
    for (int64_t g = 0; g < group; ++g) softmax(scratch.scores.data() + g * n_keys, n_keys);
    // acc = sum_j p_j norm_vj c_vj, in the rotated space.
    for (int64_t j = 0; j < n_keys; ++j) {
        const int64_t entry = ((first + j) % cache.capacity) * cache.n_kv_heads + kv_head;
        unpack(v_indices + entry * (d / 2), d, pairs, codes);
        const float norm = bf16_to_fp32(cache.v_norm[entry]);
        for (int64_t g = 0; g < group; ++g) {
            const float weight = scratch.scores[g * n_keys + j] * norm;
            float* acc = scratch.acc.data() + g * d;
            for (int64_t i = 0; i < d; ++i) acc[i] += weight * codes[i];
        }
    }
    // out = R^T acc: row i of R scaled by acc[i], summed over i in order.
    for (int64_t g = 0; g < group; ++g) {
        float* oh = out + g * d;
        const float* acc = scratch.acc.data() + g * d;
        std::fill(oh, oh + d, 0.0f);
        for (int64_t i = 0; i < d; ++i) {
            const float* row = rotation + i * d;
            for (int64_t c = 0; c < d; ++c) oh[c] += row[c] * acc[i];
        }
    }
}

}  // namespace

void kv_write_tq4(const KvLayerView& cache, std::span<const int64_t> positions, const float* k,
                  const float* v, int threads) {
    const int64_t d = cache.head_dim;
    const int64_t n_kv = cache.n_kv_heads;
    const std::span<const float> rotation(cache.rotation, static_cast<size_t>(d * d));
    auto* k_indices = static_cast<uint8_t*>(cache.k);
    auto* v_indices = static_cast<uint8_t*>(cache.v);
    const auto tokens = static_cast<int64_t>(positions.size());
    const auto items = tokens * n_kv;
    float* center = cache.k_center;
    if (center != nullptr && tokens >= kTq4CenterMinTokens && positions[0] == 0) {
        // A sequence's first long write: its keys' mean, fp32 summed in token order (the CUDA
        // write's order), becomes the centre (ops/kv_tq4.h, "Key centring").
        for (int64_t i = 0; i < n_kv * d; ++i) {
            float sum = 0.0f;
            for (int64_t t = 0; t < tokens; ++t) sum += k[t * n_kv * d + i];
            center[i] = sum / static_cast<float>(tokens);
        }
    }
    // One item: a token's K and V of one head, two rotations of d x d.
    parallel_for(items, threads, 2 * d * d, [&](int64_t begin, int64_t end) {
        std::vector<float> centered(center != nullptr ? static_cast<size_t>(d) : 0);
        for (int64_t item = begin; item < end; ++item) {
            const int64_t t = item / n_kv;
            const int64_t head = item % n_kv;
            const int64_t entry = (positions[t] % cache.capacity) * n_kv + head;
            std::span<const float> key(k + item * d, static_cast<size_t>(d));
            if (center != nullptr) {
                for (int64_t i = 0; i < d; ++i) centered[i] = key[i] - center[head * d + i];
                key = centered;
            }
            tq4_encode_into(key, rotation, cache.k_norm + entry, k_indices + entry * (d / 2));
            tq4_encode_into(std::span(v + item * d, static_cast<size_t>(d)), rotation,
                            cache.v_norm + entry, v_indices + entry * (d / 2));
        }
    });
}

void attention_tq4(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
                   const AttentionParams& params, float* out, int threads) {
    const int64_t n_tokens = static_cast<int64_t>(positions.size());
    const int64_t n_kv = cache.n_kv_heads;
    const int64_t group = params.n_heads / n_kv;  // query heads per kv head
    const int64_t d = cache.head_dim;
    const LevelPairs pairs = level_pairs(d);
    const int64_t max_keys = positions.empty() ? 0 : positions.back() + 1;
    const int64_t keys = params.window > 0 ? std::min(max_keys, params.window) : max_keys;
    // Per (query, kv head): every visible key unpacked twice and dotted / accumulated per head,
    // plus the rotations in and out.
    const int64_t cost = keys * d * (2 + 2 * group) + 2 * group * d * d;
    parallel_for(n_tokens * n_kv, threads, cost, [&](int64_t begin, int64_t end) {
        Scratch scratch;
        for (int64_t item = begin; item < end; ++item) {
            const int64_t t = item / n_kv;
            const int64_t kv_head = item % n_kv;
            const int64_t first_head = t * params.n_heads + kv_head * group;
            attend_group(q + first_head * d, positions[t], kv_head, group, cache, params, pairs,
                         scratch, out + first_head * d);
        }
    });
}

}  // namespace kestrel::cpu
