// The W4 weight format and the W4A8 CPU twins (ops/weight_format.h): conversions from GGUF
// Q4_K (exact, against src/io's fp32 dequantisation), Q4_0 (the 8-bit rounding of each
// group's step) and fp32 (round to nearest), Q8 activation blocks, and the
// W4A8 twin against the fp32 W4 reference within the error of its own int8 activations.
#include "ops/weight_format.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/half.h"
#include "io/dequantize.h"
#include "io/dequantize_blocks.h"

namespace kestrel {
namespace {

// Random Q4_K blocks: d and dmin fp16 over 2^-17..2^-5 (normal and subnormal fp16, which real
// files hold: d ~ max|w| / (15 * 63)), random 6-bit scales/mins and nibbles.
std::vector<uint8_t> random_q4_k(int64_t n_blocks, std::mt19937& rng) {
    std::vector<uint8_t> raw(static_cast<size_t>(n_blocks * 144));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> mant(0.5f, 1.0f);
    std::uniform_int_distribution<int> expo(-17, -5);
    for (int64_t b = 0; b < n_blocks; ++b) {
        uint8_t* block = raw.data() + b * 144;
        const uint16_t d = fp32_to_fp16(std::ldexp(mant(rng), expo(rng)));
        const uint16_t dmin = fp32_to_fp16(std::ldexp(mant(rng), expo(rng)));
        std::memcpy(block, &d, 2);
        std::memcpy(block + 2, &dmin, 2);
        for (int i = 4; i < 144; ++i) block[i] = static_cast<uint8_t>(byte(rng));
    }
    return raw;
}

// Q4_K's block is W4's super-group: the conversion copies d, dmin and the codes and widens the
// 6-bit (sc, m), so it is exact (the earlier per-group fp16 layout rounded d sc and dmin m).
TEST(WeightFormat, Q4KConvertsExactly) {
    std::mt19937 rng(1234);
    const int64_t n = 64, k = 2048;  // 512 blocks, 4096 groups
    const std::vector<uint8_t> raw = random_q4_k(n * k / 256, rng);
    std::vector<float> ref(static_cast<size_t>(n * k));
    ASSERT_TRUE(dequantize(DType::kQ4_K, raw, n * k, ref.data()).ok());
    Result<W4Weights> w = w4_from_q4_k(raw, n, k);
    ASSERT_TRUE(w.ok()) << w.status().message();
    ASSERT_EQ(w->supers(), k / 256);
    const std::vector<float> got = w4_dequantize(*w);
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(ref[i])) << i;
    }
    // The layout itself: block (row, b)'s d, dmin as super-group b, sub-block j's (sc, m) as group
    // 8b + j.
    for (int64_t row = 0; row < n; row += 7) {
        for (int64_t b = 0; b < k / 256; ++b) {
            const uint8_t* block = raw.data() + (row * (k / 256) + b) * 144;
            EXPECT_EQ(w->super_scales[static_cast<size_t>((row * (k / 256) + b) * 2)],
                      load_le<uint16_t>(block));
            EXPECT_EQ(w->super_scales[static_cast<size_t>((row * (k / 256) + b) * 2 + 1)],
                      load_le<uint16_t>(block + 2));
            for (int j = 0; j < 8; ++j) {
                const dequant::ScaleMin sm = dequant::k4_scale_min(block + 4, j);
                EXPECT_EQ(w->group_scales[static_cast<size_t>(row * (k / 32) + b * 8 + j)],
                          sm.scale | (sm.min << 8));
            }
        }
    }
    std::vector<uint8_t> bad = raw;
    const uint16_t inf = 0x7c00;
    std::memcpy(bad.data() + 144 * 3 + 2, &inf, 2);
    EXPECT_EQ(w4_from_q4_k(bad, n, k).status().code(), StatusCode::kInvalidArgument);
}

