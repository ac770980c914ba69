#include "ops/weight_format_w8.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "core/half.h"
#include "io/dequantize.h"
#include "io/dequantize_blocks.h"  // q6_k blocks and the Q5_K scale packing (k4_scale_min), one place
#include "ops/cpu/parallel.h"

namespace kestrel {
namespace {

// fp32 staging per step of rows in the conversions that dequantise first: ~1 MiB.
constexpr int64_t kStagingElements = int64_t{1} << 18;

std::string shape_text(int64_t n, int64_t k) {
    std::string text =
        "[";  // appended piecewise: "literal" + std::string trips gcc 12's -Wrestrict
    text += std::to_string(n);
    text += ", ";
    text += std::to_string(k);
    text += "]";
    return text;
}

Status check_shape(const char* what, int64_t n, int64_t k, int64_t k_multiple) {
    if (n <= 0 || k <= 0 || k % k_multiple != 0 || n > std::numeric_limits<int64_t>::max() / k) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": shape " + shape_text(n, k) +
                          " needs n > 0 and k a positive multiple of " +
                          std::to_string(k_multiple));
    }
    return ok_status();
}

// A GGUF tensor [n, k] of `type`: k a multiple of 32 and of the type's block, exactly its bytes.
Status check_source(const char* what, DType type, std::span<const uint8_t> src, int64_t n,
                    int64_t k) {
    const int64_t block = dtype_info(type).block_elements;
    KESTREL_RETURN_IF_ERROR(check_shape(what, n, k, std::max<int64_t>(kW8Group, block)));
    const std::optional<int64_t> bytes = dtype_bytes(type, n * k);
    if (!bytes || static_cast<int64_t>(src.size()) != *bytes) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": " + std::string(dtype_name(type)) + " " +
                          shape_text(n, k) + " has " + std::to_string(src.size()) +
                          " bytes, expected " + std::to_string(bytes.value_or(-1)));
    }
    return ok_status();
}

int64_t row_bytes(DType type, int64_t k) {
    return k / dtype_info(type).block_elements * dtype_info(type).block_bytes;
}

bool fp16_finite(uint16_t h) {
    return (h & 0x7c00u) != 0x7c00u;
}

W8Weights make_w8(int64_t n, int64_t k) {
    W8Weights w;
    w.n = n;
    w.k = k;
    w.qs.assign(static_cast<size_t>(n * k), 0);
    w.scale_min.assign(static_cast<size_t>(n * (k / kW8Group) * 2), 0);
    return w;
}

// Runs convert(begin, end) over disjoint row ranges on up to `threads` threads. Each range
// stops at its first error; the lowest range's error is returned, which is the first failing
// row's whatever the thread count.
Status for_row_ranges(int64_t n, int threads, int64_t cost_per_row,
                      const std::function<Status(int64_t begin, int64_t end)>& convert) {
    std::mutex mutex;
    int64_t first_begin = std::numeric_limits<int64_t>::max();
    Status first;
    cpu::parallel_for(n, cpu::resolve_threads(threads), cost_per_row,
                      [&](int64_t begin, int64_t end) {
                          Status status = convert(begin, end);
                          if (status.ok()) return;
                          const std::lock_guard<std::mutex> lock(mutex);
                          if (begin < first_begin) {
                              first_begin = begin;
                              first = std::move(status);
                          }
                      });
    return first;
}

// Splits [begin, end) into steps of at most `step` rows (aligned to multiples of `step`): the
// fp32 staging of one step stays small whatever the range.
Status for_row_steps(int64_t begin, int64_t end, int64_t step,
                     const std::function<Status(int64_t begin, int64_t end)>& convert) {
    for (int64_t r0 = begin; r0 < end;) {
        const int64_t r1 = std::min(end, (r0 / step + 1) * step);
        KESTREL_RETURN_IF_ERROR(convert(r0, r1));
        r0 = r1;
    }
    return ok_status();
}

int64_t staging_rows(int64_t k) {
    return std::max<int64_t>(1, kStagingElements / k);
}

enum class GroupResult { kOk, kNotFinite, kScaleOverflow };

// Round to nearest even for |v| <= 2^22, as std::nearbyint in the default rounding mode, without
// its library call: adding 1.5 * 2^23 leaves no fraction bits, the fp32 addition rounds.
inline float round_to_nearest_even(float v) {
    return (v + 12582912.0f) - 12582912.0f;
}

