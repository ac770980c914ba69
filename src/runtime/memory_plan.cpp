#include "runtime/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "ops/kv_tq4.h"
#include "runtime/kv_cache.h"

namespace kestrel {

namespace {

constexpr int64_t kGroup = 32;
// The CUDA context, cuBLAS / cuBLASLt (their kernels and workspace), graphs and allocation
// granularity: what a run holds beyond the plan's other parts. Measured on the H100 (2026-11-24,
// bench/results/2026-11-24-h100-sliding-steps.md): Gemma 4 31B at 131072 tokens with TQ4 peaked
// at 22.02 GiB device-wide at -b 1024 (prefill and decode) where the other parts came to 20.98
// GiB, and at 21.76 against 20.72 at -b 512: 1.04 GiB, of which about 0.5 (the context) exists
// before a session is made and the rest comes with its first forward steps. Reserved: 1.25 GiB,
// of it kLateRuntimeBytes 0.75. (An earlier 1.5 GiB was measured when the workspace's blocks
// grew to the largest buffer's size and the GEMM scratch kept the buffers it outgrew, ~0.5 GiB
// at -b 2048, which this estimate then absorbed.)
constexpr int64_t kRuntimeReserve = int64_t{1280} << 20;
static_assert(kLateRuntimeBytes < kRuntimeReserve);

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

// qs, one uint16 (sc, m) per group, one fp16 (d, dmin) pair per 256 weights of a row.
int64_t w4_bytes(const WeightInfo& tensor) {
    const int64_t n = tensor.n_elements;
    const int64_t in = tensor.shape.back();
    const int64_t rows = in > 0 ? n / in : 0;
    return n / 2 + groups(n) * 2 + rows * ((in + 255) / 256) * 4;
}

int64_t w8_bytes(const WeightInfo& tensor) {
    return tensor.n_elements + groups(tensor.n_elements) * 4;
}

enum class EngineFormat { kF32, kBf16, kW8, kW4, kAsStored };

EngineFormat engine_format(const WeightInfo& tensor, WeightFormat float_weights) {
    if (tensor.shape.size() <= 1) return EngineFormat::kF32;
    if (is_float_type(tensor.dtype)) {
        // Rows not a multiple of a group wide (a depthwise conv's 4 taps) are no linear's: fp32.
        if (tensor.shape.back() % kGroup != 0) return EngineFormat::kF32;
        // weight_reader.h MatrixPrecision: a router at least W8, expert stacks W4 or W8.
        const std::string_view name = tensor.name;
        const bool router =
            name.ends_with(".ffn_gate_inp.weight") || name.ends_with(".mlp.gate.weight");
        const bool expert = name.find("_exps.") != std::string_view::npos ||
                            name.find(".mlp.experts.") != std::string_view::npos;
        if (router && float_weights == WeightFormat::kW4) return EngineFormat::kW8;
        if (expert && float_weights == WeightFormat::kBF16) return EngineFormat::kW8;
        return float_weights == WeightFormat::kW4   ? EngineFormat::kW4
               : float_weights == WeightFormat::kW8 ? EngineFormat::kW8
                                                    : EngineFormat::kBf16;
    }
    if (fits_in_w4(tensor.dtype)) return EngineFormat::kW4;
    if (dtype_info(tensor.dtype).block_elements > 1) return EngineFormat::kW8;
    return EngineFormat::kAsStored;  // integer tensors stay as they are
}

int64_t bytes_in(EngineFormat format, const WeightInfo& tensor) {
    switch (format) {
        case EngineFormat::kF32:
            return tensor.n_elements * 4;
        case EngineFormat::kBf16:
            return tensor.n_elements * 2;
        case EngineFormat::kW8:
            return w8_bytes(tensor);
        case EngineFormat::kW4:
            return w4_bytes(tensor);
        case EngineFormat::kAsStored:
            return tensor.n_bytes;
    }
    return tensor.n_bytes;
}

// The projection a tensor is stacked into at load (gemma3.cpp, gemma4.cpp: q | k | v, gate | up;
// qwen35_moe.cpp: qkv | z | b | a, router | shared expert, the experts' gate | up), as
// "<block>.<stack>", or "" for a tensor loaded alone. GGUF and HF names.
std::string stack_of(std::string_view name) {
    // HF writes one tensor per expert (layers.L.mlp.experts.E.gate_proj.weight): one stack.
    if (const size_t experts = name.find(".mlp.experts."); experts != std::string_view::npos) {
        const bool down = name.ends_with(".down_proj") || name.ends_with(".down_proj.weight");
        return std::string(name.substr(0, experts)) + (down ? ".experts_down" : ".experts_gate_up");
    }
    struct Member {
        std::string_view part;
        std::string_view stack;
    };
    static constexpr Member kMembers[] = {{".attn_q.weight", "qkv"},
                                          {".attn_k.weight", "qkv"},
                                          {".attn_v.weight", "qkv"},
                                          {".self_attn.q_proj.weight", "qkv"},
                                          {".self_attn.k_proj.weight", "qkv"},
                                          {".self_attn.v_proj.weight", "qkv"},
                                          {".ffn_gate.weight", "gate_up"},
                                          {".ffn_up.weight", "gate_up"},
                                          {".mlp.gate_proj.weight", "gate_up"},
                                          {".mlp.up_proj.weight", "gate_up"},
                                          {".attn_qkv.weight", "gdn_in"},
                                          {".attn_gate.weight", "gdn_in"},
                                          {".ssm_beta.weight", "gdn_in"},
                                          {".ssm_alpha.weight", "gdn_in"},
                                          {".linear_attn.in_proj_qkv.weight", "gdn_in"},
                                          {".linear_attn.in_proj_z.weight", "gdn_in"},
                                          {".linear_attn.in_proj_b.weight", "gdn_in"},
                                          {".linear_attn.in_proj_a.weight", "gdn_in"},
                                          {".ffn_gate_inp.weight", "moe_in"},
                                          {".ffn_gate_inp_shexp.weight", "moe_in"},
                                          {".ffn_gate_shexp.weight", "moe_in"},
                                          {".ffn_up_shexp.weight", "moe_in"},
                                          {".mlp.gate.weight", "moe_in"},
                                          {".mlp.shared_expert_gate.weight", "moe_in"},
                                          {".mlp.shared_expert.gate_proj.weight", "moe_in"},
                                          {".mlp.shared_expert.up_proj.weight", "moe_in"},
                                          {".ffn_gate_exps.weight", "experts_gate_up"},
                                          {".ffn_up_exps.weight", "experts_gate_up"}};
    for (const Member& member : kMembers) {
        if (name.ends_with(member.part)) {
            return std::string(name.substr(0, name.size() - member.part.size())) + "." +
                   std::string(member.stack);
        }
    }
    return "";
}

}  // namespace

int64_t engine_weight_bytes(const WeightInfo& tensor, WeightFormat float_weights) {
    return bytes_in(engine_format(tensor, float_weights), tensor);
}

int64_t engine_weight_bytes_in_stack(const WeightInfo& tensor, bool stack_has_w8,
                                     WeightFormat float_weights) {
    const EngineFormat format = engine_format(tensor, float_weights);
    return bytes_in(stack_has_w8 && format == EngineFormat::kW4 ? EngineFormat::kW8 : format,
                    tensor);
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

namespace {

// One token's K and V in a full-attention layer.
int64_t full_layer_bytes_per_token(const LayerConfig& layer, int64_t kv_bytes_per_element,
                                   KvCacheFormat kv_cache) {
    if (kv_cache == KvCacheFormat::kTq4) {
        return layer.n_kv_heads *
               (tq4_vector_bytes(layer.head_dim) + tq4_vector_bytes(layer.v_head_dim));
    }
    return layer.n_kv_heads * (layer.head_dim + layer.v_head_dim) * kv_bytes_per_element;
}

// The TQ4 rotations a session holds: one fp32 [D, D] per distinct full-layer head dim (KvCache).
int64_t tq4_rotation_bytes(const ModelConfig& config) {
    std::set<int64_t> head_dims;
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind == LayerKind::kFull) head_dims.insert(layer.head_dim);
    }
    int64_t bytes = 0;
    for (int64_t d : head_dims) bytes += d * d * 4;
    return bytes;
}

// The key centres of the TQ4 layers (ops/kv_tq4.h, "Key centring"): fp32 [n_kv_heads, D] each.
int64_t tq4_center_bytes(const ModelConfig& config) {
    int64_t bytes = 0;
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind == LayerKind::kFull) bytes += layer.n_kv_heads * layer.head_dim * 4;
    }
    return bytes;
}

