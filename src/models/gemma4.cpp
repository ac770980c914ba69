// Gemma 4 (text, dense): weights and forward pass. Follows HF transformers' Gemma4TextModel
// (modeling_gemma4.py, transformers 5.23) and llama.cpp's src/models/gemma4-iswa.cpp; spec:
// shared/specs/gemma4-and-gemma3.md §1, §2, §7.1.
//
//   x = E[tok] * sqrt(d_model)
//   per layer (sliding, or full: every 6th in 31B, always the last):
//     h = rms_norm(x, attn_norm)
//     q = rope(rms_norm_head(h Wq^T, q_norm))
//     k_raw = h Wk^T;  v_raw = full && K=V ? k_raw : h Wv^T     # 31B full layers have no v_proj
//     k = rope(rms_norm_head(k_raw, k_norm));  v = rms_norm_head(v_raw)   # V: norm without weight, no RoPE
//     o = softmax(q k^T * 1.0 + mask) v                         # scale 1: QK-norm does the job
//     x = x + rms_norm(o Wo^T, post_attention_norm)
//     h = rms_norm(x, ffn_norm)
//     x = x + rms_norm((gelu_tanh(h Wg^T) * h Wu^T) Wd^T, post_ffw_norm)
//     x = x * layer_scalar                                      # the whole residual stream
//   logits = 30 * tanh((rms_norm(x, output_norm) E^T) / 30)     # tied lm_head, final softcap
//
// Sliding layers: head_dim 256, RoPE theta 1e4 over every dim, window 1024 (31B). Full layers:
// head_dim 512 (twice), "proportional" RoPE theta 1e6 where only the first
// partial_rotary_factor * head_dim / 2 frequency pairs rotate (Ops::rope_proportional).
// Norms multiply by w (Gemma4RMSNorm, no 1 + w); GGUF stores them as they are.
#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/log.h"
#include "models/forward_common.h"
#include "models/model.h"
#include "models/weight_reader.h"

