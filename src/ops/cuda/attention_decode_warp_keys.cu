// One decode token's attention for Gemma 4's sliding layers, with its attention inputs, on warps
// that own keys (host API: attention_decode_warp_keys_quantize_q8, attention_inputs.h).
//
// Why not the flash decode kernel (attention_decode.cu): at depth 512 it adds 11.5 us to each
// sliding layer, whose ~9.4 MB of K and V take ~3.1 us at 3 TB/s; this one adds ~9 us and took
// Gemma 4 31B from 137.5 to 140.0 tok/s (bench/results/2026-11-25-h100-warp-keys-attention.md).
// Under ncu it is a serial chain with one warp per scheduler: K/V tiles issued 16 bytes a thread, a
// barrier per tile, the mma fragments (bench/results/2026-11-25-h100-decode-step-bounds.md). A
// token's attention over at most a window of keys needs none of that: every warp loads its 8 keys'
// K and V rows at entry, before the wait, so all of a layer's bytes are in flight at once and the
// chain after the wait is short arithmetic.
//
// Grid: (splits, n_kv_heads) in clusters of `splits` blocks (gridDim.x: warp_keys_splits), one
// cluster per kv head; block = kWarps warps. The token's live keys [lo, hi) are cut into `splits`
// ranges of whole 8-key batches; batch b of warp w in a range starting at `begin` is the keys
// begin + 8 (b kWarps + w) + j, j < 8 (one batch a warp up to 768 keys at 6 splits; a window of
// 1024 takes two on some warps). Lane l holds dims [4l, 4l + 4) and [128 + 4l, 128 + 4l + 4) of
// every row: attention_decode_inputs.cuh's chunks, where Gemma's RoPE pairs (j, j + 128) are
// lane-local, so a K or V row is two coalesced 256-byte warp loads. A batch's K rows go to
// registers, its V rows by cp.async to the warp's part of shared memory (both in registers
// spilled at 128 registers a thread).
//   1. Before the wait: the split plan from the positions; the K and V rows of the first batch's
//      keys older than the token (no kernel of the step writes them: launch.cuh's contract), and
//      an L2 prefetch of later batches'; the norm weights; the RoPE table.
//   2. After it: warps 0 and 1 build the two query rows from the raw q, and in the block whose
//      keys hold the token's own key warps 2 and 3 build that key's k and v rows and write them to
//      the cache; the rows reach every warp through shared memory. attention_inputs' functions
//      in its order, so the cache rows are its bits and q is what the flash kernels' Q tile holds
//      (rounded to bf16). Each warp building both query rows itself, and the key's warp its k
//      and v rows after them (so the key's block chained four rows), with the constants' loads
//      after the rows' instead of before: 138.1 tok/s against 139.0 (H100, tg128 @ d512, same
//      machine).
//   3. Scores: each lane's 16 partial dot products (8 keys x 2 query heads) are summed across the
//      warp by a transposing butterfly, 16 shuffles, that leaves the score of key l / 4, query
//      head (l / 2) % 2 in lane l (and l ^ 1).
//   4. Online softmax in base 2 (as flash_attend: scale, softcap, log2 e), P V in fp32: each
//      probability is shuffled to every lane, which adds it times its V columns.
//   5. Combine: the warps' partials (m, l, O) through shared memory into the block's, thread t
//      holding column t % 256 of head t / 256, so warp w holds column group w; it pushes the
//      group by st.async into the shared memory of the rank that combines it (w % splits),
//      counted on that rank's mbarrier; each rank's warp i waits for its item i's partials from
//      every split, combines them in the reduce kernel's formula and writes out and its Q8 block
//      (quantize_q8_warp). Against pulling the partials through distributed shared memory
//      between two cluster barriers (a release one, which compiles to MEMBAR.ALL.GPU, and one
//      at exit): H100, Gemma 4 31B tg128 @ d512, same machine, 3 rounds: 138.85 / 139.02 /
//      138.91 -> 139.37 / 139.24 / 139.20 tok/s; d32768 119.16 -> 119.65.
#include <cstdint>
#include <string>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_common.cuh"  // attention_first_visible, attention_aligned16
#include "ops/cuda/attention_decode_inputs.cuh"
#include "ops/cuda/attention_inputs.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/small_ops.cuh"

