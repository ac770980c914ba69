// W8A8 decode GEMV (host API: gemv_w8a8.h; format and CPU twin: ops/weight_format_w8.h).
//
// gemv_w8a8_kernel<M, R, U>: one warp per R consecutive output rows, 8 warps per block, the
// structure of gemv_w4a8_kernel (gemv_w4a8.cuh) with 16-byte chunks in place of groups. A
// row is 2 K/32 chunks of 16 int8 weights; chunk h is half h & 1 of group h >> 1. Lane l
// handles chunks h = l + 32 u (+ 32 U per step), so every warp load of a row is 512
// contiguous bytes (a whole group per lane would be two loads 32 bytes apart: half of each
// sector per instruction). A lane's chunks keep its parity, so a lane always holds the same
// half of its groups. Per chunk and row: one 16-byte weight load and one 4-byte (scale, min)
// load (lanes 2i and 2i+1 share the word: 64 contiguous bytes per warp); all U x R loads of a
// step are issued before any math; weights and scales stream (ld.global.cs), each read once.
// Per activation row m: the matching 16-byte half of the Q8 block and its (d, sum) 8 bytes
// (L1-resident, reused across the R weight rows), then 4 dp4a (int8 x int8):
//   acc += d_a (scale dot_half - [even lane] min sum_a)
// the group's min term counted once, by the lane holding its first half. Lanes are reduced
// with xor shuffles at the end.
//
// Variant choice by shape, as gemv_w4a8.cu: M (activation rows) 1..8 a template parameter
// (accumulators in registers); R = 1 for M <= 2, 2 above (each Q8 half-block load reused by
// two weight rows); U = 4 chunks in flight per lane for M <= 2, 2 above (registers).
// Not measured on a GPU when written: bench/gemv_w4a8_bench.cu has the W8 rows.
#include "ops/cuda/gemv_w8a8.h"

#include <cuda_fp16.h>

#include <string>

#include "ops/cuda/cuda_check.h"

namespace kestrel::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ int dot_chunk(const uint4& w, const uint4& a) {
    int dot = __dp4a(static_cast<int>(w.x), static_cast<int>(a.x), 0);
    dot = __dp4a(static_cast<int>(w.y), static_cast<int>(a.y), dot);
    dot = __dp4a(static_cast<int>(w.z), static_cast<int>(a.z), dot);
    dot = __dp4a(static_cast<int>(w.w), static_cast<int>(a.w), dot);
    return dot;
}

// qs: [n, 2 groups] 16-byte chunks; sm: [n, groups] (scale, min) half2 words; act: [M, groups]
// Q8 blocks as 3 uint4 each (qs 0-15, qs 16-31, then d and sum); y: [M, n].
template <int M, int R, int U>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_w8a8_kernel(const uint4* __restrict__ qs, const uint32_t* __restrict__ sm,
                     const uint4* __restrict__ act, float* __restrict__ y, int n, int groups) {
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * kWarpsPerBlock + threadIdx.x / 32) * R;
    if (row0 >= n) return;
    const int chunks = 2 * groups;
    const int half = lane & 1;
    const float min_share = half == 0 ? 1.0f : 0.0f;
    const uint4* wrow[R];
    const uint32_t* srow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int64_t row = min(row0 + r, n - 1);  // rows past n re-read the last row; never stored
        wrow[r] = qs + row * chunks;
        srow[r] = sm + row * groups;
    }
    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;

    for (int h0 = lane; h0 < chunks; h0 += 32 * U) {
        uint4 wv[U][R];
        uint32_t sv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int h = h0 + 32 * u;
            if (h < chunks) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    wv[u][r] = __ldcs(wrow[r] + h);
                    sv[u][r] = __ldcs(srow[r] + (h >> 1));
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int h = h0 + 32 * u;
            if (h < chunks) {
                const int g = h >> 1;
                float scale[R], mn[R];
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&sv[u][r]));
                    scale[r] = f.x;
                    mn[r] = f.y * min_share;
                }
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const uint4* blk = act + (static_cast<int64_t>(m) * groups + g) * 3;
                    const uint4 a = __ldg(blk + half);
                    const uint2 a_ds = __ldg(reinterpret_cast<const uint2*>(blk + 2));
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
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float v = acc[m][r];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            acc[m][r] = v;
        }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (row0 + r < n) {
#pragma unroll
                for (int m = 0; m < M; ++m) y[static_cast<int64_t>(m) * n + row0 + r] = acc[m][r];
            }
        }
    }
}

bool aligned(const void* p, uintptr_t to) {
    return (reinterpret_cast<uintptr_t>(p) % to) == 0;
}

template <int M, int R, int U>
Status launch(const W8DeviceView& w, const Q8Block* a, float* y, cudaStream_t stream) {
    const int64_t rows_per_block = static_cast<int64_t>(kWarpsPerBlock) * R;
    const int64_t grid = (w.n + rows_per_block - 1) / rows_per_block;
    gemv_w8a8_kernel<M, R, U><<<static_cast<unsigned>(grid), kWarpsPerBlock * 32, 0, stream>>>(
        reinterpret_cast<const uint4*>(w.qs), w.scale_min, reinterpret_cast<const uint4*>(a), y,
        static_cast<int>(w.n), static_cast<int>(w.k / 32));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
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