namespace kestrel {

namespace {

// ---- weights ------------------------------------------------------------------------------------
// In backend memory: matrices in the backend's engine format (fp32 on the CPU reference, W4/W8/
// BF16 on CUDA), vectors fp32. d = d_model, hd = the layer's head_dim (sliding or global),
// f = ffn_size, kv = the layer's kv heads.

struct Gemma4Layer {
    Weight attn_norm;       // [d]
    Weight wqkv;            // [(n_heads + 2 kv) * hd, d]: q | k | v stacked; q | k on K=V layers
    Weight q_norm;          // [hd], shared by every head
    Weight k_norm;          // [hd]
    Weight wo;              // [d, n_heads * hd]
    Weight post_attn_norm;  // [d]
    Weight ffn_norm;        // [d] (HF pre_feedforward_layernorm)
    Weight w_gate_up;       // [2f, d]: gate | up stacked
    Weight w_down;          // [d, f]
    Weight post_ffn_norm;   // [d]
    float layer_scalar = 1.0f;
};

struct Gemma4Weights {
    Weight token_embd;   // [vocab, d], also the lm_head (tied)
    Weight output_norm;  // [d]
    std::vector<Gemma4Layer> layers;
};

// ---- the name table: one place that knows what each tensor is called -----------------------


constexpr TensorName kTokenEmbd = {"token_embd.weight", "embed_tokens.weight"};
constexpr TensorName kOutputNorm = {"output_norm.weight", "norm.weight"};
// llama.cpp's converter writes the proportional RoPE of full layers as frequency factors
// (1 for a rotating pair, 1e30 for a still one); HF configs state partial_rotary_factor.
constexpr TensorName kRopeFreqs = {"rope_freqs.weight", ""};

enum class Shape { kD, kHeadDim, kO, kDown };

struct LayerTensor {
    TensorName name;
    Weight Gemma4Layer::*field;
    Shape shape;
};

// Stacked at load (Ops::linear_blocks): q | k | v (no v on K=V layers) and gate | up.
constexpr TensorName kAttnQ = {"blk.{}.attn_q.weight", "layers.{}.self_attn.q_proj.weight"};
constexpr TensorName kAttnK = {"blk.{}.attn_k.weight", "layers.{}.self_attn.k_proj.weight"};
constexpr TensorName kAttnV = {"blk.{}.attn_v.weight", "layers.{}.self_attn.v_proj.weight"};
constexpr TensorName kFfnGate = {"blk.{}.ffn_gate.weight", "layers.{}.mlp.gate_proj.weight"};
constexpr TensorName kFfnUp = {"blk.{}.ffn_up.weight", "layers.{}.mlp.up_proj.weight"};

// HF's per-layer buffer `layer_scalar`; llama.cpp's converter appends ".weight" and renames it.
constexpr TensorName kLayerScalar = {"blk.{}.layer_output_scale.weight", "layers.{}.layer_scalar"};

constexpr LayerTensor kLayerTensors[] = {
    {{"blk.{}.attn_norm.weight", "layers.{}.input_layernorm.weight"}, &Gemma4Layer::attn_norm, Shape::kD},
    {{"blk.{}.attn_q_norm.weight", "layers.{}.self_attn.q_norm.weight"}, &Gemma4Layer::q_norm, Shape::kHeadDim},
    {{"blk.{}.attn_k_norm.weight", "layers.{}.self_attn.k_norm.weight"}, &Gemma4Layer::k_norm, Shape::kHeadDim},
    {{"blk.{}.attn_output.weight", "layers.{}.self_attn.o_proj.weight"}, &Gemma4Layer::wo, Shape::kO},
    {{"blk.{}.post_attention_norm.weight", "layers.{}.post_attention_layernorm.weight"},
     &Gemma4Layer::post_attn_norm, Shape::kD},
    {{"blk.{}.ffn_norm.weight", "layers.{}.pre_feedforward_layernorm.weight"}, &Gemma4Layer::ffn_norm, Shape::kD},
    {{"blk.{}.ffn_down.weight", "layers.{}.mlp.down_proj.weight"}, &Gemma4Layer::w_down, Shape::kDown},
    {{"blk.{}.post_ffw_norm.weight", "layers.{}.post_feedforward_layernorm.weight"}, &Gemma4Layer::post_ffn_norm,
     Shape::kD},
};

// ---- the model ----------------------------------------------------------------------------------

class Gemma4 final : public Model {
public:
    Gemma4(ModelConfig config, Gemma4Weights weights, int64_t full_rotary_pairs)
        : config_(std::move(config)), w_(std::move(weights)), full_rotary_pairs_(full_rotary_pairs) {}

    const ModelConfig& config() const override { return config_; }

    std::vector<KvLayerSpec> kv_layout() const override { return kv_layout_of(config_); }

