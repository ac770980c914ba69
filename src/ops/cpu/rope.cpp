// Rotary position embedding, NeoX (rotate-half) layout.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

// HF `apply_rotary_pos_emb`: out = x * cos + rotate_half(x) * sin, rotate_half(x) =
// cat(-x[D/2:], x[:D/2]), emb = cat(freqs, freqs), freqs = pos * inv_freq,
// inv_freq[j] = 1 / theta^(2j / D). Computed in fp32 as HF does (`_compute_default_rope_parameters`
// and the fp32 `inv_freq @ position_ids`), so long positions round the angle the same way.
void rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim, double theta) {
    const int64_t half = head_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(half));
    for (int64_t j = 0; j < half; ++j) {
        const float exponent = static_cast<float>(2 * j) / static_cast<float>(head_dim);
        inv_freq[j] = 1.0f / std::pow(static_cast<float>(theta), exponent);
    }
    std::vector<float> cos_table(static_cast<size_t>(half)), sin_table(static_cast<size_t>(half));
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

}  // namespace kestrel::cpu
