// Device helpers shared by the small-op kernels (norm.cu, rope.cu, fused_ffn.cu; host API:
// small_ops.h).
//
// Float arithmetic is written with __fmul_rn / __fadd_rn / __fdiv_rn: nvcc would otherwise
// contract a * b + c into one FMA, while the CPU twins are built with -ffp-contract=off; with the
// explicit intrinsics each kernel performs the CPU's operations in the CPU's order.
//
// A row is read as chunks of 4 floats (chunk c = elements [4c, 4c + 4)). Of the kThreads threads
// given a row, thread t owns chunks t, t + kThreads, ... and sums their squares in that order,
// element by element; the warps then reduce with xor shuffles and the warp totals are added in
// warp order. That order depends on dim only (kThreads and the chunk count per thread are picked
// from dim), never on alignment, so rms_norm and every fused norm round identically.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops/weight_format.h"  // Q8Block

namespace kestrel::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Chunk c of a row; elements at or past dim read as 0 (whose square adds nothing). vec4: the row
// is 16-byte aligned and dim % 4 == 0.
__device__ __forceinline__ float4 load_chunk(const float* row, int c, int dim, bool vec4) {
    if (vec4) return reinterpret_cast<const float4*>(row)[c];
    const int i = 4 * c;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (i < dim) v.x = row[i];
    if (i + 1 < dim) v.y = row[i + 1];
    if (i + 2 < dim) v.z = row[i + 2];
    if (i + 3 < dim) v.w = row[i + 3];
    return v;
}

__device__ __forceinline__ void store_chunk(float* row, int c, int dim, bool vec4, float4 v) {
    if (vec4) {
        reinterpret_cast<float4*>(row)[c] = v;
        return;
    }
    const int i = 4 * c;
    if (i < dim) row[i] = v.x;
    if (i + 1 < dim) row[i + 1] = v.y;
    if (i + 2 < dim) row[i + 2] = v.z;
    if (i + 3 < dim) row[i + 3] = v.w;
}

// Every lane gets the same total: at each step lanes l and l ^ off add the same two values.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, off));
    return v;
}

__device__ __forceinline__ float4 chunk_times(float4 v, float s) {
    return make_float4(__fmul_rn(v.x, s), __fmul_rn(v.y, s), __fmul_rn(v.z, s), __fmul_rn(v.w, s));
}

__device__ __forceinline__ float4 chunk_times(float4 v, float4 w) {
    return make_float4(__fmul_rn(v.x, w.x), __fmul_rn(v.y, w.y), __fmul_rn(v.z, w.z), __fmul_rn(v.w, w.w));
}

// Row launch shapes: kThreads threads per row, each holding up to kRowChunks<kThreads> chunks in
// registers. 32 threads (one warp, 8 rows per 256-thread block) up to dim 1024 (per-head norms);
// one block of 512 (4 chunks) up to 8192 (d_model); 1024 up to kMaxNormDim. Why 512 for d_model:
// a one-row norm is one block whose time is each thread's serial chain over its chunks (loads,
// sums, quantising), and it sits between two GEMVs of every decode step: with 256 threads
// Gemma 4's 5376 took 6 chunks a thread (bench/results/2026-11-23-decode-profile-h100.md).
template <int kThreads>
constexpr int kRowsPerBlock = kThreads == 32 ? 8 : 1;
constexpr int kNormChunks = 8;
template <int kThreads>
constexpr int kRowChunks = kThreads == 512 ? 4 : kNormChunks;

// Launches a row kernel with the shape above for its dim: launch(threads, grid, block) with
// threads a std::integral_constant<int, 32 | 512 | 1024> that picks the kernel's template.
// Every norm kernel is launched through here, so each sums a row's squares in the one order that
// dim decides (and fused variants stay bit for bit the plain ones).
template <class Launch>
cudaError_t launch_row_kernel(int64_t rows, int64_t dim, Launch launch) {
    const auto grid = [rows](int rows_per_block) {
        return dim3(static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block));
    };
    if (dim <= 32 * kRowChunks<32> * 4) {
        return launch(std::integral_constant<int, 32>{}, grid(kRowsPerBlock<32>),
                      dim3(32 * kRowsPerBlock<32>));
    }
    if (dim <= 512 * kRowChunks<512> * 4) {
        return launch(std::integral_constant<int, 512>{}, grid(1), dim3(512));
    }
    return launch(std::integral_constant<int, 1024>{}, grid(1), dim3(1024));
}

