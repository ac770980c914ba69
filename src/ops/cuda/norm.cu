// RMSNorm kernels (host API: small_ops.h; CPU twin: ops/cpu/norm.cpp and CpuOps' compositions).
//
// rms_norm_kernel<kThreads, kOutput>: kThreads threads per row (small_ops.cuh picks 32 / 512 /
//   1024 from dim); the row is read once into registers (up to kRowChunks float4 chunks per
//   thread), its sum of squares reduced in the shared fixed order, then each chunk normalised and
//   stored (or added to the residual). Memory bound: one read of x (and the residual), one write.
// rms_norm_q8_kernel<kThreads>: the same normalisation, then the Q8 blocks of the row: chunk c sits
//   in thread c % kThreads, so the 8 chunks of a 32-element block are 8 consecutive lanes, which
//   quantise together with 8-lane shuffles exactly as quantize_q8_kernel (gemv_w4a8.cuh) does.
// head_norm_rope_kernel: one warp per (token, head) row: normalise into shared memory, then rotate
//   the pairs as rope_kernel does (rope.cu), so the result is bit for bit rms_norm then RoPE.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/small_ops.cuh"
#include "ops/cuda/small_ops.h"

namespace kestrel::cuda {
namespace {

enum class NormOutput { kStore, kAddToResidual };

template <int kThreads, NormOutput kOutput>
__global__ void __launch_bounds__(kThreads * kRowsPerBlock<kThreads>)
    rms_norm_kernel(const float* x, const float* weight, int rows, int dim, float eps, float* out, bool vec4) {
    wait_for_upstream();
    allow_downstream();
    __shared__ float warp_totals[kThreads / 32];
    const int thread_in_row = static_cast<int>(threadIdx.x) % kThreads;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock<kThreads> + threadIdx.x / kThreads;
    if (row >= rows) return;  // one row per block above 32 threads: the whole block leaves together
    const float* x_row = x + row * dim;
    float* out_row = out + row * dim;
    float4 v[kRowChunks<kThreads>];
    const float inv_rms = load_row_inv_rms<kThreads>(x_row, dim, eps, vec4, thread_in_row, v, warp_totals);
    const int chunks = (dim + 3) / 4;
#pragma unroll
    for (int k = 0; k < kRowChunks<kThreads>; ++k) {
        const int c = thread_in_row + k * kThreads;
        if (c >= chunks) break;
        float4 y = normalise_chunk(v[k], inv_rms, weight, c, dim, vec4);
        if constexpr (kOutput == NormOutput::kAddToResidual) {
            const float4 r = load_chunk(out_row, c, dim, vec4);
            y = make_float4(__fadd_rn(r.x, y.x), __fadd_rn(r.y, y.y), __fadd_rn(r.z, y.z), __fadd_rn(r.w, y.w));
        }
        store_chunk(out_row, c, dim, vec4, y);
    }
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads* kRowsPerBlock<kThreads>)
    rms_norm_q8_kernel(const float* x, const float* weight, int rows, int dim, float eps,
                       Q8Block* out, bool vec4) {
    __shared__ float warp_totals[kThreads / 32];
    const int thread_in_row = static_cast<int>(threadIdx.x) % kThreads;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock<kThreads> + threadIdx.x / kThreads;
    const int chunks = dim / 4;  // dim % 32 == 0
    // The weight is a constant: its chunks are read before the wait, so that only x's round trip
    // is left between the previous kernel's end and the norm (this kernel sits between two GEMVs
    // of every decode step).
    float4 w[kRowChunks<kThreads>];
    load_row_chunks<kThreads>(row < rows ? weight : nullptr, dim, vec4, thread_in_row, w);
    wait_for_upstream();
    allow_downstream();
    if (row >= rows) return;  // whole warps leave: a warp never straddles two rows
    float4 v[kRowChunks<kThreads>];
    const float inv_rms =
        load_row_inv_rms<kThreads>(x + row * dim, dim, eps, vec4, thread_in_row, v, warp_totals);
    Q8Block* out_row = out + row * (dim / 32);
    const int warp_first_chunk = thread_in_row & ~31;
#pragma unroll
    for (int k = 0; k < kRowChunks<kThreads>; ++k) {
        // Whole warps skip together, so the shuffles inside always see all 32 lanes.
        if (warp_first_chunk + k * kThreads >= chunks) break;
        const int c = thread_in_row + k * kThreads;
        const bool mine = c < chunks;
        const float4 y = mine ? normalise_chunk(v[k], inv_rms, w[k], weight != nullptr)
                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        quantize_q8_lanes(y, mine, out_row + c / 8);
    }
}

// 8 rows (warps) per block, each staged in shared memory between the norm and the rotation.
constexpr int kHeadRowsPerBlock = kRowsPerBlock<32>;
constexpr int kMaxHeadDim = 32 * kNormChunks * 4;

__global__ void __launch_bounds__(32 * kHeadRowsPerBlock)
    head_norm_rope_kernel(float* x, const float* weight, const int64_t* positions, int rows, int n_heads,
                          int head_dim, int rotary_pairs, float eps, bool vec4, RopeTable table) {
    wait_for_upstream();
    allow_downstream();
    __shared__ float stage[kHeadRowsPerBlock][kMaxHeadDim];
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kHeadRowsPerBlock + warp;
    if (row >= rows) return;
    float* x_row = x + row * head_dim;
    float4 v[kNormChunks];
    const float inv_rms = load_row_inv_rms<32>(x_row, head_dim, eps, vec4, lane, v, nullptr);
    const int chunks = (head_dim + 3) / 4;
    float* staged = stage[warp];
#pragma unroll
    for (int k = 0; k < kNormChunks; ++k) {
        const int c = lane + k * 32;
        if (c >= chunks) break;
        const float4 y = normalise_chunk(v[k], inv_rms, weight, c, head_dim, vec4);
        const float values[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (4 * c + i < head_dim) staged[4 * c + i] = values[i];
        }
    }
    __syncwarp();
    const int half = head_dim / 2;
    const int64_t position = positions[row / n_heads];
    for (int j = lane; j < half; j += 32) {
        float a = staged[j];
        float b = staged[j + half];
        if (j < rotary_pairs) {
            float c, s;
            rope_cos_sin(position, table.inv_freq[j], c, s);
            rotate_pair(a, b, c, s);
        }
        x_row[j] = a;
        x_row[j + half] = b;
    }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

Status check_rows(const char* what, const void* x, const void* out, int64_t rows, int64_t dim, int64_t max_dim) {
    if (rows < 0 || dim <= 0 || dim > max_dim || rows > (int64_t{1} << 31) - 1) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": shape [" + std::to_string(rows) + ", " +
                                                        std::to_string(dim) + "] needs 0 < dim <= " +
                                                        std::to_string(max_dim));
    }
    if (rows > 0 && (x == nullptr || out == nullptr)) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": null input or output");
    }
    return ok_status();
}

