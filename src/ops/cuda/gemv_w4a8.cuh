// W4A8 decode GEMV kernels (launcher: gemv_w4a8.cu; formats and CPU twins: ops/weight_format.h),
// and the block structure gemv_w8a8.cu shares.
//
// quantize_q8_kernel: one warp per 32-element block; lane i owns element i. Same float ops as
//   quantize_q8_row (IEEE division, round-to-nearest-even), so the blocks match bit for bit.
// gemv_w4a8_kernel<M, R, U, S, Epilogue, kPrefetch>: 8 warps per block form 8 / S row groups of R
//   consecutive output rows; the S warps of a group split each row's K (split-K inside the block),
//   because at N = 5376 a warp per row leaves too few blocks to balance over the SMs
//   (gemv_warps_per_row, gemv_w4a8.h). Warp s of a group, lane l, handles groups g = 32 s + l + 32
//   S j: the split is interleaved by 32 groups, so each warp load of a row is still 512 contiguous
//   bytes of nibbles, 64 of group_scales and 16 of super_scales, and the S warps stream
//   neighbouring stretches of the row together. Per group and row: one 16-byte nibble load, one
//   2-byte group_scales load (sc | m << 8) and one 4-byte super_scales load, the (d, dmin) of
//   super-group g / 8, which 8 neighbouring lanes share (g / 8 = first group / 8 + j / 8 for j a
//   multiple of 32, so each row keeps one pointer per array and every step adds constants). All
//   U x R x 3 loads of a step (groups g, g + 32 S, ...) are issued before any math. Then
//   scale = d * sc and min = dmin * m in fp32 (exact: 11 x 8 bits). Per activation row m the Q8
//   block is three 16-byte loads (reused across the R weight rows), then 8 dp4a per weight row
//   (dot_group), in two independent sums:
//     p & 0x0F0F0F0F  (weights b..b+3 of the group)              x activation bytes 0..15
//     p & 0xF0F0F0F0  (16 x weights b+16..b+19, unsigned bytes)  x activation bytes 16..31
//   dot = low + (high >> 4), and acc += d_a * (scale * dot - min * sum_a); at M = 1 as
//   d_a * (d * (sc * dot) - dmin * (m * sum_a)), the same roundings with integer products.
//   The loop is short of issue slots more than of bandwidth. Measured on the H100 (Gemma 4 31B
//   tg128 @ d512, 3 rounds, same machine, 2026-11-25): these savings, ~45 -> ~36 instructions
//   per group and row at M = 1 (the shift of each high word, the conversions of sc and m, the
//   activation block's 64-bit index), took 135.87 tok/s to 136.79, and one more load and four
//   shuffles per group had cost 6% (bench/results/2026-11-25-h100-gemv-instructions.md).
//   Lanes are reduced with xor shuffles; with S > 1
//   lane 0 of each warp leaves its partial sums in shared memory and, after one barrier, one
//   thread per (m, row) adds the S partials in slice order (deterministic: a shape gives the
//   same bits on every run on a given GPU model, S depending on its SM count). Warps past n
//   still reach that barrier (no early return).
//   Weights and scales stream (ld.global.cs): each is read once; activations stay in L1.
//   Epilogue: the thread that stores a row's final value may do more with it, so an operation on
//   each output that follows the GEMV needs no launch of its own.
//   gemv_w4a8 has none (GemvNoEpilogue: the same machine code as before epilogues existed);
//   gemv_w4a8_conv1d runs Qwen3.5's causal conv1d on the in-projection's conv channels
//   (GemvConv1dEpilogue), its inputs fetched while the row's weights stream.
// Both kernels are launched with programmatic dependent launch (launch.cuh): before waiting
//   for the previous kernel, a GEMV warp only asks L2 for the lines of weights and scales (W4:
//   nibbles, group_scales and super_scales) of its first gemv_prefetch_steps() steps
//   (constants, which no kernel writes), so DRAM is already busy when the wait ends; in a large
//   matrix the first gemv_bulk_prefetch_blocks() blocks instead ask for all of their rows, three
//   bulk prefetches (gemv_w4a8.h). Each form is its own kernel (GemvPrefetch).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/launch.cuh"
#include "ops/weight_format.h"

