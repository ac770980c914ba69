// Host API of the W4A8 decode GEMV (gemv_w4a8.cu): quantise activations to Q8 blocks, then
// y = W x for M <= 8 rows of x with W in the engine's W4 format (ops/weight_format.h, which
// also holds the CPU twins that define these functions' results). Plain C++: includable from
// .cpp files that have the CUDA runtime headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/weight_format.h"

namespace kestrel::cuda {

// Device copy of a W4Weights: qs [n, k/2] (16-byte aligned), scale_min [n, k/32] as
// (scale, min) fp16 pairs in one 32-bit word each (scale in the low half).
struct W4DeviceView {
    const uint8_t* qs = nullptr;
    const uint32_t* scale_min = nullptr;
    int64_t n = 0;
    int64_t k = 0;
};

constexpr int64_t kGemvMaxRows = 8;

// x [m, k] (row stride ldx elements, k % 32 == 0) -> out [m, k/32] Q8 blocks (16-aligned),
// exactly as quantize_q8_row. fp32 or bf16 (raw bits) input.
Status quantize_q8(const float* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out, cudaStream_t stream);
Status quantize_q8_bf16(const uint16_t* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out,
                        cudaStream_t stream);

// y [m, n] fp32 = W x, a = Q8 blocks of x [m, k/32], 1 <= m <= kGemvMaxRows. Matches
// matvec_w4a8 up to fp32 accumulation order.
Status gemv_w4a8(const W4DeviceView& w, const Q8Block* a, int64_t m, float* y, cudaStream_t stream);

}  // namespace kestrel::cuda