    Status forward(Ops& ops, const Batch& batch, std::span<const KvLayerView> kv, const ForwardOptions& options,
                   std::span<float> logits) const override;

private:
    ModelConfig config_;
    Gemma4Weights w_;
    int64_t full_rotary_pairs_;  // frequency pairs that rotate on full layers (31B: 64 of 256)
};

Status Gemma4::forward(Ops& ops, const Batch& batch, std::span<const KvLayerView> kv, const ForwardOptions& options,
                       std::span<float> logits) const {
    const int64_t n_tokens = static_cast<int64_t>(batch.tokens.size());
    const int64_t d = config_.hidden_size;
    const int64_t f = config_.ffn_size;
    const int64_t n_heads = config_.n_heads;
    const float eps = static_cast<float>(config_.rms_norm_eps);
    KESTREL_RETURN_IF_ERROR(check_forward_arguments("gemma4", config_, batch, kv, options.logits, logits));
    auto show = [&](std::string_view name, int64_t layer, const float* data, int64_t cols) {
        dump(ops, options, name, layer, data, n_tokens, cols);
    };

    // Intermediates in the backend's workspace; q | k | v (consecutive, so the stacked projection
    // writes them in place) sized for the widest layer.
    int64_t max_hd = 0, max_qkv = 0;
    for (const LayerConfig& lc : config_.layers) {
        max_hd = std::max(max_hd, lc.head_dim);
        max_qkv = std::max(max_qkv, (n_heads + 2 * lc.n_kv_heads) * lc.head_dim);
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
    KESTREL_ASSIGN_OR_RETURN(float* attn_out, ws.floats(n_tokens * n_heads * max_hd));
    float* gate = gate_up;
    float* up = gate_up + n_tokens * f;
    // gelu_tanh(gate) * up is written over gate (elementwise, so in place is safe): a [T, f] fp32
    // buffer less (84 MiB at a 1024-token chunk of Gemma 4 31B).
    float* ffn_act = gate;
    const int64_t ffn_widths[] = {f, f};
    // The normalised inputs of the projections are stored only for the debug hook.
    const bool keep = options.debug != nullptr;

    // HF Gemma4TextScaledWordEmbedding: E[tok] * sqrt(d_model). HF casts the scale to the weight
    // dtype (bf16(sqrt(5376)) = 73.5 for the bf16 31B); we keep it in fp32 like llama.cpp.
    ops.embed(batch.tokens, w_.token_embd, static_cast<float>(std::sqrt(static_cast<double>(d))), x);
    show("inp_scaled", -1, x, d);

    // h = rms_norm(x, attn_norm); q | k | v = h Wqkv^T in one stacked projection (K=V layers
    // project q | k: V is the raw k, attention_k_eq_v). Layer 0's here; every later layer's is
    // fused with the end of the layer before it (residual_norm_linear_blocks below).
    struct QkvWidths {
        int64_t widths[3];
        size_t count;
        std::span<const int64_t> span() const { return std::span(widths, count); }
    };
    auto qkv_widths = [&](const LayerConfig& lc) {
        return QkvWidths{
            {n_heads * lc.head_dim, lc.n_kv_heads * lc.head_dim, lc.n_kv_heads * lc.v_head_dim},
            lc.k_eq_v ? size_t{2} : size_t{3}};
    };
    ops.rms_norm_linear_blocks(x, w_.layers[0].attn_norm.f32(), n_tokens, d, eps, attn_norm, keep,
                               w_.layers[0].wqkv, qkv_widths(config_.layers[0]).span(), qkv);
    show("attn_norm", 0, attn_norm, d);

    for (int64_t il = 0; il < config_.n_layers; ++il) {
        const Gemma4Layer& layer = w_.layers[il];
        const LayerConfig& lc = config_.layers[il];
        const bool sliding = lc.kind == LayerKind::kSliding;
        const int64_t hd = lc.head_dim;
        const int64_t n_kv = lc.n_kv_heads;

        // ---- attention (q | k | v already projected) ----
        float* q = qkv;
        float* k = q + n_tokens * n_heads * hd;
        float* v = k + n_tokens * n_kv * hd;

        // QK-norm (per head, learned weight) then RoPE; V gets an RMSNorm without weight and no
        // RoPE; then K and V into the cache. Sliding layers: default RoPE over the whole head
        // (theta 1e4); full layers: proportional RoPE (theta 1e6), only the first pairs rotate.
        AttentionInputsParams inputs;
        inputs.n_heads = n_heads;
        inputs.n_kv_heads = n_kv;
        inputs.head_dim = hd;
        inputs.rotary_pairs = sliding ? hd / 2 : full_rotary_pairs_;
        inputs.eps = eps;
        inputs.theta = sliding ? config_.rope_theta_sliding : config_.rope_theta;
        inputs.v_from_raw_k = lc.k_eq_v;
        inputs.v_norm = true;
        // Gemma 4: scores = q·k * 1.0 (HF `self.scaling = 1.0`); sliding layers see the last `window` positions.
        const AttentionParams params{n_heads, 1.0f, sliding ? config_.sliding_window : 0, 0.0f};
        // attn_proj = attention(q, cache) Wo^T (the attention rows are stored only for the debug
        // hook).
        KESTREL_RETURN_IF_ERROR(attention_block(ops, q, k, v, layer.q_norm.f32(),
                                                layer.k_norm.f32(), batch.positions, inputs, kv[il],
                                                params, attn_out, keep, layer.wo, attn_proj));
        show("Qcur", il, q, n_heads * hd);
        show("Kcur", il, k, n_kv * hd);
        show("Vcur", il, v, n_kv * lc.v_head_dim);
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
        // x = (x + rms_norm(ffn, post_ffw_norm)) * layer_scalar: HF Gemma4TextDecoderLayer scales
        // the whole residual stream after both residual adds. Then the next layer's q | k | v.
        if (il + 1 < config_.n_layers) {
            const int64_t next = il + 1;
            ops.residual_norm_linear_blocks(ffn_out, layer.post_ffn_norm.f32(), layer.layer_scalar,
                                            x, w_.layers[next].attn_norm.f32(), n_tokens, d, eps,
                                            attn_norm, keep, w_.layers[next].wqkv,
                                            qkv_widths(config_.layers[next]).span(), qkv);
            show("l_out", il, x, d);
            show("attn_norm", next, attn_norm, d);
        } else {
            ops.rms_norm_add_scale(ffn_out, layer.post_ffn_norm.f32(), n_tokens, d, eps,
                                   layer.layer_scalar, x);
            show("l_out", il, x, d);
        }
    }

    // ---- output: final norm, tied lm_head, softcap (only the rows whose logits are asked for) ----
    KESTREL_RETURN_IF_ERROR(output_head(ops, config_, x, n_tokens, w_.output_norm.f32(), w_.token_embd, options, logits));
    return ops.take_error();
}

// How many frequency pairs of a full layer's head rotate. HF: rope_parameters.full_attention
// {rope_type "proportional", partial_rotary_factor} -> int(factor * head_dim // 2)
// (modeling_rope_utils._compute_proportional_rope_parameters). GGUF: llama.cpp's converter
// (conversion/gemma.py Gemma4Model.generate_extra_tensors) writes rope_freqs = [1] * pairs +
// [1e30] * (head_dim / 2 - pairs), dividing the still pairs' frequency by 1e30; we count the 1s
// and accept only that shape. A model without either rotates every pair.
Result<int64_t> full_rotary_pairs(const ModelConfig& config, const ModelFiles& files, const WeightReader& reader) {
    int64_t head_dim = 0;
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind == LayerKind::kFull) head_dim = layer.head_dim;
    }
    const int64_t half = head_dim / 2;
    if (files.format == ModelFormat::kHfFolder && files.hf_config.has_value()) {
        const HfConfig& hf = *files.hf_config;
        for (std::string_view type : {"sliding_attention", "full_attention"}) {
            KESTREL_ASSIGN_OR_RETURN(std::string rope_type,
                                     hf.get_string_or(fmt::format("rope_parameters.{}.rope_type", type), "default"));
            const bool ok = rope_type == "default" || (rope_type == "proportional" && type == "full_attention");
            if (!ok) {
                return Status(StatusCode::kUnsupported, fmt::format("{}: rope_type '{}' on {} layers is not supported",
                                                                    hf.display_name, rope_type, type));
            }
            if (type == "full_attention" && rope_type == "proportional") {
                KESTREL_ASSIGN_OR_RETURN(
                    double factor, hf.get_float_or("rope_parameters.full_attention.partial_rotary_factor", 1.0));
                const double factor_pairs = std::floor(factor * static_cast<double>(head_dim) / 2.0);
                return std::min(half, static_cast<int64_t>(factor_pairs));
            }
        }
        return half;
    }
    const WeightInfo* info = reader.find(kRopeFreqs, -1);
    if (info == nullptr) return half;
    KESTREL_ASSIGN_OR_RETURN(std::vector<float> factors, reader.read(kRopeFreqs, -1, {half}));
    int64_t pairs = 0;
    while (pairs < half && factors[pairs] == 1.0f) ++pairs;
    for (int64_t j = pairs; j < half; ++j) {
        if (!(factors[j] >= 1e20f)) {
            return Status(StatusCode::kUnsupported,
                          fmt::format("{}: tensor 'rope_freqs.weight' entry {} is {}: only [1, ..., 1, 1e30, ..., "
                                      "1e30] (proportional RoPE) is supported",
                                      files.weights->description(), j, factors[j]));
        }
    }
    return pairs;
}

}  // namespace

