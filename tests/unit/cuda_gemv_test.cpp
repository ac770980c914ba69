// The W4A8 decode GEMV (src/ops/cuda/gemv_w4a8.cu) against its CPU twins (ops/weight_format.h)
// at the Gemma 4 31B shapes, odd ones and ones whose rows end in a short super-group (with the
// converter's weights, w4_from_f32), M = 1..8, which between them reach every split-K variant
// (S = 1, 2, 4, 8 warps per row) at M = 1 and at M > 2 (EveryWarpSplitIsTested checks that on the
// GPU at hand). Q8 activation blocks must match the twin bit for bit; GEMV outputs (poisoned with
// NaN first, every one must be written and finite) must match matvec_w4a8 to fp32
// accumulation-order tolerance, (groups + 40) 2^-24 Σ|terms|, and the fp32 W4 reference within the
// error of the activations' own int8 rounding. Skips without a GPU.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/weight_format.h"

#include "cuda_test_support.h"
#include "cuda_w4_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaGemv, NeedsTheCudaBuild) { GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)"; }

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::DeviceW4;
using kestrel::testing::random_w4;
using kestrel::testing::splitmix64;
using kestrel::testing::upload_w4;

class CudaGemv : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
    }
};

std::vector<float> random_x(int64_t m, int64_t k, uint64_t seed) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(m * k));
    for (float& v : x) v = normal(rng);
    for (size_t i = 17; i < x.size(); i += 997) x[i] *= 30.0f;  // outliers, as real activations have
    return x;
}

// W4 from the CPU converter (w4_from_f32) on data whose per-group magnitudes vary over 100x
// (0.02 * 10^U(-1, 1)), groups centred below, on and above zero: within a super-group sc and m
// then spread over their 8-bit range, and (d, dmin) differ from one super-group to the next.
W4Weights varied_w4(int64_t n, int64_t k, uint64_t seed) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> exponent(-1.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n * k));
    for (size_t g = 0; g < x.size() / 32; ++g) {
        const float magnitude = 0.02f * std::pow(10.0f, exponent(rng));
        const float shift = 2.0f * static_cast<float>(static_cast<int>(rng() % 3) - 1);
        for (size_t i = 0; i < 32; ++i) x[g * 32 + i] = magnitude * (normal(rng) + shift);
    }
    Result<W4Weights> w = w4_from_f32(x, n, k);
    EXPECT_TRUE(w.ok()) << w.status().message();
    return w.ok() ? std::move(w).value() : W4Weights{};
}

W4Weights select_rows(const W4Weights& w, const std::vector<int64_t>& rows) {
    W4Weights s;
    s.n = static_cast<int64_t>(rows.size());
    s.k = w.k;
    const int64_t groups = w.groups(), supers2 = w.supers() * 2;
    for (int64_t r : rows) {
        s.qs.insert(s.qs.end(), w.qs.begin() + r * (w.k / 2), w.qs.begin() + (r + 1) * (w.k / 2));
        s.group_scales.insert(s.group_scales.end(), w.group_scales.begin() + r * groups,
                              w.group_scales.begin() + (r + 1) * groups);
        s.super_scales.insert(s.super_scales.end(), w.super_scales.begin() + r * supers2,
                              w.super_scales.begin() + (r + 1) * supers2);
    }
    return s;
}

bool same_block(const Q8Block& a, const Q8Block& b) {
    if (std::memcmp(a.qs, b.qs, 32) != 0 || a.sum != b.sum) return false;
    if (std::isnan(a.d) || std::isnan(b.d)) return std::isnan(a.d) && std::isnan(b.d);
    return std::memcmp(&a.d, &b.d, 4) == 0;
}

struct Worst {
    double twin = 0.0;  // max |gpu - twin| / accumulation-order tolerance
    double int8 = 0.0;  // max |gpu - ref32| / int8 budget
};

