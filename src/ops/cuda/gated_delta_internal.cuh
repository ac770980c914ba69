// Shared by gated_delta.cu (the recurrent kernels, the argument checks and the dispatch) and
// gated_delta_chunked.cu (the chunked form): the kernels' argument block, the gates' device
// functions and the chunked path's launcher. Internal: include only from those two files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kestrel::cuda {

constexpr unsigned kGdnFullMask = 0xffffffffu;
constexpr float kGdnL2Eps = 1e-6f;  // HF l2norm's eps

// One gated_delta_rule call, checked on the host (gated_delta.cu).
struct GdnArgs {
    const float* qkv;
    const float* a;
    const float* b;
    const float* a_neg;
    const float* dt_bias;
    float* state;
    float* out;
    int64_t rows;
    int n_k_heads;
    int n_v_heads;
    int dk;
    int dv;
    bool grouped;   // GdnHeadOrder::kGrouped: value head h reads key head h / (n_v / n_k)
    float q_scale;  // dk^-0.5, computed on the host as the CPU computes it
};

// ops/cpu/qwen35_elementwise.cpp's sigmoid and softplus, with the same fp32 operations. CUDA's
// expf (2 ulp) and log1pf (1 ulp) may differ from glibc's in the last bits.
__device__ __forceinline__ float gdn_sigmoid(float x) {
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
}

// torch.nn.functional.softplus(x, beta=1, threshold=20).
__device__ __forceinline__ float gdn_softplus(float x) {
    return x > 20.0f ? x : log1pf(expf(x));
}

// The value head h's key head (GdnHeadOrder).
__device__ __forceinline__ int gdn_key_head(const GdnArgs& p, int h) {
    return p.grouped ? h / (p.n_v_heads / p.n_k_heads) : h % p.n_k_heads;
}

// The chunked form (gated_delta_chunked.cu) over args.rows >= 1 tokens, with
// gated_delta_chunked_scratch_bytes(rows, n_v_heads) bytes of scratch (16-byte aligned). Returns
// the first CUDA error of its attribute calls and launches.
cudaError_t launch_gated_delta_chunked(const GdnArgs& args, void* scratch, cudaStream_t stream);

}  // namespace kestrel::cuda
