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
// Dequantised to fp32 at load (the CPU reference). d = d_model, hd = the layer's head_dim
// (sliding or global), f = ffn_size, kv = the layer's kv heads.

struct Gemma4Layer {
    std::vector<float> attn_norm;       // [d]
    std::vector<float> wq;              // [n_heads * hd, d]
    std::vector<float> wk;              // [kv * hd, d]
    std::vector<float> wv;              // [kv * hd, d]; empty on K=V layers (V is the k projection)
    std::vector<float> q_norm;          // [hd], shared by every head
    std::vector<float> k_norm;          // [hd]
    std::vector<float> wo;              // [d, n_heads * hd]
    std::vector<float> post_attn_norm;  // [d]
    std::vector<float> ffn_norm;        // [d] (HF pre_feedforward_layernorm)
    std::vector<float> w_gate;          // [f, d]
    std::vector<float> w_up;            // [f, d]
    std::vector<float> w_down;          // [d, f]
    std::vector<float> post_ffn_norm;   // [d]
    std::vector<float> layer_scalar;    // [1]
};

struct Gemma4Weights {
    std::vector<float> token_embd;   // [vocab, d], also the lm_head (tied)
    std::vector<float> output_norm;  // [d]
    std::vector<Gemma4Layer> layers;
};

// ---- the name table: one place that knows what each tensor is called -----------------------


constexpr TensorName kTokenEmbd = {"token_embd.weight", "embed_tokens.weight"};
constexpr TensorName kOutputNorm = {"output_norm.weight", "norm.weight"};
// llama.cpp's converter writes the proportional RoPE of full layers as frequency factors
// (1 for a rotating pair, 1e30 for a still one); HF configs state partial_rotary_factor.
constexpr TensorName kRopeFreqs = {"rope_freqs.weight", ""};

enum class Shape { kD, kQ, kK, kHeadDim, kO, kUp, kDown, kScalar };

struct LayerTensor {
    TensorName name;
    std::vector<float> Gemma4Layer::*field;
    Shape shape;
};

