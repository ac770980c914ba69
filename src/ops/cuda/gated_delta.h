// Host API of the Gated DeltaNet kernels (gated_delta.cu): Qwen3.5's "linear_attention" layers
// between the stacked in-projection and the gated norm. Each mirrors the Ops method of the same
// name (ops/ops.h) and its CPU twin (ops/cpu/conv1d.cpp, ops/cpu/gated_delta.cpp), which
// tests/unit/cuda_gated_delta_test.cpp holds them to. Plain C++: includable from .cpp files.
//
// All pointers are device pointers. Launchers only launch: they never synchronise, allocate or
// copy and do not branch on device values, so a captured CUDA graph replays them. Arguments are
// checked on the host (kInvalidArgument).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/ops.h"  // GatedDeltaParams, GdnHeadOrder

namespace kestrel::cuda {

// The longest causal conv kernel conv1d_causal takes (Qwen3.5: 4).
constexpr int64_t kMaxConvKernel = 8;
// The largest key head dimension gated_delta_rule takes (Qwen3.5: 128; in prefill the state
// columns are held in registers up to 128 and in shared memory above). The value head dimension is
// free.
constexpr int64_t kMaxGdnKeyDim = 256;

// Causal depthwise conv1d over time with state, then optional SiLU (Ops::conv1d_causal):
//   out[t, c] = act(sum_j weight[c, j] * in[t - kernel + 1 + j, c]),  j = 0 .. kernel - 1,
// where in[< 0] comes from conv_state, which is then updated to the last kernel - 1 raw inputs
// (also when rows < kernel - 1: then part of the old state moves up).
// x, out [rows, channels] (must not overlap); weight [channels, kernel];
// conv_state [kernel - 1, channels], oldest first (may be null when kernel == 1).
// 1 <= kernel <= kMaxConvKernel. Bit for bit the CPU's sum; SiLU differs only by expf's ulps.
Status conv1d_causal(const float* x, int64_t rows, const float* weight, float* conv_state,
                     int64_t kernel, int64_t channels, bool silu, float* out, cudaStream_t stream);

// One Gated DeltaNet core over `rows` tokens in the recurrent form (Ops::gated_delta_rule),
// continuing and updating `state`:
//   q, k = l2norm(q), l2norm(k) (eps 1e-6);  q *= dk^-0.5
//   beta = sigmoid(b);  g = a_neg * softplus(a + dt_bias)
//   per value head: S = exp(g_t) S;  S += k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t
// qkv [rows, 2 * n_k_heads * dk + n_v_heads * dv] (q | k | v), a, b [rows, n_v_heads],
// a_neg, dt_bias [n_v_heads], state fp32 [n_v_heads, dk, dv] (S[h][i][j]), in place;
// out [rows, n_v_heads, dv] (must not overlap the inputs or the state).
// n_v_heads a multiple of n_k_heads; 1 <= dk <= kMaxGdnKeyDim; value head h reads key head
// params.order (kGrouped: h / (n_v / n_k); kTiled: h % n_k). params.chunk is ignored: the
// kernels always run the recurrence token by token (the CPU's chunked form is the same function
// to rounding). Calls of up to 8 tokens (decode) split each column's sums S^T k and S^T q over 8
// warps, so they differ from the CPU's recurrent form by fp32 rounding (another summation order),
// and give the same bits however the tokens are split over such calls; longer calls (prefill) run
// the CPU's operations in its order, serially per column.
Status gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg,
                        const float* dt_bias, int64_t rows, const GatedDeltaParams& params,
                        float* state, float* out, cudaStream_t stream);

}  // namespace kestrel::cuda
