// The fused attention inputs (src/ops/cuda/attention_inputs.h) against the five launches it
// replaces (copy raw k -> v, head_norm_rope(q), head_norm_rope(k), rms_norm(v), kv_write_bf16;
// Qwen3.5: rms_norm(q), rms_norm(k), rope_neox_partial(q), rope_neox_partial(k), kv_write_bf16),
// run on a copy of the same inputs, and against the CPU twin (make_cpu_ops(): head_norm_rope, or
// rms_norm then rope_neox_partial, rms_norm, kv_write into an fp32 cache, then fp32_to_bf16).
// Shapes: Gemma 4 31B sliding (32 q / 16 kv heads x 256, all 128 pairs rotate, theta 1e4, V-norm)
// and full (32 / 4 x 512, 64 pairs, theta 1e6, V = raw K, V-norm), Gemma 3 (4 / 1 x 256, no
// V-norm), tiny heads (16, 32), Qwen3.5-35B-A3B (16 / 2 x 256, partial_rotary_dim 64, theta 1e7,
// V untouched) and the tiny Qwen3.5 fixtures' shape (4 / 2 x 32, partial_rotary_dim 16).
// Positions run past the ring's capacity, so slots wrap. The cache is poisoned with a bf16 NaN
// pattern first (untouched slots must keep it), and V's input is NaN where V comes from K. Skips
// without a GPU. Tolerances, with u = 2^-24:
//   against the composition: q, k, v and the whole cache bit for bit (the same device functions
//     in the same order: load_row_inv_rms<32>, normalise_chunk, rope_cos_sin, rotate_pair, RNE).
//   against the CPU: q, k (36u (|a| + |b|) of the CPU-normalised pair: head_norm_rope's tolerance
//     in cuda_small_ops_test.cpp; with partial_rotary_dim r the pair is (j, j + r / 2), and a
//     value past r, which no pair turns, gets 36u |a| of itself, above rms_norm's 32u), v (32u
//     |cpu|, rms_norm's); each cache value is bf16(its own fp32 output) bit for bit, and within
//     that fp32 tolerance plus 2^-8 (|gpu| + |cpu|) of bf16(cpu) (the two sides' bf16 roundings,
//     RNE: at most 2^-8 relative each).
//   graph: one captured launch replayed at 3 positions (only the device positions change) is bit
//     for bit the composition launched directly (a Gemma 4 full layer and a Qwen3.5 one).
#include <gtest/gtest.h>

#include <cstdint>

#include "kestrel/status.h"

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/attention_inputs.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/small_ops.h"
#include "ops/ops.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaAttentionInputs, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::copy_to_device;
using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::random_vector;
using kestrel::testing::upload;

constexpr double kU = 0x1.0p-24;
constexpr float kEps = 1e-6f;

// Norm weights around 1, as trained ones are.
std::vector<float> random_weight(size_t n, uint32_t seed) {
    std::vector<float> w = random_vector(n, seed, 0.3f);
    for (float& v : w) v = 1.0f + std::clamp(v, -0.9f, 3.0f);
    return w;
}

// A bf16 NaN pattern with varying sign and payload, so a stray write of any value shows.
std::vector<uint16_t> poisoned_cache(size_t n) {
    std::vector<uint16_t> c(n);
    for (size_t i = 0; i < n; ++i)
        c[i] = static_cast<uint16_t>(0x7fa1u + (i % 29) * 2) | (i % 3 == 0 ? 0x8000u : 0u);
    return c;
}

bool same_bits(float a, float b) {
    return std::memcmp(&a, &b, sizeof(float)) == 0;
}

struct Case {
    const char* what;
    int64_t n_heads, n_kv_heads, head_dim, rotary_pairs;
    double theta;
    bool v_from_raw_k, v_norm;
    int64_t tokens, capacity, first_position;
    int64_t partial_rotary_dim;  // > 0: Qwen3.5's partial rotate-half (rotary_pairs unused)
};

