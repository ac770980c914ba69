// ModelConfig from GGUF metadata (keys as llama.cpp's converter writes them, see
// ../shared/specs/gguf-layouts.md) and from Hugging Face config.json (field names of
// transformers' Gemma3TextConfig, Gemma4TextConfig, Qwen3_5MoeTextConfig).
#include "models/model_config.h"

#include "core/printable.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>

namespace kestrel {

char layer_kind_letter(LayerKind kind) {
    switch (kind) {
        case LayerKind::kSliding: return 'S';
        case LayerKind::kFull: return 'F';
        case LayerKind::kLinear: return 'L';
    }
    return '?';
}

int64_t ModelConfig::count_layers(LayerKind kind) const {
    return std::count_if(layers.begin(), layers.end(), [&](const LayerConfig& l) { return l.kind == kind; });
}

std::string ModelConfig::layer_pattern() const {
    // Group by the position of the first full-attention layer (6 for Gemma, 4 for Qwen3.5) so
    // the repetition is visible; no grouping when there is no full layer.
    int64_t period = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
        if (layers[i].kind == LayerKind::kFull) {
            period = static_cast<int64_t>(i) + 1;
            break;
        }
    }
    std::string pattern;
    for (size_t i = 0; i < layers.size(); ++i) {
        if (period > 1 && i > 0 && static_cast<int64_t>(i) % period == 0) pattern += ' ';
        pattern += layer_kind_letter(layers[i].kind);
    }
    return pattern;
}

bool is_supported_architecture(std::string_view architecture) {
    return architecture == "gemma3" || architecture == "gemma4" || architecture == "qwen35moe";
}

namespace {

constexpr std::array kSupportedList = {"gemma3", "gemma4", "qwen35moe"};

Status unsupported_architecture(std::string_view source, std::string_view architecture) {
    return Status(StatusCode::kUnsupported,
                  fmt::format("{}: unsupported architecture '{}' (Kestrel runs {})", source, printable(architecture),
                              fmt::join(kSupportedList, ", ")));
}

Status invalid(std::string_view source, std::string_view what) {
    return Status(StatusCode::kCorruptFile, fmt::format("{}: {}", source, what));
}

// Every field a forward pass divides by or sizes a buffer with must be positive.
Status check_config(const ModelConfig& config, std::string_view source) {
    const std::array<std::pair<const char*, int64_t>, 5> required = {{{"layer count", config.n_layers},
                                                                      {"hidden size", config.hidden_size},
                                                                      {"head count", config.n_heads},
                                                                      {"vocabulary size", config.vocab_size},
                                                                      {"context length", config.context_length}}};
    for (const auto& [what, value] : required) {
        if (value <= 0) return invalid(source, fmt::format("{} is {}, expected a positive number", what, value));
    }
    if (static_cast<int64_t>(config.layers.size()) != config.n_layers) {
        return invalid(source, fmt::format("{} layer kinds for {} layers", config.layers.size(), config.n_layers));
    }
    for (size_t i = 0; i < config.layers.size(); ++i) {
        const LayerConfig& layer = config.layers[i];
        if (layer.kind == LayerKind::kLinear) continue;
        if (layer.n_kv_heads <= 0 || layer.head_dim <= 0 || layer.v_head_dim <= 0 ||
            config.n_heads % layer.n_kv_heads != 0) {
            return invalid(source, fmt::format("layer {}: {} kv heads of dim {}/{} for {} query heads", i,
                                               layer.n_kv_heads, layer.head_dim, layer.v_head_dim, config.n_heads));
        }
    }
    if (config.count_layers(LayerKind::kSliding) > 0 && config.sliding_window <= 0) {
        return invalid(source, "sliding layers without a positive sliding window");
    }
    if (config.count_layers(LayerKind::kLinear) > 0 &&
        (config.linear_conv_kernel <= 0 || config.linear_k_heads <= 0 || config.linear_v_heads <= 0 ||
         config.linear_k_head_dim <= 0 || config.linear_v_head_dim <= 0)) {
        return invalid(source, "linear-attention layers with a non-positive state size");
    }
    if (config.n_experts > 0 && (config.n_experts_used <= 0 || config.n_experts_used > config.n_experts)) {
        return invalid(source, fmt::format("{} experts used of {}", config.n_experts_used, config.n_experts));
    }
    return ok_status();
}

// ---- GGUF ---------------------------------------------------------------------------------------

// Reads `<arch>.<key>` metadata, with the file named in every message. The `_or` readers
// default only an absent key: a key of the wrong type is remembered as the first error, because
// silently defaulting it would run a different model than the file describes.
class GgufKeys {
public:
    GgufKeys(const GgufFile& file, std::string architecture) : file_(file), arch_(std::move(architecture)) {}

