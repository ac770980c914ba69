// The W8 weight format and its CPU twins (ops/weight_format_w8.h): conversions from GGUF Q8_0
// (exact), Q5_K (two fp16 roundings, no worse than the naive forms, within 2^-11 (33/31) of the
// group's range), Q6_K and fp32 (symmetric requantisation within half a step, |q| <= 127), all
// measured against src/io's fp32 dequantisation; convert_for_engine's policy, its agreement
// with the single converters at every thread count; the W8A8 twin against the fp32 reference
// within the error of its int8 activations.
#include "ops/weight_format_w8.h"

#include <gtest/gtest.h>

#include <bit>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/half.h"
#include "io/dequantize.h"
#include "io/dequantize_blocks.h"

namespace kestrel {
namespace {

constexpr double kFp16HalfUlp = 1.0 / 2048.0;  // 2^-11
const double kFp32HalfUlp = std::ldexp(1.0, -24);

// Scale exponents of the random blocks: realistic (what quantisers write for weights of
// magnitude 1e-3..1) or extreme (subnormal fp16 up to values near fp16's range).
struct ScaleRange {
    int lo, hi;
};
constexpr ScaleRange kRealistic{-14, -8};
constexpr ScaleRange kExtreme{-24, 3};

void put_fp16(uint8_t* p, float v) {
    const uint16_t h = fp32_to_fp16(v);
    std::memcpy(p, &h, 2);
}

float random_scale(std::mt19937& rng, ScaleRange range) {
    std::uniform_real_distribution<float> mant(0.5f, 1.0f);
    std::uniform_int_distribution<int> expo(range.lo, range.hi);
    return std::ldexp(mant(rng), expo(rng));
}

// Random blocks of `type` for `n_elements`: random bytes with sane fp16 scales (ggml-common.h
// offsets of d / dmin), so every dequantised value is finite.
std::vector<uint8_t> random_blocks(DType type, int64_t n_elements, std::mt19937& rng,
                                   ScaleRange range = kRealistic) {
    const DTypeInfo& info = dtype_info(type);
    const int64_t blocks = n_elements / info.block_elements;
    std::vector<uint8_t> raw(static_cast<size_t>(blocks * info.block_bytes));
    std::uniform_int_distribution<int> byte(0, 255);
    for (uint8_t& b : raw) b = static_cast<uint8_t>(byte(rng));
    if (type == DType::kF32 || type == DType::kF16 || type == DType::kBF16) {
        std::normal_distribution<float> normal(0.0f, 0.05f);
        for (int64_t i = 0; i < n_elements; ++i) {
            const float v = normal(rng);
            uint8_t* p = raw.data() + i * info.block_bytes;
            if (type == DType::kF32) std::memcpy(p, &v, 4);
            if (type == DType::kF16) put_fp16(p, v);
            if (type == DType::kBF16) {
                const uint16_t b = fp32_to_bf16(v);
                std::memcpy(p, &b, 2);
            }
        }
        return raw;
    }
    for (int64_t b = 0; b < blocks; ++b) {
        uint8_t* block = raw.data() + b * info.block_bytes;
        switch (type) {
            case DType::kQ4_K:
            case DType::kQ5_K:
                put_fp16(block, random_scale(rng, range));
                put_fp16(block + 2, random_scale(rng, range));
                break;
            case DType::kQ6_K:
                put_fp16(block + 208, random_scale(rng, range));
                break;
            case DType::kIQ4_XS:  // d, then scales_h
            default:              // Q4_0, Q5_0, Q8_0, IQ4_NL: d first
                put_fp16(block, (b % 3 == 0 ? -1.0f : 1.0f) * random_scale(rng, range));
                break;
        }
    }
    return raw;
}

std::vector<float> dequantized(DType type, const std::vector<uint8_t>& raw, int64_t n_elements) {
    std::vector<float> out(static_cast<size_t>(n_elements));
    EXPECT_TRUE(dequantize(type, raw, n_elements, out.data()).ok());
    return out;
}

// The fp16 nearest to v (independent of the converter's).
uint16_t nearest_fp16(double v) {
    const uint16_t first = fp32_to_fp16(static_cast<float>(v));
    uint16_t best = first;
    for (int step : {-1, 1}) {
        const uint16_t candidate = static_cast<uint16_t>(first + step);
        if ((candidate & 0x7c00u) == 0x7c00u || ((candidate ^ first) & 0x8000u)) continue;
        if (std::fabs(fp16_to_fp32(candidate) - v) < std::fabs(fp16_to_fp32(best) - v))
            best = candidate;
    }
    return best;
}

// ---- Q8_0 ---------------------------------------------------------------------------------

// Stacking widens W4 parts to W8: the same codes, each group's exact fp32 (d sc, dmin m) rounded
// to fp16 (|Δw| <= 2^-11 (|scale q| + |min|) plus the final subtraction's rounding), at any
// thread count.
TEST(WeightFormatW8, W4WidensToW8WithinFp16RoundingOfScaleAndMin) {
    const int64_t n = 37, k = 96;
    std::vector<float> src(static_cast<size_t>(n * k));
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 0.05f);
    for (float& w : src) w = normal(rng);
    Result<W4Weights> w4 = w4_from_f32(src, n, k);
    ASSERT_TRUE(w4.ok()) << w4.status().message();
    const std::vector<float> expected = w4_dequantize(*w4);
    for (int threads : {1, 3}) {
        const W8Weights w8 = w8_from_w4(*w4, threads);
        ASSERT_EQ(w8.n, n);
        ASSERT_EQ(w8.k, k);
        const std::vector<float> widened = w8_dequantize(w8);
        ASSERT_EQ(widened.size(), expected.size());
        for (int64_t row = 0; row < n; ++row) {
            for (int64_t c = 0; c < k; ++c) {
                const size_t i = static_cast<size_t>(row * k + c);
                const W4GroupScale gs = w4_group_scale(*w4, row, c / 32);
                const int q = w4_q(*w4, row, c);
                ASSERT_EQ(w8.qs[i], q);
                const double terms = std::fabs(gs.scale * q) + std::fabs(gs.min);
                ASSERT_LE(std::fabs(static_cast<double>(widened[i]) - expected[i]),
                          std::ldexp(terms, -11) +
                              std::ldexp(std::fabs(static_cast<double>(expected[i])), -23))
                    << row << " " << c;
            }
        }
    }
}

TEST(WeightFormatW8, Q80ConvertsExactly) {
    std::mt19937 rng(1);
    const int64_t n = 24, k = 320;
    for (ScaleRange range : {kRealistic, kExtreme}) {
        const std::vector<uint8_t> raw = random_blocks(DType::kQ8_0, n * k, rng, range);
        const std::vector<float> ref = dequantized(DType::kQ8_0, raw, n * k);
        Result<W8Weights> w = w8_from_q8_0(raw, n, k, 3);
        ASSERT_TRUE(w.ok()) << w.status().message();
        const std::vector<float> got = w8_dequantize(*w);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], ref[i]) << i;
    }
    std::vector<uint8_t> bad = random_blocks(DType::kQ8_0, n * k, rng);
    const uint16_t inf = 0x7c00;
    std::memcpy(bad.data() + 34 * 17, &inf, 2);
    const Result<W8Weights> w = w8_from_q8_0(bad, n, k);
    EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(w.status().message().find("row 1 block 7"), std::string::npos)
        << w.status().message();
    EXPECT_EQ(w8_from_q8_0(bad, n, k - 32).status().code(), StatusCode::kInvalidArgument);
}