// first_position past the capacity, and runs of tokens across the ring's end (slot capacity - 1 ->
// 0).
const Case kCases[] = {
    {"gemma4 sliding T=1", 32, 16, 256, 128, 1e4, false, true, 1, 1031, 131071, 0},
    {"gemma4 sliding T=5", 32, 16, 256, 128, 1e4, false, true, 5, 1031, 3 * 1031 - 2, 0},
    {"gemma4 full T=1", 32, 4, 512, 64, 1e6, true, true, 1, 4099, 77777, 0},
    {"gemma4 full T=3", 32, 4, 512, 64, 1e6, true, true, 3, 4099, 4099 * 31 - 1, 0},
    {"gemma3 T=1", 4, 1, 256, 128, 1e4, false, false, 1, 512, 1023, 0},
    {"gemma3 T=20", 4, 1, 256, 128, 1e6, false, false, 20, 37, 37 * 5 - 7, 0},
    {"tiny 4/2 x 16", 4, 2, 16, 8, 1e4, false, true, 3, 7, 12, 0},
    {"tiny 4/1 x 32 v = raw k", 4, 1, 32, 4, 1e4, true, false, 2, 5, 9, 0},
    // 3 items a token: a block's 4 warps span up to 3 tokens (their cos / sin tables apart).
    {"tiny 2/1 x 16", 2, 1, 16, 8, 1e4, false, true, 9, 11, 17, 0},
    // Qwen3.5: rotary_pairs is ignored with partial_rotary_dim (the tiny case sets a stray 5).
    {"qwen3.5 T=1", 16, 2, 256, 0, 1e7, false, false, 1, 1031, 262143, 64},
    {"qwen3.5 T=5", 16, 2, 256, 0, 1e7, false, false, 5, 61, 61 * 7 - 3, 64},
    {"qwen3.5 tiny 4/2 x 32", 4, 2, 32, 5, 1e4, false, false, 3, 7, 12, 16},
};

// The five launches attention_inputs replaces, in the order the models run them.
Status composition(const cuda::AttentionInputs& in, const int64_t* positions, int64_t tokens,
                   const cuda::KvCacheBf16View& cache, cudaStream_t stream) {
    const int64_t kv_elements = tokens * in.n_kv_heads * in.head_dim;
    if (in.v_from_raw_k) {
        KESTREL_CUDA_CHECK(cudaMemcpyAsync(in.v, in.k,
                                           static_cast<size_t>(kv_elements) * sizeof(float),
                                           cudaMemcpyDeviceToDevice, stream));
    }
    if (in.partial_rotary_dim > 0) {  // Qwen3.5 (qwen35_moe.cpp before the fused op)
        KESTREL_RETURN_IF_ERROR(cuda::rms_norm(in.q, in.q_norm, tokens * in.n_heads, in.head_dim,
                                               in.eps, in.q, stream));
        KESTREL_RETURN_IF_ERROR(cuda::rms_norm(in.k, in.k_norm, tokens * in.n_kv_heads, in.head_dim,
                                               in.eps, in.k, stream));
        KESTREL_RETURN_IF_ERROR(cuda::rope_neox_partial(in.q, positions, tokens, in.n_heads,
                                                        in.head_dim, in.partial_rotary_dim,
                                                        in.theta, stream));
        KESTREL_RETURN_IF_ERROR(cuda::rope_neox_partial(in.k, positions, tokens, in.n_kv_heads,
                                                        in.head_dim, in.partial_rotary_dim,
                                                        in.theta, stream));
    } else {
        KESTREL_RETURN_IF_ERROR(cuda::head_norm_rope(in.q, in.q_norm, positions, tokens, in.n_heads,
                                                     in.head_dim, in.rotary_pairs, in.eps, in.theta,
                                                     stream));
        KESTREL_RETURN_IF_ERROR(cuda::head_norm_rope(in.k, in.k_norm, positions, tokens,
                                                     in.n_kv_heads, in.head_dim, in.rotary_pairs,
                                                     in.eps, in.theta, stream));
    }
    if (in.v_norm) {
        KESTREL_RETURN_IF_ERROR(cuda::rms_norm(in.v, nullptr, tokens * in.n_kv_heads, in.head_dim,
                                               in.eps, in.v, stream));
    }
    return cuda::kv_write_bf16(cache, positions, tokens, in.k, in.v, stream);
}

// Host inputs of one case.
struct HostInputs {
    std::vector<float> q, k, v, q_norm, k_norm;
    std::vector<int64_t> positions;
};

