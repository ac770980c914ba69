// The prefill routed experts of a Qwen3.5-MoE layer (host API and semantics: moe_prefill.h; the
// CPU twin: tests/unit/cuda_moe_prefill_test.cpp). Why a second path: moe_experts (decode) reads
// each slot's expert weights once per token, 3.1 ms per layer at 512 tokens on an H100; grouped
// by expert, a 64-row tile reads them once for 64 slots and multiplies on the tensor cores.
//
// Five launches, in stream order:
//   1. convert_f32_to_bf16 (dequantize_bf16.cu): x -> x_bf16 [rows, dim].
//   2. moe_prefill_route_kernel, ONE block of 1024 threads: a shared-memory histogram of the ids
//      per expert, an exclusive scan of the counts (offsets) and of the tiles ceil(count / 64),
//      the tile table (expert, first, end sorted position) and, with shared-memory atomics, each
//      known slot's sorted position (sorted_slots[position] = t k + j). The order of slots within
//      an expert's group depends on the atomics, but no result does: each row of a GEMM tile is
//      computed on its own, in an order fixed by the tile's k loop. Unknown ids (outside
//      [0, n_experts)) get no position and no tile. 16384 slots cost each thread 16 ids.
//   3. moe_prefill_gemm_kernel<Loader, true> (gate_up): grid (ceil(ffn / 64), max_tiles); block
//      (c, tile) computes, for the tile's <= 64 sorted rows (x_bf16 rows t = slot / k, gathered in
//      the tile load), gate columns c*64 .. +64 and the matching up columns (weight rows
//      e*2ffn + c*64 + i and e*2ffn + ffn + c*64 + i: 128 weight rows in one B tile), and writes
//      act = bf16(silu(g) * u) to act [position, ffn].
//   4. moe_prefill_gemm_kernel<Loader, false> (down): grid (ceil(dim / 128), max_tiles); block
//      (c, tile) multiplies the tile's act rows by down rows e*dim + c*128 .. +128 and writes
//      fp32 y at the slot's own row t k + j (so the combine needs no sorted order).
//   5. moe_prefill_combine_kernel: out[t] = (accumulate ? out[t] : 0) + sum_j weights[t, j] y_j in
//      j order; a slot with an unknown id contributes NaN.
// The GEMM grids are sized on the host from rows k and n_experts (max_tiles bounds the tiles any
// routing needs: sum_e ceil(c_e / 64) <= rows k / 64 + the experts in use); a block whose tile
// index is at or past the routing's tile count returns at once.
//
// GEMM block: 256 threads (8 warps as 2 x 4, each a 32 x 32 piece of the 64 x 128 tile: 2 x 2
// WMMA bf16 16x16x16 fragments, fp32 accumulators). K steps of 32 (one weight group, so each
// weight row's step has one scale): each thread loads one 16-byte piece of A (row tid / 4) and
// half a group of B (row tid / 2: W4 8 bytes of nibbles + its scales, W8 16 bytes + its (scale,
// min)) for step s + 1 into registers while the warps multiply step s from shared memory, then
// dequantises them into the other shared buffer (two buffers, one barrier per step). Shared
// memory: A [2][64][40] + B [2][128][40] bf16 (rows padded by 8 so ldmatrix's 8 rows of a phase
// hit distinct banks) = 30 KiB, reused after the loop as the fp32 C tile [64][132] (33 KiB) for
// the epilogue, which needs gate and up of a column together (gate_up) or a row per slot (down).
// __launch_bounds__(256, 2): two blocks per SM overlap one's loads with the other's MMAs.
//
// Cost at rows 2048, k 8 (16384 slots, ~64 per expert): 103 GFLOP of MMAs. Each tile reads and
// dequantises its expert's weights once per column block: 3 x 512 x 2048 weights per expert
// (W4: 0.9 MB), ~1.5 tiles per expert at 64 +- 8 slots, so ~1.2 G weights dequantised on the
// CUDA cores (16 per thread per K step, amortised over the tile's 64 rows) and ~0.35 GB of W4
// read, mostly once from DRAM (an expert's tiles run side by side). Not yet measured on a GPU.
#include "ops/cuda/moe_prefill.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <limits>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm_prefill.h"  // convert_f32_to_bf16
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- tiles ------------------------------------------------------------------------------------

