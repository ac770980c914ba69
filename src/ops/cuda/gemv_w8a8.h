// Host API of the W8A8 decode GEMV (gemv_w8a8.cu): y = W x for M <= 8 rows of x with W in the
// engine's W8 format (ops/weight_format_w8.h, which also holds the CPU twin matvec_w8a8 that
// defines the result). The activations are the Q8 blocks of the W4A8 GEMV: quantise them with
// kestrel::cuda::quantize_q8 / quantize_q8_bf16 (gemv_w4a8.h). Plain C++: includable from .cpp
// files that have the CUDA runtime headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/weight_format_w8.h"

namespace kestrel::cuda {

// Device copy of a W8Weights: qs [n, k] int8 (16-byte aligned), scale_min [n, k/32] as
// (scale, min) fp16 pairs in one 32-bit word each (scale in the low half): the bytes of
// W8Weights::scale_min as they are.
struct W8DeviceView {
    const int8_t* qs = nullptr;
    const uint32_t* scale_min = nullptr;
    int64_t n = 0;
    int64_t k = 0;
};

// y [m, n] fp32 = W x, a = Q8 blocks of x [m, k/32] (16-aligned), 1 <= m <= kGemvMaxRows.
// Matches matvec_w8a8 up to fp32 accumulation order. Never synchronises or allocates.
Status gemv_w8a8(const W8DeviceView& w, const Q8Block* a, int64_t m, float* y, cudaStream_t stream);

// The warps per row group gemv_w8a8 picks (gemv_warps_per_row, gemv_w4a8.h) for W [n, k]: a
// lane's work unit is a 16-byte half group, 2 k / 32 of them per row.
inline int gemv_w8a8_warps_per_row(int64_t n, int64_t k, int64_t m, int sm_count) {
    return gemv_warps_per_row(n, m, k / 16 / 32, sm_count);
}

}  // namespace kestrel::cuda