// Q4_0 keeps its codes (flipped where d < 0) and rounds each group's step a = |d| to an 8-bit
// multiple of its super-group's D: |Δw| <= 7.5 |D sc - a| + Dmin / 2 <= 3.75 D + Dmin / 2.
TEST(WeightFormat, Q40ConvertsWithinTheStatedBound) {
    std::mt19937 rng(99);
    const int64_t n = 16, k = 320;  // 10 groups per row: a full super-group and one of 2 groups
    std::vector<uint8_t> raw(static_cast<size_t>(n * k / 32 * 18));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(-0.02f, 0.02f);
    for (size_t b = 0; b < raw.size() / 18; ++b) {
        // Both signs, steps spread 1000x within a super-group, and subnormal fp16 ones.
        const uint16_t d = fp32_to_fp16(b % 5 == 0 ? scale(rng) * 1e-3f : scale(rng));
        std::memcpy(raw.data() + b * 18, &d, 2);
        for (int i = 2; i < 18; ++i) raw[b * 18 + i] = static_cast<uint8_t>(byte(rng));
    }
    std::vector<float> ref(static_cast<size_t>(n * k));
    ASSERT_TRUE(dequantize(DType::kQ4_0, raw, n * k, ref.data()).ok());
    Result<W4Weights> w = w4_from_q4_0(raw, n, k);
    ASSERT_TRUE(w.ok());
    ASSERT_EQ(w->supers(), 2);
    const std::vector<float> got = w4_dequantize(*w);
    double worst_share = 0.0;
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t g = 0; g < k / 32; ++g) {
            const uint16_t* super = w->super_scales.data() + (row * 2 + g / 8) * 2;
            const double unit = fp16_to_fp32(super[0]), min_unit = fp16_to_fp32(super[1]);
            float max_step = 0.0f;
            for (int64_t h = g / 8 * 8; h < std::min<int64_t>(k / 32, g / 8 * 8 + 8); ++h) {
                max_step = std::max(max_step, std::fabs(fp16_to_fp32(load_le<uint16_t>(
                                                  raw.data() + (row * (k / 32) + h) * 18))));
            }
            EXPECT_EQ(fp16_to_fp32(super[0]), fp16_to_fp32(fp16_at_least(max_step / 255.0f)));
            const double bound = 3.75 * unit + 0.5 * min_unit;
            for (int i = 0; i < 32; ++i) {
                const size_t idx = static_cast<size_t>(row * k + g * 32 + i);
                const double err = std::fabs(static_cast<double>(got[idx]) - ref[idx]);
                ASSERT_LE(err, bound * (1 + 1e-6) + std::ldexp(std::fabs(ref[idx]), -24))
                    << row << " " << g * 32 + i;
                if (max_step > 0) worst_share = std::max(worst_share, err / max_step);
            }
        }
    }
    std::printf("Q4_0 -> W4: max |dw| / the super-group's largest step = %.4f\n", worst_share);
    EXPECT_LE(worst_share, 0.035);
}

TEST(WeightFormat, F32QuantisesToNearest) {
    std::mt19937 rng(5);
    const int64_t n = 32, k = 288;  // 9 groups: a super-group of one at each row's end
    std::normal_distribution<float> normal(0.0f, 0.05f);
    std::vector<float> src(static_cast<size_t>(n * k));
    for (float& v : src) v = normal(rng);
    for (int i = 0; i < 32; ++i) src[static_cast<size_t>(32 + i)] = 0.25f;       // a constant group
    for (int i = 0; i < 32; ++i) src[static_cast<size_t>(k + 64 + i)] *= 1e-3f;  // a tiny one
    for (int i = 0; i < 32; ++i)
        src[static_cast<size_t>(2 * k + i)] = 0.01f + 0.001f * i;  // all positive
    Result<W4Weights> w = w4_from_f32(src, n, k);
    ASSERT_TRUE(w.ok());
    const std::vector<float> got = w4_dequantize(*w);
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t g = 0; g < k / 32; ++g) {
            const float* x = src.data() + row * k + g * 32;
            const W4GroupScale gs = w4_group_scale(*w, row, g);
            const float min_unit = fp16_to_fp32(
                w->super_scales[static_cast<size_t>((row * w->supers() + g / 8) * 2 + 1)]);
            // Half the stored step, plus half the min's unit (the clamp at either end), plus fp32
            // rounding.
            const float bound = 0.5f * gs.scale + 0.5f * min_unit + 1e-7f;
            for (int i = 0; i < 32; ++i) {
                ASSERT_LE(std::fabs(got[static_cast<size_t>(row * k + g * 32 + i)] - x[i]), bound)
                    << row << " " << g * 32 + i;
            }
        }
    }
    EXPECT_NEAR(got[32], 0.25f, 0.5f * w4_group_scale(*w, 0, 1).scale);
    std::vector<float> bad(src);
    bad[3] = std::numeric_limits<float>::infinity();
    EXPECT_EQ(w4_from_f32(bad, n, k).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(w4_from_f32(src, n, k - 32).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(w4_from_q4_k(std::vector<uint8_t>(144), 1, 128).status().code(), StatusCode::kInvalidArgument);
}

TEST(WeightFormat, Q8BlocksRoundToNearestAndFlagNonFinite) {
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> x(128);
    for (float& v : x) v = normal(rng);
    for (int i = 64; i < 96; ++i) x[static_cast<size_t>(i)] = 0.0f;  // an all-zero block
    x[100] = std::numeric_limits<float>::quiet_NaN();
    std::vector<Q8Block> blocks(4);
    quantize_q8_row(x.data(), 128, blocks.data());
    for (int b = 0; b < 2; ++b) {
        const Q8Block& blk = blocks[static_cast<size_t>(b)];
        float amax = 0;
        int sum = 0;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[static_cast<size_t>(b * 32 + i)]));
        EXPECT_EQ(blk.d, amax / 127.0f);
        for (int i = 0; i < 32; ++i) {
            EXPECT_LE(std::fabs(x[static_cast<size_t>(b * 32 + i)] - blk.d * blk.qs[i]), 0.5f * blk.d * 1.0001f);
            sum += blk.qs[i];
        }
        EXPECT_EQ(blk.sum, sum);
    }
    EXPECT_EQ(blocks[2].d, 0.0f);
    EXPECT_EQ(blocks[2].sum, 0);
    EXPECT_TRUE(std::isnan(blocks[3].d));
}

