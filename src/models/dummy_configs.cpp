#include "models/dummy_configs.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "core/printable.h"

namespace kestrel {

namespace {

using Json = nlohmann::ordered_json;

// layer_types with "full_attention" at every `period`-th layer (i + 1 divisible by it).
Json layer_types(int n_layers, int period, const char* other) {
    Json types = Json::array();
    for (int i = 0; i < n_layers; ++i) types.push_back((i + 1) % period == 0 ? "full_attention" : other);
    return types;
}

// Gemma 4 31B (gemma4-and-gemma3.md §1): Gemma4ForConditionalGeneration, the text model nested.
Json gemma4_31b() {
    Json text = {
        {"model_type", "gemma4_text"},
        {"vocab_size", 262144},
        {"hidden_size", 5376},
        {"intermediate_size", 21504},
        {"num_hidden_layers", 60},
        {"num_attention_heads", 32},
        {"num_key_value_heads", 16},
        {"head_dim", 256},
        {"num_global_key_value_heads", 4},
        {"global_head_dim", 512},
        {"attention_k_eq_v", true},
        {"sliding_window", 1024},
        {"layer_types", layer_types(60, 6, "sliding_attention")},
        {"rope_parameters",
         {{"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
          {"full_attention",
           {{"rope_type", "proportional"}, {"partial_rotary_factor", 0.25}, {"rope_theta", 1000000.0}}}}},
        {"rms_norm_eps", 1e-6},
        {"final_logit_softcapping", 30.0},
        {"hidden_activation", "gelu_pytorch_tanh"},
        {"tie_word_embeddings", true},
        {"max_position_embeddings", 262144},
        {"hidden_size_per_layer_input", 0},
        {"num_kv_shared_layers", 0},
        {"enable_moe_block", false},
        {"use_double_wide_mlp", false},
        {"attention_bias", false},
        {"bos_token_id", 2},
        {"eos_token_id", {1, 106}},
        {"pad_token_id", 0},
    };
    return {{"architectures", {"Gemma4ForConditionalGeneration"}},
            {"model_type", "gemma4"},
            {"text_config", std::move(text)},
            {"vision_config", {{"model_type", "gemma4_vision"}, {"hidden_size", 1152}}}};
}

// Qwen3.5-35B-A3B (qwen35-moe.md §1.1): Qwen3_5MoeForConditionalGeneration, the text model nested.
Json qwen35_35b_a3b() {
    Json text = {
        {"model_type", "qwen3_5_moe_text"},
        {"vocab_size", 248320},
        {"hidden_size", 2048},
        {"num_hidden_layers", 40},
        {"num_attention_heads", 16},
        {"num_key_value_heads", 2},
        {"head_dim", 256},
        {"full_attention_interval", 4},
        {"layer_types", layer_types(40, 4, "linear_attention")},
        {"linear_num_key_heads", 16},
        {"linear_num_value_heads", 32},
        {"linear_key_head_dim", 128},
        {"linear_value_head_dim", 128},
        {"linear_conv_kernel_dim", 4},
        {"num_experts", 256},
        {"num_experts_per_tok", 8},
        {"moe_intermediate_size", 512},
        {"shared_expert_intermediate_size", 512},
        {"rms_norm_eps", 1e-6},
        {"rope_parameters",
         {{"rope_type", "default"},
          {"rope_theta", 10000000},
          {"partial_rotary_factor", 0.25},
          {"mrope_section", {11, 11, 10}},
          {"mrope_interleaved", true}}},
        {"max_position_embeddings", 262144},
        {"mtp_num_hidden_layers", 1},
        {"tie_word_embeddings", false},
        {"hidden_act", "silu"},
    };
    return {{"architectures", {"Qwen3_5MoeForConditionalGeneration"}},
            {"model_type", "qwen3_5_moe"},
            {"text_config", std::move(text)},
            {"vision_config", {{"model_type", "qwen3_5_moe"}, {"hidden_size", 1152}}}};
}

// Gemma 3 270M (gemma4-and-gemma3.md §8.1): a text-only Gemma3ForCausalLM, nothing nested.
Json gemma3_270m() {
    return {
        {"architectures", {"Gemma3ForCausalLM"}},
        {"model_type", "gemma3_text"},
        {"vocab_size", 262144},
        {"hidden_size", 640},
        {"intermediate_size", 2048},
        {"num_hidden_layers", 18},
        {"num_attention_heads", 4},
        {"num_key_value_heads", 1},
        {"head_dim", 256},
        {"query_pre_attn_scalar", 256},
        {"sliding_window", 512},
        {"layer_types", layer_types(18, 6, "sliding_attention")},
        {"rope_theta", 1000000.0},
        {"rope_local_base_freq", 10000.0},
        {"rope_scaling", nullptr},
        {"rms_norm_eps", 1e-6},
        {"attn_logit_softcapping", nullptr},
        {"final_logit_softcapping", nullptr},
        {"hidden_activation", "gelu_pytorch_tanh"},
        {"tie_word_embeddings", true},
        {"max_position_embeddings", 32768},
        {"attention_bias", false},
        {"bos_token_id", 2},
        {"eos_token_id", 1},
        {"pad_token_id", 0},
    };
}

struct DummyModel {
    std::string_view name;
    Json (*config)();
};

constexpr DummyModel kDummyModels[] = {
    {"gemma4-31b", gemma4_31b},
    {"qwen3.5-35b-a3b", qwen35_35b_a3b},
    {"gemma3-270m", gemma3_270m},
};

}  // namespace

std::vector<std::string_view> dummy_model_names() {
    std::vector<std::string_view> names;
    for (const DummyModel& model : kDummyModels) names.push_back(model.name);
    return names;
}

Result<std::string> dummy_config_json(std::string_view name) {
    for (const DummyModel& model : kDummyModels) {
        if (model.name == name) return model.config().dump(2) + "\n";
    }
    return Status(StatusCode::kNotFound, fmt::format("unknown dummy model '{}' (known: {})", printable(name),
                                                     fmt::join(dummy_model_names(), ", ")));
}

}  // namespace kestrel