namespace kestrel::cuda {
namespace {

constexpr int kHeadDim = 256;
constexpr int kGroup = 2;  // query heads per kv head
constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kBatchKeys = 8;            // keys a warp holds at once
constexpr int kChunks = kHeadDim / 128;  // float4 chunks a lane holds of a row
// Splits a kv head: the portable cluster size if the GPU holds a cluster per kv head at once,
// else fewer (warp_keys_splits). The H100 holds 15 clusters of 8 one-block-per-SM blocks (one
// GPC holds 1), 17 of 6: Gemma 4's 16 kv heads take 6.
constexpr int kMaxSplits = 8;
constexpr int kColumnGroups = kGroup * kHeadDim / 32;  // 32-column groups (Q8 blocks) of the rows
constexpr int kMinSplits = 4;
constexpr int kMaxItems = (kColumnGroups + kMinSplits - 1) / kMinSplits;  // groups a rank combines
constexpr int kSharedBytes = kWarps * kBatchKeys * kHeadDim * 2;  // the warps' V rows, 64 KiB
constexpr float kLog2e = 1.4426950408889634f;

struct WarpKeysArgs {
    const float* q = nullptr;  // raw [n_heads, 256]
    const int64_t* positions = nullptr;
    float* out = nullptr;  // may be null
    Q8Block* out_q8 = nullptr;
    int capacity = 0;
    int n_kv_heads = 0;
    int window = 0;
    float scale = 1.0f;
    float softcap = 0.0f;
};

// The lane's two 4-element chunks of one K or V row (bf16 pairs, low half first).
struct RowPiece {
    uint2 chunk[kChunks];
};

__device__ __forceinline__ float4 bf16x4_to_float4(uint2 bits) {
    return make_float4(__uint_as_float(bits.x << 16), __uint_as_float(bits.x & 0xffff0000u),
                       __uint_as_float(bits.y << 16), __uint_as_float(bits.y & 0xffff0000u));
}

__device__ __forceinline__ float4 round_to_bf16(float4 x) {
    return bf16x4_to_float4(decode_input_bf16_chunk(x));
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float sum) {
    sum = fmaf(a.x, b.x, sum);
    sum = fmaf(a.y, b.y, sum);
    sum = fmaf(a.z, b.z, sum);
    return fmaf(a.w, b.w, sum);
}

// ---- the push combine's cluster operations (PTX ISA: mbarrier, st.async, mapa, barrier.cluster)

// Arms `bar` for one phase that completes when `bytes` have landed on it (one arrival: this one),
// and makes the initialisation visible to the cluster's st.async before the cluster barrier.
__device__ __forceinline__ void init_receive_bar(uint64_t& bar, int bytes) {
    const uint32_t address = shared_address(&bar);
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(address) : "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(address), "r"(bytes)
                 : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}

// The shared::cluster address of `local`'s twin in block `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_address(const void* local, int rank) {
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
                 : "=r"(remote)
                 : "r"(shared_address(local)), "r"(rank));
    return remote;
}

// Stores to another block's shared memory, counted on its mbarrier (complete_tx, bytes).
__device__ __forceinline__ void store_async(uint32_t remote, float value, uint32_t remote_bar) {
    asm volatile(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];" ::"r"(remote),
        "f"(value), "r"(remote_bar)
        : "memory");
}
__device__ __forceinline__ void store_async(uint32_t remote, float x, float y,
                                            uint32_t remote_bar) {
    asm volatile(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];" ::"r"(
            remote),
        "f"(x), "f"(y), "r"(remote_bar)
        : "memory");
}

__device__ __forceinline__ void wait_parity(uint64_t& bar, uint32_t parity) {
    asm volatile(
        "{\n\t.reg .pred done;\n"
        "wait_%=:\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra wait_%=;\n}" ::"r"(shared_address(&bar)),
        "r"(parity)
        : "memory");
}

// 8 bytes global -> shared, asynchronously; `valid` false writes 8 zero bytes instead.
__device__ __forceinline__ void cp_async_8(void* shared, const void* global, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(shared_address(shared)),
                 "l"(global), "r"(valid ? 8 : 0)
                 : "memory");
}

