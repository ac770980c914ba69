// Tensor tables of the architectures we run, as llama.cpp's converter names them
// (../shared/specs/gguf-layouts.md; gemma4-and-gemma3.md §7.1-7.2, qwen35-moe.md §1.2) and as
// the loaders in gemma3.cpp, gemma4.cpp and qwen35_moe.cpp read them.
#include "models/model_shapes.h"

#include <fmt/format.h>

#include <functional>
#include <numeric>

namespace kestrel {

namespace {

bool is_block_type(DType type) { return dtype_info(type).block_elements > 1; }

class TableBuilder {
public:
    explicit TableBuilder(DType matrix_type) : matrix_type_(matrix_type) {}

    // A 1-D norm, bias or scalar: F32.
    void vector(std::string name, int64_t n) { add(std::move(name), DType::kF32, {n}); }

    // A matrix llama.cpp quantises; rows (the last dimension) must hold whole blocks.
    void matrix(std::string name, std::vector<int64_t> shape) {
        DType type = matrix_type_;
        const DTypeInfo& info = dtype_info(type);
        if (shape.back() % info.block_elements != 0) {
            // llama-quant's fallback for rows a k-quant block does not divide (Gemma 3 270M's 640).
            const bool narrow = 16 * info.block_bytes <= 9 * info.block_elements;  // <= 4.5 bits/weight
            type = narrow ? DType::kQ4_0 : DType::kQ8_0;
            if (shape.back() % dtype_info(type).block_elements != 0) type = DType::kF16;
        }
        add(std::move(name), type, std::move(shape));
    }

    // A small 2-D tensor llama.cpp keeps in F32 (router, shared-expert gate, conv1d).
    void small_matrix(std::string name, std::vector<int64_t> shape) {
        add(std::move(name), is_block_type(matrix_type_) ? DType::kF32 : matrix_type_, std::move(shape));
    }

    std::vector<WeightInfo> take() { return std::move(tensors_); }

private:
    void add(std::string name, DType type, std::vector<int64_t> shape) {
        tensors_.push_back(make_weight_info(std::move(name), type, std::move(shape)));
    }

