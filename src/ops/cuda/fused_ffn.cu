// Fused kernels at the two ends of the decode step's feed-forward block (host API: fused_ffn.h).
// Each is one launch in place of two (~2-4 us each in a CUDA graph at T = 1) and performs the
// pair's fp32 operations in the pair's order, so the results are bit for bit the pair's.
//
// gelu_tanh_and_mul_q8_kernel: thread c owns chunk c (elements [4c, 4c + 4)) of the flattened
//   [rows, dim] gate and up (dim % 32 == 0, so chunks never straddle rows, and the 8 chunks of a
//   Q8 block are 8 consecutive lanes). Each thread applies elementwise.cu's GeluTanhMul to its 4
//   elements, then the 8 lanes quantise their block with 8-lane shuffles exactly as norm.cu's
//   rms_norm_q8_kernel does (the operations of quantize_q8_kernel, gemv_w4a8.cuh). At dim 21504 a
//   row is 5376 threads in 42 CTAs of 128: one float4 load each of gate and up per thread,
//   spread over as many SMs as possible, since the op is one DRAM round trip (latency bound).
// rms_norm_add_scale_kernel<kThreads>: norm.cu's rms_norm_kernel<kThreads, kAddToResidual> (the
//   same thread count per row for the same dim, so the same sum-of-squares order, small_ops.cuh),
//   with elementwise.cu's Scale applied to each sum before it is stored.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fused_ffn.h"
#include "ops/cuda/small_ops.cuh"
#include "ops/cuda/small_ops.h"  // kMaxNormDim

namespace kestrel::cuda {
namespace {

// ---- gelu_tanh(gate) * up, then Q8 ------------------------------------------------------------------

constexpr int kGeluThreads = 128;

// elementwise.cu GeluTanhMul, operation for operation (ops/cpu/elementwise.cpp gelu_tanh:
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), times up).
__device__ __forceinline__ float gelu_tanh_times(float gate, float up) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    constexpr float kCoeff = 0.044715f;
    const float cube = __fmul_rn(__fmul_rn(__fmul_rn(kCoeff, gate), gate), gate);
    const float t = tanhf(__fmul_rn(kSqrt2OverPi, __fadd_rn(gate, cube)));
    return __fmul_rn(__fmul_rn(__fmul_rn(0.5f, gate), __fadd_rn(1.0f, t)), up);
}

// Elements [4c, 4c + 4) of a flat array whose length is a multiple of 4.
__device__ __forceinline__ float4 load_flat_chunk(const float* __restrict__ p, int64_t c, bool vec4) {
    if (vec4) return reinterpret_cast<const float4*>(p)[c];
    const float* q = p + 4 * c;
    return make_float4(q[0], q[1], q[2], q[3]);
}

// norm.cu quantize_q8_lanes: lanes 8g .. 8g + 7 of the warp hold one Q8 block's 32 values, 4 each
// in element order. The operations of quantize_q8_kernel / quantize_q8_row: d = amax / 127,
// q = clamp(rint(v / d)), a block with a NaN or an infinity gets d = NaN and q = 0 (fmaxf and
// the integer sum are order-free, so 8 lanes of 4 give what 32 lanes of 1 give). Every lane of
// the warp must call this.
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
        for (int i = 0; i < 4; ++i) q[i] = min(127, max(-127, __float2int_rn(__fdiv_rn(values[i], d))));
    }
    int sum = q[0] + q[1] + q[2] + q[3];
#pragma unroll
    for (int off = 4; off > 0; off >>= 1) sum += __shfl_xor_sync(kFullMask, sum, off);
    if (bad) d = __int_as_float(0x7fc00000);
    if (!store) return;
    const uint32_t packed = (static_cast<uint32_t>(q[0]) & 0xffu) | ((static_cast<uint32_t>(q[1]) & 0xffu) << 8) |
                            ((static_cast<uint32_t>(q[2]) & 0xffu) << 16) | (static_cast<uint32_t>(q[3]) << 24);
    reinterpret_cast<uint32_t*>(block->qs)[lane_in_block] = packed;
    // d, sum and the zero padding: the block's third 16 bytes, one store.
    if (lane_in_block == 0) {
        reinterpret_cast<uint4*>(block)[2] = make_uint4(__float_as_uint(d), static_cast<uint32_t>(sum), 0u, 0u);
    }
}

__global__ void __launch_bounds__(kGeluThreads)
    gelu_tanh_and_mul_q8_kernel(const float* __restrict__ gate, const float* __restrict__ up, int64_t chunks,
                                bool vec4, Q8Block* __restrict__ out) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * kGeluThreads + threadIdx.x;
    // chunks % 8 == 0: a Q8 block's 8 lanes are all in or all out; the rest still join the shuffles.
    const bool mine = c < chunks;
    float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (mine) {
        const float4 g = load_flat_chunk(gate, c, vec4);
        const float4 u = load_flat_chunk(up, c, vec4);
        y = make_float4(gelu_tanh_times(g.x, u.x), gelu_tanh_times(g.y, u.y), gelu_tanh_times(g.z, u.z),
                        gelu_tanh_times(g.w, u.w));
    }
    quantize_q8_lanes(y, mine, out + c / 8);
}

