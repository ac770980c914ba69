// Qwen3.5's small ops and MoE router (host API: qwen35_ops.h; CPU twins:
// ops/cpu/qwen35_elementwise.cpp, ops/cpu/moe.cpp).
//
// silu_and_mul, sigmoid_mul: one grid-stride kernel over a functor f(a[i], b[i]) -> out[i], float4
//   loads and stores when every pointer is 16-byte aligned (then a scalar tail), as elementwise.cu.
// add_sigmoid_scaled: blocks along a row (grid.x) times rows (grid.y, striding past 65535); each
//   thread computes its row's sigmoid once and applies it to its chunks.
// rms_norm_gated_kernel<kThreads>: norm.cu's rms_norm_kernel (small_ops.cuh's row reduction, so
//   the same sum of squares, bit for bit), each normalised chunk then times silu(z), stored or
//   (kToQ8) quantised to Q8 blocks.
// moe_route_kernel: one block per token, one thread per expert. The softmax's exps are summed by
//   one thread in expert order, as the CPU sums them (a serial chain of n_experts fp32 adds, about
//   half a microsecond at 256, bought for bit-identical probabilities); each expert's place in the
//   CPU's stable descending sort is then counted directly, and the first k places are written.
//
// Every fp32 operation is an explicit _rn intrinsic in the CPU twin's order (nvcc would otherwise
// contract a * b + c into an FMA, while the CPU is built with -ffp-contract=off); only exp differs,
// see exp_rounded.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/qwen35_ops.h"
#include "ops/cuda/small_ops.cuh"
#include "ops/cuda/small_ops.h"  // kMaxNormDim

namespace kestrel::cuda {
namespace {

constexpr int kBlockThreads = 256;    // elementwise and add_sigmoid_scaled blocks
constexpr int64_t kMaxBlocks = 8192;  // grid-stride beyond: enough to fill any GPU
constexpr int64_t kMaxGridY = 65535;

// exp in double rounded to fp32: the correctly rounded exp(x) except within ~2^-29 ulp of a
// rounding boundary. glibc's expf (the CPU's std::exp(float)) is within 0.502 ulp, so the two
// give the same fp32 except where exp(x) lies that close to a boundary; CUDA's expf is within
// 2 ulp and would differ far more often. Overflow, underflow and NaN are those of expf.
__device__ __forceinline__ float exp_rounded(float x) {
    return static_cast<float>(exp(static_cast<double>(x)));
}

// ops/cpu/qwen35_elementwise.cpp: silu(x) = x / (1 + exp(-x)), sigmoid(x) = 1 / (1 + exp(-x)).
__device__ __forceinline__ float silu(float x) {
    return __fdiv_rn(x, __fadd_rn(1.0f, exp_rounded(-x)));
}

__device__ __forceinline__ float sigmoid(float x) {
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_rounded(-x)));
}

// silu(gate) * up
struct SiluMul {
    __device__ float operator()(float gate, float up) const { return __fmul_rn(silu(gate), up); }
};

// x * sigmoid(gate)
struct SigmoidMul {
    __device__ float operator()(float x, float gate) const { return __fmul_rn(x, sigmoid(gate)); }
};

template <class F>
__global__ void __launch_bounds__(kBlockThreads)
    elementwise_kernel(const float* a, const float* b, float* out, int64_t n, bool vec4, F f) {
    wait_for_upstream();
    allow_downstream();
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlockThreads;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    int64_t scalar_from = 0;
    if (vec4) {
        const int64_t n4 = n / 4;
        const float4* a4 = reinterpret_cast<const float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b);
        float4* out4 = reinterpret_cast<float4*>(out);
        for (int64_t c = first; c < n4; c += stride) {
            const float4 x = a4[c];
            const float4 y = b4[c];
            out4[c] = make_float4(f(x.x, y.x), f(x.y, y.y), f(x.z, y.z), f(x.w, y.w));
        }
        scalar_from = n4 * 4;
    }
    for (int64_t i = scalar_from + first; i < n; i += stride) out[i] = f(a[i], b[i]);
}