    std::string key(std::string_view name) const { return fmt::format("{}.{}", arch_, name); }
    bool has(std::string_view name) const { return file_.find(key(name)) != nullptr; }
    Result<int64_t> get_int(std::string_view name) const { return file_.get_int(key(name)); }
    int64_t int_or(std::string_view name, int64_t fallback) { return value_or(file_.get_int(key(name)), fallback); }
    double float_or(std::string_view name, double fallback) { return value_or(file_.get_float(key(name)), fallback); }
    const Status& first_error() const { return first_error_; }

    // A per-layer value stored either as one scalar or as an array of n_layers entries
    // (llama.cpp writes `attention.head_count_kv` both ways).
    Result<std::vector<int64_t>> per_layer(std::string_view name, int64_t n_layers) const {
        const GgufValue* value = file_.find(key(name));
        if (!value) return file_.get_int(key(name)).status();
        if (value->as_array()) {
            KESTREL_ASSIGN_OR_RETURN(std::vector<int64_t> values, file_.get_int_array(key(name)));
            if (static_cast<int64_t>(values.size()) != n_layers) {
                return invalid(file_.display_name(), fmt::format("metadata key '{}' has {} entries for {} layers",
                                                                 key(name), values.size(), n_layers));
            }
            return values;
        }
        KESTREL_ASSIGN_OR_RETURN(int64_t scalar, file_.get_int(key(name)));
        return std::vector<int64_t>(static_cast<size_t>(n_layers), scalar);
    }

private:
    template <class T>
    T value_or(const Result<T>& value, T fallback) {
        if (value.ok()) return *value;
        if (value.status().code() != StatusCode::kNotFound && first_error_.ok()) first_error_ = value.status();
        return fallback;
    }

    const GgufFile& file_;
    std::string arch_;
    Status first_error_;
};

int64_t gguf_vocab_size(const GgufFile& file) {
    if (const GgufValue* tokens = file.find("tokenizer.ggml.tokens")) {
        if (const GgufArray* array = tokens->as_array()) return static_cast<int64_t>(array->elements.size());
    }
    if (const GgufTensorInfo* embedding = file.find_tensor("token_embd.weight")) {
        if (embedding->ne.size() == 2) return embedding->ne[1];
    }
    return 0;
}

}  // namespace

