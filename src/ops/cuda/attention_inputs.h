// Host API of the fused attention-input kernel (attention_inputs.cu): everything a Gemma 3 / 4
// or Qwen3.5 full-attention layer does between the stacked q|k|v projection and attention, in
// one launch instead of five (copy raw k -> v, head_norm_rope(q), head_norm_rope(k), rms_norm(v),
// kv_write_bf16; Qwen3.5: rms_norm(q), rms_norm(k), rope_neox_partial(q), rope_neox_partial(k),
// kv_write_bf16). In a captured decode graph each launch costs a few microseconds, more than this
// work itself. Plain C++: includable from .cpp files.
//
// Bit for bit the composition of the existing launchers (small_ops.h, attention.h):
//   if v_from_raw_k: cudaMemcpyAsync(v, k)
//   if partial_rotary_dim == 0:
//     head_norm_rope(q, q_norm, positions, T, n_heads, head_dim, rotary_pairs, eps, theta)
//     head_norm_rope(k, k_norm, positions, T, n_kv_heads, head_dim, rotary_pairs, eps, theta)
//   else:
//     rms_norm(q, q_norm, T * n_heads, head_dim, eps, q), and k with k_norm
//     rope_neox_partial(q, positions, T, n_heads, head_dim, partial_rotary_dim, theta), and k
//   if v_norm: rms_norm(v, nullptr, T * n_kv_heads, head_dim, eps, v)
//   kv_write_bf16(cache, positions, T, k, v)
// tests/unit/cuda_attention_inputs_test.cpp holds it to that composition and to the CPU twin
// (make_cpu_ops(): head_norm_rope or rms_norm + rope_neox_partial, rms_norm, kv_write, then
// fp32_to_bf16).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kestrel/status.h"
#include "ops/cuda/attention.h"  // KvCacheBf16View