// The K rows (into registers) and V rows (into the warp's v_rows, by cp.async: registers for
// both spilled) of batch keys [key0, key0 + n_valid) that are older than the token; zeros for the
// rest (the token's own key is filled in later, keys past n_valid are masked).
__device__ __forceinline__ void load_batch(const DecodeInputsArgs& in, const WarpKeysArgs& a,
                                           int kv_head, int key0, int n_valid, int64_t position,
                                           RowPiece (&k)[kBatchKeys], uint16_t* v_rows) {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    // 32-bit byte offsets into the ring, stepped a slot at a time (the host keeps the ring under
    // 4 GiB): a 64-bit multiply per key's address was most of this loop's instructions.
    const int64_t head_bytes = (static_cast<int64_t>(kv_head) * kHeadDim + 4 * lane) * 2;
    const auto* k_base = reinterpret_cast<const unsigned char*>(in.k_cache) + head_bytes;
    const auto* v_base = reinterpret_cast<const unsigned char*>(in.v_cache) + head_bytes;
    const uint32_t slot_bytes = static_cast<uint32_t>(a.n_kv_heads) * kHeadDim * 2;
    const uint32_t ring_bytes = static_cast<uint32_t>(a.capacity) * slot_bytes;
    uint32_t offset = static_cast<uint32_t>(key0 % a.capacity) * slot_bytes;
#pragma unroll
    for (int j = 0; j < kBatchKeys; ++j) {
        const bool old = j < n_valid && key0 + j < position;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
            k[j].chunk[c] = old ? __ldg(reinterpret_cast<const uint2*>(k_base + offset + 256 * c))
                                : make_uint2(0u, 0u);
            cp_async_8(v_rows + j * kHeadDim + 4 * lane + 128 * c,
                       old ? v_base + offset + 256 * c : v_base, old);
        }
        offset += slot_bytes;
        if (offset == ring_bytes) offset = 0;
    }
    cp_async_commit();
}

// One step of attend_batch's transposing butterfly over 2 kHalf partial sums: with its partner
// at offset 2 kHalf, a lane keeps one half of the indices (the upper where its bit of that offset
// is set) and adds the partner's copy of that half.
template <int kHalf>
__device__ __forceinline__ void butterfly_step(const float (&in)[2 * kHalf], float (&out)[kHalf],
                                               int lane) {
    const bool upper = (lane & (2 * kHalf)) != 0;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
        const float send = upper ? in[i] : in[i + kHalf];
        const float keep = upper ? in[i + kHalf] : in[i];
        out[i] = keep + __shfl_xor_sync(kFullMask, send, 2 * kHalf);
    }
}

// A warp's running softmax state for both query heads: m in log2 units, l, and O's lane columns.
struct WarpState {
    float m[kGroup];
    float l[kGroup];
    float4 o[kGroup][kChunks];
};

// Steps 3 and 4 for one batch of n_valid keys.
__device__ __forceinline__ void attend_batch(const WarpKeysArgs& a,
                                             const float4 (&q)[kGroup][kChunks],
                                             const RowPiece (&k)[kBatchKeys],
                                             const uint16_t* v_rows, int n_valid, WarpState& st) {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    // Partial dot products, index j * 2 + h.
    float part[kBatchKeys * kGroup];
#pragma unroll
    for (int j = 0; j < kBatchKeys; ++j) {
        float4 key[kChunks];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) key[c] = bf16x4_to_float4(k[j].chunk[c]);
#pragma unroll
        for (int h = 0; h < kGroup; ++h) {
            float sum = 0.0f;
#pragma unroll
            for (int c = 0; c < kChunks; ++c) sum = dot4(q[h][c], key[c], sum);
            part[j * kGroup + h] = sum;
        }
    }
    // Transposing butterfly: at offset 16 the lanes with bit 4 set keep the upper half of the
    // indices (their partner the lower) and add the partner's copy of it; and so on down to
    // offset 2, then a plain sum with lane ^ 1. Index bit b ends up as lane bit b + 1: a lane
    // holds the score of index lane >> 1.
    float r8[8], r4[4], r2[2], r1[1];
    butterfly_step(part, r8, lane);
    butterfly_step(r8, r4, lane);
    butterfly_step(r4, r2, lane);
    butterfly_step(r2, r1, lane);
    float score = r1[0];
    score += __shfl_xor_sync(kFullMask, score, 1);

    // This lane's key and query head; scale, softcap and mask as flash_attend.
    const int key = lane >> 2;
    const int head = (lane >> 1) & 1;
    float x = score * a.scale;
    if (a.softcap > 0.0f) x = a.softcap * tanhf(x / a.softcap);
    x = key < n_valid ? x * kLog2e : -INFINITY;
    float batch_max = x;  // over the lanes of this head: bits 2-4
    batch_max = fmaxf(batch_max, __shfl_xor_sync(kFullMask, batch_max, 4));
    batch_max = fmaxf(batch_max, __shfl_xor_sync(kFullMask, batch_max, 8));
    batch_max = fmaxf(batch_max, __shfl_xor_sync(kFullMask, batch_max, 16));
    // New max; a head that has seen no key keeps m = -inf and uses 0 as its reference, so its P
    // and its rescale factor are exact zeros instead of NaN.
    float reference[kGroup];
    float alpha[kGroup];
