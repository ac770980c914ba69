// The W8A8 decode GEMV (src/ops/cuda/gemv_w8a8.cu) against its CPU twin matvec_w8a8
// (ops/weight_format_w8.h) at the Gemma 4 31B shapes (incl. the 262144-row output head, which a
// Q6_K token_embd makes W8) and odd ones, M = 1..8, which between them reach every split-K variant
// (S = 1, 2, 4, 8 warps per row) at M = 1 and at M > 2 (EveryWarpSplitIsTested checks that on the
// GPU at hand). GEMV outputs are poisoned with NaN first; every one must be written and finite,
// and match the twin to fp32 accumulation-order tolerance, (groups + groups/16 + 40) 2^-24
// Σ|terms| (the twin's sequential sum over groups; the kernel's per-lane sums over at most
// 2 groups / 32 chunks, its 5 shuffle levels and at most 7 additions of split-K partials), and
// the fp32 W8 reference within the error of the activations' own int8 rounding. Skips without a
// GPU.
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
#include "ops/cuda/gemv_w8a8.h"
#include "ops/weight_format.h"
#include "ops/weight_format_w8.h"

#include "cuda_test_support.h"
#include "cuda_w8_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaGemvW8, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::random_w8;

class CudaGemvW8 : public ::testing::Test {
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
    for (size_t i = 17; i < x.size(); i += 997)
        x[i] *= 30.0f;  // outliers, as real activations have
    return x;
}

W8Weights select_rows(const W8Weights& w, const std::vector<int64_t>& rows) {
    W8Weights s;
    s.n = static_cast<int64_t>(rows.size());
    s.k = w.k;
    for (int64_t r : rows) {
        s.qs.insert(s.qs.end(), w.qs.begin() + r * w.k, w.qs.begin() + (r + 1) * w.k);
        s.scale_min.insert(s.scale_min.end(), w.scale_min.begin() + r * w.groups() * 2,
                           w.scale_min.begin() + (r + 1) * w.groups() * 2);
    }
    return s;
}

struct DeviceW8 {
    DeviceBuffer qs, scale_min;
    cuda::W8DeviceView view;
};