constexpr int kBM = static_cast<int>(kMoePrefillTileRows);  // sorted rows per tile
constexpr int kBN = 128;                                    // weight rows per tile
constexpr int kBK = 32;                                     // K per step: one weight group
constexpr int kLds = kBK + 8;                               // shared row stride (bf16)
constexpr int kLdc = kBN + 4;                               // C tile row stride (fp32)
constexpr int kGemmThreads = 256;
constexpr int kRouteThreads = 1024;
constexpr int kCombineThreads = 256;

static_assert(kBM * kBK / 8 == kGemmThreads, "one 16-byte piece of A per thread and step");
static_assert(kBN * 2 == kGemmThreads, "half a weight group per thread and step");

struct GemmTiles {
    uint16_t a[2][kBM][kLds];
    uint16_t b[2][kBN][kLds];
};
union GemmShared {
    GemmTiles tiles;
    float c[kBM][kLdc];
};
static_assert(sizeof(GemmShared) <= 48 * 1024, "static shared memory");

// ---- bf16 and dequantisation (dequantize_bf16.cu's arithmetic, bit for bit) ------------------

// core/half.h fp32_to_bf16: NaN -> quiet NaN, everything else rounded to nearest even.
__device__ __forceinline__ uint32_t bf16_bits(float value) {
    uint32_t bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (bits >> 16) | 0x40u;
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return bits >> 16;
}

__device__ __forceinline__ uint32_t bf16_pair(float low, float high) {
    return bf16_bits(low) | (bf16_bits(high) << 16);
}

__device__ __forceinline__ float fp16_bits_to_float(uint32_t bits) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));  // exact widening
}

// w4_dequantize / w8_dequantize: the product and the difference each rounded, never fused.
__device__ __forceinline__ float scale_q_minus_min(float scale, int q, float min) {
    return __fsub_rn(__fmul_rn(scale, static_cast<float>(q)), min);
}

// W4 (ops/weight_format.h): half h of group g of a row is bytes 8h .. 8h + 7 of its 16, whose low
// nibbles are weights 8h .. 8h + 7 and high nibbles weights 16 + 8h .. 16 + 8h + 7.
struct W4Loader {
    const uint8_t* qs;
    const uint16_t* group_scales;
    const uint32_t* super_scales;
    int64_t groups;  // per row: cols / 32
    int64_t supers;  // per row: ceil(groups / 8)

    struct Regs {
        uint2 q;
        uint32_t sc_m;
        uint32_t d_dmin;
    };

    __device__ Regs load(int64_t row, int group, int half) const {
        const int64_t at = row * groups + group;
        Regs r;
        r.q = *reinterpret_cast<const uint2*>(qs + at * 16 + half * 8);
        r.sc_m = group_scales[at];
        r.d_dmin = super_scales[row * supers + group / 8];
        return r;
    }

    // The 16 weights of the half as bf16 into dst (a B row of the shared tile).
    __device__ static void store(const Regs& r, bool valid, int half, uint16_t* dst) {
        uint4 low = make_uint4(0, 0, 0, 0), high = make_uint4(0, 0, 0, 0);
        if (valid) {
            const float scale = __fmul_rn(fp16_bits_to_float(r.d_dmin & 0xffffu),
                                          static_cast<float>(r.sc_m & 0xffu));
            const float min =
                __fmul_rn(fp16_bits_to_float(r.d_dmin >> 16), static_cast<float>(r.sc_m >> 8));
            uint32_t lo[4], hi[4];
#pragma unroll
            for (int p = 0; p < 4; ++p) {
                const uint32_t word = (p < 2 ? r.q.x : r.q.y) >> ((p & 1) * 16);  // bytes 2p, 2p+1
                const int b0 = static_cast<int>(word & 0xffu);
                const int b1 = static_cast<int>((word >> 8) & 0xffu);
                lo[p] = bf16_pair(scale_q_minus_min(scale, b0 & 15, min),
                                  scale_q_minus_min(scale, b1 & 15, min));
                hi[p] = bf16_pair(scale_q_minus_min(scale, b0 >> 4, min),
                                  scale_q_minus_min(scale, b1 >> 4, min));
            }
            low = make_uint4(lo[0], lo[1], lo[2], lo[3]);
            high = make_uint4(hi[0], hi[1], hi[2], hi[3]);
        }
        *reinterpret_cast<uint4*>(dst + 8 * half) = low;
        *reinterpret_cast<uint4*>(dst + 16 + 8 * half) = high;
    }
};