// Symmetric int8 quantisation of 32 values (w8_from_f32's contract): scale_min[0] = scale,
// scale_min[1] = 0.
GroupResult quantize_group_symmetric(const float* x, int8_t* q, uint16_t* scale_min) {
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < kW8Group; ++i) {
        const float magnitude = std::fabs(x[i]);
        finite = finite && magnitude <= std::numeric_limits<float>::max();  // false for NaN and inf
        amax = magnitude > amax ? magnitude : amax;
    }
    if (!finite) return GroupResult::kNotFinite;
    scale_min[1] = 0;
    if (amax == 0.0f) {
        scale_min[0] = 0;
        std::fill(q, q + kW8Group, int8_t{0});
        return GroupResult::kOk;
    }
    // fp16 rounding can lower the scale (by <= 2^-11 relative in the normal range, so
    // amax / scale <= 127.07 rounds to 127) or, for subnormals, to a coarse step or zero;
    // one ulp up then suffices. Positive fp16 bit patterns count up with their values.
    uint16_t scale_bits = fp32_to_fp16(amax / 127.0f);
    while (scale_bits < 0x7c00u &&
           (scale_bits == 0 || round_to_nearest_even(amax / fp16_to_fp32(scale_bits)) > 127.0f)) {
        ++scale_bits;
    }
    if (scale_bits >= 0x7c00u) return GroupResult::kScaleOverflow;
    const float scale = fp16_to_fp32(scale_bits);
    // |x| / scale <= amax / scale < 127.5: no clamp needed.
    for (int i = 0; i < kW8Group; ++i)
        q[i] = static_cast<int8_t>(round_to_nearest_even(x[i] / scale));
    scale_min[0] = scale_bits;
    return GroupResult::kOk;
}

// Quantises rows [row0, row0 + rows) of w from fp32 values x [rows, k].
Status quantize_rows_symmetric(const char* what, const float* x, int64_t row0, int64_t rows,
                               W8Weights& w) {
    const int64_t groups = w.groups();
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        for (int64_t g = 0; g < groups; ++g) {
            const float* values = x + r * w.k + g * kW8Group;
            const GroupResult result =
                quantize_group_symmetric(values, w.qs.data() + row * w.k + g * kW8Group,
                                         w.scale_min.data() + (row * groups + g) * 2);
            if (result == GroupResult::kNotFinite) {
                const int64_t i = std::find_if(values, values + kW8Group,
                                               [](float v) { return !std::isfinite(v); }) -
                                  values;
                return Status(StatusCode::kInvalidArgument,
                              std::string(what) + ": weight [" + std::to_string(row) + ", " +
                                  std::to_string(g * kW8Group + i) + "] of " +
                                  shape_text(w.n, w.k) + " is not finite");
            }
            if (result == GroupResult::kScaleOverflow) {
                return Status(StatusCode::kInvalidArgument,
                              std::string(what) + ": group " + std::to_string(g) + " of row " +
                                  std::to_string(row) + " of " + shape_text(w.n, w.k) +
                                  ": amax / 127 exceeds fp16");
            }
        }
    }
    return ok_status();
}

// One Q5_K sub-block as W8: q = q5 - c, scale = fp16(a), min = b - c a in fp16 (header).
struct Q5kForm {
    int c = 0;
    uint16_t scale = 0;
    uint16_t min = 0;
};

// The value of a finite fp16 magnitude (bits 0..0x7bff) in double, without fp16_to_fp32's
// branches: subnormals m 2^-24, normals (1024 + fraction) 2^(exponent - 25).
double fp16_magnitude_value(int bits) {
    static constexpr auto kPowers = [] {
        std::array<double, 32> powers{};  // [exponent] = 2^(exponent - 25); subnormals 2^-24
        powers[0] = 1.0 / 16777216.0;
        for (size_t e = 1; e < powers.size(); ++e)
            powers[e] = e == 1 ? powers[0] : 2.0 * powers[e - 1];
        return powers;
    }();
    const int exponent = bits >> 10;
    const int significand = exponent == 0 ? bits : 1024 + (bits & 0x3ff);
    return significand * kPowers[static_cast<size_t>(exponent)];
}

