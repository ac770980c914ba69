// Qwen3.5-MoE (Qwen3.5-35B-A3B, text): weights and forward pass. Follows HF transformers'
// modeling_qwen3_5_moe.py (5.x, the definition where the spec is unclear) and llama.cpp's
// src/models/qwen35moe.cpp; spec: shared/specs/qwen35-moe.md §1-3, gguf-layouts.md (qwen35moe).
//
//   x = E[tok]
//   per layer (L L L F with full_attention_interval 4):
//     h = rms_norm(x, attn_norm)
//     linear (Gated DeltaNet) layer:
//       qkv, z, b, a = h Wqkv^T, h Wz^T, h Wb^T, h Wa^T
//       qkv = silu(causal_depthwise_conv1d(qkv))                   # kernel 4, state carried
//       o = gated_delta_rule(l2norm(q), l2norm(k), v, beta = sigmoid(b),
//                            g = -exp(A_log) softplus(a + dt_bias))  # state carried
//       y = (w * rms_norm(o) * silu(z)) Wout^T                       # per value head
//     full attention layer:
//       q | gate = h Wq^T (interleaved per head);  k, v = h Wk^T, h Wv^T
//       q, k = rope_partial(rms_norm_head(q)), rope_partial(rms_norm_head(k))  # rotary 64 of 256
//       y = (softmax(q k^T / sqrt(hd)) v * sigmoid(gate)) Wo^T
//     x = x + y
//     h = rms_norm(x, post_attention_norm)
//     x = x + sum_top-k w_e SwiGLU_e(h) + sigmoid(h Wsg^T) SwiGLU_shared(h)   # softmax, top-k, renormalise
//   logits = rms_norm(x, output_norm) W_out^T
//
// Norms are (1 + w) RMSNorms except the Gated DeltaNet output norm (plain w). GGUF stores 1 + w
// (llama.cpp's converter adds 1, except to ssm_norm) and -exp(A_log) (ssm_a); HF stores w and
// A_log, so the loader converts those. GGUF files also hold the value heads in tiled order
// (GdnHeadOrder): the weights are kept as the file has them and the delta rule is told which
// key head each value head reads.
#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/log.h"
#include "models/forward_common.h"
#include "models/model.h"
#include "models/weight_reader.h"