// W8 (ops/weight_format_w8.h): half h of group g is bytes (weights) 16h .. 16h + 15.
struct W8Loader {
    const int8_t* qs;
    const uint32_t* scale_min;
    int64_t cols;
    int64_t groups;  // per row: cols / 32

    struct Regs {
        uint4 q;
        uint32_t scale_min;
    };

    __device__ Regs load(int64_t row, int group, int half) const {
        Regs r;
        r.q = *reinterpret_cast<const uint4*>(qs + row * cols + group * 32 + half * 16);
        r.scale_min = scale_min[row * groups + group];
        return r;
    }

    __device__ static void store(const Regs& r, bool valid, int half, uint16_t* dst) {
        uint4 first = make_uint4(0, 0, 0, 0), second = make_uint4(0, 0, 0, 0);
        if (valid) {
            const float scale = fp16_bits_to_float(r.scale_min & 0xffffu);
            const float min = fp16_bits_to_float(r.scale_min >> 16);
            const uint32_t words[4] = {r.q.x, r.q.y, r.q.z, r.q.w};
            uint32_t pairs[8];
#pragma unroll
            for (int p = 0; p < 8; ++p) {
                const uint32_t word = words[p >> 1] >> ((p & 1) * 16);
                pairs[p] = bf16_pair(
                    scale_q_minus_min(scale, static_cast<int8_t>(word & 0xffu), min),
                    scale_q_minus_min(scale, static_cast<int8_t>((word >> 8) & 0xffu), min));
            }
            first = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
            second = make_uint4(pairs[4], pairs[5], pairs[6], pairs[7]);
        }
        *reinterpret_cast<uint4*>(dst + 16 * half) = first;
        *reinterpret_cast<uint4*>(dst + 16 * half + 8) = second;
    }
};

// ---- 2. routing -------------------------------------------------------------------------------