// W4A8 twin vs the fp32 W4 reference: the difference is the activations' int8 rounding,
// |Σ_k w (x - d q)| <= Σ_k |w| |x - d q|, plus fp32 accumulation error.
TEST(WeightFormat, W4A8TwinMatchesFp32ReferenceWithinInt8Budget) {
    std::mt19937 rng(21);
    const int64_t n = 48, k = 1024, m_rows = 3;
    std::normal_distribution<float> normal(0.0f, 0.05f);
    std::vector<float> wsrc(static_cast<size_t>(n * k));
    for (float& v : wsrc) v = normal(rng);
    Result<W4Weights> w = w4_from_f32(wsrc, n, k);
    ASSERT_TRUE(w.ok());
    std::normal_distribution<float> act(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(m_rows * k));
    for (float& v : x) v = act(rng);
    x[5] = 40.0f;  // an outlier coarsens its block's step
    std::vector<Q8Block> a(static_cast<size_t>(m_rows * k / 32));
    for (int64_t m = 0; m < m_rows; ++m) quantize_q8_row(x.data() + m * k, k, a.data() + m * (k / 32));
    std::vector<float> ref(static_cast<size_t>(m_rows * n)), twin(ref.size()), mag(ref.size());
    matvec_w4_f32(*w, x.data(), m_rows, ref.data());
    matvec_w4a8(*w, a.data(), m_rows, twin.data(), mag.data());
    const std::vector<float> wd = w4_dequantize(*w);
    double worst = 0.0, num = 0.0, den = 0.0;
    for (int64_t m = 0; m < m_rows; ++m) {
        for (int64_t row = 0; row < n; ++row) {
            double budget = 0.0;
            for (int64_t c = 0; c < k; ++c) {
                const Q8Block& blk = a[static_cast<size_t>(m * (k / 32) + c / 32)];
                const double xq = static_cast<double>(blk.d) * blk.qs[c % 32];
                budget += std::fabs(wd[static_cast<size_t>(row * k + c)]) * std::fabs(x[static_cast<size_t>(m * k + c)] - xq);
            }
            const size_t i = static_cast<size_t>(m * n + row);
            const double tol = budget + (k / 32 + 8) * std::ldexp(1.0, -24) * mag[i];
            const double err = std::fabs(static_cast<double>(twin[i]) - ref[i]);
            ASSERT_LE(err, tol) << "m " << m << " row " << row;
            worst = std::max(worst, err / tol);
            num += err * err;
            den += static_cast<double>(ref[i]) * ref[i];
        }
    }
    std::printf("W4A8 twin vs fp32 W4: ||err|| / ||ref|| = %.3e, max err / int8 budget = %.3f\n",
                std::sqrt(num / den), worst);
}

}  // namespace
}  // namespace kestrel
