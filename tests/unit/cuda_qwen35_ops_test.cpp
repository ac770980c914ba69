// The CUDA kernels of Qwen3.5's small ops and MoE router (src/ops/cuda/qwen35_ops.h) against
// their CPU twins (make_cpu_ops(): ops/cpu/qwen35_elementwise.cpp, ops/cpu/moe.cpp) at the
// Qwen3.5-35B-A3B shapes (T = 1 and 7 tokens: SwiGLU over the expert and shared FFN width 512,
// and over the 8 routed experts of each token; the attention gate over 16 heads x 256; the shared
// expert's gate over d_model 2048; the gated norm over 32 value heads x 128; the router over 256
// experts, top 8) and odd sizes (counts not a multiple of 4, pointers one float off 16-byte
// alignment, dim 100 and 7, the 256- and 1024-thread norm rows (dim 2048, 10000), more than
// 65535 rows, 1024 experts with top 32, expert counts that are not a multiple of 32). Outputs
// are poisoned with NaN first (cudaMemset 0xff; in-place ops: their input is the output) and NaN
// never passes. Skips without a GPU.
//
// Every kernel performs its twin's fp32 operations in the twin's order, except exp: the GPU's is
// exp in double rounded to fp32, the CPU's glibc's expf (<= 0.502 ulp), so the two exps agree
// except near a rounding boundary and then differ by one ulp. Each test prints how many values
// came out bit for bit. Tolerances, with u = 2^-24 (half an fp32 ulp, relative) and d = 2^-149
// (the smallest subnormal):
//   silu_and_mul, sigmoid_mul: 8u |cpu| + 2d (1 + |up| or |x|). One ulp of exp moves 1 + exp by
//     at most 4u (two roundings), the division adds 2u, the product 2u; a result the size of a
//     subnormal quantum (gates beyond about +-88) may differ by one quantum of silu / sigmoid,
//     times the other factor.
//   add_sigmoid_scaled: 8u |sigmoid(gate) x| + 4u |cpu| + 2d (1 + |x|): the product's 8u, then
//     one rounding of the sum on each side.
//   rms_norm_gated: 40u |cpu| + 2d (1 + |rms_norm(x) weight|): rms_norm's 32u (the GPU sums the
//     squares in norm.cu's tree order, the CPU in 8 lanes; see cuda_small_ops_test.cpp), silu's 6u
//     and the product's 2u. Against the GPU's own composition silu_and_mul(z, rms_norm(x,
//     weight)): bit for bit (the same device functions, the same sum of squares).
//   moe_route: ids identical; weights within 1e-6 |cpu|, and each row's weights sum to 1 within
//     1e-6. The GPU sums the softmax's exps in the CPU's order, so the probabilities are the
//     CPU's wherever the exps are; where one exp differs by an ulp, the renormalisation cancels
//     the sum's change to first order and the weights move by a few u. Logits are drawn distinct
//     and at least 4 / n_experts apart (probability ratios >= 1.0039, far beyond the few-u
//     differences), so no near-tie can flip an id. Batches also hold rows with exact ties (equal
//     logits give equal probabilities on both sides: the lower id first on both), rows spread
//     over [-100, 100] (exps that underflow) and rows of mostly -inf logits (probability-0
//     ties chosen when k exceeds the finite ones).
//   A router row with a NaN (or +inf, or all -inf) logit: as on the CPU, ids 0 .. k - 1 and NaN
//     weights (every probability is NaN, no two compare, the stable sort keeps the order).
//   graph: every op captured in one CUDA graph and replayed is bit for bit the eager launches.
#include <gtest/gtest.h>

#include <cstdint>

#include "kestrel/status.h"

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/qwen35_ops.h"
#include "ops/cuda/small_ops.h"
#include "ops/ops.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaQwen35Ops, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::random_vector;
using kestrel::testing::upload;

constexpr double kU = 0x1.0p-24;
constexpr double kSubnormal = 0x1.0p-149;

// Gates as random_vector, plus every 97th at +-80 .. +-109: exp(-gate) overflows, underflows to
// a subnormal or to zero there, and silu / sigmoid become subnormal or zero.
std::vector<float> random_gates(size_t n, uint32_t seed) {
    std::vector<float> g = random_vector(n, seed, 2.0f);
    for (size_t i = 7; i < n; i += 97) {
        g[i] = (i % 2 ? 1.0f : -1.0f) * (80.0f + static_cast<float>(i % 30));
    }
    return g;
}

