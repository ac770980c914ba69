#include "models/forward_common.h"

#include <fmt/format.h>

#include <algorithm>

namespace kestrel {

int64_t logit_row_count(LogitRows rows, int64_t n_tokens) {
    switch (rows) {
        case LogitRows::kAll: return n_tokens;
        case LogitRows::kLast: return 1;
        case LogitRows::kNone: return 0;
    }
    return 0;
}

Status check_forward_arguments(std::string_view model, const ModelConfig& config, const Batch& batch,
                               std::span<const KvLayerView> kv, LogitRows rows, std::span<const float> logits) {
    const int64_t n_tokens = static_cast<int64_t>(batch.tokens.size());
    const bool has_linear_layers = config.count_layers(LayerKind::kLinear) > 0;
    if (n_tokens == 0 || static_cast<int64_t>(batch.positions.size()) != n_tokens ||
        static_cast<int64_t>(kv.size()) != config.n_layers ||
        (has_linear_layers && static_cast<int64_t>(batch.recurrent.size()) != config.n_layers) ||
        static_cast<int64_t>(logits.size()) != logit_row_count(rows, n_tokens) * config.vocab_size) {
        return Status(StatusCode::kInternal,
                      fmt::format("{} forward: batch, KV views, recurrent state or logits buffer of the wrong size", model));
    }
    return ok_status();
}

void dump(Ops& ops, const ForwardOptions& options, std::string_view name, int64_t layer, const float* data,
          int64_t rows, int64_t cols) {
    if (options.debug == nullptr) return;
    std::vector<float> host(static_cast<size_t>(rows * cols));
    const Status copied = ops.copy_to_host(host.data(), data, host.size() * sizeof(float));
    if (!copied.ok()) return;  // the forward's own error check reports the backend's failure
    (*options.debug)(name, layer, host.data(), rows, cols);
}

Status attention_block(Ops& ops, float* q, float* k, float* v, const float* q_norm,
                       const float* k_norm, std::span<const int64_t> positions,
                       const AttentionInputsParams& inputs, const KvLayerView& kv,
                       const AttentionParams& params, float* attn_out, bool keep_attn_out,
                       const Weight& wo, float* attn_proj) {
    const auto n_tokens = static_cast<int64_t>(positions.size());
    const int64_t step = kv.step_tokens;
    if (step <= 0 || n_tokens <= step) {
        return ops.attention_inputs_linear(q, k, v, q_norm, k_norm, positions, inputs, kv, params,
                                           attn_out, keep_attn_out, wo, attn_proj);
    }
    const int64_t q_row = inputs.n_heads * inputs.head_dim;
    const int64_t k_row = inputs.n_kv_heads * inputs.head_dim;
    const int64_t v_row = inputs.n_kv_heads * kv.v_head_dim;
    const int64_t out_row = params.n_heads * kv.v_head_dim;
    for (int64_t first = 0; first < n_tokens; first += step) {
        const int64_t count = std::min(step, n_tokens - first);
        const std::span<const int64_t> step_positions = positions.subspan(first, count);
        KESTREL_RETURN_IF_ERROR(ops.attention_inputs(q + first * q_row, k + first * k_row,
                                                     v + first * v_row, q_norm, k_norm,
                                                     step_positions, inputs, kv));
        ops.attention(q + first * q_row, step_positions, kv, params, attn_out + first * out_row);
    }
    ops.linear(attn_out, n_tokens, wo, attn_proj);
    return ok_status();
}

Status output_head(Ops& ops, const ModelConfig& config, const float* x, int64_t n_tokens, const float* norm_weight,
                   const Weight& lm_head, const ForwardOptions& options, std::span<float> logits) {
    const int64_t rows = logit_row_count(options.logits, n_tokens);
    if (rows == 0) return ok_status();
    const int64_t d = config.hidden_size;
    KESTREL_ASSIGN_OR_RETURN(float* out_norm, ops.workspace().floats(rows * d));
    ops.rms_norm(x + (n_tokens - rows) * d, norm_weight, rows, d, static_cast<float>(config.rms_norm_eps), out_norm);
    dump(ops, options, "result_norm", -1, out_norm, rows, d);
    ops.logits(out_norm, rows, lm_head, static_cast<float>(config.final_logit_softcap), logits.data());
    return ok_status();
}

}  // namespace kestrel