    DType matrix_type_;
    std::vector<WeightInfo> tensors_;
};

std::string blk(int64_t layer, std::string_view tensor) { return fmt::format("blk.{}.{}", layer, tensor); }

// gemma3 and gemma4: four norms around attention and MLP, QK-norm, tied embeddings.
void gemma_tensors(const ModelConfig& config, TableBuilder& t) {
    const int64_t d = config.hidden_size, f = config.ffn_size;
    const bool gemma4 = config.architecture == "gemma4";
    t.matrix("token_embd.weight", {config.vocab_size, d});
    t.vector("output_norm.weight", d);
    if (gemma4) {
        // Frequency factors of the full layers' proportional RoPE: one per pair of the full head dim.
        for (const LayerConfig& layer : config.layers) {
            if (layer.kind != LayerKind::kFull) continue;
            t.vector("rope_freqs.weight", layer.head_dim / 2);
            break;
        }
    }
    for (int64_t i = 0; i < config.n_layers; ++i) {
        const LayerConfig& layer = config.layers[static_cast<size_t>(i)];
        const int64_t q = config.n_heads * layer.head_dim, kv = layer.n_kv_heads * layer.head_dim;
        t.vector(blk(i, "attn_norm.weight"), d);
        t.matrix(blk(i, "attn_q.weight"), {q, d});
        t.matrix(blk(i, "attn_k.weight"), {kv, d});
        if (!layer.k_eq_v) t.matrix(blk(i, "attn_v.weight"), {layer.n_kv_heads * layer.v_head_dim, d});
        t.vector(blk(i, "attn_q_norm.weight"), layer.head_dim);
        t.vector(blk(i, "attn_k_norm.weight"), layer.head_dim);
        t.matrix(blk(i, "attn_output.weight"), {d, config.n_heads * layer.v_head_dim});
        t.vector(blk(i, "post_attention_norm.weight"), d);
        t.vector(blk(i, "ffn_norm.weight"), d);
        t.matrix(blk(i, "ffn_gate.weight"), {f, d});
        t.matrix(blk(i, "ffn_up.weight"), {f, d});
        t.matrix(blk(i, "ffn_down.weight"), {d, f});
        t.vector(blk(i, "post_ffw_norm.weight"), d);
        if (gemma4) t.vector(blk(i, "layer_output_scale.weight"), 1);
    }
}

// qwen35moe: Gated DeltaNet or gated full attention, then a routed MoE with a gated shared expert.
void qwen35moe_tensors(const ModelConfig& config, TableBuilder& t) {
    const int64_t d = config.hidden_size;
    const int64_t n_exp = config.n_experts, f = config.expert_ffn_size, fs = config.shared_expert_ffn_size;
    const int64_t nv = config.linear_v_heads;
    const int64_t value_dim = nv * config.linear_v_head_dim;
    const int64_t conv_dim = 2 * config.linear_k_heads * config.linear_k_head_dim + value_dim;
    t.matrix("token_embd.weight", {config.vocab_size, d});
    t.matrix("output.weight", {config.vocab_size, d});  // untied
    t.vector("output_norm.weight", d);
    for (int64_t i = 0; i < config.n_layers; ++i) {
        const LayerConfig& layer = config.layers[static_cast<size_t>(i)];
        t.vector(blk(i, "attn_norm.weight"), d);
        t.vector(blk(i, "post_attention_norm.weight"), d);
        if (layer.kind == LayerKind::kLinear) {
            t.matrix(blk(i, "attn_qkv.weight"), {conv_dim, d});
            t.matrix(blk(i, "attn_gate.weight"), {value_dim, d});
            t.matrix(blk(i, "ssm_beta.weight"), {nv, d});
            t.matrix(blk(i, "ssm_alpha.weight"), {nv, d});
            t.small_matrix(blk(i, "ssm_conv1d.weight"), {conv_dim, config.linear_conv_kernel});
            t.vector(blk(i, "ssm_dt.bias"), nv);
            t.vector(blk(i, "ssm_a"), nv);
            t.vector(blk(i, "ssm_norm.weight"), config.linear_v_head_dim);
            t.matrix(blk(i, "ssm_out.weight"), {d, value_dim});
        } else {
            const int64_t q = config.n_heads * layer.head_dim;
            t.matrix(blk(i, "attn_q.weight"), {2 * q, d});  // query and output gate, per head
            t.matrix(blk(i, "attn_k.weight"), {layer.n_kv_heads * layer.head_dim, d});
            t.matrix(blk(i, "attn_v.weight"), {layer.n_kv_heads * layer.v_head_dim, d});
            t.vector(blk(i, "attn_q_norm.weight"), layer.head_dim);
            t.vector(blk(i, "attn_k_norm.weight"), layer.head_dim);
            t.matrix(blk(i, "attn_output.weight"), {d, config.n_heads * layer.v_head_dim});
        }
        t.small_matrix(blk(i, "ffn_gate_inp.weight"), {n_exp, d});
        t.matrix(blk(i, "ffn_gate_exps.weight"), {n_exp, f, d});
        t.matrix(blk(i, "ffn_up_exps.weight"), {n_exp, f, d});
        t.matrix(blk(i, "ffn_down_exps.weight"), {n_exp, d, f});
        t.matrix(blk(i, "ffn_gate_shexp.weight"), {fs, d});
        t.matrix(blk(i, "ffn_up_shexp.weight"), {fs, d});
        t.matrix(blk(i, "ffn_down_shexp.weight"), {d, fs});
        t.small_matrix(blk(i, "ffn_gate_inp_shexp.weight"), {1, d});
    }
}

}  // namespace

WeightInfo make_weight_info(std::string name, DType dtype, std::vector<int64_t> shape) {
    const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
    const DTypeInfo& info = dtype_info(dtype);
    return WeightInfo{std::move(name), dtype, std::move(shape), n, n / info.block_elements * info.block_bytes};
}

std::vector<WeightInfo> model_tensor_shapes(const ModelConfig& config, DType matrix_type) {
    TableBuilder table(matrix_type);
    if (static_cast<int64_t>(config.layers.size()) != config.n_layers) return {};
    if (config.architecture == "gemma3" || config.architecture == "gemma4") {
        gemma_tensors(config, table);
    } else if (config.architecture == "qwen35moe") {
        qwen35moe_tensors(config, table);
    }
    return table.take();
}

}  // namespace kestrel