// ---- rms_norm, residual add, scale -------------------------------------------------------------------

template <int kThreads>
__global__ void __launch_bounds__(kThreads * kRowsPerBlock<kThreads>)
    rms_norm_add_scale_kernel(const float* x, const float* weight, int rows, int dim, float eps, float scale,
                              float* residual, bool vec4) {
    __shared__ float warp_totals[kThreads / 32];
    const int thread_in_row = static_cast<int>(threadIdx.x) % kThreads;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock<kThreads> + threadIdx.x / kThreads;
    if (row >= rows) return;  // one row per block above 32 threads: the whole block leaves together
    const float* x_row = x + row * dim;
    float* residual_row = residual + row * dim;
    float4 v[kNormChunks];
    const float inv_rms = load_row_inv_rms<kThreads>(x_row, dim, eps, vec4, thread_in_row, v, warp_totals);
    const int chunks = (dim + 3) / 4;
#pragma unroll
    for (int k = 0; k < kNormChunks; ++k) {
        const int c = thread_in_row + k * kThreads;
        if (c >= chunks) break;
        const float4 y = normalise_chunk(v[k], inv_rms, weight, c, dim, vec4);
        const float4 r = load_chunk(residual_row, c, dim, vec4);
        // rms_norm_add's r + y, then scale's (r + y) * s: two roundings, as the two launches do.
        const float4 sum = make_float4(__fadd_rn(r.x, y.x), __fadd_rn(r.y, y.y), __fadd_rn(r.z, y.z),
                                       __fadd_rn(r.w, y.w));
        store_chunk(residual_row, c, dim, vec4, chunk_times(sum, scale));
    }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

unsigned row_blocks(int64_t rows, int rows_per_block) {
    return static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
}

}  // namespace

Status gelu_tanh_and_mul_quantize_q8(const float* gate, const float* up, int64_t rows, int64_t dim, Q8Block* out,
                                     cudaStream_t stream) {
    // One thread per 4 elements in 128-thread CTAs; a grid has at most 2^31 - 1 CTAs.
    constexpr int64_t kMaxInt = (int64_t{1} << 31) - 1;
    if (rows < 0 || dim <= 0 || dim % 32 != 0 || rows > kMaxInt || dim > kMaxInt ||
        rows * dim / 4 > kMaxInt * kGeluThreads) {
        return Status(StatusCode::kInvalidArgument, "gelu_tanh_and_mul_quantize_q8: shape [" + std::to_string(rows) +
                                                        ", " + std::to_string(dim) +
                                                        "] needs dim a positive multiple of 32");
    }
    if (rows == 0) return ok_status();
    if (gate == nullptr || up == nullptr || out == nullptr || !aligned16(out)) {
        return Status(StatusCode::kInvalidArgument,
                      "gelu_tanh_and_mul_quantize_q8: null pointer, or output not 16-byte aligned");
    }
    const int64_t chunks = rows * dim / 4;
    const bool vec4 = aligned16(gate) && aligned16(up);
    const int64_t grid = (chunks + kGeluThreads - 1) / kGeluThreads;
    gelu_tanh_and_mul_q8_kernel<<<static_cast<unsigned>(grid), kGeluThreads, 0, stream>>>(gate, up, chunks, vec4,
                                                                                           out);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float scale,
                          float* residual, cudaStream_t stream) {
    if (rows < 0 || dim <= 0 || dim > kMaxNormDim || rows > (int64_t{1} << 31) - 1) {
        return Status(StatusCode::kInvalidArgument, "rms_norm_add_scale: shape [" + std::to_string(rows) + ", " +
                                                        std::to_string(dim) + "] needs 0 < dim <= " +
                                                        std::to_string(kMaxNormDim));
    }
    if (rows == 0) return ok_status();
    if (x == nullptr || residual == nullptr) {
        return Status(StatusCode::kInvalidArgument, "rms_norm_add_scale: null input or residual");
    }
    // norm.cu's launch_rms_norm: the same thread count per row for the same dim (the reduction
    // order), and float4 access when every row is 16-byte aligned.
    const bool vec4 = dim % 4 == 0 && aligned16(x) && aligned16(weight) && aligned16(residual);
    const int r = static_cast<int>(rows), d = static_cast<int>(dim);
    if (dim <= 32 * kNormChunks * 4) {
        rms_norm_add_scale_kernel<32><<<row_blocks(rows, kRowsPerBlock<32>), 32 * kRowsPerBlock<32>, 0, stream>>>(
            x, weight, r, d, eps, scale, residual, vec4);
    } else if (dim <= 256 * kNormChunks * 4) {
        rms_norm_add_scale_kernel<256><<<row_blocks(rows, 1), 256, 0, stream>>>(x, weight, r, d, eps, scale,
                                                                                residual, vec4);
    } else {
        rms_norm_add_scale_kernel<1024><<<row_blocks(rows, 1), 1024, 0, stream>>>(x, weight, r, d, eps, scale,
                                                                                  residual, vec4);
    }
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
