// Decode attention (split-K flash-decoding, spec techniques.md §3) and the bf16 KV-cache write.
//
// attention_decode_kernel: block = (split, kv head, row tile of 16 packed rows = all query heads
//   of the kv head for 16 / group tokens), 4 warps splitting the keys of S and the columns of O
//   (core: attention_common.cuh). The grid is sized on the host for the most keys the shape can
//   have (capacity, or window + T - 1); the split count actually used and each split's range
//   come from the live keys read on the device: [first key token 0 sees, positions[T-1] + 1)
//   cut into decode_splits_used(n) chunks of whole K/V tiles. Blocks without keys write a
//   neutral partial (m = -inf, l = 0) and exit. Partials are (m, l, unnormalised O).
//   Up to decode_single_pass_keys() live keys there is one split: a single pass. Split 0 attends
//   to every key and writes the normalised rows itself, O * (1 / l), which is what the reduce
//   computes for one split, bit for bit (via shared memory, so that whole warps own 32
//   consecutive columns for the Q8 blocks); the other splits exit at once.
//   Up to kDecodeClusterMaxSplits splits (Gemma 4's sliding layers: 6), the grid is launched in
//   thread block clusters of max_splits blocks, one cluster per (kv head, row tile), and the
//   splits combine themselves (cluster_combine): each block leaves its partial (m, l, O) in its
//   own shared memory, the cluster synchronises, and its 4 * max_splits warps share the rows'
//   Q8-block-wide column groups, each reading every split's partial through distributed shared
//   memory with the reduce kernel's arithmetic in its order (the same bits). No reduce launch,
//   no partials through L2. Why not the last split to finish combining alone (a ticket counter
//   in global memory): measured on the H100 it made the decode kernel 4.4 -> 10.4 us on sliding
//   layers and 6.4 -> 82 on full ones, against 4.5 for the reduce it saved.
// Over a TQ4 cache the splits' kernel is attention_decode_tq4.cu's (same split plan and partials,
//   row tiles of kTq4DecodeRows); the reduce below serves both.
// attention_decode_reduce_kernel: one block per (token, query head) rescales the used splits'
//   partials to their common max and divides by the summed l (the same split plan, recomputed);
//   for the o-projection's GEMV it can also write the row's Q8 blocks, saving a quantise launch.
//   After a single pass it returns at once (the graph still holds its launch).
// kv_write_bf16_kernel: one thread per 8 elements (two 16-byte fp32 loads, one 16-byte store).
// attention_decode_fused_inputs_kernel: attention_decode_kernel that also does one token's
//   attention inputs (attention_decode_inputs.cuh), so no launch sits between the q | k | v GEMV
//   and the attention. H100, Gemma 4 31B tg128 @ d512, same machine: 134.83 / 134.92 tok/s with
//   attention_inputs launched before the plain kernel, 135.65 / 135.50 fused; d32768 117.86
//   against 117.79 (bench/results/2026-11-25-h100-decode-what-ifs.md).
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_decode_tq4.h"
#include "ops/cuda/attention_inputs.h"
#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/small_ops.cuh"  // quantize_q8_warp

#include <cooperative_groups.h>

namespace kestrel::cuda {
namespace {

// The most splits combined in a cluster: the portable cluster size.
constexpr int kDecodeClusterMaxSplits = 8;

template <int kHeadDimPad>
using DecodeConfig = FlashConfig<kHeadDimPad, 1, 4, 3>;

constexpr int kReduceThreads = 128;
constexpr int kWriteThreads = 256;

__global__ void kv_write_bf16_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                     const int64_t* __restrict__ positions, int64_t k_chunks, int64_t total_chunks,
                                     int k_row, int v_row, int capacity, uint16_t* __restrict__ k_cache,
                                     uint16_t* __restrict__ v_cache) {
    wait_for_upstream();
    allow_downstream();
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total_chunks;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const bool is_k = i < k_chunks;
        const int64_t j = is_k ? i : i - k_chunks;
        const int row = is_k ? k_row : v_row;  // elements per token
        const int64_t t = j / (row / 8);
        const int64_t offset = (j % (row / 8)) * 8;
        const int64_t slot = positions[t] % capacity;
        const float4* src = reinterpret_cast<const float4*>((is_k ? k : v) + t * row + offset);
        const float4 x0 = src[0];
        const float4 x1 = src[1];
        const uint4 packed = make_uint4(bf16_bits(x0.x) | (bf16_bits(x0.y) << 16), bf16_bits(x0.z) | (bf16_bits(x0.w) << 16),
                                        bf16_bits(x1.x) | (bf16_bits(x1.y) << 16), bf16_bits(x1.z) | (bf16_bits(x1.w) << 16));
        *reinterpret_cast<uint4*>((is_k ? k_cache : v_cache) + slot * row + offset) = packed;
    }
}

// Row prow's value at column col, to out and, with out_q8, to its Q8 block. With out_q8 the whole
// warp calls this for 32 consecutive columns starting at a multiple of 32.
__device__ __forceinline__ void emit_value(const AttentionKernelArgs& a, int64_t prow, int col,
                                           float value) {
    const int64_t index = prow * a.v_head_dim + col;
    if (a.out != nullptr) a.out[index] = value;
    if (a.out_q8 != nullptr) quantize_q8_warp(value, a.out_q8 + index / 32);
}

