// Qwen3.5's small ops: SwiGLU, sigmoid gates, L2 norm, gated RMSNorm (partial RoPE is in rope.cpp).
// Formulas from transformers' modeling_qwen3_5_moe.py (5.x), computed in fp32 as there.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

float silu(float x) { return x / (1.0f + std::exp(-x)); }

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// torch.nn.functional.softplus(x, beta=1, threshold=20).
float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// HF Qwen3_5MoeMLP / experts: act_fn(gate) * up with act_fn = silu.
void silu_and_mul(const float* gate, const float* up, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = silu(gate[i]) * up[i];
}

// HF Qwen3_5MoeAttention: attn_output * torch.sigmoid(gate).
void sigmoid_mul(const float* x, const float* gate, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * sigmoid(gate[i]);
}

// HF Qwen3_5MoeSparseMoeBlock: expert_output + sigmoid(shared_expert_gate(x)) * shared_expert_output.
void add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim, float* out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float s = sigmoid(gate[r]);
        for (int64_t i = 0; i < dim; ++i) out[r * dim + i] += s * x[r * dim + i];
    }
}

// HF l2norm (aligned with FLA): x * rsqrt(sum(x^2) + eps).
void l2_norm(const float* x, int64_t rows, int64_t dim, float eps, float* out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * dim;
        const float inv = 1.0f / std::sqrt(dot(xr, xr, dim) + eps);
        for (int64_t i = 0; i < dim; ++i) out[r * dim + i] = xr[i] * inv;
    }
}

// HF Qwen3_5MoeRMSNormGated: weight * (x * rsqrt(mean(x^2) + eps)) * silu(z); the weight is
// plain (initialised to 1), unlike the model's other (1 + w) norms.
void rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows, int64_t dim, float eps,
                    float* out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * dim;
        const float* zr = z + r * dim;
        const float inv_rms = 1.0f / std::sqrt(dot(xr, xr, dim) / static_cast<float>(dim) + eps);
        for (int64_t i = 0; i < dim; ++i) out[r * dim + i] = (weight[i] * (xr[i] * inv_rms)) * silu(zr[i]);
    }
}

}  // namespace kestrel::cpu
