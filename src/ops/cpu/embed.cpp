// Token embedding lookup.
#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

// Gemma: x = E[tok] * sqrt(d_model) (HF Gemma3TextScaledWordEmbedding); the caller passes the scale.
void embed(std::span<const int32_t> ids, const float* table, int64_t dim, float scale, float* out) {
    for (size_t t = 0; t < ids.size(); ++t) {
        const float* row = table + static_cast<int64_t>(ids[t]) * dim;
        float* dst = out + static_cast<int64_t>(t) * dim;
        for (int64_t i = 0; i < dim; ++i) dst[i] = row[i] * scale;
    }
}

}  // namespace kestrel::cpu
