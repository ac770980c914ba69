// W4 weights for the CUDA kernel tests (GEMV, prefill GEMM, embedding): random weights with
// Q4_K-like magnitudes, and their three arrays on the device behind a cuda::W4DeviceView.
// Needs the CUDA build, like cuda_test_support.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/half.h"
#include "cuda_test_support.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/weight_format.h"

namespace kestrel::testing {

inline uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Random W4 [n, k] with Q4_K-like magnitudes: per super-group d ~ 2^-17..2^-15 (fp16 subnormals
// included) and dmin = d * U(1, 15); per group sc in [1, 255] and m in [0, 255], so the group
// scales d * sc reach ~2^-7 and the mins dmin * m vary from 0 to ~15 scales and beyond.
inline W4Weights random_w4(int64_t n, int64_t k, uint64_t seed) {
    W4Weights w;
    w.n = n;
    w.k = k;
    w.qs.resize(static_cast<size_t>(n * k / 2));
    for (size_t i = 0; i < w.qs.size(); i += 8) {
        const uint64_t r = splitmix64(seed);
        for (size_t j = 0; j < 8 && i + j < w.qs.size(); ++j)
            w.qs[i + j] = static_cast<uint8_t>(r >> (8 * j));
    }
    w.group_scales.resize(static_cast<size_t>(n * w.groups()));
    for (uint16_t& word : w.group_scales) {
        const uint64_t r = splitmix64(seed);
        word = static_cast<uint16_t>((1 + r % 255) | (((r >> 16) & 0xff) << 8));
    }
    w.super_scales.resize(static_cast<size_t>(n * w.supers() * 2));
    for (size_t i = 0; i < w.super_scales.size(); i += 2) {
        const uint64_t r = splitmix64(seed);
        const float d = std::ldexp(1.0f + static_cast<float>(r & 0xffff) / 65536.0f,
                                   -17 - static_cast<int>((r >> 16) % 3));
        const float dmin = d * (1.0f + 14.0f * static_cast<float>((r >> 32) & 0xffff) / 65536.0f);
        w.super_scales[i] = fp32_to_fp16(d);
        w.super_scales[i + 1] = fp32_to_fp16(dmin);
    }
    return w;
}

// The three W4 arrays on the device and the view of them (super_scales' fp16 pairs (d, dmin) are
// one 32-bit word each, d in the low half).
struct DeviceW4 {
    DeviceBuffer qs, group_scales, super_scales;
    cuda::W4DeviceView view;
};

inline void upload_w4(const W4Weights& w, DeviceW4& d) {
    upload(d.qs, w.qs);
    upload(d.group_scales, w.group_scales);
    upload(d.super_scales, w.super_scales);
    d.view = {d.qs.as<uint8_t>(), d.group_scales.as<uint16_t>(), d.super_scales.as<uint32_t>(), w.n,
              w.k};
}

}  // namespace kestrel::testing
