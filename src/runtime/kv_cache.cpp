#include "runtime/kv_cache.h"

#include <algorithm>

#include <fmt/format.h>

namespace kestrel {

int64_t KvCache::ring_capacity(int64_t window, int64_t context, int64_t prefill_chunk) {
    return std::min(context, window + prefill_chunk - 1);
}

Result<KvCache> KvCache::create(std::span<const KvLayerSpec> layout, int64_t context, int64_t prefill_chunk,
                                Ops& ops) {
    if (context <= 0 || prefill_chunk <= 0) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("KV cache: context {} and prefill chunk {} must be positive", context, prefill_chunk));
    }
    KvCache cache;
    const KvDtype dtype = ops.kv_dtype();
    const size_t element = dtype == KvDtype::kBF16 ? 2 : 4;
    for (const KvLayerSpec& spec : layout) {
        const int64_t capacity = spec.window > 0 ? ring_capacity(spec.window, context, prefill_chunk) : context;
        // Layers without attention (Gated DeltaNet) get empty views.
        const size_t k_bytes = static_cast<size_t>(capacity * spec.n_kv_heads * spec.head_dim) * element;
        const size_t v_bytes = static_cast<size_t>(capacity * spec.n_kv_heads * spec.v_head_dim) * element;
        Buffer k, v;
        if (k_bytes > 0) {
            KESTREL_ASSIGN_OR_RETURN(k, ops.allocate(k_bytes));
            KESTREL_ASSIGN_OR_RETURN(v, ops.allocate(v_bytes));
        }
        cache.views_.push_back(KvLayerView{k.data(), v.data(), capacity, spec.n_kv_heads, spec.head_dim,
                                           spec.v_head_dim, dtype});
        cache.k_.push_back(std::move(k));
        cache.v_.push_back(std::move(v));
    }
    return cache;
}

int64_t KvCache::bytes() const {
    int64_t total = 0;
    for (size_t i = 0; i < k_.size(); ++i) total += static_cast<int64_t>(k_[i].bytes() + v_[i].bytes());
    return total;
}

}  // namespace kestrel
