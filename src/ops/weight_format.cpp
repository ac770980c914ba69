#include "ops/weight_format.h"

#include "io/dequantize_blocks.h"  // k4_scale_min: the Q4_K scale packing, one place

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "core/half.h"

namespace kestrel {
namespace {

Status check_shape(const char* what, int64_t n, int64_t k, int64_t k_multiple) {
    if (n <= 0 || k <= 0 || k % k_multiple != 0) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": shape [" + std::to_string(n) + ", " + std::to_string(k) +
                          "] needs n > 0 and k a positive multiple of " + std::to_string(k_multiple));
    }
    return ok_status();
}

// A GGUF source tensor [n, k] of `type`: whole blocks per row and exactly its byte size
// (the block table in core/dtype.h).
Status check_source(const char* what, DType type, std::span<const uint8_t> src, int64_t n, int64_t k) {
    const DTypeInfo& info = dtype_info(type);
    KESTREL_RETURN_IF_ERROR(check_shape(what, n, k, info.block_elements));
    const std::optional<int64_t> bytes = dtype_bytes(type, n * k);
    if (!bytes || static_cast<int64_t>(src.size()) != *bytes) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": " + std::to_string(src.size()) +
                                                        " bytes, expected " + std::to_string(bytes.value_or(-1)));
    }
    return ok_status();
}

// Stores the 32 values q[0..31] (each 0..15) as group `g` of row `row`.
void put_group(W4Weights& w, int64_t row, int64_t g, const uint8_t* q) {
    uint8_t* dst = w.qs.data() + row * (w.k / 2) + g * 16;
    for (int b = 0; b < 16; ++b) dst[b] = static_cast<uint8_t>(q[b] | (q[b + 16] << 4));
}

void put_group_scale(W4Weights& w, int64_t row, int64_t g, int sc, int m) {
    w.group_scales[static_cast<size_t>(row * w.groups() + g)] =
        static_cast<uint16_t>(sc | (m << 8));
}

void put_super_scale(W4Weights& w, int64_t row, int64_t s, uint16_t d, uint16_t dmin) {
    uint16_t* dst = w.super_scales.data() + (row * w.supers() + s) * 2;
    dst[0] = d;
    dst[1] = dmin;
}

bool fp16_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

// The groups [g0, g1) of super-group s of a row: 8 but for a row's last, short one.
struct SuperGroupSpan {
    int64_t g0;
    int64_t g1;
};
SuperGroupSpan super_group_span(const W4Weights& w, int64_t s) {
    return {s * kW4GroupsPerSuper, std::min(w.groups(), (s + 1) * kW4GroupsPerSuper)};
}

// An 8-bit multiplier of `unit` nearest to `value` (value >= 0, value <= 255 unit by the choice
// of unit); 0 when unit is 0.
int nearest_multiplier(float value, float unit) {
    if (unit <= 0.0f) return 0;
    return std::clamp(static_cast<int>(std::nearbyint(value / unit)), 0, 255);
}

}  // namespace

W4Weights w4_zeros(int64_t n, int64_t k) {
    W4Weights w;
    w.n = n;
    w.k = k;
    w.qs.assign(static_cast<size_t>(n * (k / 2)), 0);
    w.group_scales.assign(static_cast<size_t>(n * w.groups()), 0);
    w.super_scales.assign(static_cast<size_t>(n * w.supers() * 2), 0);
    return w;
}

W4GroupScale w4_group_scale(const W4Weights& w, int64_t row, int64_t g) {
    const uint16_t word = w.group_scales[static_cast<size_t>(row * w.groups() + g)];
    const uint16_t* super = w.super_scales.data() + (row * w.supers() + g / kW4GroupsPerSuper) * 2;
    return {fp16_to_fp32(super[0]) * static_cast<float>(word & 0xFF),
            fp16_to_fp32(super[1]) * static_cast<float>(word >> 8)};
}