// Whether every row can be read with float4 loads (the summation order does not depend on it).
bool rows_vec4(int64_t dim, const void* a, const void* b, const void* c) {
    return dim % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

unsigned row_blocks(int64_t rows, int rows_per_block) {
    return static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
}

template <NormOutput kOutput>
Status launch_rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out,
                       cudaStream_t stream) {
    if (rows == 0) return ok_status();
    const bool vec4 = rows_vec4(dim, x, weight, out);
    const int r = static_cast<int>(rows), d = static_cast<int>(dim);
    KESTREL_CUDA_CHECK(launch_row_kernel(rows, dim, [&](auto threads, dim3 grid, dim3 block) {
        return launch_overlapped(rms_norm_kernel<decltype(threads)::value, kOutput>, grid, block, 0,
                                 stream, x, weight, r, d, eps, out, vec4);
    }));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out,
                cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_rows("rms_norm", x, out, rows, dim, kMaxNormDim));
    return launch_rms_norm<NormOutput::kStore>(x, weight, rows, dim, eps, out, stream);
}

Status rms_norm_add(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* residual,
                    cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_rows("rms_norm_add", x, residual, rows, dim, kMaxNormDim));
    return launch_rms_norm<NormOutput::kAddToResidual>(x, weight, rows, dim, eps, residual, stream);
}

Status rms_norm_quantize_q8(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                            Q8Block* out, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_rows("rms_norm_quantize_q8", x, out, rows, dim, kMaxNormDim));
    if (dim % 32 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {
        return Status(StatusCode::kInvalidArgument, "rms_norm_quantize_q8: dim " + std::to_string(dim) +
                                                        " must be a multiple of 32 and the output 16-byte aligned");
    }
    if (rows == 0) return ok_status();
    const bool vec4 = rows_vec4(dim, x, weight, nullptr);
    const int r = static_cast<int>(rows), d = static_cast<int>(dim);
    KESTREL_CUDA_CHECK(launch_row_kernel(rows, dim, [&](auto threads, dim3 grid, dim3 block) {
        return launch_overlapped(rms_norm_q8_kernel<decltype(threads)::value>, grid, block, 0,
                                 stream, x, weight, r, d, eps, out, vec4);
    }));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status head_norm_rope(float* x, const float* weight, const int64_t* positions, int64_t tokens, int64_t n_heads,
                      int64_t head_dim, int64_t rotary_pairs, float eps, double theta, cudaStream_t stream) {
    if (tokens < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || head_dim > kMaxHeadDim ||
        rotary_pairs < 0 || rotary_pairs > head_dim / 2 || rotary_pairs > kMaxRopePairs ||
        tokens * n_heads > (int64_t{1} << 31) - 1) {
        return Status(StatusCode::kInvalidArgument,
                      "head_norm_rope: " + std::to_string(n_heads) + " heads of " + std::to_string(head_dim) +
                          " with " + std::to_string(rotary_pairs) + " rotating pairs: head_dim must be even and <= " +
                          std::to_string(kMaxHeadDim) + ", rotating pairs <= min(head_dim / 2, " +
                          std::to_string(kMaxRopePairs) + ")");
    }
    if (tokens == 0) return ok_status();
    if (x == nullptr || positions == nullptr) {
        return Status(StatusCode::kInvalidArgument, "head_norm_rope: null x or positions");
    }
    const int64_t rows = tokens * n_heads;
    const RopeTable table = make_rope_table(rotary_pairs, head_dim, theta);
    KESTREL_CUDA_CHECK(launch_overlapped(
        head_norm_rope_kernel, dim3(row_blocks(rows, kHeadRowsPerBlock)),
        dim3(32 * kHeadRowsPerBlock), 0, stream, x, weight, positions, static_cast<int>(rows),
        static_cast<int>(n_heads), static_cast<int>(head_dim), static_cast<int>(rotary_pairs), eps,
        rows_vec4(head_dim, x, weight, nullptr), table));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