Result<std::unique_ptr<Model>> load_gemma4(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                           const WeightLoadOptions& options) {
    if (config.n_layers <= 0 || static_cast<int64_t>(config.layers.size()) != config.n_layers) {
        return Status(StatusCode::kCorruptFile, "gemma4: the config has no layers");
    }
    const int64_t d = config.hidden_size;
    const int64_t f = config.ffn_size;
    const int64_t vocab = config.vocab_size;
    WeightReader reader(files, ops, options);
    if (const int64_t skipped = reader.count_outside_text_model(); skipped > 0) {
        log_info("gemma4: skipping {} tensors outside the language model (vision/audio towers, embedders)", skipped);
    }
    Gemma4Weights w;
    KESTREL_ASSIGN_OR_RETURN(w.token_embd, reader.read_matrix(kTokenEmbd, -1, vocab, d));
    KESTREL_ASSIGN_OR_RETURN(w.output_norm, reader.read_vector(kOutputNorm, -1, {d}));

    w.layers.resize(static_cast<size_t>(config.n_layers));
    for (int64_t il = 0; il < config.n_layers; ++il) {
        const LayerConfig& lc = config.layers[il];
        if (lc.kind == LayerKind::kLinear || lc.head_dim != lc.v_head_dim) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("gemma4: layer {} is not a softmax attention layer with equal K and V head "
                                      "dims",
                                      il));
        }
        Gemma4Layer& layer = w.layers[il];
        const int64_t q_dim = config.n_heads * lc.head_dim, k_dim = lc.n_kv_heads * lc.head_dim;
        if (lc.k_eq_v) {  // K=V: no v_proj
            const TensorName names[] = {kAttnQ, kAttnK};
            const int64_t outs[] = {q_dim, k_dim};
            KESTREL_ASSIGN_OR_RETURN(layer.wqkv, reader.read_matrix_stack(names, il, outs, d));
        } else {
            const TensorName names[] = {kAttnQ, kAttnK, kAttnV};
            const int64_t outs[] = {q_dim, k_dim, k_dim};
            KESTREL_ASSIGN_OR_RETURN(layer.wqkv, reader.read_matrix_stack(names, il, outs, d));
        }
        {
            const TensorName names[] = {kFfnGate, kFfnUp};
            const int64_t outs[] = {f, f};
            KESTREL_ASSIGN_OR_RETURN(layer.w_gate_up, reader.read_matrix_stack(names, il, outs, d));
        }
        for (const LayerTensor& tensor : kLayerTensors) {
            Weight& field = layer.*tensor.field;
            switch (tensor.shape) {
                case Shape::kD: {
                    KESTREL_ASSIGN_OR_RETURN(field, reader.read_vector(tensor.name, il, {d}));
                    break;
                }
                case Shape::kHeadDim: {
                    KESTREL_ASSIGN_OR_RETURN(field, reader.read_vector(tensor.name, il, {lc.head_dim}));
                    break;
                }
                case Shape::kO: {
                    KESTREL_ASSIGN_OR_RETURN(field, reader.read_matrix(tensor.name, il, d, config.n_heads * lc.head_dim));
                    break;
                }
                case Shape::kDown: {
                    KESTREL_ASSIGN_OR_RETURN(field, reader.read_matrix(tensor.name, il, d, f));
                    break;
                }
            }
        }
        KESTREL_ASSIGN_OR_RETURN(std::vector<float> scalar, reader.read(kLayerScalar, il, {1}));
        layer.layer_scalar = scalar[0];
    }
    KESTREL_ASSIGN_OR_RETURN(int64_t pairs, full_rotary_pairs(config, files, reader));
    return std::unique_ptr<Model>(std::make_unique<Gemma4>(config, std::move(w), pairs));
}

}  // namespace kestrel