std::vector<float> w4_dequantize(const W4Weights& w) {
    std::vector<float> out(static_cast<size_t>(w.n * w.k));
    for (int64_t row = 0; row < w.n; ++row) {
        for (int64_t g = 0; g < w.groups(); ++g) {
            const W4GroupScale gs = w4_group_scale(w, row, g);
            for (int64_t i = 0; i < kW4Group; ++i) {
                const int64_t col = g * kW4Group + i;
                out[static_cast<size_t>(row * w.k + col)] =
                    gs.scale * static_cast<float>(w4_q(w, row, col)) - gs.min;
            }
        }
    }
    return out;
}

// block_q4_K (ggml-common.h; src/io/dequantize_kquants.cpp): d fp16 [0,2), dmin fp16 [2,4),
// 6-bit sub-block scales/mins [4,16), qs [16,144): sub-block j's weight l is nibble j % 2 of
// qs[32 (j / 2) + l]. weight = (d sc_j) q - (dmin m_j): block b is super-group b.
Result<W4Weights> w4_from_q4_k(std::span<const uint8_t> src, int64_t n, int64_t k) {
    KESTREL_RETURN_IF_ERROR(check_source("w4_from_q4_k", DType::kQ4_K, src, n, k));
    const int64_t block_bytes = dtype_info(DType::kQ4_K).block_bytes;
    const int64_t blocks_per_row = k / 256;
    W4Weights w = w4_zeros(n, k);
    uint8_t q[32];
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t b = 0; b < blocks_per_row; ++b) {
            const uint8_t* block = src.data() + (row * blocks_per_row + b) * block_bytes;
            const uint16_t d = load_le<uint16_t>(block + 0);
            const uint16_t dmin = load_le<uint16_t>(block + 2);
            if (!fp16_finite(d) || !fp16_finite(dmin)) {
                return Status(StatusCode::kInvalidArgument,
                              "w4_from_q4_k: row " + std::to_string(row) + " block " +
                                  std::to_string(b) + ": d or dmin is not finite");
            }
            put_super_scale(w, row, b, d, dmin);
            const uint8_t* s = block + 4;
            const uint8_t* qs = block + 16;
            for (int j = 0; j < 8; ++j) {
                const auto [sc, m] = dequant::k4_scale_min(s, j);
                const uint8_t* qsrc = qs + 32 * (j / 2);
                const int shift = 4 * (j % 2);
                for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>((qsrc[l] >> shift) & 0x0F);
                const int64_t g = b * 8 + j;
                put_group(w, row, g, q);
                put_group_scale(w, row, g, sc, m);
            }
        }
    }
    return w;
}

