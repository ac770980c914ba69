// W8A8 decode GEMV (host API: gemv_w8a8.h; format and CPU twin: ops/weight_format_w8.h).
//
// gemv_w8a8_kernel<M, R, U, S>: the block structure of gemv_w4a8_kernel (gemv_w4a8.cuh, whose
// helpers it shares): 8 warps per block as 8 / S row groups of R consecutive output rows, the S
// warps of a group splitting K (so the N = 5376 shapes give enough blocks to balance over the
// SMs), partial sums added in a fixed order through shared memory. Work units are 16-byte chunks
// in place of groups: a row is 2 K/32 chunks of 16 int8 weights, chunk h being half h & 1 of
// group h >> 1. Warp s of a row group, lane l, handles chunks h = 32 s + l + 32 S j, so every
// warp load of a row is 512 contiguous bytes (a whole group per lane would be two loads 32 bytes
// apart: half of each sector per instruction). 32 s and 32 S are even, so a lane's chunks keep
// its parity: a lane always holds the same half of its groups. Per chunk and row: one 16-byte
// weight load and one 4-byte (scale, min) load (lanes 2i and 2i+1 share the word: 64 contiguous
// bytes per warp); all U x R loads of a step are issued before any math; weights and scales
// stream (ld.global.cs), each read once. Per activation row m: the matching 16-byte half of the
// Q8 block and its (d, sum) 8 bytes (L1-resident, reused across the R weight rows), then 4 dp4a
// (int8 x int8):
//   acc += d_a (scale dot_half - [even lane] min sum_a)
// the group's min term counted once, by the lane holding its first half.
//
// Variant choice by shape, as gemv_w4a8.cu: M (activation rows) 1..8 a template parameter
// (accumulators in registers); R = gemv_rows_per_warp(M) (each Q8 half-block load reused by two
// weight rows above M = 2); U = 4 chunks in flight per lane for M <= 2, 2 above (registers);
// S = gemv_w8a8_warps_per_row, the rule of gemv_w4a8.h with a row's chunks as its work units.
// Launched with launch_overlapped (PDL): the first step's weight lines are prefetched into L2
// before the kernel waits for its predecessor (matrices under kGemvPrefetchMaxBytes). H100 numbers:
// bench/gemv_w4a8_bench.cu (W8 rows), bench/results/2026-11-23-gemma4-31b-h100-decode-seams.md.
#include "ops/cuda/gemv_w8a8.h"

#include <cuda_fp16.h>

#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemv_w4a8.cuh"
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

__device__ __forceinline__ int dot_chunk(const uint4& w, const uint4& a) {
    int dot = __dp4a(static_cast<int>(w.x), static_cast<int>(a.x), 0);
    dot = __dp4a(static_cast<int>(w.y), static_cast<int>(a.y), dot);
    dot = __dp4a(static_cast<int>(w.z), static_cast<int>(a.z), dot);
    dot = __dp4a(static_cast<int>(w.w), static_cast<int>(a.w), dot);
    return dot;
}

// qs: [n, 2 groups] 16-byte chunks; sm: [n, groups] (scale, min) half2 words; act: [M, groups]
// Q8 blocks as 3 uint4 each (qs 0-15, qs 16-31, then d and sum); y: [M, n].
template <int M, int R, int U, int S>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_w8a8_kernel(const uint4* __restrict__ qs, const uint32_t* __restrict__ sm,
                     const uint4* __restrict__ act, float* __restrict__ y, int n, int groups,
                     int prefetch_steps) {
    using Place = GemvWarpPlace<R, S>;
    constexpr int kStride = Place::kSliceStride;
    const Place place;
    const int chunks = 2 * groups;
    // Addresses relative to the lane's first chunk (h = first_unit + j; j is a multiple of 32, so
    // h >> 1 = first_unit / 2 + j / 2): one pointer per row and constant offsets per step. A warp
    // wholly past n (last block only) gets no chunks but still reaches store_rows' barrier.
    const int lane_chunks = (place.row0 < n ? chunks : 0) - place.first_unit;  // j < lane_chunks
    const int half = place.lane & 1;
    const float min_share = half == 0 ? 1.0f : 0.0f;
    const uint4* wrow[R];
    const uint32_t* srow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        // Rows past n re-read the last row; never stored.
        const int64_t row = min(place.row0 + r, n - 1);
        wrow[r] = qs + row * chunks + place.first_unit;
        srow[r] = sm + row * groups + place.first_unit / 2;
    }
    // The lane's half of its first group's Q8 block; d and sum follow at + 2 - half.
    const uint4* lane_act = act + static_cast<int64_t>(place.first_unit / 2) * 3 + half;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        if (u < prefetch_steps && kStride * u < lane_chunks) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                prefetch_l2(wrow[r] + kStride * u);
                prefetch_l2(srow[r] + kStride * u / 2);
            }
        }
    }
    wait_for_upstream();  // act is the previous kernel's output; y may still be read by it
    allow_downstream();

    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;

    for (int j0 = 0; j0 < lane_chunks; j0 += kStride * U) {
        uint4 wv[U][R];
        uint32_t sv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + kStride * u;
            if (j < lane_chunks) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    wv[u][r] = __ldcs(wrow[r] + j);
                    sv[u][r] = __ldcs(srow[r] + j / 2);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + kStride * u;
            if (j < lane_chunks) {
                float scale[R], mn[R];
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&sv[u][r]));
                    scale[r] = f.x;
                    mn[r] = f.y * min_share;
                }
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const uint4* blk = lane_act + (static_cast<int64_t>(m) * groups + j / 2) * 3;
                    const uint4 a = __ldg(blk);
                    const uint2 a_ds = __ldg(reinterpret_cast<const uint2*>(blk + 2 - half));
                    const float d_a = __uint_as_float(a_ds.x);
                    const float sum_a = static_cast<float>(static_cast<int>(a_ds.y));
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const int dot = dot_chunk(wv[u][r], a);
                        acc[m][r] += d_a * (scale[r] * static_cast<float>(dot) - mn[r] * sum_a);
                    }
                }
            }
        }
    }
    sum_across_lanes(acc);
    store_rows(place, acc, y, n);
}

