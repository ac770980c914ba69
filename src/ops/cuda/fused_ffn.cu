// Fused kernels at the ends of the decode step's blocks (host API: fused_ffn.h). Each is one
// launch in place of two or three (~2-4 us each in a CUDA graph at T = 1) and performs their fp32
// operations in their order, so the results are bit for bit theirs.
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
//   with elementwise.cu's Scale applied to each sum before it is stored; with kNextNormQ8 it goes
//   on to the next block's pre-norm and its Q8 blocks (norm.cu's rms_norm_q8_kernel) from the
//   registers, so the residual is written once and never read back. With ResidualRead::kBeforeWait
//   (fused_ffn.h) the residual is loaded before the wait, with the weights.
// add_rms_norm_q8_kernel<kThreads>: the same row ownership; the residual add first (add's one
//   rounding), then the norm and its Q8 blocks from the registers.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fused_ffn.h"
#include "ops/cuda/launch.cuh"
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

__global__ void __launch_bounds__(kGeluThreads)
    gelu_tanh_and_mul_q8_kernel(const float* __restrict__ gate, const float* __restrict__ up, int64_t chunks,
                                bool vec4, Q8Block* __restrict__ out) {
    wait_for_upstream();
    allow_downstream();
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

// gelu_tanh(gate) * up rounded to bf16 (fp32_to_bf16), 4 elements a thread: the prefill GEMM's
// input written once, in the width it reads (cuda_ops.cpp gelu_tanh_and_mul_linear), where
// gelu_tanh_and_mul then convert_f32_to_bf16 wrote and read back an fp32 [T, f] (Gemma 4 31B:
// 88 MB of the 396 MB each layer's two launches moved at 1024 tokens).
__global__ void __launch_bounds__(kGeluThreads)
    gelu_tanh_and_mul_bf16_kernel(const float* __restrict__ gate, const float* __restrict__ up,
                                  int64_t chunks, bool vec4, uint2* __restrict__ out) {
    wait_for_upstream();
    allow_downstream();
    const int64_t c = static_cast<int64_t>(blockIdx.x) * kGeluThreads + threadIdx.x;
    if (c >= chunks) return;
    const float4 g = load_flat_chunk(gate, c, vec4);
    const float4 u = load_flat_chunk(up, c, vec4);
    out[c] = make_uint2(
        bf16_bits(gelu_tanh_times(g.x, u.x)) | (bf16_bits(gelu_tanh_times(g.y, u.y)) << 16),
        bf16_bits(gelu_tanh_times(g.z, u.z)) | (bf16_bits(gelu_tanh_times(g.w, u.w)) << 16));
}

// ---- rms_norm, residual add, scale (then the next block's norm -> Q8) ---------------------------

// kNextNormQ8: the updated residual row, still in registers, is normalised again with
// next_weight and quantised to Q8 as rms_norm_q8_kernel (norm.cu) would do after reading it back:
// same thread count per row, same chunk ownership, same sum-of-squares order.
// Every operand (x, residual, both weights) is loaded before the first store: a store to the
// residual may alias any later load as far as the compiler knows, so loads left inside the loops
// would each wait for the one before (a dozen L2/DRAM round trips for one row instead of one).
template <int kThreads, bool kNextNormQ8>
__global__ void __launch_bounds__(kThreads* kRowsPerBlock<kThreads>)
    rms_norm_add_scale_kernel(const float* x, const float* weight, int rows, int dim, float eps,
                              float scale, float* residual, const float* next_weight,
                              Q8Block* next_q8, bool vec4, bool residual_early) {
    // Two arrays: the second reduction must not overwrite totals another warp may still be reading.
    __shared__ float warp_totals[2][kThreads / 32];
    const int thread_in_row = static_cast<int>(threadIdx.x) % kThreads;
    const int64_t row =
        static_cast<int64_t>(blockIdx.x) * kRowsPerBlock<kThreads> + threadIdx.x / kThreads;
    const int chunks = (dim + 3) / 4;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 v[kRowChunks<kThreads>], r[kRowChunks<kThreads>], w[kRowChunks<kThreads>],
        next_w[kRowChunks<kThreads>];
    // The weights are constants: read before the wait
    // (bench/results/2026-11-23-decode-profile-h100.md).
    load_row_chunks<kThreads>(row < rows ? weight : nullptr, dim, vec4, thread_in_row, w);
    if constexpr (kNextNormQ8) {
        load_row_chunks<kThreads>(row < rows ? next_weight : nullptr, dim, vec4, thread_in_row,
                                  next_w);
    }
    const float* x_row = x + row * dim;
    float* residual_row = residual + row * dim;
    // ResidualRead::kBeforeWait (fused_ffn.h): the residual's last writer has completed.
    if (residual_early && row < rows) {
#pragma unroll
        for (int k = 0; k < kRowChunks<kThreads>; ++k) {
            const int c = thread_in_row + k * kThreads;
            r[k] = c < chunks ? load_chunk(residual_row, c, dim, vec4) : zero;
        }
    }
    wait_for_upstream();
    allow_downstream();
    if (row >= rows) return;  // one row per block above 32 threads: the whole block leaves together
#pragma unroll
    for (int k = 0; k < kRowChunks<kThreads>; ++k) {
        const int c = thread_in_row + k * kThreads;
        const bool in_row = c < chunks;
        v[k] = in_row ? load_chunk(x_row, c, dim, vec4) : zero;
        if (!residual_early) r[k] = in_row ? load_chunk(residual_row, c, dim, vec4) : zero;
    }
    const float inv_rms = row_inv_rms<kThreads>(v, dim, eps, thread_in_row, warp_totals[0]);
#pragma unroll
    for (int k = 0; k < kRowChunks<kThreads>; ++k) {
        const int c = thread_in_row + k * kThreads;
        if (c >= chunks) break;
        const float4 y = normalise_chunk(v[k], inv_rms, w[k], weight != nullptr);
        // rms_norm_add's r + y, then scale's (r + y) * s: two roundings, as the two launches do.
        const float4 sum = make_float4(__fadd_rn(r[k].x, y.x), __fadd_rn(r[k].y, y.y),
                                       __fadd_rn(r[k].z, y.z), __fadd_rn(r[k].w, y.w));
        v[k] = chunk_times(sum, scale);
        store_chunk(residual_row, c, dim, vec4, v[k]);
    }
    if constexpr (kNextNormQ8) {
        // v holds the new residual; chunks past the row are still zero.
        const float next_inv_rms =
            row_inv_rms<kThreads>(v, dim, eps, thread_in_row, warp_totals[1]);
        Q8Block* out_row = next_q8 + row * (dim / 32);
        const int warp_first_chunk = thread_in_row & ~31;
#pragma unroll
        for (int k = 0; k < kRowChunks<kThreads>; ++k) {
            // Whole warps skip together, so the shuffles inside always see all 32 lanes.
            if (warp_first_chunk + k * kThreads >= chunks) break;
            const int c = thread_in_row + k * kThreads;
            const bool mine = c < chunks;
            const float4 y =
                mine ? normalise_chunk(v[k], next_inv_rms, next_w[k], next_weight != nullptr)
                     : zero;
            quantize_q8_lanes(y, mine, out_row + c / 8);
        }
    }
}

// ---- residual add, then the next block's norm -> Q8 --------------------------------------------

// add's r + x (one rounding), stored; then rms_norm_q8_kernel's norm and Q8 from the registers,
// with the same thread count per row (the same sum-of-squares order as rms_norm).
template <int kThreads>
__global__ void __launch_bounds__(kThreads* kRowsPerBlock<kThreads>)
    add_rms_norm_q8_kernel(const float* x, float* residual, const float* weight, int rows, int dim,
                           float eps, float* normed, Q8Block* out, bool vec4) {
    __shared__ float warp_totals[kThreads / 32];
    const int thread_in_row = static_cast<int>(threadIdx.x) % kThreads;
    const int64_t row =
        static_cast<int64_t>(blockIdx.x) * kRowsPerBlock<kThreads> + threadIdx.x / kThreads;
    const int chunks = dim / 4;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 v[kRowChunks<kThreads>], w[kRowChunks<kThreads>];
    // The weight is a constant: read before the wait.
    load_row_chunks<kThreads>(row < rows ? weight : nullptr, dim, vec4, thread_in_row, w);
    wait_for_upstream();
    allow_downstream();
    if (row >= rows) return;  // a whole warp (32 threads per row) or the whole block leaves
    const float* x_row = x + row * dim;
    float* residual_row = residual + row * dim;
#pragma unroll
    for (int k = 0; k < kRowChunks<kThreads>; ++k) {
        const int c = thread_in_row + k * kThreads;
        const bool in_row = c < chunks;
        const float4 a = in_row ? load_chunk(x_row, c, dim, vec4) : zero;
        const float4 r = in_row ? load_chunk(residual_row, c, dim, vec4) : zero;
        v[k] = make_float4(__fadd_rn(r.x, a.x), __fadd_rn(r.y, a.y), __fadd_rn(r.z, a.z),
                           __fadd_rn(r.w, a.w));
    }
#pragma unroll
    for (int k = 0; k < kRowChunks<kThreads>; ++k) {
        const int c = thread_in_row + k * kThreads;
        if (c >= chunks) break;
        store_chunk(residual_row, c, dim, vec4, v[k]);
    }
    const float inv_rms = row_inv_rms<kThreads>(v, dim, eps, thread_in_row, warp_totals);
    Q8Block* out_row = out + row * (dim / 32);
    float* normed_row = normed != nullptr ? normed + row * dim : nullptr;
    const int warp_first_chunk = thread_in_row & ~31;
#pragma unroll
    for (int k = 0; k < kRowChunks<kThreads>; ++k) {
        // Whole warps skip together, so the shuffles inside always see all 32 lanes.
        if (warp_first_chunk + k * kThreads >= chunks) break;
        const int c = thread_in_row + k * kThreads;
        const bool mine = c < chunks;
        const float4 y = mine ? normalise_chunk(v[k], inv_rms, w[k], weight != nullptr) : zero;
        if (mine && normed_row != nullptr) store_chunk(normed_row, c, dim, vec4, y);
        quantize_q8_lanes(y, mine, out_row + c / 8);
    }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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
    KESTREL_CUDA_CHECK(launch_overlapped(gelu_tanh_and_mul_q8_kernel,
                                         dim3(static_cast<unsigned>(grid)), dim3(kGeluThreads), 0,
                                         stream, gate, up, chunks, vec4, out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status gelu_tanh_and_mul_bf16(const float* gate, const float* up, int64_t n, uint16_t* out,
                              cudaStream_t stream) {
    constexpr int64_t kMaxInt = (int64_t{1} << 31) - 1;
    if (n < 0 || n % 4 != 0 || n / 4 > kMaxInt * kGeluThreads) {
        return Status(StatusCode::kInvalidArgument,
                      "gelu_tanh_and_mul_bf16: " + std::to_string(n) +
                          " elements, a non-negative multiple of 4 needed");
    }
    if (n == 0) return ok_status();
    if (gate == nullptr || up == nullptr || out == nullptr ||
        reinterpret_cast<uintptr_t>(out) % 8 != 0) {
        return Status(StatusCode::kInvalidArgument,
                      "gelu_tanh_and_mul_bf16: null pointer, or output not 8-byte aligned");
    }
    const int64_t chunks = n / 4;
    const bool vec4 = aligned16(gate) && aligned16(up);
    const int64_t grid = (chunks + kGeluThreads - 1) / kGeluThreads;
    KESTREL_CUDA_CHECK(launch_overlapped(
        gelu_tanh_and_mul_bf16_kernel, dim3(static_cast<unsigned>(grid)), dim3(kGeluThreads), 0,
        stream, gate, up, chunks, vec4, reinterpret_cast<uint2*>(out)));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

namespace {

template <bool kNextNormQ8>
Status launch_rms_norm_add_scale(const char* what, const float* x, const float* weight,
                                 int64_t rows, int64_t dim, float eps, float scale, float* residual,
                                 const float* next_weight, Q8Block* next_q8, bool residual_early,
                                 cudaStream_t stream) {
    if (rows < 0 || dim <= 0 || dim > kMaxNormDim || rows > (int64_t{1} << 31) - 1 ||
        (kNextNormQ8 && dim % 32 != 0)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": shape [" + std::to_string(rows) + ", " +
                          std::to_string(dim) + "] needs 0 < dim <= " +
                          std::to_string(kMaxNormDim) + (kNextNormQ8 ? " and dim % 32 == 0" : ""));
    }
    if (rows == 0) return ok_status();
    if (x == nullptr || residual == nullptr ||
        (kNextNormQ8 && (next_q8 == nullptr || !aligned16(next_q8)))) {
        return Status(
            StatusCode::kInvalidArgument,
            std::string(what) + ": null input or residual, or Q8 output not 16-byte aligned");
    }
    // norm.cu's launch_rms_norm: the same thread count per row for the same dim (the reduction
    // order), and float4 access when every row is 16-byte aligned.
    const bool vec4 = dim % 4 == 0 && aligned16(x) && aligned16(weight) && aligned16(residual) &&
                      aligned16(next_weight);
    const int r = static_cast<int>(rows), d = static_cast<int>(dim);
    KESTREL_CUDA_CHECK(launch_row_kernel(rows, dim, [&](auto threads, dim3 grid, dim3 block) {
        return launch_overlapped(rms_norm_add_scale_kernel<decltype(threads)::value, kNextNormQ8>,
                                 grid, block, 0, stream, x, weight, r, d, eps, scale, residual,
                                 next_weight, next_q8, vec4, residual_early);
    }));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                          float scale, float* residual, cudaStream_t stream) {
    return launch_rms_norm_add_scale<false>("rms_norm_add_scale", x, weight, rows, dim, eps, scale,
                                            residual, nullptr, nullptr, false, stream);
}

Status rms_norm_add_scale_norm_quantize_q8(const float* x, const float* weight, int64_t rows,
                                           int64_t dim, float eps, float scale, float* residual,
                                           const float* next_weight, Q8Block* out,
                                           ResidualRead residual_read, cudaStream_t stream) {
    return launch_rms_norm_add_scale<true>("rms_norm_add_scale_norm_quantize_q8", x, weight, rows,
                                           dim, eps, scale, residual, next_weight, out,
                                           residual_read == ResidualRead::kBeforeWait, stream);
}

Status add_rms_norm_quantize_q8(const float* x, float* residual, const float* weight, int64_t rows,
                                int64_t dim, float eps, float* normed, Q8Block* out,
                                cudaStream_t stream) {
    constexpr const char* kWhat = "add_rms_norm_quantize_q8";
    if (rows < 0 || dim <= 0 || dim > kMaxNormDim || dim % 32 != 0 ||
        rows > (int64_t{1} << 31) - 1) {
        return Status(
            StatusCode::kInvalidArgument,
            std::string(kWhat) + ": shape [" + std::to_string(rows) + ", " + std::to_string(dim) +
                "] needs 0 < dim <= " + std::to_string(kMaxNormDim) + " and dim % 32 == 0");
    }
    if (rows == 0) return ok_status();
    if (x == nullptr || residual == nullptr || out == nullptr || !aligned16(out)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(kWhat) +
                          ": null input, residual or output, or Q8 output not 16-byte aligned");
    }
    // norm.cu's launch_rms_norm: the same thread count per row for the same dim.
    const bool vec4 = aligned16(x) && aligned16(weight) && aligned16(residual) && aligned16(normed);
    const int r = static_cast<int>(rows), d = static_cast<int>(dim);
    KESTREL_CUDA_CHECK(launch_row_kernel(rows, dim, [&](auto threads, dim3 grid, dim3 block) {
        return launch_overlapped(add_rms_norm_q8_kernel<decltype(threads)::value>, grid, block, 0,
                                 stream, x, residual, weight, r, d, eps, normed, out, vec4);
    }));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