namespace kestrel {

namespace {

// ---- weights ------------------------------------------------------------------------------------
// Dequantised to fp32 at load (the CPU reference). d = d_model; full attention: nh query heads,
// nkv KV heads of hd; Gated DeltaNet: nk key heads of dk, nv value heads of dv, conv kernel K,
// conv_dim = 2 nk dk + nv dv; MoE: E experts of f, shared expert fs.

struct Qwen35Layer {
    LayerKind kind = LayerKind::kLinear;
    std::vector<float> attn_norm;       // [d]            1 + w
    std::vector<float> post_attn_norm;  // [d]            1 + w
    // Gated DeltaNet ("linear_attention")
    std::vector<float> w_qkv;    // [conv_dim, d]         q | k | v
    std::vector<float> w_z;      // [nv * dv, d]          the output gate
    std::vector<float> w_b;      // [nv, d]               beta = sigmoid(b)
    std::vector<float> w_a;      // [nv, d]
    std::vector<float> conv;     // [conv_dim, K]
    std::vector<float> a_neg;    // [nv]                  -exp(A_log)
    std::vector<float> dt_bias;  // [nv]
    std::vector<float> ssm_norm; // [dv]                  plain w, shared by the heads
    std::vector<float> w_out;    // [d, nv * dv]
    // gated full attention
    std::vector<float> wq;       // [nh * hd, d]          the query rows of q_proj
    std::vector<float> wq_gate;  // [nh * hd, d]          the output-gate rows of q_proj
    std::vector<float> wk;       // [nkv * hd, d]
    std::vector<float> wv;       // [nkv * hd, d]
    std::vector<float> q_norm;   // [hd]                  1 + w
    std::vector<float> k_norm;   // [hd]                  1 + w
    std::vector<float> wo;       // [d, nh * hd]
    // MoE
    std::vector<float> router;       // [E, d]
    std::vector<float> exp_gate;     // [E, f, d]
    std::vector<float> exp_up;       // [E, f, d]
    std::vector<float> exp_down;     // [E, d, f]
    std::vector<float> sh_gate;      // [fs, d]
    std::vector<float> sh_up;        // [fs, d]
    std::vector<float> sh_down;      // [d, fs]
    std::vector<float> sh_gate_inp;  // [1, d]         the shared expert's scalar gate
};

struct Qwen35Weights {
    std::vector<float> token_embd;   // [vocab, d]
    std::vector<float> output_norm;  // [d]            1 + w
    std::vector<float> output;       // [vocab, d]; empty when tied to token_embd
    std::vector<Qwen35Layer> layers;
};

// ---- the name table: one place that knows what each tensor is called -----------------------



constexpr TensorName kTokenEmbd = {"token_embd.weight", "embed_tokens.weight"};
constexpr TensorName kOutputNorm = {"output_norm.weight", "norm.weight", HfConvert::kAddOne};
constexpr TensorName kOutput = {"output.weight", kHfLmHead};

constexpr TensorName kAttnNorm = {"blk.{}.attn_norm.weight", "layers.{}.input_layernorm.weight", HfConvert::kAddOne};
constexpr TensorName kPostAttnNorm = {"blk.{}.post_attention_norm.weight", "layers.{}.post_attention_layernorm.weight",
                                      HfConvert::kAddOne};
constexpr TensorName kSsmQkv = {"blk.{}.attn_qkv.weight", "layers.{}.linear_attn.in_proj_qkv.weight"};
constexpr TensorName kSsmZ = {"blk.{}.attn_gate.weight", "layers.{}.linear_attn.in_proj_z.weight"};
constexpr TensorName kSsmB = {"blk.{}.ssm_beta.weight", "layers.{}.linear_attn.in_proj_b.weight"};
constexpr TensorName kSsmA = {"blk.{}.ssm_alpha.weight", "layers.{}.linear_attn.in_proj_a.weight"};
constexpr TensorName kSsmConv = {"blk.{}.ssm_conv1d.weight", "layers.{}.linear_attn.conv1d.weight"};
constexpr TensorName kSsmANeg = {"blk.{}.ssm_a", "layers.{}.linear_attn.A_log", HfConvert::kNegativeExp};
constexpr TensorName kSsmDt = {"blk.{}.ssm_dt.bias", "layers.{}.linear_attn.dt_bias"};
constexpr TensorName kSsmNorm = {"blk.{}.ssm_norm.weight", "layers.{}.linear_attn.norm.weight"};
constexpr TensorName kSsmOut = {"blk.{}.ssm_out.weight", "layers.{}.linear_attn.out_proj.weight"};
constexpr TensorName kAttnQ = {"blk.{}.attn_q.weight", "layers.{}.self_attn.q_proj.weight"};
constexpr TensorName kAttnK = {"blk.{}.attn_k.weight", "layers.{}.self_attn.k_proj.weight"};
constexpr TensorName kAttnV = {"blk.{}.attn_v.weight", "layers.{}.self_attn.v_proj.weight"};
constexpr TensorName kAttnQNorm = {"blk.{}.attn_q_norm.weight", "layers.{}.self_attn.q_norm.weight", HfConvert::kAddOne};
constexpr TensorName kAttnKNorm = {"blk.{}.attn_k_norm.weight", "layers.{}.self_attn.k_norm.weight", HfConvert::kAddOne};
constexpr TensorName kAttnOut = {"blk.{}.attn_output.weight", "layers.{}.self_attn.o_proj.weight"};
constexpr TensorName kRouter = {"blk.{}.ffn_gate_inp.weight", "layers.{}.mlp.gate.weight"};
constexpr TensorName kShGate = {"blk.{}.ffn_gate_shexp.weight", "layers.{}.mlp.shared_expert.gate_proj.weight"};
constexpr TensorName kShUp = {"blk.{}.ffn_up_shexp.weight", "layers.{}.mlp.shared_expert.up_proj.weight"};
constexpr TensorName kShDown = {"blk.{}.ffn_down_shexp.weight", "layers.{}.mlp.shared_expert.down_proj.weight"};
constexpr TensorName kShGateInp = {"blk.{}.ffn_gate_inp_shexp.weight", "layers.{}.mlp.shared_expert_gate.weight"};
// Routed experts. GGUF: stacked [E, f, d] / [E, d, f]. HF: transformers 5 writes one tensor per
// expert (experts.<e>.gate_proj.weight ...); fused checkpoints have experts.gate_up_proj
// [E, 2f, d] (gate rows, then up rows) and experts.down_proj [E, d, f].
constexpr std::string_view kGgufExpGate = "blk.{}.ffn_gate_exps.weight";
constexpr std::string_view kGgufExpUp = "blk.{}.ffn_up_exps.weight";
constexpr std::string_view kGgufExpDown = "blk.{}.ffn_down_exps.weight";
constexpr std::string_view kHfExpert = "layers.{}.mlp.experts.{}.{}.weight";  // layer, expert, gate_proj|up_proj|down_proj
constexpr std::string_view kHfExpGateUp = "layers.{}.mlp.experts.gate_up_proj";
constexpr std::string_view kHfExpDown = "layers.{}.mlp.experts.down_proj";

// ---- the model ----------------------------------------------------------------------------------

class Qwen35Moe final : public Model {
public:
    Qwen35Moe(ModelConfig config, Qwen35Weights weights, GdnHeadOrder order)
        : config_(std::move(config)), w_(std::move(weights)), order_(order) {}

