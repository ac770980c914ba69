// The fused attention inputs of a Gemma 3 / 4 or Qwen3.5 full-attention layer (host API:
// attention_inputs.h; CPU twin: make_cpu_ops()' head_norm_rope (Qwen3.5: rms_norm then
// rope_neox_partial), rms_norm and kv_write, then fp32_to_bf16).
//
// attention_inputs_kernel: one warp per (token, head) item over n_heads q heads then n_kv_heads kv
//   heads. A q item is head_norm_rope_kernel's row (norm.cu); a kv item reads its raw k row into
//   registers first, so with v_from_raw_k its v comes from those registers (no other warp touches
//   the row, so nothing races), writes v (normalised or not) to v and the V cache, then k as a q
//   item and to the K cache. The norm is load_row_inv_rms<32> / normalise_chunk (small_ops.cuh),
//   the very functions head_norm_rope and rms_norm run for head_dim <= 1024, and the rotation is
//   rope_cos_sin / rotate_pair (cos and sin computed once per block and token, into shared
//   memory), so every value is bit for bit the composition's. The pairs are
//   (j, j + pair_distance), j < rotary_pairs: head_norm_rope's (distance head_dim / 2) or
//   rope_neox_partial's (distance and count rotary_dim / 2, frequencies over rotary_dim), as
//   rope_kernel (rope.cu) turns them. Latency bound at decode (T * 18..48 warps): 4 warps per
//   block spread the few items over more SMs than 8 would. The kernel holds kChunks float4 of a
//   row per lane, the fewest for the head dim (2 up to 256, 4 up to 512, 8 up to 1024): at 8 for
//   every head dim it took 134 registers, 3 blocks an SM, and 140 us for a 1024-token chunk of
//   Gemma 4 31B's sliding layer (ncu on the H100, DRAM 27%).
#include "ops/cuda/attention_inputs.h"
#include "ops/cuda/bf16_bits.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/small_ops.cuh"
#include "ops/cuda/small_ops.h"  // kMaxRopePairs

namespace kestrel::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxHeadDim = static_cast<int>(kMaxAttentionInputsHeadDim);
static_assert(kMaxHeadDim <= 32 * kNormChunks * 4,
              "a row must fit one warp's registers in load_row_inv_rms<32>");

struct KernelArgs {
    float* q;
    float* k;
    float* v;
    const float* q_norm;
    const float* k_norm;
    const int64_t* positions;
    uint16_t* k_cache;
    uint16_t* v_cache;
    int items;            // n_tokens * heads_per_token
    int heads_per_token;  // n_heads + n_kv_heads
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int rotary_pairs;   // pairs (j, j + pair_distance) for j < rotary_pairs rotate
    int pair_distance;  // head_dim / 2, or Qwen3.5's partial_rotary_dim / 2
    int capacity;
    float eps;
    bool v_from_raw_k;
    bool v_norm;
    bool q_norm_vec4;  // q_norm 16-byte aligned: float4 loads (the values do not depend on it)
    bool k_norm_vec4;
};

// Chunk c (4 floats) of a row to the fp32 row and, when cache_row is set, to its bf16 cache row.
__device__ __forceinline__ void store_output_chunk(float* row, uint16_t* cache_row, int c,
                                                   float4 y) {
    reinterpret_cast<float4*>(row)[c] = y;
    if (cache_row != nullptr) {
        reinterpret_cast<uint2*>(cache_row)[c] = make_uint2(
            bf16_bits(y.x) | (bf16_bits(y.y) << 16), bf16_bits(y.z) | (bf16_bits(y.w) << 16));
    }
}