namespace kestrel::cuda {

// One layer's attention inputs for T tokens; all pointers are device pointers.
struct AttentionInputs {
    float* q = nullptr;             // [T, n_heads, head_dim] fp32, in place
    float* k = nullptr;             // [T, n_kv_heads, head_dim] fp32, in place
    float* v = nullptr;             // [T, n_kv_heads, head_dim] fp32, in place
    const float* q_norm = nullptr;  // [head_dim] QK-norm weights (null: no weight)
    const float* k_norm = nullptr;
    bool v_from_raw_k = false;  // Gemma 4 K=V layers: v = the raw k (before k's norm and RoPE); v's
                                // input is ignored
    bool v_norm = false;        // Gemma 4: v = rms_norm(v) without weight; Gemma 3: v untouched
    int64_t n_heads = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;  // multiple of 16, at most kMaxAttentionInputsHeadDim
    int64_t rotary_pairs =
        0;  // RoPE rotates pairs (j, j + head_dim / 2) for j < rotary_pairs (<= head_dim / 2)
    float eps = 1e-6f;
    double theta = 10000.0;  // inv_freq[j] = theta^(-2j / head_dim)
    // 0: the pairing above. > 0 (even, <= head_dim; Qwen3.5: 64 of 256): rotate-half within the
    // first partial_rotary_dim values, pairs (j, j + partial_rotary_dim / 2) for
    // j < partial_rotary_dim / 2, inv_freq[j] = theta^(-2j / partial_rotary_dim); rotary_pairs is
    // not used.
    int64_t partial_rotary_dim = 0;
};

constexpr int64_t kMaxAttentionInputsHeadDim = 512;

// positions: device int64 [n_tokens], slot = position % cache.capacity (two tokens must not share
// a slot). A cache with null k and v: q, k and v are updated in place and no cache is written
// (a TQ4 layer's write, kv_write_tq4, follows). The cache must match the shape: n_kv_heads,
// head_dim == v_head_dim == inputs.head_dim. q, k, v and the cache 16-byte aligned. One launch:
// never synchronises, allocates or copies, so it can be captured into a CUDA graph and replayed
// with new device positions.
Status attention_inputs(const AttentionInputs& inputs, const int64_t* positions, int64_t n_tokens,
                        const KvCacheBf16View& cache, cudaStream_t stream);

// RoPE's inv_freq[j] = 1 / theta^(2j / frequency_dim), j < n_pairs, in fp32: attention_inputs'
// own table (small_ops.cuh make_rope_table), for a device copy.
std::vector<float> rope_inv_freq(int64_t n_pairs, int64_t frequency_dim, double theta);

// attention_inputs for one token, then attention_decode_quantize_q8 (attention.h) over its rows,
// in the decode kernel's one launch (attention_decode_inputs.cuh): no launch, and no round trip
// of the rows through memory, between the q | k | v projection and the attention. inputs.q, k and
// v hold the raw rows and are left as they are (the normalised rows exist only inside the
// kernel); the cache gets the token's k and v rows, out (may be null) and out_q8 the attention's
// rows. Bit for bit attention_inputs then attention_decode_quantize_q8 (the rows of q, k and v
// aside). inv_freq: device memory holding rope_inv_freq(inputs.rotary_pairs, inputs.head_dim,
// inputs.theta) (may be null when no pair rotates).
// Takes the calls attention_decode_fuses_inputs accepts: one token, Gemma's RoPE pairing
// (partial_rotary_dim 0), head dim 256 or 512 for q, k, v and the cache alike, a bf16 cache;
// KESTREL_DECODE_FUSED_INPUTS=0 in the environment accepts none (to measure the two launches).
bool attention_decode_fuses_inputs(const AttentionInputs& inputs, int64_t n_tokens,
                                   const KvCacheBf16View& cache);
Status attention_decode_fused_inputs_quantize_q8(const AttentionInputs& inputs,
                                                 const float* inv_freq, const int64_t* positions,
                                                 const KvCacheBf16View& cache,
                                                 const AttentionShape& shape, void* workspace,
                                                 float* out, Q8Block* out_q8, cudaStream_t stream,
                                                 DecodeCombine combine = DecodeCombine::kAuto);

// attention_decode_fused_inputs_quantize_q8's work for Gemma 4's sliding layers, on warps that
// each own 8 keys instead of the flash kernel's tiles (attention_decode_warp_keys.cu): one launch
// of 4- to 8-block clusters (6 on the H100), one cluster per kv head, no workspace. The token's k
// and v rows go to the cache bit for bit as attention_inputs writes them; out (may be null) is
// softmax(scale q . K, softcap) V over the keys the token sees, with q normalised, rotated and
// rounded to bf16 as attention_inputs then the attention do it, and fp32 scores, probabilities and
// sums (the flash kernels round the probabilities to bf16, so the bits differ from theirs); out_q8
// holds quantize_q8 of those rows, bit for bit. Takes what attention_decode_warp_keys_applies
// accepts: attention_decode_fuses_inputs' calls with head dim 256, two query heads per kv head, a
// sliding window of 1 to kWarpKeysMaxKeys keys, and a GPU that holds a cluster per kv head at once
// (the shape alone: attention_decode_warp_keys_shape; where it holds and the GPU does not, the GPU
// refused the clusters and the engine says so once).
constexpr int64_t kWarpKeysMaxKeys = 1024;
bool attention_decode_warp_keys_shape(const AttentionInputs& inputs, const KvCacheBf16View& cache,
                                      const AttentionShape& shape);
bool attention_decode_warp_keys_applies(const AttentionInputs& inputs, const KvCacheBf16View& cache,
                                        const AttentionShape& shape);
Status attention_decode_warp_keys_quantize_q8(const AttentionInputs& inputs, const float* inv_freq,
                                              const int64_t* positions,
                                              const KvCacheBf16View& cache,
                                              const AttentionShape& shape, float* out,
                                              Q8Block* out_q8, cudaStream_t stream);

}  // namespace kestrel::cuda
