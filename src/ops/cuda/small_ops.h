// Host API of the CUDA small ops: norms (norm.cu), RoPE (rope.cu), elementwise ops
// (elementwise.cu) and the token embedding (embed.cu); device helpers they share are in
// small_ops.cuh. Each mirrors the Ops method of the same name (ops/ops.h), and the CPU reference
// (make_cpu_ops(), ops/cpu/) is its twin: tests/unit/cuda_small_ops_test.cpp holds the kernels to
// it and states each tolerance. Plain C++: includable from .cpp files.
//
// All pointers are device pointers. Token ids and positions are device arrays, so a captured CUDA
// graph replays with new ones. Launchers only launch: they never synchronise, allocate or copy,
// and do not branch on device values. Arguments are checked on the host (kInvalidArgument).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/cuda/gemv_w4a8.h"  // W4DeviceView
#include "ops/weight_format.h"   // Q8Block

namespace kestrel::cuda {

// ---- norms (norm.cu) -------------------------------------------------------------------------------
// Every norm kernel sums a row's squares in one order that depends on dim alone, so the fused
// variants below produce bit for bit what rms_norm produces. dim <= kMaxNormDim.
constexpr int64_t kMaxNormDim = 32768;

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight.   x, out [rows, dim]; out may equal x.
// weight null: no weight (Gemma 4's V-norm). Per-head norms: rows = T * n_heads, dim = head_dim.
Status rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out,
                cudaStream_t stream);

// residual[r, :] += rms_norm(x[r, :], weight)   (Gemma's sandwich norm, then the residual add).
Status rms_norm_add(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* residual,
                    cudaStream_t stream);

// The Q8 blocks (quantize_q8_row) of rms_norm(x, weight), in one pass: out [rows, dim / 32],
// 16-byte aligned, dim % 32 == 0. Identical to rms_norm followed by quantize_q8.
Status rms_norm_quantize_q8(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                            Q8Block* out, cudaStream_t stream);

// ---- RoPE (rope.cu) ----------------------------------------------------------------------------------
// x [tokens, n_heads, head_dim] in place, positions [tokens] (device int64). Angles as
// ops/cpu/rope.cpp computes them: inv_freq in fp32 on the host with the same expression, the
// angle fp32(position) * inv_freq in fp32, its cos and sin in double rounded to fp32, so positions
// up to 2^24 rotate as on the CPU. At most kMaxRopePairs rotating pairs.
constexpr int64_t kMaxRopePairs = 256;

Status rope_neox(float* x, const int64_t* positions, int64_t tokens, int64_t n_heads, int64_t head_dim,
                 double theta, cudaStream_t stream);
// Gemma 4 full layers: pairs j < rotary_pairs rotate with inv_freq = theta^(-2j / head_dim).
Status rope_proportional(float* x, const int64_t* positions, int64_t tokens, int64_t n_heads, int64_t head_dim,
                         int64_t rotary_pairs, double theta, cudaStream_t stream);
// Qwen3.5: the first rotary_dim values of each head, inv_freq = theta^(-2j / rotary_dim).
Status rope_neox_partial(float* x, const int64_t* positions, int64_t tokens, int64_t n_heads, int64_t head_dim,
                         int64_t rotary_dim, double theta, cudaStream_t stream);

// Per-head rms_norm with weight [head_dim] (null: none), then RoPE of pairs j < rotary_pairs with
// inv_freq = theta^(-2j / head_dim), in place: rotary_pairs = head_dim / 2 is Ops::head_norm_rope
// (Gemma 3, Gemma 4 sliding layers); Gemma 4 full layers pass 64. Bit for bit rms_norm then
// rope_proportional. head_dim <= 1024 and even.
Status head_norm_rope(float* x, const float* weight, const int64_t* positions, int64_t tokens, int64_t n_heads,
                      int64_t head_dim, int64_t rotary_pairs, float eps, double theta, cudaStream_t stream);

// ---- elementwise (elementwise.cu); n elements, any alignment ----------------------------------------

// out[i] = gelu_tanh(gate[i]) * up[i]   (HF gelu_pytorch_tanh).
Status gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);
// out[i] = a[i] + b[i]; out may alias a or b.
Status add(const float* a, const float* b, int64_t n, float* out, cudaStream_t stream);
// x[i] *= s
Status scale(float* x, int64_t n, float s, cudaStream_t stream);
// x[i] *= *layer_scalar, a device float (Gemma 4's per-layer scalar, after both residual adds).
Status residual_scale(float* x, int64_t n, const float* layer_scalar, cudaStream_t stream);
// x[i] = cap * tanh(x[i] / cap)   (final_logit_softcapping), in place.
Status softcap(float* x, int64_t n, float cap, cudaStream_t stream);

// ---- embedding (embed.cu) -----------------------------------------------------------------------------

// out[t, :] = table[ids[t], :] * scale.   table [vocab, dim] fp32, ids [tokens] device int32,
// out [tokens, dim]. An id outside [0, vocab) gives a row of NaN (never a read out of bounds).
Status embed(const int32_t* ids, int64_t tokens, const float* table, int64_t vocab, int64_t dim, float scale,
             float* out, cudaStream_t stream);
// The same from a W4 table [vocab = table.n, dim = table.k]: each row dequantised as
// w4_dequantize does (scale * q - min in fp32, scale = d * sc, min = dmin * m), then * scale.
// out 16-byte aligned.
Status embed(const int32_t* ids, int64_t tokens, const W4DeviceView& table, float scale, float* out,
             cudaStream_t stream);

}  // namespace kestrel::cuda