// The block attends to all keys [lo, hi) and writes its rows normalised: O * (1 / l).
template <class C, bool kFusedInputs>
__device__ void single_pass(const AttentionKernelArgs& a, int kv_head, int row0, int lo, int hi,
                            unsigned char* shared, int early_keys_end,
                            const DecodeInputsArgs* inputs) {
    FlashState<C> st;
    flash_attend<C, false, kFusedInputs>(a, kv_head, row0, lo, hi, shared, st, early_keys_end,
                                         inputs);
    // Through shared memory, which the K/V tiles no longer need, to a column-per-thread layout.
    static_assert(C::kSharedBytes >= C::kRows * C::kHeadDim * 4, "a tile of output rows fits");
    float* rows = reinterpret_cast<float*>(shared);
    const int lane = threadIdx.x & 31;
    const int col_base = static_cast<int>(threadIdx.x >> 5) * C::kColsPerWarp + 2 * (lane & 3);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = (lane >> 2) + 8 * i;
        const float inv_l = 1.0f / st.l[i];
#pragma unroll
        for (int ct = 0; ct < C::kColTiles; ++ct) {
            const int col = col_base + ct * 8;
            rows[r * C::kHeadDim + col] = st.o[ct][2 * i] * inv_l;
            rows[r * C::kHeadDim + col + 1] = st.o[ct][2 * i + 1] * inv_l;
        }
    }
    __syncthreads();
    const int rows_total = a.n_tokens * a.group;
    for (int r = 0; r < C::kRows && row0 + r < rows_total; ++r) {
        const int packed = row0 + r;
        const int64_t prow = (packed / a.group) * a.n_heads + kv_head * a.group + packed % a.group;
        for (int col = threadIdx.x; col < a.v_head_dim; col += blockDim.x) {
            emit_value(a, prow, col, rows[r * C::kHeadDim + col]);
        }
    }
}

// The cluster's splits of rows [row0, row0 + kRows) of kv_head combined (see the top of the
// file): `st` is this block's partial when has_keys, else the block saw no key (m = -inf, l = 0).
// Every block of the cluster calls this (cluster barriers).
template <class C>
__device__ void cluster_combine(const AttentionKernelArgs& a, int kv_head, int row0, int splits,
                                bool has_keys, const FlashState<C>& st, unsigned char* shared) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    static_assert(C::kGroups == 1, "one row group: warp = column part");
    static_assert(C::kSharedBytes >= (C::kRows * C::kHeadDim + 2 * C::kRows) * 4,
                  "a partial fits in shared memory");
    float* part_o = reinterpret_cast<float*>(shared);  // [kRows][kHeadDim], unnormalised O
    float* part_m = part_o + C::kRows * C::kHeadDim;   // [kRows], log2 units
    float* part_l = part_m + C::kRows;                 // [kRows]
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int warp = static_cast<int>(threadIdx.x) >> 5;
    const int col_base = warp * C::kColsPerWarp + 2 * (lane & 3);
    __syncthreads();  // flash_attend's tiles are no longer read
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = (lane >> 2) + 8 * i;
        if (has_keys) {
#pragma unroll
            for (int ct = 0; ct < C::kColTiles; ++ct) {
                *reinterpret_cast<float2*>(part_o + r * C::kHeadDim + col_base + ct * 8) =
                    make_float2(st.o[ct][2 * i], st.o[ct][2 * i + 1]);
            }
        }
        if (warp == 0 && (lane & 3) == 0) {
            part_m[r] = has_keys ? st.m[i] : -INFINITY;
            part_l[r] = has_keys ? st.l[i] : 0.0f;
        }
    }
    cluster.sync();  // every split's partial visible to the cluster
    // The o-projection's GEMV may launch now and stream its weights towards L2 during the
    // combine, whose reads stay inside the SMs (distributed shared memory). Measured on the H100
    // (tg128 @ d512): 133.57 with the launch at the blocks' exit, 134.2 from here; the sliding
    // layers' o GEMV 10.78 -> 9.96 us.
    allow_downstream();

    const int ranks = static_cast<int>(cluster.num_blocks());  // the splits, max_splits
    const int rank = static_cast<int>(cluster.block_rank());
    constexpr int kWarps = C::kThreads / 32;
    const int rows = min(C::kRows, a.n_tokens * a.group - row0);
    const int groups = (a.v_head_dim + 31) / 32;  // 32-column groups: a Q8 block each
    for (int item = rank * kWarps + warp; item < rows * groups; item += ranks * kWarps) {
        const int r = item / groups;
        const int col = (item % groups) * 32 + lane;
        float m[kDecodeClusterMaxSplits], l[kDecodeClusterMaxSplits], o[kDecodeClusterMaxSplits];
#pragma unroll
        for (int s = 0; s < kDecodeClusterMaxSplits; ++s) {  // every load in flight at once
            const bool mine = s < splits;
            m[s] = mine ? cluster.map_shared_rank(part_m, s)[r] : -INFINITY;
            l[s] = mine ? cluster.map_shared_rank(part_l, s)[r] : 0.0f;
            o[s] = mine && col < a.v_head_dim
                       ? cluster.map_shared_rank(part_o, s)[r * C::kHeadDim + col]
                       : 0.0f;
        }
        // attention_decode_reduce_kernel's operations, in its order.
        float m_max = -INFINITY;
#pragma unroll
        for (int s = 0; s < kDecodeClusterMaxSplits; ++s) {
            if (s < splits && l[s] > 0.0f) m_max = fmaxf(m_max, m[s]);
        }
        float denominator = 0.0f;
        float sum = 0.0f;
#pragma unroll
        for (int s = 0; s < kDecodeClusterMaxSplits; ++s) {
            if (s < splits && l[s] > 0.0f) denominator += exp2f(m[s] - m_max) * l[s];
        }
#pragma unroll
        for (int s = 0; s < kDecodeClusterMaxSplits; ++s) {
            const float weight = s < splits && l[s] > 0.0f ? exp2f(m[s] - m_max) : 0.0f;
            if (weight != 0.0f) sum += weight * o[s];
        }
        // No split with a key (impossible for a valid call): 0 / 0 = NaN, as in the reduce.
        const float inv_denominator = 1.0f / denominator;
        const int packed = row0 + r;
        const int64_t prow = (packed / a.group) * a.n_heads + kv_head * a.group + packed % a.group;
        // With out_q8, v_head_dim % 32 == 0: every lane has a column, the warp one Q8 block.
        if (col < a.v_head_dim) emit_value(a, prow, col, sum * inv_denominator);
    }
    // No block leaves while another still reads its shared memory. Only that order matters, and
    // every value this block read from its peers was used above before the arrive can issue, so
    // the arrive is relaxed: cluster.sync()'s release made each block wait for its own output
    // stores first (MEMBAR.ALL.GPU; ncu: ~3% of the sliding layers' kernel). H100, Gemma 4 31B
    // tg128 @ d512, same machine, 3 rounds: 135.75 -> 136.12 tok/s; d32768 117.78 -> 118.13.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::
                     : "memory");
}

