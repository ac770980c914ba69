// W4A8 decode GEMV kernels (launcher: gemv_w4a8.cu; formats and CPU twins: ops/weight_format.h).
//
// quantize_q8_kernel: one warp per 32-element block; lane i owns element i. Same float ops as
//   quantize_q8_row (IEEE division, round-to-nearest-even), so the blocks match bit for bit.
// gemv_w4a8_kernel<M, R, U>: one warp per R consecutive output rows, 8 warps per block. Lane l
//   handles groups g = l + 32 u (+ 32 U per step): per group and row one 16-byte weight load and
//   one 4-byte (scale, min) load, the warp's loads of a row contiguous (512 B and 128 B); all U x R
//   loads of a step are issued before any math. Per activation row m the Q8 block is three 16-byte
//   loads (reused across the R weight rows), then 8 dp4a per weight row:
//     lo = p & 0x0F0F0F0F  (weights b..b+3 of the group)    x activation bytes 0..15
//     hi = (p >> 4) & 0x0F0F0F0F (weights b+16..b+19)       x activation bytes 16..31
//   acc += d_a * (scale * dot - min * sum_a); lanes reduced with xor shuffles at the end.
//   Weights and scales stream (ld.global.cs): each is read once; activations stay in L1.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/weight_format.h"

namespace kestrel::cuda {

constexpr int kGemvWarps = 8;  // warps per block

__device__ __forceinline__ float load_as_float(const float* p) { return *p; }
__device__ __forceinline__ float load_as_float(const uint16_t* p) {
    return __uint_as_float(static_cast<uint32_t>(*p) << 16);  // bf16 bits: exact widening
}

template <class T>
__global__ void __launch_bounds__(256) quantize_q8_kernel(const T* __restrict__ x, int64_t ldx, int groups,
                                                         int64_t n_blocks, Q8Block* __restrict__ out) {
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

__device__ __forceinline__ int dot_group(const uint4& w, const uint4& a_lo, const uint4& a_hi) {
    constexpr uint32_t kMask = 0x0F0F0F0Fu;
    int dot = 0;
    dot = __dp4a(static_cast<int>(w.x & kMask), static_cast<int>(a_lo.x), dot);
    dot = __dp4a(static_cast<int>(w.y & kMask), static_cast<int>(a_lo.y), dot);
    dot = __dp4a(static_cast<int>(w.z & kMask), static_cast<int>(a_lo.z), dot);
    dot = __dp4a(static_cast<int>(w.w & kMask), static_cast<int>(a_lo.w), dot);
    dot = __dp4a(static_cast<int>((w.x >> 4) & kMask), static_cast<int>(a_hi.x), dot);
    dot = __dp4a(static_cast<int>((w.y >> 4) & kMask), static_cast<int>(a_hi.y), dot);
    dot = __dp4a(static_cast<int>((w.z >> 4) & kMask), static_cast<int>(a_hi.z), dot);
    dot = __dp4a(static_cast<int>((w.w >> 4) & kMask), static_cast<int>(a_hi.w), dot);
    return dot;
}

// qs: [n, groups] 16-byte groups; sm: [n, groups] (scale, min) half2 words; act: [M, groups] Q8
// blocks as 3 uint4 each; y: [M, n].
template <int M, int R, int U>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_w4a8_kernel(const uint4* __restrict__ qs, const uint32_t* __restrict__ sm, const uint4* __restrict__ act,
                     float* __restrict__ y, int n, int groups) {
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * kGemvWarps + threadIdx.x / 32) * R;
    if (row0 >= n) return;
    const uint4* wrow[R];
    const uint32_t* srow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int64_t row = min(row0 + r, n - 1);  // rows past n re-read the last row; never stored
        wrow[r] = qs + row * groups;
        srow[r] = sm + row * groups;
    }
    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;

    for (int g0 = lane; g0 < groups; g0 += 32 * U) {
        uint4 wv[U][R];
        uint32_t sv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int g = g0 + 32 * u;
            if (g < groups) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    wv[u][r] = __ldcs(wrow[r] + g);
                    sv[u][r] = __ldcs(srow[r] + g);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int g = g0 + 32 * u;
            if (g < groups) {
                float scale[R], mn[R];
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&sv[u][r]));
                    scale[r] = f.x;
                    mn[r] = f.y;
                }
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const uint4* blk = act + (static_cast<int64_t>(m) * groups + g) * 3;
                    const uint4 a_lo = __ldg(blk);
                    const uint4 a_hi = __ldg(blk + 1);
                    const uint2 a_ds = __ldg(reinterpret_cast<const uint2*>(blk + 2));
                    const float d_a = __uint_as_float(a_ds.x);
                    const float sum_a = static_cast<float>(static_cast<int>(a_ds.y));
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const int dot = dot_group(wv[u][r], a_lo, a_hi);
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

}  // namespace kestrel::cuda
