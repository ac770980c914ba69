// The CUDA small ops (src/ops/cuda/small_ops.h: norm.cu, rope.cu, elementwise.cu, embed.cu)
// against their CPU twins (make_cpu_ops(), ops/cpu/) at the Gemma 4 31B shapes (d_model 5376;
// 32 q heads; sliding 16 kv heads x 256, theta 1e4; full 4 kv heads x 512 with 64 rotating pairs,
// theta 1e6), Gemma 3 270M (d 640, head 256) and odd sizes, positions up to 131071. Outputs are
// poisoned with NaN first (in-place ops: their input is the output) and NaN never passes. Skips
// without a GPU. Tolerances, with u = 2^-24 (half an fp32 ulp, relative):
//   add, scale, residual_scale, embed (fp32 and W4): bit for bit (the same fp32 operations).
//   rms_norm (and V-norm, in place, rms_norm_add's norm): |gpu - cpu| <= 32u |cpu|. The only
//     difference is the order of the fp32 sum of squares (GPU tree, CPU 8 lanes): a few u on the
//     mean, half that after the square root.
//   rms_norm_quantize_q8: bit for bit the Q8 blocks of the GPU rms_norm then quantize_q8.
//   RoPE: |gpu - cpu| <= 4u (|a| + |b|) per rotated pair (a, b): the same fp32 angle and
//     operations; cos and sin in double on both sides round to the same fp32 except near a tie.
//   head_norm_rope: bit for bit GPU rms_norm then GPU RoPE; against the CPU (32 + 4)u (|a| + |b|)
//     of the CPU-normalised pair (the norm's tolerance, then the rotation's).
//   gelu_tanh_and_mul: 8u (|0.5 gate up| + |cpu|); softcap: 8u (cap + |cpu|): tanhf (CUDA,
//     2 ulp) and glibc's tanhf differ by a few ulp of tanh, which is at most 1.
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
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/small_ops.h"
#include "ops/ops.h"
#include "ops/weight_format.h"

#include "cuda_test_support.h"
#include "cuda_w4_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaSmallOps, NeedsTheCudaBuild) { GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)"; }

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::DeviceW4;
using kestrel::testing::download;
using kestrel::testing::random_vector;
using kestrel::testing::random_w4;
using kestrel::testing::upload;
using kestrel::testing::upload_w4;

constexpr double kU = 0x1.0p-24;

// Norm weights around 1, as trained ones are.
std::vector<float> random_weight(size_t n, uint32_t seed) {
    std::vector<float> w = random_vector(n, seed, 0.3f);
    for (float& v : w) v = 1.0f + std::clamp(v, -0.9f, 3.0f);
    return w;
}

// Positions that stress the angles: 0, small, around the sliding window, and the 128k end.
std::vector<int64_t> test_positions(int64_t tokens, uint32_t seed) {
    const int64_t fixed[] = {0, 1, 1023, 4095, 65537, 131071, 131070, 77777};
    std::mt19937 rng(seed);
    std::vector<int64_t> p;
    for (int64_t t = 0; t < tokens; ++t) {
        p.push_back(t < 8 ? fixed[t] : static_cast<int64_t>(rng() % 131072));
    }
    return p;
}

void expect_all_nan_free(const std::vector<float>& v, const std::string& what) {
    for (size_t i = 0; i < v.size(); ++i) ASSERT_FALSE(std::isnan(v[i])) << what << ": NaN at " << i;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

bool same_block(const Q8Block& a, const Q8Block& b) {
    if (std::memcmp(a.qs, b.qs, 32) != 0 || a.sum != b.sum) return false;
    if (std::isnan(a.d) || std::isnan(b.d)) return std::isnan(a.d) && std::isnan(b.d);
    return same_bits(a.d, b.d);
}

class CudaSmallOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        cpu_ = make_cpu_ops(1);
    }
    std::unique_ptr<Ops> cpu_;
};

struct NormCase {
    int64_t rows;
    int64_t dim;
    bool weighted;
    const char* what;
};