// The candidate with the smallest worst error over q5 in [q_lo, q_hi]: per weight the error
// is σ_s (q5 - c) - σ_m (σ = stored - exact, all exact in double: a, b and c a are multiples
// of 2^-24 below 2^47), linear in q5, so its worst is at q_lo or q_hi. For each c both fp16
// neighbours of b - c a are tried (the farther one can cancel σ_s better), so the choice is
// never worse than nearest rounding.
std::optional<Q5kForm> choose_q5_k_form(float a, float b, int q_lo, int q_hi) {
    const uint16_t scale = fp32_to_fp16(a);  // a is exact in fp32: one rounding
    if (!fp16_finite(scale)) return std::nullopt;
    const double scale_error = static_cast<double>(fp16_to_fp32(scale)) - a;
    const double ratio = a != 0.0f ? std::clamp(static_cast<double>(b) / a, 0.0, 31.0) : 0.0;
    const int candidates[] = {16,
                              0,
                              (q_lo + q_hi) / 2,
                              (q_lo + q_hi + 1) / 2,
                              static_cast<int>(std::floor(ratio)),
                              static_cast<int>(std::ceil(ratio))};
    uint32_t tried = 0;
    std::optional<Q5kForm> best;
    double best_error = std::numeric_limits<double>::infinity();
    for (int c : candidates) {
        if (tried & (1u << c)) continue;
        tried |= 1u << c;
        const double min_exact = static_cast<double>(b) - c * static_cast<double>(a);
        if (std::fabs(min_exact) >= 65520.0) continue;  // rounds to infinity in fp16
        // float(min_exact) then fp16 lands within one fp16 step of min_exact: its neighbours
        // (same sign) include both roundings.
        const uint16_t near = fp32_to_fp16(static_cast<float>(min_exact));
        const int magnitude = near & 0x7fff;
        const double sign = (near & 0x8000) ? -1.0 : 1.0;
        for (int m = std::max(0, magnitude - 1); m <= std::min(0x7bff, magnitude + 1); ++m) {
            const uint16_t min = static_cast<uint16_t>((near & 0x8000) | m);
            const double min_error = sign * fp16_magnitude_value(m) - min_exact;
            const double error = std::max(std::fabs(scale_error * (q_lo - c) - min_error),
                                          std::fabs(scale_error * (q_hi - c) - min_error));
            if (error < best_error) {
                best_error = error;
                best = Q5kForm{c, scale, min};
            }
        }
    }
    return best;
}

