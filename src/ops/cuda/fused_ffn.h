// Host API of the fused kernels at the ends of the decode step's blocks (fused_ffn.cu). Each
// replaces two or three launches of the existing ops and is bit for bit those launches, so the
// CPU twins are theirs: make_cpu_ops() gelu_tanh_and_mul then quantize_q8_row
// (ops/weight_format.h); rms_norm_add then scale (then rms_norm then quantize_q8_row); add then
// rms_norm then quantize_q8_row. tests/unit/
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

// out[i] = fp32_to_bf16(gelu_tanh(gate[i]) * up[i]) (core/half.h's rounding; raw bf16 bits):
// bit for bit gelu_tanh_and_mul then convert_f32_to_bf16 (gemm_prefill.h), the prefill GEMM's
// bf16 input without the fp32 round trip. n % 4 == 0; out 8-byte aligned.
Status gelu_tanh_and_mul_bf16(const float* gate, const float* up, int64_t n, uint16_t* out,
                              cudaStream_t stream);

// residual[r, :] = (residual[r, :] + rms_norm(x[r, :]) * weight) * scale: bit for bit
// rms_norm_add then scale (small_ops.h) — Gemma 4's post-FFN sandwich norm, residual add and
// layer_scalar. x, residual [rows, dim], 0 < dim <= kMaxNormDim (small_ops.h); weight [dim] or
// null (no weight).
Status rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float scale,
                          float* residual, cudaStream_t stream);

// When a kernel launched with programmatic dependent launch (launch.cuh) may read the residual:
// after waiting for the previous kernel (always right), or before, while that kernel may still
// run. kBeforeWait is the caller's promise that every kernel that wrote the residual has
// completed by the time this one starts: true when the previous kernel lets its dependents launch
// only after its own wait (every GEMV here), or not at all (a library GEMM), and the residual's
// last writer came before that kernel. Then its completion implies the writer's.
enum class ResidualRead { kAfterWait, kBeforeWait };

// rms_norm_add_scale, then out = the Q8 blocks of rms_norm(residual, next_weight): bit for bit
// rms_norm_add_scale then rms_norm_quantize_q8 (small_ops.h). The seam between two blocks of a
// sandwich-norm decoder (post-norm and residual update of one, pre-norm of the next) in one launch.
// dim % 32 == 0; out [rows, dim / 32], 16-byte aligned.
Status rms_norm_add_scale_norm_quantize_q8(const float* x, const float* weight, int64_t rows,
                                           int64_t dim, float eps, float scale, float* residual,
                                           const float* next_weight, Q8Block* out,
                                           ResidualRead residual_read, cudaStream_t stream);

// residual[r, :] += x[r, :], then normed = rms_norm(residual, weight) (written when normed is not
// null) and out = its Q8 blocks: bit for bit add (small_ops.h), rms_norm, then quantize_q8 — the
// seam of a pre-norm decoder without post-norms (Qwen3.5: the attention or Gated DeltaNet output
// added, then the MoE's pre-norm). x, residual [rows, dim], weight [dim] or null, dim % 32 == 0,
// 0 < dim <= kMaxNormDim; out [rows, dim / 32], 16-byte aligned.
Status add_rms_norm_quantize_q8(const float* x, float* residual, const float* weight, int64_t rows,
                                int64_t dim, float eps, float* normed, Q8Block* out,
                                cudaStream_t stream);

}  // namespace kestrel::cuda