// One block of kRouteThreads. Shared: counts [n_experts], then cursor [n_experts].
__global__ void __launch_bounds__(kRouteThreads)
    moe_prefill_route_kernel(const int32_t* __restrict__ ids, int slots, int n_experts,
                             int32_t* __restrict__ offsets, int4* __restrict__ tiles,
                             int32_t* __restrict__ sorted_slots) {
    extern __shared__ int32_t route_shared[];
    __shared__ int warp_totals[2][kRouteThreads / 32];
    int32_t* counts = route_shared;
    int32_t* cursor = route_shared + n_experts;
    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid & 31;
    const int warp = tid >> 5;
    allow_downstream();
    for (int e = tid; e < n_experts; e += kRouteThreads) counts[e] = 0;
    __syncthreads();
    wait_for_upstream();  // ids come from the router kernel
    for (int s = tid; s < slots; s += kRouteThreads) {
        const int32_t e = ids[s];
        if (e >= 0 && e < n_experts) atomicAdd(&counts[e], 1);
    }
    __syncthreads();

    // Exclusive scans of the counts and of the tiles per expert: thread tid owns experts
    // [first, last), a contiguous chunk, so the chunks' sums are scanned across the block.
    const int per_thread = (n_experts + kRouteThreads - 1) / kRouteThreads;
    const int first = min(tid * per_thread, n_experts);
    const int last = min(first + per_thread, n_experts);
    int rows_sum = 0, tiles_sum = 0;
    for (int e = first; e < last; ++e) {
        rows_sum += counts[e];
        tiles_sum += (counts[e] + kBM - 1) / kBM;
    }
    int rows_incl = rows_sum, tiles_incl = tiles_sum;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const int r = __shfl_up_sync(kFullMask, rows_incl, offset);
        const int t = __shfl_up_sync(kFullMask, tiles_incl, offset);
        if (lane >= offset) {
            rows_incl += r;
            tiles_incl += t;
        }
    }
    if (lane == 31) {
        warp_totals[0][warp] = rows_incl;
        warp_totals[1][warp] = tiles_incl;
    }
    __syncthreads();
    if (warp == 0) {
        int r = warp_totals[0][lane], t = warp_totals[1][lane];
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const int r_up = __shfl_up_sync(kFullMask, r, offset);
            const int t_up = __shfl_up_sync(kFullMask, t, offset);
            if (lane >= offset) {
                r += r_up;
                t += t_up;
            }
        }
        warp_totals[0][lane] = r;  // inclusive over warps
        warp_totals[1][lane] = t;
    }
    __syncthreads();
    int rows_before = rows_incl - rows_sum + (warp > 0 ? warp_totals[0][warp - 1] : 0);
    int tiles_before = tiles_incl - tiles_sum + (warp > 0 ? warp_totals[1][warp - 1] : 0);
    for (int e = first; e < last; ++e) {
        const int count = counts[e];
        offsets[e] = rows_before;
        cursor[e] = rows_before;
        const int n_tiles = (count + kBM - 1) / kBM;
        for (int i = 0; i < n_tiles; ++i) {
            tiles[tiles_before + i] = make_int4(e, rows_before + i * kBM, rows_before + count, 0);
        }
        rows_before += count;
        tiles_before += n_tiles;
    }
    if (tid == kRouteThreads - 1) {  // its chunk is the last (possibly empty) one: totals
        offsets[n_experts] = rows_before;
        offsets[n_experts + 1] = tiles_before;
    }
    __syncthreads();
    for (int s = tid; s < slots; s += kRouteThreads) {
        const int32_t e = ids[s];
        if (e >= 0 && e < n_experts) sorted_slots[atomicAdd(&cursor[e], 1)] = s;
    }
}

// ---- 3, 4. the grouped GEMMs ------------------------------------------------------------------