// kClusters: launched in clusters, combining the splits (a.cluster_combine). A kernel of its
// own: with the cluster code in the plain kernel too, the plain launches got slower (Gemma 4's
// full layers at depth 512: decode kernel 7.4 -> 14.4 us, its reduce 4.8 -> 6.7; H100, traced).
// kFusedInputs: the token's attention inputs too (attention_decode_inputs.cuh; inputs set).
template <int kHeadDimPad, bool kClusters, bool kFusedInputs>
__device__ __forceinline__ void attention_decode_body(const AttentionKernelArgs& a,
                                                      const DecodeInputsArgs* inputs) {
    // Waits inside flash_attend, or before its first global write: the key span comes from the
    // positions, staged before the step's first kernel, and the first K/V tiles of keys older
    // than the step may be read before the wait (flash_attend's early_keys_end). It lets the
    // reduce launch only at its end (below; an exit counts too). Launched at entry, the reduce
    // took 4 us in some layers and 10-12 in others, 9.4 on average (Gemma 4 at depth 512, H100,
    // traced), most likely because its blocks, resident early, crowd onto the few SMs this
    // kernel's one-block-per-SM grid leaves idle; with the late trigger 4.9 (median 4.3), and
    // tg128 124.7 -> 130.1 tok/s (bench/results/2026-11-24-h100-a2611a0.md).
    using C = DecodeConfig<kHeadDimPad>;
    extern __shared__ __align__(16) unsigned char shared[];
    const int split = static_cast<int>(blockIdx.x);
    const int kv_head = static_cast<int>(blockIdx.y);
    const int row0 = static_cast<int>(blockIdx.z) * C::kRows;
    const int rows_total = a.n_tokens * a.group;
    const int partial_rows = a.n_tokens * a.n_heads;

    int lo, hi;
    decode_key_span(a, lo, hi);
    const int n_keys = hi - lo;
    const int splits = decode_splits_used(n_keys, a.max_splits, a.single_pass_keys);
    const int per_split = (n_keys + splits - 1) / splits;
    const int chunk = (per_split + C::kKeys - 1) / C::kKeys * C::kKeys;  // whole tiles
    const int key_begin = lo + split * chunk;
    const int key_end = min(hi, key_begin + chunk);

    // This step's keys start here; with the inputs fused no key waits for the previous kernel.
    const int first_new_key = kFusedInputs ? INT_MAX : static_cast<int>(a.positions[0]);
    if (splits == 1) {
        if (split == 0) {
            single_pass<C, kFusedInputs>(a, kv_head, row0, lo, hi, shared, first_new_key, inputs);
        }
        return;
    }

    if constexpr (kClusters) {
        const bool has_keys = split < splits && key_begin < key_end;
        FlashState<C> st;
        if (has_keys) {
            flash_attend<C, false, kFusedInputs>(a, kv_head, row0, key_begin, key_end, shared, st,
                                                 first_new_key, inputs);
        } else {
            wait_for_upstream();  // before the combine's writes of the output
        }
        cluster_combine<C>(a, kv_head, row0, splits, has_keys, st, shared);
        return;
    }

    if (split >= splits || key_begin >= key_end) {
        wait_for_upstream();  // the previous kernels are done with the partials
        for (int r = threadIdx.x; r < C::kRows; r += blockDim.x) {
            const int packed = row0 + r;
            if (packed >= rows_total) break;
            const int prow = (packed / a.group) * a.n_heads + kv_head * a.group + packed % a.group;
            float* ml = a.partial_ml + (static_cast<int64_t>(split) * partial_rows + prow) * 2;
            ml[0] = -INFINITY;
            ml[1] = 0.0f;
        }
        return;
    }

    FlashState<C> st;
    flash_attend<C, false, kFusedInputs>(a, kv_head, row0, key_begin, key_end, shared, st,
                                         first_new_key, inputs);

    const int lane = threadIdx.x & 31;
    const int col_part = static_cast<int>(threadIdx.x >> 5);  // one row group: warp = column part
    const int col_base = col_part * C::kColsPerWarp + 2 * (lane & 3);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int packed = row0 + (lane >> 2) + 8 * i;
        if (packed >= rows_total) continue;
        const int prow = (packed / a.group) * a.n_heads + kv_head * a.group + packed % a.group;
        const int64_t base = static_cast<int64_t>(split) * partial_rows + prow;
        float* acc = a.partial_acc + base * a.v_head_dim;
#pragma unroll
        for (int ct = 0; ct < C::kColTiles; ++ct) {
            const int col = col_base + ct * 8;
            if (col < a.v_head_dim)
                *reinterpret_cast<float2*>(acc + col) =
                    make_float2(st.o[ct][2 * i], st.o[ct][2 * i + 1]);
        }
        if (col_part == 0 && (lane & 3) == 0) {
            a.partial_ml[base * 2] = st.m[i];
            a.partial_ml[base * 2 + 1] = st.l[i];
        }
    }
    allow_downstream();  // late on purpose: see the top of the kernel
}