// Runs quantize + GEMV for m rows on the device, then checks every output is finite and the
// rows `check` (all when empty) against the twin and the fp32 reference.
void check_gemv(const W4Weights& w, const DeviceW4& dw, int64_t m, uint64_t seed, std::vector<int64_t> check,
                Worst& worst) {
    const int64_t k = w.k, n = w.n, groups = w.groups();
    const std::vector<float> x = random_x(m, k, seed);
    DeviceBuffer dx, da, dy;
    CUDA_OK(dx.alloc(x.size() * 4));
    CUDA_OK(da.alloc(static_cast<size_t>(m * groups) * sizeof(Q8Block)));
    CUDA_OK(dy.alloc(static_cast<size_t>(m * n) * 4));
    CUDA_OK(cudaMemcpy(dx.as<void>(), x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(da.as<void>(), 0xff, static_cast<size_t>(m * groups) * sizeof(Q8Block)));
    CUDA_OK(cudaMemset(dy.as<void>(), 0xff, static_cast<size_t>(m * n) * 4));  // NaN poison
    Status s = cuda::quantize_q8(dx.as<float>(), m, k, k, da.as<Q8Block>(), nullptr);
    kestrel::testing::wait_for_host_copies();
    ASSERT_TRUE(s.ok()) << s.message();
    s = cuda::gemv_w4a8(dw.view, da.as<Q8Block>(), m, dy.as<float>(), nullptr);
    ASSERT_TRUE(s.ok()) << s.message();
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> y(static_cast<size_t>(m * n));
    std::vector<Q8Block> a(static_cast<size_t>(m * groups));
    CUDA_OK(cudaMemcpy(y.data(), dy.as<void>(), y.size() * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(a.data(), da.as<void>(), a.size() * sizeof(Q8Block), cudaMemcpyDeviceToHost));

    std::vector<Q8Block> a_cpu(a.size());
    for (int64_t r = 0; r < m; ++r) quantize_q8_row(x.data() + r * k, k, a_cpu.data() + r * groups);
    for (size_t i = 0; i < a.size(); ++i) ASSERT_TRUE(same_block(a[i], a_cpu[i])) << "Q8 block " << i;
    for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(std::isfinite(y[i])) << "output " << i << " = " << y[i];

    if (check.empty()) {
        for (int64_t r = 0; r < n; ++r) check.push_back(r);
    }
    const W4Weights sub = select_rows(w, check);
    const int64_t c = sub.n;
    std::vector<float> twin(static_cast<size_t>(m * c)), mag(twin.size()), ref(twin.size());
    matvec_w4a8(sub, a_cpu.data(), m, twin.data(), mag.data());
    matvec_w4_f32(sub, x.data(), m, ref.data());
    const std::vector<float> wd = w4_dequantize(sub);
    const double eps = std::ldexp(1.0, -24);
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t j = 0; j < c; ++j) {
            const size_t t = static_cast<size_t>(r * c + j);
            const double got = y[static_cast<size_t>(r * n + check[static_cast<size_t>(j)])];
            const double tol = (groups + 40) * eps * mag[t] + 1e-30;
            const double err = std::fabs(got - twin[t]);
            ASSERT_LE(err, tol) << "k " << k << " n " << n << " m " << m << " row " << check[static_cast<size_t>(j)]
                                << ": gpu " << got << " twin " << twin[t];
            worst.twin = std::max(worst.twin, err / tol);
            double budget = 0.0;
            for (int64_t col = 0; col < k; ++col) {
                const Q8Block& blk = a_cpu[static_cast<size_t>(r * groups + col / 32)];
                budget += std::fabs(wd[static_cast<size_t>(j * k + col)]) *
                          std::fabs(x[static_cast<size_t>(r * k + col)] - static_cast<double>(blk.d) * blk.qs[col % 32]);
            }
            budget += 2 * tol;
            const double err32 = std::fabs(got - ref[t]);
            ASSERT_LE(err32, budget) << "k " << k << " n " << n << " m " << m << " row " << check[static_cast<size_t>(j)];
            worst.int8 = std::max(worst.int8, err32 / budget);
        }
    }
}