// Gemma 4: d_model rows, q heads [T*32, 256] / [T*32, 512], k heads [T*16, 256] / [T*4, 512], the
// weightless V-norm; Gemma 3 270M: d 640, heads 256; odd: dim 96 x 7 rows, dim 7 (no float4),
// 2000 and the FFN width 21504 (the 1024-thread rows).
const NormCase kNormCases[] = {
    {1, 5376, true, "Gemma 4 d_model, decode"},   {3, 5376, true, "Gemma 4 d_model, 3 rows"},
    {2 * 32, 256, true, "Gemma 4 sliding q-norm"}, {2 * 16, 256, true, "Gemma 4 sliding k-norm"},
    {2 * 16, 256, false, "Gemma 4 sliding V-norm"}, {3 * 32, 512, true, "Gemma 4 full q-norm"},
    {3 * 4, 512, false, "Gemma 4 full V-norm"},    {5, 640, true, "Gemma 3 270M d_model"},
    {4 * 4, 256, true, "Gemma 3 270M q-norm"},     {7, 96, true, "odd: dim 96"},
    {3, 7, true, "odd: dim 7"},                    {4, 2000, false, "odd: dim 2000"},
    {2, 21504, true, "dim 21504"},
};

TEST_F(CudaSmallOps, RmsNormMatchesCpu) {
    uint32_t seed = 1;
    double worst = 0.0;
    for (const NormCase& c : kNormCases) {
        for (int in_place = 0; in_place < 2; ++in_place) {
            const size_t n = static_cast<size_t>(c.rows * c.dim);
            const std::vector<float> x = random_vector(n, ++seed);
            const std::vector<float> w = random_weight(static_cast<size_t>(c.dim), ++seed);
            std::vector<float> expected(n);
            cpu_->rms_norm(x.data(), c.weighted ? w.data() : nullptr, c.rows, c.dim, 1e-6f, expected.data());
            DeviceBuffer dx, dw, dout;
            upload(dx, x);
            upload(dw, w);
            CUDA_OK(dout.alloc(n * 4));
            CUDA_OK(cudaMemset(dout.as<void>(), 0xff, n * 4));
            kestrel::testing::wait_for_host_copies();
            float* out = in_place ? dx.as<float>() : dout.as<float>();
            STATUS_OK(cuda::rms_norm(dx.as<float>(), c.weighted ? dw.as<float>() : nullptr, c.rows, c.dim, 1e-6f, out,
                                     nullptr));
            const std::vector<float> got = download(out, n);
            expect_all_nan_free(got, c.what);
            for (size_t i = 0; i < n; ++i) {
                const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
                const double tol = 32 * kU * std::fabs(expected[i]);
                ASSERT_LE(err, tol) << c.what << (in_place ? " (in place)" : "") << " element " << i << ": gpu "
                                    << got[i] << " cpu " << expected[i];
                if (expected[i] != 0.0f) worst = std::max(worst, err / (kU * std::fabs(expected[i])));
            }
        }
    }
    std::printf("rms_norm: max |gpu - cpu| = %.2f u |cpu| (tolerance 32 u)\n", worst);
}

TEST_F(CudaSmallOps, RmsNormAddMatchesCpu) {
    uint32_t seed = 100;
    for (const NormCase& c : kNormCases) {
        const size_t n = static_cast<size_t>(c.rows * c.dim);
        const std::vector<float> x = random_vector(n, ++seed);
        const std::vector<float> residual = random_vector(n, ++seed, 3.0f);
        const std::vector<float> w = random_weight(static_cast<size_t>(c.dim), ++seed);
        const float* weight = c.weighted ? w.data() : nullptr;
        std::vector<float> normed(n), expected = residual;
        cpu_->rms_norm(x.data(), weight, c.rows, c.dim, 1e-6f, normed.data());
        cpu_->rms_norm_add(x.data(), weight, c.rows, c.dim, 1e-6f, expected.data());
        DeviceBuffer dx, dw, dr;
        upload(dx, x);
        upload(dw, w);
        upload(dr, residual);
        STATUS_OK(cuda::rms_norm_add(dx.as<float>(), c.weighted ? dw.as<float>() : nullptr, c.rows, c.dim, 1e-6f,
                                     dr.as<float>(), nullptr));
        const std::vector<float> got = download(dr.as<float>(), n);
        expect_all_nan_free(got, c.what);
        for (size_t i = 0; i < n; ++i) {
            // The norm's tolerance, plus one rounding of the sum.
            const double tol = 32 * kU * std::fabs(normed[i]) + 2 * kU * std::fabs(expected[i]);
            ASSERT_LE(std::fabs(static_cast<double>(got[i]) - expected[i]), tol)
                << c.what << " element " << i << ": gpu " << got[i] << " cpu " << expected[i];
        }
    }
}