// block_q5_K (io/dequantize_kquants.cpp): d fp16 [0,2), dmin fp16 [2,4), scales [4,16),
// qh [16,48) (bit j of byte l = bit 4 of weight 32j + l), qs [48,176) as Q4_K's.
Status convert_q5_k_rows(std::span<const uint8_t> src, int64_t begin, int64_t end, W8Weights& w) {
    const int64_t blocks_per_row = w.k / 256;
    const int64_t block_bytes = dtype_info(DType::kQ5_K).block_bytes;
    int q5[32];
    for (int64_t row = begin; row < end; ++row) {
        for (int64_t b = 0; b < blocks_per_row; ++b) {
            const uint8_t* block = src.data() + (row * blocks_per_row + b) * block_bytes;
            const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
            const float dmin = fp16_to_fp32(load_le<uint16_t>(block + 2));
            const uint8_t* scales = block + 4;
            const uint8_t* qh = block + 16;
            const uint8_t* qs = block + 48;
            for (int j = 0; j < 8; ++j) {
                const auto [sc, m] = dequant::k4_scale_min(scales, j);
                const uint8_t* low = qs + 32 * (j / 2);
                const int shift = 4 * (j % 2);
                int q_lo = 31, q_hi = 0;
                for (int l = 0; l < 32; ++l) {
                    q5[l] = ((low[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
                    q_lo = std::min(q_lo, q5[l]);
                    q_hi = std::max(q_hi, q5[l]);
                }
                // d sc and dmin m are exact in fp32 (11-bit by 6-bit products).
                const std::optional<Q5kForm> form =
                    std::isfinite(d) && std::isfinite(dmin)
                        ? choose_q5_k_form(d * static_cast<float>(sc), dmin * static_cast<float>(m),
                                           q_lo, q_hi)
                        : std::nullopt;
                if (!form) {
                    return Status(StatusCode::kInvalidArgument,
                                  "w8_from_q5_k: row " + std::to_string(row) + " block " +
                                      std::to_string(b) + " of " + shape_text(w.n, w.k) +
                                      ": d sc or dmin m - c d sc is not a finite fp16");
                }
                const int64_t g = b * 8 + j;
                int8_t* dst = w.qs.data() + row * w.k + g * kW8Group;
                for (int l = 0; l < 32; ++l) dst[l] = static_cast<int8_t>(q5[l] - form->c);
                w.scale_min[static_cast<size_t>((row * w.groups() + g) * 2)] = form->scale;
                w.scale_min[static_cast<size_t>((row * w.groups() + g) * 2 + 1)] = form->min;
            }
        }
    }
    return ok_status();
}

// Rows [row0, row0 + rows) of a GGUF tensor dequantised into `out` [rows, k].
Status dequantize_rows(DType type, std::span<const uint8_t> raw, int64_t k, int64_t row0,
                       int64_t rows, float* out) {
    const int64_t bytes = row_bytes(type, k);
    return dequantize(
        type, raw.subspan(static_cast<size_t>(row0 * bytes), static_cast<size_t>(rows * bytes)),
        rows * k, out);
}

void place_w4_rows(const W4Weights& part, int64_t row0, W4Weights& whole) {
    std::copy(part.qs.begin(), part.qs.end(), whole.qs.begin() + row0 * (whole.k / 2));
    std::copy(part.group_scales.begin(), part.group_scales.end(),
              whole.group_scales.begin() + row0 * whole.groups());
    std::copy(part.super_scales.begin(), part.super_scales.end(),
              whole.super_scales.begin() + row0 * whole.supers() * 2);
}

Status with_rows(Status status, DType type, int64_t r0, int64_t r1, int64_t n, int64_t k) {
    if (status.ok()) return status;
    return Status(status.code(), "convert_for_engine: rows [" + std::to_string(r0) + ", " +
                                     std::to_string(r1) + ") of " + std::string(dtype_name(type)) +
                                     " " + shape_text(n, k) + ": " + status.message());
}

using W4Converter = std::function<Result<W4Weights>(int64_t begin, int64_t end)>;

// Rows [r0, r1) through one of weight_format.cpp's W4 converters, placed into `whole`. On
// failure the first failing row is found by one-row conversions, so the message names the
// same row whatever the split across threads.
Status convert_w4_step(int64_t r0, int64_t r1, const W4Converter& convert, DType type,
                       W4Weights& whole) {
    Result<W4Weights> part = convert(r0, r1);
    if (part.ok()) {
        place_w4_rows(*part, r0, whole);
        return ok_status();
    }
    for (int64_t row = r0; row < r1; ++row) {
        const Result<W4Weights> one = convert(row, row + 1);
        if (!one.ok()) {
            return Status(one.status().code(),
                          "convert_for_engine: " + std::string(dtype_name(type)) + " " +
                              shape_text(whole.n, whole.k) + " row " + std::to_string(row) +
                              " (converted alone): " + one.status().message());
        }
    }
    return part.status();
}

// Q4_K / Q4_0 -> W4 through weight_format.cpp's converters, run on steps of rows in parallel.
Result<EngineWeights> w4_exact(DType type, std::span<const uint8_t> raw, int64_t n, int64_t k,
                               int threads) {
    W4Weights w = w4_zeros(n, k);
    const int64_t bytes = row_bytes(type, k);
    const W4Converter convert = [&](int64_t r0, int64_t r1) {
        const std::span<const uint8_t> rows =
            raw.subspan(static_cast<size_t>(r0 * bytes), static_cast<size_t>((r1 - r0) * bytes));
        return type == DType::kQ4_K ? w4_from_q4_k(rows, r1 - r0, k)
                                    : w4_from_q4_0(rows, r1 - r0, k);
    };
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        return for_row_steps(begin, end, staging_rows(k), [&](int64_t r0, int64_t r1) {
            return convert_w4_step(r0, r1, convert, type, w);
        });
    });
    if (!status.ok()) return status;
    return EngineWeights{std::move(w)};
}

// Any dequantisable type -> fp32 (a step of rows at a time) -> W4 via w4_from_f32.
Result<EngineWeights> w4_requantized(DType type, std::span<const uint8_t> raw, int64_t n, int64_t k,
                                     int threads) {
    W4Weights w = w4_zeros(n, k);
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        std::vector<float> staging(static_cast<size_t>(std::min(end - begin, staging_rows(k)) * k));
        return for_row_steps(begin, end, staging_rows(k), [&](int64_t r0, int64_t r1) {
            KESTREL_RETURN_IF_ERROR(with_rows(
                dequantize_rows(type, raw, k, r0, r1 - r0, staging.data()), type, r0, r1, n, k));
            const W4Converter convert = [&](int64_t a, int64_t b) {
                return w4_from_f32(std::span<const float>(staging.data() + (a - r0) * k,
                                                          static_cast<size_t>((b - a) * k)),
                                   b - a, k);
            };
            return convert_w4_step(r0, r1, convert, type, w);
        });
    });
    if (!status.ok()) return status;
    return EngineWeights{std::move(w)};
}

