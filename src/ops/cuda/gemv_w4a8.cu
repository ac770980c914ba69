// Launchers of the W4A8 decode GEMV family (kernels: gemv_w4a8.cuh), and the split-K rule that
// gemv_w8a8.cu shares. Variant choice by shape:
//   M (activation rows) 1..8 is a template parameter (accumulators stay in registers);
//   R (weight rows per warp) = gemv_rows_per_warp(M): 1 for M <= 2, 2 above: at larger M each Q8
//   block load is reused by two weight rows, keeping L1 traffic per weight byte near M = 2;
//   U (groups in flight per lane) = 4 for M <= 2, 2 above (register pressure). Tried and
//   measured slower (H100, 2026): U = 8 at M = 1, K <= 8192 capped at 64 registers (+2-4%
//   time): see bench/gemv_w4a8_notes.md;
//   S (warps per row group, split-K inside the block) = gemv_warps_per_row (gemv_w4a8.h): the
//   notes measured 70-80% of copy bandwidth where N = 5376 gave 672 blocks and 89-92% from
//   2048 blocks up, so S grows the grid of the small-N shapes to >= 8 blocks per SM.
//   Short rows at M = 1 (K <= 8192, gemv_w4a8_short_rows) instead take R = 2, U = 2 and the S
//   that gives each lane at most 2 groups: in the Qwen3.5 decode step (H100, kernel_trace) the
//   Gated DeltaNet in-projection went from 8.90 to 6.38 us, the output projections from 3.72 to
//   2.78, the attention in-projection from 6.88 to 4.92 and the step from 2098 to 1977 us.
// gemv_w4a8_conv1d is the M = 1 kernel with the conv1d epilogue (gemv_w4a8.cuh), under the same
// split rule, so its y is gemv_w4a8's bit for bit.
// Every kernel here is launched with launch_overlapped (PDL, launch.cuh): its prologue (the
// GEMV's first weight lines towards L2) overlaps the previous kernel's tail.
#include "ops/cuda/gemv_w4a8.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gated_delta.h"  // kMaxConvKernel
#include "ops/cuda/gemv_w4a8.cuh"
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

// Grid size, in blocks per SM, from which the split stops. Measured on the H100 (Gemma 4 31B
// decode at depth 512, graph replay): 8 -> 111.6 tok/s, 16 -> 112.8, 32 -> 111.9. At 16 the block
// an SM gets beyond its fair share is at most a sixteenth of its work, and bigger grids only add
// partial sums. One activation row takes 24 (2026-11-24, b1c159a, tg128 @ d512 twice each: 16 and
// 20 129.7, 24 to 48 130.5; @ d32768 113.7 -> 114.3; Qwen3.5 unchanged): the down projection
// (5376 x 21504) and the full layers' o (5376 x 16384) then split 8 ways, not 4. More rows keep
// 16: gemv_w4a8_bench at 24 took 5376 -> 43008 from 56.5 to 67.1 us at M = 4 and 81.8 to 89.2 at
// M = 8. KESTREL_GEMV_BLOCKS_PER_SM=N in the environment sets every M's (to measure).
constexpr int64_t kGemvBlocksPerSm = 16;
constexpr int64_t kGemvBlocksPerSmOneRow = 24;

int64_t gemv_blocks_per_sm(int64_t m) {
    static const int64_t from_environment = [] {
        const char* value = std::getenv("KESTREL_GEMV_BLOCKS_PER_SM");
        return value != nullptr ? std::clamp<int64_t>(std::atoll(value), 1, 256) : int64_t{0};
    }();
    if (from_environment > 0) return from_environment;
    return m == 1 ? kGemvBlocksPerSmOneRow : kGemvBlocksPerSm;
}

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
    KESTREL_CUDA_CHECK(launch_overlapped(quantize_q8_kernel<T>, dim3(static_cast<unsigned>(grid)), dim3(kWarps * 32),
                                         0, stream, x, ldx, static_cast<int>(groups), n_blocks, out));
    return ok_status();
}