Result<ModelConfig> model_config_from_gguf(const GgufFile& file) {
    const std::string& source = file.display_name();
    KESTREL_ASSIGN_OR_RETURN(std::string architecture, file.get_string("general.architecture"));
    if (!is_supported_architecture(architecture)) return unsupported_architecture(source, architecture);
    GgufKeys keys(file, architecture);

    ModelConfig config;
    config.architecture = architecture;
    Result<std::string> name = file.get_string("general.name");
    config.name = name.ok() ? *name : architecture;
    config.vocab_size = gguf_vocab_size(file);
    KESTREL_ASSIGN_OR_RETURN(int64_t block_count, keys.get_int("block_count"));
    // Qwen3.5 GGUFs may carry the multi-token-prediction block as an extra block at the end.
    config.n_layers = block_count - keys.int_or("nextn_predict_layers", 0);
    KESTREL_ASSIGN_OR_RETURN(config.hidden_size, keys.get_int("embedding_length"));
    config.ffn_size = keys.int_or("feed_forward_length", 0);
    KESTREL_ASSIGN_OR_RETURN(config.n_heads, keys.get_int("attention.head_count"));
    KESTREL_ASSIGN_OR_RETURN(config.context_length, keys.get_int("context_length"));
    config.rms_norm_eps = keys.float_or("attention.layer_norm_rms_epsilon", 1e-6);
    config.rope_theta = keys.float_or("rope.freq_base", 10000.0);
    config.final_logit_softcap = keys.float_or("final_logit_softcapping", 0.0);
    if (config.n_layers <= 0 || config.n_layers > 100000) {
        return invalid(source, fmt::format("'{}' is {}, expected 1 to 100000 layers", keys.key("block_count"),
                                           config.n_layers));
    }
    KESTREL_ASSIGN_OR_RETURN(std::vector<int64_t> kv_heads, keys.per_layer("attention.head_count_kv", config.n_layers));
    KESTREL_ASSIGN_OR_RETURN(int64_t head_dim, keys.get_int("attention.key_length"));
    const int64_t v_head_dim = keys.int_or("attention.value_length", head_dim);

    config.layers.resize(static_cast<size_t>(config.n_layers));
    if (architecture == "gemma3" || architecture == "gemma4") {
        config.sliding_window = keys.int_or("attention.sliding_window", 0);
        // Gemma 3 files carry no pattern: llama.cpp hard-codes 5 sliding layers then 1 full
        // (HF Gemma3TextConfig sliding_window_pattern 6). Gemma 4 files store it per layer.
        std::vector<bool> sliding(static_cast<size_t>(config.n_layers));
        for (int64_t i = 0; i < config.n_layers; ++i) sliding[i] = (i + 1) % 6 != 0;
        if (keys.has("attention.sliding_window_pattern")) {
            KESTREL_ASSIGN_OR_RETURN(sliding, file.get_bool_array(keys.key("attention.sliding_window_pattern")));
            if (static_cast<int64_t>(sliding.size()) != config.n_layers) {
                return invalid(source, fmt::format("'{}' has {} entries for {} layers",
                                                   keys.key("attention.sliding_window_pattern"), sliding.size(),
                                                   config.n_layers));
            }
        }
        config.rope_theta_sliding = keys.float_or("rope.freq_base_swa", 10000.0);
        const int64_t head_dim_swa = keys.int_or("attention.key_length_swa", head_dim);
        const int64_t v_head_dim_swa = keys.int_or("attention.value_length_swa", head_dim_swa);
        for (int64_t i = 0; i < config.n_layers; ++i) {
            LayerConfig& layer = config.layers[i];
            layer.kind = sliding[i] ? LayerKind::kSliding : LayerKind::kFull;
            layer.n_kv_heads = kv_heads[i];
            layer.head_dim = sliding[i] ? head_dim_swa : head_dim;
            layer.v_head_dim = sliding[i] ? v_head_dim_swa : v_head_dim;
            // Gemma 4: a full layer without attn_v uses the k projection as V.
            layer.k_eq_v = architecture == "gemma4" && !sliding[i] &&
                           !file.find_tensor(fmt::format("blk.{}.attn_v.weight", i));
        }
    } else {  // qwen35moe: linear (Gated DeltaNet) layers with a full-attention layer every interval
        const int64_t interval = keys.int_or("full_attention_interval", 4);
        if (interval <= 0) return invalid(source, "full_attention_interval must be positive");
        config.rope_theta_sliding = config.rope_theta;
        config.n_experts = keys.int_or("expert_count", 0);
        config.n_experts_used = keys.int_or("expert_used_count", 0);
        config.expert_ffn_size = keys.int_or("expert_feed_forward_length", 0);
        config.shared_expert_ffn_size = keys.int_or("expert_shared_feed_forward_length", 0);
        config.linear_conv_kernel = keys.int_or("ssm.conv_kernel", 0);
        config.linear_k_head_dim = keys.int_or("ssm.state_size", 0);
        config.linear_k_heads = keys.int_or("ssm.group_count", 0);
        config.linear_v_heads = keys.int_or("ssm.time_step_rank", 0);
        const int64_t inner_size = keys.int_or("ssm.inner_size", 0);
        config.rope_dim = keys.int_or("rope.dimension_count", 0);
        config.linear_v_head_dim = config.linear_v_heads > 0 ? inner_size / config.linear_v_heads : 0;
        for (int64_t i = 0; i < config.n_layers; ++i) {
            LayerConfig& layer = config.layers[i];
            layer.kind = (i + 1) % interval == 0 ? LayerKind::kFull : LayerKind::kLinear;
            layer.n_kv_heads = kv_heads[i];
            layer.head_dim = head_dim;
            layer.v_head_dim = v_head_dim;
        }
    }
    KESTREL_RETURN_IF_ERROR(keys.first_error());
    KESTREL_RETURN_IF_ERROR(check_config(config, source));
    return config;
}

// ---- Hugging Face config.json ---------------------------------------------------------------------

