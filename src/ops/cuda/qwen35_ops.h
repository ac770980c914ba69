// Host API of the CUDA kernels for Qwen3.5's small ops and its MoE router (qwen35_ops.cu). Each
// mirrors the Ops method of the same name (ops/ops.h, section "Qwen3.5"); the CPU twins are in
// ops/cpu/qwen35_elementwise.cpp and ops/cpu/moe.cpp, and tests/unit/cuda_qwen35_ops_test.cpp
// holds the kernels to them and states each tolerance. Plain C++: includable from .cpp files.
//
// All pointers are device pointers. Launchers only launch: they never synchronise, allocate or
// copy, and do not branch on device values, so they can be captured in a CUDA graph. Arguments
// are checked on the host (kInvalidArgument); n = 0 or rows = 0 launches nothing.
//
// exp: the kernels compute exp in double and round it to fp32 (the correctly rounded value
// except within ~2^-29 ulp of a rounding boundary). The CPU's std::exp(float) is glibc's expf,
// within 0.502 ulp, so the two agree except near those boundaries; CUDA's expf is 2 ulp. All
// other fp32 operations are the CPU's, in the CPU's order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/weight_format.h"  // Q8Block

namespace kestrel::cuda {

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]   (SwiGLU). Any
// alignment; out may alias gate or up.
Status silu_and_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);

// out[i] = x[i] * sigmoid(gate[i])   (the gated attention's output gate). Any alignment; out may
// alias x or gate.
Status sigmoid_mul(const float* x, const float* gate, int64_t n, float* out, cudaStream_t stream);

// out[t, :] += sigmoid(gate[t]) * x[t, :]   (the shared expert's scalar gate).
// x, out [rows, dim], gate [rows]. Any alignment.
Status add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim, float* out,
                          cudaStream_t stream);

// out[r, :] = weight * rms_norm(x[r, :]) * silu(z[r, :])   (HF Qwen3_5MoeRMSNormGated, plain
// weight, not null).   x, z, out [rows, dim], weight [dim], 0 < dim <= kMaxNormDim (small_ops.h).
// The row's sum of squares is norm.cu's, so the result is bit for bit silu_and_mul(z,
// rms_norm(x, weight)) of these kernels. out may equal x or z.
Status rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows,
                      int64_t dim, float eps, float* out, cudaStream_t stream);

// The Q8 blocks (quantize_q8_row) of rms_norm_gated(x, z, weight): bit for bit rms_norm_gated
// then quantize_q8 (gemv_w4a8.h), the Gated DeltaNet output projection's activations.
// dim % 32 == 0 (so each row's blocks follow the previous row's: [rows * dim / 32] is also the
// Q8 of the flattened [rows * dim]); out 16-byte aligned.
Status rms_norm_gated_quantize_q8(const float* x, const float* z, const float* weight, int64_t rows,
                                  int64_t dim, float eps, Q8Block* out, cudaStream_t stream);

// The router (HF Qwen3_5MoeTopKRouter): probabilities = softmax over all n_experts of logits[t, :]
// (ops/cpu's router_softmax: max-subtracted, the fp32 sum of the exps in its fixed tree order,
// times 1 / sum),
// then the k largest, in descending order with ties to the lower expert id (the CPU's stable
// sort), and their weights = probability / (their fp32 sum in that order).   logits
// [rows, n_experts], ids (int32) and weights [rows, k]. A row whose logits hold a NaN or +inf,
// or are all -inf, has NaN probabilities, as on the CPU: its ids are 0 .. k - 1 (no two compare,
// so the stable sort keeps the ids' order) and its weights NaN. Other rows are unaffected.
// One block per row; 1 <= k <= min(n_experts, kMaxRouteTopK).
// shared_gate [rows] (or null): each row gets slot k too (ids, weights [rows, k + 1]): expert
// n_experts (the shared expert stacked after the routed ones) with weight sigmoid(shared_gate[t])
// = 1 / (1 + exp(-g)), the CPU's operations (exp as exp_rounded, see above).
constexpr int64_t kMaxRouteExperts = 1024;
constexpr int64_t kMaxRouteTopK = 32;
Status moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
                 const float* shared_gate, int32_t* ids, float* weights, cudaStream_t stream);

}  // namespace kestrel::cuda