// Norm weights around 1, as trained ones are.
std::vector<float> random_weight(size_t n, uint32_t seed) {
    std::vector<float> w = random_vector(n, seed, 0.3f);
    for (float& v : w) v = 1.0f + std::clamp(v, -0.9f, 3.0f);
    return w;
}

bool same_bits(float a, float b) {
    return std::memcmp(&a, &b, sizeof(float)) == 0;
}

// How close the GPU came: values bit for bit, and the largest error of a normal CPU result in
// u |cpu|.
struct Agreement {
    size_t exact = 0;
    size_t total = 0;
    double worst_u = 0.0;

    void add(float got, float expected) {
        ++total;
        if (same_bits(got, expected)) ++exact;
        if (std::fabs(expected) >= std::numeric_limits<float>::min()) {
            const double err = std::fabs(static_cast<double>(got) - expected);
            worst_u = std::max(worst_u, err / (kU * std::fabs(expected)));
        }
    }
    void print(const char* what, const char* tolerance) const {
        std::printf("%s: %zu of %zu bit for bit, max |gpu - cpu| = %.2f u |cpu| (tolerance %s)\n",
                    what, exact, total, worst_u, tolerance);
    }
};

// got[i] against expected[i] within tolerance(i), absolute; a NaN on either side fails.
template <class Tolerance>
void expect_within(const std::vector<float>& got, const std::vector<float>& expected,
                   Tolerance tolerance, const std::string& what, Agreement& agreement) {
    ASSERT_EQ(got.size(), expected.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(expected[i])) << what << ": the CPU gave NaN at " << i;
        ASSERT_FALSE(std::isnan(got[i]))
            << what << ": NaN at " << i << " (cpu " << expected[i] << ")";
        const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
        ASSERT_LE(err, tolerance(i))
            << what << " element " << i << ": gpu " << got[i] << " cpu " << expected[i];
        agreement.add(got[i], expected[i]);
    }
}

void expect_same_floats(const std::vector<float>& got, const std::vector<float>& expected,
                        const std::string& what) {
    ASSERT_EQ(got.size(), expected.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(same_bits(got[i], expected[i]))
            << what << " element " << i << ": " << got[i] << " vs " << expected[i];
    }
}

class CudaQwen35Ops : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        cpu_ = make_cpu_ops(1);
    }
    std::unique_ptr<Ops> cpu_;
};

// n elements starting `offset` floats into their buffers (offset 1: the scalar path).
struct ElementwiseCase {
    int64_t n;
    int64_t offset;
    const char* what;
};

const ElementwiseCase kSwigluCases[] = {
    {512, 0, "T=1, expert / shared FFN 512"},
    {7 * 512, 0, "T=7, shared FFN 512"},
    {7 * 8 * 512, 0, "T=7, 8 routed experts x 512"},
    {1001, 0, "odd: 1001"},
    {4099, 1, "odd: 4099, unaligned"},
    {3, 0, "odd: 3 (tail only)"},
};

const ElementwiseCase kAttentionGateCases[] = {
    {16 * 256, 0, "T=1, 16 heads x 256"},
    {7 * 16 * 256, 0, "T=7, 16 heads x 256"},
    {1001, 0, "odd: 1001"},
    {4099, 1, "odd: 4099, unaligned"},
};

// out = silu(gate) * up, and again in place over the gate.
TEST_F(CudaQwen35Ops, SiluAndMulMatchesCpu) {
    uint32_t seed = 1;
    Agreement agreement;
    for (const ElementwiseCase& c : kSwigluCases) {
        const size_t n = static_cast<size_t>(c.n), total = n + static_cast<size_t>(c.offset);
        const std::vector<float> gate = random_gates(total, ++seed);
        const std::vector<float> up = random_vector(total, ++seed, 2.0f);
        std::vector<float> expected(n);
        cpu_->silu_and_mul(gate.data() + c.offset, up.data() + c.offset, c.n, expected.data());
        const auto tolerance = [&](size_t i) {
            return 8 * kU * std::fabs(expected[i]) +
                   2 * kSubnormal * (1.0 + std::fabs(up[static_cast<size_t>(c.offset) + i]));
        };
        for (int in_place = 0; in_place < 2; ++in_place) {
            DeviceBuffer dgate, dup, dout;
            upload(dgate, gate);
            upload(dup, up);
            CUDA_OK(dout.alloc(total * 4));
            CUDA_OK(cudaMemset(dout.as<void>(), 0xff, total * 4));
            kestrel::testing::wait_for_host_copies();
            float* g = dgate.as<float>() + c.offset;
            float* out = in_place ? g : dout.as<float>() + c.offset;
            STATUS_OK(cuda::silu_and_mul(g, dup.as<float>() + c.offset, c.n, out, nullptr));
            expect_within(download(out, n), expected, tolerance,
                          std::string("silu_and_mul ") + c.what + (in_place ? " (in place)" : ""),
                          agreement);
            if (HasFatalFailure()) return;
        }
    }
    agreement.print("silu_and_mul", "8 u");
}