TEST_F(CudaSmallOps, RmsNormQuantizeQ8IsRmsNormThenQuantize) {
    struct Case {
        int64_t rows, dim;
        bool weighted;
    };
    const Case cases[] = {{1, 5376, true}, {3, 5376, true}, {2 * 32, 256, true}, {3 * 4, 512, false},
                          {5, 640, true},  {7, 96, true},   {2, 21504, true},    {3, 64, false}};
    uint32_t seed = 200;
    for (const Case& c : cases) {
        const size_t n = static_cast<size_t>(c.rows * c.dim);
        const int64_t groups = c.dim / 32;
        std::vector<float> x = random_vector(n, ++seed);
        if (c.rows >= 3) {
            x[static_cast<size_t>(c.dim + 5)] = std::numeric_limits<float>::quiet_NaN();  // row 1: all blocks NaN
            std::fill(x.begin() + 2 * c.dim, x.begin() + 3 * c.dim, 0.0f);                 // row 2: zero blocks
        }
        const std::vector<float> w = random_weight(static_cast<size_t>(c.dim), ++seed);
        DeviceBuffer dx, dw, dnormed, dfused, dsplit;
        upload(dx, x);
        upload(dw, w);
        const size_t block_bytes = static_cast<size_t>(c.rows * groups) * sizeof(Q8Block);
        CUDA_OK(dnormed.alloc(n * 4));
        CUDA_OK(dfused.alloc(block_bytes));
        CUDA_OK(dsplit.alloc(block_bytes));
        CUDA_OK(cudaMemset(dfused.as<void>(), 0xff, block_bytes));
        CUDA_OK(cudaMemset(dsplit.as<void>(), 0xff, block_bytes));
        kestrel::testing::wait_for_host_copies();
        const float* weight = c.weighted ? dw.as<float>() : nullptr;
        STATUS_OK(cuda::rms_norm_quantize_q8(dx.as<float>(), weight, c.rows, c.dim, 1e-6f, dfused.as<Q8Block>(),
                                             nullptr));
        STATUS_OK(cuda::rms_norm(dx.as<float>(), weight, c.rows, c.dim, 1e-6f, dnormed.as<float>(), nullptr));
        STATUS_OK(cuda::quantize_q8(dnormed.as<float>(), c.rows, c.dim, c.dim, dsplit.as<Q8Block>(), nullptr));
        const std::vector<Q8Block> fused = download(dfused.as<Q8Block>(), static_cast<size_t>(c.rows * groups));
        const std::vector<Q8Block> split = download(dsplit.as<Q8Block>(), fused.size());
        for (size_t i = 0; i < fused.size(); ++i) {
            ASSERT_TRUE(same_block(fused[i], split[i])) << "rows " << c.rows << " dim " << c.dim << " block " << i;
            const int64_t row = static_cast<int64_t>(i) / groups;
            // NaN only where the input row has one; all-zero rows give d = 0, q = 0.
            EXPECT_EQ(std::isnan(fused[i].d), c.rows >= 3 && row == 1) << "block " << i;
            if (c.rows >= 3 && row == 2) {
                EXPECT_EQ(fused[i].d, 0.0f);
            }
        }
    }
}

// Per element, the tolerance of a rotated pair: 4u (|a| + |b|) of the values that were rotated;
// values outside the rotated pairs must come back unchanged.
struct RopeGeometry {
    int64_t head_dim, pair_distance, n_pairs;
};

