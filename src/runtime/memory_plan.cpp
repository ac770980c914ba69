#include "runtime/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace kestrel {

namespace {

constexpr int64_t kGroup = 32;
constexpr int64_t kRuntimeReserve = int64_t{512} << 20;  // CUDA context + cuBLAS workspace

bool is_float_type(DType type) {
    return type == DType::kF32 || type == DType::kF16 || type == DType::kBF16 || type == DType::kF64;
}

bool fits_in_w4(DType type) {
    switch (type) {
        case DType::kQ4_0:
        case DType::kQ4_1:
        case DType::kQ4_K:
        case DType::kQ2_K:
        case DType::kQ3_K:
        case DType::kIQ4_NL:
        case DType::kIQ4_XS:
        case DType::kIQ2_XXS:
        case DType::kIQ2_XS:
        case DType::kIQ2_S:
        case DType::kIQ3_XXS:
        case DType::kIQ3_S:
        case DType::kIQ1_S:
        case DType::kIQ1_M:
        case DType::kTQ1_0:
        case DType::kTQ2_0:
        case DType::kMXFP4:
        case DType::kNVFP4:
        case DType::kQ1_0: return true;
        default: return false;
    }
}

int64_t groups(int64_t n) { return (n + kGroup - 1) / kGroup; }

}  // namespace

int64_t engine_weight_bytes(const WeightInfo& tensor) {
    const int64_t n = tensor.n_elements;
    if (tensor.shape.size() <= 1) return n * 4;
    if (is_float_type(tensor.dtype)) return n * 2;
    if (fits_in_w4(tensor.dtype)) {
        // qs, one uint16 (sc, m) per group, one fp16 (d, dmin) pair per 256 weights of a row.
        const int64_t in = tensor.shape.back();
        const int64_t rows = in > 0 ? n / in : 0;
        return n / 2 + groups(n) * 2 + rows * ((in + 255) / 256) * 4;
    }
    if (dtype_info(tensor.dtype).block_elements > 1) return n + groups(n) * 4;
    return tensor.n_bytes;  // integer tensors stay as they are
}

bool is_loaded_tensor(const ModelConfig& config, std::string_view name) {
    for (std::string_view skipped : {"vision_tower", "visual.", "audio_tower", "multi_modal_projector",
                                     "embed_vision", "embed_audio", "mtp.", "nextn."}) {
        if (name.find(skipped) != std::string_view::npos) return false;
    }
    // GGUF blocks past the decoder stack (Qwen3.5's MTP block is blk.<n_layers>).
    if (name.starts_with("blk.")) {
        const int64_t block = std::atoll(std::string(name.substr(4)).c_str());
        if (block >= config.n_layers) return false;
    }
    return true;
}

ParameterCount count_parameters(const ModelConfig& config, const WeightSource& weights) {
    ParameterCount count;
    for (const WeightInfo& tensor : weights.tensors()) {
        if (is_loaded_tensor(config, tensor.name)) count.total += tensor.n_elements;
    }
    // Each layer runs n_experts_used of its n_experts routed experts (gate, up and down).
    const int64_t idle_experts = std::max<int64_t>(config.n_experts - config.n_experts_used, 0);
    count.active = count.total - config.n_layers * idle_experts * 3 * config.hidden_size * config.expert_ffn_size;
    return count;
}

int64_t kv_bytes_per_token(const ModelConfig& config, int64_t kv_bytes_per_element) {
    int64_t bytes = 0;
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind != LayerKind::kFull) continue;
        bytes += layer.n_kv_heads * (layer.head_dim + layer.v_head_dim) * kv_bytes_per_element;
    }
    return bytes;
}

MemoryPlan plan_memory(const ModelConfig& config, const WeightSource& weights, const MemoryPlanOptions& options) {
    MemoryPlan plan;
    plan.context = options.context > 0 ? options.context : config.context_length;
    for (const WeightInfo& tensor : weights.tensors()) {
        if (is_loaded_tensor(config, tensor.name)) plan.weight_bytes += engine_weight_bytes(tensor);
    }

    // Sliding layers keep a ring: the window plus the rest of a prefill chunk that may still
    // attend to the window's oldest entry.
    plan.sliding_ring_entries =
        config.sliding_window > 0 ? std::min(plan.context, config.sliding_window + options.prefill_chunk - 1) : 0;
    int64_t widest_projection = config.hidden_size;
    for (const LayerConfig& layer : config.layers) {
        const int64_t per_entry = layer.n_kv_heads * (layer.head_dim + layer.v_head_dim) * options.kv_bytes_per_element;
        if (layer.kind == LayerKind::kFull) plan.kv_cache_bytes += plan.context * per_entry;
        if (layer.kind == LayerKind::kSliding) plan.kv_cache_bytes += plan.sliding_ring_entries * per_entry;
        if (layer.kind == LayerKind::kLinear) {
            // conv state: (kernel - 1) past inputs of q|k|v; recurrent state: one k x v matrix per v head.
            const int64_t conv_channels =
                2 * config.linear_k_heads * config.linear_k_head_dim + config.linear_v_heads * config.linear_v_head_dim;
            plan.recurrent_state_bytes += ((config.linear_conv_kernel - 1) * conv_channels +
                                           config.linear_v_heads * config.linear_k_head_dim * config.linear_v_head_dim) *
                                          4;
            widest_projection = std::max(widest_projection, 2 * conv_channels);
        } else {
            widest_projection = std::max(widest_projection, config.n_heads * layer.head_dim * 2 +
                                                                layer.n_kv_heads * (layer.head_dim + layer.v_head_dim));
        }
    }
    widest_projection = std::max({widest_projection, 2 * config.ffn_size,
                                  2 * config.expert_ffn_size * std::max<int64_t>(config.n_experts_used, 1)});
    // One chunk's residual stream, normed input, widest projection output and its activation,
    // in fp32, plus one row of logits.
    const int64_t chunk = std::min(plan.context, options.prefill_chunk);
    plan.workspace_bytes = chunk * (3 * config.hidden_size + 2 * widest_projection) * 4 + config.vocab_size * 4;
    plan.runtime_bytes = kRuntimeReserve;
    return plan;
}

}  // namespace kestrel