// out = x * sigmoid(gate), and again in place over x (as the attention block runs it).
TEST_F(CudaQwen35Ops, SigmoidMulMatchesCpu) {
    uint32_t seed = 100;
    Agreement agreement;
    for (const ElementwiseCase& c : kAttentionGateCases) {
        const size_t n = static_cast<size_t>(c.n), total = n + static_cast<size_t>(c.offset);
        const std::vector<float> x = random_vector(total, ++seed, 2.0f);
        const std::vector<float> gate = random_gates(total, ++seed);
        std::vector<float> expected(n);
        cpu_->sigmoid_mul(x.data() + c.offset, gate.data() + c.offset, c.n, expected.data());
        const auto tolerance = [&](size_t i) {
            return 8 * kU * std::fabs(expected[i]) +
                   2 * kSubnormal * (1.0 + std::fabs(x[static_cast<size_t>(c.offset) + i]));
        };
        for (int in_place = 0; in_place < 2; ++in_place) {
            DeviceBuffer dx, dgate, dout;
            upload(dx, x);
            upload(dgate, gate);
            CUDA_OK(dout.alloc(total * 4));
            CUDA_OK(cudaMemset(dout.as<void>(), 0xff, total * 4));
            kestrel::testing::wait_for_host_copies();
            float* px = dx.as<float>() + c.offset;
            float* out = in_place ? px : dout.as<float>() + c.offset;
            STATUS_OK(cuda::sigmoid_mul(px, dgate.as<float>() + c.offset, c.n, out, nullptr));
            expect_within(download(out, n), expected, tolerance,
                          std::string("sigmoid_mul ") + c.what + (in_place ? " (in place)" : ""),
                          agreement);
            if (HasFatalFailure()) return;
        }
    }
    agreement.print("sigmoid_mul", "8 u");
}

// out[t, :] += sigmoid(gate[t]) * x[t, :] onto a random residual (the routed experts' sum).
TEST_F(CudaQwen35Ops, AddSigmoidScaledMatchesCpu) {
    struct Case {
        int64_t rows, dim, offset;
        const char* what;
    };
    const Case cases[] = {
        {1, 2048, 0, "T=1, d_model 2048"},
        {7, 2048, 0, "T=7, d_model 2048"},
        {5, 100, 1, "odd: dim 100, unaligned"},
        {3, 99, 0, "odd: dim 99"},
        {70000, 4, 0, "70000 rows of 4 (rows past the grid's 65535)"},
    };
    uint32_t seed = 200;
    Agreement agreement;
    for (const Case& c : cases) {
        const size_t n = static_cast<size_t>(c.rows * c.dim),
                     total = n + static_cast<size_t>(c.offset);
        const std::vector<float> x = random_vector(total, ++seed);
        const std::vector<float> residual = random_vector(total, ++seed, 3.0f);
        std::vector<float> gate = random_gates(static_cast<size_t>(c.rows), ++seed);
        if (c.rows > 1) gate[1] = -88.0f;  // sigmoid(-88) = 6e-39: subnormal
        std::vector<float> expected(residual.begin() + c.offset, residual.end());
        cpu_->add_sigmoid_scaled(x.data() + c.offset, gate.data(), c.rows, c.dim, expected.data());
        const auto tolerance = [&](size_t i) {
            const double xi = x[static_cast<size_t>(c.offset) + i];
            const double product =
                std::fabs(cpu::sigmoid(gate[i / static_cast<size_t>(c.dim)]) * xi);
            return 8 * kU * product + 4 * kU * std::fabs(expected[i]) +
                   2 * kSubnormal * (1.0 + std::fabs(xi));
        };
        DeviceBuffer dx, dgate, dout;
        upload(dx, x);
        upload(dgate, gate);
        upload(dout, residual);
        float* out = dout.as<float>() + c.offset;
        STATUS_OK(cuda::add_sigmoid_scaled(dx.as<float>() + c.offset, dgate.as<float>(), c.rows,
                                           c.dim, out, nullptr));
        expect_within(download(out, n), expected, tolerance,
                      std::string("add_sigmoid_scaled ") + c.what, agreement);
        if (HasFatalFailure()) return;
    }
    agreement.print("add_sigmoid_scaled", "8 u |s x| + 4 u |cpu|");
}