template <int kHeadDimPad, bool kClusters>
__global__ void __launch_bounds__(DecodeConfig<kHeadDimPad>::kThreads, 1)
    attention_decode_kernel(AttentionKernelArgs a) {
    attention_decode_body<kHeadDimPad, kClusters, false>(a, nullptr);
}

// The same with the token's attention inputs (attention_decode_fused_inputs_quantize_q8).
template <int kHeadDimPad, bool kClusters>
__global__ void __launch_bounds__(DecodeConfig<kHeadDimPad>::kThreads, 1)
    attention_decode_fused_inputs_kernel(AttentionKernelArgs a, DecodeInputsArgs inputs) {
    attention_decode_body<kHeadDimPad, kClusters, true>(a, &inputs);
}

__global__ void __launch_bounds__(kReduceThreads)
    attention_decode_reduce_kernel(AttentionKernelArgs a) {
    allow_downstream();  // at entry, as before the split plan moved ahead of the wait
    __shared__ float weight[kDecodeMaxSplits];
    const int prow = static_cast<int>(blockIdx.x);  // t * n_heads + h
    const int partial_rows = a.n_tokens * a.n_heads;
    // The split plan before the wait: the positions are staged before the step (launch.cuh), so
    // their round trip leaves the path from the decode kernel's end to this one's loads.
    int lo, hi;
    decode_key_span(a, lo, hi);
    const int splits = decode_splits_used(hi - lo, a.max_splits, a.single_pass_keys);
    wait_for_upstream();  // also after a single pass: the next kernel's wait covers only this one
    if (splits == 1) return;  // the decode kernel wrote the row

    // The first kReduceBatch splits' partials of the thread's columns do not depend on (m, l), so
    // their loads are issued first and their round trip overlaps that of (m, l). Each split's
    // (m, l) is read once into shared memory by parallel loads; then every thread forms the
    // maximum and the denominator from there in split order. Splits where the row saw no key
    // (l = 0) are skipped: their O was never written.
    constexpr int kReduceBatch = 16;
    constexpr int kMaxColumns = 512 / kReduceThreads;  // v_head_dim <= 512
    float first[kMaxColumns][kReduceBatch];
#pragma unroll
    for (int c = 0; c < kMaxColumns; ++c) {
        const int col = static_cast<int>(threadIdx.x) + c * kReduceThreads;
#pragma unroll
        for (int u = 0; u < kReduceBatch; ++u) {
            first[c][u] =
                u < splits && col < a.v_head_dim
                    ? a.partial_acc[(static_cast<int64_t>(u) * partial_rows + prow) * a.v_head_dim +
                                    col]
                    : 0.0f;
        }
    }
    __shared__ float m_s[kDecodeMaxSplits];
    __shared__ float l_s[kDecodeMaxSplits];
    for (int s = threadIdx.x; s < splits; s += blockDim.x) {
        const float* ml = a.partial_ml + (static_cast<int64_t>(s) * partial_rows + prow) * 2;
        m_s[s] = ml[0];
        l_s[s] = ml[1];
    }
    __syncthreads();
    float m_max = -INFINITY;
    for (int s = 0; s < splits; ++s) {
        if (l_s[s] > 0.0f) m_max = fmaxf(m_max, m_s[s]);
    }
    float denominator = 0.0f;
    for (int s = 0; s < splits; ++s) {
        if (l_s[s] > 0.0f) denominator += exp2f(m_s[s] - m_max) * l_s[s];
    }
    for (int s = threadIdx.x; s < splits; s += blockDim.x) {
        weight[s] = l_s[s] > 0.0f ? exp2f(m_s[s] - m_max) : 0.0f;
    }
    __syncthreads();
    // No split with a key (impossible for a valid call) gives 0 / 0 = NaN, never a silent 0.
    const float inv_denominator = 1.0f / denominator;
    // The partials of kReduceBatch splits, for all of the thread's columns, are loaded before any
    // is added (independent loads in flight: one round trip a batch; a loop per column made it
    // one a batch and column, 16 in a row at the 66 splits of a TQ4 layer at depth 130000); each
    // column's sum still runs in split order.
    float sum[kMaxColumns];
#pragma unroll
    for (int c = 0; c < kMaxColumns; ++c) {
        sum[c] = 0.0f;
#pragma unroll
        for (int u = 0; u < kReduceBatch; ++u) {
            if (u < splits && weight[u] != 0.0f) sum[c] += weight[u] * first[c][u];
        }
    }
    for (int s0 = kReduceBatch; s0 < splits; s0 += kReduceBatch) {
        float values[kMaxColumns][kReduceBatch];
#pragma unroll
        for (int c = 0; c < kMaxColumns; ++c) {
            const int col = static_cast<int>(threadIdx.x) + c * kReduceThreads;
#pragma unroll
            for (int u = 0; u < kReduceBatch; ++u) {
                const int s = s0 + u;
                values[c][u] = s < splits && col < a.v_head_dim
                                   ? a.partial_acc[(static_cast<int64_t>(s) * partial_rows + prow) *
                                                       a.v_head_dim +
                                                   col]
                                   : 0.0f;
            }
        }
#pragma unroll
        for (int c = 0; c < kMaxColumns; ++c) {
#pragma unroll
            for (int u = 0; u < kReduceBatch; ++u) {
                const int s = s0 + u;
                if (s < splits && weight[s] != 0.0f) sum[c] += weight[s] * values[c][u];
            }
        }
    }
    // With out_q8, v_head_dim % 32 == 0 and the block is whole warps: each step's 32 columns of a
    // warp are one Q8 block of the row, quantised together.
#pragma unroll
    for (int c = 0; c < kMaxColumns; ++c) {
        const int col = static_cast<int>(threadIdx.x) + c * kReduceThreads;
        if (c * kReduceThreads >= a.v_head_dim) break;  // whole block: the Q8 warps stay whole
        if (col < a.v_head_dim) emit_value(a, prow, col, sum[c] * inv_denominator);
    }
}