#pragma unroll
    for (int h = 0; h < kGroup; ++h) {
        const float m_new = fmaxf(st.m[h], __shfl_sync(kFullMask, batch_max, 2 * h));
        reference[h] = m_new == -INFINITY ? 0.0f : m_new;
        alpha[h] = exp2f(st.m[h] - reference[h]);
        st.m[h] = m_new;
    }
    const float p = exp2f(x - (head == 0 ? reference[0] : reference[1]));
    float batch_sum = p;
    batch_sum += __shfl_xor_sync(kFullMask, batch_sum, 4);
    batch_sum += __shfl_xor_sync(kFullMask, batch_sum, 8);
    batch_sum += __shfl_xor_sync(kFullMask, batch_sum, 16);
#pragma unroll
    for (int h = 0; h < kGroup; ++h) {
        st.l[h] = st.l[h] * alpha[h] + __shfl_sync(kFullMask, batch_sum, 2 * h);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) st.o[h][c] = chunk_times(st.o[h][c], alpha[h]);
    }
    // O += P V: key j's probability for head h sits in lane 4 j + 2 h.
#pragma unroll
    for (int j = 0; j < kBatchKeys; ++j) {
        float4 value[kChunks];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
            value[c] = bf16x4_to_float4(
                *reinterpret_cast<const uint2*>(v_rows + j * kHeadDim + 4 * lane + 128 * c));
        }
#pragma unroll
        for (int h = 0; h < kGroup; ++h) {
            const float pj = __shfl_sync(kFullMask, p, 4 * j + 2 * h);
#pragma unroll
            for (int c = 0; c < kChunks; ++c) {
                st.o[h][c].x = fmaf(pj, value[c].x, st.o[h][c].x);
                st.o[h][c].y = fmaf(pj, value[c].y, st.o[h][c].y);
                st.o[h][c].z = fmaf(pj, value[c].z, st.o[h][c].z);
                st.o[h][c].w = fmaf(pj, value[c].w, st.o[h][c].w);
            }
        }
    }
}