// out[r, i] += sigmoid(gate[r]) * x[r, i]. vec4: dim % 4 == 0 and x, out 16-byte aligned, so a
// row is dim / 4 whole chunks.
__global__ void __launch_bounds__(kBlockThreads)
    add_sigmoid_scaled_kernel(const float* x, const float* gate, int64_t rows, int64_t dim,
                              float* out, bool vec4) {
    wait_for_upstream();
    allow_downstream();
    const int64_t items = vec4 ? dim / 4 : dim;  // per row
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlockThreads;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    if (first >= items) return;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const float s = sigmoid(gate[r]);
        if (vec4) {
            const float4* x4 = reinterpret_cast<const float4*>(x + r * dim);
            float4* out4 = reinterpret_cast<float4*>(out + r * dim);
            for (int64_t c = first; c < items; c += stride) {
                const float4 v = x4[c];
                const float4 o = out4[c];
                out4[c] = make_float4(
                    __fadd_rn(o.x, __fmul_rn(s, v.x)), __fadd_rn(o.y, __fmul_rn(s, v.y)),
                    __fadd_rn(o.z, __fmul_rn(s, v.z)), __fadd_rn(o.w, __fmul_rn(s, v.w)));
            }
        } else {
            for (int64_t i = first; i < items; i += stride) {
                out[r * dim + i] = __fadd_rn(out[r * dim + i], __fmul_rn(s, x[r * dim + i]));
            }
        }
    }
}

// rms_norm_kernel (norm.cu) with the gate: (weight * (x * inv_rms)) * silu(z), the CPU's products
// (its weight * y is y * weight, as normalise_chunk computes it). kToQ8: the values go to Q8
// blocks (quantize_q8_lanes, small_ops.cuh: a block is 8 consecutive chunks, so 8 consecutive
// lanes; dim % 32 == 0) instead of out.
template <int kThreads, bool kToQ8>
__global__ void __launch_bounds__(kThreads* kRowsPerBlock<kThreads>)
    rms_norm_gated_kernel(const float* x, const float* z, const float* weight, int rows, int dim,
                          float eps, float* out, Q8Block* q8_out, bool vec4) {
    __shared__ float warp_totals[kThreads / 32];
    const int thread_in_row = static_cast<int>(threadIdx.x) % kThreads;
    const int64_t row =
        static_cast<int64_t>(blockIdx.x) * kRowsPerBlock<kThreads> + threadIdx.x / kThreads;
    const int chunks = (dim + 3) / 4;
    constexpr int kChunks = kRowChunks<kThreads>;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // The weight (a constant) before the wait; x and z in one round trip after it, and silu(z)
    // while the sum of squares is reduced: neither depends on the norm (measured: this kernel
    // added 4.1 us to each Gated DeltaNet layer of a decode step,
    // bench/results/2026-11-23-decode-profile-h100.md).
    float4 v[kChunks], w[kChunks], silu_z[kChunks];
    load_row_chunks<kThreads>(row < rows ? weight : nullptr, dim, vec4, thread_in_row, w);
    wait_for_upstream();
    allow_downstream();
    if (row >= rows) return;  // a whole warp (32 threads per row) or the whole block leaves
    const float* x_row = x + row * dim;
    const float* z_row = z + row * dim;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
        const int c = thread_in_row + k * kThreads;
        const bool in_row = c < chunks;
        v[k] = in_row ? load_chunk(x_row, c, dim, vec4) : zero;
        silu_z[k] = in_row ? load_chunk(z_row, c, dim, vec4) : zero;
    }
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
        if (thread_in_row + k * kThreads >= chunks) break;
        const float4 g = silu_z[k];
        silu_z[k] = make_float4(silu(g.x), silu(g.y), silu(g.z), silu(g.w));
    }
    const float inv_rms = row_inv_rms<kThreads>(v, dim, eps, thread_in_row, warp_totals);
    const int warp_first_chunk = thread_in_row & ~31;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
        // Whole warps skip together, so the Q8 shuffles always see all 32 lanes.
        if (warp_first_chunk + k * kThreads >= chunks) break;
        const int c = thread_in_row + k * kThreads;
        const bool mine = c < chunks;
        float4 gated = zero;
        if (mine) {
            const float4 y = normalise_chunk(v[k], inv_rms, w[k], true);
            gated = make_float4(__fmul_rn(y.x, silu_z[k].x), __fmul_rn(y.y, silu_z[k].y),
                                __fmul_rn(y.z, silu_z[k].z), __fmul_rn(y.w, silu_z[k].w));
        }
        if constexpr (kToQ8) {
            quantize_q8_lanes(gated, mine, q8_out + row * (dim / 32) + c / 8);
        } else if (mine) {
            store_chunk(out + row * dim, c, dim, vec4, gated);
        }
    }
}

constexpr int kMaxExperts = static_cast<int>(kMaxRouteExperts);
constexpr int kMaxTopK = static_cast<int>(kMaxRouteTopK);

