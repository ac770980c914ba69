// Host API of the W4A8 decode GEMV (gemv_w4a8.cu): quantise activations to Q8 blocks, then
// y = W x for M <= 8 rows of x with W in the engine's W4 format (ops/weight_format.h, which
// also holds the CPU twins that define these functions' results), optionally followed in the
// same kernel by a causal conv1d on the first outputs (gemv_w4a8_conv1d). Plain C++: includable
// from .cpp files that have the CUDA runtime headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kestrel/status.h"
#include "ops/weight_format.h"

namespace kestrel::cuda {

// Device copy of a W4Weights (ops/weight_format.h): qs [n, k/2] (16-byte aligned);
// group_scales [n, k/32] uint16 words sc | m << 8 (2-byte aligned); super_scales
// [n, ceil(k/256)] 32-bit words, a __half2 (d, dmin) with d in the low half (4-byte aligned:
// W4Weights::super_scales' fp16 pairs as they are). Group g of a row: scale = d * sc,
// min = dmin * m, with (d, dmin) the row's super word g / 8.
struct W4DeviceView {
    const uint8_t* qs = nullptr;
    const uint16_t* group_scales = nullptr;
    const uint32_t* super_scales = nullptr;
    int64_t n = 0;
    int64_t k = 0;
};

constexpr int64_t kGemvMaxRows = 8;

// ---- split-K within a block (shared by the W4A8 and W8A8 launchers) ----------------------

// Warps per block of both GEMVs.
constexpr int kGemvWarps = 8;

// Weight rows per warp (R) for m activation rows: at m > 2 each Q8 block load is reused by two
// weight rows, keeping L1 traffic per weight byte near the m = 2 level.
constexpr int gemv_rows_per_warp(int64_t m) { return m <= 2 ? 1 : 2; }

// How many warps share each row group (S: 1, 2, 4 or 8; the block's 8 warps form 8 / S row groups
// of R rows). Why: at N = 5376 one warp per row gives 672 blocks, 5.09 per SM on an H100, and the
// SMs that get a sixth block finish ~18% after the others. Splitting K shrinks the blocks, so the
// grid grows until the imbalance is a small share of the kernel. Rule: the smallest S whose grid,
// ceil(n / (8 / S * R)) blocks, reaches 24 blocks per SM at m = 1 and 16 above (gemv_w4a8.cu's
// kGemvBlocksPerSmOneRow, kGemvBlocksPerSm), capped so that each warp of a row group gets at
// least one full 32-lane slice of the row (row_slices = the row's work units / 32: W4 k / 1024,
// W8 k / 512); short rows keep S = 1, where extra warps would idle.
// Pure function of its arguments: the launchers pass gemv_sm_count(), tests use it to see which
// variants their shapes reach.
int gemv_warps_per_row(int64_t n, int64_t m, int64_t row_slices, int sm_count);

// Short rows at m = 1: rows of at most kGemvShortRowGroups groups (K <= 8192: Qwen3.5's
// projections, Gemma 4's K = 5376 ones and its sliding o-projection) run kGemvShortRowsPerWarp
// weight rows per warp and S warps per row such that each lane has at most 2 groups of a row
// (S = 1 up to 64 groups, 2 up to 128, 4 up to 256), so every lane issues all its loads in one
// step (4 of 16 bytes at R = 2). Why: under gemv_warps_per_row such a shape gets one or two
// groups per lane (the Gated DeltaNet in-projection, 12352 x 2048, S = 2: 3088 blocks of 8 rows),
// so an SM holds ~22 KiB of loads in flight and that GEMV ran at ~1.5 TB/s in the Qwen3.5 decode
// step. Measured on the H100 (kestrel bench tg128 @ d512): Qwen3.5 449.8 -> 469.5 tok/s with rows
// up to 128 groups; Gemma 4 123.90 -> 125.64 with rows up to 256. KESTREL_GEMV_SHORT_ROWS=N in
// the environment takes rows of up to N groups instead (0: none, at most
// kGemvShortRowGroupsMax), to measure.
constexpr int64_t kGemvShortRowGroups = 256;
constexpr int64_t kGemvShortRowGroupsMax = 256;
constexpr int kGemvShortRowsPerWarp = 2;
bool gemv_w4a8_short_rows(int64_t k, int64_t m);

// The warps per row group (S) gemv_w4a8 runs W [n, k] with at m activation rows: the short-row
// S above, or gemv_warps_per_row (a lane's work unit is one 32-weight group).
int gemv_w4a8_warps_per_row(int64_t n, int64_t k, int64_t m, int sm_count);

// Multiprocessor count of the current device, queried on the first call and then cached (the
// launchers run per token; the engine drives one device per process).
Result<int> gemv_sm_count();

// How many of a lane's first load steps a GEMV of a matrix of `weight_bytes` prefetches into L2
// before it waits for the previous kernel (PDL, launch.cuh): kGemvPrefetchSteps below
// kGemvPrefetchMaxBytes, none from there (those prefetch whole rows of a few blocks instead,
// gemv_bulk_prefetch_blocks). More is not better: the prefetches share DRAM with
// that kernel, and a latency-bound norm or attention kernel then waits behind them. Measured on
// the H100 (tg128, 2026-11-24): without any prefetch Gemma 4 31B (every matrix >= 25 MB) went
// from 130.5 / 130.8 to 131.1 / 131.0 tok/s at depth 512 and 114.1 to 114.4 at 32768, while
// Qwen3.5 (its projections 5-15 MB) fell from 509.8 to 491.2; 2 steps: Gemma 4 129.4. The cap
// at 32 MiB takes in Gemma 4's sliding o-projection (22 MB of nibbles), whose predecessor is the
// attention reduce, not a norm: its GEMV 10.70 -> 9.93 us, the reduce 4.50 -> 4.82, tg128 @ d512
// 131.85 / 131.86 -> 132.26 / 132.26 (2026-11-24, same machine; the cap was 16 MiB).
// KESTREL_GEMV_PREFETCH=N in the environment sets every GEMV's steps (to measure).
constexpr int kGemvPrefetchSteps = 1;
constexpr int64_t kGemvPrefetchMaxBytes = int64_t{32} << 20;
int gemv_prefetch_steps(int64_t weight_bytes);

// How many of a grid's first blocks, when its weights (nibbles) take kGemvPrefetchMaxBytes or
// more, ask L2 for all of their rows' weights and scales before the wait: one bulk prefetch
// (cp.async.bulk.prefetch.L2, prefetch_l2_bulk) per array, the block's rows being consecutive.
// The first blocks are those a GEMV launched during a small kernel makes resident first, so
// DRAM streams their rows while the norm or the gelu before them runs, and their first loads hit
// L2. Only kGemvBulkPrefetchBlocksPerSm blocks per SM. Measured on the H100 (Gemma 4 31B tg128 @
// d512, two runs each, same machine, 2026-11-25): without 134.48 / 134.53 tok/s; 1 per SM
// 133.91 / 134.03, 2 134.99 / 134.99, 3 134.39 / 134.38, 4 134.45 / 134.49. Inlined in the
// kernel the same prefetch lost more than it won, hence gemv_bulk_prefetch_rows' noinline
// (bench/results/2026-11-24-h100-gemv-bulk-prefetch.md). Smaller matrices keep the per-lane steps
// above: the sliding o-projection's predecessor is the attention, which reads DRAM itself (bulk
// at 4 per SM on it and the smaller ones: 130.80 against 131.40 without, 2026-11-24).
// KESTREL_GEMV_BULK_PREFETCH=N in the environment takes N blocks per SM (0: none), to measure.
constexpr int kGemvBulkPrefetchBlocksPerSm = 2;
int gemv_bulk_prefetch_blocks(int64_t weight_bytes, int64_t grid);

// x [m, k] (row stride ldx elements, k % 32 == 0) -> out [m, k/32] Q8 blocks (16-aligned),
// exactly as quantize_q8_row. fp32 or bf16 (raw bits) input.
Status quantize_q8(const float* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out, cudaStream_t stream);
Status quantize_q8_bf16(const uint16_t* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out,
                        cudaStream_t stream);

// y [m, n] fp32 = W x, a = Q8 blocks of x [m, k/32], 1 <= m <= kGemvMaxRows. Matches
// matvec_w4a8 up to fp32 accumulation order.
Status gemv_w4a8(const W4DeviceView& w, const Q8Block* a, int64_t m, float* y, cudaStream_t stream);

// The causal conv1d (gated_delta.h conv1d_causal, rows = 1) that gemv_w4a8_conv1d applies to
// outputs [0, channels): weight [channels, kernel], state [kernel - 1, channels] oldest first
// (updated in place), out [channels].
struct GemvConv1d {
    const float* weight = nullptr;
    float* state = nullptr;  // may be null when kernel == 1
    int64_t kernel = 0;      // 1 .. 8 (gated_delta.h kMaxConvKernel)
    int64_t channels = 0;    // 1 .. w.n
    bool silu = false;
    float* out = nullptr;  // must not overlap y
};

// y [w.n] = W a for one activation row, bit for bit gemv_w4a8(w, a, 1, y); then, for c < channels,
// conv.out[c] and the updated conv.state bit for bit what conv1d_causal(y, 1, conv.weight,
// conv.state, conv.kernel, conv.channels, conv.silu, conv.out) gives, in one launch (at decode
// Qwen3.5's Gated DeltaNet in-projection, qkv | z | b | a, the first 8192 rows the conv's
// channels, is followed by the conv). The engine takes it only with KESTREL_GDN_FUSION=1: on the
// H100 with PDL it measured 2.5% slower per decode step than the conv's own kernel
// (bench/results/2026-11-23-qwen35-gdn-fusion-h100.md).
// conv.state must not overlap y or conv.out either (4-byte aligned, like weight and out).
Status gemv_w4a8_conv1d(const W4DeviceView& w, const Q8Block* a, float* y, const GemvConv1d& conv,
                        cudaStream_t stream);

}  // namespace kestrel::cuda
