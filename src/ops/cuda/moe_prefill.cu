// The prefill routed experts of a Qwen3.5-MoE layer (host API and semantics: moe_prefill.h; the
// CPU twin: tests/unit/cuda_moe_prefill_test.cpp). Why a second path: moe_experts (decode) reads
// each slot's expert weights once per token, 3.1 ms per layer at 512 tokens on an H100; grouped
// by expert, a 128-row tile reads them once for up to 128 slots and multiplies on the tensor cores.
//
// Five launches, in stream order:
//   1. convert_f32_to_bf16 (dequantize_bf16.cu): x -> x_bf16 [rows, dim].
//   2. moe_prefill_route_kernel, ONE block of 1024 threads: a shared-memory histogram of the ids
//      per expert, an exclusive scan of the counts (offsets) and of the tiles ceil(count / 128),
//      the tile table (expert, first, end sorted position) and, with shared-memory atomics, each
//      known slot's sorted position (sorted_slots[position] = t k + j). The order of slots within
//      an expert's group depends on the atomics, but no result does: each row of a GEMM tile is
//      computed on its own, in an order fixed by the tile's k loop. Unknown ids (outside
//      [0, n_experts)) get no position and no tile. 16384 slots cost each thread 16 ids.
//   3. moe_prefill_gemm_kernel<Loader, true> (gate_up): grid (ceil(ffn / 64), max_tiles); block
//      (c, tile) computes, for the tile's <= 128 sorted rows (x_bf16 rows t = slot / k, gathered
//      in the tile load), gate columns c*64 .. +64 and the matching up columns (weight rows
//      e*2ffn + c*64 + i and e*2ffn + ffn + c*64 + i: 128 weight rows in one B tile), and writes
//      act = bf16(silu(g) * u) to act [position, ffn].
//   4. moe_prefill_gemm_kernel<Loader, false> (down): grid (ceil(dim / 128), max_tiles); block
//      (c, tile) multiplies the tile's act rows by down rows e*dim + c*128 .. +128 and writes
//      fp32 y at the slot's own row t k + j (so the combine needs no sorted order).
//   5. moe_prefill_combine_kernel: out[t] = (accumulate ? out[t] : 0) + sum_j weights[t, j] y_j in
//      j order; a slot with an unknown id contributes NaN.
// The GEMM grids are sized on the host from rows k and n_experts (max_tiles bounds the tiles any
// routing needs: sum_e ceil(c_e / 128) <= rows k / 128 + the experts in use); a block whose tile
// index is at or past the routing's tile count returns at once.
//
// GEMM block: 128 x 128 tile (BM sorted rows x BN weight rows), 256 threads as 2 x 4 warps, each
// 64 rows (the m16 fragments 2 i + warp_m, interleaved) x 32 columns: 4 x 4 mma.sync m16n8k16
// bf16 fragments (fp32 accumulators, 64 registers), operands from shared memory by ldmatrix.x4
// (4 for A, 2 for B per k16: each fragment is used 4 times from registers). A warp skips the m16
// fragments wholly past the tile's rows (an expert with 72 slots computes 80 rows, not 128,
// split 48 / 32 between the two warps of a column). K steps of 64 (two weight groups), pipelined:
//   - A (bf16 rows gathered through sorted_slots; the rows' offsets kept in shared memory) by
//     cp.async 16-byte copies into a ring of 3 stages, issued two steps ahead (4 copies per
//     thread and step);
//   - each thread's raw weight group (row tid / 2, group tid % 2 of the step: W4 16 bytes, W8 32)
//     by cp.async into its own slot of a 2-deep raw ring, two steps ahead, its scales (a few
//     bytes) by plain loads into registers, also two steps ahead (the loop runs by twos);
//   - the thread dequantises its own group of step s + 1 (its copies: cp.async.wait_group, no
//     barrier) into the other bf16 B buffer after issuing the MMAs of step s;
//   - one barrier per step.
// Dequantisation: scale q - min as one fma (the product is exact, see W4Loader), q as a float by
// the 2^23 trick (no integer conversions), cvt.rn.bf16x2 for the pair rounding: ~4 instructions
// per weight (was ~12), bit for bit w4_dequantize / w8_dequantize then bf16.
// Shared memory (dynamic): A [3][128][72] + B [2][128][72] bf16 (rows padded by 16 bytes so
// ldmatrix's 8 rows of a phase and the dequantised stores hit distinct banks) + raw [2][256] x
// 16 (W4) or 32 (W8) bytes = 98 / 106 KiB, reused after the loop as the fp32 C tile [128][136]
// (68 KiB) for the epilogue, which needs gate and up of a column together (gate_up) or a row per
// slot (down). __launch_bounds__(256, 2): two blocks per SM (128 registers, no spills), one's
// dequantisation and epilogue overlapping the other's MMAs.
//
// Why BM = 128: at rows 2048, k 9 (18432 slots over 257 experts, ~72 per routed expert), 64-row
// tiles gave nearly every expert two tiles, each dequantising and reading the expert's weights
// (the costly operand: ~4 CUDA-core instructions per weight against BM MACs); 128-row tiles give
// one, and the fragment skipping keeps the MMAs at ~80 rows per expert either way.
// Cost at rows 2048, k 9: 69 GFLOP (gate_up) + 34 (down) of useful MMAs, ~11% more computed;
// W4 weights 0.45 GB, read about once from DRAM (an expert's tiles run side by side).
#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/moe_prefill.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm_prefill.h"  // convert_f32_to_bf16
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- tiles ------------------------------------------------------------------------------------

