// Rotary position embedding in the NeoX (rotate-half) layout, and the two partial forms our
// models use. All three are one rotation: pairs (j, j + pair_distance) for j < n_pairs turn by
// position * inv_freq[j], inv_freq[j] = 1 / theta^(2j / frequency_dim), every other value stays.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {
namespace {

// fp32 as HF computes it (`_compute_default_rope_parameters` and the fp32 `inv_freq @
// position_ids`), so long positions round the angle the same way.
void rotate_half_pairs(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       int64_t pair_distance, int64_t n_pairs, int64_t frequency_dim, double theta) {
    std::vector<float> inv_freq(static_cast<size_t>(n_pairs)), cos_table(inv_freq.size()), sin_table(inv_freq.size());
    for (int64_t j = 0; j < n_pairs; ++j) {
        const float exponent = static_cast<float>(2 * j) / static_cast<float>(frequency_dim);
        inv_freq[j] = 1.0f / std::pow(static_cast<float>(theta), exponent);
    }
    for (size_t t = 0; t < positions.size(); ++t) {
        for (int64_t j = 0; j < n_pairs; ++j) {
            const float angle = static_cast<float>(positions[t]) * inv_freq[j];
            cos_table[j] = static_cast<float>(std::cos(static_cast<double>(angle)));
            sin_table[j] = static_cast<float>(std::sin(static_cast<double>(angle)));
        }
        for (int64_t h = 0; h < n_heads; ++h) {
            float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
            for (int64_t j = 0; j < n_pairs; ++j) {
                const float a = v[j];
                const float b = v[j + pair_distance];
                v[j] = a * cos_table[j] - b * sin_table[j];
                v[j + pair_distance] = b * cos_table[j] + a * sin_table[j];
            }
        }
    }
}

}  // namespace

// HF `apply_rotary_pos_emb`: out = x * cos + rotate_half(x) * sin, rotate_half(x) =
// cat(-x[D/2:], x[:D/2]), emb = cat(freqs, freqs), freqs = pos * inv_freq,
// inv_freq[j] = 1 / theta^(2j / D).
void rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim, double theta) {
    rotate_half_pairs(x, positions, n_heads, head_dim, head_dim / 2, head_dim / 2, head_dim, theta);
}

// HF apply_rotary_pos_emb with partial_rotary_factor (Qwen3.5): the first rotary_dim values of a
// head rotate in rotate-half layout, inv_freq[j] = 1 / theta^(2j / rotary_dim). Qwen3.5's
// interleaved M-RoPE sections pick the t, h or w position per frequency; for text all three are
// the token position, so it is this.
void rope_neox_partial(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       int64_t rotary_dim, double theta) {
    rotate_half_pairs(x, positions, n_heads, head_dim, rotary_dim / 2, rotary_dim / 2, rotary_dim, theta);
}

// HF `_compute_proportional_rope_parameters` (Gemma 4 full layers): rope_angles =
// int(partial_rotary_factor * head_dim // 2); inv_freq[j] = 1 / theta^(2j / head_dim) for
// j < rope_angles, zeros after. With emb = cat(freqs, freqs), pairs (j, j + D/2) with
// j < rope_angles rotate and the others get cos 1, sin 0. Gemma 4 31B: D = 512, 64 pairs -> dims
// [0, 64) and [256, 320) rotate (spec §2.2); llama.cpp gets the same with rope_freqs = [1] * 64 +
// [1e30] * 192 as frequency factors.
void rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       int64_t rotary_pairs, double theta) {
    rotate_half_pairs(x, positions, n_heads, head_dim, head_dim / 2, std::min(rotary_pairs, head_dim / 2), head_dim,
                      theta);
}

}  // namespace kestrel::cpu
