// Launchers of the W4A8 decode GEMV family (kernels: gemv_w4a8.cuh). Variant choice by shape:
//   M (activation rows) 1..8 is a template parameter (accumulators stay in registers);
//   R (weight rows per warp) = 1 for M <= 2, 2 above: at larger M each Q8 block load is reused
//   by two weight rows, keeping L1 traffic per weight byte near the M = 2 level;
//   U (groups in flight per lane) = 4 for M <= 2, 2 above (register pressure). Tried and
//   measured slower (H100, 2026): U = 8 at M = 1, K <= 8192 capped at 64 registers (+2-4%
//   time): see bench/gemv_w4a8_notes.md.
#include "ops/cuda/gemv_w4a8.h"

#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemv_w4a8.cuh"

namespace kestrel::cuda {
namespace {

bool aligned(const void* p, uintptr_t to) { return (reinterpret_cast<uintptr_t>(p) % to) == 0; }

template <class T>
Status quantize_q8_impl(const T* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out, cudaStream_t stream) {
    if (m <= 0 || k <= 0 || k % 32 != 0 || ldx < k) {
        return Status(StatusCode::kInvalidArgument, "quantize_q8: shape [" + std::to_string(m) + ", " +
                                                        std::to_string(k) + "] ldx " + std::to_string(ldx) +
                                                        " needs k % 32 == 0 and ldx >= k");
    }
    if (x == nullptr || out == nullptr || !aligned(out, 16)) {
        return Status(StatusCode::kInvalidArgument, "quantize_q8: null input or output not 16-byte aligned");
    }
    const int64_t groups = k / 32;
    const int64_t n_blocks = m * groups;
    constexpr int kWarps = 8;
    const int64_t grid = (n_blocks + kWarps - 1) / kWarps;
    quantize_q8_kernel<T><<<static_cast<unsigned>(grid), kWarps * 32, 0, stream>>>(
        x, ldx, static_cast<int>(groups), n_blocks, out);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

template <int M, int R, int U>
Status launch(const W4DeviceView& w, const Q8Block* a, float* y, cudaStream_t stream) {
    const int64_t rows_per_block = static_cast<int64_t>(kGemvWarps) * R;
    const int64_t grid = (w.n + rows_per_block - 1) / rows_per_block;
    gemv_w4a8_kernel<M, R, U><<<static_cast<unsigned>(grid), kGemvWarps * 32, 0, stream>>>(
        reinterpret_cast<const uint4*>(w.qs), w.scale_min, reinterpret_cast<const uint4*>(a), y,
        static_cast<int>(w.n), static_cast<int>(w.k / 32));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status quantize_q8(const float* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out, cudaStream_t stream) {
    return quantize_q8_impl(x, m, k, ldx, out, stream);
}

Status quantize_q8_bf16(const uint16_t* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out, cudaStream_t stream) {
    return quantize_q8_impl(x, m, k, ldx, out, stream);
}

Status gemv_w4a8(const W4DeviceView& w, const Q8Block* a, int64_t m, float* y, cudaStream_t stream) {
    if (w.n <= 0 || w.k <= 0 || w.k % 32 != 0 || w.n > (int64_t{1} << 30) || w.k / 32 > (int64_t{1} << 26)) {
        return Status(StatusCode::kInvalidArgument, "gemv_w4a8: weight shape [" + std::to_string(w.n) + ", " +
                                                        std::to_string(w.k) + "] needs k % 32 == 0");
    }
    if (m < 1 || m > kGemvMaxRows) {
        return Status(StatusCode::kInvalidArgument,
                      "gemv_w4a8: " + std::to_string(m) + " activation rows, the GEMV takes 1 to 8");
    }
    if (w.qs == nullptr || w.scale_min == nullptr || a == nullptr || y == nullptr || !aligned(w.qs, 16) ||
        !aligned(w.scale_min, 4) || !aligned(a, 16) || !aligned(y, 4)) {
        return Status(StatusCode::kInvalidArgument,
                      "gemv_w4a8: null pointer, or qs / activations not 16-byte aligned");
    }
    switch (m) {
        case 1: return launch<1, 1, 4>(w, a, y, stream);
        case 2: return launch<2, 1, 4>(w, a, y, stream);
        case 3: return launch<3, 2, 2>(w, a, y, stream);
        case 4: return launch<4, 2, 2>(w, a, y, stream);
        case 5: return launch<5, 2, 2>(w, a, y, stream);
        case 6: return launch<6, 2, 2>(w, a, y, stream);
        case 7: return launch<7, 2, 2>(w, a, y, stream);
        default: return launch<8, 2, 2>(w, a, y, stream);
    }
}

}  // namespace kestrel::cuda