constexpr int kBM = static_cast<int>(kMoePrefillTileRows);  // sorted rows per tile
constexpr int kBN = 128;                                    // weight rows per tile
constexpr int kBK = 64;                                     // K per step: two weight groups
constexpr int kStages = 3;                                  // A tiles in flight (cp.async ring)
constexpr int kLds = kBK + 8;                               // shared row stride (bf16)
constexpr int kLdc = kBN + 8;                               // C tile row stride (fp32)
constexpr int kGemmThreads = 256;
constexpr int kWarpRows = 64;  // 8 warps as 2 (rows, interleaved m16 fragments) x 4 (columns)
constexpr int kWarpCols = 32;  // of 64 x 32: 4 x 4 mma m16n8 fragments
constexpr int kAPieces = kBM * kBK / 8 / kGemmThreads;  // 16-byte pieces of A per thread, step
constexpr int kRouteThreads = 1024;
constexpr int kCombineThreads = 256;

static_assert(kBM == 2 * kWarpRows && kBN == 4 * kWarpCols, "2 x 4 warps of 64 x 32");
static_assert(kAPieces * kGemmThreads * 8 == kBM * kBK && kBK / 8 == 8, "A pieces per step");
static_assert(kBN * 2 == kGemmThreads && kBK == 64, "one weight group per thread and step");

// kChunks: 16-byte pieces of one weight group (W4 1, W8 2), copied raw into shared memory.
template <int kChunks>
struct GemmTiles {
    uint16_t a[kStages][kBM][kLds];       // A (bf16), ring of kStages steps
    uint16_t b[2][kBN][kLds];             // B (bf16, dequantised), two steps
    uint4 raw[2][kChunks][kGemmThreads];  // each thread's raw weight group, two steps
};
template <int kChunks>
union GemmShared {
    GemmTiles<kChunks> tiles;
    float c[kBM][kLdc];  // after the K loop: the fp32 C tile
};
// Two blocks per SM (228 KiB, 1 KiB of it reserved per block).
static_assert(sizeof(GemmShared<2>) + kBM * 4 + 1024 <= 228 * 1024 / 2,
              "shared memory for two blocks (dynamic, the kernel's a_row_at, 1 KiB reserved)");

// ---- PTX helpers (the same as attention_common.cuh's, which this file does not include) -----

__device__ __forceinline__ uint32_t smem_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously (L2 only); valid false writes 16 zero bytes.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(shared)),
                 "l"(global), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// All but the newest `kPending` groups of this thread's copies have landed.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ldmatrix .x4: lane i gives the address of row i % 8 of matrix i / 8; register j receives