// The CPU twin, and the GPU's own composition silu_and_mul(z, rms_norm(x, weight)) bit for bit;
// out of place (poisoned) and in place over x.
TEST_F(CudaQwen35Ops, RmsNormGatedMatchesCpu) {
    struct Case {
        int64_t rows, dim, offset;
        const char* what;
    };
    const Case cases[] = {
        {1 * 32, 128, 0, "T=1, 32 heads x 128"},
        {7 * 32, 128, 0, "T=7, 32 heads x 128"},
        {9, 100, 0, "odd: dim 100"},
        {9, 100, 1, "odd: dim 100, unaligned"},
        {5, 7, 0, "odd: dim 7"},
        {3, 2048, 0, "dim 2048 (256-thread rows)"},
        {2, 10000, 1, "dim 10000, unaligned (1024-thread rows)"},
    };
    const float eps = 1e-6f;
    uint32_t seed = 300;
    Agreement agreement;
    for (const Case& c : cases) {
        const size_t n = static_cast<size_t>(c.rows * c.dim),
                     total = n + static_cast<size_t>(c.offset);
        const std::vector<float> x = random_vector(total, ++seed);
        const std::vector<float> z = random_gates(total, ++seed);
        const std::vector<float> w =
            random_weight(static_cast<size_t>(c.dim) + static_cast<size_t>(c.offset), ++seed);
        const float* hx = x.data() + c.offset;
        const float* hz = z.data() + c.offset;
        const float* hw = w.data() + c.offset;
        std::vector<float> expected(n), normed(n);
        cpu_->rms_norm_gated(hx, hz, hw, c.rows, c.dim, eps, expected.data());
        cpu_->rms_norm(hx, hw, c.rows, c.dim, eps, normed.data());
        const auto tolerance = [&](size_t i) {
            return 40 * kU * std::fabs(expected[i]) + 2 * kSubnormal * (1.0 + std::fabs(normed[i]));
        };

        DeviceBuffer dx, dz, dw, dout, dcomposed;
        upload(dx, x);
        upload(dz, z);
        upload(dw, w);
        CUDA_OK(dout.alloc(total * 4));
        CUDA_OK(dcomposed.alloc(total * 4));
        CUDA_OK(cudaMemset(dout.as<void>(), 0xff, total * 4));
        kestrel::testing::wait_for_host_copies();
        float* px = dx.as<float>() + c.offset;
        const float* pz = dz.as<float>() + c.offset;
        const float* pw = dw.as<float>() + c.offset;
        float* out = dout.as<float>() + c.offset;
        float* composed = dcomposed.as<float>() + c.offset;
        STATUS_OK(cuda::rms_norm_gated(px, pz, pw, c.rows, c.dim, eps, out, nullptr));
        const std::vector<float> got = download(out, n);
        expect_within(got, expected, tolerance, std::string("rms_norm_gated ") + c.what, agreement);
        if (HasFatalFailure()) return;

        STATUS_OK(cuda::rms_norm(px, pw, c.rows, c.dim, eps, composed, nullptr));
        STATUS_OK(cuda::silu_and_mul(pz, composed, static_cast<int64_t>(n), composed, nullptr));
        expect_same_floats(got, download(composed, n),
                           std::string("rms_norm_gated vs silu_and_mul(z, rms_norm) ") + c.what);
        if (HasFatalFailure()) return;

        STATUS_OK(cuda::rms_norm_gated(px, pz, pw, c.rows, c.dim, eps, px, nullptr));
        expect_same_floats(download(px, n), got, std::string("rms_norm_gated in place ") + c.what);
        if (HasFatalFailure()) return;
    }
    agreement.print("rms_norm_gated", "40 u");
}

// ---- the router ------------------------------------------------------------------------------

// Logits of one row, by kind. kSeparated: a random permutation of an evenly spaced grid over
// [lo, hi) plus jitter within a quarter step, so any two are at least half a step
// ((hi - lo) / (2 n)) apart. kTies: values on a grid of 0.5, so many are exactly equal.
// kMasked: all -inf but 5 separated ones (with k > 5 the rest are probability-0 ties).
enum class RowKind { kSeparated, kTies, kWide, kMasked };

