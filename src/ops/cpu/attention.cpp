// Causal / sliding-window softmax attention over a KV cache (flat or ring), with GQA. A TQ4 cache
// goes to attention_tq4.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/parallel.h"

namespace kestrel::cpu {

int64_t first_visible_position(int64_t position, int64_t window) {
    // HF sliding mask (and llama.cpp LLAMA_SWA_TYPE_STANDARD): key k is visible from query q
    // when k <= q and q - k < window, i.e. the window counts the query itself.
    return window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
}

void kv_write(const KvLayerView& cache, std::span<const int64_t> positions, const float* k,
              const float* v, int threads) {
    if (cache.dtype == KvDtype::kTq4) {
        kv_write_tq4(cache, positions, k, v, threads);
        return;
    }
    const int64_t k_row = cache.n_kv_heads * cache.head_dim;
    const int64_t v_row = cache.n_kv_heads * cache.v_head_dim;
    for (size_t t = 0; t < positions.size(); ++t) {
        const int64_t slot = positions[t] % cache.capacity;
        std::memcpy(static_cast<float*>(cache.k) + slot * k_row, k + static_cast<int64_t>(t) * k_row, sizeof(float) * k_row);
        std::memcpy(static_cast<float*>(cache.v) + slot * v_row, v + static_cast<int64_t>(t) * v_row, sizeof(float) * v_row);
    }
}

void softmax(float* x, int64_t n) {
    float max_value = x[0];
    for (int64_t i = 1; i < n; ++i) max_value = std::max(max_value, x[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = std::exp(x[i] - max_value);
        sum += x[i];
    }
    const float inv_sum = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) x[i] *= inv_sum;
}

// out = softmax(scale * q · K^T over the visible keys) · V, one (query, head) pair at a time.
// HF eager attention: scores in fp32, softmax in fp32, then the weighted sum of V in order.
namespace {

// One (query, head): scores against the visible keys, softmax, weighted sum of V.
KESTREL_HOT_LOOP void attend_one(const float* qh, int64_t pos, int64_t kv_head, const KvLayerView& cache,
                                 const AttentionParams& params, std::vector<float>& scores, float* oh) {
    const int64_t d = cache.head_dim;
    const int64_t dv = cache.v_head_dim;
    const int64_t k_row = cache.n_kv_heads * d;
    const int64_t v_row = cache.n_kv_heads * dv;
    const int64_t first = first_visible_position(pos, params.window);
    const int64_t n_keys = pos - first + 1;
    scores.resize(static_cast<size_t>(n_keys));
    for (int64_t j = 0; j < n_keys; ++j) {
        const int64_t slot = (first + j) % cache.capacity;
        float s = dot(qh, static_cast<const float*>(cache.k) + slot * k_row + kv_head * d, d) * params.scale;
        if (params.softcap > 0.0f) s = params.softcap * std::tanh(s / params.softcap);
        scores[j] = s;
    }
    softmax(scores.data(), n_keys);
    std::fill(oh, oh + dv, 0.0f);
    for (int64_t j = 0; j < n_keys; ++j) {
        const int64_t slot = (first + j) % cache.capacity;
        const float* vj = static_cast<const float*>(cache.v) + slot * v_row + kv_head * dv;
        const float p = scores[j];
        for (int64_t i = 0; i < dv; ++i) oh[i] += p * vj[i];
    }
}

}  // namespace

void attention(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
               const AttentionParams& params, float* out, int threads) {
    if (cache.dtype == KvDtype::kTq4) {
        attention_tq4(q, positions, cache, params, out, threads);
        return;
    }
    const int64_t n_tokens = static_cast<int64_t>(positions.size());
    const int64_t n_heads = params.n_heads;
    const int64_t group = n_heads / cache.n_kv_heads;  // query heads per kv head
    const int64_t d = cache.head_dim;
    const int64_t dv = cache.v_head_dim;
    // Work per (query, head): at most every key up to the last position, times d + dv.
    const int64_t max_keys = positions.empty() ? 0 : positions.back() + 1;
    const int64_t keys = params.window > 0 ? std::min(max_keys, params.window) : max_keys;
    const int64_t cost = keys * (d + dv);
    parallel_for(n_tokens * n_heads, threads, cost, [&](int64_t begin, int64_t end) {
        std::vector<float> scores;
        for (int64_t item = begin; item < end; ++item) {
            const int64_t t = item / n_heads;
            const int64_t h = item % n_heads;
            attend_one(q + (t * n_heads + h) * d, positions[t], h / group, cache, params, scores,
                       out + (t * n_heads + h) * dv);
        }
    });
}

}  // namespace kestrel::cpu