// block_q4_0: d fp16 [0,2), qs [2,18) with byte b = weight b (low) | weight b+16 (high): our
// group byte order already. weight = d (q - 8); with d < 0 it is (-d) ((15 - q) - 7).
Result<W4Weights> w4_from_q4_0(std::span<const uint8_t> src, int64_t n, int64_t k) {
    KESTREL_RETURN_IF_ERROR(check_source("w4_from_q4_0", DType::kQ4_0, src, n, k));
    const int64_t block_bytes = dtype_info(DType::kQ4_0).block_bytes;
    W4Weights w = w4_zeros(n, k);
    float step[kW4GroupsPerSuper];    // a = |d|
    float offset[kW4GroupsPerSuper];  // min / a: 8 or 7
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t s = 0; s < w.supers(); ++s) {
            const auto [g0, g1] = super_group_span(w, s);
            float max_step = 0.0f, max_min = 0.0f;
            for (int64_t g = g0; g < g1; ++g) {
                const uint8_t* block = src.data() + (row * w.groups() + g) * block_bytes;
                const uint16_t d_bits = load_le<uint16_t>(block);
                if (!fp16_finite(d_bits)) {
                    return Status(StatusCode::kInvalidArgument,
                                  "w4_from_q4_0: row " + std::to_string(row) + " block " +
                                      std::to_string(g) + ": d is not finite");
                }
                const float d = fp16_to_fp32(d_bits);
                const bool flip = std::signbit(d);
                step[g - g0] = std::fabs(d);
                offset[g - g0] = flip ? 7.0f : 8.0f;
                max_step = std::max(max_step, step[g - g0]);
                max_min = std::max(max_min, offset[g - g0] * step[g - g0]);
                uint8_t* dst = w.qs.data() + row * (k / 2) + g * 16;
                std::copy(block + 2, block + 18, dst);
                if (flip) {
                    for (int b = 0; b < 16; ++b)
                        dst[b] = static_cast<uint8_t>(~dst[b]);  // q -> 15 - q, both nibbles
                }
            }
            const uint16_t d_bits = fp16_at_least(max_step / 255.0f);
            const uint16_t dmin_bits = fp16_at_least(max_min / 255.0f);
            put_super_scale(w, row, s, d_bits, dmin_bits);
            const float unit = fp16_to_fp32(d_bits), min_unit = fp16_to_fp32(dmin_bits);
            for (int64_t g = g0; g < g1; ++g) {
                const float a = step[g - g0];
                const int sc = nearest_multiplier(a, unit);
                const float scale_error = unit * static_cast<float>(sc) - a;
                put_group_scale(
                    w, row, g, sc,
                    nearest_multiplier(offset[g - g0] * a + 7.5f * scale_error, min_unit));
            }
        }
    }
    return w;
}

Result<W4Weights> w4_from_f32(std::span<const float> src, int64_t n, int64_t k) {
    KESTREL_RETURN_IF_ERROR(check_shape("w4_from_f32", n, k, 32));
    if (static_cast<int64_t>(src.size()) != n * k) {
        return Status(StatusCode::kInvalidArgument, "w4_from_f32: " + std::to_string(src.size()) +
                                                        " values, expected " + std::to_string(n * k));
    }
    W4Weights w = w4_zeros(n, k);
    float ideal_scale[kW4GroupsPerSuper];
    float ideal_min[kW4GroupsPerSuper];
    uint8_t q[32];
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t s = 0; s < w.supers(); ++s) {
            const auto [g0, g1] = super_group_span(w, s);
            float max_scale = 0.0f, max_min = 0.0f;
            for (int64_t g = g0; g < g1; ++g) {
                const float* x = src.data() + row * k + g * 32;
                float lo = 0.0f, hi = x[0];
                for (int i = 0; i < 32; ++i) {
                    if (!std::isfinite(x[i]) || std::fabs(x[i]) > 65504.0f) {
                        return Status(StatusCode::kInvalidArgument,
                                      "w4_from_f32: weight [" + std::to_string(row) + ", " +
                                          std::to_string(g * 32 + i) + "] is not finite in fp16");
                    }
                    lo = std::min(lo, x[i]);
                    hi = std::max(hi, x[i]);
                }
                ideal_scale[g - g0] = (hi - lo) / 15.0f;
                ideal_min[g - g0] = -lo;
                max_scale = std::max(max_scale, ideal_scale[g - g0]);
                max_min = std::max(max_min, ideal_min[g - g0]);
            }
            const uint16_t d_bits = fp16_at_least(max_scale / 255.0f);
            const uint16_t dmin_bits = fp16_at_least(max_min / 255.0f);
            put_super_scale(w, row, s, d_bits, dmin_bits);
            const float unit = fp16_to_fp32(d_bits), min_unit = fp16_to_fp32(dmin_bits);
            for (int64_t g = g0; g < g1; ++g) {
                // Rounded up, so that 15 scale still spans [lo, hi].
                const int sc =
                    unit > 0.0f
                        ? std::min(255, static_cast<int>(std::ceil(ideal_scale[g - g0] / unit)))
                        : 0;
                const int m = nearest_multiplier(ideal_min[g - g0], min_unit);
                put_group_scale(w, row, g, sc, m);
                // Quantise against the values the format stores, so rounding stays to nearest.
                const W4GroupScale gs = w4_group_scale(w, row, g);
                const float* x = src.data() + row * k + g * 32;
                for (int i = 0; i < 32; ++i) {
                    const float v =
                        gs.scale > 0.0f ? std::nearbyint((x[i] + gs.min) / gs.scale) : 0.0f;
                    q[i] = static_cast<uint8_t>(std::clamp(v, 0.0f, 15.0f));
                }
                put_group(w, row, g, q);
            }
        }
    }
    return w;
}