// One block of round_up(n_experts, 32) threads per row; thread i owns expert i.
//
// ops/cpu/moe.cpp: probs = router_softmax(logits) (max, e_i = exp(x_i - max), the sum of each 32
// consecutive e as a butterfly, those sums added in order, p_i = e_i * (1 / sum)); order =
// stable_sort of the ids by p descending; weights = p / (the fp32 sum of the k chosen p in that
// order). The butterfly is a warp's xor-shuffle sum: lanes l and l ^ o add the same two values
// (a + b == b + a), so every lane ends with the CPU's sum of its 32.
//
// The max is exact in any order. fmaxf skips a NaN where std::max keeps a leading one, but a NaN
// logit makes its exp, the sum and so every p NaN either way.
//
// Expert j is ahead of expert i in the stable sort when p_j > p_i, or j < i and neither compares
// greater than the other (equal, or both NaN: a NaN row keeps the ids' order, as the CPU's stable
// sort does when no two compare). That is a strict total order on a row (its p are all finite or
// all NaN), so an expert among the first k of the row is among the first k of its own warp, and
// everything ahead of it is too: its place in the row is the number of the warps' first k
// (the candidates) ahead of it. Each warp ranks its 32 by shuffles, then the candidates are
// compared with each other only: at 256 experts, top 8, 64 candidates, 4 threads each, 16
// comparisons a thread (the rank over all experts was 256 comparisons a thread, ~1 us).
__device__ __forceinline__ bool route_ahead(float p_j, int j, float p_i, int i) {
    return p_j > p_i || (j < i && !(p_i > p_j));
}

__global__ void __launch_bounds__(kMaxExperts)
    moe_route_kernel(const float* logits, int n_experts, int k, const float* shared_gate,
                     int32_t* ids, float* weights) {
    wait_for_upstream();
    allow_downstream();
    constexpr int kMaxWarps = kMaxExperts / 32;
    __shared__ float warp_max[kMaxWarps];
    __shared__ float warp_sum[kMaxWarps];
    __shared__ float candidate_p[kMaxWarps * kMaxTopK];
    __shared__ int candidate_id[kMaxWarps * kMaxTopK];
    __shared__ float chosen[kMaxTopK];
    const int i = static_cast<int>(threadIdx.x);
    const int width = static_cast<int>(blockDim.x);  // a multiple of 32
    const int warps = width / 32;
    const int warp = i / 32;
    const int lane = i & 31;
    const int64_t row = blockIdx.x;
    const int slots = shared_gate != nullptr ? k + 1 : k;  // ids and weights per row
    const bool expert = i < n_experts;
    const float logit = expert ? logits[row * n_experts + i] : -INFINITY;
    // The shared expert's slot is thread gate_thread's: warp 1's where there is one, which is
    // otherwise idle at the end while warp 0 normalises the chosen weights. Its gate is read with
    // the logits, not at the end, where a second round trip was on the kernel's critical path.
    const int gate_thread = width > 32 ? 32 : 0;
    const float gate_logit = shared_gate != nullptr && i == gate_thread ? shared_gate[row] : 0.0f;

    float row_max = logit;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        row_max = fmaxf(row_max, __shfl_xor_sync(kFullMask, row_max, off));
    }
    if (lane == 0) warp_max[warp] = row_max;
    __syncthreads();
    row_max = warp_max[0];
    for (int w = 1; w < warps; ++w) row_max = fmaxf(row_max, warp_max[w]);

    // Padding experts' zeros leave the sums' bits as they are (the CPU pads with zeros too).
    const float e = expert ? exp_rounded(__fsub_rn(logit, row_max)) : 0.0f;
    float sum = e;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        sum = __fadd_rn(sum, __shfl_xor_sync(kFullMask, sum, off));
    if (lane == 0) warp_sum[warp] = sum;
    // The candidate slots a warp leaves empty (fewer than k experts) are never ahead. (The
    // barrier below orders these stores before the candidates'.)
    for (int c = i; c < warps * k; c += width) {
        candidate_p[c] = __int_as_float(0x7fc00000);
        candidate_id[c] = INT_MAX;
    }
    __syncthreads();
    float total = warp_sum[0];
    for (int w = 1; w < warps; ++w) total = __fadd_rn(total, warp_sum[w]);
    const float p = __fmul_rn(e, __fdiv_rn(1.0f, total));

    // Place within the warp; padding experts (not ranked) hold NaN with higher ids, never ahead.
    const float mine = expert ? p : __int_as_float(0x7fc00000);
    int warp_place = 0;