// The most splits this shape can use: enough for its most keys at kDecodeMinKeysPerSplit each,
// no more blocks than kDecodeTargetBlocks (over a TQ4 cache kTq4DecodeTargetBlocks, for the
// splits' kernel of attention_decode_tq4.cu, with row tiles of kTq4DecodeRows), at most
// kDecodeMaxSplits.
int64_t decode_max_splits(int64_t n_tokens, const KvCacheBf16View& cache,
                          const AttentionShape& shape, bool tq4) {
    const int64_t group = shape.n_heads / cache.n_kv_heads;
    const int64_t rows_per_tile = tq4 ? kTq4DecodeRows : DecodeConfig<64>::kRows;
    const int64_t row_tiles = (n_tokens * group + rows_per_tile - 1) / rows_per_tile;
    const int64_t max_keys = shape.window > 0 ? std::min(cache.capacity, shape.window + n_tokens - 1) : cache.capacity;
    const int64_t by_keys = (max_keys + kDecodeMinKeysPerSplit - 1) / kDecodeMinKeysPerSplit;
    const int64_t target_blocks = tq4 ? kTq4DecodeTargetBlocks : kDecodeTargetBlocks;
    const int64_t by_blocks = target_blocks / (cache.n_kv_heads * row_tiles);
    return std::clamp<int64_t>(std::min(by_keys, by_blocks), 1, kDecodeMaxSplits);
}

size_t partial_acc_bytes(int64_t splits, int64_t n_tokens, const KvCacheBf16View& cache, const AttentionShape& shape) {
    return static_cast<size_t>(splits * n_tokens * shape.n_heads * cache.v_head_dim) * sizeof(float);
}