// head_norm_rope_kernel's row (norm.cu) from the raw row already in registers: normalise into
// shared memory, rotate pairs (j, j + pair_distance) for j < rotary_pairs (the others stay as
// normalised), then store the row (and its cache row). Every lane of the warp calls this.
template <int kChunks>
__device__ __forceinline__ void norm_rope_row(const float4 (&raw)[kChunks], float inv_rms,
                                              const float4 (&weight)[kChunks], bool has_weight,
                                              const float2* cos_sin, const KernelArgs& a,
                                              float* staged, int lane, float* row,
                                              uint16_t* cache_row) {
    const int chunks = a.head_dim / 4;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
        const int c = lane + k * 32;
        if (c >= chunks) break;
        // normalise_chunk's products, without taking the weight's address (which would put the
        // array in local memory).
        const float4 y = chunk_times(raw[k], inv_rms);
        reinterpret_cast<float4*>(staged)[c] = has_weight ? chunk_times(y, weight[k]) : y;
    }
    __syncwarp();
    for (int j = lane; j < a.rotary_pairs; j += 32) {
        float first = staged[j];
        float second = staged[j + a.pair_distance];
        const float2 rotation = cos_sin[j];
        rotate_pair(first, second, rotation.x, rotation.y);
        staged[j] = first;
        staged[j + a.pair_distance] = second;
    }
    __syncwarp();
    for (int c = lane; c < chunks; c += 32) {
        store_output_chunk(row, cache_row, c, reinterpret_cast<const float4*>(staged)[c]);
    }
}

template <int kChunks>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    attention_inputs_kernel(KernelArgs a, RopeTable table) {
    static_assert(kChunks <= kNormChunks, "load_row_inv_rms<32> holds at most kNormChunks");
    __shared__ __align__(16) float stage[kWarpsPerBlock][32 * kChunks * 4];
    // cos and sin of every rotating pair at each token the block's items belong to (at most one
    // per warp), computed once by the whole block: a warp alone took rotary_pairs / 32 double
    // sincos one after another, which set the kernel's latency at decode (Gemma 4 31B's sliding
    // layers, 128 pairs: 4.9 us against 3.3 for the full layers' 64).
    __shared__ float2 cos_sin[kWarpsPerBlock][kMaxRopePairs];
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int first_item = static_cast<int>(blockIdx.x) * kWarpsPerBlock;
    const int item = first_item + warp;
    const bool active = item < a.items;
    const int first_token = first_item / a.heads_per_token;
    const int token = item / a.heads_per_token;
    const int head = item % a.heads_per_token;
    // The row's norm weight (q_norm or k_norm, constants) before the wait: only the rows' round
    // trip is left after the GEMV that writes them.
    const float* norm_weight = head < a.n_heads ? a.q_norm : a.k_norm;
    const bool norm_weight_vec4 = head < a.n_heads ? a.q_norm_vec4 : a.k_norm_vec4;
    float4 weight[kChunks];
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
        const int c = lane + k * 32;
        weight[k] = active && norm_weight != nullptr && c < a.head_dim / 4
                        ? load_chunk(norm_weight, c, a.head_dim, norm_weight_vec4)
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    // The positions are staged before the step's first kernel (no kernel of the stream writes
    // them), so the rotations are computed before the wait too, off the path from the GEMV that
    // writes the rows. The attention kernel after this one may launch from here on, as early as
    // before, to issue its loads of the older keys (attention_decode.cu).
    allow_downstream();
    const int last_token = (min(first_item + kWarpsPerBlock, a.items) - 1) / a.heads_per_token;
    const int entries = (last_token - first_token + 1) * a.rotary_pairs;
    for (int e = static_cast<int>(threadIdx.x); e < entries; e += 32 * kWarpsPerBlock) {
        const int t = e / a.rotary_pairs;
        const int j = e % a.rotary_pairs;
        float c, s;
        rope_cos_sin(a.positions[first_token + t], table.inv_freq[j], c, s);
        cos_sin[t][j] = make_float2(c, s);
    }
    __syncthreads();
    wait_for_upstream();
    if (!active) return;  // whole warps leave: the shuffles below always see 32 lanes
    const int64_t position = a.positions[token];
    const float2* token_cos_sin = cos_sin[token - first_token];
    float* staged = stage[warp];
    float4 raw[kChunks];

    if (head < a.n_heads) {
        float* q_row = a.q + (static_cast<int64_t>(token) * a.n_heads + head) * a.head_dim;
        const float inv_rms =
            load_row_inv_rms<32, kChunks>(q_row, a.head_dim, a.eps, true, lane, raw, nullptr);
        norm_rope_row(raw, inv_rms, weight, norm_weight != nullptr, token_cos_sin, a, staged, lane,
                      q_row, nullptr);
        return;
    }

    const int kv_head = head - a.n_heads;
    const int64_t row_offset = (static_cast<int64_t>(token) * a.n_kv_heads + kv_head) * a.head_dim;
    // kv_write_bf16: slot = positions[t] % capacity.
    const int64_t cache_offset = ((position % a.capacity) * a.n_kv_heads + kv_head) * a.head_dim;
    // Without a cache (a TQ4 layer, whose write follows: kv_cache_tq4.h) only the rows change.
    uint16_t* k_cache_row = a.k_cache != nullptr ? a.k_cache + cache_offset : nullptr;
    uint16_t* v_cache_row = a.v_cache != nullptr ? a.v_cache + cache_offset : nullptr;
    float* k_row = a.k + row_offset;
    float* v_row = a.v + row_offset;
    const int chunks = a.head_dim / 4;
    const float k_inv_rms =
        load_row_inv_rms<32, kChunks>(k_row, a.head_dim, a.eps, true, lane, raw, nullptr);

    // V first, while raw k is still in registers: rms_norm(v, no weight) is x * inv_rms of the
    // same row sum as k's norm when v is the raw k.
    if (a.v_from_raw_k) {
#pragma unroll
        for (int k = 0; k < kChunks; ++k) {
            const int c = lane + k * 32;
            if (c >= chunks) break;
            const float4 y = a.v_norm
                                 ? normalise_chunk(raw[k], k_inv_rms, nullptr, c, a.head_dim, true)
                                 : raw[k];
            store_output_chunk(v_row, v_cache_row, c, y);
        }
    } else {
        float4 v_raw[kChunks];
        const float v_inv_rms =
            load_row_inv_rms<32, kChunks>(v_row, a.head_dim, a.eps, true, lane, v_raw, nullptr);
#pragma unroll
        for (int k = 0; k < kChunks; ++k) {
            const int c = lane + k * 32;
            if (c >= chunks) break;
            if (a.v_norm) {
                store_output_chunk(
                    v_row, v_cache_row, c,
                    normalise_chunk(v_raw[k], v_inv_rms, nullptr, c, a.head_dim, true));
            } else if (v_cache_row != nullptr) {  // v stays as it is; only its cache row is written
                const float4 y = v_raw[k];
                reinterpret_cast<uint2*>(v_cache_row)[c] =
                    make_uint2(bf16_bits(y.x) | (bf16_bits(y.y) << 16),
                               bf16_bits(y.z) | (bf16_bits(y.w) << 16));
            }
        }
    }
    norm_rope_row(raw, k_inv_rms, weight, norm_weight != nullptr, token_cos_sin, a, staged, lane,
                  k_row, k_cache_row);
}

