// The hyper-parameters of a model, read from GGUF metadata or a Hugging Face config.json,
// in one shape for every architecture we run. Names follow the papers and HF configs; the
// GGUF keys each field comes from are in model_config.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/hf_config.h"
#include "kestrel/status.h"

namespace kestrel {

enum class LayerKind {
    kSliding,  // softmax attention over the last `sliding_window` positions
    kFull,     // softmax attention over every earlier position
    kLinear,   // Gated DeltaNet: a fixed-size recurrent state instead of a KV cache
};

char layer_kind_letter(LayerKind kind);  // 'S', 'F', 'L'

struct LayerConfig {
    LayerKind kind;
    int64_t n_kv_heads = 0;  // attention layers
    int64_t head_dim = 0;    // of q and k
    int64_t v_head_dim = 0;
    bool k_eq_v = false;     // Gemma 4 full layers: V is the k projection (no v_proj)
};

struct ModelConfig {
    std::string architecture;  // GGUF spelling: "gemma3", "gemma4", "qwen35moe"
    std::string name;          // general.name or the HF model_type, for display
    int64_t vocab_size = 0;
    int64_t hidden_size = 0;       // d_model
    int64_t ffn_size = 0;          // dense MLP intermediate size (0 for MoE-only models)
    int64_t n_layers = 0;
    int64_t n_heads = 0;           // query heads of the attention layers
    int64_t context_length = 0;    // trained maximum
    int64_t sliding_window = 0;    // 0 when no layer slides
    std::vector<LayerConfig> layers;  // [n_layers]

    // Mixture of experts (Qwen3.5-MoE); zero for dense models.
    int64_t n_experts = 0;
    int64_t n_experts_used = 0;
    int64_t expert_ffn_size = 0;
    int64_t shared_expert_ffn_size = 0;

    // Gated DeltaNet layers (Qwen3.5); zero when there are none.
    int64_t linear_conv_kernel = 0;
    int64_t linear_k_heads = 0;
    int64_t linear_v_heads = 0;
    int64_t linear_k_head_dim = 0;
    int64_t linear_v_head_dim = 0;

    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;          // full-attention layers
    double rope_theta_sliding = 10000.0;  // sliding layers
    int64_t rope_dim = 0;                 // rotated dims of each head (partial RoPE, Qwen3.5: 64 of 256); 0: all
    double final_logit_softcap = 0.0;     // 0: none

    int64_t count_layers(LayerKind kind) const;
    // "SSSSSF SSSSSF ...": one letter per layer, grouped by the pattern's period when it has one.
    std::string layer_pattern() const;
};

// The architectures Kestrel runs, in GGUF spelling.
bool is_supported_architecture(std::string_view architecture);

// kUnsupported names the architecture; kCorruptFile/kNotFound name the key that is wrong.
Result<ModelConfig> model_config_from_gguf(const GgufFile& file);
Result<ModelConfig> model_config_from_hf(const HfConfig& config);

}  // namespace kestrel