bool aligned(const void* p, uintptr_t to) {
    return (reinterpret_cast<uintptr_t>(p) % to) == 0;
}

template <int M, int R, int U, int S>
Status launch_split(const W8DeviceView& w, const Q8Block* a, float* y, cudaStream_t stream) {
    const int64_t rows_per_block = GemvWarpPlace<R, S>::kRowsPerBlock;
    const int64_t grid = (w.n + rows_per_block - 1) / rows_per_block;
    KESTREL_CUDA_CHECK(
        launch_overlapped(gemv_w8a8_kernel<M, R, U, S>, dim3(static_cast<unsigned>(grid)),
                          dim3(kGemvWarps * 32), 0, stream, reinterpret_cast<const uint4*>(w.qs),
                          w.scale_min, reinterpret_cast<const uint4*>(a), y, static_cast<int>(w.n),
                          static_cast<int>(w.k / 32), gemv_prefetch_steps(w.n * w.k)));
    return ok_status();
}

template <int M, int R, int U>
Status launch(const W8DeviceView& w, const Q8Block* a, float* y, cudaStream_t stream) {
    static_assert(R == gemv_rows_per_warp(M),
                  "gemv_warps_per_row must see the R the kernel runs with");
    KESTREL_ASSIGN_OR_RETURN(const int sm_count, gemv_sm_count());
    switch (gemv_w8a8_warps_per_row(w.n, w.k, M, sm_count)) {
        case 1:
            return launch_split<M, R, U, 1>(w, a, y, stream);
        case 2:
            return launch_split<M, R, U, 2>(w, a, y, stream);
        case 4:
            return launch_split<M, R, U, 4>(w, a, y, stream);
        default:
            return launch_split<M, R, U, 8>(w, a, y, stream);
    }
}

}  // namespace

Status gemv_w8a8(const W8DeviceView& w, const Q8Block* a, int64_t m, float* y,
                 cudaStream_t stream) {
    // 2 k / 32 chunks per row and row * chunks offsets stay in int / int64 ranges.
    if (w.n <= 0 || w.k <= 0 || w.k % 32 != 0 || w.n > (int64_t{1} << 30) ||
        w.k / 32 > (int64_t{1} << 26)) {
        return Status(StatusCode::kInvalidArgument,
                      "gemv_w8a8: weight shape [" + std::to_string(w.n) + ", " +
                          std::to_string(w.k) + "] needs k % 32 == 0");
    }
    if (m < 1 || m > kGemvMaxRows) {
        return Status(StatusCode::kInvalidArgument, "gemv_w8a8: " + std::to_string(m) +
                                                        " activation rows, the GEMV takes 1 to 8");
    }
    if (w.qs == nullptr || w.scale_min == nullptr || a == nullptr || y == nullptr ||
        !aligned(w.qs, 16) || !aligned(w.scale_min, 4) || !aligned(a, 16) || !aligned(y, 4)) {
        return Status(StatusCode::kInvalidArgument,
                      "gemv_w8a8: null pointer, or qs / activations not 16-byte aligned");
    }
    switch (m) {
        case 1:
            return launch<1, 1, 4>(w, a, y, stream);
        case 2:
            return launch<2, 1, 4>(w, a, y, stream);
        case 3:
            return launch<3, 2, 2>(w, a, y, stream);
        case 4:
            return launch<4, 2, 2>(w, a, y, stream);
        case 5:
            return launch<5, 2, 2>(w, a, y, stream);
        case 6:
            return launch<6, 2, 2>(w, a, y, stream);
        case 7:
            return launch<7, 2, 2>(w, a, y, stream);
        default:
            return launch<8, 2, 2>(w, a, y, stream);
    }
}

}  // namespace kestrel::cuda
