// Host API of the Gated DeltaNet kernels (gated_delta.cu, gated_delta_chunked.cu): Qwen3.5's
// "linear_attention" layers between the stacked in-projection and the gated norm. Each mirrors the
// Ops method of the same name (ops/ops.h) and its CPU twin (ops/cpu/conv1d.cpp,
// ops/cpu/gated_delta.cpp), which tests/unit/cuda_gated_delta_test.cpp holds them to. Plain C++:
// includable from .cpp files.
//
// All pointers are device pointers. Launchers only launch: they never synchronise, allocate or
// copy and do not branch on device values, so a captured CUDA graph replays them. Arguments are
// checked on the host (kInvalidArgument).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
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

// Tokens per chunk of gated_delta_rule's chunked form (HF torch_chunk_gated_delta_rule's 64).
constexpr int64_t kGdnChunk = 64;
// Calls of at least this many tokens, with dk <= kGdnChunkedMaxKeyDim and scratch, take the
// chunked form: one chunk is two launches of parallel 64-token matrix products, where the
// token-by-token kernel runs 64 serial steps of 2 dk dependent adds (measured ~5 us per token at
// Qwen3.5's shapes on an H100). The crossover itself has not been timed yet.
constexpr int64_t kGdnChunkedMinRows = kGdnChunk;
// The largest key head dimension of the chunked form (Qwen3.5: 128): its scan kernel holds 64
// tokens' q and k rows of kMaxDk floats and the state's columns in shared memory (88 KiB at 128).
constexpr int64_t kGdnChunkedMaxKeyDim = 128;

// Scratch bytes gated_delta_rule needs for a call of `rows` tokens: 0 where it takes the recurrent
// kernels (rows < kGdnChunkedMinRows, or dk > kGdnChunkedMaxKeyDim), else
// gated_delta_chunked_scratch_bytes(rows, params.n_v_heads).
size_t gated_delta_scratch_bytes(int64_t rows, const GatedDeltaParams& params);
// The chunked form's scratch for `rows` tokens, any rows >= 1: per value head and chunk of 64
// tokens, T and QK (64 x 64 floats each) and 4 floats per token (G, beta and the norms' inverses):
//   n_v_heads * ceil(rows / 64) * (2 * 64 * 64 + 4 * 64) * 4 bytes   (34.6 MB at 2048 tokens, 32
//   value heads).
size_t gated_delta_chunked_scratch_bytes(int64_t rows, int64_t n_v_heads);

// One Gated DeltaNet core over `rows` tokens (Ops::gated_delta_rule), continuing and updating
// `state`:
//   q, k = l2norm(q), l2norm(k) (eps 1e-6);  q *= dk^-0.5
//   beta = sigmoid(b);  g = a_neg * softplus(a + dt_bias)
//   per value head: S = exp(g_t) S;  S += k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t
// qkv [rows, 2 * n_k_heads * dk + n_v_heads * dv] (q | k | v), a, b [rows, n_v_heads],
// a_neg, dt_bias [n_v_heads], state fp32 [n_v_heads, dk, dv] (S[h][i][j]), in place;
// out [rows, n_v_heads, dv] (must not overlap the inputs or the state).
// n_v_heads a multiple of n_k_heads; 1 <= dk <= kMaxGdnKeyDim; value head h reads key head
// params.order (kGrouped: h / (n_v / n_k); kTiled: h % n_k). params.chunk is ignored: the kernel
// is picked by the call's shape, and every form is the same function to fp32 rounding.
//   - rows <= 8 (decode): the recurrence token by token, each column's sums S^T k and S^T q split
//     over 8 warps; it differs from the CPU's recurrent form by fp32 rounding (another summation
//     order) and gives the same bits however the tokens are split over such calls.
//   - rows >= kGdnChunkedMinRows, dk <= kGdnChunkedMaxKeyDim and a scratch of
//     gated_delta_scratch_bytes(rows, params) bytes (16-byte aligned): the chunked (WY) form in
//     chunks of kGdnChunk tokens from the call's first token (gated_delta_chunked.cu); it differs
//     from the CPU's chunked form (chunk 64) by fp32 rounding.
//   - otherwise (also long calls without scratch): the recurrence token by token, one warp per 32
//     columns running the CPU recurrent form's operations in its order, serially per column.
// The state is read at the start and written at the end, so calls of any kinds continue one
// another (a prompt in several calls, then decode).
Status gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg,
                        const float* dt_bias, int64_t rows, const GatedDeltaParams& params,
                        float* state, float* out, cudaStream_t stream, void* scratch = nullptr,
                        size_t scratch_bytes = 0);

// gated_delta_rule's chunked form alone, for any rows >= 0 and dk <= kGdnChunkedMaxKeyDim (the
// dispatch above takes it from kGdnChunkedMinRows tokens; tests reach short and odd calls here).
// scratch: gated_delta_chunked_scratch_bytes(rows, params.n_v_heads) bytes, 16-byte aligned.
Status gated_delta_rule_chunked(const float* qkv, const float* a, const float* b,
                                const float* a_neg, const float* dt_bias, int64_t rows,
                                const GatedDeltaParams& params, float* state, float* out,
                                void* scratch, size_t scratch_bytes, cudaStream_t stream);

}  // namespace kestrel::cuda