// ---- Q5_K ---------------------------------------------------------------------------------

struct Q5kStats {
    double worst_of_range = 0.0;  // max over groups of max |Δw| / R
    double gain_sum = 0.0;        // Σ over groups of err(ours) / err(c = 0), where err(c = 0) > 0
    int64_t gain_groups = 0;
};

// Checks one random Q5_K tensor: per group, the worst error of the stored values (exact
// arithmetic, in double) within 2^-11 max (|a| |q5 - 16| + |b - 16 a|) and 2^-11 (33/31) R, and
// no worse than the forms c = 0 and c = 16 with min rounded to nearest; per weight, the fp32
// result within fp32 rounding of that exact error.
void check_q5_k(const std::vector<uint8_t>& raw, int64_t n, int64_t k, Q5kStats& stats) {
    const std::vector<float> ref = dequantized(DType::kQ5_K, raw, n * k);
    Result<W8Weights> w = w8_from_q5_k(raw, n, k, 2);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const std::vector<float> got = w8_dequantize(*w);
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t g = 0; g < k / 32; ++g) {
            const uint8_t* block = raw.data() + (row * (k / 256) + g / 8) * 176;
            const int j = static_cast<int>(g % 8);
            const float d = fp16_to_fp32(load_le<uint16_t>(block));
            const float dmin = fp16_to_fp32(load_le<uint16_t>(block + 2));
            const dequant::ScaleMin sm = dequant::k4_scale_min(block + 4, j);
            const double a = static_cast<double>(d) * sm.scale;
            const double b = static_cast<double>(dmin) * sm.min;
            const uint16_t* stored = w->scale_min.data() + (row * (k / 32) + g) * 2;
            ASSERT_EQ(stored[0], fp32_to_fp16(static_cast<float>(a)));
            const double scale = fp16_to_fp32(stored[0]), min = fp16_to_fp32(stored[1]);
            const uint16_t naive_min0 = fp32_to_fp16(static_cast<float>(b));  // b exact in fp32
            const uint16_t naive_min16 = nearest_fp16(b - 16 * a);
            int c = -1;
            double group_err = 0.0, err0 = 0.0, err16 = 0.0, bound16 = 0.0;
            for (int l = 0; l < 32; ++l) {
                const int q5 = ((block[48 + 32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F) |
                               (((block[16 + l] >> j) & 1) << 4);
                const size_t idx = static_cast<size_t>(row * k + g * 32 + l);
                const int q8 = w->qs[idx];
                if (c < 0) c = q5 - q8;
                ASSERT_EQ(q5 - q8, c) << "one offset per group";
                ASSERT_GE(c, 0);
                ASSERT_LE(c, 31);
                const double exact = a * q5 - b;
                const double err = std::fabs(scale * q8 - min - exact);  // exact in double
                bound16 = std::max(bound16, kFp16HalfUlp * (std::fabs(a) * std::abs(q5 - 16) +
                                                            std::fabs(b - 16 * a)));
                ASSERT_LE(std::fabs(static_cast<double>(got[idx]) - ref[idx]),
                          err + kFp32HalfUlp * (std::fabs(got[idx]) + std::fabs(ref[idx])))
                    << "row " << row << " col " << g * 32 + l;
                group_err = std::max(group_err, err);
                err0 = std::max(err0, std::fabs(scale * q5 - fp16_to_fp32(naive_min0) - exact));
                err16 = std::max(err16,
                                 std::fabs(scale * (q5 - 16) - fp16_to_fp32(naive_min16) - exact));
            }
            const double range = std::max(std::fabs(b), std::fabs(31 * a - b));
            ASSERT_LE(group_err, bound16) << "row " << row << " group " << g;
            ASSERT_LE(group_err, kFp16HalfUlp * 33.0 / 31.0 * range)
                << "row " << row << " group " << g;
            ASSERT_LE(group_err, std::min(err0, err16)) << "row " << row << " group " << g;
            if (range > 0) stats.worst_of_range = std::max(stats.worst_of_range, group_err / range);
            if (err0 > 0) {
                stats.gain_sum += group_err / err0;
                ++stats.gain_groups;
            }
        }
    }
}