void expect_rope_close(const std::vector<float>& got, const std::vector<float>& expected,
                       const std::vector<float>& rotated_from, const RopeGeometry& g, double tol_u,
                       const std::string& what, double& worst) {
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << what << ": NaN at " << i;
        const int64_t j = static_cast<int64_t>(i) % g.head_dim;
        const size_t head = i - static_cast<size_t>(j);
        int64_t partner = -1;
        if (j < g.n_pairs) partner = j + g.pair_distance;
        if (j >= g.pair_distance && j - g.pair_distance < g.n_pairs) partner = j - g.pair_distance;
        if (partner < 0) {
            ASSERT_TRUE(same_bits(got[i], expected[i])) << what << ": pass-through element " << i << " changed";
            continue;
        }
        const double scale = std::fabs(rotated_from[i]) + std::fabs(rotated_from[head + static_cast<size_t>(partner)]);
        const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
        ASSERT_LE(err, tol_u * kU * scale) << what << " element " << i << ": gpu " << got[i] << " cpu " << expected[i];
        if (scale > 0) worst = std::max(worst, err / (kU * scale));
    }
}

struct RopeCase {
    enum Kind { kNeox, kProportional, kPartial } kind;
    int64_t tokens, n_heads, head_dim;
    int64_t rotary;  // pairs (proportional) or dims (partial)
    double theta;
    const char* what;
};

const RopeCase kRopeCases[] = {
    {RopeCase::kNeox, 6, 32, 256, 0, 1e4, "Gemma 4 sliding q"},
    {RopeCase::kNeox, 9, 16, 256, 0, 1e4, "Gemma 4 sliding k"},
    {RopeCase::kProportional, 6, 32, 512, 64, 1e6, "Gemma 4 full q (64 of 256 pairs)"},
    {RopeCase::kProportional, 9, 4, 512, 64, 1e6, "Gemma 4 full k"},
    {RopeCase::kNeox, 5, 4, 256, 0, 1e6, "Gemma 3 global"},
    {RopeCase::kNeox, 5, 1, 256, 0, 1e4, "Gemma 3 local k"},
    {RopeCase::kNeox, 7, 3, 96, 0, 1e4, "odd: 3 heads x 96"},
    {RopeCase::kPartial, 6, 16, 256, 64, 1e7, "Qwen3.5 partial (64 of 256)"},
};

RopeGeometry geometry_of(const RopeCase& c) {
    switch (c.kind) {
        case RopeCase::kNeox: return {c.head_dim, c.head_dim / 2, c.head_dim / 2};
        case RopeCase::kProportional: return {c.head_dim, c.head_dim / 2, c.rotary};
        case RopeCase::kPartial: return {c.head_dim, c.rotary / 2, c.rotary / 2};
    }
    return {};
}

TEST_F(CudaSmallOps, RopeMatchesCpu) {
    uint32_t seed = 300;
    double worst = 0.0;
    for (const RopeCase& c : kRopeCases) {
        const size_t n = static_cast<size_t>(c.tokens * c.n_heads * c.head_dim);
        const std::vector<float> x = random_vector(n, ++seed);
        const std::vector<int64_t> positions = test_positions(c.tokens, ++seed);
        std::vector<float> expected = x;
        DeviceBuffer dx, dpos;
        upload(dx, x);
        upload(dpos, positions);
        float* d = dx.as<float>();
        const int64_t* p = dpos.as<int64_t>();
        switch (c.kind) {
            case RopeCase::kNeox:
                cpu_->rope_neox(expected.data(), positions, c.n_heads, c.head_dim, c.theta);
                STATUS_OK(cuda::rope_neox(d, p, c.tokens, c.n_heads, c.head_dim, c.theta, nullptr));
                break;
            case RopeCase::kProportional:
                cpu_->rope_proportional(expected.data(), positions, c.n_heads, c.head_dim, c.rotary, c.theta);
                STATUS_OK(cuda::rope_proportional(d, p, c.tokens, c.n_heads, c.head_dim, c.rotary, c.theta, nullptr));
                break;
            case RopeCase::kPartial:
                cpu_->rope_neox_partial(expected.data(), positions, c.n_heads, c.head_dim, c.rotary, c.theta);
                STATUS_OK(cuda::rope_neox_partial(d, p, c.tokens, c.n_heads, c.head_dim, c.rotary, c.theta, nullptr));
                break;
        }
        const std::vector<float> got = download(d, n);
        expect_rope_close(got, expected, x, geometry_of(c), 4.0, c.what, worst);
        if (HasFatalFailure()) return;
    }
    std::printf("rope: max |gpu - cpu| = %.2f u (|a| + |b|) (tolerance 4 u)\n", worst);
}

