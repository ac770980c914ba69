// The attention inputs of one decode token, done inside the decode attention kernel
// (attention_decode.cu's fused-inputs kernels; host API attention_decode_fused_inputs_quantize_q8
// in attention_inputs.h). attention_inputs_kernel (attention_inputs.cu) normalises and rotates the
// token's q and k rows, normalises v and writes k and v to the cache, one launch between the
// q | k | v GEMV and the attention. Here flash_attend's blocks do it themselves: each block builds
// its own query rows from the raw q, and the block whose keys hold the token's own key builds that
// key's k and v rows, writes them to the cache for the steps after, and puts them into its K/V
// tile in shared memory (the tile's copy of that cache slot may predate the write). Every value is
// attention_inputs_kernel's bit for bit: the same device functions in the same order
// (load_row_chunks and row_inv_rms<32> = load_row_inv_rms<32>, normalise_chunk, rope_cos_sin,
// rotate_pair, bf16 rounding to nearest even).
//
// Layout: a warp owns a row, lane l the float4 chunks c = l + 32 k, k < kChunks = head_dim / 128.
// Gemma's pairs (j, j + head_dim / 2) then lie in one lane: j in chunk l + 32 k for k < kChunks /
// 2, j + head_dim / 2 in chunk l + 32 (k + kChunks / 2). So head dims 256 (kChunks 2) and 512 (4).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/small_ops.cuh"

