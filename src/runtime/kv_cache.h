// The KV cache of one session: per layer, a flat cache for full-attention layers (one slot per
// position up to the context) and a ring for sliding layers (DESIGN.md "Batches and sessions").
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kestrel/status.h"
#include "models/model.h"
#include "ops/ops.h"

namespace kestrel {

class KvCache {
public:
    // A sliding layer's ring holds window + prefill_chunk - 1 entries (capped by the context):
    // a chunk's first query still sees window - 1 earlier keys while the chunk writes its own
    // prefill_chunk keys (spec §10.6).
    static int64_t ring_capacity(int64_t window, int64_t context, int64_t prefill_chunk);

    // In `ops`'s memory, in its KV dtype.
    static Result<KvCache> create(std::span<const KvLayerSpec> layout, int64_t context, int64_t prefill_chunk,
                                  Ops& ops);

    // One view per layer, valid while the cache lives (moving it keeps the storage).
    std::span<const KvLayerView> views() const { return views_; }
    int64_t capacity(int64_t layer) const { return views_[layer].capacity; }
    int64_t bytes() const;

private:
    std::vector<Buffer> k_, v_;  // per layer: [capacity, n_kv_heads, head_dim]
    std::vector<KvLayerView> views_;
};

}  // namespace kestrel
