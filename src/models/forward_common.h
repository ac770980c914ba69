// Pieces every model's forward() shares: argument checks, fp32 weight views, and the output head.
#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "models/model.h"

namespace kestrel {

// Rows of logits a forward writes for `rows`: all tokens, the last one, or none.
int64_t logit_row_count(LogitRows rows, int64_t n_tokens);

// kInternal naming `model` when the batch, the KV views, the recurrent views (models with linear
// layers) or the logits buffer do not fit `config`.
Status check_forward_arguments(std::string_view model, const ModelConfig& config, const Batch& batch,
                               std::span<const KvLayerView> kv, LogitRows rows, std::span<const float> logits);

// Hands data [rows, cols] (backend memory) to options.debug as `name`, copied to the host first
// when the backend's memory is not the host's. Nothing without a hook.
void dump(Ops& ops, const ForwardOptions& options, std::string_view name, int64_t layer, const float* data,
          int64_t rows, int64_t cols);

// One softmax-attention layer from its projected q | k | v to attn_proj [T, d]:
// ops.attention_inputs (q, k norms and RoPE, the cache write), then attention and the output
// projection (ops.attention_linear; attn_out [T, n_heads * v_head_dim] is written only when
// keep_attn_out), as one ops.attention_inputs_linear: q, k and v keep the normalised rows only
// when keep_attn_out. A sliding ring shorter than its window plus the batch (kv.step_tokens) takes
// the write and the attention in steps of kv.step_tokens tokens, in order, so that no write
// overwrites a key a query of its step still needs; then attn_out is always written and
// projected once for all rows.
Status attention_block(Ops& ops, float* q, float* k, float* v, const float* q_norm,
                       const float* k_norm, std::span<const int64_t> positions,
                       const AttentionInputsParams& inputs, const KvLayerView& kv,
                       const AttentionParams& params, float* attn_out, bool keep_attn_out,
                       const Weight& wo, float* attn_proj);

// The head every model ends with: RMSNorm of the last logit rows of the residual stream
// x [T, d] (dumped as "result_norm"), then lm_head [vocab, d] with config.final_logit_softcap,
// into logits (backend memory).
Status output_head(Ops& ops, const ModelConfig& config, const float* x, int64_t n_tokens, const float* norm_weight,
                   const Weight& lm_head, const ForwardOptions& options, std::span<float> logits);

}  // namespace kestrel