Status launch_reduce(const AttentionKernelArgs& args, cudaStream_t stream) {
    KESTREL_CUDA_CHECK(launch_overlapped(attention_decode_reduce_kernel,
                                         dim3(static_cast<unsigned>(args.n_tokens * args.n_heads)),
                                         dim3(kReduceThreads), 0, stream, args));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

template <int kHeadDimPad, bool kFusedInputs>
Status launch_decode(const AttentionKernelArgs& args, const DecodeInputsArgs* inputs,
                     cudaStream_t stream) {
    using C = DecodeConfig<kHeadDimPad>;
    const int64_t row_tiles =
        (static_cast<int64_t>(args.n_tokens) * args.group + C::kRows - 1) / C::kRows;
    if (row_tiles > 65535) {
        return Status(StatusCode::kInvalidArgument, "attention_decode: too many tokens for decode");
    }
    const dim3 grid(static_cast<unsigned>(args.max_splits), static_cast<unsigned>(args.n_kv_heads),
                    static_cast<unsigned>(row_tiles));
    if (args.cluster_combine) {
        const auto launch = [&](auto kernel, const auto&... arguments) {
            const cudaError_t set = cudaFuncSetAttribute(
                kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSharedBytes);
            if (set != cudaSuccess) return set;
            return launch_overlapped_clusters(kernel, grid, dim3(C::kThreads), C::kSharedBytes,
                                              stream, static_cast<unsigned>(args.max_splits),
                                              arguments...);
        };
        if constexpr (kFusedInputs) {
            KESTREL_CUDA_CHECK(
                launch(attention_decode_fused_inputs_kernel<kHeadDimPad, true>, args, *inputs));
        } else {
            KESTREL_CUDA_CHECK(launch(attention_decode_kernel<kHeadDimPad, true>, args));
        }
        KESTREL_CUDA_CHECK(cudaGetLastError());
        return ok_status();
    }
    const auto launch = [&](auto kernel, const auto&... arguments) {
        const cudaError_t set = cudaFuncSetAttribute(
            kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSharedBytes);
        if (set != cudaSuccess) return set;
        return launch_overlapped(kernel, grid, dim3(C::kThreads), C::kSharedBytes, stream,
                                 arguments...);
    };
    if constexpr (kFusedInputs) {
        KESTREL_CUDA_CHECK(
            launch(attention_decode_fused_inputs_kernel<kHeadDimPad, false>, args, *inputs));
    } else {
        (void)inputs;
        KESTREL_CUDA_CHECK(launch(attention_decode_kernel<kHeadDimPad, false>, args));
    }
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return launch_reduce(args, stream);
}

// How many clusters of `splits` decode blocks of this head dim (one per SM) the GPU holds at
// once (0: none).
template <int kHeadDimPad>
int clusters_held(int splits) {
    using C = DecodeConfig<kHeadDimPad>;
    static int held[kDecodeClusterMaxSplits + 1] = {};
    static bool asked[kDecodeClusterMaxSplits + 1] = {};
    if (asked[splits]) return held[splits];
    held[splits] = max_active_clusters(attention_decode_kernel<kHeadDimPad, true>,
                                       static_cast<unsigned>(splits), C::kThreads, C::kSharedBytes);
    asked[splits] = true;
    return held[splits];
}

}  // namespace

bool attention_decode_cluster_shape(int64_t n_tokens, const KvCacheBf16View& cache,
                                    const AttentionShape& shape) {
    if (n_tokens < 1 || cache.n_kv_heads < 1 || shape.n_heads < cache.n_kv_heads) return false;
    const int64_t splits = decode_max_splits(n_tokens, cache, shape, false);
    return splits >= 2 && splits <= kDecodeClusterMaxSplits;
}

bool attention_decode_combines_in_clusters(int64_t n_tokens, const KvCacheBf16View& cache,
                                           const AttentionShape& shape) {
    if (!attention_decode_cluster_shape(n_tokens, cache, shape)) return false;
    const int splits = static_cast<int>(decode_max_splits(n_tokens, cache, shape, false));
    int held = 0;
    switch (attention_padded_head_dim(cache.head_dim, cache.v_head_dim)) {
        case 64:
            held = clusters_held<64>(splits);
            break;
        case 128:
            held = clusters_held<128>(splits);
            break;
        case 256:
            held = clusters_held<256>(splits);
            break;
        default:
            held = clusters_held<512>(splits);
            break;
    }
    // Every cluster of the grid at once, or none: in a second wave a cluster would start only
    // when one of the first has finished, doubling the kernel for the launch it saves.
    const int64_t group = shape.n_heads / cache.n_kv_heads;
    const int64_t row_tiles =
        (n_tokens * group + DecodeConfig<64>::kRows - 1) / DecodeConfig<64>::kRows;
    return held >= cache.n_kv_heads * row_tiles;
}

int decode_single_pass_keys(int64_t head_dim, int64_t v_head_dim) {
    static const int from_environment = [] {
        const char* text = std::getenv("KESTREL_DECODE_SINGLE_PASS_KEYS");
        return text != nullptr && std::atoi(text) >= 0 ? std::atoi(text) : -1;
    }();
    if (from_environment >= 0) return from_environment;
    return static_cast<int>(kDecodeSinglePassBytes / ((head_dim + v_head_dim) * 2));
}