std::string gib(int64_t bytes) {
    return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / (1 << 30));
}

// What a session adds on top of the loaded weights: its own parts, and the runtime's that arrive
// with its first forward steps (the CUDA context is made by then).
int64_t session_bytes(const MemoryPlan& plan) {
    return plan.kv_cache_bytes + plan.recurrent_state_bytes + plan.workspace_bytes +
           kLateRuntimeBytes;
}

// The longest context up to `limit` whose session fits in `available`, rounded down to a multiple
// of 256 (or 0 when not even 256 tokens fit). A session's bytes grow with its context.
int64_t longest_context_that_fits(const ModelConfig& config, MemoryPlanOptions options,
                                  int64_t limit, int64_t available) {
    int64_t low = 0,
            high = limit / 256;  // in units of 256 tokens: low fits (or is 0), high + 1 does not
    while (low < high) {
        const int64_t mid = (low + high + 1) / 2;
        options.context = mid * 256;
        if (session_bytes(plan_session_memory(config, options)) <= available) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    return low * 256;
}

// The largest of from, from / 2, ... down to kSmallestAutoPrefillChunk whose session fits in
// `available`, or 0.
int64_t largest_chunk_that_fits(const ModelConfig& config, MemoryPlanOptions options, int64_t from,
                                int64_t available) {
    for (int64_t chunk = from; chunk >= kSmallestAutoPrefillChunk; chunk /= 2) {
        options.prefill_chunk = chunk;
        if (session_bytes(plan_session_memory(config, options)) <= available) return chunk;
    }
    return 0;
}

}  // namespace