HostInputs make_inputs(const Case& c, uint32_t seed) {
    HostInputs h;
    const size_t kv = static_cast<size_t>(c.tokens * c.n_kv_heads * c.head_dim);
    h.q = random_vector(static_cast<size_t>(c.tokens * c.n_heads * c.head_dim), seed + 1);
    h.k = random_vector(kv, seed + 2, 3.0f);
    // V's input is ignored when V is the raw K: NaN there proves it.
    h.v =
        c.v_from_raw_k ? std::vector<float>(kv, std::nanf("")) : random_vector(kv, seed + 3, 0.5f);
    h.q_norm = random_weight(static_cast<size_t>(c.head_dim), seed + 4);
    h.k_norm = random_weight(static_cast<size_t>(c.head_dim), seed + 5);
    for (int64_t t = 0; t < c.tokens; ++t) h.positions.push_back(c.first_position + t);
    return h;
}

// Device copies of one case's inputs and its cache.
struct DeviceSet {
    DeviceBuffer q, k, v, q_norm, k_norm, positions, k_cache, v_cache;
    cuda::AttentionInputs inputs;
    cuda::KvCacheBf16View cache;
};

void make_device_set(const Case& c, const HostInputs& h, const std::vector<uint16_t>& poison,
                     DeviceSet& d) {
    upload(d.q, h.q);
    upload(d.k, h.k);
    upload(d.v, h.v);
    upload(d.q_norm, h.q_norm);
    upload(d.k_norm, h.k_norm);
    upload(d.positions, h.positions);
    upload(d.k_cache, poison);
    upload(d.v_cache, poison);
    d.inputs = cuda::AttentionInputs{d.q.as<float>(),
                                     d.k.as<float>(),
                                     d.v.as<float>(),
                                     d.q_norm.as<float>(),
                                     d.k_norm.as<float>(),
                                     c.v_from_raw_k,
                                     c.v_norm,
                                     c.n_heads,
                                     c.n_kv_heads,
                                     c.head_dim,
                                     c.rotary_pairs,
                                     kEps,
                                     c.theta,
                                     c.partial_rotary_dim};
    d.cache = cuda::KvCacheBf16View{d.k_cache.as<uint16_t>(),
                                    d.v_cache.as<uint16_t>(),
                                    c.capacity,
                                    c.n_kv_heads,
                                    c.head_dim,
                                    c.head_dim};
}

void expect_same_floats(const std::vector<float>& got, const std::vector<float>& want,
                        const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << what << ": NaN at " << i;
        ASSERT_TRUE(same_bits(got[i], want[i]))
            << what << " element " << i << ": fused " << got[i] << " composition " << want[i];
    }
}

void expect_same_cache(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                       const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i], want[i]) << what << " element " << i;
    }
}

// Every slot a position of `positions` maps to is NaN-free; every other slot still holds the
// poison.
void expect_slots(const std::vector<uint16_t>& cache, const std::vector<uint16_t>& poison,
                  const std::vector<int64_t>& positions, const Case& c, const std::string& what) {
    const size_t row = static_cast<size_t>(c.n_kv_heads * c.head_dim);
    std::vector<bool> written(static_cast<size_t>(c.capacity), false);
    for (int64_t p : positions) written[static_cast<size_t>(p % c.capacity)] = true;
    for (size_t slot = 0; slot < written.size(); ++slot) {
        for (size_t i = slot * row; i < (slot + 1) * row; ++i) {
            if (written[slot]) {
                ASSERT_FALSE(std::isnan(bf16_to_fp32(cache[i])))
                    << what << ": NaN in written slot " << slot;
            } else {
                ASSERT_EQ(cache[i], poison[i])
                    << what << ": untouched slot " << slot << " was written";
            }
        }
    }
}

class CudaAttentionInputs : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        cpu_ = make_cpu_ops(1);
    }
    std::unique_ptr<Ops> cpu_;
};