namespace {

std::string architecture_from_model_type(std::string_view model_type) {
    if (model_type == "gemma3_text" || model_type == "gemma3") return "gemma3";
    if (model_type == "gemma4_text" || model_type == "gemma4") return "gemma4";
    if (model_type == "qwen3_5_moe_text" || model_type == "qwen3_5_moe") return "qwen35moe";
    return std::string(model_type);
}

// Optional config.json fields with defaults, remembering the first present-but-mistyped one
// (the same policy as GgufKeys).
class HfFields {
public:
    explicit HfFields(const HfConfig& config) : config_(config) {}
    int64_t int_or(std::string_view path, int64_t fallback) { return value_or(config_.get_int_or(path, fallback), fallback); }
    double float_or(std::string_view path, double fallback) {
        return value_or(config_.get_float_or(path, fallback), fallback);
    }
    bool bool_or(std::string_view path, bool fallback) { return value_or(config_.get_bool_or(path, fallback), fallback); }
    const Status& first_error() const { return first_error_; }

private:
    template <class T>
    T value_or(const Result<T>& value, T fallback) {
        if (value.ok()) return *value;
        if (first_error_.ok()) first_error_ = value.status();
        return fallback;
    }

    const HfConfig& config_;
    Status first_error_;
};

Result<std::vector<LayerKind>> hf_layer_kinds(const HfConfig& config, int64_t n_layers, const std::string& source) {
    std::vector<LayerKind> kinds;
    if (config.has("layer_types")) {
        KESTREL_ASSIGN_OR_RETURN(std::vector<std::string> types, config.get_string_array("layer_types"));
        if (static_cast<int64_t>(types.size()) != n_layers) {
            return invalid(source, fmt::format("layer_types has {} entries for {} layers", types.size(), n_layers));
        }
        for (const std::string& type : types) {
            if (type == "sliding_attention") {
                kinds.push_back(LayerKind::kSliding);
            } else if (type == "full_attention") {
                kinds.push_back(LayerKind::kFull);
            } else if (type == "linear_attention") {
                kinds.push_back(LayerKind::kLinear);
            } else {
                return invalid(source, fmt::format("unknown layer type '{}' in layer_types", type));
            }
        }
    }
    return kinds;
}

double hf_rope_theta(HfFields& fields, std::string_view layer_type, double fallback) {
    // transformers 5 nests rope settings per layer type (Gemma) or keeps one dict (Qwen3.5);
    // older configs have a top-level rope_theta, which is the full layers' (Gemma 3 keeps the
    // sliding layers' in rope_local_base_freq).
    std::vector<std::string> paths = {fmt::format("rope_parameters.{}.rope_theta", layer_type)};
    if (layer_type == "full_attention") {
        paths.push_back("rope_parameters.rope_theta");
        paths.push_back("rope_theta");
    }
    for (const std::string& path : paths) {
        const double theta = fields.float_or(path, 0.0);
        if (theta > 0.0) return theta;
    }
    return fallback;
}

}  // namespace