int64_t kv_bytes_per_token(const ModelConfig& config, int64_t kv_bytes_per_element,
                           KvCacheFormat kv_cache) {
    int64_t bytes = 0;
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind != LayerKind::kFull) continue;
        bytes += full_layer_bytes_per_token(layer, kv_bytes_per_element, kv_cache);
    }
    return bytes;
}

int64_t default_prefill_chunk(const ModelConfig& config) {
    return config.n_experts > 0 ? 8192 : 2048;
}

MemoryPlan plan_memory(const ModelConfig& config, const WeightSource& weights, const MemoryPlanOptions& options) {
    MemoryPlan plan = plan_session_memory(config, options);
    std::map<std::string, bool> stack_has_w8;
    for (const WeightInfo& tensor : weights.tensors()) {
        const std::string stack = stack_of(tensor.name);
        if (!stack.empty() && engine_format(tensor, options.float_weights) == EngineFormat::kW8) {
            stack_has_w8[stack] = true;
        }
    }
    for (const WeightInfo& tensor : weights.tensors()) {
        if (!is_loaded_tensor(config, tensor.name)) continue;
        const std::string stack = stack_of(tensor.name);
        plan.weight_bytes += engine_weight_bytes_in_stack(
            tensor, !stack.empty() && stack_has_w8[stack], options.float_weights);
    }
    return plan;
}

MemoryPlan plan_session_memory(const ModelConfig& config, const MemoryPlanOptions& options) {
    MemoryPlan plan;
    plan.context = options.context > 0 ? options.context : config.context_length;
    const int64_t prefill_chunk =
        options.prefill_chunk > 0 ? options.prefill_chunk : default_prefill_chunk(config);
    // Sliding layers keep a ring: the window plus the rest of an attention step (a prefill
    // chunk, or kSlidingAttentionStep of its tokens) that may still attend to the window's
    // oldest entry.
    plan.sliding_ring_entries =
        config.sliding_window > 0
            ? KvCache::ring_capacity(config.sliding_window, plan.context, prefill_chunk)
            : 0;
    int64_t widest_projection = config.hidden_size;
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind == LayerKind::kFull) {
            plan.kv_cache_bytes +=
                plan.context *
                full_layer_bytes_per_token(layer, options.kv_bytes_per_element, options.kv_cache);
        }
        if (layer.kind == LayerKind::kSliding) {
            plan.kv_cache_bytes += plan.sliding_ring_entries *
                                   full_layer_bytes_per_token(layer, options.kv_bytes_per_element,
                                                              KvCacheFormat::kNative);
        }
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
    // in fp32, plus one row of logits, plus the session's sequence of positions (8 bytes a
    // context token, runtime/session.h) that pipelined decoding stages from.
    const int64_t chunk = std::min(plan.context, prefill_chunk);
    plan.workspace_bytes = chunk * (3 * config.hidden_size + 2 * widest_projection) * 4 +
                           config.vocab_size * 4 + plan.context * 8;
    // The prefill GEMM's scratch (ops/cuda/gemm_prefill.h): the chunk's input in bf16 at the
    // widest input of a dense projection, and the bf16 copy of the largest weight it multiplies
    // (the lm_head where every row's logits are asked for), or of one slice of it
    // (kPrefillWeightSliceBytes, at least 64 rows).
    int64_t widest_input = std::max(
        {config.hidden_size, config.ffn_size, config.linear_v_heads * config.linear_v_head_dim});
    for (const LayerConfig& layer : config.layers) {
        widest_input = std::max(widest_input, config.n_heads * layer.v_head_dim);
    }
    const auto slice_bytes = [](int64_t n, int64_t k) {
        return prefill_weight_slice_rows(n, k, kPrefillWeightSliceBytes) * k * 2;
    };
    plan.workspace_bytes +=
        chunk * widest_input * 2 + std::max({slice_bytes(widest_projection, config.hidden_size),
                                             slice_bytes(config.vocab_size, config.hidden_size),
                                             slice_bytes(config.hidden_size, widest_input)});
    if (config.n_experts > 0) {
        // The grouped expert GEMMs' scratch (ops/cuda/moe_prefill.h) per slot (top-k and the
        // stacked shared expert): x and act in bf16, each slot's fp32 output row.
        const int64_t slots = chunk * (config.n_experts_used + 1);
        plan.workspace_bytes += chunk * config.hidden_size * 2 +
                                slots * (config.expert_ffn_size * 2 + config.hidden_size * 4);
    }
    if (config.count_layers(LayerKind::kLinear) > 0) {
        // The chunked delta rule's scratch (ops/cuda/gated_delta.h): per value head and 64-token
        // chunk, two 64 x 64 fp32 matrices and four values per token.
        const int64_t chunks = (chunk + 63) / 64;
        plan.workspace_bytes += config.linear_v_heads * chunks * (2 * 64 * 64 + 4 * 64) * 4;
    }
    if (options.kv_cache == KvCacheFormat::kTq4) {
        plan.kv_cache_bytes += tq4_rotation_bytes(config) + tq4_center_bytes(config);
        // The CUDA TQ4 layers' scratch (CudaOps::attention_tq4, kv_write): a chunk's rotated
        // queries [T, n_heads, D], its centred keys and its rotated K and V rows
        // [3, T, n_kv_heads, D], fp32.
        int64_t tq4_scratch = 0;
        for (const LayerConfig& layer : config.layers) {
            if (layer.kind != LayerKind::kFull) continue;
            tq4_scratch = std::max(
                tq4_scratch, chunk * (config.n_heads + 3 * layer.n_kv_heads) * layer.head_dim * 4);
        }
        plan.workspace_bytes += tq4_scratch;
    }
    plan.runtime_bytes = kRuntimeReserve;
    return plan;
}