    const ModelConfig& config() const override { return config_; }

    std::vector<KvLayerSpec> kv_layout() const override { return kv_layout_of(config_); }

    std::vector<RecurrentLayerSpec> recurrent_layout() const override {
        std::vector<RecurrentLayerSpec> layout;
        for (const LayerConfig& layer : config_.layers) {
            if (layer.kind == LayerKind::kLinear) {
                layout.push_back({config_.linear_conv_kernel, conv_dim(),
                                  config_.linear_v_heads * config_.linear_k_head_dim * config_.linear_v_head_dim});
            } else {
                layout.push_back({});
            }
        }
        return layout;
    }

    Status forward(Ops& ops, const Batch& batch, std::span<const KvLayerView> kv, const ForwardOptions& options,
                   std::span<float> logits) const override;

private:
    int64_t conv_dim() const {
        return 2 * config_.linear_k_heads * config_.linear_k_head_dim + config_.linear_v_heads * config_.linear_v_head_dim;
    }
    ModelConfig config_;
    Qwen35Weights w_;
    GdnHeadOrder order_;  // kGrouped from HF folders, kTiled from llama.cpp GGUFs
};

Status Qwen35Moe::forward(Ops& ops, const Batch& batch, std::span<const KvLayerView> kv,
                          const ForwardOptions& options, std::span<float> logits) const {
    const int64_t n_tokens = static_cast<int64_t>(batch.tokens.size());
    const int64_t d = config_.hidden_size;
    const float eps = static_cast<float>(config_.rms_norm_eps);
    KESTREL_RETURN_IF_ERROR(check_forward_arguments("qwen35moe", config_, batch, kv, options.logits, logits));
    auto dump = [&](std::string_view name, int64_t layer, const std::vector<float>& data, int64_t cols) {
        if (options.debug != nullptr) (*options.debug)(name, layer, data.data(), n_tokens, cols);
    };

    // Gated DeltaNet dimensions.
    const int64_t nk = config_.linear_k_heads, nv = config_.linear_v_heads;
    const int64_t dk = config_.linear_k_head_dim, dv = config_.linear_v_head_dim;
    const int64_t value_dim = nv * dv;
    const int64_t cdim = conv_dim();
    // Full attention dimensions.
    const int64_t nh = config_.n_heads;
    // MoE dimensions.
    const int64_t n_exp = config_.n_experts, k_used = config_.n_experts_used;
    const int64_t f = config_.expert_ffn_size, fs = config_.shared_expert_ffn_size;

    std::vector<float> x(static_cast<size_t>(n_tokens * d));  // [T, d], the residual stream
    ops.workspace().reset();
    ops.embed(batch.tokens, f32_linear(w_.token_embd, config_.vocab_size, d), 1.0f, x.data());
    dump("inp_embd", -1, x, d);

    std::vector<float> attn_norm(x.size()), attn_out(x.size()), ffn_norm(x.size()), moe_out(x.size()),
        shared_out(x.size());
    std::vector<float> qkv, conv_out, z, a, b, core, gated;      // Gated DeltaNet
    std::vector<float> q, gate, k, v, kqv;                       // attention
    std::vector<float> router_logits(static_cast<size_t>(n_tokens * n_exp)), route_w(static_cast<size_t>(n_tokens * k_used));
    std::vector<int32_t> route_ids(route_w.size());
    std::vector<float> sh_g(static_cast<size_t>(n_tokens * fs)), sh_u(sh_g.size()), sh_act(sh_g.size()),
        sh_gate_logit(static_cast<size_t>(n_tokens));

    for (int64_t il = 0; il < config_.n_layers; ++il) {
        const Qwen35Layer& layer = w_.layers[il];
        const LayerConfig& lc = config_.layers[il];

        ops.rms_norm(x.data(), layer.attn_norm.data(), n_tokens, d, eps, attn_norm.data());
        dump("attn_norm", il, attn_norm, d);

        if (lc.kind == LayerKind::kLinear) {
            // ---- Gated DeltaNet ----
            const RecurrentLayerView& state = batch.recurrent[il];
            qkv.resize(static_cast<size_t>(n_tokens * cdim));
            conv_out.resize(qkv.size());
            z.resize(static_cast<size_t>(n_tokens * value_dim));
            a.resize(static_cast<size_t>(n_tokens * nv));
            b.resize(a.size());
            core.resize(z.size());
            gated.resize(z.size());
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.w_qkv, cdim, d), qkv.data());
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.w_z, value_dim, d), z.data());
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.w_b, nv, d), b.data());
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.w_a, nv, d), a.data());
            dump("linear_attn_qkv_mixed", il, qkv, cdim);
            dump("z", il, z, value_dim);
            // HF: mixed_qkv = silu(conv1d(mixed_qkv)) over [conv_state | new inputs].
            ops.conv1d_causal(qkv.data(), n_tokens, layer.conv.data(), state, /*silu=*/true, conv_out.data());
            dump("conv_output_silu", il, conv_out, cdim);
            // HF: the chunked rule for prompts, the recurrent one for single-token decode
            // (chunk 64 as torch_chunk_gated_delta_rule).
            const GatedDeltaParams params{nk, nv, dk, dv, order_, n_tokens > 1 ? 64 : 0};
            ops.gated_delta_rule(conv_out.data(), a.data(), b.data(), layer.a_neg.data(), layer.dt_bias.data(),
                                 n_tokens, params, state, core.data());
            dump("attn_output", il, core, value_dim);
            ops.rms_norm_gated(core.data(), z.data(), layer.ssm_norm.data(), n_tokens * nv, dv, eps, gated.data());
            dump("final_output", il, gated, value_dim);
            ops.linear(gated.data(), n_tokens, f32_linear(layer.w_out, d, value_dim), attn_out.data());
        } else {
            // ---- gated full attention ----
            const int64_t hd = lc.head_dim, n_kv = lc.n_kv_heads;
            q.resize(static_cast<size_t>(n_tokens * nh * hd));
            gate.resize(q.size());
            k.resize(static_cast<size_t>(n_tokens * n_kv * hd));
            v.resize(static_cast<size_t>(n_tokens * n_kv * lc.v_head_dim));
            kqv.resize(static_cast<size_t>(n_tokens * nh * lc.v_head_dim));
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.wq, nh * hd, d), q.data());
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.wq_gate, nh * hd, d), gate.data());
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.wk, n_kv * hd, d), k.data());
            ops.linear(attn_norm.data(), n_tokens, f32_linear(layer.wv, n_kv * lc.v_head_dim, d), v.data());
            // HF: q_norm / k_norm per head (1 + w), then partial rotate-half RoPE (M-RoPE with
            // equal text positions), on the first rope_dim values of each head.
            const int64_t rope_dim = config_.rope_dim > 0 ? config_.rope_dim : hd;
            ops.rms_norm(q.data(), layer.q_norm.data(), n_tokens * nh, hd, eps, q.data());
            ops.rms_norm(k.data(), layer.k_norm.data(), n_tokens * n_kv, hd, eps, k.data());
            ops.rope_neox_partial(q.data(), batch.positions, nh, hd, rope_dim, config_.rope_theta);
            ops.rope_neox_partial(k.data(), batch.positions, n_kv, hd, rope_dim, config_.rope_theta);
            dump("Qcur", il, q, nh * hd);
            dump("Kcur", il, k, n_kv * hd);
            dump("Vcur", il, v, n_kv * lc.v_head_dim);
            ops.kv_write(kv[il], batch.positions, k.data(), v.data());
            const AttentionParams params{nh, static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))), 0, 0.0f};
            ops.attention(q.data(), batch.positions, kv[il], params, kqv.data());
            // HF: attn_output * sigmoid(gate), elementwise over [T, nh * hd].
            ops.sigmoid_mul(kqv.data(), gate.data(), n_tokens * nh * lc.v_head_dim, kqv.data());
            dump("kqv_out", il, kqv, nh * lc.v_head_dim);
            ops.linear(kqv.data(), n_tokens, f32_linear(layer.wo, d, nh * lc.v_head_dim), attn_out.data());
        }
        dump("attn_proj", il, attn_out, d);
        ops.add(x.data(), attn_out.data(), n_tokens * d, x.data());
        dump("attn_residual", il, x, d);

        // ---- MoE: softmax top-k routed experts + sigmoid-gated shared expert ----
        ops.rms_norm(x.data(), layer.post_attn_norm.data(), n_tokens, d, eps, ffn_norm.data());
        dump("ffn_norm", il, ffn_norm, d);
        ops.linear(ffn_norm.data(), n_tokens, f32_linear(layer.router, n_exp, d), router_logits.data());
        dump("ffn_moe_logits", il, router_logits, n_exp);
        ops.moe_route(router_logits.data(), n_tokens, n_exp, k_used, route_ids.data(), route_w.data());
        const MoeExpertWeights experts{layer.exp_gate.data(), layer.exp_up.data(), layer.exp_down.data(), n_exp, f, d};
        ops.moe_experts(ffn_norm.data(), n_tokens, route_ids.data(), route_w.data(), k_used, experts, moe_out.data());
        dump("ffn_moe_out", il, moe_out, d);
        ops.linear(ffn_norm.data(), n_tokens, f32_linear(layer.sh_gate, fs, d), sh_g.data());
        ops.linear(ffn_norm.data(), n_tokens, f32_linear(layer.sh_up, fs, d), sh_u.data());
        ops.silu_and_mul(sh_g.data(), sh_u.data(), n_tokens * fs, sh_act.data());
        ops.linear(sh_act.data(), n_tokens, f32_linear(layer.sh_down, d, fs), shared_out.data());
        ops.linear(ffn_norm.data(), n_tokens, f32_linear(layer.sh_gate_inp, 1, d), sh_gate_logit.data());
        dump("ffn_shexp", il, shared_out, d);
        ops.add_sigmoid_scaled(shared_out.data(), sh_gate_logit.data(), n_tokens, d, moe_out.data());
        dump("ffn_out", il, moe_out, d);
        ops.add(x.data(), moe_out.data(), n_tokens * d, x.data());
        dump("l_out", il, x, d);
    }

    // ---- output: final norm, lm_head (only the rows whose logits are asked for) ----
    return output_head(ops, config_, x.data(), n_tokens, w_.output_norm.data(),
                       f32_linear(w_.output.empty() ? w_.token_embd : w_.output, config_.vocab_size, d), options,
                       logits);
}