constexpr LayerTensor kLayerTensors[] = {
    {{"blk.{}.attn_norm.weight", "layers.{}.input_layernorm.weight"}, &Gemma4Layer::attn_norm, Shape::kD},
    {{"blk.{}.attn_q.weight", "layers.{}.self_attn.q_proj.weight"}, &Gemma4Layer::wq, Shape::kQ},
    {{"blk.{}.attn_k.weight", "layers.{}.self_attn.k_proj.weight"}, &Gemma4Layer::wk, Shape::kK},
    {{"blk.{}.attn_v.weight", "layers.{}.self_attn.v_proj.weight"}, &Gemma4Layer::wv, Shape::kK},
    {{"blk.{}.attn_q_norm.weight", "layers.{}.self_attn.q_norm.weight"}, &Gemma4Layer::q_norm, Shape::kHeadDim},
    {{"blk.{}.attn_k_norm.weight", "layers.{}.self_attn.k_norm.weight"}, &Gemma4Layer::k_norm, Shape::kHeadDim},
    {{"blk.{}.attn_output.weight", "layers.{}.self_attn.o_proj.weight"}, &Gemma4Layer::wo, Shape::kO},
    {{"blk.{}.post_attention_norm.weight", "layers.{}.post_attention_layernorm.weight"},
     &Gemma4Layer::post_attn_norm, Shape::kD},
    {{"blk.{}.ffn_norm.weight", "layers.{}.pre_feedforward_layernorm.weight"}, &Gemma4Layer::ffn_norm, Shape::kD},
    {{"blk.{}.ffn_gate.weight", "layers.{}.mlp.gate_proj.weight"}, &Gemma4Layer::w_gate, Shape::kUp},
    {{"blk.{}.ffn_up.weight", "layers.{}.mlp.up_proj.weight"}, &Gemma4Layer::w_up, Shape::kUp},
    {{"blk.{}.ffn_down.weight", "layers.{}.mlp.down_proj.weight"}, &Gemma4Layer::w_down, Shape::kDown},
    {{"blk.{}.post_ffw_norm.weight", "layers.{}.post_feedforward_layernorm.weight"}, &Gemma4Layer::post_ffn_norm,
     Shape::kD},
    // HF's per-layer buffer `layer_scalar`; llama.cpp's converter appends ".weight" and renames it.
    {{"blk.{}.layer_output_scale.weight", "layers.{}.layer_scalar"}, &Gemma4Layer::layer_scalar, Shape::kScalar},
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
    auto dump = [&](std::string_view name, int64_t layer, const std::vector<float>& data, int64_t cols) {
        if (options.debug != nullptr) (*options.debug)(name, layer, data.data(), n_tokens, cols);
    };

    // HF Gemma4TextScaledWordEmbedding: E[tok] * sqrt(d_model). HF casts the scale to the weight
    // dtype (bf16(sqrt(5376)) = 73.5 for the bf16 31B); we keep it in fp32 like llama.cpp.
    std::vector<float> x(static_cast<size_t>(n_tokens * d));  // [T, d], the residual stream
    ops.embed(batch.tokens, w_.token_embd.data(), d, static_cast<float>(std::sqrt(static_cast<double>(d))), x.data());
    dump("inp_scaled", -1, x, d);

    std::vector<float> attn_norm(x.size()), attn_proj(x.size()), ffn_norm(x.size()), ffn_out(x.size());
    std::vector<float> gate(static_cast<size_t>(n_tokens * f)), up(gate.size()), ffn_act(gate.size());
    std::vector<float> q, k, v, attn_out;

    for (int64_t il = 0; il < config_.n_layers; ++il) {
        const Gemma4Layer& layer = w_.layers[il];
        const LayerConfig& lc = config_.layers[il];
        const bool sliding = lc.kind == LayerKind::kSliding;
        const int64_t hd = lc.head_dim;
        const int64_t n_kv = lc.n_kv_heads;

        // ---- attention ----
        ops.rms_norm(x.data(), layer.attn_norm.data(), n_tokens, d, eps, attn_norm.data());
        dump("attn_norm", il, attn_norm, d);

        q.resize(static_cast<size_t>(n_tokens * n_heads * hd));
        k.resize(static_cast<size_t>(n_tokens * n_kv * hd));
        v.resize(static_cast<size_t>(n_tokens * n_kv * lc.v_head_dim));
        ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.wq, n_heads * hd, d), q.data());
        ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.wk, n_kv * hd, d), k.data());
        if (lc.k_eq_v) {
            v = k;  // Gemma 4 K=V (attention_k_eq_v): V is the raw k projection, before k_norm and RoPE
        } else {
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.wv, n_kv * lc.v_head_dim, d), v.data());
        }

        // QK-norm (per head, learned weight) before RoPE; V gets an RMSNorm without weight and no RoPE.
        ops.rms_norm(q.data(), layer.q_norm.data(), n_tokens * n_heads, hd, eps, q.data());
        ops.rms_norm(k.data(), layer.k_norm.data(), n_tokens * n_kv, hd, eps, k.data());
        ops.rms_norm(v.data(), nullptr, n_tokens * n_kv, lc.v_head_dim, eps, v.data());
        if (sliding) {
            // Sliding layers: default RoPE over the whole head (theta 1e4).
            ops.rope_neox(q.data(), batch.positions, n_heads, hd, config_.rope_theta_sliding);
            ops.rope_neox(k.data(), batch.positions, n_kv, hd, config_.rope_theta_sliding);
        } else {
            // Full layers: proportional RoPE (theta 1e6), only the first pairs rotate.
            ops.rope_proportional(q.data(), batch.positions, n_heads, hd, full_rotary_pairs_, config_.rope_theta);
            ops.rope_proportional(k.data(), batch.positions, n_kv, hd, full_rotary_pairs_, config_.rope_theta);
        }
        dump("Qcur", il, q, n_heads * hd);
        dump("Kcur", il, k, n_kv * hd);
        dump("Vcur", il, v, n_kv * lc.v_head_dim);

        ops.kv_write(kv[il], batch.positions, k.data(), v.data());
        attn_out.resize(static_cast<size_t>(n_tokens * n_heads * lc.v_head_dim));
        // Gemma 4: scores = q·k * 1.0 (HF `self.scaling = 1.0`); sliding layers see the last `window` positions.
        const AttentionParams params{n_heads, 1.0f, sliding ? config_.sliding_window : 0, 0.0f};
        ops.attention(q.data(), batch.positions, kv[il], params, attn_out.data());
        dump("kqv_out", il, attn_out, n_heads * lc.v_head_dim);

        ops.linear(attn_out.data(), n_tokens, f32_linear(layer.wo, d, n_heads * lc.v_head_dim), attn_proj.data());
        dump("attn_proj", il, attn_proj, d);
        // Sandwich norm: x = x + rms_norm(attn, post_attention_norm).
        ops.rms_norm_add(attn_proj.data(), layer.post_attn_norm.data(), n_tokens, d, eps, x.data());
        dump("attn_residual", il, x, d);

        // ---- feed-forward: down(gelu_tanh(gate(h)) * up(h)) ----
        ops.rms_norm(x.data(), layer.ffn_norm.data(), n_tokens, d, eps, ffn_norm.data());
        dump("ffn_norm", il, ffn_norm, d);
        ops.linear(ffn_norm.data(), n_tokens, f32_linear(layer.w_gate, f, d), gate.data());
        ops.linear(ffn_norm.data(), n_tokens, f32_linear(layer.w_up, f, d), up.data());
        ops.gelu_tanh_and_mul(gate.data(), up.data(), n_tokens * f, ffn_act.data());
        dump("ffn_act", il, ffn_act, f);
        ops.linear(ffn_act.data(), n_tokens, f32_linear(layer.w_down, d, f), ffn_out.data());
        dump("ffn_out", il, ffn_out, d);
        ops.rms_norm_add(ffn_out.data(), layer.post_ffn_norm.data(), n_tokens, d, eps, x.data());

        // HF Gemma4TextDecoderLayer: `hidden_states *= self.layer_scalar`, after both residual adds.
        ops.scale(x.data(), n_tokens * d, layer.layer_scalar[0]);
        dump("l_out", il, x, d);
    }

    // ---- output: final norm, tied lm_head, softcap (only the rows whose logits are asked for) ----
    output_head(ops, config_, x, n_tokens, w_.output_norm, w_.token_embd, options, logits);
    return ok_status();
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

