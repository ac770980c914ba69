// Host API of the GPU attention: the bf16 KV-cache write and causal / sliding-window softmax
// attention with GQA and optional softcap (kernels: attention_common.cuh; launchers:
// attention_prefill.cu, attention_decode.cu). Results are those of the CPU reference
// (Ops::kv_write / Ops::attention, src/ops/cpu/attention.cpp) run on a cache holding the
// bf16-rounded K and V and on bf16-rounded q. Plain C++: includable from .cpp files.
//
// Graph capture: the launchers take only what is fixed for a captured graph (token count,
// capacity, shapes, window, scale). Everything that moves with the position (the live keys,
// positions[T-1] + 1, and the decode split count) is read on the device from `positions`, so
// one captured decode replays correctly at every position with only device contents changed.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kestrel/status.h"
#include "ops/weight_format.h"  // Q8Block

namespace kestrel::cuda {

// One attention layer's KV cache of one sequence on the device, as KvLayerView (ops/ops.h) but
// bf16 (raw bits, round to nearest even from fp32): position p lives in slot p % capacity.
// Pointers 16-byte aligned; head dims multiples of 16, at most 512; capacity < 2^31.
struct KvCacheBf16View {
    uint16_t* k = nullptr;  // [capacity, n_kv_heads, head_dim]
    uint16_t* v = nullptr;  // [capacity, n_kv_heads, v_head_dim]
    int64_t capacity = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t v_head_dim = 0;
};

// A full-attention layer's TQ4 cache (ops/kv_tq4.h; KvLayerView with KvDtype::kTq4): each K / V
// vector of head_dim D as its bf16 norm and D 4-bit codebook indices of the rotated unit vector.
// Pointers 16-byte aligned (norms 2-byte); head_dim a multiple of 32, at most 512.
struct KvCacheTq4View {
    uint8_t* k = nullptr;             // [capacity, n_kv_heads, head_dim / 2] index bytes
    uint8_t* v = nullptr;             // [capacity, n_kv_heads, head_dim / 2]
    uint16_t* k_norm = nullptr;       // [capacity, n_kv_heads] bf16 bits
    uint16_t* v_norm = nullptr;       // [capacity, n_kv_heads] bf16 bits
    const float* rotation = nullptr;  // [head_dim, head_dim] R (tq4_rotation)
    int64_t capacity = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    // [n_kv_heads, head_dim] fp32 or null: the key centre (ops/kv_tq4.h, "Key centring"), which
    // kv_write_tq4 may set and subtracts; attention needs nothing of it.
    float* k_center = nullptr;
};

// AttentionParams (ops/ops.h) by another name, so this header needs nothing from ops.h.
struct AttentionShape {
    int64_t n_heads = 0;   // query heads; query head h reads kv head h / (n_heads / n_kv_heads)
    float scale = 1.0f;    // multiplies q·k
    int64_t window = 0;    // 0: every earlier position; W: keys k with p - W < k <= p
    float softcap = 0.0f;  // 0: none; else scores = softcap * tanh(scores / softcap)
};

// Up to this many tokens a call is decode (split-K flash-decoding over the cache); above, prefill.
constexpr int64_t kAttentionDecodeMaxTokens = 8;

// k [T, n_kv_heads, head_dim], v [T, n_kv_heads, v_head_dim] fp32 (16-byte aligned) -> cache
// slot positions[t] % capacity, rounded to bf16 (RNE, as fp32_to_bf16 in core/half.h, NaN kept).
// positions: device int64 [T]. Two tokens of one call must not share a slot (T <= capacity).
Status kv_write_bf16(const KvCacheBf16View& cache, const int64_t* positions, int64_t n_tokens, const float* k,
                     const float* v, cudaStream_t stream);

// Bytes of device workspace attention_decode needs for this shape (split-K partials, sized for
// the most splits the shape can use); allocate once (16-byte aligned) and reuse.
size_t attention_decode_workspace_bytes(int64_t n_tokens, const KvCacheBf16View& cache,
                                        const AttentionShape& shape);

// out [T, n_heads, v_head_dim] = softmax(scale * q · K^T, causal / window masked) · V for the
// queries q [T, n_heads, head_dim] at device positions [T] (consecutive, ascending, < 2^31; the
// cache already holds every key they see: kv_write_bf16 first). fp32 q and out, 16-byte aligned.
// Flash attention on tensor cores (q and the probabilities rounded to bf16, fp32 accumulation);
// KV tiles fully masked for a query tile are never loaded. Any T >= 1.
Status attention_prefill(const float* q, const int64_t* positions, int64_t n_tokens, const KvCacheBf16View& cache,
                         const AttentionShape& shape, float* out, cudaStream_t stream);

// The same for a few tokens as split-K flash-decoding: one block per (split, kv head) serves all
// query heads of that kv head, so K and V are read once; the split count follows the live length
// read on the device; the splits are combined as `combine` says (up to a few dozen live keys one
// block per kv head makes a single pass and writes the output itself). Any T >= 1 (cheap for T <=
// 8). combine: how the splits are combined. kAuto: in the decode kernel itself, through the
// distributed shared memory of a thread block cluster per (kv head, row tile), when
// attention_decode_combines_in_clusters (at most 8 splits, and the GPU holds such a cluster);
// otherwise, and with kReduceKernel always, by the second kernel. The output bits are the same.
enum class DecodeCombine { kAuto, kReduceKernel };
bool attention_decode_combines_in_clusters(int64_t n_tokens, const KvCacheBf16View& cache,
                                           const AttentionShape& shape);
// The shape's half of that (2 to 8 splits), whatever the GPU can hold: where it holds and the
// other does not, the GPU refused the clusters (the engine says so once).
bool attention_decode_cluster_shape(int64_t n_tokens, const KvCacheBf16View& cache,
                                    const AttentionShape& shape);
Status attention_decode(const float* q, const int64_t* positions, int64_t n_tokens,
                        const KvCacheBf16View& cache, const AttentionShape& shape, void* workspace,
                        float* out, cudaStream_t stream,
                        DecodeCombine combine = DecodeCombine::kAuto);

// attention_decode whose combine (the reduce kernel or the clusters) also writes the Q8 blocks
// (quantize_q8, gemv_w4a8.h) of each output row [T, n_heads * v_head_dim] to out_q8 [T, n_heads *
// v_head_dim / 32] (16-byte aligned): bit for bit attention_decode then quantize_q8, one launch
// fewer before the o-projection's GEMV. out may be null (only the Q8 blocks). v_head_dim % 32 == 0.
Status attention_decode_quantize_q8(const float* q, const int64_t* positions, int64_t n_tokens,
                                    const KvCacheBf16View& cache, const AttentionShape& shape,
                                    void* workspace, float* out, Q8Block* out_q8,
                                    cudaStream_t stream,
                                    DecodeCombine combine = DecodeCombine::kAuto);

// attention_prefill / attention_decode over a TQ4 cache, in the rotated space (techniques.md §4):
// q_rotated = R q per head (tq4_rotate_rows, kv_cache_tq4.h), and out_rotated = sum_j p_j
// norm_vj c_vj / sum_j p_j, which R^T turns back into the attention output. Both run on the bare
// levels bf16(level): a key's norm scales its score, a value's norm its probability in P V.
// Prefill dequantises each K / V tile into shared memory for the flash core (at head dim 512 on
// sm_90a, for wgmma: attention_prefill_tq4_wgmma.cu); decode
// (attention_decode_tq4.cu) builds its mma operands in registers from the index bytes, with the
// 8 query heads of a kv head as the mma's n. Decode's workspace:
// attention_decode_tq4_workspace_bytes.
Status attention_prefill_tq4(const float* q_rotated, const int64_t* positions, int64_t n_tokens,
                             const KvCacheTq4View& cache, const AttentionShape& shape,
                             float* out_rotated, cudaStream_t stream);
Status attention_decode_tq4(const float* q_rotated, const int64_t* positions, int64_t n_tokens,
                            const KvCacheTq4View& cache, const AttentionShape& shape,
                            void* workspace, float* out_rotated, cudaStream_t stream);

// Bytes of device workspace attention_decode_tq4 needs (its split plan fills
// kTq4DecodeBlocksPerSm blocks per SM).
size_t attention_decode_tq4_workspace_bytes(int64_t n_tokens, const KvCacheTq4View& cache,
                                            const AttentionShape& shape);

// The bf16 view of the same shape (k, v pointing at the index bytes): what the kernels' argument
// checks and shapes are computed from.
inline KvCacheBf16View tq4_shadow_view(const KvCacheTq4View& cache) {
    return KvCacheBf16View{reinterpret_cast<uint16_t*>(cache.k),
                           reinterpret_cast<uint16_t*>(cache.v),
                           cache.capacity,
                           cache.n_kv_heads,
                           cache.head_dim,
                           cache.head_dim};
}

// The engine's entry points: decode for n_tokens <= kAttentionDecodeMaxTokens, else prefill.
inline size_t attention_workspace_bytes(int64_t n_tokens, const KvCacheBf16View& cache, const AttentionShape& shape) {
    return n_tokens <= kAttentionDecodeMaxTokens ? attention_decode_workspace_bytes(n_tokens, cache, shape) : 0;
}

inline Status attention(const float* q, const int64_t* positions, int64_t n_tokens, const KvCacheBf16View& cache,
                        const AttentionShape& shape, void* workspace, float* out, cudaStream_t stream) {
    if (n_tokens <= kAttentionDecodeMaxTokens) {
        return attention_decode(q, positions, n_tokens, cache, shape, workspace, out, stream);
    }
    return attention_prefill(q, positions, n_tokens, cache, shape, out, stream);
}

}  // namespace kestrel::cuda
