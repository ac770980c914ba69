// Qwen3.5's small ops: SwiGLU, sigmoid gates, partial RoPE, L2 norm, gated RMSNorm.
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

// HF apply_rotary_pos_emb with partial_rotary_factor: the first rotary_dim values of a head are
// rotated in rotate-half layout, inv_freq[j] = 1 / theta^(2j / rotary_dim) (fp32, as
// compute_default_rope_parameters). Qwen3.5's interleaved M-RoPE sections select, per frequency,
// the t, h or w position; for text all three are the token position, so it is this.
void rope_neox_partial(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       int64_t rotary_dim, double theta) {
    const int64_t half = rotary_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(half)), cos_table(inv_freq.size()), sin_table(inv_freq.size());
    for (int64_t j = 0; j < half; ++j) {
        const float exponent = static_cast<float>(2 * j) / static_cast<float>(rotary_dim);
        inv_freq[j] = 1.0f / std::pow(static_cast<float>(theta), exponent);
    }
    for (size_t t = 0; t < positions.size(); ++t) {
        for (int64_t j = 0; j < half; ++j) {
            const float angle = static_cast<float>(positions[t]) * inv_freq[j];
            cos_table[j] = static_cast<float>(std::cos(static_cast<double>(angle)));
            sin_table[j] = static_cast<float>(std::sin(static_cast<double>(angle)));
        }
        for (int64_t h = 0; h < n_heads; ++h) {
            float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
            for (int64_t j = 0; j < half; ++j) {
                const float a = v[j];
                const float b = v[j + half];
                v[j] = a * cos_table[j] - b * sin_table[j];
                v[j + half] = b * cos_table[j] + a * sin_table[j];
            }
        }
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