void quantize_q8_row(const float* x, int64_t k, Q8Block* out) {
    for (int64_t b = 0; b < k / 32; ++b) {
        const float* v = x + b * 32;
        Q8Block& blk = out[b];
        float amax = 0.0f;
        bool finite = true;
        for (int i = 0; i < 32; ++i) {
            finite = finite && std::isfinite(v[i]);
            amax = std::max(amax, std::fabs(v[i]));
        }
        blk = Q8Block{};
        if (!finite) {
            blk.d = std::numeric_limits<float>::quiet_NaN();
            continue;
        }
        const float d = amax / 127.0f;
        blk.d = d;
        int32_t sum = 0;
        for (int i = 0; i < 32; ++i) {
            int q = 0;
            if (d > 0.0f) q = std::clamp(static_cast<int>(std::nearbyint(v[i] / d)), -127, 127);
            blk.qs[i] = static_cast<int8_t>(q);
            sum += q;
        }
        blk.sum = sum;
    }
}

void matvec_w4_f32(const W4Weights& w, const float* x, int64_t m_rows, float* y) {
    std::vector<float> row_w(static_cast<size_t>(w.k));
    for (int64_t row = 0; row < w.n; ++row) {
        for (int64_t g = 0; g < w.groups(); ++g) {
            const W4GroupScale gs = w4_group_scale(w, row, g);
            for (int64_t i = 0; i < 32; ++i) {
                row_w[static_cast<size_t>(g * 32 + i)] =
                    gs.scale * static_cast<float>(w4_q(w, row, g * 32 + i)) - gs.min;
            }
        }
        for (int64_t m = 0; m < m_rows; ++m) {
            double acc = 0.0;
            const float* xm = x + m * w.k;
            for (int64_t c = 0; c < w.k; ++c) acc += static_cast<double>(row_w[static_cast<size_t>(c)]) * xm[c];
            y[m * w.n + row] = static_cast<float>(acc);
        }
    }
}

void matvec_w4a8(const W4Weights& w, const Q8Block* a, int64_t m_rows, float* y, float* magnitude) {
    const int64_t groups = w.groups();
    for (int64_t row = 0; row < w.n; ++row) {
        for (int64_t m = 0; m < m_rows; ++m) {
            float acc = 0.0f;
            float mag = 0.0f;
            for (int64_t g = 0; g < groups; ++g) {
                const auto [scale, min] = w4_group_scale(w, row, g);
                const Q8Block& blk = a[m * groups + g];
                const uint8_t* qw = w.qs.data() + row * (w.k / 2) + g * 16;
                int32_t dot = 0;
                for (int b = 0; b < 16; ++b) {
                    dot += static_cast<int32_t>(qw[b] & 0x0F) * blk.qs[b];
                    dot += static_cast<int32_t>(qw[b] >> 4) * blk.qs[b + 16];
                }
                const float t = scale * static_cast<float>(dot) - min * static_cast<float>(blk.sum);
                acc += blk.d * t;
                mag += std::fabs(blk.d) * (std::fabs(scale * static_cast<float>(dot)) +
                                           std::fabs(min * static_cast<float>(blk.sum)));
            }
            y[m * w.n + row] = acc;
            if (magnitude != nullptr) magnitude[m * w.n + row] = mag;
        }
    }
}

}  // namespace kestrel
