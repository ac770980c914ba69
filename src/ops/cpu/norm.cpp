// RMSNorm.
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

// HF Gemma3RMSNorm in fp32: x * rsqrt(mean(x^2) + eps) * weight. Gemma 3 multiplies by (1 + w);
// GGUF files already store 1 + w, so the caller passes the stored tensor as `weight`.
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * dim;
        float* yr = out + r * dim;
        const float mean_square = dot(xr, xr, dim) / static_cast<float>(dim);
        const float inv_rms = 1.0f / std::sqrt(mean_square + eps);
        if (weight != nullptr) {
            for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] * inv_rms) * weight[i];
        } else {
            for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv_rms;
        }
    }
}

}  // namespace kestrel::cpu