TEST(WeightFormatW8, Q5KWithinBoundAndBetterThanNaiveForms) {
    std::mt19937 rng(55);
    for (ScaleRange range : {kRealistic, kExtreme}) {
        Q5kStats stats;
        for (int rep = 0; rep < 4; ++rep) {
            const int64_t n = 16, k = 1024;
            const std::vector<uint8_t> raw = random_blocks(DType::kQ5_K, n * k, rng, range);
            check_q5_k(raw, n, k, stats);
            if (HasFatalFailure()) return;
        }
        std::printf(
            "Q5_K -> W8 (%s scales): max |dw| / R = %.3e (bound 2^-11 * 33/31 = %.3e), "
            "mean error vs the c = 0 form = %.3f\n",
            range.lo == kRealistic.lo ? "realistic" : "extreme", stats.worst_of_range,
            kFp16HalfUlp * 33.0 / 31.0, stats.gain_sum / std::max<int64_t>(1, stats.gain_groups));
    }
}

TEST(WeightFormatW8, Q5KIsExactWhenScalesFitFp16AndRejectsOverflow) {
    std::mt19937 rng(8);
    const int64_t n = 4, k = 512;
    std::vector<uint8_t> raw = random_blocks(DType::kQ5_K, n * k, rng);
    for (int64_t b = 0; b < n * k / 256;
         ++b) {  // powers of two: d sc, dmin m and b - c a fit in fp16
        put_fp16(raw.data() + b * 176, std::ldexp(1.0f, -12 - static_cast<int>(b % 3)));
        put_fp16(raw.data() + b * 176 + 2, std::ldexp(1.0f, -11 - static_cast<int>(b % 2)));
    }
    const std::vector<float> ref = dequantized(DType::kQ5_K, raw, n * k);
    Result<W8Weights> w = w8_from_q5_k(raw, n, k);
    ASSERT_TRUE(w.ok());
    const std::vector<float> got = w8_dequantize(*w);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], ref[i]) << i;

    put_fp16(raw.data() + 176, 60000.0f);  // block 1: d sc overflows fp16 unless sc == 0
    std::memset(raw.data() + 176 + 4, 0xff, 12);
    const Result<W8Weights> bad = w8_from_q5_k(raw, n, k);
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bad.status().message().find("row 0 block 1"), std::string::npos)
        << bad.status().message();
}