void upload(const W8Weights& w, DeviceW8& d) {
    CUDA_OK(d.qs.alloc(w.qs.size()));
    CUDA_OK(d.scale_min.alloc(w.scale_min.size() * 2));
    CUDA_OK(cudaMemcpy(d.qs.as<void>(), w.qs.data(), w.qs.size(), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d.scale_min.as<void>(), w.scale_min.data(), w.scale_min.size() * 2,
                       cudaMemcpyHostToDevice));
    kestrel::testing::wait_for_host_copies();
    d.view = {d.qs.as<int8_t>(), d.scale_min.as<uint32_t>(), w.n, w.k};
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
void check_gemv(const W8Weights& w, const DeviceW8& dw, int64_t m, uint64_t seed,
                std::vector<int64_t> check, Worst& worst) {
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
    s = cuda::gemv_w8a8(dw.view, da.as<Q8Block>(), m, dy.as<float>(), nullptr);
    ASSERT_TRUE(s.ok()) << s.message();
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> y(static_cast<size_t>(m * n));
    std::vector<Q8Block> a(static_cast<size_t>(m * groups));
    CUDA_OK(cudaMemcpy(y.data(), dy.as<void>(), y.size() * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(
        cudaMemcpy(a.data(), da.as<void>(), a.size() * sizeof(Q8Block), cudaMemcpyDeviceToHost));

    std::vector<Q8Block> a_cpu(a.size());
    for (int64_t r = 0; r < m; ++r) quantize_q8_row(x.data() + r * k, k, a_cpu.data() + r * groups);
    for (size_t i = 0; i < a.size(); ++i)
        ASSERT_TRUE(same_block(a[i], a_cpu[i])) << "Q8 block " << i;
    for (size_t i = 0; i < y.size(); ++i)
        ASSERT_TRUE(std::isfinite(y[i])) << "output " << i << " = " << y[i];

    if (check.empty()) {
        for (int64_t r = 0; r < n; ++r) check.push_back(r);
    }
    const W8Weights sub = select_rows(w, check);
    const int64_t c = sub.n;
    std::vector<float> twin(static_cast<size_t>(m * c)), mag(twin.size()), ref(twin.size());
    matvec_w8a8(sub, a_cpu.data(), m, twin.data(), mag.data());
    matvec_w8_f32(sub, x.data(), m, ref.data());
    const std::vector<float> wd = w8_dequantize(sub);
    const double eps = std::ldexp(1.0, -24);
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t j = 0; j < c; ++j) {
            const size_t t = static_cast<size_t>(r * c + j);
            const int64_t row = check[static_cast<size_t>(j)];
            const double got = y[static_cast<size_t>(r * n + row)];
            const double tol = (groups + groups / 16 + 40) * eps * mag[t] + 1e-30;
            const double err = std::fabs(got - twin[t]);
            ASSERT_LE(err, tol) << "k " << k << " n " << n << " m " << m << " row " << row
                                << ": gpu " << got << " twin " << twin[t];
            worst.twin = std::max(worst.twin, err / tol);
            double budget = 0.0;
            for (int64_t col = 0; col < k; ++col) {
                const Q8Block& blk = a_cpu[static_cast<size_t>(r * groups + col / 32)];
                budget += std::fabs(wd[static_cast<size_t>(j * k + col)]) *
                          std::fabs(x[static_cast<size_t>(r * k + col)] -
                                    static_cast<double>(blk.d) * blk.qs[col % 32]);
            }
            budget += 2 * tol;
            const double err32 = std::fabs(got - ref[t]);
            ASSERT_LE(err32, budget) << "k " << k << " n " << n << " m " << m << " row " << row;
            worst.int8 = std::max(worst.int8, err32 / budget);
        }
    }
}

// Rows checked against the twins at large n: first 64, last 64, every 97th.
std::vector<int64_t> sample_rows(int64_t n) {
    std::vector<int64_t> rows;
    for (int64_t r = 0; r < n; ++r) {
        if (r < 64 || r >= n - 64 || r % 97 == 0) rows.push_back(r);
    }
    return rows;
}

// {K, N}. Gemma 4 31B: q/k/v/gate/up (K = 5376 -> 8192, 16384, 4096, 21504), the stacked
// gate|up (5376 -> 43008), down (21504 -> 5376), o (8192 or 16384 -> 5376).
constexpr int64_t kGemma4Shapes[][2] = {{5376, 8192},  {5376, 16384}, {5376, 4096}, {5376, 21504},
                                        {5376, 43008}, {21504, 5376}, {8192, 5376}, {16384, 5376}};
// Odd shapes: a last block partly past n, rows shorter than a warp's 32 lanes or not a multiple
// of them. Few rows, so S is capped by the row length on any GPU: {1056, 250} 66 chunks, S = 2;
// {2080, 45} 130 chunks, S = 4; {4128, 1001} and {8224, 37} S = 8, with two chunks left over
// for a last, mostly idle round ({8224, 37}: 514 chunks).
constexpr int64_t kOddShapes[][2] = {{32, 1},     {64, 7},    {96, 33},     {256, 3},  {1024, 17},
                                     {1056, 250}, {2080, 45}, {4128, 1001}, {8224, 37}};

// The split-K rule (gemv_w4a8.h) for W8 rows (2 k / 32 chunks, slices of 32 chunks) on an
// H100's 132 SMs: the N = 5376 shapes split to >= 8 blocks per SM, large N stays whole.
TEST(CudaGemvW8SplitRule, H100Shapes) {
    constexpr int kH100Sms = 132;
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(5376, 21504, 1, kH100Sms), 8);  // 672 -> 5376 blocks
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(5376, 21504, 2, kH100Sms), 4);  // 16 a SM: 2688
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(5376, 8192, 3, kH100Sms), 8);   // R = 2: 336 -> 2688
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(16384, 5376, 1, kH100Sms), 2);  // 2048 -> 4096
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(4096, 5376, 3, kH100Sms), 8);   // 336 chunks: 10 slices
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(262144, 5376, 8, kH100Sms), 1);
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(250, 1056, 1, kH100Sms), 2);  // 66 chunks: 2 slices
    EXPECT_EQ(cuda::gemv_w8a8_warps_per_row(3, 256, 1, kH100Sms), 1);     // 16 chunks
}