// matrix j as lane l holding row l / 4, columns 2 (l % 4) and +1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(p)));
}

// d += a (16x16, row-major) b (16x8, column-major), bf16 in, fp32 accumulate. Fragments (lane
// l, g = l / 4, t = l % 4): a0 (row g, k 2t, 2t+1), a1 (row g+8), a2 (row g, k 2t+8, +9),
// a3 (row g+8, k 2t+8); b0 (k 2t, 2t+1, n g), b1 (k 2t+8, +9); d0, d1 (row g, n 2t, 2t+1),
// d2, d3 (row g+8).
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- bf16 and dequantisation (dequantize_bf16.cu's arithmetic, bit for bit) ------------------

__device__ __forceinline__ uint32_t bf16_pair(float low, float high) {
    return bf16_bits(low) | (bf16_bits(high) << 16);
}

// The same rounding in one instruction (cvt.rn: round to nearest even, no flush, the GPU's one
// NaN 0x7fc0... -> 0x7fff as bf16_bits maps it): low in bits 0..15, high in 16..31. For the
// weights only: scale q - min is never subnormal (a multiple of 2^-24) and any NaN the GPU
// computes is canonical.
__device__ __forceinline__ uint32_t cvt_bf16_pair(float low, float high) {
    uint32_t packed;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(packed) : "f"(high), "f"(low));
    return packed;
}

__device__ __forceinline__ float fp16_bits_to_float(uint32_t bits) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));  // exact widening
}

// bits (an integer n < 2^23) -> float(n), exactly: 2^23 + n as a float's bits, minus 2^23.
__device__ __forceinline__ float small_uint_to_float(uint32_t bits) {
    return __fsub_rn(__uint_as_float(bits | 0x4b000000u), 8388608.0f);
}

// w4_dequantize / w8_dequantize compute fsub(fmul(scale, q), min), each rounded. Here the product
// is exact (scale: an fp16 times an integer < 256, at most 19 significant bits, times |q| <= 15
// (W4, 4 bits) or an fp16 (11 bits) times |q| <= 128 (W8): at most 23 bits, far from fp32's
// range limits), so one fma rounds exactly as the difference does: the same bits, fewer
// instructions. `scale` may be pre-multiplied by 2^-s when q arrives as q 2^s (still exact).

// W4 (ops/weight_format.h): group g of a row is 16 bytes whose byte b holds weight b in its low
// nibble and weight 16 + b in its high nibble.
struct W4Loader {
    static constexpr int kChunks = 1;
    const uint8_t* qs;
    const uint16_t* group_scales;
    const uint32_t* super_scales;
    int64_t groups;  // per row: cols / 32
    int64_t supers;  // per row: ceil(groups / 8)

    struct Scales {
        uint32_t sc_m = 0;
        uint32_t d_dmin = 0;
    };

    __device__ const void* chunk(int64_t row, int group, int) const {
        return qs + (row * groups + group) * 16;
    }
    __device__ Scales scales(int64_t row, int group) const {
        Scales s;
        s.sc_m = __ldg(group_scales + row * groups + group);
        s.d_dmin = __ldg(super_scales + row * supers + group / 8);
        return s;
    }