TEST_F(CudaSmallOps, HeadNormRopeIsNormThenRope) {
    uint32_t seed = 400;
    double worst = 0.0;
    for (const RopeCase& c : kRopeCases) {
        if (c.kind == RopeCase::kPartial) continue;
        for (int weighted = 0; weighted < 2; ++weighted) {
            const int64_t rows = c.tokens * c.n_heads;
            const size_t n = static_cast<size_t>(rows * c.head_dim);
            const std::vector<float> x = random_vector(n, ++seed);
            const std::vector<float> w = random_weight(static_cast<size_t>(c.head_dim), ++seed);
            const std::vector<int64_t> positions = test_positions(c.tokens, ++seed);
            const int64_t pairs = c.kind == RopeCase::kNeox ? c.head_dim / 2 : c.rotary;
            const float* weight = weighted ? w.data() : nullptr;

            // CPU: rms_norm then rope (with a weight, CpuOps::head_norm_rope itself).
            std::vector<float> normed(n), expected(n);
            cpu_->rms_norm(x.data(), weight, rows, c.head_dim, 1e-6f, normed.data());
            if (weighted) {
                expected = x;
                cpu_->head_norm_rope(expected.data(), weight, positions, c.n_heads, c.head_dim, pairs, 1e-6f, c.theta);
            } else {
                expected = normed;
                cpu_->rope_proportional(expected.data(), positions, c.n_heads, c.head_dim, pairs, c.theta);
            }

            DeviceBuffer dx, dsplit, dw, dpos;
            upload(dx, x);
            upload(dsplit, x);
            upload(dw, w);
            upload(dpos, positions);
            const float* dweight = weighted ? dw.as<float>() : nullptr;
            STATUS_OK(cuda::head_norm_rope(dx.as<float>(), dweight, dpos.as<int64_t>(), c.tokens, c.n_heads,
                                           c.head_dim, pairs, 1e-6f, c.theta, nullptr));
            STATUS_OK(cuda::rms_norm(dsplit.as<float>(), dweight, rows, c.head_dim, 1e-6f, dsplit.as<float>(),
                                     nullptr));
            STATUS_OK(cuda::rope_proportional(dsplit.as<float>(), dpos.as<int64_t>(), c.tokens, c.n_heads, c.head_dim,
                                              pairs, c.theta, nullptr));
            const std::vector<float> got = download(dx.as<float>(), n);
            const std::vector<float> split = download(dsplit.as<float>(), n);
            for (size_t i = 0; i < n; ++i) {
                ASSERT_TRUE(same_bits(got[i], split[i]))
                    << c.what << " element " << i << ": fused " << got[i] << " rms_norm + rope " << split[i];
            }
            // Against the CPU: the norm's 32u, carried through the rotation of the normalised pair, plus its 4u.
            // Pass-through values carry the norm's error alone, so compare them by the same rule.
            const RopeGeometry g = geometry_of(c);
            for (size_t i = 0; i < n; ++i) {
                ASSERT_FALSE(std::isnan(got[i])) << c.what << ": NaN at " << i;
                const int64_t j = static_cast<int64_t>(i) % g.head_dim;
                const size_t head = i - static_cast<size_t>(j);
                const int64_t partner = j < g.pair_distance ? j + g.pair_distance : j - g.pair_distance;
                const double scale = std::fabs(normed[i]) + std::fabs(normed[head + static_cast<size_t>(partner)]);
                const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
                ASSERT_LE(err, 36 * kU * scale) << c.what << (weighted ? "" : " (no weight)") << " element " << i
                                                << ": gpu " << got[i] << " cpu " << expected[i];
                if (scale > 0) worst = std::max(worst, err / (kU * scale));
            }
        }
    }
    std::printf("head_norm_rope: max |gpu - cpu| = %.2f u (|a| + |b|) (tolerance 36 u)\n", worst);
}