std::vector<float> router_row(int64_t n, RowKind kind, std::mt19937& rng) {
    std::vector<float> row(static_cast<size_t>(n));
    if (kind == RowKind::kTies) {
        std::normal_distribution<float> normal(0.0f, 2.0f);
        for (float& v : row) v = std::round(normal(rng) * 2.0f) / 2.0f;
        return row;
    }
    const float lo = kind == RowKind::kWide ? -100.0f : -7.0f + static_cast<float>(rng() % 7);
    const float hi = kind == RowKind::kWide ? 100.0f : lo + 8.0f;
    const float step = (hi - lo) / static_cast<float>(n);
    std::vector<int> place(static_cast<size_t>(n));
    std::iota(place.begin(), place.end(), 0);
    std::shuffle(place.begin(), place.end(), rng);
    std::uniform_real_distribution<float> jitter(-0.25f, 0.25f);
    for (size_t i = 0; i < row.size(); ++i) {
        row[i] = lo + step * (static_cast<float>(place[i]) + jitter(rng));
    }
    if (kind == RowKind::kMasked) {
        for (size_t i = 0; i < row.size(); ++i) {
            if (place[i] >= 5) row[i] = -std::numeric_limits<float>::infinity();
        }
    }
    return row;
}

struct RouteResult {
    std::vector<int32_t> ids;
    std::vector<float> weights;
};

// Runs the GPU router on poisoned outputs (ids -1, weights NaN); with shared gates, k + 1 slots
// per row.
void route_on_gpu(const std::vector<float>& logits, int64_t rows, int64_t n, int64_t k,
                  RouteResult& out, const std::vector<float>* shared_gate = nullptr) {
    DeviceBuffer dlogits, dids, dweights, dshared;
    upload(dlogits, logits);
    if (shared_gate != nullptr) upload(dshared, *shared_gate);
    const size_t slots = static_cast<size_t>(rows * (shared_gate != nullptr ? k + 1 : k));
    CUDA_OK(dids.alloc(slots * 4));
    CUDA_OK(dweights.alloc(slots * 4));
    CUDA_OK(cudaMemset(dids.as<void>(), 0xff, slots * 4));
    CUDA_OK(cudaMemset(dweights.as<void>(), 0xff, slots * 4));
    kestrel::testing::wait_for_host_copies();
    STATUS_OK(cuda::moe_route(dlogits.as<float>(), rows, n, k,
                              shared_gate != nullptr ? dshared.as<float>() : nullptr,
                              dids.as<int32_t>(), dweights.as<float>(), nullptr));
    out.ids = download(dids.as<int32_t>(), slots);
    out.weights = download(dweights.as<float>(), slots);
}