Status kv_write_bf16(const KvCacheBf16View& cache, const int64_t* positions, int64_t n_tokens, const float* k,
                     const float* v, cudaStream_t stream) {
    if (n_tokens < 1 || n_tokens > (int64_t{1} << 24) || cache.capacity < 1 || cache.capacity >= (int64_t{1} << 31) ||
        cache.n_kv_heads < 1 || cache.head_dim < 8 || cache.head_dim % 8 != 0 || cache.v_head_dim < 8 ||
        cache.v_head_dim % 8 != 0 || cache.n_kv_heads * std::max(cache.head_dim, cache.v_head_dim) >= (int64_t{1} << 30)) {
        return Status(StatusCode::kInvalidArgument,
                      "kv_write_bf16: " + std::to_string(n_tokens) + " tokens into a cache of capacity " +
                          std::to_string(cache.capacity) + ", " + std::to_string(cache.n_kv_heads) + " kv heads x " +
                          std::to_string(cache.head_dim) + " / " + std::to_string(cache.v_head_dim) +
                          " (head dims must be multiples of 8)");
    }
    if (positions == nullptr || k == nullptr || v == nullptr || cache.k == nullptr || cache.v == nullptr ||
        !attention_aligned16(k) || !attention_aligned16(v) || !attention_aligned16(cache.k) ||
        !attention_aligned16(cache.v)) {
        return Status(StatusCode::kInvalidArgument, "kv_write_bf16: null pointer, or k / v / cache not 16-byte aligned");
    }
    const int k_row = static_cast<int>(cache.n_kv_heads * cache.head_dim);
    const int v_row = static_cast<int>(cache.n_kv_heads * cache.v_head_dim);
    const int64_t k_chunks = n_tokens * (k_row / 8);
    const int64_t total_chunks = k_chunks + n_tokens * (v_row / 8);
    const int64_t blocks = std::min<int64_t>((total_chunks + kWriteThreads - 1) / kWriteThreads, 16384);
    KESTREL_CUDA_CHECK(launch_overlapped(kv_write_bf16_kernel, dim3(static_cast<unsigned>(blocks)),
                                         dim3(kWriteThreads), 0, stream, k, v, positions, k_chunks,
                                         total_chunks, k_row, v_row,
                                         static_cast<int>(cache.capacity), cache.k, cache.v));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

namespace {

size_t decode_workspace_bytes(int64_t n_tokens, const KvCacheBf16View& cache,
                              const AttentionShape& shape, bool tq4) {
    if (n_tokens < 1 || cache.n_kv_heads < 1 || shape.n_heads < cache.n_kv_heads || cache.capacity < 1) return 0;
    const int64_t splits = decode_max_splits(n_tokens, cache, shape, tq4);
    return partial_acc_bytes(splits, n_tokens, cache, shape) +
           static_cast<size_t>(splits * n_tokens * shape.n_heads * 2) * sizeof(float);
}

}  // namespace

size_t attention_decode_workspace_bytes(int64_t n_tokens, const KvCacheBf16View& cache,
                                        const AttentionShape& shape) {
    return decode_workspace_bytes(n_tokens, cache, shape, false);
}

size_t attention_decode_tq4_workspace_bytes(int64_t n_tokens, const KvCacheTq4View& cache,
                                            const AttentionShape& shape) {
    return decode_workspace_bytes(n_tokens, tq4_shadow_view(cache), shape, true);
}

namespace {

Status launch_attention_decode(const char* what, const float* q, const int64_t* positions,
                               int64_t n_tokens, const KvCacheBf16View& cache,
                               const AttentionShape& shape, void* workspace, float* out,
                               Q8Block* out_q8, const KvCacheTq4View* tq4, cudaStream_t stream,
                               DecodeCombine combine = DecodeCombine::kReduceKernel,
                               const DecodeInputsArgs* fused_inputs = nullptr) {
    KESTREL_RETURN_IF_ERROR(
        check_attention_arguments(what, q, positions, n_tokens, cache, shape,
                                  out != nullptr ? static_cast<const void*>(out) : out_q8));
    if (out != nullptr && out_q8 != nullptr && !attention_aligned16(out_q8)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": Q8 output not 16-byte aligned");
    }
    if (out_q8 != nullptr && cache.v_head_dim % 32 != 0) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": Q8 output needs v_head_dim % 32 == 0, not " +
                          std::to_string(cache.v_head_dim));
    }
    if (workspace == nullptr || !attention_aligned16(workspace)) {
        return Status(
            StatusCode::kInvalidArgument,
            std::string(what) +
                ": needs a 16-byte aligned workspace of attention_decode_workspace_bytes");
    }
    AttentionKernelArgs args = make_attention_kernel_args(q, positions, n_tokens, cache, shape, out);
    args.out_q8 = out_q8;
    const int64_t splits = decode_max_splits(n_tokens, cache, shape, tq4 != nullptr);
    args.max_splits = static_cast<int>(splits);
    args.single_pass_keys = decode_single_pass_keys(cache.head_dim, cache.v_head_dim);
    args.partial_acc = static_cast<float*>(workspace);
    args.partial_ml = reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) +
                                               partial_acc_bytes(splits, n_tokens, cache, shape));
    if (tq4 != nullptr) {  // out_q8 is null here: the TQ4 splits' kernel writes only out
        set_tq4_arguments(*tq4, args);
        KESTREL_RETURN_IF_ERROR(launch_attention_decode_tq4_splits(args, stream));
        return launch_reduce(args, stream);
    }
    // KESTREL_DECODE_CLUSTERS=0 in the environment takes the reduce kernel always (to measure).
    static const bool clusters_allowed = [] {
        const char* value = std::getenv("KESTREL_DECODE_CLUSTERS");
        return value == nullptr || std::string(value) != "0";
    }();
    args.cluster_combine = combine == DecodeCombine::kAuto && clusters_allowed &&
                           attention_decode_combines_in_clusters(n_tokens, cache, shape);
    if (fused_inputs != nullptr) {  // head dims 256 and 512 (attention_decode_fuses_inputs)
        return cache.head_dim == 256 ? launch_decode<256, true>(args, fused_inputs, stream)
                                     : launch_decode<512, true>(args, fused_inputs, stream);
    }
    switch (attention_padded_head_dim(cache.head_dim, cache.v_head_dim)) {
        case 64:
            return launch_decode<64, false>(args, nullptr, stream);
        case 128:
            return launch_decode<128, false>(args, nullptr, stream);
        case 256:
            return launch_decode<256, false>(args, nullptr, stream);
        default:
            return launch_decode<512, false>(args, nullptr, stream);
    }
}

}  // namespace

