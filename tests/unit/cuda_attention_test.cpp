// The GPU attention (src/ops/cuda/attention_{prefill,decode}.cu) against its CPU twin: the
// reference kestrel Ops::attention run on a fp32 cache holding the bf16-rounded K and V (the
// GPU cache's exact values) and on bf16-rounded q (what the tensor-core kernels multiply).
//
// Error budget against that twin, per output column i of a (token, head) row: the kernels round
// the probabilities p_j to bf16 before P·V (unit roundoff 2^-8; the normaliser l sums the
// unrounded fp32 p_j), so |gpu - twin| <= 2^-8 Σ_j p_j |v_ji| =: 2^-8 A_i, where A is the twin's
// own attention over a cache holding |V|. On top: 2^-10 A_i for fp32 accumulation order of P·V
// and the online-softmax rescaling, and 2^-14 max|v| for fp32 score accumulation order and
// exp2f vs exp (score errors ~1e-5 times |v_j - out| <= 2 max|v|).
// Against the fp32-q reference (FlashAttention-3 style), per row:
// max|gpu - ref32| <= 2 max|ref_q16 - ref32| + max budget.
// kv_write_bf16 must match fp32_to_bf16 (core/half.h) bit for bit, ring wrap and NaN included.
// Outputs are poisoned with NaN before every run; a NaN or a missing write fails. Shapes: Gemma 4
// 31B sliding (16 kv heads x 256, window 1024, ring 1535) and full (4 kv heads x 512) layers,
// Gemma 3 270M (1 kv head), odd shapes (head dims 32..384, group 5, different v head dim,
// softcap, window 5). q ~ N(0, 1), k ~ N(0, s^2) with s making scores' std ~2.5, v ~ N(0, 1).
// attention_decode_quantize_q8 (the o-projection's Q8 blocks from the reduce kernel) must equal
// attention_decode then quantize_q8 byte for byte on every decode query. Where the splits combine
// in clusters (attention_decode_combines_in_clusters: Gemma 4's sliding layers, and a 12 kv head
// odd shape with v head dim 48), every output and Q8 byte must equal the reduce kernel's.
// Skips without a GPU.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/gemv_w4a8.h"  // quantize_q8
#include "ops/ops.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaAttention, NeedsTheCudaBuild) { GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)"; }

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;

class CudaAttention : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
    }
};

Ops& cpu_ops() {
    static const std::unique_ptr<Ops> ops = make_cpu_ops();
    return *ops;
}

uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// N(0, 1) as a pure function of (stream, index): a position's K and V are the same whichever
// order the cache is filled in.
float hashed_normal(uint64_t stream, uint64_t index) {
    const uint64_t a = mix(stream * 0x632be59bd9b4e019ull ^ index);
    const uint64_t b = mix(a ^ 0x5851f42d4c957f2dull);
    const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

std::vector<float> bf16_rounded(const std::vector<float>& x) {
    std::vector<float> r(x.size());
    for (size_t i = 0; i < x.size(); ++i) r[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
    return r;
}

struct LayerShape {
    const char* name;
    int64_t n_heads, n_kv_heads, head_dim, v_head_dim, capacity, window;
    float scale, softcap;
    float k_std() const {  // scores scale * q·k then have std ~2.5 (q ~ N(0, 1))
        return 2.5f / (scale * std::sqrt(static_cast<float>(head_dim)));
    }
    cuda::AttentionShape attention() const { return {n_heads, scale, window, softcap}; }
    AttentionParams params() const { return {n_heads, scale, window, softcap}; }
};

constexpr uint16_t kPoisonBits = 0x7fc1;  // bf16 NaN in slots no query may read

// The cache on the host (bf16 bits and their fp32 widening: the twin's cache) and the device.
struct Cache {
    std::vector<uint16_t> k_bits, v_bits;
    std::vector<float> k, v, v_abs;  // v_abs: |v|, for the budget's A = Σ p |v|
    float max_abs_v = 0.0f;
    DeviceBuffer k_dev, v_dev;
    KvLayerView host_view, host_abs_view;
    cuda::KvCacheBf16View device_view;
};

float key_value(const LayerShape& s, int64_t position, int64_t head, int64_t i) {
    return hashed_normal(11, static_cast<uint64_t>((position * s.n_kv_heads + head) * s.head_dim + i)) * s.k_std();
}
float value_value(const LayerShape& s, int64_t position, int64_t head, int64_t i) {
    return hashed_normal(12, static_cast<uint64_t>((position * s.n_kv_heads + head) * s.v_head_dim + i));
}

// Allocates the cache (host and device), all slots poisoned.
void make_cache(const LayerShape& s, Cache& cache) {
    const size_t k_size = static_cast<size_t>(s.capacity * s.n_kv_heads * s.head_dim);
    const size_t v_size = static_cast<size_t>(s.capacity * s.n_kv_heads * s.v_head_dim);
    cache.k_bits.assign(k_size, kPoisonBits);
    cache.v_bits.assign(v_size, kPoisonBits);
    cache.k.assign(k_size, bf16_to_fp32(kPoisonBits));
    cache.v.assign(v_size, bf16_to_fp32(kPoisonBits));
    cache.v_abs.assign(v_size, bf16_to_fp32(kPoisonBits));
    CUDA_OK(cache.k_dev.alloc(k_size * 2));
    CUDA_OK(cache.v_dev.alloc(v_size * 2));
    cache.host_view = {cache.k.data(), cache.v.data(), s.capacity, s.n_kv_heads, s.head_dim, s.v_head_dim};
    cache.host_abs_view = {cache.k.data(), cache.v_abs.data(), s.capacity, s.n_kv_heads, s.head_dim, s.v_head_dim};
    cache.device_view = {cache.k_dev.as<uint16_t>(), cache.v_dev.as<uint16_t>(), s.capacity, s.n_kv_heads,
                         s.head_dim, s.v_head_dim};
}

// The cache after kv writes of positions 0..last: slot j holds the latest position p <= last with
// p % capacity == j; slots never written stay poisoned. Uploads it.
void fill_cache(const LayerShape& s, int64_t last, Cache& cache) {
    std::fill(cache.k_bits.begin(), cache.k_bits.end(), kPoisonBits);
    std::fill(cache.v_bits.begin(), cache.v_bits.end(), kPoisonBits);
    cache.max_abs_v = 0.0f;
    for (int64_t p = std::max<int64_t>(0, last - s.capacity + 1); p <= last; ++p) {
        const int64_t slot = p % s.capacity;
        for (int64_t h = 0; h < s.n_kv_heads; ++h) {
            for (int64_t i = 0; i < s.head_dim; ++i) {
                cache.k_bits[static_cast<size_t>((slot * s.n_kv_heads + h) * s.head_dim + i)] =
                    fp32_to_bf16(key_value(s, p, h, i));
            }
            for (int64_t i = 0; i < s.v_head_dim; ++i) {
                const uint16_t bits = fp32_to_bf16(value_value(s, p, h, i));
                cache.v_bits[static_cast<size_t>((slot * s.n_kv_heads + h) * s.v_head_dim + i)] = bits;
                cache.max_abs_v = std::max(cache.max_abs_v, std::fabs(bf16_to_fp32(bits)));
            }
        }
    }
    for (size_t i = 0; i < cache.k.size(); ++i) cache.k[i] = bf16_to_fp32(cache.k_bits[i]);
    for (size_t i = 0; i < cache.v.size(); ++i) {
        cache.v[i] = bf16_to_fp32(cache.v_bits[i]);
        cache.v_abs[i] = std::fabs(cache.v[i]);
    }
    CUDA_OK(cudaMemcpy(cache.k_dev.as<void>(), cache.k_bits.data(), cache.k_bits.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(cache.v_dev.as<void>(), cache.v_bits.data(), cache.v_bits.size() * 2, cudaMemcpyHostToDevice));
    kestrel::testing::wait_for_host_copies();
}

// The worst ratios seen, error / allowed.
struct Worst {
    double twin = 0.0;  // |gpu - twin(q bf16)| / budget
    double fp32 = 0.0;  // |gpu - ref32| / (2 |ref16 - ref32| + budget), per row
    void print(const char* what) const {
        std::printf("%s: max |gpu - twin| / budget = %.3f, max |gpu - ref32| / (2 |ref16 - ref32| + budget) = %.3f\n",
                    what, twin, fp32);
    }
};

// The gpu output for q at `positions` against both CPU references, with the budget above.
void compare(const LayerShape& s, const Cache& cache, const std::vector<float>& q, const std::vector<int64_t>& positions,
             const std::vector<float>& gpu, const std::string& what, Worst& worst) {
    const int64_t n_tokens = static_cast<int64_t>(positions.size());
    const size_t out_size = static_cast<size_t>(n_tokens * s.n_heads * s.v_head_dim);
    std::vector<float> ref16(out_size), ref32(out_size), weighted_abs_v(out_size);
    const std::vector<float> q16 = bf16_rounded(q);
    cpu_ops().attention(q16.data(), positions, cache.host_view, s.params(), ref16.data());
    cpu_ops().attention(q.data(), positions, cache.host_view, s.params(), ref32.data());
    cpu_ops().attention(q16.data(), positions, cache.host_abs_view, s.params(), weighted_abs_v.data());
    const double floor = std::ldexp(1.0, -14) * cache.max_abs_v;
    for (int64_t row = 0; row < n_tokens * s.n_heads; ++row) {
        const size_t base = static_cast<size_t>(row * s.v_head_dim);
        double gap = 0.0, err32 = 0.0, row_budget = 0.0;
        for (int64_t i = 0; i < s.v_head_dim; ++i) {
            const size_t at = base + static_cast<size_t>(i);
            const double budget = (std::ldexp(1.0, -8) + std::ldexp(1.0, -10)) * weighted_abs_v[at] + floor;
            const double err = std::fabs(static_cast<double>(gpu[at]) - ref16[at]);
            if (!(err <= budget)) {  // NaN fails too
                FAIL() << s.name << " " << what << ": token " << row / s.n_heads << " (position "
                       << positions[static_cast<size_t>(row / s.n_heads)] << ") head " << row % s.n_heads << " column "
                       << i << ": gpu " << gpu[at] << ", twin " << ref16[at] << ", budget " << budget;
            }
            worst.twin = std::max(worst.twin, err / budget);
            row_budget = std::max(row_budget, budget);
            gap = std::max(gap, std::fabs(static_cast<double>(ref16[at]) - ref32[at]));
            err32 = std::max(err32, std::fabs(static_cast<double>(gpu[at]) - ref32[at]));
        }
        const double allowed = 2.0 * gap + row_budget;
        ASSERT_LE(err32, allowed) << s.name << " " << what << ": row " << row << " against the fp32-q reference";
        worst.fp32 = std::max(worst.fp32, err32 / allowed);
    }
}

// attention_decode_quantize_q8 against attention_decode then quantize_q8: the float rows bit for
// bit (`decoded`, this query's attention_decode output) and all 48 bytes of every Q8 block, with
// and without the float output (buffers poisoned first).
void check_decode_q8_output(const LayerShape& s, Cache& cache, const DeviceBuffer& q_dev,
                            const DeviceBuffer& positions_dev, int64_t n_tokens,
                            DeviceBuffer& workspace, const DeviceBuffer& decoded_dev,
                            const std::vector<float>& decoded, cuda::DecodeCombine combine) {
    const int64_t row = s.n_heads * s.v_head_dim;
    const size_t blocks = static_cast<size_t>(n_tokens * row / 32);
    const size_t q8_bytes = blocks * sizeof(Q8Block);
    DeviceBuffer out_dev, q8_with_out, q8_alone, q8_reference;
    CUDA_OK(out_dev.alloc(decoded.size() * 4));
    CUDA_OK(q8_with_out.alloc(q8_bytes));
    CUDA_OK(q8_alone.alloc(q8_bytes));
    CUDA_OK(q8_reference.alloc(q8_bytes));
    CUDA_OK(cudaMemset(out_dev.as<void>(), 0xff, decoded.size() * 4));
    CUDA_OK(cudaMemset(q8_with_out.as<void>(), 0xff, q8_bytes));
    CUDA_OK(cudaMemset(q8_alone.as<void>(), 0xff, q8_bytes));
    kestrel::testing::wait_for_host_copies();
    Status status = cuda::attention_decode_quantize_q8(
        q_dev.as<float>(), positions_dev.as<int64_t>(), n_tokens, cache.device_view, s.attention(),
        workspace.as<void>(), out_dev.as<float>(), q8_with_out.as<Q8Block>(), nullptr, combine);
    ASSERT_TRUE(status.ok()) << status.message();
    status = cuda::attention_decode_quantize_q8(
        q_dev.as<float>(), positions_dev.as<int64_t>(), n_tokens, cache.device_view, s.attention(),
        workspace.as<void>(), nullptr, q8_alone.as<Q8Block>(), nullptr, combine);
    ASSERT_TRUE(status.ok()) << status.message();
    status = cuda::quantize_q8(decoded_dev.as<float>(), n_tokens, row, row,
                               q8_reference.as<Q8Block>(), nullptr);
    ASSERT_TRUE(status.ok()) << status.message();
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> out(decoded.size());
    CUDA_OK(cudaMemcpy(out.data(), out_dev.as<void>(), out.size() * 4, cudaMemcpyDeviceToHost));
    ASSERT_EQ(std::memcmp(out.data(), decoded.data(), out.size() * 4), 0)
        << s.name << ": float rows differ";
    std::vector<uint8_t> with_out(q8_bytes), alone(q8_bytes), reference(q8_bytes);
    CUDA_OK(cudaMemcpy(with_out.data(), q8_with_out.as<void>(), q8_bytes, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(alone.data(), q8_alone.as<void>(), q8_bytes, cudaMemcpyDeviceToHost));
    CUDA_OK(
        cudaMemcpy(reference.data(), q8_reference.as<void>(), q8_bytes, cudaMemcpyDeviceToHost));
    ASSERT_EQ(std::memcmp(with_out.data(), reference.data(), q8_bytes), 0)
        << s.name << ": Q8 blocks (with out) differ";
    ASSERT_EQ(std::memcmp(alone.data(), reference.data(), q8_bytes), 0)
        << s.name << ": Q8 blocks (alone) differ";
}

// Decode queries whose splits were combined in clusters, over the whole test program: a test of
// the cluster path checks that it ran.
int64_t cluster_queries = 0;

// The query through the reduce kernel against `decoded` (kAuto's output): the same bits.
void check_reduce_kernel_equal(const LayerShape& s, Cache& cache, const DeviceBuffer& q_dev,
                               const DeviceBuffer& positions_dev, int64_t n_tokens,
                               DeviceBuffer& workspace, const std::vector<float>& decoded) {
    DeviceBuffer out_dev;
    CUDA_OK(out_dev.alloc(decoded.size() * 4));
    CUDA_OK(cudaMemset(out_dev.as<void>(), 0xff, decoded.size() * 4));
    kestrel::testing::wait_for_host_copies();
    const Status status = cuda::attention_decode(
        q_dev.as<float>(), positions_dev.as<int64_t>(), n_tokens, cache.device_view, s.attention(),
        workspace.as<void>(), out_dev.as<float>(), nullptr, cuda::DecodeCombine::kReduceKernel);
    ASSERT_TRUE(status.ok()) << status.message();
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> out(decoded.size());
    CUDA_OK(cudaMemcpy(out.data(), out_dev.as<void>(), out.size() * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_EQ(std::memcmp(&out[i], &decoded[i], 4), 0)
            << s.name << " T=" << n_tokens << ": element " << i << ", clusters " << decoded[i]
            << ", reduce kernel " << out[i];
    }
}

enum class Path { kAuto, kPrefill, kDecode };

// Runs attention for tokens start..start+n_tokens-1 on the filled cache and compares.
void check_query(const LayerShape& s, Cache& cache, int64_t start, int64_t n_tokens, Path path, Worst& worst) {
    std::vector<int64_t> positions(static_cast<size_t>(n_tokens));
    for (int64_t t = 0; t < n_tokens; ++t) positions[static_cast<size_t>(t)] = start + t;
    std::mt19937 rng(static_cast<uint32_t>(start * 131 + n_tokens));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> q(static_cast<size_t>(n_tokens * s.n_heads * s.head_dim));
    for (float& x : q) x = normal(rng);
    const size_t out_size = static_cast<size_t>(n_tokens * s.n_heads * s.v_head_dim);

    DeviceBuffer q_dev, positions_dev, out_dev, workspace;
    CUDA_OK(q_dev.alloc(q.size() * 4));
    CUDA_OK(positions_dev.alloc(positions.size() * 8));
    CUDA_OK(out_dev.alloc(out_size * 4));
    const size_t workspace_bytes = cuda::attention_decode_workspace_bytes(n_tokens, cache.device_view, s.attention());
    CUDA_OK(workspace.alloc(workspace_bytes));
    CUDA_OK(cudaMemcpy(q_dev.as<void>(), q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(positions_dev.as<void>(), positions.data(), positions.size() * 8, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(out_dev.as<void>(), 0xff, out_size * 4));  // NaN poison
    CUDA_OK(cudaMemset(workspace.as<void>(), 0xff, workspace_bytes));
    kestrel::testing::wait_for_host_copies();
    Status status;
    switch (path) {
        case Path::kAuto:
            status = cuda::attention(q_dev.as<float>(), positions_dev.as<int64_t>(), n_tokens, cache.device_view,
                                     s.attention(), workspace.as<void>(), out_dev.as<float>(), nullptr);
            break;
        case Path::kPrefill:
            status = cuda::attention_prefill(q_dev.as<float>(), positions_dev.as<int64_t>(), n_tokens, cache.device_view,
                                             s.attention(), out_dev.as<float>(), nullptr);
            break;
        case Path::kDecode:
            status = cuda::attention_decode(q_dev.as<float>(), positions_dev.as<int64_t>(), n_tokens, cache.device_view,
                                            s.attention(), workspace.as<void>(), out_dev.as<float>(), nullptr);
            break;
    }
    ASSERT_TRUE(status.ok()) << status.message();
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> gpu(out_size);
    CUDA_OK(cudaMemcpy(gpu.data(), out_dev.as<void>(), out_size * 4, cudaMemcpyDeviceToHost));
    const char* path_name = path == Path::kAuto ? "auto" : path == Path::kPrefill ? "prefill" : "decode";
    const bool decoded = path == Path::kDecode ||
                         (path == Path::kAuto && n_tokens <= cuda::kAttentionDecodeMaxTokens);
    const bool clusters = decoded && cuda::attention_decode_combines_in_clusters(
                                         n_tokens, cache.device_view, s.attention());
    if (clusters) {
        ++cluster_queries;
        ASSERT_NO_FATAL_FAILURE(
            check_reduce_kernel_equal(s, cache, q_dev, positions_dev, n_tokens, workspace, gpu));
    }
    if (decoded && s.v_head_dim % 32 == 0) {
        for (const cuda::DecodeCombine combine :
             {cuda::DecodeCombine::kAuto, cuda::DecodeCombine::kReduceKernel}) {
            ASSERT_NO_FATAL_FAILURE(check_decode_q8_output(s, cache, q_dev, positions_dev, n_tokens,
                                                           workspace, out_dev, gpu, combine));
        }
    }
    compare(s, cache, q, positions, gpu,
            std::string(path_name) + " T=" + std::to_string(n_tokens) + " at " + std::to_string(start), worst);
}

struct Query {
    int64_t start, n_tokens;
    Path path = Path::kAuto;
};

// For each fill: the cache after writing positions 0..last, then the queries (which may see
// fewer keys than were written: the later ones must be masked).
struct Scenario {
    int64_t last;
    std::vector<Query> queries;
};

void run_scenarios(const LayerShape& s, const std::vector<Scenario>& scenarios) {
    Cache cache;
    ASSERT_NO_FATAL_FAILURE(make_cache(s, cache));
    Worst worst;
    for (const Scenario& scenario : scenarios) {
        ASSERT_NO_FATAL_FAILURE(fill_cache(s, scenario.last, cache));
        for (const Query& query : scenario.queries) {
            ASSERT_NO_FATAL_FAILURE(check_query(s, cache, query.start, query.n_tokens, query.path, worst));
        }
    }
    worst.print(s.name);
}

const float kGemma3Scale = 1.0f / 16.0f;  // query_pre_attn_scalar 256 ^ -0.5

TEST_F(CudaAttention, Gemma4SlidingLayer) {
    // Ring of window + chunk - 1 = 1024 + 512 - 1 slots (spec §10.6).
    const LayerShape s{"gemma4 sliding", 32, 16, 256, 256, 1535, 1024, 1.0f, 0.0f};
    std::vector<Scenario> scenarios = {
        {0, {{0, 1}}},
        {105, {{5, 1}}},                       // later keys in the cache, masked
        {1023, {{1023, 1}}},
        {1535, {{1024, 1}}},                   // window start 1, ring full of later keys
        {3200, {{3000, 1}, {2700, 1}}},        // wrapped ring
        {511, {{0, 512}}},
        {2511, {{2000, 512}}},                 // chunk whose first query needs the oldest slot
        {2511, {{2500, 3, Path::kPrefill}, {2000, 12, Path::kDecode}}},
    };
    for (int64_t t = 2; t <= 8; ++t) scenarios.push_back({2500 + t - 1, {{2500, t}}});
    const int64_t clustered_before = cluster_queries;
    run_scenarios(s, scenarios);
    EXPECT_GT(cluster_queries, clustered_before) << "no query combined its splits in clusters";
}

TEST_F(CudaAttention, Gemma4FullLayer) {
    // K = V layers: 4 kv heads x 512; a flat cache with unwritten (poisoned) slots past 8191.
    const LayerShape s{"gemma4 full", 32, 4, 512, 512, 8192 + 64, 0, 1.0f, 0.0f};
    std::vector<Query> queries = {{0, 1}, {700, 1}, {8191, 1}, {0, 300}, {1000, 300}, {5000, 2, Path::kPrefill},
                                  {6000, 12, Path::kDecode}};
    for (int64_t t = 2; t <= 8; ++t) queries.push_back({5000, t});
    run_scenarios(s, {{8191, queries}});
}

TEST_F(CudaAttention, Gemma3Layers) {
    // Gemma 3 270M: 4 query heads over 1 kv head of 256, sliding window 512 (ring 512 + 512 - 1).
    const LayerShape sliding{"gemma3 sliding", 4, 1, 256, 256, 1023, 512, kGemma3Scale, 0.0f};
    run_scenarios(sliding, {{700, {{600, 1}}}, {99, {{0, 100}}}, {1511, {{1000, 512}}}, {2004, {{2000, 5}}}});
    const LayerShape full{"gemma3 full", 4, 1, 256, 256, 4096, 0, kGemma3Scale, 0.0f};
    run_scenarios(full, {{4095, {{0, 1}, {2000, 1}, {4095, 1}, {100, 200}, {3000, 3}}}});
}

TEST_F(CudaAttention, OddShapes) {
    // The brief's odd shape: head 64, 3 kv heads, 6 query heads, window 5, softcap 50, ring 5 + 37 - 1.
    const LayerShape odd{"head 64 window 5 softcap 50", 6, 3, 64, 64, 41, 5, 0.125f, 50.0f};
    run_scenarios(odd, {{36, {{0, 37}}}, {86, {{50, 37}}}, {90, {{90, 1}}}, {93, {{90, 4}, {91, 3, Path::kPrefill}}}});
    // Group of 5, v head dim != head dim, a softcap that bites (scores std 2.5, cap 2), flat cache.
    const LayerShape group5{"head 32/64 group 5 softcap 2", 10, 2, 32, 64, 300, 0, 0.3f, 2.0f};
    run_scenarios(group5, {{299, {{0, 1}, {150, 3}, {0, 100}, {200, 100}, {299, 1, Path::kPrefill}}}});
    // Padded head dims: 96 -> 128, 160 -> 256, 384 -> 512.
    const LayerShape d96{"head 96", 4, 2, 96, 96, 200, 0, 0.1f, 0.0f};
    run_scenarios(d96, {{199, {{0, 20}, {100, 1}, {199, 1}, {150, 50}}}});
    const LayerShape d160{"head 160 window 33", 8, 1, 160, 160, 160, 33, 0.08f, 0.0f};
    run_scenarios(d160, {{159, {{0, 128}, {159, 1}}}, {300, {{299, 2}}}});
    // The tiny Gemma 4 fixture's sliding layers: head 16 (padded to 64), window 8.
    const LayerShape d16{"head 16 window 8", 4, 2, 16, 16, 40, 8, 1.0f, 0.0f};
    run_scenarios(d16, {{39, {{0, 16}, {16, 16}, {32, 8}, {39, 1}}}});
    const LayerShape d384{"head 384", 6, 3, 384, 384, 700, 0, 0.05f, 0.0f};
    run_scenarios(d384, {{699, {{0, 1}, {699, 1}, {300, 65}, {690, 8}}}});
    // Clusters of 8 splits (12 kv heads), and of 4 at two row tiles (T = 8, group 3): head 96
    // (padded to 128) with v head dim 48, whose last 32-column group is half outside the row.
    const LayerShape clustered{"head 96/48 12 kv heads", 36, 12, 96, 48, 600, 0, 0.1f, 0.0f};
    const cuda::KvCacheBf16View shape_only{nullptr, nullptr, 600, 12, 96, 48};
    EXPECT_TRUE(cuda::attention_decode_cluster_shape(1, shape_only, clustered.attention()));
    const cuda::KvCacheBf16View one_kv_head{nullptr, nullptr, 4096, 1, 256, 256};
    EXPECT_FALSE(cuda::attention_decode_cluster_shape(1, one_kv_head, {4, 0.0625f, 0, 0.0f}))
        << "99 splits of one kv head are too many for a cluster";
    const int64_t clustered_before = cluster_queries;
    run_scenarios(clustered, {{599, {{599, 1}, {300, 1}, {100, 1}, {592, 8}, {400, 5}}}});
    EXPECT_GT(cluster_queries, clustered_before) << "no query combined its splits in clusters";
}

// kv_write_bf16 against fp32_to_bf16 bit for bit: specials (NaN payloads, infinities, -0,
// subnormals, exact ties, overflow to inf), two calls whose slots wrap around the ring, and
// slots no call writes keep their old contents.
TEST_F(CudaAttention, KvWriteBitExactWithRingWrap) {
    const int64_t capacity = 40, n_kv = 3, d = 64, dv = 32;
    const size_t k_size = static_cast<size_t>(capacity * n_kv * d), v_size = static_cast<size_t>(capacity * n_kv * dv);
    std::vector<uint16_t> k_expect(k_size, 0x1234), v_expect(v_size, 0x4321);
    DeviceBuffer k_cache, v_cache;
    CUDA_OK(k_cache.alloc(k_size * 2));
    CUDA_OK(v_cache.alloc(v_size * 2));
    CUDA_OK(cudaMemcpy(k_cache.as<void>(), k_expect.data(), k_size * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(v_cache.as<void>(), v_expect.data(), v_size * 2, cudaMemcpyHostToDevice));
    kestrel::testing::wait_for_host_copies();
    const cuda::KvCacheBf16View view{k_cache.as<uint16_t>(), v_cache.as<uint16_t>(), capacity, n_kv, d, dv};
    const uint32_t specials[] = {0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7fbfffffu, 0x7f800000u, 0xff800000u,
                                 0x80000000u, 0x00000001u, 0x807fffffu, 0x3f808000u, 0x3f818000u, 0x3f80ffffu,
                                 0x7f7fffffu, 0xff7fffffu, 0x00008000u, 0x00018000u};
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    const int64_t starts[] = {30, 60};  // slots 30..39, 0..19, then 20..39 (over the second lap)
    const int64_t counts[] = {30, 20};
    for (int call = 0; call < 2; ++call) {
        const int64_t n = counts[call];
        std::vector<int64_t> positions(static_cast<size_t>(n));
        for (int64_t t = 0; t < n; ++t) positions[static_cast<size_t>(t)] = starts[call] + t;
        std::vector<float> k(static_cast<size_t>(n * n_kv * d)), v(static_cast<size_t>(n * n_kv * dv));
        for (float& x : k) x = normal(rng);
        for (float& x : v) x = normal(rng);
        for (size_t i = 0; i < std::size(specials); ++i) {
            std::memcpy(&k[i * 37 % k.size()], &specials[i], 4);
            std::memcpy(&v[i * 29 % v.size()], &specials[i], 4);
        }
        DeviceBuffer k_dev, v_dev, positions_dev;
        CUDA_OK(k_dev.alloc(k.size() * 4));
        CUDA_OK(v_dev.alloc(v.size() * 4));
        CUDA_OK(positions_dev.alloc(positions.size() * 8));
        CUDA_OK(cudaMemcpy(k_dev.as<void>(), k.data(), k.size() * 4, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(v_dev.as<void>(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(positions_dev.as<void>(), positions.data(), positions.size() * 8, cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
        const Status status =
            cuda::kv_write_bf16(view, positions_dev.as<int64_t>(), n, k_dev.as<float>(), v_dev.as<float>(), nullptr);
        ASSERT_TRUE(status.ok()) << status.message();
        for (int64_t t = 0; t < n; ++t) {
            const int64_t slot = positions[static_cast<size_t>(t)] % capacity;
            for (int64_t i = 0; i < n_kv * d; ++i) {
                k_expect[static_cast<size_t>(slot * n_kv * d + i)] = fp32_to_bf16(k[static_cast<size_t>(t * n_kv * d + i)]);
            }
            for (int64_t i = 0; i < n_kv * dv; ++i) {
                v_expect[static_cast<size_t>(slot * n_kv * dv + i)] = fp32_to_bf16(v[static_cast<size_t>(t * n_kv * dv + i)]);
            }
        }
        std::vector<uint16_t> k_got(k_size), v_got(v_size);
        CUDA_OK(cudaMemcpy(k_got.data(), k_cache.as<void>(), k_size * 2, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(v_got.data(), v_cache.as<void>(), v_size * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < k_size; ++i) ASSERT_EQ(k_got[i], k_expect[i]) << "call " << call << " k element " << i;
        for (size_t i = 0; i < v_size; ++i) ASSERT_EQ(v_got[i], v_expect[i]) << "call " << call << " v element " << i;
    }
}

// One decode step (kv_write_bf16 then attention, T = 1) captured once into a CUDA graph and
// replayed at every position 0..last with only device contents changed (the token's k, v, q and
// its position), as the engine's decode runs. The twin does Ops::kv_write of the bf16-rounded
// k, v then Ops::attention, at positions around the split-count changes and the ring wrap.
void check_graph_replay(const LayerShape& s, int64_t last, const std::vector<int64_t>& checked) {
    Cache cache;
    ASSERT_NO_FATAL_FAILURE(make_cache(s, cache));
    CUDA_OK(cudaMemcpy(cache.k_dev.as<void>(), cache.k_bits.data(), cache.k_bits.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(cache.v_dev.as<void>(), cache.v_bits.data(), cache.v_bits.size() * 2, cudaMemcpyHostToDevice));
    kestrel::testing::wait_for_host_copies();
    CUDA_OK(cudaDeviceSynchronize());  // the graph's stream does not wait for the legacy stream
    const int64_t k_row = s.n_kv_heads * s.head_dim, v_row = s.n_kv_heads * s.v_head_dim;
    const int64_t q_size = s.n_heads * s.head_dim, out_size = s.n_heads * s.v_head_dim;
    DeviceBuffer q_dev, k_dev, v_dev, position_dev, out_dev, workspace;
    CUDA_OK(q_dev.alloc(static_cast<size_t>(q_size) * 4));
    CUDA_OK(k_dev.alloc(static_cast<size_t>(k_row) * 4));
    CUDA_OK(v_dev.alloc(static_cast<size_t>(v_row) * 4));
    CUDA_OK(position_dev.alloc(8));
    CUDA_OK(out_dev.alloc(static_cast<size_t>(out_size) * 4));
    const size_t workspace_bytes = cuda::attention_workspace_bytes(1, cache.device_view, s.attention());
    ASSERT_GT(workspace_bytes, 0u);
    CUDA_OK(workspace.alloc(workspace_bytes));

    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const Status write = cuda::kv_write_bf16(cache.device_view, position_dev.as<int64_t>(), 1, k_dev.as<float>(),
                                             v_dev.as<float>(), stream);
    const Status attend = cuda::attention(q_dev.as<float>(), position_dev.as<int64_t>(), 1, cache.device_view,
                                          s.attention(), workspace.as<void>(), out_dev.as<float>(), stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    ASSERT_TRUE(write.ok()) << write.message();
    ASSERT_TRUE(attend.ok()) << attend.message();
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

    Worst worst;
    std::mt19937 rng(99);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> q(static_cast<size_t>(q_size)), k(static_cast<size_t>(k_row)), v(static_cast<size_t>(v_row));
    std::vector<float> gpu(static_cast<size_t>(out_size));
    size_t next_check = 0;
    for (int64_t p = 0; p <= last; ++p) {
        for (int64_t h = 0; h < s.n_kv_heads; ++h) {
            for (int64_t i = 0; i < s.head_dim; ++i) k[static_cast<size_t>(h * s.head_dim + i)] = key_value(s, p, h, i);
            for (int64_t i = 0; i < s.v_head_dim; ++i) v[static_cast<size_t>(h * s.v_head_dim + i)] = value_value(s, p, h, i);
        }
        const std::vector<float> k16 = bf16_rounded(k), v16 = bf16_rounded(v);
        std::vector<float> v16_abs(v16.size());
        for (size_t i = 0; i < v16.size(); ++i) {
            v16_abs[i] = std::fabs(v16[i]);
            cache.max_abs_v = std::max(cache.max_abs_v, v16_abs[i]);
        }
        const int64_t position[1] = {p};
        cpu_ops().kv_write(cache.host_view, position, k16.data(), v16.data());
        cpu_ops().kv_write(cache.host_abs_view, position, k16.data(), v16_abs.data());
        for (float& x : q) x = normal(rng);
        // Uploads in the graph's stream, so they are ordered before the replay.
        CUDA_OK(cudaMemcpyAsync(k_dev.as<void>(), k.data(), k.size() * 4, cudaMemcpyHostToDevice, stream));
        CUDA_OK(cudaMemcpyAsync(v_dev.as<void>(), v.data(), v.size() * 4, cudaMemcpyHostToDevice, stream));
        CUDA_OK(cudaMemcpyAsync(q_dev.as<void>(), q.data(), q.size() * 4, cudaMemcpyHostToDevice, stream));
        CUDA_OK(cudaMemcpyAsync(position_dev.as<void>(), position, 8, cudaMemcpyHostToDevice, stream));
        CUDA_OK(cudaMemsetAsync(out_dev.as<void>(), 0xff, gpu.size() * 4, stream));
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        if (next_check < checked.size() && checked[next_check] == p) {
            ++next_check;
            CUDA_OK(cudaMemcpy(gpu.data(), out_dev.as<void>(), gpu.size() * 4, cudaMemcpyDeviceToHost));
            ASSERT_NO_FATAL_FAILURE(compare(s, cache, q, {p}, gpu, "graph replay at " + std::to_string(p), worst));
        }
    }
    EXPECT_EQ(next_check, checked.size());
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(stream));
    worst.print((std::string(s.name) + " graph replay").c_str());
}

TEST_F(CudaAttention, DecodeGraphReplaysAtEveryPosition) {
    // Split count: 1 (the single pass) up to 64 live keys at head 256 and 32 at head 512
    // (kDecodeSinglePassBytes), then one per 32 (capped at 8 sliding, 33 full); the graph replays
    // across the crossover.
    const LayerShape sliding{"gemma4 sliding", 32, 16, 256, 256, 1535, 1024, 1.0f, 0.0f};
    check_graph_replay(
        sliding, 2100,
        {0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 500, 1023, 1024, 1534, 1535, 1600, 2100});
    const LayerShape full{"gemma4 full", 32, 4, 512, 512, 4096, 0, 1.0f, 0.0f};
    check_graph_replay(full, 4095,
                       {0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 1000, 4095});
}

TEST_F(CudaAttention, RejectsBadArguments) {
    DeviceBuffer k, v, q, positions, out, workspace;
    CUDA_OK(k.alloc(1 << 20));
    CUDA_OK(v.alloc(1 << 20));
    CUDA_OK(q.alloc(1 << 16));
    CUDA_OK(positions.alloc(64));
    CUDA_OK(out.alloc(1 << 16));
    CUDA_OK(workspace.alloc(1 << 20));
    const cuda::KvCacheBf16View good{k.as<uint16_t>(), v.as<uint16_t>(), 64, 2, 64, 64};
    const cuda::AttentionShape shape{4, 0.125f, 0, 0.0f};
    const auto code = [&](const cuda::KvCacheBf16View& cache, const cuda::AttentionShape& sh, int64_t n, const float* qp) {
        return cuda::attention(qp, positions.as<int64_t>(), n, cache, sh, workspace.as<void>(), out.as<float>(), nullptr)
            .code();
    };
    cuda::KvCacheBf16View bad = good;
    bad.head_dim = 40;  // not a multiple of 16
    EXPECT_EQ(code(bad, shape, 1, q.as<float>()), StatusCode::kInvalidArgument);
    bad = good;
    bad.v_head_dim = 544;  // above 512
    EXPECT_EQ(code(bad, shape, 20, q.as<float>()), StatusCode::kInvalidArgument);
    EXPECT_EQ(code(good, {5, 0.125f, 0, 0.0f}, 1, q.as<float>()), StatusCode::kInvalidArgument);  // 5 over 2
    EXPECT_EQ(code(good, shape, 0, q.as<float>()), StatusCode::kInvalidArgument);
    EXPECT_EQ(code(good, shape, 1, q.as<float>() + 1), StatusCode::kInvalidArgument);  // misaligned
    EXPECT_EQ(code(good, {4, 0.125f, -1, 0.0f}, 1, q.as<float>()), StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::attention_decode(q.as<float>(), positions.as<int64_t>(), 1, good, shape, nullptr, out.as<float>(),
                                     nullptr)
                  .code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::kv_write_bf16(good, positions.as<int64_t>(), 1, q.as<float>() + 2, q.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    bad = good;
    bad.capacity = 0;
    EXPECT_EQ(cuda::kv_write_bf16(bad, positions.as<int64_t>(), 1, q.as<float>(), q.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