__global__ void __launch_bounds__(kThreads, 1)
    attention_decode_warp_keys_kernel(WarpKeysArgs a, DecodeInputsArgs in) {
    // Each warp's V rows, then (same bytes, once read) its partial O [kGroup][kHeadDim].
    extern __shared__ __align__(16) unsigned char shared[];
    __shared__ float2 rotations[kHeadDim / 2];
    __shared__ float4 q_rows[kGroup][kChunks][32];  // lane l's chunks of the query rows
    __shared__ uint2 new_rows[2][kChunks][32];      // the token's k and v rows, bf16
    __shared__ float warp_m[kWarps][kGroup];
    __shared__ float warp_l[kWarps][kGroup];
    // What this block combines: item i (column group i * splits + split) of every split.
    __shared__ float receive_o[kMaxItems][kMaxSplits][32];
    __shared__ float2 receive_ml[kMaxItems][kMaxSplits];  // (m, l) of the item's head
    __shared__ __align__(8) uint64_t receive_bar;

    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int warp = static_cast<int>(threadIdx.x) >> 5;
    static_assert(kThreads >= kHeadDim / 2, "a thread per rotating pair");
    const int split = static_cast<int>(blockIdx.x);  // the cluster rank: grid.x = cluster size
    const int splits = static_cast<int>(gridDim.x);
    const int kv_head = static_cast<int>(blockIdx.y);

    // The mbarrier the splits' partials land on, initialised and armed for them before the
    // cluster barrier's arrive (its wait comes before the first send).
    if (threadIdx.x == 0) {
        const int items = (kColumnGroups - split + splits - 1) / splits;
        init_receive_bar(receive_bar, items * splits * (32 * 4 + 8));
    }
    cluster_arrive_relaxed();

    // 1. The split plan, the first batch's older keys, the constants.
    const int64_t position = a.positions[0];
    const int hi = static_cast<int>(position) + 1;
    const int lo = attention_first_visible(static_cast<int>(position), a.window);
    const int per_split =
        ((hi - lo + splits - 1) / splits + kBatchKeys - 1) / kBatchKeys * kBatchKeys;
    const int begin = lo + split * per_split;
    const int end = min(hi, begin + per_split);
    const auto batch_key0 = [&](int b) { return begin + (b * kWarps + warp) * kBatchKeys; };
    const auto batch_valid = [&](int b) { return max(0, min(kBatchKeys, end - batch_key0(b))); };

    // The constants: the RoPE table's inv_freq (rotary_pairs <= kThreads: a thread per pair, as
    // decode_input_rotations) and the norm weights. Forcing inv_freq's load ahead of the rows'
    // (ptxas issues it after them) measured the same: 139.14 / 139.20 / 139.31 against 139.21 /
    // 139.12 / 139.20 (H100, tg128 @ d512).
    const int tid = static_cast<int>(threadIdx.x);
    const float inv_freq = tid < in.rotary_pairs ? in.inv_freq[tid] : 0.0f;
    float4 q_weight[kChunks];
    float4 k_weight[kChunks];
    load_row_chunks<32, kChunks>(in.q_norm, kHeadDim, in.q_norm_vec4, lane, q_weight);
    load_row_chunks<32, kChunks>(in.k_norm, kHeadDim, in.k_norm_vec4, lane, k_weight);
    uint16_t* v_rows = reinterpret_cast<uint16_t*>(shared) + warp * kBatchKeys * kHeadDim;
    RowPiece k[kBatchKeys];
    load_batch(in, a, kv_head, batch_key0(0), batch_valid(0), position, k, v_rows);
    // A later batch (past 6 x 16 x 8 = 768 keys at 6 splits) loads once the first is used; its
    // older rows are asked into L2 now, a lane per 128-byte line of 8 keys' K and V rows.
    for (int b = 1; batch_valid(b) > 0; ++b) {
        const int key = batch_key0(b) + lane / 4;
        if (lane / 4 < batch_valid(b) && key < position) {
            const int64_t offset =
                (key % a.capacity) * static_cast<int64_t>(a.n_kv_heads) * kHeadDim +
                kv_head * kHeadDim + (lane % 4) * 64;
            prefetch_l2(in.k_cache + offset);
            prefetch_l2(in.v_cache + offset);
        }
    }
    if (tid < in.rotary_pairs) {
        float c, s;
        rope_cos_sin(position, inv_freq, c, s);
        rotations[tid] = make_float2(c, s);
    }
    __syncthreads();

    wait_for_upstream();  // q, k and v are the previous kernel's output

    // 2. Warps 0 and 1 build the query rows, as attention_inputs then the flash kernels' Q tile
    // make them, and, in the block whose keys hold the token's own key, warps 2 and 3 build that
    // key's k and v rows (decode_inputs_fill's items) and write them to the cache slot: four rows
    // side by side, then shared with every warp.
    const bool block_has_new = position >= begin && position < end;
    if (warp < kGroup || (block_has_new && warp < kGroup + 2)) {  // warp-uniform
        const bool is_q = warp < kGroup;
        const bool is_v = warp == kGroup + 1;
        const int64_t kv_offset = static_cast<int64_t>(kv_head) * kHeadDim;
        const float* row = is_q                       ? a.q + (kv_offset * kGroup + warp * kHeadDim)
                           : is_v && !in.v_from_raw_k ? in.v_raw + kv_offset
                                                      : in.k_raw + kv_offset;
        float4 x[kChunks];
        load_row_chunks<32, kChunks>(row, kHeadDim, true, lane, x);
        const float inv_rms = row_inv_rms<32, kChunks>(x, kHeadDim, in.eps, lane, nullptr);
        if (!is_v || in.v_norm) {
            float4 weight[kChunks];
#pragma unroll
            for (int c = 0; c < kChunks; ++c) weight[c] = is_q ? q_weight[c] : k_weight[c];
            const bool has_weight = is_q ? in.q_norm != nullptr : !is_v && in.k_norm != nullptr;
            decode_input_norm_rope<kChunks>(x, inv_rms, weight, has_weight,
                                            is_v ? 0 : in.rotary_pairs, rotations, lane);
        }
        if (is_q) {
#pragma unroll
            for (int c = 0; c < kChunks; ++c) q_rows[warp][c][lane] = round_to_bf16(x[c]);
        } else {
            uint16_t* cache_row = (is_v ? in.v_cache : in.k_cache) +
                                  (position % a.capacity) * a.n_kv_heads * kHeadDim + kv_offset;
#pragma unroll
            for (int c = 0; c < kChunks; ++c) {
                const uint2 bits = decode_input_bf16_chunk(x[c]);
                new_rows[is_v ? 1 : 0][c][lane] = bits;
                reinterpret_cast<uint2*>(cache_row)[lane + 32 * c] = bits;
            }
        }
    }
    __syncthreads();
    float4 q[kGroup][kChunks];
#pragma unroll
    for (int h = 0; h < kGroup; ++h) {
#pragma unroll
        for (int c = 0; c < kChunks; ++c) q[h][c] = q_rows[h][c][lane];
    }
    // The warp whose batch holds the token's key.
    const int new_offset = static_cast<int>(position) - begin;
    const bool has_new = block_has_new && (new_offset / kBatchKeys) % kWarps == warp;
    const int new_batch = new_offset / (kBatchKeys * kWarps);
    const int new_j = new_offset % kBatchKeys;
    RowPiece new_k{}, new_v{};
    if (has_new) {
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
            new_k.chunk[c] = new_rows[0][c][lane];
            new_v.chunk[c] = new_rows[1][c][lane];
        }
    }

    // 3 and 4, batch after batch (one a warp up to 768 keys at 6 splits).
    WarpState st;
