// fp32 <-> bf16 on the device. fp32 -> bf16 is bit for bit core/half.h's fp32_to_bf16 (the CPU
// twins' rounding): round to nearest even (overflowing to inf), NaN kept as a quiet NaN with its
// sign and top payload bits. One definition for every kernel that stores bf16 (KV cache, weights,
// GEMM tiles) or widens stored bf16 bits back to fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kestrel::cuda {

// The bf16 bits in the low 16 bits of the result.
__device__ __forceinline__ uint32_t bf16_bits(float value) {
    uint32_t bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (bits >> 16) | 0x40u;
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return bits >> 16;
}

// bf16 bits -> fp32: exact (the bits become the top half of the fp32 word).
__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

}  // namespace kestrel::cuda
