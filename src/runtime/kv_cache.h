// The KV cache of one session: per layer, a flat cache for full-attention layers (one slot per
// position up to the context) and a ring for sliding layers (DESIGN.md "Batches and sessions").
// With KvCacheFormat::kTq4 the full-attention layers hold TQ4 vectors (ops/kv_tq4.h): indices,
// norms and the rotation their views point at, all owned here.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kestrel/status.h"
#include "models/model.h"
#include "ops/ops.h"
#include "runtime/kv_cache_format.h"

namespace kestrel {

// Tokens a sliding layer writes to its ring and attends with in one step, at most. A prefill
// chunk longer than this takes its sliding layers' attention in steps (the model's forward,
// KvLayerView::step_tokens), so the rings need not grow with the chunk: Gemma 4 31B's 50 rings
// of window 1024 hold 1535 entries (1.17 GiB) at every chunk, where a 1024-token chunk's whole
// width would need 2047 (1.56 GiB) and crowd a 128k context out of 24 GB.
inline constexpr int64_t kSlidingAttentionStep = 512;

class KvCache {
public:
    // A sliding layer's ring holds window + min(prefill_chunk, sliding_step) - 1 entries (capped
    // by the context): a step's first query still sees window - 1 earlier keys while the step
    // writes its own keys (spec §10.6).
    static int64_t ring_capacity(int64_t window, int64_t context, int64_t prefill_chunk,
                                 int64_t sliding_step = kSlidingAttentionStep);

    // In `ops`'s memory: every layer in its native KV dtype, or with kTq4 the full-attention
    // layers in TQ4. kTq4 is refused (kUnsupported) on a backend without TQ4 attention, and
    // (kInvalidArgument) for a full layer whose head_dim and v_head_dim differ or are odd; a
    // model without full-attention layers keeps its cache as it is (said once in the log).
    // sliding_step: see kSlidingAttentionStep (tests take smaller ones to reach the steps with
    // short prompts).
    static Result<KvCache> create(std::span<const KvLayerSpec> layout, int64_t context,
                                  int64_t prefill_chunk, Ops& ops,
                                  KvCacheFormat format = KvCacheFormat::kNative,
                                  int64_t sliding_step = kSlidingAttentionStep);

    // One view per layer, valid while the cache lives (moving it keeps the storage).
    std::span<const KvLayerView> views() const { return views_; }
    int64_t capacity(int64_t layer) const { return views_[layer].capacity; }
    // Every byte the cache holds: K and V, and for TQ4 layers the norms and rotations.
    int64_t bytes() const;

private:
    struct Rotation {
        int64_t head_dim = 0;
        Buffer matrix;  // [head_dim, head_dim] fp32 = tq4_rotation(head_dim)
    };
    // The rotation for head_dim, uploaded the first time a layer needs it.
    Result<const float*> rotation(int64_t head_dim, Ops& ops);

    std::vector<Buffer> k_,
        v_;  // per layer: [capacity, n_kv_heads, head_dim] (TQ4: head_dim / 2 bytes)
    std::vector<Buffer> k_norm_,
        v_norm_;  // per TQ4 layer: [capacity, n_kv_heads] bf16; empty elsewhere
    std::vector<Buffer> k_center_;  // per TQ4 layer: [n_kv_heads, head_dim] fp32; empty elsewhere
    std::vector<Rotation> rotations_;  // one per distinct TQ4 head_dim
    std::vector<KvLayerView> views_;
};

}  // namespace kestrel