Result<std::unique_ptr<Model>> load_gemma4(const ModelConfig& config, const ModelFiles& files) {
    if (config.n_layers <= 0 || static_cast<int64_t>(config.layers.size()) != config.n_layers) {
        return Status(StatusCode::kCorruptFile, "gemma4: the config has no layers");
    }
    const int64_t d = config.hidden_size;
    const int64_t f = config.ffn_size;
    const int64_t vocab = config.vocab_size;
    WeightReader reader(files);
    if (const int64_t skipped = reader.count_outside_text_model(); skipped > 0) {
        log_info("gemma4: skipping {} tensors outside the language model (vision/audio towers, embedders)", skipped);
    }
    Gemma4Weights w;
    KESTREL_ASSIGN_OR_RETURN(w.token_embd, reader.read(kTokenEmbd, -1, {vocab, d}));
    KESTREL_ASSIGN_OR_RETURN(w.output_norm, reader.read(kOutputNorm, -1, {d}));

    w.layers.resize(static_cast<size_t>(config.n_layers));
    for (int64_t il = 0; il < config.n_layers; ++il) {
        const LayerConfig& lc = config.layers[il];
        if (lc.kind == LayerKind::kLinear || lc.head_dim != lc.v_head_dim) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("gemma4: layer {} is not a softmax attention layer with equal K and V head "
                                      "dims",
                                      il));
        }
        for (const LayerTensor& tensor : kLayerTensors) {
            if (tensor.field == &Gemma4Layer::wv && lc.k_eq_v) continue;  // K=V: no v_proj
            std::vector<int64_t> shape;
            switch (tensor.shape) {
                case Shape::kD: shape = {d}; break;
                case Shape::kQ: shape = {config.n_heads * lc.head_dim, d}; break;
                case Shape::kK: shape = {lc.n_kv_heads * lc.head_dim, d}; break;
                case Shape::kHeadDim: shape = {lc.head_dim}; break;
                case Shape::kO: shape = {d, config.n_heads * lc.head_dim}; break;
                case Shape::kUp: shape = {f, d}; break;
                case Shape::kDown: shape = {d, f}; break;
                case Shape::kScalar: shape = {1}; break;
            }
            KESTREL_ASSIGN_OR_RETURN(w.layers[il].*tensor.field, reader.read(tensor.name, il, shape));
        }
    }
    KESTREL_ASSIGN_OR_RETURN(int64_t pairs, full_rotary_pairs(config, files, reader));
    return std::unique_ptr<Model>(std::make_unique<Gemma4>(config, std::move(w), pairs));
}

}  // namespace kestrel
