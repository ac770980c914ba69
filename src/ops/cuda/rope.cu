// Rotary position embedding, rotate-half layout (host API: small_ops.h; CPU twin:
// ops/cpu/rope.cpp, whose rotate_half_pairs this mirrors: pairs (j, j + pair_distance), j < n_pairs,
// turn by position * inv_freq[j], inv_freq[j] = 1 / theta^(2j / frequency_dim)).
//
// rope_kernel: one thread per (token, head, pair); each computes its own cos/sin in double (a
// handful of FP64 ops per pair, far below the cost of the loads at these sizes) so nothing is
// shared or synchronised. positions are read on the device, inv_freq comes as a kernel argument.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/small_ops.cuh"
#include "ops/cuda/small_ops.h"

namespace kestrel::cuda {
namespace {

constexpr int kRopeThreads = 256;

__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(float* x, const int64_t* positions, int64_t total_pairs, int n_heads, int head_dim, int pair_distance,
                int n_pairs, RopeTable table) {
    wait_for_upstream();
    allow_downstream();
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kRopeThreads + threadIdx.x;
    if (i >= total_pairs) return;
    const int j = static_cast<int>(i % n_pairs);
    const int64_t row = i / n_pairs;  // token * n_heads + head
    float* v = x + row * head_dim;
    float c, s;
    rope_cos_sin(positions[row / n_heads], table.inv_freq[j], c, s);
    float a = v[j];
    float b = v[j + pair_distance];
    rotate_pair(a, b, c, s);
    v[j] = a;
    v[j + pair_distance] = b;
}

Status launch_rope(const char* what, float* x, const int64_t* positions, int64_t tokens, int64_t n_heads,
                   int64_t head_dim, int64_t pair_distance, int64_t n_pairs, int64_t frequency_dim, double theta,
                   cudaStream_t stream) {
    if (tokens < 0 || n_heads <= 0 || head_dim <= 0 || n_pairs < 0 || n_pairs > kMaxRopePairs ||
        n_pairs > pair_distance || pair_distance + n_pairs > head_dim || frequency_dim <= 0 ||
        tokens * n_heads > (int64_t{1} << 30)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": " + std::to_string(n_heads) + " heads of " + std::to_string(head_dim) +
                          " with " + std::to_string(n_pairs) + " rotating pairs at distance " +
                          std::to_string(pair_distance) + " (at most " + std::to_string(kMaxRopePairs) + " pairs)");
    }
    const int64_t total_pairs = tokens * n_heads * n_pairs;
    if (total_pairs == 0) return ok_status();
    if (x == nullptr || positions == nullptr) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": null x or positions");
    }
    const RopeTable table = make_rope_table(n_pairs, frequency_dim, theta);
    const int64_t blocks = (total_pairs + kRopeThreads - 1) / kRopeThreads;
    KESTREL_CUDA_CHECK(launch_overlapped(
        rope_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kRopeThreads), 0, stream, x,
        positions, total_pairs, static_cast<int>(n_heads), static_cast<int>(head_dim),
        static_cast<int>(pair_distance), static_cast<int>(n_pairs), table));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status rope_neox(float* x, const int64_t* positions, int64_t tokens, int64_t n_heads, int64_t head_dim,
                 double theta, cudaStream_t stream) {
    return launch_rope("rope_neox", x, positions, tokens, n_heads, head_dim, head_dim / 2, head_dim / 2, head_dim,
                       theta, stream);
}

Status rope_proportional(float* x, const int64_t* positions, int64_t tokens, int64_t n_heads, int64_t head_dim,
                         int64_t rotary_pairs, double theta, cudaStream_t stream) {
    return launch_rope("rope_proportional", x, positions, tokens, n_heads, head_dim, head_dim / 2,
                       std::min(rotary_pairs, head_dim / 2), head_dim, theta, stream);
}

Status rope_neox_partial(float* x, const int64_t* positions, int64_t tokens, int64_t n_heads, int64_t head_dim,
                         int64_t rotary_dim, double theta, cudaStream_t stream) {
    if (rotary_dim <= 0 || rotary_dim > head_dim) {
        return Status(StatusCode::kInvalidArgument, "rope_neox_partial: rotary_dim " + std::to_string(rotary_dim) +
                                                        " must be in (0, head_dim " + std::to_string(head_dim) + "]");
    }
    return launch_rope("rope_neox_partial", x, positions, tokens, n_heads, head_dim, rotary_dim / 2, rotary_dim / 2,
                       rotary_dim, theta, stream);
}

}  // namespace kestrel::cuda
