// The CPU backend's Ops::attention_inputs (the default in ops/ops.cpp) with partial_rotary_dim,
// Qwen3.5's full-attention inputs: bit for bit the ops qwen35_moe.cpp ran before the fused op
// (rms_norm of q and of k per head, rope_neox_partial of q and of k, kv_write), so the CPU
// reference the transformers fixtures check stays what it was. Shapes: Qwen3.5-35B-A3B (16 q /
// 2 kv heads x 256, the first 64 values rotate, theta 1e7) and the tiny fixtures' (4 / 2 x 32,
// 16 rotate), positions past a small ring's end.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace kestrel {
namespace {

std::vector<float> random_vector(size_t n, uint32_t seed, float sigma = 1.0f, float mean = 0.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(mean, sigma);
    std::vector<float> x(n);
    for (float& v : x) v = normal(rng);
    return x;
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
            << what << " element " << i << ": fused " << got[i] << " composition " << want[i];
    }
}

struct QwenCase {
    const char* what;
    int64_t n_heads, n_kv_heads, head_dim, rotary_dim;
    double theta;
    int64_t tokens, capacity, first_position;
};

// One case through attention_inputs and through the five ops it stands for, on copies of the
// same inputs; q, k, v and both caches bit for bit.
void expect_fused_is_composition(Ops& ops, const QwenCase& c, const AttentionInputsParams& p,
                                 uint32_t seed) {
    const size_t q_n = static_cast<size_t>(c.tokens * c.n_heads * c.head_dim);
    const size_t kv_n = static_cast<size_t>(c.tokens * c.n_kv_heads * c.head_dim);
    const size_t cache_n = static_cast<size_t>(c.capacity * c.n_kv_heads * c.head_dim);
    const std::vector<float> q0 = random_vector(q_n, seed + 1);
    const std::vector<float> k0 = random_vector(kv_n, seed + 2, 3.0f);
    const std::vector<float> v0 = random_vector(kv_n, seed + 3, 0.5f);
    const std::vector<float> q_norm =
        random_vector(static_cast<size_t>(c.head_dim), seed + 4, 0.3f, 1.0f);
    const std::vector<float> k_norm =
        random_vector(static_cast<size_t>(c.head_dim), seed + 5, 0.3f, 1.0f);
    std::vector<int64_t> positions;
    for (int64_t t = 0; t < c.tokens; ++t) positions.push_back(c.first_position + t);

    std::vector<float> q = q0, k = k0, v = v0;
    std::vector<float> k_cache(cache_n, -7.0f), v_cache(cache_n, -7.0f);
    const KvLayerView cache{k_cache.data(), v_cache.data(), c.capacity,   c.n_kv_heads,
                            c.head_dim,     c.head_dim,     KvDtype::kF32};
    ASSERT_TRUE(ops.attention_inputs(q.data(), k.data(), v.data(), q_norm.data(), k_norm.data(),
                                     positions, p, cache)
                    .ok());

    // qwen35_moe.cpp's full-attention inputs before the fused op.
    std::vector<float> q_ref = q0, k_ref = k0, v_ref = v0;
    std::vector<float> k_cache_ref(cache_n, -7.0f), v_cache_ref(cache_n, -7.0f);
    const KvLayerView cache_ref{k_cache_ref.data(), v_cache_ref.data(), c.capacity,   c.n_kv_heads,
                                c.head_dim,         c.head_dim,         KvDtype::kF32};
    ops.rms_norm(q_ref.data(), q_norm.data(), c.tokens * c.n_heads, c.head_dim, p.eps,
                 q_ref.data());
    ops.rms_norm(k_ref.data(), k_norm.data(), c.tokens * c.n_kv_heads, c.head_dim, p.eps,
                 k_ref.data());
    ops.rope_neox_partial(q_ref.data(), positions, c.n_heads, c.head_dim, c.rotary_dim, c.theta);
    ops.rope_neox_partial(k_ref.data(), positions, c.n_kv_heads, c.head_dim, c.rotary_dim, c.theta);
    ops.kv_write(cache_ref, positions, k_ref.data(), v_ref.data());
    ASSERT_TRUE(ops.take_error().ok());

    const std::string what(c.what);
    expect_same_bits(q, q_ref, what + " q");
    expect_same_bits(k, k_ref, what + " k");
    expect_same_bits(v, v0, what + " v (untouched)");
    expect_same_bits(k_cache, k_cache_ref, what + " k cache");
    expect_same_bits(v_cache, v_cache_ref, what + " v cache");
}

const QwenCase kQwenCases[] = {
    {"qwen3.5-35b-a3b T=1", 16, 2, 256, 64, 1e7, 1, 1031, 262143},
    {"qwen3.5-35b-a3b T=5", 16, 2, 256, 64, 1e7, 5, 61, 61 * 7 - 3},
    {"qwen3.5 tiny 4/2 x 32", 4, 2, 32, 16, 1e4, 3, 7, 12},
};

AttentionInputsParams qwen_params(const QwenCase& c) {
    AttentionInputsParams p;
    p.n_heads = c.n_heads;
    p.n_kv_heads = c.n_kv_heads;
    p.head_dim = c.head_dim;
    p.eps = 1e-6f;
    p.theta = c.theta;
    p.partial_rotary_dim = c.rotary_dim;
    return p;
}

TEST(CpuAttentionInputs, PartialRotaryIsRmsNormThenRopeNeoxPartialThenKvWrite) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    uint32_t seed = 500;
    for (const QwenCase& c : kQwenCases) {
        seed += 10;
        expect_fused_is_composition(*ops, c, qwen_params(c), seed);
        if (::testing::Test::HasFatalFailure()) return;
    }
}

// rotary_pairs means nothing with partial_rotary_dim: a stray value changes no bit.
TEST(CpuAttentionInputs, PartialRotaryIgnoresRotaryPairs) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    const QwenCase& c = kQwenCases[2];
    AttentionInputsParams p = qwen_params(c);
    p.rotary_pairs = 3;
    expect_fused_is_composition(*ops, c, p, 700);
}

}  // namespace
}  // namespace kestrel