#pragma unroll
    for (int h = 0; h < kGroup; ++h) {
        st.m[h] = -INFINITY;
        st.l[h] = 0.0f;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) st.o[h][c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    int batches = 0;
    for (int b = 0; batch_valid(b) > 0; ++b) {
        if (b > 0) {
            __syncwarp();  // every lane is done with the last batch's V rows
            load_batch(in, a, kv_head, batch_key0(b), batch_valid(b), position, k, v_rows);
        }
        cp_async_wait_all();
        if (has_new && b == new_batch) {
#pragma unroll
            for (int j = 0; j < kBatchKeys; ++j) {
                if (j == new_j) k[j] = new_k;
            }
#pragma unroll
            for (int c = 0; c < kChunks; ++c) {
                reinterpret_cast<uint2*>(v_rows + new_j * kHeadDim)[lane + 32 * c] = new_v.chunk[c];
            }
        }
        __syncwarp();  // the V rows, copied by every lane, visible to the warp
        attend_batch(a, q, k, v_rows, batch_valid(b), st);
        batches = b + 1;
    }

    // 5. The warps' partials into the block's: thread t takes column t % 256 of head t / 256.
    cp_async_wait_all();  // a warp without keys still has its zero fills in flight
    __syncwarp();         // every lane is done with the V rows its partial O overwrites
    static_assert(kGroup * kHeadDim * 4 <= kBatchKeys * kHeadDim * 2, "O fits the V rows");
    constexpr int kWarpBytes = kBatchKeys * kHeadDim * 2;
#pragma unroll
    for (int h = 0; h < kGroup; ++h) {
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
            *reinterpret_cast<float4*>(shared + warp * kWarpBytes +
                                       (h * kHeadDim + 4 * lane + 128 * c) * 4) = st.o[h][c];
        }
        if (lane == 0) {
            warp_m[warp][h] = batches > 0 ? st.m[h] : -INFINITY;
            warp_l[warp][h] = batches > 0 ? st.l[h] : 0.0f;
        }
    }
    __syncthreads();
    // Every K and V byte is in: the next kernel (the o-projection's GEMV) may launch now, and its
    // blocks on the SMs this grid leaves free start streaming their weights while the partials
    // combine. H100, Gemma 4 31B tg128 @ d512, same machine, 2 rounds: at the cluster barrier
    // before the push 139.43 / 139.33, here 140.02 / 140.06, at entry (against the K/V loads)
    // 139.55 / 139.51, at exit 139.16 / 139.23.
    allow_downstream();
    static_assert(kThreads == kGroup * kHeadDim, "a thread per column of the two rows");
    const int h = static_cast<int>(threadIdx.x) / kHeadDim;
    const int col = static_cast<int>(threadIdx.x) % kHeadDim;
    const int active = min(kWarps, (max(0, end - begin) + kBatchKeys - 1) / kBatchKeys);
    float m_max = -INFINITY;
    for (int w = 0; w < active; ++w) m_max = fmaxf(m_max, warp_m[w][h]);
    float denominator = 0.0f;
    float sum = 0.0f;
    for (int w = 0; w < active; ++w) {
        const float weight = exp2f(warp_m[w][h] - m_max);
        denominator = fmaf(weight, warp_l[w][h], denominator);
        sum =
            fmaf(weight,
                 reinterpret_cast<const float*>(shared + w * kWarpBytes)[h * kHeadDim + col], sum);
    }

    // Push: warp w now holds the block's partial of column group w (32 columns of head w / 8), and
    // sends it to the rank that combines that group, w % splits, as its item w / splits: every
    // peer's mbarrier was initialised before the cluster barrier's arrive at entry.
    cluster_wait();
    {
        static_assert(kColumnGroups == kWarps, "a column group a warp");
        const int rank = warp % splits;
        const int item = warp / splits;
        const uint32_t remote_bar = cluster_address(&receive_bar, rank);
        store_async(cluster_address(&receive_o[item][split][lane], rank), sum, remote_bar);
        if (lane == 0) {
            store_async(cluster_address(&receive_ml[item][split], rank), m_max, denominator,
                        remote_bar);
        }
    }

    // Combine: warp w takes its item, the column group w * splits + split, once every split's
    // partial of it has landed (the reduce kernel's formula).
    const int item = warp * splits + split;
    if (item >= kColumnGroups) return;
    wait_parity(receive_bar, 0);
    float m[kMaxSplits], l[kMaxSplits], o[kMaxSplits];
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
        const bool mine = s < splits;
        m[s] = mine ? receive_ml[warp][s].x : -INFINITY;
        l[s] = mine ? receive_ml[warp][s].y : 0.0f;
        o[s] = mine ? receive_o[warp][s][lane] : 0.0f;
    }
    float total_max = -INFINITY;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) total_max = fmaxf(total_max, m[s]);
    float total_denominator = 0.0f;
    float total = 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
        // A split without keys has m = -inf: weight 0 (total_max is finite: the token's key).
        const float weight = exp2f(m[s] - total_max);
        total_denominator = fmaf(weight, l[s], total_denominator);
        total = fmaf(weight, o[s], total);
    }
    const float value = total / total_denominator;
    const int64_t index =
        static_cast<int64_t>(kv_head * kGroup + item / (kHeadDim / 32)) * kHeadDim +
        (item % (kHeadDim / 32)) * 32 + lane;
    if (a.out != nullptr) a.out[index] = value;
    quantize_q8_warp(value, a.out_q8 + index / 32);
}

