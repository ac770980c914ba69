// Gemma 3 (text): weights and forward pass. Follows HF transformers' Gemma3ForCausalLM
// (modeling_gemma3.py) and llama.cpp's src/models/gemma3.cpp; spec: shared/specs/
// gemma4-and-gemma3.md §2 and §8.
//
//   x = E[tok] * sqrt(d_model)
//   per layer (5 sliding : 1 full):
//     h = rms_norm(x, attn_norm)
//     q, k, v = h Wq^T, h Wk^T, h Wv^T
//     q, k = rope(rms_norm_head(q, q_norm)), rope(rms_norm_head(k, k_norm))   # QK-norm, then RoPE
//     o = softmax(q k^T * query_pre_attn_scalar^-0.5 + mask) v                # GQA, sliding mask
//     x = x + rms_norm(o Wo^T, post_attention_norm)
//     h = rms_norm(x, ffn_norm)
//     x = x + rms_norm((gelu_tanh(h Wg^T) * h Wu^T) Wd^T, post_ffw_norm)
//   logits = rms_norm(x, output_norm) E^T                                      # tied lm_head
//
// Norms are (1 + w) RMSNorms (HF Gemma3RMSNorm). GGUF files store 1 + w already (llama.cpp's
// converter adds 1); HF checkpoints store w, so the loader adds 1 there.
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "core/log.h"
#include "models/forward_common.h"
#include "models/model.h"
#include "models/weight_reader.h"

namespace kestrel {

namespace {

// ---- weights ------------------------------------------------------------------------------------
// In backend memory: matrices in the backend's engine format (fp32 on the CPU reference, W4/W8/BF16
// on CUDA), vectors fp32. d = d_model, hd = head_dim, f = ffn_size.

struct Gemma3Layer {
    Weight attn_norm;       // [d]              1 + w
    Weight wqkv;            // [(n_heads + 2 n_kv_heads) * hd, d]: q | k | v stacked
    Weight q_norm;          // [hd]             1 + w, shared by every head
    Weight k_norm;          // [hd]             1 + w
    Weight wo;              // [d, n_heads * hd]
    Weight post_attn_norm;  // [d]              1 + w
    Weight ffn_norm;        // [d]              1 + w (HF pre_feedforward_layernorm)
    Weight w_gate_up;       // [2f, d]: gate | up stacked
    Weight w_down;          // [d, f]
    Weight post_ffn_norm;   // [d]              1 + w
};

struct Gemma3Weights {
    Weight token_embd;   // [vocab, d]
    Weight output_norm;  // [d]                 1 + w
    Weight output;       // [vocab, d]; empty when tied to token_embd (every Gemma 3)
    std::vector<Gemma3Layer> layers;
};

// ---- the name table: one place that knows what each tensor is called -----------------------


constexpr TensorName kTokenEmbd = {"token_embd.weight", "embed_tokens.weight"};
constexpr TensorName kOutputNorm = {"output_norm.weight", "norm.weight", HfConvert::kAddOne};
constexpr TensorName kOutput = {"output.weight", kHfLmHead};

// Stacked at load (Ops::linear_blocks): q | k | v and gate | up.
constexpr TensorName kQkv[] = {{"blk.{}.attn_q.weight", "layers.{}.self_attn.q_proj.weight"},
                               {"blk.{}.attn_k.weight", "layers.{}.self_attn.k_proj.weight"},
                               {"blk.{}.attn_v.weight", "layers.{}.self_attn.v_proj.weight"}};
constexpr TensorName kGateUp[] = {{"blk.{}.ffn_gate.weight", "layers.{}.mlp.gate_proj.weight"},
                                  {"blk.{}.ffn_up.weight", "layers.{}.mlp.up_proj.weight"}};

struct LayerTensor {
    TensorName name;
    Weight Gemma3Layer::*field;
};

constexpr LayerTensor kLayerTensors[] = {
    {{"blk.{}.attn_norm.weight", "layers.{}.input_layernorm.weight", HfConvert::kAddOne}, &Gemma3Layer::attn_norm},
    {{"blk.{}.attn_q_norm.weight", "layers.{}.self_attn.q_norm.weight", HfConvert::kAddOne}, &Gemma3Layer::q_norm},
    {{"blk.{}.attn_k_norm.weight", "layers.{}.self_attn.k_norm.weight", HfConvert::kAddOne}, &Gemma3Layer::k_norm},
    {{"blk.{}.attn_output.weight", "layers.{}.self_attn.o_proj.weight"}, &Gemma3Layer::wo},
    {{"blk.{}.post_attention_norm.weight", "layers.{}.post_attention_layernorm.weight", HfConvert::kAddOne},
     &Gemma3Layer::post_attn_norm},
    {{"blk.{}.ffn_norm.weight", "layers.{}.pre_feedforward_layernorm.weight", HfConvert::kAddOne}, &Gemma3Layer::ffn_norm},
    {{"blk.{}.ffn_down.weight", "layers.{}.mlp.down_proj.weight"}, &Gemma3Layer::w_down},
    {{"blk.{}.post_ffw_norm.weight", "layers.{}.post_feedforward_layernorm.weight", HfConvert::kAddOne},
     &Gemma3Layer::post_ffn_norm},
};

// ---- the model ----------------------------------------------------------------------------------

class Gemma3 final : public Model {
public:
    Gemma3(ModelConfig config, Gemma3Weights weights, float query_scale)
        : config_(std::move(config)), w_(std::move(weights)), query_scale_(query_scale) {}