// {K, N}. Gemma 4 31B: q/k/v/gate/up (K = 5376 -> 8192, 16384, 4096, 21504), the stacked
// gate|up (5376 -> 43008), down (21504 -> 5376), o (8192 or 16384 -> 5376).
constexpr int64_t kGemma4Shapes[][2] = {{5376, 8192},  {5376, 16384}, {5376, 4096}, {5376, 21504},
                                        {5376, 43008}, {21504, 5376}, {8192, 5376}, {16384, 5376}};
// Qwen3.5-35B-A3B's projections, whose rows are short (K <= 4096: gemv_w4a8_short_rows at M = 1,
// R = 2 with S = 1 and S = 2): the Gated DeltaNet in-projection, the gated attention's q | gate | k
// | v, and the output projections.
constexpr int64_t kQwen35Shapes[][2] = {{2048, 12352}, {2048, 9216}, {4096, 2048}};
// Odd shapes: a last block partly past n, rows shorter than a warp's 32 lanes or not a multiple
// of them. The last three split K on any GPU (few rows; S capped by the row length): {2080, 45}
// 65 groups, S = 2; {4128, 1001} 129 groups, S = 4; {8224, 37} 257 groups, S = 8, each with one
// group left over for a last, mostly idle round.
constexpr int64_t kOddShapes[][2] = {{32, 1},     {64, 7},    {96, 33},     {256, 3},  {1024, 17},
                                     {1056, 250}, {2080, 45}, {4128, 1001}, {8224, 37}};

// K not a multiple of 256: each row ends in a short super-group (fewer than 8 groups share its
// (d, dmin)). 12 groups = 1 super-group + 4, 20 = 2 + 4, 73 = 9 + 1 (S = 2 at this N on an
// H100), 135 = 16 + 7 (S = 4). kOddShapes' K = 32, 64, 96, 1056, 2080, 4128 and 8224 end in
// short super-groups too, with the random_w4 weights.
constexpr int64_t kPartialSuperShapes[][2] = {{384, 40}, {640, 33}, {2336, 70}, {4320, 19}};

// The split-K rule (gemv_w4a8.h) on an H100's 132 SMs: the N = 5376 shapes split enough to give
// >= 24 blocks per SM at M = 1 and 16 above, as far as their rows allow; large N stays whole, short
// rows (< 2 slices of 32 groups) stay whole.
TEST(CudaGemvSplitRule, H100Shapes) {
    constexpr int kH100Sms = 132;
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(5376, 21504, 1, kH100Sms), 8);  // 672 -> 5376 blocks
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(5376, 21504, 2, kH100Sms), 4);  // 16 a SM: 2688
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(5376, 8192, 3, kH100Sms), 8);   // R = 2: 336 -> 2688
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(16384, 5376, 1, kH100Sms),
              4);  // short rows: 168 groups
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(16384, 5376, 8, kH100Sms), 4);  // 1024 -> 4096, 5 slices
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(43008, 5376, 8, kH100Sms), 1);  // 2688 blocks already
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(4096, 5376, 3, kH100Sms), 4);   // 168 groups: at most 4
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(37, 8224, 1, kH100Sms), 8);
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(250, 1056, 1, kH100Sms), 1);    // 33 groups: one slice
}

// Short rows at M = 1 (gemv_w4a8.h): at most 2 groups per lane, whatever N; M > 1 and longer rows
// keep the split rule above.
TEST(CudaGemvSplitRule, ShortRowsAtOneActivationRow) {
    constexpr int kH100Sms = 132;
    EXPECT_TRUE(cuda::gemv_w4a8_short_rows(2048, 1));
    EXPECT_TRUE(cuda::gemv_w4a8_short_rows(8192, 1));
    EXPECT_FALSE(cuda::gemv_w4a8_short_rows(8224, 1));
    EXPECT_FALSE(cuda::gemv_w4a8_short_rows(2048, 2));
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(12352, 2048, 1, kH100Sms), 1);  // was 2: 1 group a lane
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(2048, 4096, 1, kH100Sms), 2);   // was 4
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(45, 2080, 1, kH100Sms), 2);     // 65 groups
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(5376, 8192, 1, kH100Sms), 4);   // was 4 too, R = 1
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(1001, 4128, 1, kH100Sms), 4);   // 129 groups
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(2048, 4096, 3, kH100Sms), 4);   // M = 3: the rule
}