namespace kestrel::cuda {

// One token's raw k and v rows and what attention_inputs does to them and to q (AttentionInputs,
// attention_inputs.h); the kernel's AttentionKernelArgs::q holds the token's raw q rows.
struct DecodeInputsArgs {
    const float* k_raw = nullptr;   // [n_kv_heads, head_dim]
    const float* v_raw = nullptr;   // [n_kv_heads, head_dim]; not read with v_from_raw_k
    const float* q_norm = nullptr;  // [head_dim] QK-norm weights; null: none
    const float* k_norm = nullptr;
    uint16_t* k_cache = nullptr;  // AttentionKernelArgs' caches, to write the token's rows
    uint16_t* v_cache = nullptr;
    float eps = 1e-6f;
    int rotary_pairs = 0;  // pairs (j, j + head_dim / 2) rotate for j < rotary_pairs
    bool v_from_raw_k = false;
    bool v_norm = false;
    bool q_norm_vec4 = false;  // 16-byte aligned: float4 loads (the values do not depend on it)
    bool k_norm_vec4 = false;
    // inv_freq [rotary_pairs] in device memory (rope_inv_freq, attention_inputs.h; CudaOps keeps
    // one table per layer kind). Not measured against attention_inputs_kernel's way, the 1 KiB
    // RopeTable by value, with this kernel's final code: with the earlier unrolled fill that was
    // 0.4 tok/s faster (bench/results/2026-11-25-h100-decode-what-ifs.md).
    const float* inv_freq = nullptr;
};

// cos and sin of pairs j < rotary_pairs into rotations[j], the whole block sharing the work (a
// thread per pair), before the wait: attention_inputs_kernel's table. Computed per lane instead
// (each lane its own pairs, one after another) they made the decode kernel slower than the two
// launches it replaces, more so at depth, where the angles are large.
template <int kThreads>
__device__ __forceinline__ void decode_input_rotations(const DecodeInputsArgs& in, int64_t position,
                                                       float2* rotations) {
#pragma unroll 1
    for (int j = static_cast<int>(threadIdx.x); j < in.rotary_pairs; j += kThreads) {
        float c, s;
        rope_cos_sin(position, in.inv_freq[j], c, s);
        rotations[j] = make_float2(c, s);
    }
}

// attention_inputs' norm_rope_row, lane-local: x = normalise_chunk(x, inv_rms, weight), then the
// lane's pairs j < rotary_pairs turned by rotations[j] (cos, sin).
template <int kChunks>
__device__ __forceinline__ void decode_input_norm_rope(float4 (&x)[kChunks], float inv_rms,
                                                       const float4 (&weight)[kChunks],
                                                       bool has_weight, int rotary_pairs,
                                                       const float2* rotations, int lane) {
#pragma unroll
    for (int k = 0; k < kChunks; ++k) x[k] = normalise_chunk(x[k], inv_rms, weight[k], has_weight);
#pragma unroll
    for (int k = 0; k < kChunks / 2; ++k) {
        const int j = 4 * (lane + 32 * k);
        float4& first = x[k];
        float4& second = x[k + kChunks / 2];
        if (j < rotary_pairs) rotate_pair(first.x, second.x, rotations[j].x, rotations[j].y);
        if (j + 1 < rotary_pairs)
            rotate_pair(first.y, second.y, rotations[j + 1].x, rotations[j + 1].y);
        if (j + 2 < rotary_pairs)
            rotate_pair(first.z, second.z, rotations[j + 2].x, rotations[j + 2].y);
        if (j + 3 < rotary_pairs)
            rotate_pair(first.w, second.w, rotations[j + 3].x, rotations[j + 3].y);
    }
}

// What the kv_write and attention_inputs' cache rows hold: bf16_bits of each value.
__device__ __forceinline__ uint2 decode_input_bf16_chunk(float4 y) {
    return make_uint2(bf16_bits(y.x) | (bf16_bits(y.y) << 16),
                      bf16_bits(y.z) | (bf16_bits(y.w) << 16));
}

// The block's part of the token's inputs, after the wait: query rows [row0, row0 + kRows) of
// kv_head (T = 1: packed row p is query head kv_head * group + p) normalised, rotated and rounded
// into q_s as flash_attend's own Q tile fill rounds them (rows past the call are zeros); with
// has_new also the kv head's k and v rows, written to the cache slot `position` % capacity and
// left, as bf16 chunks, in new_row of warp 0 (k) and warp 1 (v) for the tile; rotations: the
// table decode_input_rotations wrote (shared memory, published by a barrier). Work items: the k
// and v rows (has_new), then the query rows, item i on warp i % kWarps, one after another (a
// sliding layer's block has at most one item a warp; a full layer's, with 8 query heads a kv head,
// up to three). q_weight / k_weight: the lane's chunks of the norm weights.
template <int kChunks, int kRows, int kStride, int kWarps, class Args>
__device__ __forceinline__ void decode_inputs_fill(const Args& a, const DecodeInputsArgs& in,
                                                   int kv_head, int row0, bool has_new,
                                                   int64_t position, const float2* rotations,
                                                   const float4 (&q_weight)[kChunks],
                                                   const float4 (&k_weight)[kChunks], uint16_t* q_s,
                                                   uint2 (&new_row)[kChunks]) {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int warp = static_cast<int>(threadIdx.x) >> 5;
    const int real_rows = min(kRows, a.n_tokens * a.group - row0);
    const int kv_items = has_new ? 2 : 0;
    const int items = kv_items + real_rows;
    const int64_t kv_offset = static_cast<int64_t>(kv_head) * a.head_dim;
    const int64_t cache_offset =
        has_new ? (position % a.capacity) * a.n_kv_heads * a.head_dim + kv_offset : 0;
    // Not unrolled, so the code is one item long. Unrolled over the most items a warp can have
    // (five), with every load issued first, the kernel had 13384 instructions against the plain
    // decode kernel's 7856, and Gemma 4 31B decoded at 134.2 tok/s against 135.0 with the two
    // launches; one item at a time, 8912 instructions and 135.6 (H100, tg128 @ d512). Likely why,
    // not profiled: the kernel starts cold on every layer, after the layer's weights have
    // streamed through L2, and fetches its code.
#pragma unroll 1
    for (int item = warp; item < items; item += kWarps) {  // warp-uniform: whole-warp shuffles
        const bool is_q = item >= kv_items;
        const bool is_v = item == 1 && !is_q;
        const float* row = is_q ? a.q + static_cast<int64_t>(kv_head * a.group +
                                                             (row0 + item - kv_items) % a.group) *
                                            a.head_dim
                           : is_v && !in.v_from_raw_k ? in.v_raw + kv_offset
                                                      : in.k_raw + kv_offset;
        float4 x[kChunks];
        load_row_chunks<32, kChunks>(row, a.head_dim, true, lane, x);
        const float inv_rms = row_inv_rms<32, kChunks>(x, a.head_dim, in.eps, lane, nullptr);
        if (!is_v || in.v_norm) {
            float4 weight[kChunks];
#pragma unroll
            for (int k = 0; k < kChunks; ++k) weight[k] = is_q ? q_weight[k] : k_weight[k];
            const bool has_weight = is_q ? in.q_norm != nullptr : !is_v && in.k_norm != nullptr;
            decode_input_norm_rope(x, inv_rms, weight, has_weight, is_v ? 0 : in.rotary_pairs,
                                   rotations, lane);
        }
        if (is_q) {
            uint16_t* q_row = q_s + (item - kv_items) * kStride;
#pragma unroll
            for (int k = 0; k < kChunks; ++k) {
                // flash_attend's pack_bf16x2 (attention_common.cuh): RNE, .x in the low half.
                const __nv_bfloat162 lo = __floats2bfloat162_rn(x[k].x, x[k].y);
                const __nv_bfloat162 hi = __floats2bfloat162_rn(x[k].z, x[k].w);
                *reinterpret_cast<uint2*>(q_row + 4 * (lane + 32 * k)) =
                    make_uint2(*reinterpret_cast<const uint32_t*>(&lo),
                               *reinterpret_cast<const uint32_t*>(&hi));
            }
        } else {
            uint16_t* cache_row = (is_v ? in.v_cache : in.k_cache) + cache_offset;
#pragma unroll
            for (int k = 0; k < kChunks; ++k) {
                new_row[k] = decode_input_bf16_chunk(x[k]);
                reinterpret_cast<uint2*>(cache_row)[lane + 32 * k] = new_row[k];
            }
        }
    }
    // Rows past the call: zeros, as the plain fill leaves them.
    constexpr int kQuads = kChunks * 32;
    for (int i = real_rows * kQuads + static_cast<int>(threadIdx.x); i < kRows * kQuads;
         i += kWarps * 32) {
        *reinterpret_cast<uint2*>(q_s + (i / kQuads) * kStride + (i % kQuads) * 4) =
            make_uint2(0u, 0u);
    }
}

}  // namespace kestrel::cuda