namespace kestrel::cuda {

__device__ __forceinline__ float load_as_float(const float* p) { return *p; }
__device__ __forceinline__ float load_as_float(const uint16_t* p) {
    return bf16_bits_to_float(*p);
}

template <class T>
__global__ void __launch_bounds__(256) quantize_q8_kernel(const T* __restrict__ x, int64_t ldx, int groups,
                                                         int64_t n_blocks, Q8Block* __restrict__ out) {
    wait_for_upstream();  // x is the previous kernel's output; `out` may still be read by it
    allow_downstream();
    const int lane = threadIdx.x & 31;
    const int64_t block = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (block >= n_blocks) return;
    const int64_t m = block / groups;
    const int64_t g = block % groups;
    const float v = load_as_float(x + m * ldx + g * 32 + lane);
    const bool bad = __any_sync(0xffffffffu, !isfinite(v));
    float amax = fabsf(v);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    float d = amax / 127.0f;
    int q = 0;
    if (d > 0.0f && !bad) q = min(127, max(-127, __float2int_rn(v / d)));
    int sum = q;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (bad) d = __int_as_float(0x7fc00000);
    Q8Block* dst = out + block;
    dst->qs[lane] = static_cast<int8_t>(q);
    if (lane == 0) {
        dst->d = d;
        dst->sum = sum;
        dst->pad[0] = 0;
        dst->pad[1] = 0;
    }
}

// dp4a with unsigned bytes in a and signed bytes in b: c + Σ a.u8[i] * b.s8[i].
__device__ __forceinline__ int dp4a_unsigned_signed(uint32_t a, uint32_t b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Σ q_w[i] q_a[i] over a group. The high nibbles are multiplied where they stand, as 16 q (bytes
// up to 240, hence the unsigned dp4a), and the sum divided by 16 once: a shift, exact since it
// is a multiple of 16. Saves the shift of each word, and the two sums are independent chains.
__device__ __forceinline__ int dot_group(const uint4& w, const uint4& a_lo, const uint4& a_hi) {
    constexpr uint32_t kLow = 0x0F0F0F0Fu;
    constexpr uint32_t kHigh = 0xF0F0F0F0u;
    int low = 0, high16 = 0;
    low = dp4a_unsigned_signed(w.x & kLow, a_lo.x, low);
    high16 = dp4a_unsigned_signed(w.x & kHigh, a_hi.x, high16);
    low = dp4a_unsigned_signed(w.y & kLow, a_lo.y, low);
    high16 = dp4a_unsigned_signed(w.y & kHigh, a_hi.y, high16);
    low = dp4a_unsigned_signed(w.z & kLow, a_lo.z, low);
    high16 = dp4a_unsigned_signed(w.z & kHigh, a_hi.z, high16);
    low = dp4a_unsigned_signed(w.w & kLow, a_lo.w, low);
    high16 = dp4a_unsigned_signed(w.w & kHigh, a_hi.w, high16);
    return low + (high16 >> 4);
}

// Where a warp works under a split of S warps per row group of R rows.
template <int R, int S>
struct GemvWarpPlace {
    static_assert(S == 1 || S == 2 || S == 4 || S == 8, "S warps per row group divide the block's 8");
    static constexpr int kRowGroups = kGemvWarps / S;
    static constexpr int kRowsPerBlock = kRowGroups * R;
    static constexpr int kSliceStride = 32 * S;  // work units between a lane's consecutive ones

    int lane;
    int warp;        // in the block
    int row0;        // first of the warp's R rows (may be >= n in the last block)
    int first_unit;  // the lane's first work unit (group or chunk) of each row: 32 s + l

    // Unsigned arithmetic on the indices (as shifts and masks; signed division by 32 or S would
    // need sign fix-ups).
    __device__ __forceinline__ GemvWarpPlace()
        : lane(static_cast<int>(threadIdx.x % 32u)),
          warp(static_cast<int>(threadIdx.x / 32u)),
          row0(static_cast<int>((blockIdx.x * kRowGroups + threadIdx.x / 32u / S) * R)),
          first_unit(static_cast<int>(threadIdx.x / 32u % S * 32u + threadIdx.x % 32u)) {}
};

// Every lane of the warp ends with the warp's total of each accumulator.
template <int M, int R>
__device__ __forceinline__ void sum_across_lanes(float (&acc)[M][R]) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float v = acc[m][r];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            acc[m][r] = v;
        }
}

// ---- epilogues: what the thread that stores an output row does with the row's value besides ----
// An epilogue type E is the kernel's argument; E::Tail is the storing thread's registers: built
// before the PDL wait (constants only), load() right after it (inputs an earlier kernel wrote,
// fetched while the row's dot product runs), finish(e, y) after y[row] is stored.

// gemv_w4a8's: none, so its kernels compile to what they were without epilogues.
struct GemvNoEpilogue {
    static constexpr bool kOneRow = false;  // any M and R
    struct Tail {
        __device__ __forceinline__ Tail(const GemvNoEpilogue&, int) {}
        __device__ __forceinline__ void load(const GemvNoEpilogue&) {}
        __device__ __forceinline__ void finish(const GemvNoEpilogue&, float) {}
    };
};

// ops/cpu/qwen35_elementwise.cpp's silu with gated_delta.cu's fp32 operations.
__device__ __forceinline__ float gemv_conv_silu(float x) {
    return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x)));
}