// Any dequantisable type -> fp32 (a step of rows at a time) -> W8 symmetric.
Result<W8Weights> w8_requantized(const char* what, DType type, std::span<const uint8_t> raw,
                                 int64_t n, int64_t k, int threads) {
    W8Weights w = make_w8(n, k);
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        std::vector<float> staging(static_cast<size_t>(std::min(end - begin, staging_rows(k)) * k));
        return for_row_steps(begin, end, staging_rows(k), [&](int64_t r0, int64_t r1) {
            KESTREL_RETURN_IF_ERROR(with_rows(
                dequantize_rows(type, raw, k, r0, r1 - r0, staging.data()), type, r0, r1, n, k));
            return quantize_rows_symmetric(what, staging.data(), r0, r1 - r0, w);
        });
    });
    if (!status.ok()) return status;
    return w;
}

Result<EngineWeights> bf16_rounded(DType type, std::span<const uint8_t> raw, int64_t n, int64_t k,
                                   int threads) {
    Bf16Weights w;
    w.n = n;
    w.k = k;
    w.values.assign(static_cast<size_t>(n * k), 0);
    if (type == DType::kBF16) {  // already the target: the bits as they are
        std::memcpy(w.values.data(), raw.data(), raw.size());
        return EngineWeights{std::move(w)};
    }
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        std::vector<float> staging(static_cast<size_t>(std::min(end - begin, staging_rows(k)) * k));
        return for_row_steps(begin, end, staging_rows(k), [&](int64_t r0, int64_t r1) {
            KESTREL_RETURN_IF_ERROR(with_rows(
                dequantize_rows(type, raw, k, r0, r1 - r0, staging.data()), type, r0, r1, n, k));
            uint16_t* dst = w.values.data() + r0 * k;
            for (int64_t i = 0; i < (r1 - r0) * k; ++i)
                dst[i] = fp32_to_bf16(staging[static_cast<size_t>(i)]);
            return ok_status();
        });
    });
    if (!status.ok()) return status;
    return EngineWeights{std::move(w)};
}

}  // namespace

std::vector<float> w8_dequantize(const W8Weights& w) {
    std::vector<float> out(static_cast<size_t>(w.n * w.k));
    for (int64_t row = 0; row < w.n; ++row) {
        for (int64_t g = 0; g < w.groups(); ++g) {
            const uint16_t* sm = w.scale_min.data() + (row * w.groups() + g) * 2;
            const float scale = fp16_to_fp32(sm[0]);
            const float min = fp16_to_fp32(sm[1]);
            const int64_t base = row * w.k + g * kW8Group;
            for (int64_t i = 0; i < kW8Group; ++i) {
                out[static_cast<size_t>(base + i)] =
                    scale * static_cast<float>(w.qs[static_cast<size_t>(base + i)]) - min;
            }
        }
    }
    return out;
}

// block_q8_0: d fp16 [0,2), qs int8 [2,34): weight = q * d, our group byte order already.
Result<W8Weights> w8_from_q8_0(std::span<const uint8_t> src, int64_t n, int64_t k, int threads) {
    KESTREL_RETURN_IF_ERROR(check_source("w8_from_q8_0", DType::kQ8_0, src, n, k));
    const int64_t block_bytes = dtype_info(DType::kQ8_0).block_bytes;
    W8Weights w = make_w8(n, k);
    const int64_t groups = w.groups();
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            for (int64_t g = 0; g < groups; ++g) {
                const uint8_t* block = src.data() + (row * groups + g) * block_bytes;
                const uint16_t d = load_le<uint16_t>(block);
                if (!fp16_finite(d)) {
                    return Status(StatusCode::kInvalidArgument,
                                  "w8_from_q8_0: row " + std::to_string(row) + " block " +
                                      std::to_string(g) + " of " + shape_text(n, k) +
                                      ": d is not finite");
                }
                std::memcpy(w.qs.data() + row * k + g * kW8Group, block + 2, kW8Group);
                w.scale_min[static_cast<size_t>((row * groups + g) * 2)] = d;
            }
        }
        return ok_status();
    });
    if (!status.ok()) return status;
    return w;
}

