// Elementwise ops: activations, residual adds, scaling, softcap.
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

// HF `gelu_pytorch_tanh`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
float gelu_tanh(float x) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    constexpr float kCoeff = 0.044715f;
    return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + kCoeff * x * x * x)));
}

// Gated MLP: gelu_tanh(gate) * up (Gemma 3 `down(act(gate(x)) * up(x))`).
void gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = gelu_tanh(gate[i]) * up[i];
}

void add(const float* a, const float* b, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void scale(float* x, int64_t n, float s) {
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

// cap * tanh(x / cap) (Gemma 2/4 final_logit_softcapping).
void softcap(float* x, int64_t n, float cap) {
    for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

}  // namespace kestrel::cpu