Status attention_decode(const float* q, const int64_t* positions, int64_t n_tokens,
                        const KvCacheBf16View& cache, const AttentionShape& shape, void* workspace,
                        float* out, cudaStream_t stream, DecodeCombine combine) {
    return launch_attention_decode("attention_decode", q, positions, n_tokens, cache, shape,
                                   workspace, out, nullptr, nullptr, stream, combine);
}

Status attention_decode_quantize_q8(const float* q, const int64_t* positions, int64_t n_tokens,
                                    const KvCacheBf16View& cache, const AttentionShape& shape,
                                    void* workspace, float* out, Q8Block* out_q8,
                                    cudaStream_t stream, DecodeCombine combine) {
    if (out_q8 == nullptr) {
        return Status(StatusCode::kInvalidArgument, "attention_decode_quantize_q8: null Q8 output");
    }
    return launch_attention_decode("attention_decode_quantize_q8", q, positions, n_tokens, cache,
                                   shape, workspace, out, out_q8, nullptr, stream, combine);
}

bool attention_decode_fuses_inputs(const AttentionInputs& inputs, int64_t n_tokens,
                                   const KvCacheBf16View& cache) {
    // KESTREL_DECODE_FUSED_INPUTS=0 in the environment keeps the two launches (to measure).
    static const bool allowed = [] {
        const char* value = std::getenv("KESTREL_DECODE_FUSED_INPUTS");
        return value == nullptr || std::string(value) != "0";
    }();
    const int64_t hd = inputs.head_dim;
    return allowed && n_tokens == 1 && inputs.partial_rotary_dim == 0 && (hd == 256 || hd == 512) &&
           cache.head_dim == hd && cache.v_head_dim == hd &&
           cache.n_kv_heads == inputs.n_kv_heads && inputs.rotary_pairs >= 0 &&
           inputs.rotary_pairs <= hd / 2 && cache.k != nullptr && cache.v != nullptr;
}

Status attention_decode_fused_inputs_quantize_q8(const AttentionInputs& inputs,
                                                 const float* inv_freq, const int64_t* positions,
                                                 const KvCacheBf16View& cache,
                                                 const AttentionShape& shape, void* workspace,
                                                 float* out, Q8Block* out_q8, cudaStream_t stream,
                                                 DecodeCombine combine) {
    const char* what = "attention_decode_fused_inputs_quantize_q8";
    if (!attention_decode_fuses_inputs(inputs, 1, cache)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": " + std::to_string(inputs.n_heads) + " / " +
                          std::to_string(inputs.n_kv_heads) + " heads x " +
                          std::to_string(inputs.head_dim) + " over a cache of " +
                          std::to_string(cache.n_kv_heads) + " x " +
                          std::to_string(cache.head_dim) +
                          " is not a fused shape (attention_decode_fuses_inputs), or "
                          "KESTREL_DECODE_FUSED_INPUTS=0");
    }
    if (out_q8 == nullptr || inputs.n_heads != shape.n_heads) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": null Q8 output, or inputs of " +
                          std::to_string(inputs.n_heads) + " heads for an attention of " +
                          std::to_string(shape.n_heads));
    }
    if (inputs.k == nullptr || (!inputs.v_from_raw_k && inputs.v == nullptr) ||
        (inv_freq == nullptr && inputs.rotary_pairs > 0) || !attention_aligned16(inputs.k) ||
        !attention_aligned16(inputs.v) || !attention_aligned16(cache.k) ||
        !attention_aligned16(cache.v)) {
        return Status(
            StatusCode::kInvalidArgument,
            std::string(what) + ": null k / v / inv_freq, or k / v / cache not 16-byte aligned");
    }
    const DecodeInputsArgs fused = make_decode_inputs_args(inputs, cache, inv_freq);
    return launch_attention_decode(what, inputs.q, positions, 1, cache, shape, workspace, out,
                                   out_q8, nullptr, stream, combine, &fused);
}

Status attention_decode_tq4(const float* q_rotated, const int64_t* positions, int64_t n_tokens,
                            const KvCacheTq4View& cache, const AttentionShape& shape,
                            void* workspace, float* out_rotated, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_tq4_cache("attention_decode_tq4", cache, shape));
    return launch_attention_decode("attention_decode_tq4", q_rotated, positions, n_tokens,
                                   tq4_shadow_view(cache), shape, workspace, out_rotated, nullptr,
                                   &cache, stream);
}

}  // namespace kestrel::cuda