TEST_F(CudaQwen35Ops, MoeRouteMatchesCpu) {
    struct Case {
        int64_t n_experts, k, rows;
        const char* what;
    };
    const Case cases[] = {
        {256, 8, 1, "Qwen3.5 decode: 256 experts, top 8"},
        {256, 8, 7, "Qwen3.5, 7 tokens"},
        {256, 8, 40, "Qwen3.5, 40 tokens"},
        {1024, 32, 5, "1024 experts, top 32"},
        {100, 5, 9, "100 experts (a padded block), top 5"},
        {60, 4, 6, "60 experts, top 4"},
        {8, 8, 3, "k = n_experts = 8"},
        {1, 1, 2, "one expert"},
    };
    uint32_t seed = 400;
    size_t exact = 0, total = 0;
    double worst = 0.0;
    for (const Case& c : cases) {
        std::mt19937 rng(++seed);
        std::vector<float> logits;
        for (int64_t t = 0; t < c.rows; ++t) {
            // Decode rows stay plain; batches mix in ties, a wide spread and masked experts.
            RowKind kind = RowKind::kSeparated;
            if (c.rows > 1 && c.n_experts >= 16) {
                const RowKind kinds[] = {RowKind::kSeparated, RowKind::kSeparated, RowKind::kTies,
                                         RowKind::kWide, RowKind::kMasked};
                kind = kinds[t % 5];
            }
            const std::vector<float> row = router_row(c.n_experts, kind, rng);
            logits.insert(logits.end(), row.begin(), row.end());
        }
        const size_t slots = static_cast<size_t>(c.rows * c.k);
        std::vector<int32_t> ids(slots);
        std::vector<float> weights(slots);
        cpu_->moe_route(logits.data(), c.rows, c.n_experts, c.k, nullptr, ids.data(),
                        weights.data());
        RouteResult got;
        route_on_gpu(logits, c.rows, c.n_experts, c.k, got);
        if (HasFatalFailure()) return;
        // With the shared expert's gate: the same k slots, then slot k = (n_experts,
        // sigmoid(gate)), bit for bit the CPU's but for exp's rounding (qwen35_ops.h).
        std::normal_distribution<float> gate_logit(0.0f, 4.0f);
        std::vector<float> shared_gate;
        for (int64_t t = 0; t < c.rows; ++t) shared_gate.push_back(gate_logit(rng));
        std::vector<int32_t> shared_ids(static_cast<size_t>(c.rows * (c.k + 1)));
        std::vector<float> shared_weights(shared_ids.size());
        cpu_->moe_route(logits.data(), c.rows, c.n_experts, c.k, shared_gate.data(),
                        shared_ids.data(), shared_weights.data());
        RouteResult got_shared;
        route_on_gpu(logits, c.rows, c.n_experts, c.k, got_shared, &shared_gate);
        if (HasFatalFailure()) return;
        for (int64_t t = 0; t < c.rows; ++t) {
            for (int64_t j = 0; j <= c.k; ++j) {
                const size_t with = static_cast<size_t>(t * (c.k + 1) + j);
                const size_t without = static_cast<size_t>(t * c.k + j);
                if (j < c.k) {
                    ASSERT_EQ(shared_ids[with], ids[without]) << c.what << " (cpu) row " << t;
                    ASSERT_EQ(same_bits(shared_weights[with], weights[without]), true);
                    ASSERT_EQ(got_shared.ids[with], got.ids[without]) << c.what << " row " << t;
                    ASSERT_TRUE(same_bits(got_shared.weights[with], got.weights[without]))
                        << c.what << " row " << t << " slot " << j;
                } else {
                    ASSERT_EQ(shared_ids[with], c.n_experts) << c.what << " (cpu) row " << t;
                    ASSERT_EQ(got_shared.ids[with], c.n_experts) << c.what << " row " << t;
                    const double err = std::fabs(static_cast<double>(got_shared.weights[with]) -
                                                 shared_weights[with]);
                    ASSERT_LE(err, 4.0 * kU * std::fabs(shared_weights[with]))
                        << c.what << " row " << t << ": shared gate " << shared_gate[t] << ", gpu "
                        << got_shared.weights[with] << " cpu " << shared_weights[with];
                }
            }
        }
        for (int64_t t = 0; t < c.rows; ++t) {
            double sum = 0.0;
            for (int64_t j = 0; j < c.k; ++j) {
                const size_t s = static_cast<size_t>(t * c.k + j);
                ASSERT_EQ(got.ids[s], ids[s]) << c.what << " row " << t << " slot " << j;
                ASSERT_FALSE(std::isnan(weights[s])) << c.what << ": the CPU gave NaN, row " << t;
                ASSERT_FALSE(std::isnan(got.weights[s])) << c.what << " row " << t << " slot " << j;
                const double err = std::fabs(static_cast<double>(got.weights[s]) - weights[s]);
                ASSERT_LE(err, 1e-6 * std::fabs(weights[s]))
                    << c.what << " row " << t << " slot " << j << ": gpu " << got.weights[s]
                    << " cpu " << weights[s];
                if (weights[s] != 0.0f) worst = std::max(worst, err / (kU * std::fabs(weights[s])));
                exact += same_bits(got.weights[s], weights[s]) ? 1 : 0;
                ++total;
                sum += got.weights[s];
            }
            EXPECT_NEAR(sum, 1.0, 1e-6) << c.what << " row " << t;
        }
    }
    std::printf(
        "moe_route: ids identical; %zu of %zu weights bit for bit, max |gpu - cpu| = %.2f u |cpu| "
        "(tolerance 1e-6 = %.1f u)\n",
        exact, total, worst, 1e-6 / kU);
}