TEST_F(CudaGemv, EveryWarpSplitIsTested) {
    const Result<int> sms = cuda::gemv_sm_count();
    ASSERT_TRUE(sms.ok()) << sms.status().message();
    for (const int64_t m : {1, 3}) {
        std::vector<int> reached;
        const auto add = [&](const int64_t(&shape)[2]) {
            reached.push_back(cuda::gemv_w4a8_warps_per_row(shape[1], shape[0], m, *sms));
        };
        for (const auto& shape : kGemma4Shapes) add(shape);
        for (const auto& shape : kOddShapes) add(shape);
        for (const int split : {1, 2, 4, 8}) {
            EXPECT_NE(std::find(reached.begin(), reached.end(), split), reached.end())
                << "no test shape reaches S = " << split << " at m = " << m << " on " << *sms
                << " SMs: add one to kGemma4Shapes or kOddShapes";
        }
    }
}

TEST_F(CudaGemv, QuantizeMatchesTwinBitForBit) {
    const int64_t m = 3, k = 5376, groups = k / 32;
    std::vector<float> x = random_x(m, k, 3);
    for (int i = 0; i < 32; ++i) x[static_cast<size_t>(64 + i)] = 0.0f;      // zero block
    x[200] = std::numeric_limits<float>::quiet_NaN();                        // NaN block
    x[static_cast<size_t>(k + 300)] = -std::numeric_limits<float>::infinity();  // inf block
    // bf16 input: the same values rounded to bf16; the twin sees them widened.
    std::vector<uint16_t> xb(x.size());
    std::vector<float> xb_wide(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        xb[i] = fp32_to_bf16(x[i]);
        xb_wide[i] = bf16_to_fp32(xb[i]);
    }
    DeviceBuffer dx, dxb, da;
    CUDA_OK(dx.alloc(x.size() * 4));
    CUDA_OK(dxb.alloc(xb.size() * 2));
    CUDA_OK(da.alloc(static_cast<size_t>(m * groups) * sizeof(Q8Block)));
    CUDA_OK(cudaMemcpy(dx.as<void>(), x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dxb.as<void>(), xb.data(), xb.size() * 2, cudaMemcpyHostToDevice));
    kestrel::testing::wait_for_host_copies();
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        CUDA_OK(cudaMemset(da.as<void>(), 0xff, static_cast<size_t>(m * groups) * sizeof(Q8Block)));
        kestrel::testing::wait_for_host_copies();
        const Status s = bf16 ? cuda::quantize_q8_bf16(dxb.as<uint16_t>(), m, k, k, da.as<Q8Block>(), nullptr)
                              : cuda::quantize_q8(dx.as<float>(), m, k, k, da.as<Q8Block>(), nullptr);
        ASSERT_TRUE(s.ok()) << s.message();
        std::vector<Q8Block> a(static_cast<size_t>(m * groups)), cpu(a.size());
        CUDA_OK(cudaMemcpy(a.data(), da.as<void>(), a.size() * sizeof(Q8Block), cudaMemcpyDeviceToHost));
        const std::vector<float>& src = bf16 ? xb_wide : x;
        for (int64_t r = 0; r < m; ++r) quantize_q8_row(src.data() + r * k, k, cpu.data() + r * groups);
        for (size_t i = 0; i < a.size(); ++i) ASSERT_TRUE(same_block(a[i], cpu[i])) << "bf16 " << bf16 << " block " << i;
        EXPECT_EQ(a[2].d, 0.0f);
        EXPECT_TRUE(std::isnan(a[6].d));
        EXPECT_TRUE(std::isnan(a[static_cast<size_t>(groups + 9)].d));
    }
}