// The kernel of the matrix's prefetch (GemvPrefetch, gemv_w4a8.cuh): its lanes' first steps
// where there are any, else its first blocks' rows (none when that count is 0 too).
template <int M, int R, int U, int S, class Epilogue>
Status launch_split(const W4DeviceView& w, const Q8Block* a, float* y, const Epilogue& epilogue,
                    cudaStream_t stream) {
    const int64_t rows_per_block = GemvWarpPlace<R, S>::kRowsPerBlock;
    const int64_t grid = (w.n + rows_per_block - 1) / rows_per_block;
    const int64_t weight_bytes = w.n * w.k / 2;
    const int prefetch_steps = gemv_prefetch_steps(weight_bytes);
    const auto kernel = prefetch_steps > 0
                            ? gemv_w4a8_kernel<M, R, U, S, Epilogue, GemvPrefetch::kLaneSteps>
                            : gemv_w4a8_kernel<M, R, U, S, Epilogue, GemvPrefetch::kBulkRows>;
    KESTREL_CUDA_CHECK(launch_overlapped(
        kernel, dim3(static_cast<unsigned>(grid)), dim3(kGemvWarps * 32), 0, stream,
        reinterpret_cast<const uint4*>(w.qs), w.group_scales, w.super_scales,
        reinterpret_cast<const uint4*>(a), y, static_cast<int>(w.n), static_cast<int>(w.k / 32),
        prefetch_steps, prefetch_steps > 0 ? 0 : gemv_bulk_prefetch_blocks(weight_bytes, grid),
        epilogue));
    return ok_status();
}

// R weight rows per warp, U groups per lane in flight, S = gemv_w4a8_warps_per_row. R does not
// change a row's bits: each row's sum runs over the same lane groups in the same order whatever
// R is; only S does.
template <int M, int R, int U, class Epilogue = GemvNoEpilogue>
Status launch(const W4DeviceView& w, const Q8Block* a, float* y, cudaStream_t stream,
              const Epilogue& epilogue = {}) {
    KESTREL_ASSIGN_OR_RETURN(const int sm_count, gemv_sm_count());
    switch (gemv_w4a8_warps_per_row(w.n, w.k, M, sm_count)) {
        case 1:
            return launch_split<M, R, U, 1>(w, a, y, epilogue, stream);
        case 2:
            return launch_split<M, R, U, 2>(w, a, y, epilogue, stream);
        case 4:
            return launch_split<M, R, U, 4>(w, a, y, epilogue, stream);
        default:
            return launch_split<M, R, U, 8>(w, a, y, epilogue, stream);
    }
}

// gemv_w4a8's checks of the weights, activations and output, naming `op`.
Status check_gemv_w4a8(const char* op, const W4DeviceView& w, const Q8Block* a, int64_t m,
                       const float* y) {
    const std::string name(op);
    if (w.n <= 0 || w.k <= 0 || w.k % 32 != 0 || w.n > (int64_t{1} << 30) ||
        w.k / 32 > (int64_t{1} << 26)) {
        return Status(StatusCode::kInvalidArgument,
                      name + ": weight shape [" + std::to_string(w.n) + ", " + std::to_string(w.k) +
                          "] needs k % 32 == 0");
    }
    if (m < 1 || m > kGemvMaxRows) {
        return Status(StatusCode::kInvalidArgument,
                      name + ": " + std::to_string(m) + " activation rows, the GEMV takes 1 to 8");
    }
    if (w.qs == nullptr || w.group_scales == nullptr || w.super_scales == nullptr || a == nullptr ||
        y == nullptr) {
        return Status(StatusCode::kInvalidArgument,
                      name + ": null qs, group_scales, super_scales, activations or output");
    }
    if (!aligned(w.qs, 16) || !aligned(w.group_scales, 2) || !aligned(w.super_scales, 4) ||
        !aligned(a, 16) || !aligned(y, 4)) {
        return Status(StatusCode::kInvalidArgument,
                      name + ": misaligned pointer (qs and activations need 16 bytes, " +
                          "group_scales 2, super_scales and output 4)");
    }
    return ok_status();
}