// How many clusters of `splits` blocks the GPU holds at once (0: none).
int clusters_held(int splits) {
    static int held[kMaxSplits + 1] = {};
    static bool asked[kMaxSplits + 1] = {};
    if (asked[splits]) return held[splits];
    held[splits] = max_active_clusters(attention_decode_warp_keys_kernel,
                                       static_cast<unsigned>(splits), kThreads, kSharedBytes);
    asked[splits] = true;
    return held[splits];
}

// The most splits (8, 6 or 4) whose clusters the GPU holds for every kv head at once; 0: none.
int warp_keys_splits(int64_t n_kv_heads) {
    for (const int splits : {8, 6, 4}) {
        if (clusters_held(splits) >= n_kv_heads) return splits;
    }
    return 0;
}

}  // namespace

bool attention_decode_warp_keys_shape(const AttentionInputs& inputs, const KvCacheBf16View& cache,
                                      const AttentionShape& shape) {
    return inputs.head_dim == kHeadDim && cache.head_dim == kHeadDim &&
           cache.v_head_dim == kHeadDim && inputs.n_kv_heads >= 1 && inputs.n_kv_heads <= 65535 &&
           cache.n_kv_heads == inputs.n_kv_heads && inputs.n_heads == kGroup * inputs.n_kv_heads &&
           shape.n_heads == inputs.n_heads && inputs.partial_rotary_dim == 0 &&
           inputs.rotary_pairs >= 0 && inputs.rotary_pairs <= kHeadDim / 2 && shape.window >= 1 &&
           shape.window <= kWarpKeysMaxKeys && cache.capacity >= 1 &&
           cache.capacity * cache.n_kv_heads * kHeadDim * 2 < (int64_t{1} << 32) &&
           cache.k != nullptr && cache.v != nullptr;
}