Result<ModelConfig> model_config_from_hf(const HfConfig& hf) {
    const std::string& source = hf.display_name;
    const std::string architecture = architecture_from_model_type(hf.model_type);
    if (!is_supported_architecture(architecture)) return unsupported_architecture(source, hf.model_type);

    HfFields fields(hf);
    ModelConfig config;
    config.architecture = architecture;
    config.name = hf.model_type;
    KESTREL_ASSIGN_OR_RETURN(config.vocab_size, hf.get_int("vocab_size"));
    KESTREL_ASSIGN_OR_RETURN(config.hidden_size, hf.get_int("hidden_size"));
    KESTREL_ASSIGN_OR_RETURN(config.n_layers, hf.get_int("num_hidden_layers"));
    KESTREL_ASSIGN_OR_RETURN(config.n_heads, hf.get_int("num_attention_heads"));
    KESTREL_ASSIGN_OR_RETURN(config.context_length, hf.get_int("max_position_embeddings"));
    KESTREL_ASSIGN_OR_RETURN(int64_t kv_heads, hf.get_int("num_key_value_heads"));
    const int64_t head_dim = fields.int_or("head_dim", config.n_heads > 0 ? config.hidden_size / config.n_heads : 0);
    config.ffn_size = fields.int_or("intermediate_size", 0);
    config.rms_norm_eps = fields.float_or("rms_norm_eps", 1e-6);
    config.final_logit_softcap = fields.float_or("final_logit_softcapping", 0.0);
    if (config.n_layers <= 0 || config.n_layers > 100000) {
        return invalid(source, fmt::format("num_hidden_layers is {}, expected 1 to 100000", config.n_layers));
    }
    KESTREL_ASSIGN_OR_RETURN(std::vector<LayerKind> kinds, hf_layer_kinds(hf, config.n_layers, source));

    if (architecture == "gemma3" || architecture == "gemma4") {
        config.sliding_window = fields.int_or("sliding_window", 0);
        if (kinds.empty()) {  // transformers' default: 5 sliding then 1 full
            const int64_t period = fields.int_or("sliding_window_pattern", 6);
            if (period <= 0) {
                return invalid(source, fmt::format("sliding_window_pattern is {}, expected a positive number", period));
            }
            for (int64_t i = 0; i < config.n_layers; ++i) {
                kinds.push_back((i + 1) % period != 0 ? LayerKind::kSliding : LayerKind::kFull);
            }
        }
        config.rope_theta = hf_rope_theta(fields, "full_attention", 1e6);
        config.rope_theta_sliding = fields.float_or("rope_local_base_freq", hf_rope_theta(fields, "sliding_attention", 1e4));
        // Gemma 4 full layers: global_head_dim and num_global_key_value_heads, or a
        // per_layer_config {"05": {"head_dim": 512, ...}} as transformers 5 writes it.
        const bool k_eq_v = fields.bool_or("attention_k_eq_v", false);
        const int64_t global_head_dim = fields.int_or("global_head_dim", head_dim);
        const int64_t global_kv_heads = fields.int_or("num_global_key_value_heads", kv_heads);
        for (int64_t i = 0; i < config.n_layers; ++i) {
            LayerConfig& layer = config.layers.emplace_back();
            layer.kind = kinds[i];
            const bool full = layer.kind == LayerKind::kFull;
            layer.head_dim = full && architecture == "gemma4" ? global_head_dim : head_dim;
            layer.n_kv_heads = full && architecture == "gemma4" && k_eq_v ? global_kv_heads : kv_heads;
            for (const std::string& index : {fmt::format("{:02}", i), fmt::format("{}", i)}) {
                layer.head_dim = fields.int_or(fmt::format("per_layer_config.{}.head_dim", index), layer.head_dim);
                layer.n_kv_heads =
                    fields.int_or(fmt::format("per_layer_config.{}.num_key_value_heads", index), layer.n_kv_heads);
            }
            layer.v_head_dim = layer.head_dim;
            layer.k_eq_v = full && k_eq_v && architecture == "gemma4";
        }
    } else {  // qwen35moe
        if (kinds.empty()) {
            const int64_t interval = fields.int_or("full_attention_interval", 4);
            if (interval <= 0) {
                return invalid(source, fmt::format("full_attention_interval is {}, expected a positive number", interval));
            }
            for (int64_t i = 0; i < config.n_layers; ++i) {
                kinds.push_back((i + 1) % interval == 0 ? LayerKind::kFull : LayerKind::kLinear);
            }
        }
        config.rope_theta = config.rope_theta_sliding = hf_rope_theta(fields, "full_attention", 1e7);
        config.n_experts = fields.int_or("num_experts", 0);
        config.n_experts_used = fields.int_or("num_experts_per_tok", 0);
        config.expert_ffn_size = fields.int_or("moe_intermediate_size", 0);
        config.shared_expert_ffn_size = fields.int_or("shared_expert_intermediate_size", 0);
        config.linear_conv_kernel = fields.int_or("linear_conv_kernel_dim", 0);
        config.linear_k_heads = fields.int_or("linear_num_key_heads", 0);
        config.linear_v_heads = fields.int_or("linear_num_value_heads", 0);
        config.linear_k_head_dim = fields.int_or("linear_key_head_dim", 0);
        config.linear_v_head_dim = fields.int_or("linear_value_head_dim", 0);
        // transformers 5 keeps partial_rotary_factor in rope_parameters; older configs at the top level.
        const double rotary_factor =
            fields.float_or("rope_parameters.partial_rotary_factor", fields.float_or("partial_rotary_factor", 1.0));
        config.rope_dim = static_cast<int64_t>(static_cast<double>(head_dim) * rotary_factor);
        for (int64_t i = 0; i < config.n_layers; ++i) {
            LayerConfig& layer = config.layers.emplace_back();
            layer.kind = kinds[i];
            layer.n_kv_heads = kv_heads;
            layer.head_dim = layer.v_head_dim = head_dim;
        }
    }
    KESTREL_RETURN_IF_ERROR(fields.first_error());
    KESTREL_RETURN_IF_ERROR(check_config(config, source));
    return config;
}

}  // namespace kestrel