// Full-size shapes {k, n} at M = 1..8: every output is checked for being written; a sample of
// rows (first 64, last 64, every 97th) against the twins, to keep the CPU side short.
template <size_t kShapes>
void check_sampled_rows(const int64_t (&shapes)[kShapes][2], uint64_t seed, const char* what) {
    Worst worst;
    for (const auto& shape : shapes) {
        const int64_t k = shape[0], n = shape[1];
        const W4Weights w = random_w4(n, k, ++seed);
        DeviceW4 dw;
        upload_w4(w, dw);
        if (::testing::Test::HasFatalFailure()) return;
        std::vector<int64_t> rows;
        for (int64_t r = 0; r < n; ++r) {
            if (r < 64 || r >= n - 64 || r % 97 == 0) rows.push_back(r);
        }
        for (int64_t m = 1; m <= 8; ++m) {
            check_gemv(w, dw, m, ++seed, rows, worst);
            if (::testing::Test::HasFatalFailure()) return;
        }
    }
    std::printf("%s: max |gpu - twin| / tolerance = %.3e, max |gpu - ref32| / int8 budget = %.3f\n",
                what, worst.twin, worst.int8);
}

TEST_F(CudaGemv, Gemma4ShapesAllRowCounts) {
    check_sampled_rows(kGemma4Shapes, 100, "Gemma 4 shapes");
}

TEST_F(CudaGemv, Qwen35ShapesAllRowCounts) {
    check_sampled_rows(kQwen35Shapes, 300, "Qwen3.5 shapes");
}

TEST_F(CudaGemv, OddShapesAllRowCounts) {
    Worst worst;
    uint64_t seed = 500;
    for (const auto& shape : kOddShapes) {
        const W4Weights w = random_w4(shape[1], shape[0], ++seed);
        DeviceW4 dw;
        upload_w4(w, dw);
        if (HasFatalFailure()) return;
        for (int64_t m = 1; m <= 8; ++m) {
            check_gemv(w, dw, m, ++seed, {}, worst);
            if (HasFatalFailure()) return;
        }
    }
    std::printf("odd shapes: max |gpu - twin| / tolerance = %.3e, max |gpu - ref32| / int8 budget = %.3f\n",
                worst.twin, worst.int8);
}

// The converter's weights (varied_w4) at the partial super-group shapes, every row checked.
TEST_F(CudaGemv, PartialSuperGroupsAndVariedScales) {
    Worst worst;
    uint64_t seed = 700;
    for (const auto& shape : kPartialSuperShapes) {
        const int64_t k = shape[0], n = shape[1];
        ASSERT_NE((k / 32) % 8, 0) << "K = " << k << " has no short super-group";
        const W4Weights w = varied_w4(n, k, ++seed);
        ASSERT_EQ(w.n, n);
        // The data must exercise the two-level scales: sc spread over > 10x, several (d, dmin).
        int sc_lo = 256, sc_hi = 0;
        for (const uint16_t word : w.group_scales) {
            const int sc = word & 0xff;
            if (sc > 0) sc_lo = std::min(sc_lo, sc);
            sc_hi = std::max(sc_hi, sc);
        }
        EXPECT_GT(sc_hi, 10 * sc_lo) << "K = " << k << ": sc in [" << sc_lo << ", " << sc_hi << "]";
        std::vector<uint16_t> ds;
        for (size_t i = 0; i < w.super_scales.size(); i += 2) ds.push_back(w.super_scales[i]);
        std::sort(ds.begin(), ds.end());
        EXPECT_GT(std::unique(ds.begin(), ds.end()) - ds.begin(), 1)
            << "K = " << k << ": one d only";
        DeviceW4 dw;
        upload_w4(w, dw);
        if (HasFatalFailure()) return;
        for (int64_t m = 1; m <= 8; ++m) {
            check_gemv(w, dw, m, ++seed, {}, worst);
            if (HasFatalFailure()) return;
        }
    }
    std::printf(
        "partial super-groups: max |gpu - twin| / tolerance = %.3e, max |gpu - ref32| / int8 "
        "budget = %.3f\n",
        worst.twin, worst.int8);
}