bool aligned16(const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

Status attention_inputs(const AttentionInputs& inputs, const int64_t* positions, int64_t n_tokens,
                        const KvCacheBf16View& cache, cudaStream_t stream) {
    const int64_t hd = inputs.head_dim;
    const int64_t heads_per_token = inputs.n_heads + inputs.n_kv_heads;
    const int64_t partial = inputs.partial_rotary_dim;
    if (partial < 0 || partial > hd || partial % 2 != 0) {
        return Status(StatusCode::kInvalidArgument,
                      "attention_inputs: partial_rotary_dim " + std::to_string(partial) +
                          " must be even and in [0, head_dim " + std::to_string(hd) + "]");
    }
    // head_norm_rope's pairs (j, j + head_dim / 2), inv_freq over head_dim, or
    // rope_neox_partial's (j, j + rotary_dim / 2), j < rotary_dim / 2, inv_freq over rotary_dim.
    const int64_t rotary_pairs = partial > 0 ? partial / 2 : inputs.rotary_pairs;
    const int64_t pair_distance = partial > 0 ? partial / 2 : hd / 2;
    const int64_t frequency_dim = partial > 0 ? partial : hd;
    if (n_tokens < 1 || inputs.n_heads < 1 || inputs.n_kv_heads < 1 || hd < 16 || hd % 16 != 0 ||
        hd > kMaxAttentionInputsHeadDim || rotary_pairs < 0 || rotary_pairs > hd / 2 ||
        rotary_pairs > kMaxRopePairs || n_tokens * heads_per_token > (int64_t{1} << 31) - 1) {
        return Status(
            StatusCode::kInvalidArgument,
            "attention_inputs: " + std::to_string(n_tokens) + " tokens of " +
                std::to_string(inputs.n_heads) + " q / " + std::to_string(inputs.n_kv_heads) +
                " kv heads x " + std::to_string(hd) + " with " + std::to_string(rotary_pairs) +
                " rotating pairs: head_dim must be a multiple of 16 in [16, " +
                std::to_string(kMaxAttentionInputsHeadDim) + "], rotating pairs <= head_dim / 2");
    }
    const bool write_cache = cache.k != nullptr || cache.v != nullptr;
    if (write_cache &&
        (cache.capacity < 1 || cache.capacity >= (int64_t{1} << 31) || n_tokens > cache.capacity ||
         cache.n_kv_heads != inputs.n_kv_heads || cache.head_dim != hd || cache.v_head_dim != hd)) {
        return Status(StatusCode::kInvalidArgument,
                      "attention_inputs: cache of capacity " + std::to_string(cache.capacity) +
                          ", " + std::to_string(cache.n_kv_heads) + " kv heads x " +
                          std::to_string(cache.head_dim) + " / " +
                          std::to_string(cache.v_head_dim) + " does not fit " +
                          std::to_string(n_tokens) + " tokens of " +
                          std::to_string(inputs.n_kv_heads) + " kv heads x " + std::to_string(hd));
    }
    if (positions == nullptr || inputs.q == nullptr || inputs.k == nullptr || inputs.v == nullptr ||
        (write_cache && (cache.k == nullptr || cache.v == nullptr)) || !aligned16(inputs.q) ||
        !aligned16(inputs.k) || !aligned16(inputs.v) || !aligned16(cache.k) ||
        !aligned16(cache.v)) {
        return Status(StatusCode::kInvalidArgument,
                      "attention_inputs: null pointer, or q / k / v / cache not 16-byte aligned");
    }
    KernelArgs args{};
    args.q = inputs.q;
    args.k = inputs.k;
    args.v = inputs.v;
    args.q_norm = inputs.q_norm;
    args.k_norm = inputs.k_norm;
    args.positions = positions;
    args.k_cache = cache.k;
    args.v_cache = cache.v;
    args.items = static_cast<int>(n_tokens * heads_per_token);
    args.heads_per_token = static_cast<int>(heads_per_token);
    args.n_heads = static_cast<int>(inputs.n_heads);
    args.n_kv_heads = static_cast<int>(inputs.n_kv_heads);
    args.head_dim = static_cast<int>(hd);
    args.rotary_pairs = static_cast<int>(rotary_pairs);
    args.pair_distance = static_cast<int>(pair_distance);
    args.capacity = write_cache ? static_cast<int>(cache.capacity) : 1;
    args.eps = inputs.eps;
    args.v_from_raw_k = inputs.v_from_raw_k;
    args.v_norm = inputs.v_norm;
    args.q_norm_vec4 = aligned16(inputs.q_norm);
    args.k_norm_vec4 = aligned16(inputs.k_norm);
    // head_norm_rope's (rope_neox_partial's) table: inv_freq[j] = theta^(-2j / frequency_dim) in
    // fp32 on the host.
    const RopeTable table = make_rope_table(rotary_pairs, frequency_dim, inputs.theta);
    const int64_t blocks = (n_tokens * heads_per_token + kWarpsPerBlock - 1) / kWarpsPerBlock;
    const auto kernel = hd <= 32 * 2 * 4   ? attention_inputs_kernel<2>
                        : hd <= 32 * 4 * 4 ? attention_inputs_kernel<4>
                                           : attention_inputs_kernel<kNormChunks>;
    KESTREL_CUDA_CHECK(launch_overlapped(kernel, dim3(static_cast<unsigned>(blocks)),
                                         dim3(32 * kWarpsPerBlock), 0, stream, args, table));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

std::vector<float> rope_inv_freq(int64_t n_pairs, int64_t frequency_dim, double theta) {
    std::vector<float> inv_freq(static_cast<size_t>(std::max<int64_t>(n_pairs, 0)));
    for (size_t j = 0; j < inv_freq.size(); ++j) {
        inv_freq[j] = rope_inv_freq_of_pair(static_cast<int64_t>(j), frequency_dim, theta);
    }
    return inv_freq;
}

}  // namespace kestrel::cuda