    const ModelConfig& config() const override { return config_; }

    std::vector<KvLayerSpec> kv_layout() const override { return kv_layout_of(config_); }

    Status forward(Ops& ops, const Batch& batch, std::span<const KvLayerView> kv, const ForwardOptions& options,
                   std::span<float> logits) const override;

private:
    ModelConfig config_;
    Gemma3Weights w_;
    float query_scale_;  // query_pre_attn_scalar^-0.5
};

Status Gemma3::forward(Ops& ops, const Batch& batch, std::span<const KvLayerView> kv, const ForwardOptions& options,
                       std::span<float> logits) const {
    const int64_t n_tokens = static_cast<int64_t>(batch.tokens.size());
    const int64_t d = config_.hidden_size;
    const int64_t f = config_.ffn_size;
    const int64_t n_heads = config_.n_heads;
    const float eps = static_cast<float>(config_.rms_norm_eps);
    KESTREL_RETURN_IF_ERROR(check_forward_arguments("gemma3", config_, batch, kv, options.logits, logits));
    auto show = [&](std::string_view name, int64_t layer, const float* data, int64_t cols) {
        dump(ops, options, name, layer, data, n_tokens, cols);
    };

    // Intermediates in the backend's workspace; q | k | v (consecutive, so the stacked
    // projection writes them in place) sized for the widest layer.
    int64_t max_q = 0, max_qkv = 0;
    for (const LayerConfig& lc : config_.layers) {
        max_q = std::max(max_q, n_heads * std::max(lc.head_dim, lc.v_head_dim));
        max_qkv = std::max(max_qkv, n_heads * lc.head_dim + lc.n_kv_heads * (lc.head_dim + lc.v_head_dim));
    }
    Workspace& ws = ops.workspace();
    ws.reset();
    KESTREL_ASSIGN_OR_RETURN(float* x, ws.floats(n_tokens * d));  // [T, d], the residual stream
    KESTREL_ASSIGN_OR_RETURN(float* attn_norm, ws.floats(n_tokens * d));
    KESTREL_ASSIGN_OR_RETURN(float* attn_proj, ws.floats(n_tokens * d));
    KESTREL_ASSIGN_OR_RETURN(float* ffn_norm, ws.floats(n_tokens * d));
    KESTREL_ASSIGN_OR_RETURN(float* ffn_out, ws.floats(n_tokens * d));
    KESTREL_ASSIGN_OR_RETURN(float* gate_up,
                             ws.floats(n_tokens * 2 * f));  // gate [T, f] | up [T, f]
    KESTREL_ASSIGN_OR_RETURN(float* qkv, ws.floats(n_tokens * max_qkv));
    KESTREL_ASSIGN_OR_RETURN(float* attn_out, ws.floats(n_tokens * max_q));
    float* gate = gate_up;
    float* up = gate_up + n_tokens * f;
    // gelu_tanh(gate) * up is written over gate (elementwise, so in place is safe): a [T, f] fp32
    // buffer less (84 MiB at a 1024-token chunk of Gemma 4 31B).
    float* ffn_act = gate;
    const int64_t ffn_widths[] = {f, f};
    // The normalised inputs of the projections are stored only for the debug hook.
    const bool keep = options.debug != nullptr;

    // Gemma: the embedding is scaled by sqrt(d_model), a float32 constant (HF Gemma3TextScaledWordEmbedding).
    ops.embed(batch.tokens, w_.token_embd, static_cast<float>(std::sqrt(static_cast<double>(d))), x);
    show("inp_scaled", -1, x, d);

    // h = rms_norm(x, attn_norm); q | k | v = h Wqkv^T in one stacked projection. Layer 0's here;
    // every later layer's is fused with the end of the layer before it
    // (residual_norm_linear_blocks).
    auto qkv_widths = [&](const LayerConfig& lc) {
        return std::array<int64_t, 3>{n_heads * lc.head_dim, lc.n_kv_heads * lc.head_dim,
                                      lc.n_kv_heads * lc.v_head_dim};
    };
    ops.rms_norm_linear_blocks(x, w_.layers[0].attn_norm.f32(), n_tokens, d, eps, attn_norm, keep,
                               w_.layers[0].wqkv, qkv_widths(config_.layers[0]), qkv);
    show("attn_norm", 0, attn_norm, d);

    for (int64_t il = 0; il < config_.n_layers; ++il) {
        const Gemma3Layer& layer = w_.layers[il];
        const LayerConfig& lc = config_.layers[il];
        const bool sliding = lc.kind == LayerKind::kSliding;
        const int64_t hd = lc.head_dim;
        const int64_t n_kv = lc.n_kv_heads;
        // Gemma 3: sliding layers use the local base frequency (1e4), full layers the global (1e6).
        const double theta = sliding ? config_.rope_theta_sliding : config_.rope_theta;

        // ---- attention (q | k | v already projected) ----

        float* q = qkv;
        float* k = q + n_tokens * n_heads * hd;
        float* v = k + n_tokens * n_kv * hd;
        show("Vcur", il, v, n_kv * lc.v_head_dim);

        // Gemma 3: per-head RMSNorm of q and k (QK-norm) before NeoX RoPE; V is neither normed nor
        // rotated; then K and V into the cache.
        AttentionInputsParams inputs;
        inputs.n_heads = n_heads;
        inputs.n_kv_heads = n_kv;
        inputs.head_dim = hd;
        inputs.rotary_pairs = hd / 2;
        inputs.eps = eps;
        inputs.theta = theta;
        // Gemma 3: scores = q·k * query_pre_attn_scalar^-0.5; sliding layers see the last `window` positions.
        const AttentionParams params{n_heads, query_scale_, sliding ? config_.sliding_window : 0, 0.0f};
        // attn_proj = attention(q, cache) Wo^T (the attention rows are stored only for the debug
        // hook).
        KESTREL_RETURN_IF_ERROR(attention_block(ops, q, k, v, layer.q_norm.f32(),
                                                layer.k_norm.f32(), batch.positions, inputs, kv[il],
                                                params, attn_out, keep, layer.wo, attn_proj));
        show("Qcur", il, q, n_heads * hd);
        show("Kcur", il, k, n_kv * hd);
        show("kqv_out", il, attn_out, n_heads * lc.v_head_dim);
        show("attn_proj", il, attn_proj, d);
        // Sandwich norm: x = x + rms_norm(attn, post_attention_norm); then the feed-forward's
        // h = rms_norm(x, pre_feedforward_norm) and gate | up = h Wgu^T.
        ops.residual_norm_linear_blocks(attn_proj, layer.post_attn_norm.f32(), 1.0f, x,
                                        layer.ffn_norm.f32(), n_tokens, d, eps, ffn_norm, keep,
                                        layer.w_gate_up, ffn_widths, gate_up);
        show("attn_residual", il, x, d);
        show("ffn_norm", il, ffn_norm, d);

        // ---- feed-forward: down(gelu_tanh(gate(h)) * up(h)) ----
        ops.gelu_tanh_and_mul_linear(gate, up, n_tokens, f, ffn_act, keep, layer.w_down, ffn_out);
        show("ffn_act", il, ffn_act, f);
        show("ffn_out", il, ffn_out, d);
        // x = x + rms_norm(ffn, post_feedforward_norm), then the next layer's q | k | v.
        if (il + 1 < config_.n_layers) {
            const int64_t next = il + 1;
            ops.residual_norm_linear_blocks(ffn_out, layer.post_ffn_norm.f32(), 1.0f, x,
                                            w_.layers[next].attn_norm.f32(), n_tokens, d, eps,
                                            attn_norm, keep, w_.layers[next].wqkv,
                                            qkv_widths(config_.layers[next]), qkv);
            show("l_out", il, x, d);
            show("attn_norm", next, attn_norm, d);
        } else {
            ops.rms_norm_add(ffn_out, layer.post_ffn_norm.f32(), n_tokens, d, eps, x);
            show("l_out", il, x, d);
        }
    }

    // ---- output: final norm, tied lm_head (only the rows whose logits are asked for) ----
    KESTREL_RETURN_IF_ERROR(output_head(ops, config_, x, n_tokens, w_.output_norm.f32(),
                                        w_.output.empty() ? w_.token_embd : w_.output, options, logits));
    return ops.take_error();
}

// llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): GGUF files carry no query_pre_attn_scalar;
// it is head_dim for every size except 27B (62 layers), where it is d_model / n_heads.
// HF configs state it.
Result<float> query_scale(const ModelConfig& config, const ModelFiles& files) {
    double scalar = static_cast<double>(config.layers.front().head_dim);
    if (files.format == ModelFormat::kHfFolder && files.hf_config.has_value()) {
        KESTREL_ASSIGN_OR_RETURN(scalar, files.hf_config->get_float_or("query_pre_attn_scalar", scalar));
    } else if (config.n_layers == 62) {
        scalar = static_cast<double>(config.hidden_size / config.n_heads);
    }
    return static_cast<float>(1.0 / std::sqrt(scalar));
}

}  // namespace

Result<std::unique_ptr<Model>> load_gemma3(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                           const WeightLoadOptions& options) {
    if (config.n_layers <= 0 || static_cast<int64_t>(config.layers.size()) != config.n_layers) {
        return Status(StatusCode::kCorruptFile, "gemma3: the config has no layers");
    }
    const int64_t d = config.hidden_size;
    const int64_t f = config.ffn_size;
    const int64_t vocab = config.vocab_size;
    WeightReader reader(files, ops, options);
    Gemma3Weights w;
    KESTREL_ASSIGN_OR_RETURN(w.token_embd, reader.read_matrix(kTokenEmbd, -1, vocab, d));
    KESTREL_ASSIGN_OR_RETURN(w.output_norm, reader.read_vector(kOutputNorm, -1, {d}));
    if (reader.find(kOutput, -1) != nullptr) {
        KESTREL_ASSIGN_OR_RETURN(w.output, reader.read_matrix(kOutput, -1, vocab, d));
    }

    w.layers.resize(static_cast<size_t>(config.n_layers));
    for (int64_t il = 0; il < config.n_layers; ++il) {
        const LayerConfig& lc = config.layers[il];
        if (lc.kind == LayerKind::kLinear || lc.k_eq_v) {
            return Status(StatusCode::kCorruptFile, fmt::format("gemma3: layer {} is not a softmax attention layer", il));
        }
        const int64_t q_dim = config.n_heads * lc.head_dim;
        const int64_t k_dim = lc.n_kv_heads * lc.head_dim;
        const int64_t v_dim = lc.n_kv_heads * lc.v_head_dim;
        const int64_t o_in = config.n_heads * lc.v_head_dim;
        {
            const int64_t outs[] = {q_dim, k_dim, v_dim};
            KESTREL_ASSIGN_OR_RETURN(w.layers[il].wqkv, reader.read_matrix_stack(kQkv, il, outs, d));
            const int64_t ffn_outs[] = {f, f};
            KESTREL_ASSIGN_OR_RETURN(w.layers[il].w_gate_up, reader.read_matrix_stack(kGateUp, il, ffn_outs, d));
        }
        for (const LayerTensor& tensor : kLayerTensors) {
            auto field = tensor.field;
            std::vector<int64_t> shape;  // [out, in] for matrices, [n] for vectors
            if (field == &Gemma3Layer::q_norm || field == &Gemma3Layer::k_norm) shape = {lc.head_dim};
            else if (field == &Gemma3Layer::wo) shape = {d, o_in};
            else if (field == &Gemma3Layer::w_down) shape = {d, f};
            else shape = {d};
            if (shape.size() == 2) {
                KESTREL_ASSIGN_OR_RETURN(w.layers[il].*field, reader.read_matrix(tensor.name, il, shape[0], shape[1]));
            } else {
                KESTREL_ASSIGN_OR_RETURN(w.layers[il].*field, reader.read_vector(tensor.name, il, shape));
            }
        }
    }
    KESTREL_ASSIGN_OR_RETURN(float scale, query_scale(config, files));
    return std::unique_ptr<Model>(std::make_unique<Gemma3>(config, std::move(w), scale));
}

}  // namespace kestrel