// 1 / sqrt(mean(x^2) + eps) of a row held in registers (chunk k of this thread = chunk
// t + k * kThreads, t = thread_in_row; chunks past the row are zero), as ops/cpu/norm.cpp computes
// it from the sum of squares. warp_totals: kThreads / 32 floats of shared memory (unused for
// one-warp rows), not reused by the caller before a barrier. For kThreads > 32 every thread of
// the block must call this (it synchronises the block).
// kChunks below kRowChunks<kThreads> serves rows known to be shorter with fewer registers; the
// chunks it leaves out are zeros, which add nothing to the sum, so the bits are the same.
template <int kThreads, int kChunks = kRowChunks<kThreads>>
__device__ __forceinline__ float row_inv_rms(const float4 (&v)[kChunks], int dim, float eps,
                                             int thread_in_row, float* warp_totals) {
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
        sum = __fadd_rn(sum, __fmul_rn(v[k].x, v[k].x));
        sum = __fadd_rn(sum, __fmul_rn(v[k].y, v[k].y));
        sum = __fadd_rn(sum, __fmul_rn(v[k].z, v[k].z));
        sum = __fadd_rn(sum, __fmul_rn(v[k].w, v[k].w));
    }
    sum = warp_sum(sum);
    if constexpr (kThreads > 32) {
        if ((thread_in_row & 31) == 0) warp_totals[thread_in_row / 32] = sum;
        __syncthreads();
        sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kThreads / 32; ++w) sum = __fadd_rn(sum, warp_totals[w]);
    }
    // ops/cpu/norm.cpp: mean_square = sum / dim; inv_rms = 1 / sqrt(mean_square + eps).
    const float mean_square = __fdiv_rn(sum, static_cast<float>(dim));
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean_square, eps)));
}

// This thread's chunks of a row (chunk k = chunk thread_in_row + k * kThreads), zero past the
// row, and all zero where row is null (no weight, or a thread past the last row).
template <int kThreads, int kChunks = kRowChunks<kThreads>>
__device__ __forceinline__ void load_row_chunks(const float* row, int dim, bool vec4,
                                                int thread_in_row, float4 (&out)[kChunks]) {
    const int chunks = (dim + 3) / 4;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
        const int c = thread_in_row + k * kThreads;
        out[k] = row != nullptr && c < chunks ? load_chunk(row, c, dim, vec4)
                                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

// Loads the row into v (chunk k of this thread = chunk t + k * kThreads) and returns its
// row_inv_rms.
template <int kThreads, int kChunks = kRowChunks<kThreads>>
__device__ __forceinline__ float load_row_inv_rms(const float* row, int dim, float eps, bool vec4,
                                                  int thread_in_row, float4 (&v)[kChunks],
                                                  float* warp_totals) {
    load_row_chunks<kThreads, kChunks>(row, dim, vec4, thread_in_row, v);
    return row_inv_rms<kThreads, kChunks>(v, dim, eps, thread_in_row, warp_totals);
}

// The normalised chunk with its weight chunk already loaded (has_weight false: no weight). By
// value: taking the address of a register array's element would put the array in local memory.
__device__ __forceinline__ float4 normalise_chunk(float4 x, float inv_rms, float4 weight,
                                                  bool has_weight) {
    const float4 y = chunk_times(x, inv_rms);
    return has_weight ? chunk_times(y, weight) : y;
}

// The normalised chunk: (x * inv_rms) * weight, or x * inv_rms without a weight.
__device__ __forceinline__ float4 normalise_chunk(float4 x, float inv_rms, const float* weight, int c, int dim,
                                                  bool vec4) {
    const float4 y = chunk_times(x, inv_rms);
    return weight != nullptr ? chunk_times(y, load_chunk(weight, c, dim, vec4)) : y;
}

// ---- Q8 blocks from registers
// -----------------------------------------------------------------------

// Lanes 8g .. 8g + 7 of the warp hold one Q8 block's 32 values, 4 each in element order. The
// operations of quantize_q8_kernel (gemv_w4a8.cuh) / quantize_q8_row: d = amax / 127,
// q = clamp(rint(v / d)), a block with a NaN or an infinity gets d = NaN and q = 0 (fmaxf and the
// integer sum are order-free, so 8 lanes of 4 give what 32 lanes of 1 give). Every lane of the
// warp must call this; only lanes with `store` write.
__device__ __forceinline__ void quantize_q8_lanes(float4 y, bool store, Q8Block* block) {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int lane_in_block = lane & 7;
    const bool finite = isfinite(y.x) && isfinite(y.y) && isfinite(y.z) && isfinite(y.w);
    const unsigned not_finite = __ballot_sync(kFullMask, !finite);
    const bool bad = ((not_finite >> (lane & ~7)) & 0xffu) != 0;
    float amax = fmaxf(fmaxf(fabsf(y.x), fabsf(y.y)), fmaxf(fabsf(y.z), fabsf(y.w)));
#pragma unroll
    for (int off = 4; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, off));
    float d = __fdiv_rn(amax, 127.0f);
    int q[4] = {0, 0, 0, 0};
    if (d > 0.0f && !bad) {
        const float values[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
            q[i] = min(127, max(-127, __float2int_rn(__fdiv_rn(values[i], d))));
    }
    int sum = q[0] + q[1] + q[2] + q[3];
#pragma unroll
    for (int off = 4; off > 0; off >>= 1) sum += __shfl_xor_sync(kFullMask, sum, off);
    if (bad) d = __int_as_float(0x7fc00000);
    if (!store) return;
    const uint32_t packed =
        (static_cast<uint32_t>(q[0]) & 0xffu) | ((static_cast<uint32_t>(q[1]) & 0xffu) << 8) |
        ((static_cast<uint32_t>(q[2]) & 0xffu) << 16) | (static_cast<uint32_t>(q[3]) << 24);
    reinterpret_cast<uint32_t*>(block->qs)[lane_in_block] = packed;
    // d, sum and the zero padding: the block's third 16 bytes, one store.
    if (lane_in_block == 0) {
        reinterpret_cast<uint4*>(block)[2] =
            make_uint4(__float_as_uint(d), static_cast<uint32_t>(sum), 0u, 0u);
    }
}

// One Q8 block from a whole warp, lane i holding element i: quantize_q8_kernel's operations
// (gemv_w4a8.cuh), for kernels that produce a row 32 elements per warp step. Every lane must call.
__device__ __forceinline__ void quantize_q8_warp(float v, Q8Block* block) {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const bool bad = __any_sync(kFullMask, !isfinite(v));
    float amax = fabsf(v);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, off));
    float d = __fdiv_rn(amax, 127.0f);
    int q = 0;
    if (d > 0.0f && !bad) q = min(127, max(-127, __float2int_rn(__fdiv_rn(v, d))));
    int sum = q;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(kFullMask, sum, off);
    if (bad) d = __int_as_float(0x7fc00000);
    block->qs[lane] = static_cast<int8_t>(q);
    if (lane == 0) {
        reinterpret_cast<uint4*>(block)[2] =
            make_uint4(__float_as_uint(d), static_cast<uint32_t>(sum), 0u, 0u);
    }
}