// Splits HF/GGUF q_proj rows [nh, (q hd | gate hd), d] into the query rows and the gate rows.
void split_query_gate(const std::vector<float>& w, int64_t nh, int64_t hd, int64_t d, std::vector<float>& wq,
                      std::vector<float>& wgate) {
    wq.resize(static_cast<size_t>(nh * hd * d));
    wgate.resize(wq.size());
    for (int64_t h = 0; h < nh; ++h) {
        const float* src = w.data() + h * 2 * hd * d;
        std::copy(src, src + hd * d, wq.begin() + h * hd * d);
        std::copy(src + hd * d, src + 2 * hd * d, wgate.begin() + h * hd * d);
    }
}

Status read_experts(const WeightReader& reader, int64_t il, int64_t n_exp, int64_t f, int64_t d, Qwen35Layer& layer) {
    if (reader.gguf()) {
        KESTREL_ASSIGN_OR_RETURN(layer.exp_gate, reader.read(fmt::format(fmt::runtime(kGgufExpGate), il), {n_exp, f, d}));
        KESTREL_ASSIGN_OR_RETURN(layer.exp_up, reader.read(fmt::format(fmt::runtime(kGgufExpUp), il), {n_exp, f, d}));
        KESTREL_ASSIGN_OR_RETURN(layer.exp_down, reader.read(fmt::format(fmt::runtime(kGgufExpDown), il), {n_exp, d, f}));
        return ok_status();
    }
    const std::string fused = reader.hf_prefix() + fmt::format(fmt::runtime(kHfExpGateUp), il);
    if (reader.find(fused) != nullptr) {
        KESTREL_ASSIGN_OR_RETURN(std::vector<float> gate_up, reader.read(fused, {n_exp, 2 * f, d}));
        layer.exp_gate.resize(static_cast<size_t>(n_exp * f * d));
        layer.exp_up.resize(layer.exp_gate.size());
        for (int64_t e = 0; e < n_exp; ++e) {
            const float* src = gate_up.data() + e * 2 * f * d;
            std::copy(src, src + f * d, layer.exp_gate.begin() + e * f * d);
            std::copy(src + f * d, src + 2 * f * d, layer.exp_up.begin() + e * f * d);
        }
        KESTREL_ASSIGN_OR_RETURN(layer.exp_down, reader.read(reader.hf_prefix() + fmt::format(fmt::runtime(kHfExpDown), il),
                                                                 {n_exp, d, f}));
        return ok_status();
    }
    layer.exp_gate.resize(static_cast<size_t>(n_exp * f * d));
    layer.exp_up.resize(layer.exp_gate.size());
    layer.exp_down.resize(layer.exp_gate.size());
    for (int64_t e = 0; e < n_exp; ++e) {
        struct Part {
            const char* name;
            std::vector<float>* dst;
            int64_t rows, cols;
        };
        for (const Part& part : {Part{"gate_proj", &layer.exp_gate, f, d}, Part{"up_proj", &layer.exp_up, f, d},
                                 Part{"down_proj", &layer.exp_down, d, f}}) {
            KESTREL_ASSIGN_OR_RETURN(std::vector<float> w,
                                     reader.read(reader.hf_prefix() + fmt::format(fmt::runtime(kHfExpert), il, e, part.name),
                                                     {part.rows, part.cols}));
            std::copy(w.begin(), w.end(), part.dst->begin() + e * part.rows * part.cols);
        }
    }
    return ok_status();
}