// A row with a NaN, +inf or only -inf logits: every probability is NaN on the CPU (the NaN
// reaches the sum of the exps), no two compare, and its stable sort keeps the ids' order; the GPU
// gives the same, and the rows around are unaffected.
TEST_F(CudaQwen35Ops, MoeRouteOfANaNRowMirrorsTheCpu) {
    const int64_t n = 256, k = 8, rows = 6;
    std::mt19937 rng(500);
    std::vector<float> logits;
    for (int64_t t = 0; t < rows; ++t) {
        const std::vector<float> row = router_row(n, RowKind::kSeparated, rng);
        logits.insert(logits.end(), row.begin(), row.end());
    }
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    logits[1 * n + 100] = nan;  // row 1: a NaN in the middle
    logits[2 * n + 0] = nan;    // row 2: a NaN first (std::max keeps it, fmaxf skips it)
    logits[3 * n + 17] = inf;   // row 3: +inf (inf - inf = NaN)
    std::fill(logits.begin() + 4 * n, logits.begin() + 5 * n, -inf);  // row 4: all -inf
    const bool broken[rows] = {false, true, true, true, true, false};

    std::vector<int32_t> ids(rows * k);
    std::vector<float> weights(rows * k);
    cpu_->moe_route(logits.data(), rows, n, k, nullptr, ids.data(), weights.data());
    RouteResult got;
    route_on_gpu(logits, rows, n, k, got);
    if (HasFatalFailure()) return;
    for (int64_t t = 0; t < rows; ++t) {
        for (int64_t j = 0; j < k; ++j) {
            const size_t s = static_cast<size_t>(t * k + j);
            EXPECT_EQ(got.ids[s], ids[s]) << "row " << t << " slot " << j;
            if (broken[t]) {
                EXPECT_EQ(ids[s], j) << "the CPU's row " << t;
                EXPECT_TRUE(std::isnan(weights[s])) << "the CPU's row " << t;
                EXPECT_TRUE(std::isnan(got.weights[s])) << "row " << t << " slot " << j;
            } else {
                ASSERT_FALSE(std::isnan(got.weights[s])) << "row " << t << " slot " << j;
                EXPECT_LE(std::fabs(static_cast<double>(got.weights[s]) - weights[s]),
                          1e-6 * weights[s])
                    << "row " << t << " slot " << j;
            }
        }
    }
}

