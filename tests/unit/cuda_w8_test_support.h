// W8 weights for the CUDA kernel tests (GEMV, the MoE expert stacks): random weights with the
// magnitudes the converters produce. Needs the CUDA build, like cuda_test_support.h.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/half.h"
#include "cuda_w4_test_support.h"  // splitmix64
#include "ops/weight_format_w8.h"

namespace kestrel::testing {

// Random W8 [n, k]: every int8 value (-128 included, which Q8_0 files may hold); scale ~
// 2^-12..2^-10 (w8_from_* magnitudes); min 0 in every third group (symmetric conversions), else
// scale * U(-20, 20) (Q5_K's offsets).
inline W8Weights random_w8(int64_t n, int64_t k, uint64_t seed) {
    W8Weights w;
    w.n = n;
    w.k = k;
    w.qs.resize(static_cast<size_t>(n * k));
    for (size_t i = 0; i < w.qs.size(); i += 8) {
        const uint64_t r = splitmix64(seed);
        for (size_t j = 0; j < 8 && i + j < w.qs.size(); ++j)
            w.qs[i + j] = static_cast<int8_t>(r >> (8 * j));
    }
    w.scale_min.resize(static_cast<size_t>(n * (k / 32) * 2));
    for (size_t i = 0; i < w.scale_min.size(); i += 2) {
        const uint64_t r = splitmix64(seed);
        const float scale = std::ldexp(1.0f + static_cast<float>(r & 0xffff) / 65536.0f,
                                       -12 - static_cast<int>((r >> 16) % 3));
        const float min =
            (i / 2) % 3 == 0
                ? 0.0f
                : scale * (40.0f * static_cast<float>((r >> 32) & 0xffff) / 65536.0f - 20.0f);
        w.scale_min[i] = fp32_to_fp16(scale);
        w.scale_min[i + 1] = fp32_to_fp16(min);
    }
    return w;
}

}  // namespace kestrel::testing