// Whether the float ranges [a, a + a_count) and [b, b + b_count) share an element.
bool overlaps(const float* a, int64_t a_count, const float* b, int64_t b_count) {
    const auto a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
    return a0 < b0 + static_cast<uintptr_t>(b_count) * sizeof(float) &&
           b0 < a0 + static_cast<uintptr_t>(a_count) * sizeof(float);
}

// gemv_w4a8_conv1d after its checks: M = 1, R = 1 (the epilogue's one row per thread) and the S
// gemv_w4a8 runs at m = 1, so each row's bits are its (R does not change them). Kernels up
// to 4 (Qwen3.5's) take the 4-slot epilogue, whose registers fit the M = 1 cap of 64.
template <int kMaxKernel>
Status launch_conv1d(const W4DeviceView& w, const Q8Block* a, float* y, const GemvConv1d& conv,
                     cudaStream_t stream) {
    const GemvConv1dEpilogue<kMaxKernel> epilogue{conv.weight,
                                                  conv.state,
                                                  conv.out,
                                                  static_cast<int>(conv.kernel),
                                                  static_cast<int>(conv.channels),
                                                  conv.silu};
    return launch<1, 1, 4>(w, a, y, stream, epilogue);
}

}  // namespace

bool gemv_w4a8_short_rows(int64_t k, int64_t m) {
    static const int64_t most_groups = [] {
        const char* value = std::getenv("KESTREL_GEMV_SHORT_ROWS");
        return value == nullptr ? kGemvShortRowGroups
                                : std::clamp<int64_t>(std::atoll(value), 0, kGemvShortRowGroupsMax);
    }();
    return m == 1 && k / 32 <= most_groups;
}

int gemv_w4a8_warps_per_row(int64_t n, int64_t k, int64_t m, int sm_count) {
    if (gemv_w4a8_short_rows(k, m)) {  // at most 2 groups per lane
        const int64_t groups = k / 32;
        return groups <= 64 ? 1 : groups <= 128 ? 2 : 4;
    }
    return gemv_warps_per_row(n, m, k / 32 / 32, sm_count);
}

int gemv_warps_per_row(int64_t n, int64_t m, int64_t row_slices, int sm_count) {
    const int64_t rows_per_warp = gemv_rows_per_warp(m);
    const int64_t wanted_blocks = gemv_blocks_per_sm(m) * std::max(sm_count, 1);
    int split = 1;
    while (split < kGemvWarps && 2 * split <= row_slices) {
        const int64_t rows_per_block = (kGemvWarps / split) * rows_per_warp;
        if ((n + rows_per_block - 1) / rows_per_block >= wanted_blocks) break;
        split *= 2;
    }
    return split;
}

int gemv_prefetch_steps(int64_t weight_bytes) {
    static const int from_environment = [] {
        const char* value = std::getenv("KESTREL_GEMV_PREFETCH");
        return value != nullptr ? std::clamp(std::atoi(value), 0, 8) : -1;
    }();
    if (from_environment >= 0) return from_environment;
    return weight_bytes < kGemvPrefetchMaxBytes ? kGemvPrefetchSteps : 0;
}

int gemv_bulk_prefetch_blocks(int64_t weight_bytes, int64_t grid) {
    static const int from_environment = [] {
        const char* value = std::getenv("KESTREL_GEMV_BULK_PREFETCH");
        return value != nullptr ? std::clamp(std::atoi(value), 0, 64) : -1;
    }();
    if (weight_bytes < kGemvPrefetchMaxBytes) return 0;
    const int per_sm = from_environment >= 0 ? from_environment : kGemvBulkPrefetchBlocksPerSm;
    const Result<int> sm_count = gemv_sm_count();
    if (!sm_count.ok()) return 0;  // the launch reports the device's error
    return static_cast<int>(std::min<int64_t>(grid, int64_t{*sm_count} * per_sm));
}

Result<int> gemv_sm_count() {
    // Relaxed: racing first calls store the same value; 0 means not yet queried.
    static std::atomic<int> cached{0};
    int count = cached.load(std::memory_order_relaxed);
    if (count > 0) return count;
    int device = 0;
    KESTREL_CUDA_CHECK(cudaGetDevice(&device));
    KESTREL_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cached.store(count, std::memory_order_relaxed);
    return count;
}