// ---- symmetric requantisation (Q6_K, fp32) --------------------------------------------------

// Per group: |q| <= 127, min == 0, |Δw| <= (1/2 + 2^-17) scale, and the scale within its stated
// bound of amax / 127. Returns max |Δw| / amax.
double check_symmetric(const W8Weights& w, const std::vector<float>& ref) {
    const std::vector<float> got = w8_dequantize(w);
    double worst = 0.0;
    for (int64_t row = 0; row < w.n; ++row) {
        for (int64_t g = 0; g < w.groups(); ++g) {
            const uint16_t* sm = w.scale_min.data() + (row * w.groups() + g) * 2;
            EXPECT_EQ(sm[1], 0);
            const double scale = fp16_to_fp32(sm[0]);
            double amax = 0.0, err = 0.0;
            for (int i = 0; i < 32; ++i) {
                const size_t idx = static_cast<size_t>(row * w.k + g * 32 + i);
                EXPECT_GE(w.qs[idx], -127);
                amax = std::max(amax, std::fabs(static_cast<double>(ref[idx])));
                err = std::max(err, std::fabs(static_cast<double>(got[idx]) - ref[idx]));
            }
            const double scale_bound = amax >= 127 * std::ldexp(1.0, -14)
                                           ? (1 + std::ldexp(1.0, -10)) * amax / 127
                                           : amax / 127 + std::ldexp(1.0, -24);
            EXPECT_LE(scale, scale_bound) << "row " << row << " group " << g << " amax " << amax;
            EXPECT_LE(err, (0.5 + std::ldexp(1.0, -17)) * scale) << "row " << row << " group " << g;
            if (amax > 0) worst = std::max(worst, err / amax);
        }
    }
    return worst;
}

TEST(WeightFormatW8, Q6KRequantisesWithinHalfAStep) {
    std::mt19937 rng(66);
    for (ScaleRange range : {kRealistic, kExtreme}) {
        const int64_t n = 32, k = 1024;
        const std::vector<uint8_t> raw = random_blocks(DType::kQ6_K, n * k, rng, range);
        const std::vector<float> ref = dequantized(DType::kQ6_K, raw, n * k);
        Result<W8Weights> w = w8_from_q6_k(raw, n, k, 3);
        ASSERT_TRUE(w.ok()) << w.status().message();
        const double worst = check_symmetric(*w, ref);
        // Per group checked against (1/2 + 2^-17) scale; relative to amax that is ~1/254 while
        // the scale is a normal fp16, more for groups whose amax / 127 is below 2^-14.
        std::printf("Q6_K -> W8 (%s scales): max |dw| / amax per group = %.4e (1/254 = %.4e)\n",
                    range.lo == kRealistic.lo ? "realistic" : "extreme", worst, 1.0 / 254);
    }
}

