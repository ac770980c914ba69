// The two full-size target models as tests see them, without their gigabytes: config.json
// objects, GGUF metadata and shape-only tensor tables, all written from the specs this project
// did not write:
//   Gemma 4 31B      ../shared/specs/gemma4-and-gemma3.md §1 (config), §1.1 (shapes), §7.1 (GGUF)
//   Qwen3.5-35B-A3B  ../shared/specs/qwen35-moe.md §1.1 (config), §1.2 (shapes)
//   both             ../shared/specs/gguf-layouts.md (GGUF tensor tables and metadata keys)
// Shared by model_config_test.cpp, memory_plan_test.cpp and memory_plan_tq4_test.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "io/gguf_writer.h"
#include "io/hf_config.h"
#include "io/weight_source.h"
#include "models/model_config.h"

namespace kestrel::test_support {

// The engine's config of a config.json object (a failed parse fails the test and gives {}).
inline ModelConfig config_from_json(const nlohmann::json& config_json) {
    Result<HfConfig> hf = HfConfig::parse(config_json.dump(), "test/config.json");
    EXPECT_TRUE(hf.ok()) << hf.status().message();
    if (!hf.ok()) return {};
    Result<ModelConfig> config = model_config_from_hf(*hf);
    EXPECT_TRUE(config.ok()) << config.status().message();
    return config.ok() ? *config : ModelConfig{};
}

// A WeightSource that lists tensors (name, dtype, shape) and holds no bytes.
class FakeWeightSource : public WeightSource {
public:
    // `shape` is row-major, outermost first (PyTorch order; a GGUF `ne` reversed).
    void add(std::string name, DType dtype, std::vector<int64_t> shape) {
        const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
        const DTypeInfo& info = dtype_info(dtype);
        tensors_.push_back(WeightInfo{std::move(name), dtype, std::move(shape), n, n / info.block_elements * info.block_bytes});
    }

    std::string description() const override { return "fake weight source (shapes only)"; }
    std::span<const WeightInfo> tensors() const override { return tensors_; }
    std::span<const uint8_t> bytes(const WeightInfo&) const override { return {}; }