// Tensors the text forward does not use: the vision tower and the multi-token-prediction head.
void log_skipped(const ModelFiles& files, int64_t n_layers) {
    int64_t vision = 0, mtp = 0;
    const std::string mtp_block = fmt::format("blk.{}.", n_layers);
    for (const WeightInfo& info : files.weights->tensors()) {
        const std::string_view name = info.name;
        if (name.starts_with("model.visual.") || name.starts_with("visual.") || name.starts_with("v.")) ++vision;
        if (name.starts_with("mtp.") || name.starts_with("model.mtp.") || name.starts_with(mtp_block)) ++mtp;
    }
    if (vision + mtp > 0) {
        log_info("qwen35moe: skipping {} vision-tower and {} multi-token-prediction (blk.{} / mtp.*) tensors "
                 "(text decoding only)",
                 vision, mtp, n_layers);
    }
}

}  // namespace

Result<std::unique_ptr<Model>> load_qwen35_moe(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                               const WeightLoadOptions& options) {
    // The forward below keeps fp32 weights and activations on the host: the CPU reference. The
    // CUDA path (fused MoE and Gated DeltaNet kernels) is issue 7.
    if (!ops.accepts(WeightFormat::kF32) || options.dummy || files.weights == nullptr) {
        return Status(StatusCode::kUnsupported,
                      fmt::format("qwen35moe runs on the CPU backend from a model file only for now (asked: {} "
                                  "backend{}); use --device cpu",
                                  ops.name(), options.dummy ? ", synthetic weights" : ""));
    }
    const std::string source = files.weights->description();
    if (config.n_layers <= 0 || static_cast<int64_t>(config.layers.size()) != config.n_layers) {
        return Status(StatusCode::kCorruptFile, fmt::format("{}: qwen35moe config has no layers", source));
    }
    const int64_t d = config.hidden_size, vocab = config.vocab_size;
    const int64_t nk = config.linear_k_heads, nv = config.linear_v_heads;
    const int64_t dk = config.linear_k_head_dim, dv = config.linear_v_head_dim, kernel = config.linear_conv_kernel;
    const int64_t n_exp = config.n_experts, f = config.expert_ffn_size, fs = config.shared_expert_ffn_size;
    const int64_t nh = config.n_heads;
    if (config.count_layers(LayerKind::kLinear) > 0 &&
        (nk <= 0 || nv <= 0 || dk <= 0 || dv <= 0 || kernel <= 0 || nv % nk != 0)) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: Gated DeltaNet needs positive head counts and dims with value heads a "
                                  "multiple of key heads (got {} key heads of {}, {} value heads of {}, conv {})",
                                  source, nk, dk, nv, dv, kernel));
    }
    if (n_exp <= 0 || config.n_experts_used <= 0 || config.n_experts_used > n_exp || f <= 0 || fs <= 0) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: qwen35moe needs experts (got {} experts, {} used, ffn {}, shared ffn {})",
                                  source, n_exp, config.n_experts_used, f, fs));
    }
    const int64_t value_dim = nv * dv, cdim = 2 * nk * dk + value_dim;

    WeightReader reader(files);
    log_skipped(files, config.n_layers);
    Qwen35Weights w;
    KESTREL_ASSIGN_OR_RETURN(w.token_embd, reader.read(kTokenEmbd, -1, {vocab, d}));
    KESTREL_ASSIGN_OR_RETURN(w.output_norm, reader.read(kOutputNorm, -1, {d}));
    if (reader.find(kOutput, -1) != nullptr) {
        KESTREL_ASSIGN_OR_RETURN(w.output, reader.read(kOutput, -1, {vocab, d}));
    }

    w.layers.resize(static_cast<size_t>(config.n_layers));
    for (int64_t il = 0; il < config.n_layers; ++il) {
        const LayerConfig& lc = config.layers[il];
        Qwen35Layer& layer = w.layers[il];
        layer.kind = lc.kind;
        KESTREL_ASSIGN_OR_RETURN(layer.attn_norm, reader.read(kAttnNorm, il, {d}));
        KESTREL_ASSIGN_OR_RETURN(layer.post_attn_norm, reader.read(kPostAttnNorm, il, {d}));
        if (lc.kind == LayerKind::kLinear) {
            KESTREL_ASSIGN_OR_RETURN(layer.w_qkv, reader.read(kSsmQkv, il, {cdim, d}));
            KESTREL_ASSIGN_OR_RETURN(layer.w_z, reader.read(kSsmZ, il, {value_dim, d}));
            KESTREL_ASSIGN_OR_RETURN(layer.w_b, reader.read(kSsmB, il, {nv, d}));
            KESTREL_ASSIGN_OR_RETURN(layer.w_a, reader.read(kSsmA, il, {nv, d}));
            KESTREL_ASSIGN_OR_RETURN(layer.conv, reader.read(kSsmConv, il, {cdim, kernel}));
            KESTREL_ASSIGN_OR_RETURN(layer.a_neg, reader.read(kSsmANeg, il, {nv}));
            KESTREL_ASSIGN_OR_RETURN(layer.dt_bias, reader.read(kSsmDt, il, {nv}));
            KESTREL_ASSIGN_OR_RETURN(layer.ssm_norm, reader.read(kSsmNorm, il, {dv}));
            KESTREL_ASSIGN_OR_RETURN(layer.w_out, reader.read(kSsmOut, il, {d, value_dim}));
        } else {
            if (lc.kind != LayerKind::kFull || lc.k_eq_v || lc.v_head_dim != lc.head_dim) {
                return Status(StatusCode::kCorruptFile,
                              fmt::format("{}: qwen35moe layer {} is neither Gated DeltaNet nor full attention", source, il));
            }
            const int64_t hd = lc.head_dim, n_kv = lc.n_kv_heads;
            KESTREL_ASSIGN_OR_RETURN(std::vector<float> wq_gate, reader.read(kAttnQ, il, {2 * nh * hd, d}));
            split_query_gate(wq_gate, nh, hd, d, layer.wq, layer.wq_gate);
            KESTREL_ASSIGN_OR_RETURN(layer.wk, reader.read(kAttnK, il, {n_kv * hd, d}));
            KESTREL_ASSIGN_OR_RETURN(layer.wv, reader.read(kAttnV, il, {n_kv * hd, d}));
            KESTREL_ASSIGN_OR_RETURN(layer.q_norm, reader.read(kAttnQNorm, il, {hd}));
            KESTREL_ASSIGN_OR_RETURN(layer.k_norm, reader.read(kAttnKNorm, il, {hd}));
            KESTREL_ASSIGN_OR_RETURN(layer.wo, reader.read(kAttnOut, il, {d, nh * hd}));
        }
        KESTREL_ASSIGN_OR_RETURN(layer.router, reader.read(kRouter, il, {n_exp, d}));
        KESTREL_RETURN_IF_ERROR(read_experts(reader, il, n_exp, f, d, layer));
        KESTREL_ASSIGN_OR_RETURN(layer.sh_gate, reader.read(kShGate, il, {fs, d}));
        KESTREL_ASSIGN_OR_RETURN(layer.sh_up, reader.read(kShUp, il, {fs, d}));
        KESTREL_ASSIGN_OR_RETURN(layer.sh_down, reader.read(kShDown, il, {d, fs}));
        KESTREL_ASSIGN_OR_RETURN(layer.sh_gate_inp, reader.read(kShGateInp, il, {1, d}));
    }
    // llama.cpp's converter reorders value heads to tiled order (gguf-layouts.md); HF keeps them grouped.
    const GdnHeadOrder order = reader.gguf() ? GdnHeadOrder::kTiled : GdnHeadOrder::kGrouped;
    return std::unique_ptr<Model>(std::make_unique<Qwen35Moe>(config, std::move(w), order));
}

}  // namespace kestrel