TEST_F(CudaGemv, NaNActivationGivesNaNRows) {
    const int64_t m = 4, k = 512, n = 40, groups = k / 32;
    const W4Weights w = random_w4(n, k, 9);
    DeviceW4 dw;
    upload_w4(w, dw);
    std::vector<float> x = random_x(m, k, 10);
    x[static_cast<size_t>(2 * k + 77)] = std::numeric_limits<float>::quiet_NaN();
    DeviceBuffer dx, da, dy;
    CUDA_OK(dx.alloc(x.size() * 4));
    CUDA_OK(da.alloc(static_cast<size_t>(m * groups) * sizeof(Q8Block)));
    CUDA_OK(dy.alloc(static_cast<size_t>(m * n) * 4));
    CUDA_OK(cudaMemcpy(dx.as<void>(), x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(dy.as<void>(), 0, static_cast<size_t>(m * n) * 4));
    kestrel::testing::wait_for_host_copies();
    ASSERT_TRUE(cuda::quantize_q8(dx.as<float>(), m, k, k, da.as<Q8Block>(), nullptr).ok());
    ASSERT_TRUE(cuda::gemv_w4a8(dw.view, da.as<Q8Block>(), m, dy.as<float>(), nullptr).ok());
    std::vector<float> y(static_cast<size_t>(m * n));
    CUDA_OK(cudaMemcpy(y.data(), dy.as<void>(), y.size() * 4, cudaMemcpyDeviceToHost));
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t j = 0; j < n; ++j) {
            EXPECT_EQ(std::isnan(y[static_cast<size_t>(r * n + j)]), r == 2) << r << " " << j;
        }
    }
}

TEST_F(CudaGemv, RejectsBadArguments) {
    const W4Weights w = random_w4(8, 64, 1);
    DeviceW4 dw;
    upload_w4(w, dw);
    DeviceBuffer da, dy;
    CUDA_OK(da.alloc(16 * sizeof(Q8Block)));
    CUDA_OK(dy.alloc(16 * 8 * 4));
    EXPECT_EQ(cuda::gemv_w4a8(dw.view, da.as<Q8Block>(), 0, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::gemv_w4a8(dw.view, da.as<Q8Block>(), 9, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    cuda::W4DeviceView bad = dw.view;
    bad.k = 48;
    EXPECT_EQ(cuda::gemv_w4a8(bad, da.as<Q8Block>(), 1, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    // Each of the three weight arrays: null, then misaligned.
    for (int field = 0; field < 3; ++field) {
        for (int misaligned = 0; misaligned < 2; ++misaligned) {
            bad = dw.view;
            if (field == 0) bad.qs = misaligned ? dw.view.qs + 8 : nullptr;
            if (field == 1) {
                bad.group_scales =
                    misaligned ? reinterpret_cast<const uint16_t*>(
                                     reinterpret_cast<const uint8_t*>(dw.view.group_scales) + 1)
                               : nullptr;
            }
            if (field == 2) {
                bad.super_scales =
                    misaligned ? reinterpret_cast<const uint32_t*>(
                                     reinterpret_cast<const uint8_t*>(dw.view.super_scales) + 2)
                               : nullptr;
            }
            const Status st = cuda::gemv_w4a8(bad, da.as<Q8Block>(), 1, dy.as<float>(), nullptr);
            EXPECT_EQ(st.code(), StatusCode::kInvalidArgument)
                << "field " << field << " misaligned " << misaligned;
        }
    }
    EXPECT_EQ(cuda::quantize_q8(dy.as<float>(), 1, 40, 40, da.as<Q8Block>(), nullptr).code(),
              StatusCode::kInvalidArgument);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