TEST_F(CudaSmallOps, ElementwiseMatchCpu) {
    // Gemma 4's FFN width x 3 tokens (float4 path), an odd count, and pointers one float off
    // 16-byte alignment (scalar path).
    struct Case {
        size_t n;
        size_t offset;
    };
    const Case cases[] = {{21504 * 3, 0}, {1001, 0}, {4099, 1}};
    uint32_t seed = 500;
    double worst_gelu = 0.0, worst_softcap = 0.0;
    for (const Case& c : cases) {
        const size_t total = c.n + c.offset;
        std::vector<float> a = random_vector(total, ++seed, 2.0f);
        const std::vector<float> b = random_vector(total, ++seed, 2.0f);
        for (size_t i = 7; i < total; i += 97) a[i] = (i % 2 ? 1.0f : -1.0f) * (9.0f + static_cast<float>(i % 13));
        DeviceBuffer da, db, dout, dscalar;
        upload(da, a);
        upload(db, b);
        CUDA_OK(dout.alloc(total * 4));
        float* out = dout.as<float>() + c.offset;
        const float* pa = da.as<float>() + c.offset;
        const float* pb = db.as<float>() + c.offset;
        const std::string what = "n " + std::to_string(c.n) + " offset " + std::to_string(c.offset);

        // gelu_tanh_and_mul
        std::vector<float> expected(c.n);
        cpu_->gelu_tanh_and_mul(a.data() + c.offset, b.data() + c.offset, static_cast<int64_t>(c.n), expected.data());
        CUDA_OK(cudaMemset(dout.as<void>(), 0xff, total * 4));
        kestrel::testing::wait_for_host_copies();
        STATUS_OK(cuda::gelu_tanh_and_mul(pa, pb, static_cast<int64_t>(c.n), out, nullptr));
        std::vector<float> got = download(out, c.n);
        for (size_t i = 0; i < c.n; ++i) {
            const double gate = a[c.offset + i], up = b[c.offset + i];
            const double scale = std::fabs(0.5 * gate * up) + std::fabs(expected[i]);
            const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
            ASSERT_LE(err, 8 * kU * scale) << "gelu " << what << " element " << i << ": gpu " << got[i] << " cpu "
                                           << expected[i];
            if (scale > 0) worst_gelu = std::max(worst_gelu, err / (kU * scale));
        }

        // add: exact
        cpu_->add(a.data() + c.offset, b.data() + c.offset, static_cast<int64_t>(c.n), expected.data());
        CUDA_OK(cudaMemset(dout.as<void>(), 0xff, total * 4));
        kestrel::testing::wait_for_host_copies();
        STATUS_OK(cuda::add(pa, pb, static_cast<int64_t>(c.n), out, nullptr));
        got = download(out, c.n);
        for (size_t i = 0; i < c.n; ++i) ASSERT_TRUE(same_bits(got[i], expected[i])) << "add " << what << " " << i;

        // scale and residual_scale (in place): exact
        const float layer_scalar = 0.8671875f;
        std::vector<float> scaled(a.begin() + static_cast<long>(c.offset), a.end());
        cpu_->scale(scaled.data(), static_cast<int64_t>(c.n), 73.3212f);
        CUDA_OK(cudaMemcpy(out, a.data() + c.offset, c.n * 4, cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
        STATUS_OK(cuda::scale(out, static_cast<int64_t>(c.n), 73.3212f, nullptr));
        got = download(out, c.n);
        for (size_t i = 0; i < c.n; ++i) ASSERT_TRUE(same_bits(got[i], scaled[i])) << "scale " << what << " " << i;
        upload(dscalar, std::vector<float>{layer_scalar});
        cpu_->scale(scaled.data(), static_cast<int64_t>(c.n), layer_scalar);
        STATUS_OK(cuda::residual_scale(out, static_cast<int64_t>(c.n), dscalar.as<float>(), nullptr));
        got = download(out, c.n);
        for (size_t i = 0; i < c.n; ++i) {
            ASSERT_TRUE(same_bits(got[i], scaled[i])) << "residual_scale " << what << " " << i;
        }

        // softcap (in place) on logit-sized values
        std::vector<float> logits(a.begin() + static_cast<long>(c.offset), a.end());
        for (float& v : logits) v *= 12.0f;
        std::vector<float> capped = logits;
        cpu::softcap(capped.data(), static_cast<int64_t>(c.n), 30.0f);
        CUDA_OK(cudaMemcpy(out, logits.data(), c.n * 4, cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
        STATUS_OK(cuda::softcap(out, static_cast<int64_t>(c.n), 30.0f, nullptr));
        got = download(out, c.n);
        for (size_t i = 0; i < c.n; ++i) {
            const double err = std::fabs(static_cast<double>(got[i]) - capped[i]);
            const double scale = 30.0 + std::fabs(capped[i]);
            ASSERT_LE(err, 8 * kU * scale) << "softcap " << what << " element " << i << ": gpu " << got[i]
                                           << " cpu " << capped[i];
            worst_softcap = std::max(worst_softcap, err / (kU * scale));
        }
    }
    std::printf("gelu_tanh_and_mul: max %.2f u, softcap: max %.2f u (tolerance 8 u)\n", worst_gelu, worst_softcap);
}

TEST_F(CudaSmallOps, EmbedMatchesCpuBitForBit) {
    struct Case {
        int64_t vocab, dim;
    };
    const Case cases[] = {{1000, 5376}, {300, 640}, {37, 96}, {11, 7}};
    const float gemma4_scale = std::sqrt(5376.0f);
    uint32_t seed = 600;
    for (const Case& c : cases) {
        const std::vector<float> table = random_vector(static_cast<size_t>(c.vocab * c.dim), ++seed, 0.05f);
        const std::vector<int32_t> ids = {0, static_cast<int32_t>(c.vocab - 1), 5, 5, static_cast<int32_t>(c.vocab / 2)};
        std::vector<float> expected(ids.size() * static_cast<size_t>(c.dim));
        cpu::embed(ids, table.data(), c.dim, gemma4_scale, expected.data());
        DeviceBuffer dtable, dids, dout;
        upload(dtable, table);
        upload(dids, ids);
        CUDA_OK(dout.alloc(expected.size() * 4));
        CUDA_OK(cudaMemset(dout.as<void>(), 0xff, expected.size() * 4));
        kestrel::testing::wait_for_host_copies();
        STATUS_OK(cuda::embed(dids.as<int32_t>(), static_cast<int64_t>(ids.size()), dtable.as<float>(), c.vocab, c.dim,
                              gemma4_scale, dout.as<float>(), nullptr));
        const std::vector<float> got = download(dout.as<float>(), expected.size());
        for (size_t i = 0; i < got.size(); ++i) {
            ASSERT_TRUE(same_bits(got[i], expected[i])) << "vocab " << c.vocab << " dim " << c.dim << " element " << i;
        }
    }
    // W4 tables: Gemma 4 width, Gemma 3 270M width (20 groups: a short last super-group), an odd
    // one (3 groups), random; then one from the converter (w4_from_f32, rows of 12 groups). Rows
    // dequantised as w4_dequantize.
    const Case w4_cases[] = {{300, 5376}, {500, 640}, {9, 96}, {40, 384}};
    for (const Case& c : w4_cases) {
        W4Weights w;
        if (c.dim == 384) {
            Result<W4Weights> converted = w4_from_f32(
                random_vector(static_cast<size_t>(c.vocab * c.dim), ++seed, 0.05f), c.vocab, c.dim);
            ASSERT_TRUE(converted.ok()) << converted.status().message();
            w = std::move(converted).value();
        } else {
            w = random_w4(c.vocab, c.dim, ++seed);
        }
        const std::vector<float> table = w4_dequantize(w);
        const std::vector<int32_t> ids = {static_cast<int32_t>(c.vocab - 1), 0, 3, 3, 8, 1};
        std::vector<float> expected(ids.size() * static_cast<size_t>(c.dim));
        cpu::embed(ids, table.data(), c.dim, gemma4_scale, expected.data());
        DeviceW4 dw;
        DeviceBuffer dids, dout;
        upload_w4(w, dw);
        upload(dids, ids);
        CUDA_OK(dout.alloc(expected.size() * 4));
        CUDA_OK(cudaMemset(dout.as<void>(), 0xff, expected.size() * 4));
        kestrel::testing::wait_for_host_copies();
        const cuda::W4DeviceView view = dw.view;
        STATUS_OK(cuda::embed(dids.as<int32_t>(), static_cast<int64_t>(ids.size()), view, gemma4_scale,
                              dout.as<float>(), nullptr));
        const std::vector<float> got = download(dout.as<float>(), expected.size());
        for (size_t i = 0; i < got.size(); ++i) {
            ASSERT_TRUE(same_bits(got[i], expected[i])) << "W4 vocab " << c.vocab << " dim " << c.dim << " element " << i;
        }
    }
}

TEST_F(CudaSmallOps, EmbedOfAnIdOutsideTheVocabIsNaN) {
    const int64_t vocab = 10, dim = 64;
    const std::vector<float> table = random_vector(static_cast<size_t>(vocab * dim), 7);
    const W4Weights w = random_w4(vocab, dim, 8);
    const std::vector<int32_t> ids = {3, -1, 10, 9};
    DeviceW4 dw;
    DeviceBuffer dtable, dids, dout;
    upload(dtable, table);
    upload_w4(w, dw);
    upload(dids, ids);
    CUDA_OK(dout.alloc(ids.size() * dim * 4));
    const cuda::W4DeviceView view = dw.view;
    for (int w4 = 0; w4 < 2; ++w4) {
        CUDA_OK(cudaMemset(dout.as<void>(), 0, ids.size() * dim * 4));
        kestrel::testing::wait_for_host_copies();
        STATUS_OK(w4 ? cuda::embed(dids.as<int32_t>(), 4, view, 1.0f, dout.as<float>(), nullptr)
                     : cuda::embed(dids.as<int32_t>(), 4, dtable.as<float>(), vocab, dim, 1.0f, dout.as<float>(),
                                   nullptr));
        const std::vector<float> got = download(dout.as<float>(), ids.size() * dim);
        for (size_t i = 0; i < got.size(); ++i) {
            const size_t t = i / dim;
            EXPECT_EQ(std::isnan(got[i]), t == 1 || t == 2) << "w4 " << w4 << " token " << t;
        }
    }
}

TEST_F(CudaSmallOps, RejectsBadArguments) {
    DeviceBuffer d;
    CUDA_OK(d.alloc(1 << 16));
    float* x = d.as<float>();
    const int64_t* positions = d.as<int64_t>();
    EXPECT_EQ(cuda::rms_norm(x, nullptr, 1, 0, 1e-6f, x, nullptr).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::rms_norm(x, nullptr, 1, cuda::kMaxNormDim + 1, 1e-6f, x, nullptr).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::rms_norm_quantize_q8(x, nullptr, 1, 48, 1e-6f, d.as<Q8Block>(), nullptr).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::head_norm_rope(x, nullptr, positions, 1, 1, 95, 47, 1e-6f, 1e4, nullptr).code(),
              StatusCode::kInvalidArgument);  // odd head_dim
    EXPECT_EQ(cuda::head_norm_rope(x, nullptr, positions, 1, 1, 64, 33, 1e-6f, 1e4, nullptr).code(),
              StatusCode::kInvalidArgument);  // more pairs than head_dim / 2
    EXPECT_EQ(cuda::rope_neox(x, positions, 1, 1, 1024, 1e4, nullptr).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::softcap(x, 4, 0.0f, nullptr).code(), StatusCode::kInvalidArgument);
    const cuda::W4DeviceView aligned{d.as<uint8_t>(), d.as<uint16_t>(), d.as<uint32_t>(), 2, 64};
    cuda::W4DeviceView misaligned = aligned;
    misaligned.qs += 4;
    EXPECT_EQ(cuda::embed(d.as<int32_t>(), 1, misaligned, 1.0f, x, nullptr).code(),
              StatusCode::kInvalidArgument);
    misaligned = aligned;
    misaligned.group_scales = reinterpret_cast<const uint16_t*>(d.as<uint8_t>() + 1);
    EXPECT_EQ(cuda::embed(d.as<int32_t>(), 1, misaligned, 1.0f, x, nullptr).code(),
              StatusCode::kInvalidArgument);
    misaligned = aligned;
    misaligned.super_scales = reinterpret_cast<const uint32_t*>(d.as<uint8_t>() + 2);
    EXPECT_EQ(cuda::embed(d.as<int32_t>(), 1, misaligned, 1.0f, x, nullptr).code(),
              StatusCode::kInvalidArgument);
    misaligned = aligned;
    misaligned.super_scales = nullptr;
    EXPECT_EQ(cuda::embed(d.as<int32_t>(), 1, misaligned, 1.0f, x, nullptr).code(),
              StatusCode::kInvalidArgument);
    EXPECT_TRUE(cuda::rms_norm(x, nullptr, 0, 64, 1e-6f, x, nullptr).ok());  // no rows: nothing to do
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