Result<W8Weights> w8_from_q5_k(std::span<const uint8_t> src, int64_t n, int64_t k, int threads) {
    KESTREL_RETURN_IF_ERROR(check_source("w8_from_q5_k", DType::kQ5_K, src, n, k));
    W8Weights w = make_w8(n, k);
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        return convert_q5_k_rows(src, begin, end, w);
    });
    if (!status.ok()) return status;
    return w;
}

Result<W8Weights> w8_from_q6_k(std::span<const uint8_t> src, int64_t n, int64_t k, int threads) {
    KESTREL_RETURN_IF_ERROR(check_source("w8_from_q6_k", DType::kQ6_K, src, n, k));
    W8Weights w = make_w8(n, k);
    const int64_t bytes = row_bytes(DType::kQ6_K, k);
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        std::vector<float> row_values(static_cast<size_t>(k));
        for (int64_t row = begin; row < end; ++row) {
            dequant::q6_k(src.data() + row * bytes, k / 256, row_values.data());
            KESTREL_RETURN_IF_ERROR(
                quantize_rows_symmetric("w8_from_q6_k", row_values.data(), row, 1, w));
        }
        return ok_status();
    });
    if (!status.ok()) return status;
    return w;
}

W8Weights w8_from_w4(const W4Weights& w4, int threads) {
    W8Weights w8;
    w8.n = w4.n;
    w8.k = w4.k;
    w8.qs.resize(static_cast<size_t>(w4.n * w4.k));
    // Byte b of a group's 16 holds weight b (low nibble) and weight b + 16 (high nibble).
    const int64_t groups = w4.n * (w4.k / kW4Group);
    cpu::parallel_for(groups, cpu::resolve_threads(threads), kW4Group, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g) {
            const uint8_t* in = w4.qs.data() + g * (kW4Group / 2);
            int8_t* out = w8.qs.data() + g * kW4Group;
            for (int64_t b = 0; b < kW4Group / 2; ++b) {
                out[b] = static_cast<int8_t>(in[b] & 0x0F);
                out[b + kW4Group / 2] = static_cast<int8_t>(in[b] >> 4);
            }
        }
    });
    w8.scale_min.resize(static_cast<size_t>(w4.n * w4.groups() * 2));
    for (int64_t row = 0; row < w4.n; ++row) {
        for (int64_t g = 0; g < w4.groups(); ++g) {
            const W4GroupScale gs = w4_group_scale(w4, row, g);
            w8.scale_min[static_cast<size_t>((row * w4.groups() + g) * 2)] = fp32_to_fp16(gs.scale);
            w8.scale_min[static_cast<size_t>((row * w4.groups() + g) * 2 + 1)] =
                fp32_to_fp16(gs.min);
        }
    }
    return w8;
}

Result<W8Weights> w8_from_f32(std::span<const float> src, int64_t n, int64_t k, int threads) {
    KESTREL_RETURN_IF_ERROR(check_shape("w8_from_f32", n, k, kW8Group));
    if (static_cast<int64_t>(src.size()) != n * k) {
        return Status(StatusCode::kInvalidArgument, "w8_from_f32: " + std::to_string(src.size()) +
                                                        " values for " + shape_text(n, k));
    }
    W8Weights w = make_w8(n, k);
    const Status status = for_row_ranges(n, threads, k, [&](int64_t begin, int64_t end) {
        return quantize_rows_symmetric("w8_from_f32", src.data() + begin * k, begin, end - begin,
                                       w);
    });
    if (!status.ok()) return status;
    return w;
}

void matvec_w8_f32(const W8Weights& w, const float* x, int64_t m_rows, float* y) {
    std::vector<float> row_w(static_cast<size_t>(w.k));
    for (int64_t row = 0; row < w.n; ++row) {
        for (int64_t g = 0; g < w.groups(); ++g) {
            const uint16_t* sm = w.scale_min.data() + (row * w.groups() + g) * 2;
            const float scale = fp16_to_fp32(sm[0]);
            const float min = fp16_to_fp32(sm[1]);
            for (int64_t i = 0; i < kW8Group; ++i) {
                const int64_t col = g * kW8Group + i;
                row_w[static_cast<size_t>(col)] =
                    scale * static_cast<float>(w.qs[static_cast<size_t>(row * w.k + col)]) - min;
            }
        }
        for (int64_t m = 0; m < m_rows; ++m) {
            double acc = 0.0;
            const float* xm = x + m * w.k;
            for (int64_t c = 0; c < w.k; ++c)
                acc += static_cast<double>(row_w[static_cast<size_t>(c)]) * xm[c];
            y[m * w.n + row] = static_cast<float>(acc);
        }
    }
}