TEST(WeightFormatW8, F32SymmetricEdgeCases) {
    std::mt19937 rng(5);
    const int64_t n = 8, k = 256;
    std::normal_distribution<float> normal(0.0f, 0.05f);
    std::vector<float> src(static_cast<size_t>(n * k));
    for (float& v : src) v = normal(rng);
    for (int i = 0; i < 32; ++i) src[static_cast<size_t>(32 + i)] = 0.0f;    // zero group
    for (int i = 0; i < 32; ++i) src[static_cast<size_t>(64 + i)] = -0.25f;  // constant
    // On the grid of scale 2^-10 (amax = 127 * 2^-10): stored exactly.
    for (int i = 0; i < 32; ++i)
        src[static_cast<size_t>(96 + i)] = std::ldexp(static_cast<float>(4 * (i - 16)), -10);
    src[96 + 31] = std::ldexp(127.0f, -10);
    // amax / 127 = 1.4 * 2^-24 rounds down to the smallest subnormal: the scale must step up.
    for (int i = 0; i < 32; ++i)
        src[static_cast<size_t>(128 + i)] =
            127 * 1.4f * std::ldexp(1.0f, -24) * (i % 2 ? 1 : -1) * (i / 31.0f);
    src[128 + 31] = 127 * 1.4f * std::ldexp(1.0f, -24);
    for (int i = 0; i < 32; ++i)
        src[static_cast<size_t>(160 + i)] = 1e-30f * static_cast<float>(i);  // below every step
    Result<W8Weights> w = w8_from_f32(src, n, k, 2);
    ASSERT_TRUE(w.ok()) << w.status().message();
    (void)check_symmetric(*w, src);  // (max |dw| / amax is 1 here: the 1e-30 group stores zeros)
    const std::vector<float> got = w8_dequantize(*w);
    EXPECT_EQ(w->scale_min[2], 0);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(got[static_cast<size_t>(32 + i)], 0.0f);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(w->qs[static_cast<size_t>(64 + i)], -127);
    for (int i = 0; i < 32; ++i)
        EXPECT_EQ(got[static_cast<size_t>(96 + i)], src[static_cast<size_t>(96 + i)]) << i;
    EXPECT_EQ(w->scale_min[8], 2) << "1.4 * 2^-24 rounds to 2^-24, stepped up to 2 * 2^-24";
    EXPECT_EQ(w->scale_min[10], 1) << "a tiny group gets the smallest scale";

    std::vector<float> bad(src);
    bad[300] = std::numeric_limits<float>::quiet_NaN();
    Result<W8Weights> nan = w8_from_f32(bad, n, k);
    EXPECT_EQ(nan.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(nan.status().message().find("[1, 44]"), std::string::npos) << nan.status().message();
    bad = src;
    bad[5] = 1e7f;  // amax / 127 > 65504
    EXPECT_EQ(w8_from_f32(bad, n, k).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(w8_from_f32(src, n, k - 32).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(w8_from_f32(std::span<const float>(src.data(), 48), 1, 48).status().code(),
              StatusCode::kInvalidArgument);
}

// ---- convert_for_engine --------------------------------------------------------------------

void expect_same(const W4Weights& a, const W4Weights& b) {
    EXPECT_EQ(a.n, b.n);
    EXPECT_EQ(a.k, b.k);
    EXPECT_TRUE(a.qs == b.qs);
    EXPECT_TRUE(a.group_scales == b.group_scales);
    EXPECT_TRUE(a.super_scales == b.super_scales);
}

void expect_same(const W8Weights& a, const W8Weights& b) {
    EXPECT_EQ(a.n, b.n);
    EXPECT_EQ(a.k, b.k);
    EXPECT_TRUE(a.qs == b.qs);
    EXPECT_TRUE(a.scale_min == b.scale_min);
}

// k = 8192: 32 rows per fp32 staging step, so 40 rows over 3 threads cross a step boundary.
TEST(WeightFormatW8, ConvertForEngineFollowsThePolicy) {
    std::mt19937 rng(77);
    const int64_t n = 40, k = 8192;
    const EngineWeightFormat formats[] = {EngineWeightFormat::kW4, EngineWeightFormat::kW8,
                                          EngineWeightFormat::kBf16};
    const DType types[] = {DType::kQ4_K, DType::kQ4_0, DType::kQ5_K, DType::kQ6_K, DType::kQ8_0,
                           DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ5_0, DType::kIQ4_XS};
    for (DType type : types) {
        const std::vector<uint8_t> raw = random_blocks(type, n * k, rng);
        const std::vector<float> values = dequantized(type, raw, n * k);
        for (EngineWeightFormat preferred : formats) {
            SCOPED_TRACE(std::string(dtype_name(type)) + " preferred " +
                         std::to_string(static_cast<int>(preferred)));
            Result<EngineWeights> got = convert_for_engine(type, raw, n, k, preferred, 3);
            ASSERT_TRUE(got.ok()) << got.status().message();
            Result<EngineWeights> one_thread = convert_for_engine(type, raw, n, k, preferred, 1);
            ASSERT_TRUE(one_thread.ok());
            const bool w4_source = type == DType::kQ4_K || type == DType::kQ4_0;
            const bool w8_source =
                type == DType::kQ5_K || type == DType::kQ6_K || type == DType::kQ8_0;
            EngineWeightFormat expected = preferred;
            if (w4_source) expected = EngineWeightFormat::kW4;
            if (w8_source)
                expected = preferred == EngineWeightFormat::kW4 ? EngineWeightFormat::kW4
                                                                : EngineWeightFormat::kW8;
            ASSERT_EQ(engine_format_of(*got), expected);
            ASSERT_EQ(engine_format_of(*one_thread), expected);
            if (expected == EngineWeightFormat::kW4) {
                Result<W4Weights> want = type == DType::kQ4_K   ? w4_from_q4_k(raw, n, k)
                                         : type == DType::kQ4_0 ? w4_from_q4_0(raw, n, k)
                                                                : w4_from_f32(values, n, k);
                ASSERT_TRUE(want.ok());
                expect_same(std::get<W4Weights>(*got), *want);
                expect_same(std::get<W4Weights>(*one_thread), *want);
            } else if (expected == EngineWeightFormat::kW8) {
                Result<W8Weights> want = type == DType::kQ5_K   ? w8_from_q5_k(raw, n, k, 1)
                                         : type == DType::kQ6_K ? w8_from_q6_k(raw, n, k, 1)
                                         : type == DType::kQ8_0 ? w8_from_q8_0(raw, n, k, 1)
                                                                : w8_from_f32(values, n, k, 1);
                ASSERT_TRUE(want.ok());
                expect_same(std::get<W8Weights>(*got), *want);
                expect_same(std::get<W8Weights>(*one_thread), *want);
            } else {
                const Bf16Weights& b = std::get<Bf16Weights>(*got);
                ASSERT_EQ(b.n, n);
                ASSERT_EQ(b.k, k);
                for (size_t i = 0; i < values.size(); ++i)
                    ASSERT_EQ(b.values[i], fp32_to_bf16(values[i])) << i;
                EXPECT_TRUE(std::get<Bf16Weights>(*one_thread).values == b.values);
            }
        }
    }
}

TEST(WeightFormatW8, ConvertForEngineRejectsBadInput) {
    std::mt19937 rng(3);
    const std::vector<uint8_t> f32 = random_blocks(DType::kF32, 2 * 48, rng);
    Result<EngineWeights> r =
        convert_for_engine(DType::kF32, f32, 2, 48, EngineWeightFormat::kBf16);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("[2, 48]"), std::string::npos) << r.status().message();
    const std::vector<uint8_t> q5 = random_blocks(DType::kQ5_K, 4 * 256, rng);
    EXPECT_EQ(convert_for_engine(DType::kQ5_K, q5, 4, 255, EngineWeightFormat::kW8).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(convert_for_engine(DType::kQ5_K, std::span<const uint8_t>(q5).first(q5.size() - 1), 4,
                                 256, EngineWeightFormat::kW8)
                  .status()
                  .code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(convert_for_engine(DType::kIQ2_XXS, std::vector<uint8_t>(66), 1, 256,
                                 EngineWeightFormat::kW8)
                  .status()
                  .code(),
              StatusCode::kUnsupported);

    // A NaN at [50, 40]: the same message for every thread count.
    const int64_t n = 64, k = 8192;
    std::vector<uint8_t> raw = random_blocks(DType::kF32, n * k, rng);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(raw.data() + (50 * k + 40) * 4, &nan, 4);
    std::memcpy(raw.data() + (60 * k + 7) * 4, &nan, 4);
    for (EngineWeightFormat preferred : {EngineWeightFormat::kW4, EngineWeightFormat::kW8}) {
        const Result<EngineWeights> one = convert_for_engine(DType::kF32, raw, n, k, preferred, 1);
        const Result<EngineWeights> many = convert_for_engine(DType::kF32, raw, n, k, preferred, 5);
        EXPECT_EQ(one.status().code(), StatusCode::kInvalidArgument);
        EXPECT_EQ(one.status().message(), many.status().message());
        std::printf("%s\n", one.status().message().c_str());
    }
}

// Load-time cost (no assertion: printed for the record).
TEST(WeightFormatW8, ConversionThroughput) {
    std::mt19937 rng(9);
    const int64_t n = 256, k = 5376;
    for (DType type : {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K, DType::kQ8_0, DType::kBF16}) {
        const std::vector<uint8_t> raw = random_blocks(type, n * k, rng);
        const auto start = std::chrono::steady_clock::now();
        const Result<EngineWeights> w =
            convert_for_engine(type, raw, n, k, EngineWeightFormat::kW8, 0);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        ASSERT_TRUE(w.ok()) << w.status().message();
        std::printf("convert_for_engine %-5s -> W8 preference, %lld x %lld: %.1f M weights/s\n",
                    std::string(dtype_name(type)).c_str(), static_cast<long long>(n),
                    static_cast<long long>(k), static_cast<double>(n * k) / seconds / 1e6);
    }
}

// ---- W8A8 twin ------------------------------------------------------------------------------

// The twin against the fp32 W8 reference: the difference is the activations' int8 rounding,
// |Σ_k w (x - d q)| <= Σ_k |w| |x - d q|, plus fp32 accumulation error; and against the
// same sum in double from the integer dots (accumulation order only).
TEST(WeightFormatW8, W8A8TwinMatchesFp32ReferenceWithinInt8Budget) {
    std::mt19937 rng(21);
    const int64_t n = 40, k = 1024, m_rows = 3, groups = k / 32;
    std::vector<uint8_t> raw =
        random_blocks(DType::kQ5_K, n * k, rng);  // asymmetric groups (min != 0)
    Result<W8Weights> w = w8_from_q5_k(raw, n, k);
    ASSERT_TRUE(w.ok());
    std::normal_distribution<float> act(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(m_rows * k));
    for (float& v : x) v = act(rng);
    x[5] = 40.0f;  // an outlier coarsens its block's step
    std::vector<Q8Block> a(static_cast<size_t>(m_rows * groups));
    for (int64_t m = 0; m < m_rows; ++m)
        quantize_q8_row(x.data() + m * k, k, a.data() + m * groups);
    std::vector<float> ref(static_cast<size_t>(m_rows * n)), twin(ref.size()), mag(ref.size());
    matvec_w8_f32(*w, x.data(), m_rows, ref.data());
    matvec_w8a8(*w, a.data(), m_rows, twin.data(), mag.data());
    const std::vector<float> wd = w8_dequantize(*w);
    double worst = 0.0, num = 0.0, den = 0.0;
    for (int64_t m = 0; m < m_rows; ++m) {
        for (int64_t row = 0; row < n; ++row) {
            const size_t i = static_cast<size_t>(m * n + row);
            double budget = 0.0, exact = 0.0;
            for (int64_t g = 0; g < groups; ++g) {
                const Q8Block& blk = a[static_cast<size_t>(m * groups + g)];
                const uint16_t* sm = w->scale_min.data() + (row * groups + g) * 2;
                int64_t dot = 0;
                for (int64_t c = g * 32; c < g * 32 + 32; ++c) {
                    const double xq = static_cast<double>(blk.d) * blk.qs[c % 32];
                    budget += std::fabs(wd[static_cast<size_t>(row * k + c)]) *
                              std::fabs(x[static_cast<size_t>(m * k + c)] - xq);
                    dot += static_cast<int64_t>(w->qs[static_cast<size_t>(row * k + c)]) *
                           blk.qs[c % 32];
                }
                exact += static_cast<double>(blk.d) *
                         (fp16_to_fp32(sm[0]) * static_cast<double>(dot) -
                          fp16_to_fp32(sm[1]) * static_cast<double>(blk.sum));
            }
            const double order_tol = (groups + 8) * kFp32HalfUlp * mag[i];
            ASSERT_LE(std::fabs(twin[i] - exact), order_tol) << "m " << m << " row " << row;
            const double tol = budget + order_tol;
            const double err = std::fabs(static_cast<double>(twin[i]) - ref[i]);
            ASSERT_LE(err, tol) << "m " << m << " row " << row;
            worst = std::max(worst, err / tol);
            num += err * err;
            den += static_cast<double>(ref[i]) * ref[i];
        }
    }
    std::printf("W8A8 twin vs fp32 W8: ||err|| / ||ref|| = %.3e, max err / int8 budget = %.3f\n",
                std::sqrt(num / den), worst);
}

}  // namespace
}  // namespace kestrel