TEST_F(CudaAttentionInputs, BitIdenticalToTheComposition) {
    uint32_t seed = 100;
    for (const Case& c : kCases) {
        seed += 10;
        const HostInputs h = make_inputs(c, seed);
        const size_t cache_n = static_cast<size_t>(c.capacity * c.n_kv_heads * c.head_dim);
        const std::vector<uint16_t> poison = poisoned_cache(cache_n);
        DeviceSet fused, split;
        make_device_set(c, h, poison, fused);
        make_device_set(c, h, poison, split);
        STATUS_OK(cuda::attention_inputs(fused.inputs, fused.positions.as<int64_t>(), c.tokens,
                                         fused.cache, nullptr));
        STATUS_OK(composition(split.inputs, split.positions.as<int64_t>(), c.tokens, split.cache,
                              nullptr));
        CUDA_OK(cudaDeviceSynchronize());

        const std::string what = std::string(c.what);
        expect_same_floats(download(fused.q.as<float>(), h.q.size()),
                           download(split.q.as<float>(), h.q.size()), what + " q");
        expect_same_floats(download(fused.k.as<float>(), h.k.size()),
                           download(split.k.as<float>(), h.k.size()), what + " k");
        expect_same_floats(download(fused.v.as<float>(), h.v.size()),
                           download(split.v.as<float>(), h.v.size()), what + " v");
        const std::vector<uint16_t> k_cache = download(fused.k_cache.as<uint16_t>(), cache_n);
        const std::vector<uint16_t> v_cache = download(fused.v_cache.as<uint16_t>(), cache_n);
        expect_same_cache(k_cache, download(split.k_cache.as<uint16_t>(), cache_n),
                          what + " k cache");
        expect_same_cache(v_cache, download(split.v_cache.as<uint16_t>(), cache_n),
                          what + " v cache");
        expect_slots(k_cache, poison, h.positions, c, what + " k cache");
        expect_slots(v_cache, poison, h.positions, c, what + " v cache");
    }
}

// |a| + |b| of the CPU-normalised pair (a, b) (j, j + head_dim / 2) that element i belongs to;
// with partial_rotary_dim r, the pair (j, j + r / 2) for j < r, and |a| alone past r (no pair).
double pair_scale(const std::vector<float>& normed, const Case& c, size_t i) {
    const int64_t span = c.partial_rotary_dim > 0 ? c.partial_rotary_dim : c.head_dim;
    const int64_t half = span / 2;
    const int64_t j = static_cast<int64_t>(i) % c.head_dim;
    if (j >= span) return std::fabs(normed[i]);
    const size_t head = i - static_cast<size_t>(j);
    const int64_t partner = j < half ? j + half : j - half;
    return std::fabs(normed[i]) + std::fabs(normed[head + static_cast<size_t>(partner)]);
}

// |gpu - cpu| in units of u (|a| + |b|) of the CPU-normalised pair: at most 36 passes.
double pair_error_in_u(const std::vector<float>& got, const std::vector<float>& expected,
                       const std::vector<float>& normed, const Case& c, size_t i) {
    const double scale = pair_scale(normed, c, i);
    const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
    return scale > 0 ? err / (kU * scale) : (err == 0 ? 0.0 : INFINITY);
}