Status quantize_q8(const float* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out, cudaStream_t stream) {
    return quantize_q8_impl(x, m, k, ldx, out, stream);
}

Status quantize_q8_bf16(const uint16_t* x, int64_t m, int64_t k, int64_t ldx, Q8Block* out, cudaStream_t stream) {
    return quantize_q8_impl(x, m, k, ldx, out, stream);
}

Status gemv_w4a8(const W4DeviceView& w, const Q8Block* a, int64_t m, float* y, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_gemv_w4a8("gemv_w4a8", w, a, m, y));
    switch (m) {
        case 1:
            // Three groups per lane in flight: 48 registers (five blocks per SM), against 56 at
            // four. Measured on the H100 since the lean group loop (Gemma 4 31B tg128 @ d512, two
            // rounds, same build): U = 2 136.25 / 136.42 tok/s, 3 137.51 / 137.46, 4 136.80 /
            // 136.74, 5 136.48 / 136.23, 6 135.50 / 135.64; d32768 at 3 119.21 against 118.79.
            if (!gemv_w4a8_short_rows(w.k, 1)) return launch<1, 1, 3>(w, a, y, stream);
            switch (gemv_w4a8_warps_per_row(w.n, w.k, 1, 0)) {
                case 1:
                    return launch_split<1, kGemvShortRowsPerWarp, 2, 1>(w, a, y, GemvNoEpilogue{},
                                                                        stream);
                case 2:
                    return launch_split<1, kGemvShortRowsPerWarp, 2, 2>(w, a, y, GemvNoEpilogue{},
                                                                        stream);
                default:
                    return launch_split<1, kGemvShortRowsPerWarp, 2, 4>(w, a, y, GemvNoEpilogue{},
                                                                        stream);
            }
        case 2: return launch<2, 1, 4>(w, a, y, stream);
        case 3: return launch<3, 2, 2>(w, a, y, stream);
        case 4: return launch<4, 2, 2>(w, a, y, stream);
        case 5: return launch<5, 2, 2>(w, a, y, stream);
        case 6: return launch<6, 2, 2>(w, a, y, stream);
        case 7: return launch<7, 2, 2>(w, a, y, stream);
        default: return launch<8, 2, 2>(w, a, y, stream);
    }
}

Status gemv_w4a8_conv1d(const W4DeviceView& w, const Q8Block* a, float* y, const GemvConv1d& conv,
                        cudaStream_t stream) {
    constexpr const char* kOp = "gemv_w4a8_conv1d";
    KESTREL_RETURN_IF_ERROR(check_gemv_w4a8(kOp, w, a, 1, y));
    const auto invalid = [&](const std::string& what) {
        return Status(StatusCode::kInvalidArgument, std::string(kOp) + ": " + what);
    };
    if (conv.kernel < 1 || conv.kernel > kMaxConvKernel) {
        return invalid("conv kernel " + std::to_string(conv.kernel) + " outside [1, " +
                       std::to_string(kMaxConvKernel) + "]");
    }
    if (conv.channels < 1 || conv.channels > w.n) {
        return invalid("conv channels " + std::to_string(conv.channels) + " outside [1, " +
                       std::to_string(w.n) + "] (the GEMV's rows)");
    }
    if (conv.weight == nullptr || conv.out == nullptr) return invalid("null conv weight or out");
    if (conv.kernel > 1 && conv.state == nullptr) return invalid("null conv state with kernel > 1");
    if (!aligned(conv.weight, 4) || !aligned(conv.out, 4) || !aligned(conv.state, 4)) {
        return invalid("conv weight, state and out need 4-byte alignment");
    }
    const int64_t state_count = (conv.kernel - 1) * conv.channels;
    if (overlaps(conv.out, conv.channels, y, w.n) || overlaps(conv.state, state_count, y, w.n) ||
        overlaps(conv.state, state_count, conv.out, conv.channels)) {
        return invalid("conv out, conv state and y overlap");
    }
    if (conv.kernel <= 4) return launch_conv1d<4>(w, a, y, conv, stream);
    return launch_conv1d<static_cast<int>(kMaxConvKernel)>(w, a, y, conv, stream);
}

}  // namespace kestrel::cuda
