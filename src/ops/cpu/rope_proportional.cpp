// Proportional RoPE (Gemma 4 full-attention layers).
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

// HF `_compute_proportional_rope_parameters` (modeling_rope_utils.py): rope_angles =
// int(partial_rotary_factor * head_dim // 2); inv_freq[j] = 1 / theta^(2j / head_dim) for
// j < rope_angles, then head_dim / 2 - rope_angles zeros. With emb = cat(freqs, freqs) and
// rotate_half, pairs (j, j + D/2) with j < rope_angles rotate and the others get cos 1, sin 0.
// Gemma 4 31B: D = 512, 64 pairs -> dims [0, 64) and [256, 320) rotate (spec §2.2).
// llama.cpp gets the same with rope_freqs = [1] * 64 + [1e30] * 192 as frequency factors.
// fp32 as rope_neox (rope.cpp), so the rotated pairs match it bit for bit.
void rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       int64_t rotary_pairs, double theta) {
    const int64_t half = head_dim / 2;
    const int64_t pairs = std::min(rotary_pairs, half);
    std::vector<float> inv_freq(static_cast<size_t>(pairs));
    for (int64_t j = 0; j < pairs; ++j) {
        const float exponent = static_cast<float>(2 * j) / static_cast<float>(head_dim);
        inv_freq[j] = 1.0f / std::pow(static_cast<float>(theta), exponent);
    }
    std::vector<float> cos_table(static_cast<size_t>(pairs)), sin_table(static_cast<size_t>(pairs));
    for (size_t t = 0; t < positions.size(); ++t) {
        for (int64_t j = 0; j < pairs; ++j) {
            const float angle = static_cast<float>(positions[t]) * inv_freq[j];
            cos_table[j] = static_cast<float>(std::cos(static_cast<double>(angle)));
            sin_table[j] = static_cast<float>(std::sin(static_cast<double>(angle)));
        }
        for (int64_t h = 0; h < n_heads; ++h) {
            float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
            for (int64_t j = 0; j < pairs; ++j) {
                const float a = v[j];
                const float b = v[j + half];
                v[j] = a * cos_table[j] - b * sin_table[j];
                v[j + half] = b * cos_table[j] + a * sin_table[j];
            }
        }
    }
}

void CpuOps::rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                               int64_t rotary_pairs, double theta) {
    cpu::rope_proportional(x, positions, n_heads, head_dim, rotary_pairs, theta);
}

}  // namespace kestrel::cpu
