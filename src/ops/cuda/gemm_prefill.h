// Host API of the prefill GEMM (gemm_prefill.cu): y [m, n] fp32 = x [m, k] fp32 · W^T for the
// many-row case (prefill, m > kGemvMaxRows), W [n, k] in one of the engine's formats (W4, W8,
// BF16). The weight is dequantised to bf16 into caller-provided scratch, x is rounded to bf16
// (round to nearest even), and cuBLASLt multiplies them on the tensor cores with fp32
// accumulation (CUBLAS_COMPUTE_32F). Each product of two bf16 values is exact in fp32, so the
// result differs from Σ_k bf16(x) bf16(w) (the CPU twin, tests/unit/cuda_gemm_test.cpp) only by
// fp32 accumulation order. Plain C++: includable from .cpp files that have the CUDA headers.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "kestrel/status.h"
#include "ops/cuda/gemv_w4a8.h"  // W4DeviceView
#include "ops/cuda/gemv_w8a8.h"  // W8DeviceView

namespace kestrel::cuda {

struct GemmPlan;  // cuBLASLt descriptors + the heuristic's algorithm for one shape (gemm_prefill.cu)

// cuBLASLt handle, its workspace and the plans already chosen: one per engine (its stream), made
// outside graph capture. Not for concurrent use from several threads at once (plans are looked
// up under a lock, but the workspace is shared by every call).
class GemmContext {
public:
    // cuBLAS's guidance for Hopper: 32 MiB of workspace lets every kernel (split-K included) run.
    static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

    static Result<std::unique_ptr<GemmContext>> create(size_t workspace_bytes = kDefaultWorkspaceBytes);
    ~GemmContext();
    GemmContext(const GemmContext&) = delete;
    GemmContext& operator=(const GemmContext&) = delete;

    // W4 / W8 are dequantised and multiplied in slices of output rows of at most this many bf16
    // bytes each (a multiple of 64 rows, at least 64), so a slice can still sit in L2 when its
    // GEMM reads it; 0 (the default) dequantises the whole matrix, then runs one GEMM.
    void set_weight_slice_bytes(size_t bytes) { weight_slice_bytes_ = bytes; }
    size_t weight_slice_bytes() const { return weight_slice_bytes_; }

    // Chooses (once) the cuBLASLt algorithm for y [m, n] (row stride ldy) = x [m, k] · w [n, k]^T,
    // both bf16, all pointers 16-byte aligned. Host only; cached by (m, n, k, ldy).
    Result<const GemmPlan*> plan(int64_t m, int64_t n, int64_t k, int64_t ldy);

    // Chooses the plans that gemm_w4 / gemm_w8 / gemm_bf16 at these sizes will use, so that a later
    // call (under graph capture, say) runs no heuristic.
    Status prepare(int64_t m, int64_t n, int64_t k);

    cublasLtHandle_t handle() const { return handle_; }
    void* workspace() const { return workspace_; }
    size_t workspace_bytes() const { return workspace_bytes_; }

private:
    GemmContext() = default;

    cublasLtHandle_t handle_ = nullptr;
    void* workspace_ = nullptr;
    size_t workspace_bytes_ = 0;
    size_t weight_slice_bytes_ = 0;
    std::mutex plans_mutex_;
    std::map<std::array<int64_t, 4>, std::unique_ptr<GemmPlan>> plans_;
};

// Scratch (16-byte aligned) that gemm_w4 / gemm_w8 / gemm_bf16 need for any m <= m_max: x as
// bf16, [m, k] rounded up to 256 bytes, then the bf16 weight [n, k] (unused by gemm_bf16).
size_t gemm_scratch_bytes(int64_t m_max, int64_t n, int64_t k);
// The same under `context`'s weight slices: x, then one slice of the bf16 weight.
size_t gemm_scratch_bytes(const GemmContext& context, int64_t m_max, int64_t n, int64_t k);

// y [m, n] fp32 = x [m, k] fp32 · W^T. x, y and scratch 16-byte aligned, x rows contiguous
// (row stride k), y rows of stride n; k % 32 == 0 for W4 / W8. Never synchronises or allocates:
// capturable into a CUDA graph once the plans exist (GemmContext::prepare).
Status gemm_w4(GemmContext& context, const float* x, int64_t m, const W4DeviceView& w, void* scratch, float* y,
               cudaStream_t stream);
Status gemm_w8(GemmContext& context, const float* x, int64_t m, const W8DeviceView& w, void* scratch, float* y,
               cudaStream_t stream);
// The same with x already in bf16 at the scratch's start (gemm_scratch_x, [m, k] contiguous),
// written there by the caller (cuda_ops.cpp: the FFN's gelu_tanh_and_mul_bf16), so no fp32 x is
// read or converted. Bit for bit gemm_w4 / gemm_w8 of the fp32 x whose rounding that is.
Status gemm_w4_bf16_x(GemmContext& context, int64_t m, const W4DeviceView& w, void* scratch,
                      float* y, cudaStream_t stream);
Status gemm_w8_bf16_x(GemmContext& context, int64_t m, const W8DeviceView& w, void* scratch,
                      float* y, cudaStream_t stream);
// Where gemm_w4 / gemm_w8 / gemm_bf16 keep x in bf16: the scratch's start.
inline uint16_t* gemm_scratch_x(void* scratch) {
    return static_cast<uint16_t*>(scratch);
}
// w: [n, k] raw bf16 bits, 16-byte aligned, k % 8 == 0 (16-byte rows for the tensor-core loads).
Status gemm_bf16(GemmContext& context, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k,
                 void* scratch, float* y, cudaStream_t stream);

// y [m, n] fp32 (row stride ldy) = x [m, k] bf16 · w [n, k]^T bf16: the tensor-core GEMM alone.
Status matmul_bf16(GemmContext& context, const uint16_t* x, int64_t m, const uint16_t* w, int64_t n, int64_t k,
                   float* y, int64_t ldy, cudaStream_t stream);

// Rows [row_begin, row_begin + rows) of the weight as bf16 bits, out [rows, k] (16-byte aligned):
// scale * q - min computed in fp32 exactly as w4_dequantize / w8_dequantize do (a product, then a
// difference, each rounded; never fused; W4's scale = d * sc and min = dmin * m, exact), then
// rounded to nearest even as fp32_to_bf16 (core/half.h). The W4 view needs group_scales 2-byte
// and super_scales 4-byte aligned; the slice starts at group_scales + row_begin * (k / 32) and
// super_scales + row_begin * ceil(k / 256).
Status dequantize_w4_to_bf16(const W4DeviceView& w, int64_t row_begin, int64_t rows, uint16_t* out,
                             cudaStream_t stream);
Status dequantize_w8_to_bf16(const W8DeviceView& w, int64_t row_begin, int64_t rows, uint16_t* out,
                             cudaStream_t stream);

// out[i] = fp32_to_bf16(x[i]) (core/half.h: round to nearest even, NaN stays a quiet NaN), i < count.
Status convert_f32_to_bf16(const float* x, int64_t count, uint16_t* out, cudaStream_t stream);

}  // namespace kestrel::cuda
