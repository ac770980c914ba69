#include "runtime/kv_cache.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/log.h"
#include "ops/kv_tq4.h"

namespace kestrel {

namespace {

bool is_full_attention(const KvLayerSpec& spec) {
    return spec.window == 0 && spec.head_dim > 0;
}

size_t element_bytes(KvDtype dtype) {
    return dtype == KvDtype::kBF16 ? 2 : 4;
}

}  // namespace

int64_t KvCache::ring_capacity(int64_t window, int64_t context, int64_t prefill_chunk,
                               int64_t sliding_step) {
    return std::min(context, window + std::min(prefill_chunk, sliding_step) - 1);
}

Result<const float*> KvCache::rotation(int64_t head_dim, Ops& ops) {
    for (const Rotation& r : rotations_) {
        if (r.head_dim == head_dim) return static_cast<const float*>(r.matrix.data());
    }
    const std::vector<float> matrix = tq4_rotation(head_dim);
    const size_t bytes = matrix.size() * sizeof(float);
    Rotation r{head_dim, {}};
    KESTREL_ASSIGN_OR_RETURN(r.matrix, ops.allocate(bytes));
    KESTREL_RETURN_IF_ERROR(ops.copy_to_backend(r.matrix.data(), matrix.data(), bytes));
    rotations_.push_back(std::move(r));
    return static_cast<const float*>(rotations_.back().matrix.data());
}

Result<KvCache> KvCache::create(std::span<const KvLayerSpec> layout, int64_t context,
                                int64_t prefill_chunk, Ops& ops, KvCacheFormat format,
                                int64_t sliding_step) {
    if (context <= 0 || prefill_chunk <= 0 || sliding_step <= 0) {
        return Status(
            StatusCode::kInvalidArgument,
            fmt::format(
                "KV cache: context {}, prefill chunk {} and sliding step {} must be positive",
                context, prefill_chunk, sliding_step));
    }
    const int64_t n_full = std::count_if(layout.begin(), layout.end(), is_full_attention);
    const bool tq4 = format == KvCacheFormat::kTq4 && n_full > 0;
    if (format == KvCacheFormat::kTq4 && n_full == 0) {
        log_once(LogLevel::kInfo, "kv-cache-tq4-no-full-layers",
                 "--kv-cache tq4: the model has no full-attention layer (TQ4 applies only to "
                 "those), so the KV "
                 "cache is unchanged");
    }
    if (tq4 && !ops.supports_kv(KvDtype::kTq4)) {
        return Status(
            StatusCode::kUnsupported,
            fmt::format(
                "--kv-cache tq4: this backend ({}) has no TQ4 KV cache; use --kv-cache bf16",
                ops.name()));
    }
    KvCache cache;
    const KvDtype native = ops.kv_dtype();
    for (size_t il = 0; il < layout.size(); ++il) {
        const KvLayerSpec& spec = layout[il];
        const int64_t capacity =
            spec.window > 0 ? ring_capacity(spec.window, context, prefill_chunk, sliding_step)
                            : context;
        const bool layer_tq4 = tq4 && is_full_attention(spec);
        KvLayerView view{nullptr,
                         nullptr,
                         capacity,
                         spec.n_kv_heads,
                         spec.head_dim,
                         spec.v_head_dim,
                         layer_tq4 ? KvDtype::kTq4 : native};
        // A ring that wraps within a chunk: steps of the tokens whose writes keep every key a
        // query of the step needs (position p - window + 1 survives the writes up to
        // p + capacity - window).
        if (spec.window > 0 && capacity < context && capacity - spec.window + 1 < prefill_chunk) {
            view.step_tokens = capacity - spec.window + 1;
        }
        const auto entries = static_cast<size_t>(capacity * spec.n_kv_heads);
        Buffer k, v, k_norm, v_norm, k_center;
        if (layer_tq4) {
            // One rotation turns both K and V (gemma4-and-gemma3.md §4.1), so their dims must
            // agree.
            if (spec.head_dim != spec.v_head_dim || spec.head_dim % 2 != 0) {
                return Status(
                    StatusCode::kInvalidArgument,
                    fmt::format(
                        "--kv-cache tq4: layer {} has key head dim {} and value head dim {}; TQ4 "
                        "needs them equal and even",
                        il, spec.head_dim, spec.v_head_dim));
            }
            KESTREL_ASSIGN_OR_RETURN(
                k, ops.allocate(entries * static_cast<size_t>(spec.head_dim / 2)));
            KESTREL_ASSIGN_OR_RETURN(
                v, ops.allocate(entries * static_cast<size_t>(spec.head_dim / 2)));
            KESTREL_ASSIGN_OR_RETURN(k_norm, ops.allocate(entries * sizeof(uint16_t)));
            KESTREL_ASSIGN_OR_RETURN(v_norm, ops.allocate(entries * sizeof(uint16_t)));
            KESTREL_ASSIGN_OR_RETURN(view.rotation, cache.rotation(spec.head_dim, ops));
            view.k_norm = static_cast<uint16_t*>(k_norm.data());
            view.v_norm = static_cast<uint16_t*>(v_norm.data());
            // The key centre (ops/kv_tq4.h, "Key centring"): zero until a first long write.
            const size_t center_bytes =
                static_cast<size_t>(spec.n_kv_heads * spec.head_dim) * sizeof(float);
            KESTREL_ASSIGN_OR_RETURN(k_center, ops.allocate(center_bytes));
            KESTREL_RETURN_IF_ERROR(ops.fill_zero(k_center.data(), center_bytes));
            view.k_center = static_cast<float*>(k_center.data());
        } else if (entries > 0 && spec.head_dim > 0) {
            // Layers without attention (Gated DeltaNet) get empty views.
            KESTREL_ASSIGN_OR_RETURN(k, ops.allocate(entries * static_cast<size_t>(spec.head_dim) *
                                                     element_bytes(native)));
            KESTREL_ASSIGN_OR_RETURN(v,
                                     ops.allocate(entries * static_cast<size_t>(spec.v_head_dim) *
                                                  element_bytes(native)));
        }
        view.k = k.data();
        view.v = v.data();
        cache.views_.push_back(view);
        cache.k_.push_back(std::move(k));
        cache.v_.push_back(std::move(v));
        cache.k_norm_.push_back(std::move(k_norm));
        cache.v_norm_.push_back(std::move(v_norm));
        cache.k_center_.push_back(std::move(k_center));
    }
    if (tq4) {
        log_once(LogLevel::kInfo, "kv-cache-tq4",
                 fmt::format("KV cache: {} full-attention layer{} in TQ4, {} sliding in {}", n_full,
                             n_full == 1 ? "" : "s",
                             std::count_if(layout.begin(), layout.end(),
                                           [](const KvLayerSpec& s) { return s.window > 0; }),
                             native == KvDtype::kBF16 ? "bf16" : "fp32"));
    }
    return cache;
}

int64_t KvCache::bytes() const {
    int64_t total = 0;
    for (size_t i = 0; i < k_.size(); ++i) {
        total += static_cast<int64_t>(k_[i].bytes() + v_[i].bytes() + k_norm_[i].bytes() +
                                      v_norm_[i].bytes() + k_center_[i].bytes());
    }
    for (const Rotation& r : rotations_) total += static_cast<int64_t>(r.matrix.bytes());
    return total;
}

}  // namespace kestrel
