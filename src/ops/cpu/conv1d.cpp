// Causal depthwise conv1d with a carried state (Qwen3.5 Gated DeltaNet, kernel 4).
#include <algorithm>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

// HF causal_conv1d_update / causal_conv1d_fn (F.conv1d, groups = channels, no bias, then SiLU):
// output t of channel c is sum_j w[c, j] * in[t - K + 1 + j, c], where in[< 0] is the carried
// state (zeros for a fresh sequence). Summed in j order in fp32, so a token's output is the same
// whether it runs in a prompt chunk or alone.
void conv1d_causal(const float* x, int64_t rows, const float* weight, const RecurrentLayerView& state, bool silu_act,
                   float* out) {
    const int64_t kernel = state.conv_kernel;
    const int64_t channels = state.conv_channels;
    const int64_t past = kernel - 1;
    // window = [state (K - 1 rows) | x (T rows)], [K - 1 + T, C]
    std::vector<float> window(static_cast<size_t>((past + rows) * channels));
    std::copy(state.conv, state.conv + past * channels, window.begin());
    std::copy(x, x + rows * channels, window.begin() + past * channels);
    for (int64_t t = 0; t < rows; ++t) {
        for (int64_t c = 0; c < channels; ++c) {
            float acc = 0.0f;
            for (int64_t j = 0; j < kernel; ++j) acc += weight[c * kernel + j] * window[(t + j) * channels + c];
            out[t * channels + c] = silu_act ? silu(acc) : acc;
        }
    }
    // The new state: the last K - 1 raw inputs.
    std::copy(window.end() - past * channels, window.end(), state.conv);
}

}  // namespace kestrel::cpu