Status check_session_fits(const ModelConfig& config, const MemoryPlanOptions& options,
                          int64_t available_bytes, bool tq4_available) {
    const MemoryPlan plan = plan_session_memory(config, options);
    const int64_t needed = session_bytes(plan);
    if (needed <= available_bytes) return ok_status();
    const int64_t fits = longest_context_that_fits(config, options, plan.context, available_bytes);
    std::string advice =
        fits > 0 ? fmt::format("-c {} fits", fits) : "no context fits: free GPU memory first";
    const int64_t chunk =
        options.prefill_chunk > 0 ? options.prefill_chunk : default_prefill_chunk(config);
    if (const int64_t smaller =
            largest_chunk_that_fits(config, options, chunk / 2, available_bytes);
        smaller > 0) {
        advice += fmt::format(", or -b {} at this context", smaller);
    }
    if (options.kv_cache == KvCacheFormat::kNative && tq4_available &&
        config.count_layers(LayerKind::kFull) > 0) {
        MemoryPlanOptions tq4 = options;
        tq4.kv_cache = KvCacheFormat::kTq4;
        const int64_t tq4_fits =
            longest_context_that_fits(config, tq4, plan.context, available_bytes);
        if (tq4_fits > fits) advice += fmt::format(", or -c {} with --kv-cache tq4", tq4_fits);
    }
    std::string parts = fmt::format("KV cache {} with --kv-cache {}", gib(plan.kv_cache_bytes),
                                    kv_cache_format_name(options.kv_cache));
    if (plan.recurrent_state_bytes > 0)
        parts += fmt::format(", recurrent state {}", gib(plan.recurrent_state_bytes));
    parts += fmt::format(", workspace {}, runtime {}", gib(plan.workspace_bytes),
                         gib(kLateRuntimeBytes));
    return Status(
        StatusCode::kOutOfMemory,
        fmt::format("context {} needs {} of GPU memory beyond the weights ({}) but {} is free; {}",
                    plan.context, gib(needed), parts, gib(available_bytes), advice));
}

Result<int64_t> choose_prefill_chunk(const ModelConfig& config, const MemoryPlanOptions& options,
                                     int64_t available_bytes, bool tq4_available) {
    const int64_t asked =
        options.prefill_chunk > 0 ? options.prefill_chunk : default_prefill_chunk(config);
    MemoryPlanOptions at = options;
    at.prefill_chunk = asked;
    if (session_bytes(plan_session_memory(config, at)) <= available_bytes) return asked;
    if (options.prefill_chunk == 0) {
        const int64_t smaller = largest_chunk_that_fits(config, at, asked / 2, available_bytes);
        if (smaller > 0) return smaller;
    }
    Status refused = check_session_fits(config, at, available_bytes, tq4_available);
    if (refused.ok()) return asked;  // not reached: the plan above did not fit
    return refused;
}

}  // namespace kestrel