// kGateUp: a_src = x_bf16 [rows, dim] (row of sorted position p: sorted_slots[p] / top_k),
//   K = dim, n_cols = ffn, out = act bf16 [slots, ffn] at sorted positions; the B tile's rows
//   0..63 are gate rows e*2ffn + c0 + i, rows 64..127 up rows e*2ffn + ffn + c0 + i.
// !kGateUp: a_src = act [slots, ffn] (row p), K = ffn, n_cols = dim, out = y fp32 [slots, dim]
//   at row sorted_slots[p]; the B tile's rows are down rows e*dim + c0 + i.
template <class Loader, bool kGateUp>
__global__ void __launch_bounds__(kGemmThreads, 2)
    moe_prefill_gemm_kernel(const uint16_t* __restrict__ a_src,
                            const int32_t* __restrict__ sorted_slots,
                            const int32_t* __restrict__ offsets, const int4* __restrict__ tiles,
                            Loader w, int n_experts, int top_k, int K, int n_cols,
                            void* __restrict__ out) {
    namespace wmma = nvcuda::wmma;
    __shared__ __align__(128) GemmShared shared;
    allow_downstream();
    wait_for_upstream();  // the tile table, sorted slots and A come from the previous kernels
    const int tile_index = static_cast<int>(blockIdx.y);
    if (tile_index >= offsets[n_experts + 1]) return;  // uniform over the block
    const int4 tile = tiles[tile_index];
    const int64_t expert = tile.x;
    const int row_begin = tile.y;
    const int row_end = tile.z;
    constexpr int kCols = kGateUp ? kBN / 2 : kBN;  // output columns per block
    const int c0 = static_cast<int>(blockIdx.x) * kCols;

    const int tid = static_cast<int>(threadIdx.x);
    // A: row tid / 4 of the tile, 8 bf16 at column (tid % 4) * 8 of the step.
    const int a_row = tid >> 2;
    const int a_piece = tid & 3;
    const uint16_t* a_ptr = nullptr;
    if (row_begin + a_row < row_end) {
        const int p = row_begin + a_row;
        const int64_t src_row = kGateUp ? sorted_slots[p] / top_k : p;
        a_ptr = a_src + src_row * K + a_piece * 8;
    }
    // B: weight row tid / 2 of the tile, half tid % 2 of the step's group.
    const int b_row = tid >> 1;
    const int b_half = tid & 1;
    int64_t w_row = 0;
    bool b_valid = false;
    if constexpr (kGateUp) {
        const int c = c0 + (b_row & (kCols - 1));
        b_valid = c < n_cols;
        w_row = expert * 2 * n_cols + (b_row >= kCols ? n_cols : 0) + c;
    } else {
        const int c = c0 + b_row;
        b_valid = c < n_cols;
        w_row = expert * n_cols + c;
    }

    const int warp = tid >> 5;
    const int warp_m = warp >> 2;  // 0..1: rows warp_m * 32
    const int warp_n = warp & 3;   // 0..3: columns warp_n * 32
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    }

    const int steps = K / kBK;
    uint4 a_regs = make_uint4(0, 0, 0, 0);
    typename Loader::Regs b_regs{};
    const auto load = [&](int step) {
        a_regs = a_ptr != nullptr ? *reinterpret_cast<const uint4*>(a_ptr + step * kBK)
                                  : make_uint4(0, 0, 0, 0);
        if (b_valid) b_regs = w.load(w_row, step, b_half);
    };
    const auto store = [&](int buffer) {
        *reinterpret_cast<uint4*>(&shared.tiles.a[buffer][a_row][a_piece * 8]) = a_regs;
        Loader::store(b_regs, b_valid, b_half, &shared.tiles.b[buffer][b_row][0]);
    };

    load(0);
    store(0);
    __syncthreads();
    for (int step = 0; step < steps; ++step) {
        const int buffer = step & 1;
        if (step + 1 < steps) load(step + 1);
#pragma unroll
        for (int kk = 0; kk < kBK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                wmma::load_matrix_sync(a[i],
                                       reinterpret_cast<const __nv_bfloat16*>(
                                           &shared.tiles.a[buffer][warp_m * 32 + i * 16][kk]),
                                       kLds);
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                // B = W^T [K, n]: column n is weight row n, K-contiguous: column-major, ld kLds.
                wmma::load_matrix_sync(b[j],
                                       reinterpret_cast<const __nv_bfloat16*>(
                                           &shared.tiles.b[buffer][warp_n * 32 + j * 16][kk]),
                                       kLds);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
            }
        }
        if (step + 1 < steps) store(buffer ^ 1);
        __syncthreads();
    }

    // Epilogue through shared memory (the tiles are dead after the last barrier).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(&shared.c[warp_m * 32 + i * 16][warp_n * 32 + j * 16],
                                    acc[i][j], kLdc, wmma::mem_row_major);
        }
    }
    __syncthreads();
    if constexpr (kGateUp) {
        // 64 rows x 8 pieces of 8 act values (one 16-byte store each).
        uint16_t* act = static_cast<uint16_t*>(out);
        for (int i = tid; i < kBM * (kCols / 8); i += kGemmThreads) {
            const int r = i / (kCols / 8);
            const int piece = i % (kCols / 8);
            const int p = row_begin + r;
            const int c = c0 + piece * 8;
            if (p >= row_end || c >= n_cols) continue;  // n_cols % 32 == 0: whole pieces
            uint32_t pairs[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                float v[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int col = piece * 8 + 2 * q + h;
                    const float g = shared.c[r][col];
                    const float u = shared.c[r][kCols + col];
                    // ops/cpu silu_and_mul: silu(g) = g / (1 + exp(-g)), then times u.
                    v[h] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
                }
                pairs[q] = bf16_pair(v[0], v[1]);
            }
            *reinterpret_cast<uint4*>(act + static_cast<int64_t>(p) * n_cols + c) =
                make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
        }
    } else {
        // 64 rows x 32 pieces of 4 fp32 (one 16-byte store each), each row to its slot's row.
        float* y = static_cast<float*>(out);
        for (int i = tid; i < kBM * (kCols / 4); i += kGemmThreads) {
            const int r = i / (kCols / 4);
            const int piece = i % (kCols / 4);
            const int p = row_begin + r;
            const int c = c0 + piece * 4;
            if (p >= row_end || c >= n_cols) continue;  // n_cols % 32 == 0: whole pieces
            const int64_t slot = sorted_slots[p];
            *reinterpret_cast<float4*>(y + slot * n_cols + c) =
                make_float4(shared.c[r][piece * 4], shared.c[r][piece * 4 + 1],
                            shared.c[r][piece * 4 + 2], shared.c[r][piece * 4 + 3]);
        }
    }
}