// ---- RoPE ------------------------------------------------------------------------------------------

// inv_freq per rotating pair, computed on the host by the CPU's own expression and passed by value
// as a kernel argument (1 KiB): it is a constant of the layer, so a captured graph keeps it.
struct RopeTable {
    float inv_freq[256];
};

// ops/cpu/rope.cpp: inv_freq[j] = 1 / theta^(2j / frequency_dim) in fp32 (HF's fp32 inv_freq).
inline float rope_inv_freq_of_pair(int64_t j, int64_t frequency_dim, double theta) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(frequency_dim);
    return 1.0f / std::pow(static_cast<float>(theta), exponent);
}

inline RopeTable make_rope_table(int64_t n_pairs, int64_t frequency_dim, double theta) {
    RopeTable table{};
    for (int64_t j = 0; j < n_pairs; ++j)
        table.inv_freq[j] = rope_inv_freq_of_pair(j, frequency_dim, theta);
    return table;
}

// angle = fp32(position) * inv_freq in fp32 (HF's fp32 `inv_freq @ position_ids`), then cos and
// sin of that fp32 angle in double, rounded to fp32: what rope.cpp does with std::cos/std::sin.
__device__ __forceinline__ void rope_cos_sin(int64_t position, float inv_freq, float& cos_out, float& sin_out) {
    const float angle = __fmul_rn(static_cast<float>(position), inv_freq);
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    cos_out = static_cast<float>(c);
    sin_out = static_cast<float>(s);
}

// (a, b) -> (a cos - b sin, b cos + a sin), rope.cpp's expressions.
__device__ __forceinline__ void rotate_pair(float& a, float& b, float c, float s) {
    const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    const float rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    a = ra;
    b = rb;
}

}  // namespace kestrel::cuda
