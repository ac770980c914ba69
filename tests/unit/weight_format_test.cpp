// The W4 weight format and the W4A8 CPU twins (ops/weight_format.h): conversions from GGUF
// Q4_K (error = the fp16 rounding of d*sc and dmin*m, measured against src/io's fp32
// dequantisation), Q4_0 (exact) and fp32 (round to nearest), Q8 activation blocks, and the
// W4A8 twin against the fp32 W4 reference within the error of its own int8 activations.
#include "ops/weight_format.h"

#include <gtest/gtest.h>

#include <algorithm>
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

namespace kestrel {
namespace {

constexpr float kFp16HalfUlp = 1.0f / 2048.0f;  // 2^-11: fp16 round-to-nearest relative error

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

TEST(WeightFormat, Q4KConvertsWithinFp16RoundingOfScaleAndMin) {
    std::mt19937 rng(1234);
    const int64_t n = 64, k = 2048;  // 512 blocks, 4096 groups
    const std::vector<uint8_t> raw = random_q4_k(n * k / 256, rng);
    std::vector<float> ref(static_cast<size_t>(n * k));
    ASSERT_TRUE(dequantize(DType::kQ4_K, raw, n * k, ref.data()).ok());
    Result<W4Weights> w = w4_from_q4_k(raw, n, k);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const std::vector<float> got = w4_dequantize(*w);

    // Per weight: |Δ| <= 2^-11 (|d sc q| + |dmin m|), the two fp16 roundings; measured as the
    // ratio to that magnitude (relative error of the terms) and to the group's max |w|.
    double max_term_rel = 0.0, max_group_rel = 0.0, err2 = 0.0, ref2 = 0.0;
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t g = 0; g < k / 32; ++g) {
            const uint8_t* block = raw.data() + (row * (k / 256) + g / 8) * 144;
            const float d = fp16_to_fp32(load_le<uint16_t>(block));
            const float dmin = fp16_to_fp32(load_le<uint16_t>(block + 2));
            const uint16_t* sm = w->scale_min.data() + (row * (k / 32) + g) * 2;
            // Recover sc and m from the exact products to bound the error term by term.
            double group_max = 0.0, group_err = 0.0;
            for (int i = 0; i < 32; ++i) {
                const size_t idx = static_cast<size_t>(row * k + g * 32 + i);
                const int q = w4_q(*w, row, g * 32 + i);
                const double err = std::fabs(static_cast<double>(got[idx]) - ref[idx]);
                // |d sc q| + |dmin m| <= |scale q| (1 + 2^-11) + |min| (1 + 2^-11): use the stored values.
                const double terms = (std::fabs(fp16_to_fp32(sm[0]) * q) + std::fabs(fp16_to_fp32(sm[1]))) *
                                     (1.0 + kFp16HalfUlp);
                ASSERT_LE(err, kFp16HalfUlp * terms + 1e-12 * terms)
                    << "row " << row << " col " << g * 32 + i << " d " << d << " dmin " << dmin;
                if (terms > 0) max_term_rel = std::max(max_term_rel, err / terms);
                group_max = std::max(group_max, static_cast<double>(std::fabs(ref[idx])));
                group_err = std::max(group_err, err);
                err2 += err * err;
                ref2 += static_cast<double>(ref[idx]) * ref[idx];
            }
            if (group_max > 0) max_group_rel = std::max(max_group_rel, group_err / group_max);
        }
    }
    std::printf("Q4_K -> W4: max |dw| / (|d sc q| + |dmin m|) = %.3e (bound 2^-11 = %.3e), "
                "max |dw| / max|w| per group = %.3e, ||dw|| / ||w|| = %.3e\n",
                max_term_rel, static_cast<double>(kFp16HalfUlp), max_group_rel, std::sqrt(err2 / ref2));
    EXPECT_LE(max_term_rel, kFp16HalfUlp);
}

TEST(WeightFormat, Q4KIsExactWhenTheProductsFitInFp16) {
    std::mt19937 rng(7);
    const int64_t n = 4, k = 512;
    std::vector<uint8_t> raw = random_q4_k(n * k / 256, rng);
    for (int64_t b = 0; b < n * k / 256; ++b) {  // d, dmin powers of two: d*sc has <= 6 significant bits
        const uint16_t d = fp32_to_fp16(std::ldexp(1.0f, -10 - static_cast<int>(b % 3)));
        const uint16_t dmin = fp32_to_fp16(std::ldexp(1.0f, -9 - static_cast<int>(b % 2)));
        std::memcpy(raw.data() + b * 144, &d, 2);
        std::memcpy(raw.data() + b * 144 + 2, &dmin, 2);
    }
    std::vector<float> ref(static_cast<size_t>(n * k));
    ASSERT_TRUE(dequantize(DType::kQ4_K, raw, n * k, ref.data()).ok());
    Result<W4Weights> w = w4_from_q4_k(raw, n, k);
    ASSERT_TRUE(w.ok());
    const std::vector<float> got = w4_dequantize(*w);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], ref[i]) << i;
}

TEST(WeightFormat, Q40ConvertsExactly) {
    std::mt19937 rng(99);
    const int64_t n = 16, k = 320;
    std::vector<uint8_t> raw(static_cast<size_t>(n * k / 32 * 18));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(-0.02f, 0.02f);
    for (size_t b = 0; b < raw.size() / 18; ++b) {
        // Include subnormal fp16 scales and negative ones.
        const uint16_t d = fp32_to_fp16(b % 5 == 0 ? scale(rng) * 1e-3f : scale(rng));
        std::memcpy(raw.data() + b * 18, &d, 2);
        for (int i = 2; i < 18; ++i) raw[b * 18 + i] = static_cast<uint8_t>(byte(rng));
    }
    std::vector<float> ref(static_cast<size_t>(n * k));
    ASSERT_TRUE(dequantize(DType::kQ4_0, raw, n * k, ref.data()).ok());
    Result<W4Weights> w = w4_from_q4_0(raw, n, k);
    ASSERT_TRUE(w.ok());
    const std::vector<float> got = w4_dequantize(*w);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], ref[i]) << i;
}

TEST(WeightFormat, F32QuantisesToNearest) {
    std::mt19937 rng(5);
    const int64_t n = 32, k = 256;
    std::normal_distribution<float> normal(0.0f, 0.05f);
    std::vector<float> src(static_cast<size_t>(n * k));
    for (float& v : src) v = normal(rng);
    for (int i = 0; i < 32; ++i) src[static_cast<size_t>(32 + i)] = 0.25f;  // a constant group
    Result<W4Weights> w = w4_from_f32(src, n, k);
    ASSERT_TRUE(w.ok());
    const std::vector<float> got = w4_dequantize(*w);
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t g = 0; g < k / 32; ++g) {
            const float* x = src.data() + row * k + g * 32;
            const float lo = *std::min_element(x, x + 32);
            const uint16_t* sm = w->scale_min.data() + (row * (k / 32) + g) * 2;
            const float scale = fp16_to_fp32(sm[0]), min = fp16_to_fp32(sm[1]);
            // Half a step, plus the fp16 rounding of the min, plus the rounded step's drift at q = 15.
            const float bound = 0.5f * scale + std::fabs(min + lo) + 0.01f * scale + 1e-7f;
            for (int i = 0; i < 32; ++i) {
                ASSERT_LE(std::fabs(got[static_cast<size_t>(row * k + g * 32 + i)] - x[i]), bound)
                    << row << " " << g * 32 + i;
            }
        }
    }
    EXPECT_EQ(got[32], fp16_to_fp32(fp32_to_fp16(0.25f)));
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
