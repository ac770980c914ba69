// Host API of the fused kernels at the two ends of the decode step's feed-forward block
// (fused_ffn.cu). Each replaces a pair of launches of the existing ops and is bit for bit that
// pair, so the CPU twins are the pairs' twins: make_cpu_ops() gelu_tanh_and_mul then
// quantize_q8_row (ops/weight_format.h), and rms_norm_add then scale. tests/unit/
// cuda_fused_ffn_test.cpp holds the kernels to both. Plain C++: includable from .cpp files.
//
// All pointers are device pointers. Launchers only launch: they never synchronise, allocate or
// copy, and do not branch on device values. Arguments are checked on the host (kInvalidArgument).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/weight_format.h"  // Q8Block

namespace kestrel::cuda {

// out = the Q8 blocks (quantize_q8_row) of gelu_tanh(gate) * up: bit for bit
// gelu_tanh_and_mul (small_ops.h) then quantize_q8 (gemv_w4a8.h), without the fp32 round trip.
// gate, up [rows, dim] (row stride dim), dim % 32 == 0; out [rows, dim / 32], 16-byte aligned.
Status gelu_tanh_and_mul_quantize_q8(const float* gate, const float* up, int64_t rows, int64_t dim, Q8Block* out,
                                     cudaStream_t stream);

// residual[r, :] = (residual[r, :] + rms_norm(x[r, :]) * weight) * scale: bit for bit
// rms_norm_add then scale (small_ops.h) — Gemma 4's post-FFN sandwich norm, residual add and
// layer_scalar. x, residual [rows, dim], 0 < dim <= kMaxNormDim (small_ops.h); weight [dim] or
// null (no weight).
Status rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float scale,
                          float* residual, cudaStream_t stream);

}  // namespace kestrel::cuda