#pragma unroll 8
    for (int l = 0; l < 32; ++l) {
        const float other = __shfl_sync(kFullMask, mine, l);
        warp_place += route_ahead(other, warp * 32 + l, mine, i) ? 1 : 0;
    }
    if (expert && warp_place < k) {
        candidate_p[warp * k + warp_place] = p;
        candidate_id[warp * k + warp_place] = i;
    }
    __syncthreads();
    // Candidate c is counted by the `lanes` threads c lanes .. c lanes + lanes - 1 of one warp
    // (lanes: the largest power of two <= 32 / k, so warps k lanes <= the block), each comparing
    // every lanes-th slot; their counts are summed by xor shuffles, which every thread joins.
    const int n_slots = warps * k;
    const int lanes = 1 << (31 - __clz(32 / k));
    const int c = i / lanes;
    const int sub = i % lanes;
    const bool counts = c < n_slots && candidate_id[c] != INT_MAX;
    const int id = counts ? candidate_id[c] : INT_MAX;
    const float candidate = counts ? candidate_p[c] : 0.0f;
    int place = 0;
    if (counts) {
#pragma unroll 4
        for (int d = sub; d < n_slots; d += lanes) {
            place += route_ahead(candidate_p[d], candidate_id[d], candidate, id) ? 1 : 0;
        }
    }
    for (int off = lanes / 2; off > 0; off >>= 1) place += __shfl_xor_sync(kFullMask, place, off);
    if (counts && sub == 0 && place < k) {
        ids[row * slots + place] = id;
        chosen[place] = candidate;
    }
    __syncthreads();

    if (i < 32) {
        float chosen_sum = 0.0f;
        if (lane == 0) {
            for (int j = 0; j < k; ++j) chosen_sum = __fadd_rn(chosen_sum, chosen[j]);
        }
        chosen_sum = __shfl_sync(kFullMask, chosen_sum, 0);
        if (lane < k) weights[row * slots + lane] = __fdiv_rn(chosen[lane], chosen_sum);
    }
    if (i == gate_thread && shared_gate != nullptr) {
        ids[row * slots + k] = n_experts;
        weights[row * slots + k] = sigmoid(gate_logit);
    }
}