// gemv_w4a8_conv1d's: conv1d_causal_kernel (gated_delta.cu) at rows = 1 on rows < channels, with
// its fp32 operations in its order (taps summed in j order from 0.0f, _rn intrinsics, no FMA), so
// out and state match gemv_w4a8 + conv1d_causal bit for bit. Taps and window right-aligned in
// kMaxKernel slots as there (slot first + j holds tap j), so every register index is a constant.
// The state taps come first in that sum and y last, so the sum splits into the state's part and
// one last tap. kMaxKernel = 4 (Qwen3.5) holds the state in registers through the row's loads and
// does everything at the end (64 registers, the cap, no spills). kMaxKernel = 8 would hold 16 and
// spilled, so it sums the state's part and shifts the state right after the wait: one round trip
// before the row's loads instead, for kernels 5 to 8, which no model here uses.
template <int kMaxKernel>
struct GemvConv1dEpilogue {
    static constexpr bool kOneRow = true;  // M = R = 1: the storing thread owns one row
    static constexpr bool kEarlyState = kMaxKernel > 4;
    const float* weight;  // [channels, kernel]
    float* state;         // [kernel - 1, channels], oldest first
    float* out;           // [channels]
    int kernel;
    int channels;
    bool silu;

    struct Tail {
        int row;  // the convolved row, -1 where the thread stores none below channels
        float w[kMaxKernel];
        float window[kMaxKernel - 1];  // the row's state; y is the last slot's input
        float state_part = 0.0f;       // the sum's first kernel - 1 taps

        __device__ __forceinline__ Tail(const GemvConv1dEpilogue& e, int stored_row)
            : row(stored_row >= 0 && stored_row < e.channels ? stored_row : -1) {
            const int first = kMaxKernel - e.kernel;
#pragma unroll
            for (int s = 0; s < kMaxKernel; ++s) {
                w[s] = row >= 0 && s >= first
                           ? e.weight[static_cast<int64_t>(row) * e.kernel + (s - first)]
                           : 0.0f;
            }
        }
        __device__ __forceinline__ void load(const GemvConv1dEpilogue& e) {
            const int first = kMaxKernel - e.kernel;
#pragma unroll
            for (int s = 0; s < kMaxKernel - 1; ++s) {
                window[s] = row >= 0 && s >= first
                                ? e.state[static_cast<int64_t>(s - first) * e.channels + row]
                                : 0.0f;
            }
            if constexpr (kEarlyState) {
                if (row >= 0) use_state(e);
            }
        }
        __device__ __forceinline__ void finish(const GemvConv1dEpilogue& e, float y) {
            if (row < 0) return;
            if constexpr (!kEarlyState) use_state(e);
            const float acc = __fadd_rn(state_part, __fmul_rn(w[kMaxKernel - 1], y));
            e.out[row] = e.silu ? gemv_conv_silu(acc) : acc;
            if (e.kernel > 1) e.state[static_cast<int64_t>(e.kernel - 2) * e.channels + row] = y;
        }
        // The state's taps, and the state rows but the last moved up by one (the last becomes y).
        __device__ __forceinline__ void use_state(const GemvConv1dEpilogue& e) {
            const int first = kMaxKernel - e.kernel;
#pragma unroll
            for (int s = 0; s < kMaxKernel - 1; ++s) {
                if (s >= first) state_part = __fadd_rn(state_part, __fmul_rn(w[s], window[s]));
            }
#pragma unroll
            for (int s = 0; s < kMaxKernel - 2; ++s) {
                if (s >= first) {
                    e.state[static_cast<int64_t>(s - first) * e.channels + row] = window[s + 1];
                }
            }
        }
    };
};