bool attention_decode_warp_keys_applies(const AttentionInputs& inputs, const KvCacheBf16View& cache,
                                        const AttentionShape& shape) {
    return attention_decode_warp_keys_shape(inputs, cache, shape) &&
           warp_keys_splits(inputs.n_kv_heads) > 0;
}

Status attention_decode_warp_keys_quantize_q8(const AttentionInputs& inputs, const float* inv_freq,
                                              const int64_t* positions,
                                              const KvCacheBf16View& cache,
                                              const AttentionShape& shape, float* out,
                                              Q8Block* out_q8, cudaStream_t stream) {
    const std::string what = "attention_decode_warp_keys_quantize_q8";
    if (!attention_decode_warp_keys_applies(inputs, cache, shape)) {
        return Status(
            StatusCode::kInvalidArgument,
            what + ": " + std::to_string(inputs.n_heads) + " / " +
                std::to_string(inputs.n_kv_heads) + " heads x " + std::to_string(inputs.head_dim) +
                ", window " + std::to_string(shape.window) + ", over a cache of " +
                std::to_string(cache.n_kv_heads) + " x " + std::to_string(cache.head_dim) +
                " and " + std::to_string(cache.capacity) +
                " slots is not a shape it takes (attention_decode_warp_keys_applies)");
    }
    if (out_q8 == nullptr || positions == nullptr || inputs.q == nullptr || inputs.k == nullptr ||
        (!inputs.v_from_raw_k && inputs.v == nullptr) ||
        (inv_freq == nullptr && inputs.rotary_pairs > 0) || !attention_aligned16(inputs.q) ||
        !attention_aligned16(inputs.k) || !attention_aligned16(inputs.v) ||
        !attention_aligned16(cache.k) || !attention_aligned16(cache.v) ||
        !attention_aligned16(out) || !attention_aligned16(out_q8)) {
        return Status(StatusCode::kInvalidArgument,
                      what +
                          ": null Q8 output, positions, q / k / v or inv_freq, or q / k / v / "
                          "cache / out not 16-byte aligned");
    }
    WarpKeysArgs args;
    args.q = inputs.q;
    args.positions = positions;
    args.out = out;
    args.out_q8 = out_q8;
    args.capacity = static_cast<int>(cache.capacity);
    args.n_kv_heads = static_cast<int>(cache.n_kv_heads);
    args.window = static_cast<int>(shape.window);
    args.scale = shape.scale;
    args.softcap = shape.softcap;
    const DecodeInputsArgs fused = make_decode_inputs_args(inputs, cache, inv_freq);
    const auto splits = static_cast<unsigned>(warp_keys_splits(cache.n_kv_heads));
    KESTREL_CUDA_CHECK(launch_overlapped_clusters(
        attention_decode_warp_keys_kernel, dim3(splits, static_cast<unsigned>(cache.n_kv_heads)),
        dim3(kThreads), kSharedBytes, stream, splits, args, fused));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