    // The group's 32 weights as bf16 into dst[0..31] (16-byte aligned shared memory).
    __device__ static void dequantize(const uint4 (&raw)[kChunks], const Scales& s, uint16_t* dst) {
        const float scale =
            __fmul_rn(fp16_bits_to_float(s.d_dmin & 0xffffu), static_cast<float>(s.sc_m & 0xffu));
        const float min =
            __fmul_rn(fp16_bits_to_float(s.d_dmin >> 16), static_cast<float>(s.sc_m >> 8));
        const float neg_min = -min;
        // Nibble j of a 16-bit half is q 2^(4j) once masked in place: scale 2^(-4j) undoes it.
        const float s0 = scale, s1 = scale * 0.0625f, s2 = scale * 0.00390625f,
                    s3 = scale * 0.000244140625f;
        const uint32_t words[4] = {raw[0].x, raw[0].y, raw[0].z, raw[0].w};
        uint32_t lo[8], hi[8];  // weights 0..15 and 16..31 as bf16 pairs
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // bytes 4j + 2h (low half) and 4j + 2h + 1
                const uint32_t w = h == 0 ? words[j] : words[j] >> 16;
                lo[2 * j + h] =
                    cvt_bf16_pair(__fmaf_rn(s0, small_uint_to_float(w & 0xfu), neg_min),
                                  __fmaf_rn(s2, small_uint_to_float(w & 0xf00u), neg_min));
                hi[2 * j + h] =
                    cvt_bf16_pair(__fmaf_rn(s1, small_uint_to_float(w & 0xf0u), neg_min),
                                  __fmaf_rn(s3, small_uint_to_float(w & 0xf000u), neg_min));
            }
        }
        uint4* out = reinterpret_cast<uint4*>(dst);
        out[0] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
        out[1] = make_uint4(lo[4], lo[5], lo[6], lo[7]);
        out[2] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
        out[3] = make_uint4(hi[4], hi[5], hi[6], hi[7]);
    }
};

// W8 (ops/weight_format_w8.h): group g of a row is bytes (weights) 32g .. 32g + 31.
struct W8Loader {
    static constexpr int kChunks = 2;
    const int8_t* qs;
    const uint32_t* scale_min;
    int64_t cols;
    int64_t groups;  // per row: cols / 32

    struct Scales {
        uint32_t scale_min = 0;
    };

    __device__ const void* chunk(int64_t row, int group, int c) const {
        return qs + row * cols + group * 32 + c * 16;
    }
    __device__ Scales scales(int64_t row, int group) const {
        Scales s;
        s.scale_min = __ldg(scale_min + row * groups + group);
        return s;
    }