TEST_F(CudaAttentionInputs, MatchesTheCpuTwin) {
    uint32_t seed = 900;
    double worst_qk = 0.0, worst_v = 0.0;
    for (const Case& c : kCases) {
        seed += 10;
        const HostInputs h = make_inputs(c, seed);
        const size_t cache_n = static_cast<size_t>(c.capacity * c.n_kv_heads * c.head_dim);
        const std::vector<uint16_t> poison = poisoned_cache(cache_n);
        DeviceSet d;
        make_device_set(c, h, poison, d);
        STATUS_OK(cuda::attention_inputs(d.inputs, d.positions.as<int64_t>(), c.tokens, d.cache,
                                         nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<float> q = download(d.q.as<float>(), h.q.size());
        const std::vector<float> k = download(d.k.as<float>(), h.k.size());
        const std::vector<float> v = download(d.v.as<float>(), h.v.size());
        const std::vector<uint16_t> k_cache = download(d.k_cache.as<uint16_t>(), cache_n);
        const std::vector<uint16_t> v_cache = download(d.v_cache.as<uint16_t>(), cache_n);

        // CPU: the same composition with CpuOps, into an fp32 cache.
        const int64_t q_rows = c.tokens * c.n_heads, kv_rows = c.tokens * c.n_kv_heads;
        std::vector<float> q_normed(h.q.size()), k_normed(h.k.size());
        cpu_->rms_norm(h.q.data(), h.q_norm.data(), q_rows, c.head_dim, kEps, q_normed.data());
        cpu_->rms_norm(h.k.data(), h.k_norm.data(), kv_rows, c.head_dim, kEps, k_normed.data());
        std::vector<float> q_cpu = h.q, k_cpu = h.k, v_cpu = c.v_from_raw_k ? h.k : h.v;
        if (c.partial_rotary_dim > 0) {  // Qwen3.5: rms_norm, then rope_neox_partial
            q_cpu = q_normed;
            k_cpu = k_normed;
            cpu_->rope_neox_partial(q_cpu.data(), h.positions, c.n_heads, c.head_dim,
                                    c.partial_rotary_dim, c.theta);
            cpu_->rope_neox_partial(k_cpu.data(), h.positions, c.n_kv_heads, c.head_dim,
                                    c.partial_rotary_dim, c.theta);
        } else {
            cpu_->head_norm_rope(q_cpu.data(), h.q_norm.data(), h.positions, c.n_heads, c.head_dim,
                                 c.rotary_pairs, kEps, c.theta);
            cpu_->head_norm_rope(k_cpu.data(), h.k_norm.data(), h.positions, c.n_kv_heads,
                                 c.head_dim, c.rotary_pairs, kEps, c.theta);
        }
        if (c.v_norm)
            cpu_->rms_norm(v_cpu.data(), nullptr, kv_rows, c.head_dim, kEps, v_cpu.data());
        std::vector<float> k_cache_cpu(cache_n, 0.0f), v_cache_cpu(cache_n, 0.0f);
        const KvLayerView view{k_cache_cpu.data(), v_cache_cpu.data(), c.capacity,   c.n_kv_heads,
                               c.head_dim,         c.head_dim,         KvDtype::kF32};
        cpu_->kv_write(view, h.positions, k_cpu.data(), v_cpu.data());

        const std::string what = std::string(c.what);
        for (size_t i = 0; i < q.size(); ++i) {
            ASSERT_FALSE(std::isnan(q[i])) << what << " q: NaN at " << i;
            const double e = pair_error_in_u(q, q_cpu, q_normed, c, i);
            ASSERT_LE(e, 36.0) << what << " q element " << i << ": gpu " << q[i] << " cpu "
                               << q_cpu[i];
            worst_qk = std::max(worst_qk, e);
        }
        for (size_t i = 0; i < k.size(); ++i) {
            ASSERT_FALSE(std::isnan(k[i])) << what << " k: NaN at " << i;
            const double e = pair_error_in_u(k, k_cpu, k_normed, c, i);
            ASSERT_LE(e, 36.0) << what << " k element " << i << ": gpu " << k[i] << " cpu "
                               << k_cpu[i];
            worst_qk = std::max(worst_qk, e);
        }
        for (size_t i = 0; i < v.size(); ++i) {
            ASSERT_FALSE(std::isnan(v[i])) << what << " v: NaN at " << i;
            const double err = std::fabs(static_cast<double>(v[i]) - v_cpu[i]);
            ASSERT_LE(err, 32 * kU * std::fabs(v_cpu[i]))
                << what << " v element " << i << ": gpu " << v[i] << " cpu " << v_cpu[i];
            if (v_cpu[i] != 0.0f) worst_v = std::max(worst_v, err / (kU * std::fabs(v_cpu[i])));
        }

        // Cache: bf16 of this kernel's own fp32 output bit for bit, and within the fp32 tolerance
        // plus both sides' bf16 rounding (RNE: at most 2^-8 relative) of the CPU's bf16 value.
        const size_t row = static_cast<size_t>(c.n_kv_heads * c.head_dim);
        for (int64_t t = 0; t < c.tokens; ++t) {
            const size_t slot =
                static_cast<size_t>(h.positions[static_cast<size_t>(t)] % c.capacity);
            for (size_t e = 0; e < row; ++e) {
                const size_t out_index = static_cast<size_t>(t) * row + e,
                             cache_index = slot * row + e;
                ASSERT_EQ(k_cache[cache_index], fp32_to_bf16(k[out_index]))
                    << what << " k cache token " << t;
                ASSERT_EQ(v_cache[cache_index], fp32_to_bf16(v[out_index]))
                    << what << " v cache token " << t;
                const double k_cpu_value = k_cache_cpu[cache_index],
                             v_cpu_value = v_cache_cpu[cache_index];
                const double k_tol = 36 * kU * pair_scale(k_normed, c, out_index) +
                                     0x1.0p-8 * (std::fabs(k[out_index]) + std::fabs(k_cpu_value));
                const double v_tol = 32 * kU * std::fabs(v_cpu_value) +
                                     0x1.0p-8 * (std::fabs(v[out_index]) + std::fabs(v_cpu_value));
                ASSERT_LE(std::fabs(bf16_to_fp32(k_cache[cache_index]) -
                                    bf16_to_fp32(fp32_to_bf16(k_cache_cpu[cache_index]))),
                          k_tol)
                    << what << " k cache token " << t << " element " << e;
                ASSERT_LE(std::fabs(bf16_to_fp32(v_cache[cache_index]) -
                                    bf16_to_fp32(fp32_to_bf16(v_cache_cpu[cache_index]))),
                          v_tol)
                    << what << " v cache token " << t << " element " << e;
            }
        }
        expect_slots(k_cache, poison, h.positions, c, what + " k cache");
        expect_slots(v_cache, poison, h.positions, c, what + " v cache");
    }
    std::printf(
        "attention_inputs vs cpu: q/k max %.2f u (|a| + |b|) (tolerance 36 u), v max %.2f u "
        "(tolerance 32 u)\n",
        worst_qk, worst_v);
}

// One captured launch of case c replayed at positions 5, 70 and 131013 (a ring of 64: 70 lands in
// slot 6 and 131013 overwrites slot 5, which 5 wrote), each time bit for bit the composition.
void expect_graph_replays_as_composition(const Case& c, uint32_t seed) {
    const int64_t replay_positions[] = {5, 70, 131013};
    const HostInputs h = make_inputs(c, seed);
    const size_t cache_n = static_cast<size_t>(c.capacity * c.n_kv_heads * c.head_dim);
    const std::vector<uint16_t> poison = poisoned_cache(cache_n);
    DeviceSet fused, split;
    make_device_set(c, h, poison, fused);
    make_device_set(c, h, poison, split);

    // A blocking stream: it orders after the legacy-stream cudaMemcpy calls that set each step's
    // inputs.
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreate(&stream));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const Status captured = cuda::attention_inputs(fused.inputs, fused.positions.as<int64_t>(),
                                                   c.tokens, fused.cache, stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    STATUS_OK(captured);
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

    std::vector<int64_t> positions_seen;
    for (int64_t position : replay_positions) {
        // Fresh inputs each step (the kernel works in place); only the position differs.
        const std::vector<int64_t> positions{position};
        positions_seen.push_back(position);
        copy_to_device(fused.q.as<float>(), h.q);
        copy_to_device(fused.k.as<float>(), h.k);
        copy_to_device(fused.v.as<float>(), h.v);
        copy_to_device(fused.positions.as<int64_t>(), positions);
        copy_to_device(split.q.as<float>(), h.q);
        copy_to_device(split.k.as<float>(), h.k);
        copy_to_device(split.v.as<float>(), h.v);
        copy_to_device(split.positions.as<int64_t>(), positions);
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        STATUS_OK(composition(split.inputs, split.positions.as<int64_t>(), c.tokens, split.cache,
                              nullptr));
        CUDA_OK(cudaDeviceSynchronize());

        const std::string what = std::string(c.what) + " position " + std::to_string(position);
        expect_same_floats(download(fused.q.as<float>(), h.q.size()),
                           download(split.q.as<float>(), h.q.size()), what + " q");
        expect_same_floats(download(fused.k.as<float>(), h.k.size()),
                           download(split.k.as<float>(), h.k.size()), what + " k");
        expect_same_floats(download(fused.v.as<float>(), h.v.size()),
                           download(split.v.as<float>(), h.v.size()), what + " v");
        const std::vector<uint16_t> k_cache = download(fused.k_cache.as<uint16_t>(), cache_n);
        expect_same_cache(k_cache, download(split.k_cache.as<uint16_t>(), cache_n),
                          what + " k cache");
        expect_same_cache(download(fused.v_cache.as<uint16_t>(), cache_n),
                          download(split.v_cache.as<uint16_t>(), cache_n), what + " v cache");
        expect_slots(k_cache, poison, positions_seen, c, what + " k cache");
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(stream));
}

TEST_F(CudaAttentionInputs, CapturedGraphReplaysAtNewPositions) {
    // Gemma 4 full layer, one token: V = raw K, V-norm, 64 of 256 pairs rotate.
    expect_graph_replays_as_composition(
        {"gemma4 full graph", 32, 4, 512, 64, 1e6, true, true, 1, 64, 5, 0}, 4242);
}

TEST_F(CudaAttentionInputs, CapturedGraphReplaysAtNewPositionsQwen35) {
    // Qwen3.5 full-attention layer, one token: the first 64 of 256 values rotate, V untouched.
    expect_graph_replays_as_composition(
        {"qwen3.5 graph", 16, 2, 256, 0, 1e7, false, false, 1, 64, 5, 64}, 4343);
}

// The host-side checks run before any CUDA call, so this needs no device: the pointers are never
// dereferenced (each case fails a check).
TEST(CudaAttentionInputsArguments, RejectsWhatTheKernelCannotDo) {
    auto fake = [](uintptr_t address) { return reinterpret_cast<float*>(address); };
    const auto* positions = reinterpret_cast<const int64_t*>(uintptr_t{4096});
    const cuda::AttentionInputs good{fake(1 << 20),
                                     fake(2 << 20),
                                     fake(3 << 20),
                                     nullptr,
                                     nullptr,
                                     false,
                                     true,
                                     4,
                                     2,
                                     64,
                                     32,
                                     kEps,
                                     1e4,
                                     0};
    const cuda::KvCacheBf16View cache{reinterpret_cast<uint16_t*>(uintptr_t{4 << 20}),
                                      reinterpret_cast<uint16_t*>(uintptr_t{5 << 20}),
                                      16,
                                      2,
                                      64,
                                      64};
    auto code = [&](const cuda::AttentionInputs& in, const cuda::KvCacheBf16View& kv,
                    int64_t tokens) {
        return cuda::attention_inputs(in, positions, tokens, kv, nullptr).code();
    };
    const StatusCode bad = StatusCode::kInvalidArgument;
    cuda::AttentionInputs in = good;
    in.head_dim = 24;  // not a multiple of 16
    EXPECT_EQ(code(in, cache, 1), bad);
    in.head_dim = 1024;  // past 512
    EXPECT_EQ(code(in, cache, 1), bad);
    in = good;
    in.rotary_pairs = 33;  // past head_dim / 2
    EXPECT_EQ(code(in, cache, 1), bad);
    in = good;
    in.partial_rotary_dim = 15;  // odd
    EXPECT_EQ(code(in, cache, 1), bad);
    in.partial_rotary_dim = 80;  // past head_dim
    EXPECT_EQ(code(in, cache, 1), bad);
    in.partial_rotary_dim = -2;
    EXPECT_EQ(code(in, cache, 1), bad);
    in = good;
    in.q = fake((1 << 20) + 4);  // not 16-byte aligned
    EXPECT_EQ(code(in, cache, 1), bad);
    in = good;
    in.v = nullptr;
    EXPECT_EQ(code(in, cache, 1), bad);
    EXPECT_EQ(code(good, cache, 0), bad);   // no tokens
    EXPECT_EQ(code(good, cache, 17), bad);  // more tokens than slots
    cuda::KvCacheBf16View other = cache;
    other.n_kv_heads = 4;  // the cache's shape must be the inputs'
    EXPECT_EQ(code(good, other, 1), bad);
    other = cache;
    other.v_head_dim = 128;
    EXPECT_EQ(code(good, other, 1), bad);
    EXPECT_EQ(cuda::attention_inputs(good, nullptr, 1, cache, nullptr).code(), bad);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
