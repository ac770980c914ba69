#include "runtime/kv_cache.h"

#include <algorithm>

#include <fmt/format.h>

namespace kestrel {

int64_t KvCache::ring_capacity(int64_t window, int64_t context, int64_t prefill_chunk) {
    return std::min(context, window + prefill_chunk - 1);
}

Result<KvCache> KvCache::create(std::span<const KvLayerSpec> layout, int64_t context, int64_t prefill_chunk) {
    if (context <= 0 || prefill_chunk <= 0) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("KV cache: context {} and prefill chunk {} must be positive", context, prefill_chunk));
    }
    KvCache cache;
    for (const KvLayerSpec& spec : layout) {
        const int64_t capacity = spec.window > 0 ? ring_capacity(spec.window, context, prefill_chunk) : context;
        cache.k_.emplace_back(static_cast<size_t>(capacity * spec.n_kv_heads * spec.head_dim));
        cache.v_.emplace_back(static_cast<size_t>(capacity * spec.n_kv_heads * spec.v_head_dim));
        cache.views_.push_back(KvLayerView{cache.k_.back().data(), cache.v_.back().data(), capacity,
                                           spec.n_kv_heads, spec.head_dim, spec.v_head_dim});
    }
    return cache;
}

int64_t KvCache::bytes() const {
    int64_t total = 0;
    for (size_t i = 0; i < k_.size(); ++i) total += static_cast<int64_t>((k_[i].size() + v_[i].size()) * sizeof(float));
    return total;
}

}  // namespace kestrel