    __device__ static void dequantize(const uint4 (&raw)[kChunks], const Scales& s, uint16_t* dst) {
        const float scale = fp16_bits_to_float(s.scale_min & 0xffffu);
        const float neg_min = -fp16_bits_to_float(s.scale_min >> 16);
        const uint32_t words[8] = {raw[0].x, raw[0].y, raw[0].z, raw[0].w,
                                   raw[1].x, raw[1].y, raw[1].z, raw[1].w};
        uint32_t pairs[16];
#pragma unroll
        for (int p = 0; p < 16; ++p) {
            // Byte b of the word, sign bit flipped (q + 128), under 2^23's bits: 2^23 + q + 128.
            const uint32_t biased = words[p >> 1] ^ 0x80808080u;
            const int b = (p & 1) * 2;
            const float q0 = __fsub_rn(
                __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7440u | b)), 8388736.0f);
            const float q1 = __fsub_rn(
                __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7440u | (b + 1))), 8388736.0f);
            pairs[p] = cvt_bf16_pair(__fmaf_rn(scale, q0, neg_min), __fmaf_rn(scale, q1, neg_min));
        }
        uint4* out = reinterpret_cast<uint4*>(dst);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            out[i] = make_uint4(pairs[4 * i], pairs[4 * i + 1], pairs[4 * i + 2], pairs[4 * i + 3]);
        }
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
// Shared memory: sizeof(GemmShared<Loader::kChunks>), dynamic.
template <class Loader, bool kGateUp>
__global__ void __launch_bounds__(kGemmThreads, 2)
    moe_prefill_gemm_kernel(const uint16_t* __restrict__ a_src,
                            const int32_t* __restrict__ sorted_slots,
                            const int32_t* __restrict__ offsets, const int4* __restrict__ tiles,
                            Loader w, int n_experts, int top_k, int K, int n_cols,
                            void* __restrict__ out) {
    constexpr int kChunks = Loader::kChunks;
    extern __shared__ __align__(128) unsigned char gemm_shared_bytes[];
    GemmShared<kChunks>& shared = *reinterpret_cast<GemmShared<kChunks>*>(gemm_shared_bytes);
    allow_downstream();
    wait_for_upstream();  // the tile table, sorted slots and A come from the previous kernels
    const int tile_index = static_cast<int>(blockIdx.y);
    if (tile_index >= offsets[n_experts + 1]) return;  // uniform over the block
    const int4 tile = tiles[tile_index];
    const int64_t expert = tile.x;
    const int row_begin = tile.y;
    const int row_end = tile.z;
    const int tile_rows = min(row_end - row_begin, kBM);
    constexpr int kCols = kGateUp ? kBN / 2 : kBN;  // output columns per block
    const int c0 = static_cast<int>(blockIdx.x) * kCols;

    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid & 31;
    const int warp = tid >> 5;
    // A: rows tid / 8 + 32 i of the tile, 8 bf16 at column (tid % 8) * 8 of the step.
    const int a_piece = tid & 7;
    const int a_row0 = tid >> 3;
    // Each tile row's offset in a_src in 16-byte pieces (kNoPiece past the tile's rows), in
    // shared memory rather than registers (they are tight); the first barrier orders it.
    constexpr uint32_t kNoPiece = 0xffffffffu;
    __shared__ uint32_t a_row_at[kBM];
    if (tid < kBM) {
        uint32_t at = kNoPiece;
        if (tid < tile_rows) {
            const int p = row_begin + tid;
            const int64_t src_row = kGateUp ? sorted_slots[p] / top_k : p;
            at = static_cast<uint32_t>(src_row * (K / 8));
        }
        a_row_at[tid] = at;
    }
    // B: weight row tid / 2 of the tile, group tid % 2 of the step's two.
    const int b_row = tid >> 1;
    const int b_group = tid & 1;
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
    const int groups = K / 32;
    const int steps = (K + kBK - 1) / kBK;

    // Step s's copies (one commit group per step): A into ring slot s % kStages, this thread's
    // raw weight group into raw[s & 1]; its scales come back in registers. Past K, past the
    // tile's rows and past n_cols the copies write zeros (and the scales are 0), so the padding
    // multiplies as exact zeros.
    const auto issue = [&](int step) {
        const int slot = step % kStages;
        const int col = step * kBK + a_piece * 8;
#pragma unroll
        for (int i = 0; i < kAPieces; ++i) {
            const uint32_t at = a_row_at[a_row0 + 32 * i];
            const bool valid = at != kNoPiece && col < K;
            cp_async_16(&shared.tiles.a[slot][a_row0 + 32 * i][a_piece * 8],
                        valid ? a_src + (int64_t{at} + a_piece) * 8 + step * kBK : a_src, valid);
        }
        const int group = 2 * step + b_group;
        const bool valid = b_valid && group < groups;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
            cp_async_16(&shared.tiles.raw[step & 1][c][tid],
                        valid ? w.chunk(w_row, group, c) : static_cast<const void*>(a_src), valid);
        }
        return valid ? w.scales(w_row, group) : typename Loader::Scales{};
    };
    // Step s's weights (landed: this thread copied them itself) -> B buffer s & 1.
    const auto dequantize = [&](int step, const typename Loader::Scales& scales) {
        uint4 raw[kChunks];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) raw[c] = shared.tiles.raw[step & 1][c][tid];
        Loader::dequantize(raw, scales, &shared.tiles.b[step & 1][b_row][b_group * 32]);
    };

    // Warp (warp_m, warp_n): columns warp_n * 32 .. +32 and the m16 row fragments 2 i + warp_m
    // (i = 0..3; rows (2 i + warp_m) * 16 .. +16), interleaved so that a part-full tile splits
    // its row fragments evenly between the two warps of a column (72 rows: 3 and 2).
    const int warp_m = warp >> 2;  // 0..1
    const int warp_n = warp & 3;   // 0..3
    // This warp's fragments that hold tile rows, its first m_frags (the others are skipped: an
    // expert's last tile is often far from full).
    const int m_frags = min(4, ((tile_rows + 15) / 16 - warp_m + 1) / 2);
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
        }
    }
    // ldmatrix row addresses: A matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
    // (rows 8-15, k 8-15) = a0..a3; B matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
    // (n 8-15, k 8-15) = b0, b1 of columns 0-7, then of columns 8-15.
    const int a_ld_row = warp_m * 16 + (lane & 15);  // + 32 i for fragment i
    const int a_ld_col = (lane >> 4) * 8;
    const int b_ld_row = warp_n * kWarpCols + (lane & 7) + ((lane >> 4) << 3);
    const int b_ld_col = ((lane >> 3) & 1) * 8;
    // The MMAs of one step over the warp's first kFrags m16 fragments (a compile-time count, so
    // the ldmatrix and mma sequence is straight-line code).
    const auto multiply = [&](auto frags, int step) {
        constexpr int kFrags = decltype(frags)::value;
        const int slot = step % kStages;
        const int buffer = step & 1;
#pragma unroll
        for (int kk = 0; kk < kBK; kk += 16) {
            uint32_t a[kFrags][4];
#pragma unroll
            for (int i = 0; i < kFrags; ++i) {
                ldmatrix_x4(a[i], &shared.tiles.a[slot][a_ld_row + i * 32][kk + a_ld_col]);
            }
#pragma unroll
            for (int jp = 0; jp < 2; ++jp) {
                uint32_t b[4];
                ldmatrix_x4(b, &shared.tiles.b[buffer][b_ld_row + jp * 16][kk + b_ld_col]);
#pragma unroll
                for (int i = 0; i < kFrags; ++i) {
                    mma_bf16_16x8x16(acc[i][2 * jp], a[i], b[0], b[1]);
                    mma_bf16_16x8x16(acc[i][2 * jp + 1], a[i], b[2], b[3]);
                }
            }
        }
    };

    // Pipeline: A two steps ahead (cp.async ring of 3), the raw weights and their scales two
    // steps ahead, their dequantisation one step ahead (B double buffer); one barrier per step.
    // The scales of even steps live in even_scales, of odd steps in odd_scales (the loop runs
    // by twos so that no register move waits on a load in flight).
    __syncthreads();  // a_row_at
    typename Loader::Scales even_scales = issue(0), odd_scales{};
    cp_async_commit();
    if (steps > 1) odd_scales = issue(1);
    cp_async_commit();
    cp_async_wait<1>();
    dequantize(0, even_scales);
    __syncthreads();
    // Step `step`: issue step + 2 (its scales into `later`, the parity of step), multiply step,
    // dequantise step + 1 (its scales in `sooner`).
    const auto run_step = [&](int step, typename Loader::Scales& later,
                              const typename Loader::Scales& sooner) {
        if (step + 2 < steps) later = issue(step + 2);
        cp_async_commit();  // possibly empty: keeps one group per step
        switch (m_frags) {  // uniform over the warp
            case 4:
                multiply(std::integral_constant<int, 4>{}, step);
                break;
            case 3:
                multiply(std::integral_constant<int, 3>{}, step);
                break;
            case 2:
                multiply(std::integral_constant<int, 2>{}, step);
                break;
            case 1:
                multiply(std::integral_constant<int, 1>{}, step);
                break;
            default:
                break;  // no rows of the tile in this warp's half
        }
        if (step + 1 < steps) {
            cp_async_wait<1>();  // step + 1's copies (only step + 2's may be in flight)
            dequantize(step + 1, sooner);
        }
        __syncthreads();
    };
    for (int step = 0; step < steps; step += 2) {
        run_step(step, even_scales, odd_scales);
        if (step + 1 < steps) run_step(step + 1, odd_scales, even_scales);
    }
    cp_async_wait<0>();  // nothing real is in flight; the C tile reuses the ring

    // Epilogue through shared memory (the tiles are dead after the last barrier).
    const int g = lane >> 2;
    const int t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = (2 * i + warp_m) * 16 + g;
            const int c = warp_n * kWarpCols + j * 8 + 2 * t;
            *reinterpret_cast<float2*>(&shared.c[r][c]) = make_float2(acc[i][j][0], acc[i][j][1]);
            *reinterpret_cast<float2*>(&shared.c[r + 8][c]) =
                make_float2(acc[i][j][2], acc[i][j][3]);
        }
    }
    __syncthreads();
    if constexpr (kGateUp) {
        // tile_rows rows x 8 pieces of 8 act values (one 16-byte store each).
        uint16_t* act = static_cast<uint16_t*>(out);
        for (int i = tid; i < tile_rows * (kCols / 8); i += kGemmThreads) {
            const int r = i / (kCols / 8);
            const int piece = i % (kCols / 8);
            const int p = row_begin + r;
            const int c = c0 + piece * 8;
            if (c >= n_cols) continue;  // n_cols % 32 == 0: whole pieces
            uint32_t pairs[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                float v[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int col = piece * 8 + 2 * q + h;
                    const float gate = shared.c[r][col];
                    const float up = shared.c[r][kCols + col];
                    // ops/cpu silu_and_mul: silu(g) = g / (1 + exp(-g)), then times u.
                    v[h] = __fmul_rn(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate))), up);
                }
                pairs[q] = bf16_pair(v[0], v[1]);
            }
            *reinterpret_cast<uint4*>(act + static_cast<int64_t>(p) * n_cols + c) =
                make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
        }
    } else {
        // tile_rows rows x 32 pieces of 4 fp32 (one 16-byte store each), each row to its slot's
        // row.
        float* y = static_cast<float*>(out);
        for (int i = tid; i < tile_rows * (kCols / 4); i += kGemmThreads) {
            const int r = i / (kCols / 4);
            const int piece = i % (kCols / 4);
            const int p = row_begin + r;
            const int c = c0 + piece * 4;
            if (c >= n_cols) continue;  // n_cols % 32 == 0: whole pieces
            const int64_t slot = sorted_slots[p];
            *reinterpret_cast<float4*>(y + slot * n_cols + c) =
                *reinterpret_cast<const float4*>(&shared.c[r][piece * 4]);
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

Status invalid(const std::string& message) {
    return Status(StatusCode::kInvalidArgument, "moe_experts_prefill: " + message);
}

size_t round_up_256(int64_t bytes) {
    return static_cast<size_t>((bytes + 255) / 256 * 256);
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
    constexpr size_t kShared = sizeof(GemmShared<Loader::kChunks>);
    // Over the 48 KiB default: opt in (a host-side attribute, no stream work; capturable). The
    // carveout asks for the whole 228 KiB so that two blocks fit on an SM.
    KESTREL_CUDA_CHECK(cudaFuncSetAttribute(moe_prefill_gemm_kernel<Loader, kGateUp>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(kShared)));
    KESTREL_CUDA_CHECK(cudaFuncSetAttribute(moe_prefill_gemm_kernel<Loader, kGateUp>,
                                            cudaFuncAttributePreferredSharedMemoryCarveout,
                                            cudaSharedmemCarveoutMaxShared));
    const dim3 grid(static_cast<unsigned>((n_cols + kCols - 1) / kCols),
                    static_cast<unsigned>(max_tiles));
    KESTREL_CUDA_CHECK(launch_overlapped(
        moe_prefill_gemm_kernel<Loader, kGateUp>, grid, dim3(kGemmThreads), kShared, stream, a_src,
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
    // The GEMMs keep A row offsets in 16-byte pieces as uint32 (x_bf16 [rows, dim], act [slots,
    // ffn]).
    constexpr int64_t kPieceMax = std::numeric_limits<uint32_t>::max() - 1;
    if (rows > kIntMax / k || (slots + kBM - 1) / kBM + std::min(n_experts, slots) > 65535 ||
        slots > kPieceMax / (ffn / 8) || rows > kPieceMax / (dim / 8)) {
        return invalid(std::to_string(rows) + " rows of top " + std::to_string(k) +
                       ": too many slots for one call (split the prompt)");
    }
    KESTREL_RETURN_IF_ERROR(
        check_expert_stack(gate_up, "moe_experts_prefill", "gate_up", n_experts * 2 * ffn, dim));
    KESTREL_RETURN_IF_ERROR(
        check_expert_stack(down, "moe_experts_prefill", "down", n_experts * dim, ffn));
    if (rows == 0) return ok_status();
    KESTREL_RETURN_IF_ERROR(
        check_expert_buffers("moe_experts_prefill", x, ids, weights, scratch, out));

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