// ---- 5. the weighted sum ----------------------------------------------------------------------

// One thread per 4 consecutive outputs of a row (dim % 32 == 0): y's rows are 16-byte aligned;
// out is read and written element by element (it needs only 4-byte alignment).
__global__ void __launch_bounds__(kCombineThreads)
    moe_prefill_combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ ids,
                               const float* __restrict__ weights, int top_k, int n_experts, int dim,
                               int64_t quads, bool accumulate, float* __restrict__ out) {
    allow_downstream();
    wait_for_upstream();
    const int64_t i = blockIdx.x * int64_t{kCombineThreads} + threadIdx.x;
    if (i >= quads) return;
    const int64_t t = i / (dim / 4);
    const int c = static_cast<int>(i % (dim / 4)) * 4;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float nan = __int_as_float(0x7fc00000);
    for (int j = 0; j < top_k; ++j) {
        const int64_t slot = t * top_k + j;
        const int32_t e = ids[slot];
        if (e < 0 || e >= n_experts) {
            for (float& s : sum) s = nan;
            continue;
        }
        const float weight = weights[slot];
        const float4 v = *reinterpret_cast<const float4*>(y + slot * dim + c);
        // ops/cpu moe_experts: out = 0, then out += weights[t, j] * y_j for j = 0 .. k-1.
        sum[0] = __fadd_rn(sum[0], __fmul_rn(weight, v.x));
        sum[1] = __fadd_rn(sum[1], __fmul_rn(weight, v.y));
        sum[2] = __fadd_rn(sum[2], __fmul_rn(weight, v.z));
        sum[3] = __fadd_rn(sum[3], __fmul_rn(weight, v.w));
    }
    float* row = out + t * dim + c;
#pragma unroll
    for (int q = 0; q < 4; ++q) row[q] = accumulate ? __fadd_rn(row[q], sum[q]) : sum[q];
}

// ---- host side --------------------------------------------------------------------------------

bool aligned(const void* p, uintptr_t to) {
    return (reinterpret_cast<uintptr_t>(p) % to) == 0;
}

Status invalid(const std::string& message) {
    return Status(StatusCode::kInvalidArgument, "moe_experts_prefill: " + message);
}

size_t round_up_256(int64_t bytes) {
    return static_cast<size_t>((bytes + 255) / 256 * 256);
}

// The view's arrays: present, aligned as the kernels load them, and of the stack's shape.
Status check_stack(const ExpertStackView& view, const char* name, int64_t rows, int64_t cols) {
    if (view.rows() != rows || view.cols() != cols) {
        return invalid(std::string(name) + " stack is [" + std::to_string(view.rows()) + ", " +
                       std::to_string(view.cols()) + "], expected [" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "]");
    }
    if (view.is_w4) {
        if (view.w4.qs == nullptr || view.w4.group_scales == nullptr ||
            view.w4.super_scales == nullptr || !aligned(view.w4.qs, 16) ||
            !aligned(view.w4.group_scales, 2) || !aligned(view.w4.super_scales, 4)) {
            return invalid(std::string(name) +
                           " (W4): null array, or qs not 16-byte aligned, group_scales not 2, "
                           "super_scales not 4");
        }
    } else if (view.w8.qs == nullptr || view.w8.scale_min == nullptr || !aligned(view.w8.qs, 16) ||
               !aligned(view.w8.scale_min, 4)) {
        return invalid(std::string(name) +
                       " (W8): null array, or qs not 16-byte aligned, scale_min not 4");
    }
    return ok_status();
}