// The row store_rows stores from this thread at M = R = 1, -1 where it stores none (it may be
// >= n; store_rows checks that).
template <int S>
__device__ __forceinline__ int gemv_stored_row(const GemvWarpPlace<1, S>& place) {
    if constexpr (S == 1) {
        return place.lane == 0 ? place.row0 : -1;
    } else {
        constexpr int kRowsPerBlock = GemvWarpPlace<1, S>::kRowsPerBlock;
        const int t = static_cast<int>(threadIdx.x);
        return t < kRowsPerBlock ? static_cast<int>(blockIdx.x) * kRowsPerBlock + t : -1;
    }
}

// y[m, row] for the block's rows from the warps' lane-reduced sums, and the epilogue's finish on
// each. S == 1: the warp owns its rows and stores them itself, no barrier. S > 1: partials go
// through shared memory and are added in slice order s = 0..S-1 by one thread per (m, row),
// consecutive threads on consecutive rows (coalesced stores). Every thread of the block must call
// this (it holds __syncthreads).
template <int M, int R, int S, class Epilogue>
__device__ __forceinline__ void store_rows(const GemvWarpPlace<R, S>& place,
                                           const float (&acc)[M][R], float* __restrict__ y, int n,
                                           const Epilogue& epilogue,
                                           typename Epilogue::Tail& tail) {
    if constexpr (S == 1) {
        if (place.lane == 0) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (place.row0 + r < n) {
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        y[static_cast<int64_t>(m) * n + place.row0 + r] = acc[m][r];
                        tail.finish(epilogue, acc[m][r]);
                    }
                }
            }
        }
    } else {
        constexpr int kRowsPerBlock = GemvWarpPlace<R, S>::kRowsPerBlock;
        static_assert(M * kRowsPerBlock <= kGemvWarps * 32, "one thread per (m, row) of the block");
        __shared__ float partial[kGemvWarps][M][R];
        if (place.lane == 0) {
#pragma unroll
            for (int m = 0; m < M; ++m)
#pragma unroll
                for (int r = 0; r < R; ++r) partial[place.warp][m][r] = acc[m][r];
        }
        __syncthreads();
        const int t = static_cast<int>(threadIdx.x);
        if (t < M * kRowsPerBlock) {
            const int m = t / kRowsPerBlock;
            const int local_row = t % kRowsPerBlock;  // = row group * R + r
            const int row = static_cast<int>(blockIdx.x) * kRowsPerBlock + local_row;
            if (row < n) {
                const int first_warp = local_row / R * S;
                const int r = local_row % R;
                float sum = partial[first_warp][m][r];
#pragma unroll
                for (int s = 1; s < S; ++s) sum += partial[first_warp + s][m][r];
                y[static_cast<int64_t>(m) * n + row] = sum;
                tail.finish(epilogue, sum);
            }
        }
    }
}

template <int M, int R, int S>
__device__ __forceinline__ void store_rows(const GemvWarpPlace<R, S>& place,
                                           const float (&acc)[M][R], float* __restrict__ y, int n) {
    const GemvNoEpilogue none;
    GemvNoEpilogue::Tail tail(none, -1);
    store_rows(place, acc, y, n, none, tail);
}

// Thread t < 3 of a block asks L2 for array t's share of rows [first_row, first_row + rows) (the
// block's rows are consecutive, so each share is one range): nibbles, group scales, super scales.
// Not inlined, so that the kernel's own code stays what it was without it (the inlined branch
// cost ~3%: bench/results/2026-11-24-h100-gemv-bulk-prefetch.md).
static __device__ __noinline__ void gemv_bulk_prefetch_rows(const uint4* qs, const uint16_t* gs,
                                                            const uint32_t* ss, int64_t first_row,
                                                            int64_t block_rows, int64_t n,
                                                            int groups, int supers) {
    const int64_t rows = min(block_rows, n - first_row);
    if (threadIdx.x == 0) {
        prefetch_l2_bulk(qs + first_row * groups, static_cast<uint64_t>(rows * groups) * 16u);
    } else if (threadIdx.x == 1) {
        prefetch_l2_bulk(gs + first_row * groups, static_cast<uint64_t>(rows * groups) * 2u);
    } else {
        prefetch_l2_bulk(ss + first_row * supers, static_cast<uint64_t>(rows * supers) * 4u);
    }
}