TEST_F(CudaGemvW8, EveryWarpSplitIsTested) {
    const Result<int> sms = cuda::gemv_sm_count();
    ASSERT_TRUE(sms.ok()) << sms.status().message();
    for (const int64_t m : {1, 3}) {
        std::vector<int> reached;
        const auto add = [&](const int64_t(&shape)[2]) {
            reached.push_back(cuda::gemv_w8a8_warps_per_row(shape[1], shape[0], m, *sms));
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

// Every output is checked for being written; a sample of rows against the twins, to keep the
// CPU side short.
TEST_F(CudaGemvW8, Gemma4ShapesAllRowCounts) {
    Worst worst;
    uint64_t seed = 100;
    for (const auto& shape : kGemma4Shapes) {
        const int64_t k = shape[0], n = shape[1];
        const W8Weights w = random_w8(n, k, ++seed);
        DeviceW8 dw;
        upload(w, dw);
        if (HasFatalFailure()) return;
        for (int64_t m = 1; m <= 8; ++m) {
            check_gemv(w, dw, m, ++seed, sample_rows(n), worst);
            if (HasFatalFailure()) return;
        }
    }
    std::printf(
        "Gemma 4 shapes: max |gpu - twin| / tolerance = %.3e, max |gpu - ref32| / int8 budget = "
        "%.3f\n",
        worst.twin, worst.int8);
}

// The tied output head: vocab 262144 x d_model 5376 (1.4 GB in W8), M = 1, 3, 8.
TEST_F(CudaGemvW8, Gemma4OutputHead) {
    const int64_t k = 5376, n = 262144;
    const W8Weights w = random_w8(n, k, 7);
    DeviceW8 dw;
    upload(w, dw);
    if (HasFatalFailure()) return;
    Worst worst;
    for (int64_t m : {1, 3, 8}) {
        check_gemv(w, dw, m, 70 + static_cast<uint64_t>(m), sample_rows(n), worst);
        if (HasFatalFailure()) return;
    }
    std::printf(
        "output head: max |gpu - twin| / tolerance = %.3e, max |gpu - ref32| / int8 budget = "
        "%.3f\n",
        worst.twin, worst.int8);
}

TEST_F(CudaGemvW8, OddShapesAllRowCounts) {
    Worst worst;
    uint64_t seed = 500;
    for (const auto& shape : kOddShapes) {
        const W8Weights w = random_w8(shape[1], shape[0], ++seed);
        DeviceW8 dw;
        upload(w, dw);
        if (HasFatalFailure()) return;
        for (int64_t m = 1; m <= 8; ++m) {
            check_gemv(w, dw, m, ++seed, {}, worst);
            if (HasFatalFailure()) return;
        }
    }
    std::printf(
        "odd shapes: max |gpu - twin| / tolerance = %.3e, max |gpu - ref32| / int8 budget = %.3f\n",
        worst.twin, worst.int8);
}

// Weights as w8_from_f32 writes them (symmetric groups, min 0, scales from real-looking
// weights): the kernel reads what the converters write.
TEST_F(CudaGemvW8, ConvertedWeights) {
    const int64_t n = 300, k = 2048;
    std::mt19937 rng(4);
    std::normal_distribution<float> normal(0.0f, 0.03f);
    std::vector<float> values(static_cast<size_t>(n * k));
    for (float& v : values) v = normal(rng);
    Result<W8Weights> w = w8_from_f32(values, n, k);
    ASSERT_TRUE(w.ok()) << w.status().message();
    DeviceW8 dw;
    upload(*w, dw);
    if (HasFatalFailure()) return;
    Worst worst;
    for (int64_t m = 1; m <= 8; ++m) {
        check_gemv(*w, dw, m, 900 + static_cast<uint64_t>(m), {}, worst);
        if (HasFatalFailure()) return;
    }
}

TEST_F(CudaGemvW8, NaNActivationGivesNaNRows) {
    const int64_t m = 4, k = 512, n = 40, groups = k / 32;
    const W8Weights w = random_w8(n, k, 9);
    DeviceW8 dw;
    upload(w, dw);
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
    ASSERT_TRUE(cuda::gemv_w8a8(dw.view, da.as<Q8Block>(), m, dy.as<float>(), nullptr).ok());
    std::vector<float> y(static_cast<size_t>(m * n));
    CUDA_OK(cudaMemcpy(y.data(), dy.as<void>(), y.size() * 4, cudaMemcpyDeviceToHost));
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t j = 0; j < n; ++j) {
            EXPECT_EQ(std::isnan(y[static_cast<size_t>(r * n + j)]), r == 2) << r << " " << j;
        }
    }
}

TEST_F(CudaGemvW8, RejectsBadArguments) {
    const W8Weights w = random_w8(8, 64, 1);
    DeviceW8 dw;
    upload(w, dw);
    DeviceBuffer da, dy;
    CUDA_OK(da.alloc(16 * sizeof(Q8Block)));
    CUDA_OK(dy.alloc(16 * 8 * 4));
    EXPECT_EQ(cuda::gemv_w8a8(dw.view, da.as<Q8Block>(), 0, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::gemv_w8a8(dw.view, da.as<Q8Block>(), 9, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    cuda::W8DeviceView bad = dw.view;
    bad.k = 48;
    EXPECT_EQ(cuda::gemv_w8a8(bad, da.as<Q8Block>(), 1, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    bad = dw.view;
    bad.qs += 8;  // not 16-byte aligned
    EXPECT_EQ(cuda::gemv_w8a8(bad, da.as<Q8Block>(), 1, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::gemv_w8a8(dw.view, nullptr, 1, dy.as<float>(), nullptr).code(),
              StatusCode::kInvalidArgument);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