W4Loader w4_loader(const W4DeviceView& v) {
    const int64_t groups = v.k / 32;
    return {v.qs, v.group_scales, v.super_scales, groups, (groups + 7) / 8};
}

W8Loader w8_loader(const W8DeviceView& v) {
    return {v.qs, v.scale_min, v.k, v.k / 32};
}

template <class Loader, bool kGateUp>
Status launch_gemm(const uint16_t* a_src, const int32_t* sorted_slots, const int32_t* offsets,
                   const int4* tiles, const Loader& loader, int64_t max_tiles, int64_t n_experts,
                   int64_t top_k, int64_t K, int64_t n_cols, void* out, cudaStream_t stream) {
    constexpr int64_t kCols = kGateUp ? kBN / 2 : kBN;
    const dim3 grid(static_cast<unsigned>((n_cols + kCols - 1) / kCols),
                    static_cast<unsigned>(max_tiles));
    KESTREL_CUDA_CHECK(launch_overlapped(
        moe_prefill_gemm_kernel<Loader, kGateUp>, grid, dim3(kGemmThreads), 0, stream, a_src,
        sorted_slots, offsets, tiles, loader, static_cast<int>(n_experts), static_cast<int>(top_k),
        static_cast<int>(K), static_cast<int>(n_cols), out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

template <bool kGateUp>
Status launch_gemm_stack(const ExpertStackView& stack, const uint16_t* a_src,
                         const int32_t* sorted_slots, const int32_t* offsets, const int4* tiles,
                         int64_t max_tiles, int64_t n_experts, int64_t top_k, int64_t K,
                         int64_t n_cols, void* out, cudaStream_t stream) {
    if (stack.is_w4) {
        return launch_gemm<W4Loader, kGateUp>(a_src, sorted_slots, offsets, tiles,
                                              w4_loader(stack.w4), max_tiles, n_experts, top_k, K,
                                              n_cols, out, stream);
    }
    return launch_gemm<W8Loader, kGateUp>(a_src, sorted_slots, offsets, tiles, w8_loader(stack.w8),
                                          max_tiles, n_experts, top_k, K, n_cols, out, stream);
}

}  // namespace

MoePrefillLayout moe_prefill_scratch_layout(int64_t rows, int64_t k, int64_t dim, int64_t ffn,
                                            int64_t n_experts) {
    MoePrefillLayout layout;
    if (rows <= 0 || k <= 0 || dim <= 0 || ffn <= 0 || n_experts <= 0) return layout;
    const int64_t slots = rows * k;
    layout.max_tiles = (slots + kBM - 1) / kBM + std::min(n_experts, slots);
    size_t at = 0;
    layout.x_bf16 = at;
    at += round_up_256(rows * dim * 2);
    layout.act = at;
    at += round_up_256(slots * ffn * 2);
    layout.y = at;
    at += round_up_256(slots * dim * 4);
    layout.sorted_slots = at;
    at += round_up_256(slots * 4);
    layout.offsets = at;
    at += round_up_256((n_experts + 2) * 4);
    layout.tiles = at;
    at += round_up_256(layout.max_tiles * 16);
    layout.total = at;
    return layout;
}

size_t moe_prefill_scratch_bytes(int64_t rows, int64_t k, int64_t dim, int64_t ffn,
                                 int64_t n_experts) {
    return moe_prefill_scratch_layout(rows, k, dim, ffn, n_experts).total;
}

Status moe_experts_prefill(const float* x, int64_t rows, const int32_t* ids, const float* weights,
                           int64_t k, const ExpertStackView& gate_up, const ExpertStackView& down,
                           int64_t n_experts, int64_t ffn, int64_t dim, void* scratch,
                           bool accumulate, float* out, cudaStream_t stream) {
    constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
    if (rows < 0 || k < 1 || k > kMoeMaxTopK || n_experts < 1 ||
        n_experts > kMoePrefillMaxExperts) {
        return invalid(std::to_string(rows) + " rows, top " + std::to_string(k) + " of " +
                       std::to_string(n_experts) +
                       " experts: needs rows >= 0, 1 <= k <= " + std::to_string(kMoeMaxTopK) +
                       " and 1 <= n_experts <= " + std::to_string(kMoePrefillMaxExperts));
    }
    if (dim <= 0 || ffn <= 0 || dim % 32 != 0 || ffn % 32 != 0 || dim > kIntMax / 2 ||
        ffn > kIntMax / 2) {
        return invalid("dim " + std::to_string(dim) + ", ffn " + std::to_string(ffn) +
                       ": needs positive multiples of 32");
    }
    // Slots, sorted positions and the kernels' row indices are int; the GEMM grids' y (tiles)
    // is at most 65535; stack rows (n_experts * 2 ffn, n_experts * dim) are int64 in the loaders.
    const int64_t slots = rows * k;
    if (rows > kIntMax / k || (slots + kBM - 1) / kBM + std::min(n_experts, slots) > 65535) {
        return invalid(std::to_string(rows) + " rows of top " + std::to_string(k) +
                       ": too many slots for one call (split the prompt)");
    }
    KESTREL_RETURN_IF_ERROR(check_stack(gate_up, "gate_up", n_experts * 2 * ffn, dim));
    KESTREL_RETURN_IF_ERROR(check_stack(down, "down", n_experts * dim, ffn));
    if (rows == 0) return ok_status();
    if (x == nullptr || ids == nullptr || weights == nullptr || scratch == nullptr ||
        out == nullptr) {
        return invalid("null x, ids, weights, scratch or out");
    }
    if (!aligned(x, 16) || !aligned(scratch, 16) || !aligned(ids, 4) || !aligned(weights, 4) ||
        !aligned(out, 4)) {
        return invalid("x and scratch need 16-byte alignment, ids, weights and out 4");
    }

    const MoePrefillLayout layout = moe_prefill_scratch_layout(rows, k, dim, ffn, n_experts);
    char* base = static_cast<char*>(scratch);
    uint16_t* x_bf16 = reinterpret_cast<uint16_t*>(base + layout.x_bf16);
    uint16_t* act = reinterpret_cast<uint16_t*>(base + layout.act);
    float* y = reinterpret_cast<float*>(base + layout.y);
    int32_t* sorted_slots = reinterpret_cast<int32_t*>(base + layout.sorted_slots);
    int32_t* offsets = reinterpret_cast<int32_t*>(base + layout.offsets);
    int4* tiles = reinterpret_cast<int4*>(base + layout.tiles);

    KESTREL_RETURN_IF_ERROR(convert_f32_to_bf16(x, rows * dim, x_bf16, stream));

    const size_t route_shared = static_cast<size_t>(2 * n_experts) * sizeof(int32_t);
    KESTREL_CUDA_CHECK(launch_overlapped(
        moe_prefill_route_kernel, dim3(1), dim3(kRouteThreads), route_shared, stream, ids,
        static_cast<int>(slots), static_cast<int>(n_experts), offsets, tiles, sorted_slots));
    KESTREL_CUDA_CHECK(cudaGetLastError());

    KESTREL_RETURN_IF_ERROR(launch_gemm_stack<true>(gate_up, x_bf16, sorted_slots, offsets, tiles,
                                                    layout.max_tiles, n_experts, k, dim, ffn, act,
                                                    stream));
    KESTREL_RETURN_IF_ERROR(launch_gemm_stack<false>(down, act, sorted_slots, offsets, tiles,
                                                     layout.max_tiles, n_experts, k, ffn, dim, y,
                                                     stream));

    const int64_t quads = rows * dim / 4;
    const int64_t blocks = (quads + kCombineThreads - 1) / kCombineThreads;
    KESTREL_CUDA_CHECK(launch_overlapped(
        moe_prefill_combine_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kCombineThreads), 0,
        stream, y, ids, weights, static_cast<int>(k), static_cast<int>(n_experts),
        static_cast<int>(dim), quads, accumulate, out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