// Blocks per SM that gemv_w4a8_kernel<M, ...> is compiled to fit (__launch_bounds__' second
// argument, i.e. a register cap of 64 for M <= 2 and 128 above). Measured on the H100 with the
// two-level scales (bench/gemv_w4a8_bench.cu, median of 5 runs over the Gemma 4 31B shapes):
// left to itself ptxas took 68-80 registers at M = 2 (3 blocks per SM) and 98-128 at M >= 4; the
// caps made M = 2 12% faster, M = 4 11% and M = 8 4%, with no spills; M = 1 (51-56 registers)
// fits 4 blocks either way and kept its time. (Since then M = 1's long rows run U = 3 at 48
// registers, which fits 5 blocks; capping U = 4 at 48 to fit 5 was slower: gemv_w4a8.cu.)
constexpr int gemv_w4a8_min_blocks(int m) {
    return m <= 2 ? 4 : 2;
}

// The prefetch a GEMV makes before its wait: its lanes' first steps (gemv_prefetch_steps, small
// matrices) or its first blocks' whole rows (gemv_bulk_prefetch_blocks, large ones). A launch takes
// one, so each is a kernel of its own, which holds only that one's code. With both in one kernel
// every block also ran the other's (the lane prefetches, predicated off, and their addresses): 71
// instructions before the wait of gemv_w4a8_kernel<1, 2, 2, 4> against 16 for the bulk form
// alone, which also needs 48 registers instead of 62: 5 blocks per SM, not 4, and the short-row
// GEMVs 2-2.7% faster (traced). H100, Gemma 4 31B tg128 @ d512, same machine, 3 rounds: 139.92 /
// 139.93 / 140.10 -> 141.06 / 140.92 / 140.84 tok/s; d32768 120.14 -> 120.93
// (bench/results/2026-11-25-h100-decode-boundaries-what-ifs.md).
enum class GemvPrefetch { kLaneSteps, kBulkRows };