void matvec_w8a8(const W8Weights& w, const Q8Block* a, int64_t m_rows, float* y, float* magnitude) {
    const int64_t groups = w.groups();
    for (int64_t row = 0; row < w.n; ++row) {
        for (int64_t m = 0; m < m_rows; ++m) {
            float acc = 0.0f;
            float mag = 0.0f;
            for (int64_t g = 0; g < groups; ++g) {
                const uint16_t* sm = w.scale_min.data() + (row * groups + g) * 2;
                const float scale = fp16_to_fp32(sm[0]);
                const float min = fp16_to_fp32(sm[1]);
                const Q8Block& blk = a[m * groups + g];
                const int8_t* qw = w.qs.data() + row * w.k + g * kW8Group;
                int32_t dot_first = 0, dot_second = 0;
                for (int i = 0; i < 16; ++i) {
                    dot_first += static_cast<int32_t>(qw[i]) * blk.qs[i];
                    dot_second += static_cast<int32_t>(qw[i + 16]) * blk.qs[i + 16];
                }
                const float t = scale * static_cast<float>(dot_first + dot_second) -
                                min * static_cast<float>(blk.sum);
                acc += blk.d * t;
                mag += std::fabs(blk.d) * (std::fabs(scale * static_cast<float>(dot_first)) +
                                           std::fabs(scale * static_cast<float>(dot_second)) +
                                           std::fabs(min * static_cast<float>(blk.sum)));
            }
            y[m * w.n + row] = acc;
            if (magnitude != nullptr) magnitude[m * w.n + row] = mag;
        }
    }
}

EngineWeightFormat engine_format_of(const EngineWeights& weights) {
    if (std::holds_alternative<W4Weights>(weights)) return EngineWeightFormat::kW4;
    if (std::holds_alternative<W8Weights>(weights)) return EngineWeightFormat::kW8;
    return EngineWeightFormat::kBf16;
}

Result<EngineWeights> convert_for_engine(DType type, std::span<const uint8_t> raw, int64_t n,
                                         int64_t k, EngineWeightFormat preferred, int threads) {
    if (!dequantize_supported(type)) {
        return Status(StatusCode::kUnsupported, "convert_for_engine: tensor " + shape_text(n, k) +
                                                    " of type " + std::string(dtype_name(type)) +
                                                    " cannot be converted");
    }
    KESTREL_RETURN_IF_ERROR(check_source("convert_for_engine", type, raw, n, k));
    const auto as_engine = [](Result<W8Weights> w) -> Result<EngineWeights> {
        if (!w.ok()) return w.status();
        return EngineWeights{std::move(w).value()};
    };
    switch (type) {
        case DType::kQ4_K:
        case DType::kQ4_0:
            return w4_exact(type, raw, n, k, threads);
        case DType::kQ5_K:
        case DType::kQ6_K:
        case DType::kQ8_0:
            if (preferred == EngineWeightFormat::kW4)
                return w4_requantized(type, raw, n, k, threads);
            if (type == DType::kQ5_K) return as_engine(w8_from_q5_k(raw, n, k, threads));
            if (type == DType::kQ6_K) return as_engine(w8_from_q6_k(raw, n, k, threads));
            return as_engine(w8_from_q8_0(raw, n, k, threads));
        default:  // F32, F16, BF16, and the other quantised types through fp32
            switch (preferred) {
                case EngineWeightFormat::kW4:
                    return w4_requantized(type, raw, n, k, threads);
                case EngineWeightFormat::kW8:
                    return as_engine(
                        w8_requantized("convert_for_engine", type, raw, n, k, threads));
                case EngineWeightFormat::kBf16:
                    return bf16_rounded(type, raw, n, k, threads);
            }
    }
    return Status(StatusCode::kInternal, "convert_for_engine: unknown preferred format");
}

}  // namespace kestrel
