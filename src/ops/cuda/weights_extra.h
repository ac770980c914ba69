// Device-side helpers for the weights the CUDA backend holds: synthetic (random) weights made
// on the GPU for `--dummy` models, and embedding rows gathered from W8 and BF16 tables (the W4
// and fp32 gathers are in small_ops.h). CPU twins: the formats' dequantisers
// (ops/weight_format.h, ops/weight_format_w8.h, core/half.h); tests/unit/cuda_weights_extra_test.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/gemv_w8a8.h"

namespace kestrel::cuda {

// The random byte stream of the synthetic weights: byte i of stream `seed` is
// random_weight_byte(seed, i) on host and device alike (splitmix64 of seed + i / 8).
__host__ __device__ inline uint8_t random_weight_byte(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i / 8) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<uint8_t>(z >> (8 * (i % 8)));
}

// Fills W4 / W8 / BF16 weights [n, k] with uniform values in about [-a, a]: W4 (the arrays of
// W4DeviceView: qs [n, k/2], group_scales [n, k/32], super_scales [n, ceil(k/256)]) q = random
// nibbles (qs byte i = random_weight_byte(seed, i)), every group sc = m = 255 (0xFFFF), every
// super word (d, dmin) = (fp16(2a / 15 / 255), fp16(a / 255)), so scale = d * 255 ~ 2a / 15 and
// min = dmin * 255 ~ a; W8 q = random int8 clamped to [-127, 127], (scale, min) =
// (fp16(a / 127), 0); BF16 = bf16(a * (2 u - 1)), u = byte / 255.
Status fill_random_w4(uint8_t* qs, uint16_t* group_scales, uint32_t* super_scales, int64_t n,
                      int64_t k, float a, uint64_t seed, cudaStream_t stream);
Status fill_random_w8(int8_t* qs, uint32_t* scale_min, int64_t n, int64_t k, float a, uint64_t seed,
                      cudaStream_t stream);
Status fill_random_bf16(uint16_t* w, int64_t count, float a, uint64_t seed, cudaStream_t stream);

// out[t, :] = dequantised table[ids[t], :] * scale (scale * q - min in fp32 for W8; bf16
// widened for BF16). ids device int32 [tokens]; an id outside [0, vocab) gives a row of NaN.
Status embed_w8(const int32_t* ids, int64_t tokens, const W8DeviceView& table, float scale, float* out,
                cudaStream_t stream);
Status embed_bf16(const int32_t* ids, int64_t tokens, const uint16_t* table, int64_t vocab, int64_t dim, float scale,
                  float* out, cudaStream_t stream);

}  // namespace kestrel::cuda