bool aligned16(const void* p) {
    return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

Status invalid(const char* what, const std::string& message) {
    return Status(StatusCode::kInvalidArgument, std::string(what) + ": " + message);
}

template <class F>
Status launch_elementwise(const char* what, const float* a, const float* b, float* out, int64_t n,
                          F f, cudaStream_t stream) {
    if (n < 0) return invalid(what, "negative size " + std::to_string(n));
    if (n == 0) return ok_status();
    if (a == nullptr || b == nullptr || out == nullptr) {
        return invalid(what, "null input or output");
    }
    const bool vec4 = aligned16(a) && aligned16(b) && aligned16(out);
    const int64_t work = vec4 ? (n + 3) / 4 : n;
    const int64_t blocks = std::min(kMaxBlocks, (work + kBlockThreads - 1) / kBlockThreads);
    KESTREL_CUDA_CHECK(launch_overlapped(elementwise_kernel<F>, dim3(static_cast<unsigned>(blocks)),
                                         dim3(kBlockThreads), 0, stream, a, b, out, n, vec4, f));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status silu_and_mul(const float* gate, const float* up, int64_t n, float* out,
                    cudaStream_t stream) {
    return launch_elementwise("silu_and_mul", gate, up, out, n, SiluMul{}, stream);
}

Status sigmoid_mul(const float* x, const float* gate, int64_t n, float* out, cudaStream_t stream) {
    return launch_elementwise("sigmoid_mul", x, gate, out, n, SigmoidMul{}, stream);
}

Status add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim, float* out,
                          cudaStream_t stream) {
    constexpr const char* kWhat = "add_sigmoid_scaled";
    if (rows < 0 || dim <= 0) {
        return invalid(kWhat, "shape [" + std::to_string(rows) + ", " + std::to_string(dim) +
                                  "] needs rows >= 0 and dim > 0");
    }
    if (rows == 0) return ok_status();
    if (x == nullptr || gate == nullptr || out == nullptr) {
        return invalid(kWhat, "null x, gate or out");
    }
    const bool vec4 = dim % 4 == 0 && aligned16(x) && aligned16(out);
    const int64_t items = vec4 ? dim / 4 : dim;
    const int64_t blocks_per_row =
        std::min(kMaxBlocks, (items + kBlockThreads - 1) / kBlockThreads);
    const int64_t row_groups = std::min(kMaxGridY, rows);
    KESTREL_CUDA_CHECK(launch_overlapped(
        add_sigmoid_scaled_kernel,
        dim3(static_cast<unsigned>(blocks_per_row), static_cast<unsigned>(row_groups)),
        dim3(kBlockThreads), 0, stream, x, gate, rows, dim, out, vec4));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows,
                      int64_t dim, float eps, float* out, cudaStream_t stream) {
    constexpr const char* kWhat = "rms_norm_gated";
    if (rows < 0 || dim <= 0 || dim > kMaxNormDim || rows > (int64_t{1} << 31) - 1) {
        return invalid(
            kWhat, "shape [" + std::to_string(rows) + ", " + std::to_string(dim) +
                       "] needs 0 <= rows < 2^31 and 0 < dim <= " + std::to_string(kMaxNormDim));
    }
    if (rows == 0) return ok_status();
    if (x == nullptr || z == nullptr || weight == nullptr || out == nullptr) {
        return invalid(kWhat, "null x, z, weight or out");
    }
    // Whether every row can be read with float4 loads (the summation order does not depend on it).
    const bool vec4 =
        dim % 4 == 0 && aligned16(x) && aligned16(z) && aligned16(weight) && aligned16(out);
    const int r = static_cast<int>(rows), d = static_cast<int>(dim);
    KESTREL_CUDA_CHECK(launch_row_kernel(rows, dim, [&](auto threads, dim3 grid, dim3 block) {
        return launch_overlapped(rms_norm_gated_kernel<decltype(threads)::value, false>, grid,
                                 block, 0, stream, x, z, weight, r, d, eps, out, nullptr, vec4);
    }));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status rms_norm_gated_quantize_q8(const float* x, const float* z, const float* weight, int64_t rows,
                                  int64_t dim, float eps, Q8Block* out, cudaStream_t stream) {
    constexpr const char* kWhat = "rms_norm_gated_quantize_q8";
    if (rows < 0 || dim <= 0 || dim > kMaxNormDim || dim % 32 != 0 ||
        rows > (int64_t{1} << 31) - 1) {
        return invalid(kWhat, "shape [" + std::to_string(rows) + ", " + std::to_string(dim) +
                                  "] needs 0 <= rows < 2^31, 0 < dim <= " +
                                  std::to_string(kMaxNormDim) + " and dim % 32 == 0");
    }
    if (rows == 0) return ok_status();
    if (x == nullptr || z == nullptr || weight == nullptr || out == nullptr || !aligned16(out)) {
        return invalid(kWhat, "null x, z, weight or out, or out not 16-byte aligned");
    }
    // rms_norm_gated's launch: the same thread count per row for the same dim.
    const bool vec4 = aligned16(x) && aligned16(z) && aligned16(weight);
    const int r = static_cast<int>(rows), d = static_cast<int>(dim);
    KESTREL_CUDA_CHECK(launch_row_kernel(rows, dim, [&](auto threads, dim3 grid, dim3 block) {
        return launch_overlapped(rms_norm_gated_kernel<decltype(threads)::value, true>, grid, block,
                                 0, stream, x, z, weight, r, d, eps, nullptr, out, vec4);
    }));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
                 const float* shared_gate, int32_t* ids, float* weights, cudaStream_t stream) {
    constexpr const char* kWhat = "moe_route";
    if (rows < 0 || rows > (int64_t{1} << 31) - 1) {
        return invalid(kWhat, std::to_string(rows) + " rows: needs 0 <= rows < 2^31");
    }
    if (n_experts < 1 || n_experts > kMaxRouteExperts) {
        return invalid(kWhat, std::to_string(n_experts) + " experts: needs 1 .. " +
                                  std::to_string(kMaxRouteExperts));
    }
    if (k < 1 || k > std::min(n_experts, kMaxRouteTopK)) {
        return invalid(kWhat, "top " + std::to_string(k) + " of " + std::to_string(n_experts) +
                                  " experts: needs 1 <= k <= min(n_experts, " +
                                  std::to_string(kMaxRouteTopK) + ")");
    }
    if (rows == 0) return ok_status();
    if (logits == nullptr || ids == nullptr || weights == nullptr) {
        return invalid(kWhat, "null logits, ids or weights");
    }
    const int64_t threads = (n_experts + 31) / 32 * 32;
    KESTREL_CUDA_CHECK(launch_overlapped(moe_route_kernel, dim3(static_cast<unsigned>(rows)),
                                         dim3(static_cast<unsigned>(threads)), 0, stream, logits,
                                         static_cast<int>(n_experts), static_cast<int>(k),
                                         shared_gate, ids, weights));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
