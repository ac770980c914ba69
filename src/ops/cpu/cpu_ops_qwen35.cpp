// CpuOps: the Qwen3.5 ops of the Ops interface over their reference kernels.
#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

void CpuOps::silu_and_mul(const float* gate, const float* up, int64_t n, float* out) {
    cpu::silu_and_mul(gate, up, n, out);
}

void CpuOps::sigmoid_mul(const float* x, const float* gate, int64_t n, float* out) { cpu::sigmoid_mul(x, gate, n, out); }

void CpuOps::add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim, float* out) {
    cpu::add_sigmoid_scaled(x, gate, rows, dim, out);
}

void CpuOps::rope_neox_partial(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                               int64_t rotary_dim, double theta) {
    cpu::rope_neox_partial(x, positions, n_heads, head_dim, rotary_dim, theta);
}

void CpuOps::rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows, int64_t dim, float eps,
                            float* out) {
    cpu::rms_norm_gated(x, z, weight, rows, dim, eps, out);
}

void CpuOps::conv1d_causal(const float* x, int64_t rows, const float* weight, const RecurrentLayerView& state,
                           bool silu, float* out) {
    cpu::conv1d_causal(x, rows, weight, state, silu, out);
}

void CpuOps::gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg,
                              const float* dt_bias, int64_t rows, const GatedDeltaParams& params,
                              const RecurrentLayerView& state, float* out) {
    cpu::gated_delta_rule(qkv, a, b, a_neg, dt_bias, rows, params, state, out, threads_);
}

void CpuOps::moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
                       const float* shared_gate, int32_t* ids, float* weights) {
    cpu::moe_route(logits, rows, n_experts, k, shared_gate, ids, weights);
}

void CpuOps::moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights, int64_t k,
                         const MoeExpertWeights& experts, float* out) {
    cpu::moe_experts(x, rows, ids, weights, k, experts, out, threads_);
}

}  // namespace kestrel::cpu