// All five ops captured in one graph on a stream and replayed twice: bit for bit the eager
// launches (the launchers neither synchronise nor allocate, so capture records them as they are).
TEST_F(CudaQwen35Ops, CapturedInAGraphMatchesEagerLaunches) {
    const int64_t tokens = 3, d = 2048, ffn = 512, heads = 32, head_dim = 128, experts = 256, k = 8;
    const size_t swiglu_n = static_cast<size_t>(tokens * ffn),
                 gate_n = static_cast<size_t>(tokens * 16 * 256);
    const size_t norm_n = static_cast<size_t>(tokens * heads * head_dim),
                 model_n = static_cast<size_t>(tokens * d);
    const std::vector<float> a = random_gates(gate_n, 601), b = random_vector(gate_n, 602);
    const std::vector<float> w = random_weight(static_cast<size_t>(head_dim), 603);
    const std::vector<float> scalar_gates = random_gates(static_cast<size_t>(tokens), 604);
    const std::vector<float> residual = random_vector(model_n, 605, 3.0f);
    std::mt19937 rng(606);
    std::vector<float> logits;
    for (int64_t t = 0; t < tokens; ++t) {
        const std::vector<float> row = router_row(experts, RowKind::kSeparated, rng);
        logits.insert(logits.end(), row.begin(), row.end());
    }

    struct Outputs {
        DeviceBuffer swiglu, gated, sum, normed, ids, weights;
    };
    DeviceBuffer da, db, dw, dgates, dlogits;
    upload(da, a);
    upload(db, b);
    upload(dw, w);
    upload(dgates, scalar_gates);
    upload(dlogits, logits);
    Outputs eager, graphed;
    for (Outputs* o : {&eager, &graphed}) {
        CUDA_OK(o->swiglu.alloc(swiglu_n * 4));
        CUDA_OK(o->gated.alloc(gate_n * 4));
        upload(o->sum, residual);
        CUDA_OK(o->normed.alloc(norm_n * 4));
        CUDA_OK(o->ids.alloc(static_cast<size_t>(tokens * k) * 4));
        CUDA_OK(o->weights.alloc(static_cast<size_t>(tokens * k) * 4));
    }
    const auto run_all = [&](Outputs& o, cudaStream_t stream) -> Status {
        const float* pa = da.as<float>();
        const float* pb = db.as<float>();
        KESTREL_RETURN_IF_ERROR(cuda::silu_and_mul(pa, pb, static_cast<int64_t>(swiglu_n),
                                                   o.swiglu.as<float>(), stream));
        KESTREL_RETURN_IF_ERROR(
            cuda::sigmoid_mul(pb, pa, static_cast<int64_t>(gate_n), o.gated.as<float>(), stream));
        KESTREL_RETURN_IF_ERROR(
            cuda::add_sigmoid_scaled(pb, dgates.as<float>(), tokens, d, o.sum.as<float>(), stream));
        KESTREL_RETURN_IF_ERROR(cuda::rms_norm_gated(
            pb, pa, dw.as<float>(), tokens * heads, head_dim, 1e-6f, o.normed.as<float>(), stream));
        return cuda::moe_route(dlogits.as<float>(), tokens, experts, k, nullptr,
                               o.ids.as<int32_t>(), o.weights.as<float>(), stream);
    };
    STATUS_OK(run_all(eager, nullptr));
    CUDA_OK(cudaDeviceSynchronize());

    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreate(&stream));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const Status captured = run_all(graphed, stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    STATUS_OK(captured);
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
        // add_sigmoid_scaled accumulates: each replay starts from the same residual.
        CUDA_OK(cudaMemcpy(graphed.sum.as<void>(), residual.data(), model_n * 4,
                           cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        const std::string what = "replay " + std::to_string(replay);
        expect_same_floats(download(graphed.swiglu.as<float>(), swiglu_n),
                           download(eager.swiglu.as<float>(), swiglu_n), what + " silu_and_mul");
        expect_same_floats(download(graphed.gated.as<float>(), gate_n),
                           download(eager.gated.as<float>(), gate_n), what + " sigmoid_mul");
        expect_same_floats(download(graphed.sum.as<float>(), model_n),
                           download(eager.sum.as<float>(), model_n), what + " add_sigmoid_scaled");
        expect_same_floats(download(graphed.normed.as<float>(), norm_n),
                           download(eager.normed.as<float>(), norm_n), what + " rms_norm_gated");
        const size_t slots = static_cast<size_t>(tokens * k);
        EXPECT_EQ(download(graphed.ids.as<int32_t>(), slots),
                  download(eager.ids.as<int32_t>(), slots))
            << what;
        expect_same_floats(download(graphed.weights.as<float>(), slots),
                           download(eager.weights.as<float>(), slots), what + " moe_route weights");
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(stream));
}

TEST_F(CudaQwen35Ops, RejectsBadArguments) {
    DeviceBuffer d;
    CUDA_OK(d.alloc(1 << 16));
    float* x = d.as<float>();
    int32_t* ids = d.as<int32_t>();
    const auto invalid = [](const Status& status) {
        return status.code() == StatusCode::kInvalidArgument;
    };
    EXPECT_TRUE(invalid(cuda::silu_and_mul(x, x, -1, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::silu_and_mul(x, nullptr, 4, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::sigmoid_mul(x, x, 4, nullptr, nullptr)));
    EXPECT_TRUE(invalid(cuda::add_sigmoid_scaled(x, x, 1, 0, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::add_sigmoid_scaled(x, nullptr, 1, 8, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::rms_norm_gated(x, x, x, 1, 0, 1e-6f, x, nullptr)));
    EXPECT_TRUE(
        invalid(cuda::rms_norm_gated(x, x, x, 1, cuda::kMaxNormDim + 1, 1e-6f, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::rms_norm_gated(x, x, nullptr, 1, 128, 1e-6f, x, nullptr)));  // weight
    EXPECT_TRUE(invalid(cuda::rms_norm_gated(x, nullptr, x, 1, 128, 1e-6f, x, nullptr)));  // z
    EXPECT_TRUE(invalid(cuda::moe_route(x, 1, 0, 1, nullptr, ids, x, nullptr)));
    EXPECT_TRUE(
        invalid(cuda::moe_route(x, 1, cuda::kMaxRouteExperts + 1, 8, nullptr, ids, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::moe_route(x, 1, 256, 0, nullptr, ids, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::moe_route(x, 1, 4, 5, nullptr, ids, x, nullptr)));  // k > n_experts
    EXPECT_TRUE(
        invalid(cuda::moe_route(x, 1, 256, cuda::kMaxRouteTopK + 1, nullptr, ids, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::moe_route(x, -1, 256, 8, nullptr, ids, x, nullptr)));
    EXPECT_TRUE(invalid(cuda::moe_route(x, 1, 256, 8, nullptr, nullptr, x, nullptr)));
    // Nothing to do: no launch, no error.
    EXPECT_TRUE(cuda::silu_and_mul(nullptr, nullptr, 0, nullptr, nullptr).ok());
    EXPECT_TRUE(cuda::rms_norm_gated(x, x, x, 0, 128, 1e-6f, x, nullptr).ok());
    EXPECT_TRUE(cuda::moe_route(nullptr, 0, 256, 8, nullptr, nullptr, nullptr, nullptr).ok());
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