// qs: [n, groups] 16-byte groups; gs: [n, groups] uint16 sc | m << 8; ss: [n, ceil(groups / 8)]
// (d, dmin) half2 words; act: [M, groups] Q8 blocks as 3 uint4 each; y: [M, n].
template <int M, int R, int U, int S, class Epilogue, GemvPrefetch kPrefetch>
__global__ void __launch_bounds__(kGemvWarps * 32, gemv_w4a8_min_blocks(M))
    gemv_w4a8_kernel(const uint4* __restrict__ qs, const uint16_t* __restrict__ gs,
                     const uint32_t* __restrict__ ss, const uint4* __restrict__ act,
                     float* __restrict__ y, int n, int groups, int prefetch_steps,
                     int bulk_prefetch_blocks, const Epilogue epilogue) {
    static_assert(!Epilogue::kOneRow || (M == 1 && R == 1), "the epilogue handles one row");
    using Place = GemvWarpPlace<R, S>;
    constexpr int kStride = Place::kSliceStride;
    static_assert(kW4GroupsPerSuper == 8 && kStride % 8 == 0, "steps move by whole super-groups");
    constexpr int kSuperStride = kStride / 8;  // super words between a lane's consecutive steps
    const Place place;
    const int supers = static_cast<int>((static_cast<unsigned>(groups) + 7u) / 8u);
    // Addresses relative to the lane's first group (g = first_unit + j): one pointer per row and
    // array, and constant offsets per step (indexed from the row start, the S > 1 variants kept a
    // pointer per u and took 18-35 more registers in ptxas). The super word of group g is
    // (first_unit + j) / 8 = first_unit / 8 + j / 8 since j is a multiple of 32. A warp wholly
    // past n (last block only) gets no groups but still reaches store_rows' barrier.
    const int lane_groups = (place.row0 < n ? groups : 0) - place.first_unit;  // the lane's j < this
    const uint4* wrow[R];
    const uint16_t* grow[R];
    const uint32_t* drow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int64_t row = min(place.row0 + r, n - 1);  // rows past n re-read the last row; never stored
        wrow[r] = qs + row * groups + place.first_unit;
        grow[r] = gs + row * groups + place.first_unit;
        drow[r] = ss + row * supers + static_cast<unsigned>(place.first_unit) / 8u;
    }
    const uint4* lane_act = act + static_cast<int64_t>(place.first_unit) * 3;
    if constexpr (kPrefetch == GemvPrefetch::kBulkRows) {
        if (static_cast<int>(blockIdx.x) < bulk_prefetch_blocks && threadIdx.x < 3) {
            gemv_bulk_prefetch_rows(qs, gs, ss,
                                    static_cast<int64_t>(blockIdx.x) * Place::kRowsPerBlock,
                                    Place::kRowsPerBlock, n, groups, supers);
        }
    } else {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (u < prefetch_steps && kStride * u < lane_groups) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    prefetch_l2(wrow[r] + kStride * u);
                    prefetch_l2(grow[r] + kStride * u);
                    prefetch_l2(drow[r] + kSuperStride * u);
                }
            }
        }
    }
    int stored_row = -1;
    if constexpr (Epilogue::kOneRow) stored_row = gemv_stored_row(place);
    typename Epilogue::Tail tail(epilogue, stored_row);  // constants: before the wait
    wait_for_upstream();  // act is the previous kernel's output; y may still be read by it
    allow_downstream();
    tail.load(epilogue);  // in flight during the row's loads, used only at its end

    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;

    for (int j0 = 0; j0 < lane_groups; j0 += kStride * U) {
        // j0 / 8: the step's offset in super words (j0 >= 0, a multiple of 32).
        const int s0 = static_cast<int>(static_cast<unsigned>(j0) / 8u);
        // The step's activation blocks: constant offsets from one pointer (indexing each from
        // lane_act took a 64-bit multiply-add per group).
        const uint4* step_act = lane_act + static_cast<int64_t>(j0) * 3;
        uint4 wv[U][R];
        uint16_t gv[U][R];
        uint32_t dv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + kStride * u;
            if (j < lane_groups) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    wv[u][r] = __ldcs(wrow[r] + j);
                    gv[u][r] = __ldcs(grow[r] + j);
                    dv[u][r] = __ldcs(drow[r] + s0 + kSuperStride * u);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + kStride * u;
            if (j < lane_groups) {
                float2 d[R];
                float scale[R], mn[R];  // M > 1 only
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    // (d, dmin) widened exactly; d * sc and dmin * m are exact in fp32.
                    d[r] = __half22float2(*reinterpret_cast<const __half2*>(&dv[u][r]));
                    if constexpr (M > 1) {
                        scale[r] = d[r].x * static_cast<float>(gv[u][r] & 0xffu);
                        mn[r] = d[r].y * static_cast<float>(gv[u][r] >> 8);
                    }
                }
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const uint4* blk =
                        step_act + (static_cast<int64_t>(m) * groups + kStride * u) * 3;
                    const uint4 a_lo = __ldg(blk);
                    const uint4 a_hi = __ldg(blk + 1);
                    const uint2 a_ds = __ldg(reinterpret_cast<const uint2*>(blk + 2));
                    const float d_a = __uint_as_float(a_ds.x);
                    const int sum_a = static_cast<int>(a_ds.y);
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const int dot = dot_group(wv[u][r], a_lo, a_hi);
                        if constexpr (M == 1) {
                            // d * (sc * dot) is the same single rounding of the exact product as
                            // (d * sc) * dot: sc * dot is an exact integer below 2^24 (255 * 32
                            // * 15 * 127), and d * sc was exact. Likewise dmin * (m * sum_a).
                            // The integer products save the conversions of sc and m; at M > 1
                            // they would be made per activation row.
                            const auto sc_dot = static_cast<int>(gv[u][r] & 0xffu) * dot;
                            const auto m_sum = static_cast<int>(gv[u][r] >> 8) * sum_a;
                            acc[m][r] += d_a * (d[r].x * static_cast<float>(sc_dot) -
                                                d[r].y * static_cast<float>(m_sum));
                        } else {
                            acc[m][r] += d_a * (scale[r] * static_cast<float>(dot) -
                                                mn[r] * static_cast<float>(sum_a));
                        }
                    }
                }
            }
        }
    }
    sum_across_lanes(acc);
    store_rows(place, acc, y, n, epilogue, tail);
}

}  // namespace kestrel::cuda