    // Over every listed tensor, loaded by the engine or not.
    int64_t all_elements() const {
        int64_t n = 0;
        for (const WeightInfo& tensor : tensors_) n += tensor.n_elements;
        return n;
    }
    int64_t all_bytes() const {
        int64_t n = 0;
        for (const WeightInfo& tensor : tensors_) n += tensor.n_bytes;
        return n;
    }

private:
    std::vector<WeightInfo> tensors_;
};

// llama-quant.cpp's `use_more_bits`: the layers Q4_K_M gives Q6_K (gemma4-and-gemma3.md §7.4).
inline bool q4_k_m_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// ---- Gemma 4 31B ----------------------------------------------------------------------------------

constexpr int64_t kGemma4Layers = 60;
constexpr int64_t kGemma4Hidden = 5376;
constexpr int64_t kGemma4Ffn = 21504;
constexpr int64_t kGemma4Vocab = 262144;
inline bool gemma4_is_full(int64_t i) { return (i + 1) % 6 == 0; }  // §1: i = 5, 11, ..., 59

// The text config of §1, as config.json's "text_config" holds it (31B values, pre-transformers-5
// spelling with global_head_dim / num_global_key_value_heads).
inline nlohmann::json gemma4_31b_text_config() {
    nlohmann::json layer_types = nlohmann::json::array();
    for (int64_t i = 0; i < kGemma4Layers; ++i) layer_types.push_back(gemma4_is_full(i) ? "full_attention" : "sliding_attention");
    return {
        {"model_type", "gemma4_text"},
        {"vocab_size", kGemma4Vocab},
        {"hidden_size", kGemma4Hidden},
        {"intermediate_size", kGemma4Ffn},
        {"num_hidden_layers", kGemma4Layers},
        {"num_attention_heads", 32},
        {"num_key_value_heads", 16},
        {"head_dim", 256},
        {"num_global_key_value_heads", 4},
        {"global_head_dim", 512},
        {"attention_k_eq_v", true},
        {"sliding_window", 1024},
        {"layer_types", layer_types},
        {"rope_parameters",
         {{"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
          {"full_attention", {{"rope_type", "proportional"}, {"partial_rotary_factor", 0.25}, {"rope_theta", 1000000.0}}}}},
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
}

// The multimodal checkpoint's config.json: text_config nested, a vision tower beside it.
inline nlohmann::json gemma4_31b_config_json(nlohmann::json text_config = gemma4_31b_text_config()) {
    return {{"architectures", {"Gemma4ForConditionalGeneration"}},
            {"model_type", "gemma4"},
            {"text_config", std::move(text_config)},
            {"vision_config", {{"model_type", "gemma4_vision"}, {"hidden_size", 1152}}}};
}

// The same model as transformers 5 spells the full layers: a per_layer_config keyed by the
// zero-padded layer index instead of global_head_dim / num_global_key_value_heads.
inline nlohmann::json gemma4_31b_text_config_per_layer() {
    nlohmann::json text = gemma4_31b_text_config();
    text.erase("global_head_dim");
    text.erase("num_global_key_value_heads");
    nlohmann::json per_layer = nlohmann::json::object();
    for (int64_t i = 0; i < kGemma4Layers; ++i) {
        if (gemma4_is_full(i)) per_layer[fmt::format("{:02}", i)] = {{"head_dim", 512}, {"num_key_value_heads", 4}};
    }
    text["per_layer_config"] = per_layer;
    return text;
}

// gguf-layouts.md "gemma4" metadata (and gemma4-and-gemma3.md §7.1), no tensors.
inline void gemma4_31b_gguf_metadata(GgufWriter& writer) {
    std::vector<uint32_t> kv_heads;
    std::vector<bool> sliding;
    for (int64_t i = 0; i < kGemma4Layers; ++i) {
        kv_heads.push_back(gemma4_is_full(i) ? 4 : 16);
        sliding.push_back(!gemma4_is_full(i));
    }
    writer.set("general.architecture", gguf_string("gemma4"));
    writer.set("general.name", gguf_string("Gemma 4 31B It"));
    writer.set("gemma4.block_count", gguf_u32(60));
    writer.set("gemma4.context_length", gguf_u32(262144));
    writer.set("gemma4.embedding_length", gguf_u32(5376));
    writer.set("gemma4.feed_forward_length", gguf_u32(21504));
    writer.set("gemma4.attention.head_count", gguf_u32(32));
    writer.set("gemma4.attention.head_count_kv", gguf_u32_array(kv_heads));
    writer.set("gemma4.attention.key_length", gguf_u32(512));
    writer.set("gemma4.attention.value_length", gguf_u32(512));
    writer.set("gemma4.attention.key_length_swa", gguf_u32(256));
    writer.set("gemma4.attention.value_length_swa", gguf_u32(256));
    writer.set("gemma4.rope.dimension_count", gguf_u32(512));
    writer.set("gemma4.rope.dimension_count_swa", gguf_u32(256));
    writer.set("gemma4.rope.freq_base", gguf_f32(1e6f));
    writer.set("gemma4.rope.freq_base_swa", gguf_f32(1e4f));
    writer.set("gemma4.attention.layer_norm_rms_epsilon", gguf_f32(1e-6f));
    writer.set("gemma4.final_logit_softcapping", gguf_f32(30.0f));
    writer.set("gemma4.attention.sliding_window", gguf_u32(1024));
    writer.set("gemma4.attention.sliding_window_pattern", gguf_bool_array(sliding));
    writer.set("gemma4.attention.shared_kv_layers", gguf_u32(0));
    writer.set("gemma4.embedding_length_per_layer_input", gguf_u32(0));
    writer.set("tokenizer.ggml.model", gguf_string("gemma4"));
    writer.set("tokenizer.ggml.tokens", gguf_string_array(std::vector<std::string>(kGemma4Vocab)));
}

// gguf-layouts.md "gemma4": the 833 tensors of the Q4_K_M file (shapes there are ggml `ne`,
// reversed here). Q6_K where llama-quant's Q4_K_M rules put it (§7.4).
inline FakeWeightSource gemma4_31b_gguf_weights() {
    FakeWeightSource w;
    const int64_t d = kGemma4Hidden;
    w.add("token_embd.weight", DType::kQ6_K, {kGemma4Vocab, d});
    w.add("output_norm.weight", DType::kF32, {d});
    w.add("rope_freqs.weight", DType::kF32, {256});
    int64_t v_index = 0;
    for (int64_t i = 0; i < kGemma4Layers; ++i) {
        const bool full = gemma4_is_full(i);
        const int64_t q = full ? 16384 : 8192, k = full ? 2048 : 4096, head_dim = full ? 512 : 256;
        const auto name = [&](const char* t) { return fmt::format("blk.{}.{}.weight", i, t); };
        for (const char* norm : {"attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"}) {
            w.add(name(norm), DType::kF32, {d});
        }
        w.add(name("attn_q"), DType::kQ4_K, {q, d});
        w.add(name("attn_k"), DType::kQ4_K, {k, d});
        if (!full) w.add(name("attn_v"), q4_k_m_more_bits(v_index++, 50) ? DType::kQ6_K : DType::kQ4_K, {4096, d});
        w.add(name("attn_q_norm"), DType::kF32, {head_dim});
        w.add(name("attn_k_norm"), DType::kF32, {head_dim});
        w.add(name("attn_output"), DType::kQ4_K, {d, q});
        w.add(name("ffn_gate"), DType::kQ4_K, {kGemma4Ffn, d});
        w.add(name("ffn_up"), DType::kQ4_K, {kGemma4Ffn, d});
        w.add(name("ffn_down"), q4_k_m_more_bits(i, kGemma4Layers) ? DType::kQ6_K : DType::kQ4_K, {d, kGemma4Ffn});
        w.add(name("layer_output_scale"), DType::kF32, {1});
    }
    return w;
}

// The same model as a Hugging Face bf16 checkpoint (§1.1 shapes, HF names as §7.1 maps them),
// with vision-tower tensors the engine does not load.
inline FakeWeightSource gemma4_31b_hf_weights() {
    FakeWeightSource w;
    const int64_t d = kGemma4Hidden;
    w.add("model.language_model.embed_tokens.weight", DType::kBF16, {kGemma4Vocab, d});
    w.add("model.language_model.norm.weight", DType::kBF16, {d});
    for (int64_t i = 0; i < kGemma4Layers; ++i) {
        const bool full = gemma4_is_full(i);
        const int64_t q = full ? 16384 : 8192, k = full ? 2048 : 4096, head_dim = full ? 512 : 256;
        const auto name = [&](const char* t) { return fmt::format("model.language_model.layers.{}.{}", i, t); };
        for (const char* norm : {"input_layernorm.weight", "post_attention_layernorm.weight",
                                 "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"}) {
            w.add(name(norm), DType::kBF16, {d});
        }
        w.add(name("self_attn.q_proj.weight"), DType::kBF16, {q, d});
        w.add(name("self_attn.k_proj.weight"), DType::kBF16, {k, d});
        if (!full) w.add(name("self_attn.v_proj.weight"), DType::kBF16, {4096, d});
        w.add(name("self_attn.o_proj.weight"), DType::kBF16, {d, q});
        w.add(name("self_attn.q_norm.weight"), DType::kBF16, {head_dim});
        w.add(name("self_attn.k_norm.weight"), DType::kBF16, {head_dim});
        w.add(name("mlp.gate_proj.weight"), DType::kBF16, {kGemma4Ffn, d});
        w.add(name("mlp.up_proj.weight"), DType::kBF16, {kGemma4Ffn, d});
        w.add(name("mlp.down_proj.weight"), DType::kBF16, {d, kGemma4Ffn});
        w.add(name("layer_scalar"), DType::kBF16, {1});
    }
    w.add("model.vision_tower.encoder.layers.0.self_attn.q_proj.weight", DType::kBF16, {1152, 1152});
    w.add("model.vision_tower.encoder.layers.0.mlp.fc1.weight", DType::kBF16, {4304, 1152});
    w.add("model.embed_vision.embedding_projection.weight", DType::kBF16, {d, 1152});
    return w;
}

// ---- Qwen3.5-35B-A3B -----------------------------------------------------------------------------

constexpr int64_t kQwenLayers = 40;
constexpr int64_t kQwenHidden = 2048;
constexpr int64_t kQwenVocab = 248320;
inline bool qwen_is_full(int64_t i) { return (i + 1) % 4 == 0; }  // §1.1: i = 3, 7, ..., 39

// qwen35-moe.md §1.1 as config.json's "text_config".
inline nlohmann::json qwen35_text_config() {
    nlohmann::json layer_types = nlohmann::json::array();
    for (int64_t i = 0; i < kQwenLayers; ++i) layer_types.push_back(qwen_is_full(i) ? "full_attention" : "linear_attention");
    return {
        {"model_type", "qwen3_5_moe_text"},
        {"vocab_size", kQwenVocab},
        {"hidden_size", kQwenHidden},
        {"num_hidden_layers", kQwenLayers},
        {"num_attention_heads", 16},
        {"num_key_value_heads", 2},
        {"head_dim", 256},
        {"full_attention_interval", 4},
        {"layer_types", layer_types},
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
}

inline nlohmann::json qwen35_config_json(nlohmann::json text_config = qwen35_text_config()) {
    return {{"architectures", {"Qwen3_5MoeForConditionalGeneration"}},
            {"model_type", "qwen3_5_moe"},
            {"text_config", std::move(text_config)},
            {"vision_config", {{"model_type", "qwen3_5_moe"}, {"hidden_size", 1152}}}};
}

// gguf-layouts.md "qwen35moe" metadata, for the file that carries the MTP block (block_count 41).
inline void qwen35_gguf_metadata(GgufWriter& writer) {
    writer.set("general.architecture", gguf_string("qwen35moe"));
    writer.set("general.name", gguf_string("Qwen3.5-35B-A3B"));
    writer.set("qwen35moe.block_count", gguf_u32(41));
    writer.set("qwen35moe.nextn_predict_layers", gguf_u32(1));
    writer.set("qwen35moe.context_length", gguf_u32(262144));
    writer.set("qwen35moe.embedding_length", gguf_u32(2048));
    writer.set("qwen35moe.attention.head_count", gguf_u32(16));
    writer.set("qwen35moe.attention.head_count_kv", gguf_u32(2));
    writer.set("qwen35moe.attention.key_length", gguf_u32(256));
    writer.set("qwen35moe.attention.value_length", gguf_u32(256));
    writer.set("qwen35moe.rope.dimension_count", gguf_u32(64));
    writer.set("qwen35moe.rope.dimension_sections", gguf_i32_array({11, 11, 10, 0}));
    writer.set("qwen35moe.rope.freq_base", gguf_f32(1e7f));
    writer.set("qwen35moe.attention.layer_norm_rms_epsilon", gguf_f32(1e-6f));
    writer.set("qwen35moe.expert_count", gguf_u32(256));
    writer.set("qwen35moe.expert_used_count", gguf_u32(8));
    writer.set("qwen35moe.expert_feed_forward_length", gguf_u32(512));
    writer.set("qwen35moe.expert_shared_feed_forward_length", gguf_u32(512));
    writer.set("qwen35moe.ssm.conv_kernel", gguf_u32(4));
    writer.set("qwen35moe.ssm.state_size", gguf_u32(128));
    writer.set("qwen35moe.ssm.group_count", gguf_u32(16));
    writer.set("qwen35moe.ssm.time_step_rank", gguf_u32(32));
    writer.set("qwen35moe.ssm.inner_size", gguf_u32(4096));
    writer.set("qwen35moe.full_attention_interval", gguf_u32(4));
    writer.set("tokenizer.ggml.model", gguf_string("gpt2"));
    writer.set("tokenizer.ggml.pre", gguf_string("qwen35"));
    writer.set("tokenizer.ggml.tokens", gguf_string_array(std::vector<std::string>(kQwenVocab)));
}

// gguf-layouts.md "qwen35moe": the 753 tensors including the MTP block blk.40 (shapes as
// qwen35-moe.md §1.2 derives them; ggml `ne` reversed here).
inline FakeWeightSource qwen35_gguf_weights() {
    FakeWeightSource w;
    const int64_t d = kQwenHidden;
    w.add("token_embd.weight", DType::kQ4_K, {kQwenVocab, d});
    w.add("output.weight", DType::kQ6_K, {kQwenVocab, d});  // untied
    w.add("output_norm.weight", DType::kF32, {d});
    for (int64_t i = 0; i <= kQwenLayers; ++i) {  // blk.40 is the MTP block
        const bool full = i == kQwenLayers || qwen_is_full(i);
        const auto name = [&](const char* t) { return fmt::format("blk.{}.{}", i, t); };
        w.add(name("attn_norm.weight"), DType::kF32, {d});
        w.add(name("post_attention_norm.weight"), DType::kF32, {d});
        w.add(name("ffn_gate_inp.weight"), DType::kF32, {256, d});
        w.add(name("ffn_gate_exps.weight"), DType::kQ4_K, {256, 512, d});
        w.add(name("ffn_up_exps.weight"), DType::kQ4_K, {256, 512, d});
        w.add(name("ffn_down_exps.weight"), q4_k_m_more_bits(i, kQwenLayers) ? DType::kQ6_K : DType::kQ4_K, {256, d, 512});
        w.add(name("ffn_gate_shexp.weight"), DType::kQ4_K, {512, d});
        w.add(name("ffn_up_shexp.weight"), DType::kQ4_K, {512, d});
        w.add(name("ffn_down_shexp.weight"), DType::kQ6_K, {d, 512});
        w.add(name("ffn_gate_inp_shexp.weight"), DType::kF32, {1, d});
        if (full) {
            w.add(name("attn_q.weight"), DType::kQ4_K, {8192, d});  // q and output gate
            w.add(name("attn_k.weight"), DType::kQ4_K, {512, d});
            w.add(name("attn_v.weight"), DType::kQ6_K, {512, d});
            w.add(name("attn_q_norm.weight"), DType::kF32, {256});
            w.add(name("attn_k_norm.weight"), DType::kF32, {256});
            w.add(name("attn_output.weight"), DType::kQ4_K, {d, 4096});
        } else {
            w.add(name("attn_qkv.weight"), DType::kQ6_K, {8192, d});
            w.add(name("attn_gate.weight"), DType::kQ4_K, {4096, d});
            w.add(name("ssm_beta.weight"), DType::kQ4_K, {32, d});
            w.add(name("ssm_alpha.weight"), DType::kQ4_K, {32, d});
            w.add(name("ssm_conv1d.weight"), DType::kF32, {8192, 4});
            w.add(name("ssm_dt.bias"), DType::kF32, {32});
            w.add(name("ssm_a"), DType::kF32, {32});
            w.add(name("ssm_norm.weight"), DType::kF32, {128});
            w.add(name("ssm_out.weight"), DType::kQ4_K, {d, 4096});
        }
        if (i == kQwenLayers) {
            w.add(name("nextn.eh_proj.weight"), DType::kQ4_K, {d, 4096});
            w.add(name("nextn.enorm.weight"), DType::kF32, {d});
            w.add(name("nextn.hnorm.weight"), DType::kF32, {d});
            w.add(name("nextn.shared_head_norm.weight"), DType::kF32, {d});
        }
    }
    return w;
}

}  // namespace kestrel::test_support
