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
#include <algorithm>
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
// In backend memory: matrices in the backend's engine format (fp32 on the CPU reference, W4/W8/
// BF16 on CUDA), vectors fp32. d = d_model; full attention: nh query heads, nkv KV heads of hd;
// Gated DeltaNet: nk key heads of dk, nv value heads of dv, conv kernel K, conv_dim = 2 nk dk +
// nv dv; MoE: E experts of f, shared expert fs.

struct Qwen35Layer {
    Weight attn_norm;       // [d]            1 + w
    Weight post_attn_norm;  // [d]            1 + w
    // Gated DeltaNet ("linear_attention")
    Weight w_gdn_in;  // [conv_dim + nv dv + 2 nv, d]: qkv | z (output gate) | b (beta = sigmoid(b))
                      // | a
    Weight conv;      // [conv_dim, K]
    Weight a_neg;     // [nv]                  -exp(A_log)
    Weight dt_bias;   // [nv]
    Weight ssm_norm;  // [dv]                  plain w, shared by the heads
    Weight w_out;     // [d, nv dv]
    // gated full attention
    Weight w_attn_in;  // [2 nh hd + 2 nkv hd, d]: q | gate (the output gate) | k | v
    Weight q_norm;     // [hd]                  1 + w
    Weight k_norm;     // [hd]                  1 + w
    Weight wo;         // [d, nh hd]
    // MoE
    // With the shared expert stacked after the routed ones (shared_in_experts): w_moe_in = router |
    // shared expert's scalar gate [E + 1, d], and the stacks hold E + 1 experts. Otherwise w_moe_in
    // = router | shared gate | shared up | scalar gate [E + 2 fs + 1, d], the stacks E experts, and
    // sh_down [d, fs] is read.
    Weight w_moe_in;
    Weight exp_gate_up;  // [E' 2f, d]  expert e: f gate rows, then f up rows
    Weight exp_down;     // [E' d, f]
    Weight sh_down;      // [d, fs], only when the shared expert is not stacked
    // The shared expert runs as expert E of the routed stacks, weighted sigmoid(scalar gate) in
    // the router's extra slot (Ops::moe_route): one expert launch pair for all nine, no separate
    // SwiGLU, GEMV and gated add. Needs fs == f (Qwen3.5-35B-A3B: 512 and 512) and, from a GGUF,
    // the shared expert's tensors of the routed stacks' types (so the stacks keep their format).
    bool shared_in_experts = false;
};

struct Qwen35Weights {
    Weight token_embd;   // [vocab, d]
    Weight output_norm;  // [d]            1 + w
    Weight output;       // [vocab, d]; empty when tied to token_embd
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
    auto show = [&](std::string_view name, int64_t layer, const float* data, int64_t cols) {
        dump(ops, options, name, layer, data, n_tokens, cols);
    };
    // The normalised inputs of the projections are stored only for the debug hook.
    const bool keep = options.debug != nullptr;

    // Gated DeltaNet dimensions.
    const int64_t nk = config_.linear_k_heads, nv = config_.linear_v_heads;
    const int64_t dk = config_.linear_k_head_dim, dv = config_.linear_v_head_dim;
    const int64_t value_dim = nv * dv;
    const int64_t cdim = conv_dim();
    // Full attention dimensions (every full layer has the same).
    const int64_t nh = config_.n_heads;
    int64_t attn_width = 0, q_width = 0;
    for (const LayerConfig& lc : config_.layers) {
        if (lc.kind != LayerKind::kFull) continue;
        q_width = std::max(q_width, nh * lc.head_dim);
        attn_width = std::max(attn_width,
                              2 * nh * lc.head_dim + lc.n_kv_heads * (lc.head_dim + lc.v_head_dim));
    }
    // MoE dimensions: k_used routed slots per token, plus the shared expert's where stacked.
    const int64_t n_exp = config_.n_experts, k_used = config_.n_experts_used;
    const int64_t f = config_.expert_ffn_size, fs = config_.shared_expert_ffn_size;
    const bool any_separate =
        std::any_of(w_.layers.begin(), w_.layers.end(),
                    [](const Qwen35Layer& l) { return !l.shared_in_experts; });
    const int64_t gdn_widths[] = {cdim, value_dim, nv, nv};
    // The one-wide scalar gate logit last: in prefill each block starts at T * (the widths
    // before it), and the GEMMs want 16-byte-aligned outputs whatever T is.
    const int64_t moe_widths_stacked[] = {n_exp, 1};
    const int64_t moe_widths_separate[] = {n_exp, fs, fs, 1};
    const int64_t moe_width_max = any_separate ? n_exp + 2 * fs + 1 : n_exp + 1;

    // Intermediates in the backend's workspace, each projection's blocks consecutive (the stacked
    // projection writes them in place).
    Workspace& ws = ops.workspace();
    ws.reset();
    KESTREL_ASSIGN_OR_RETURN(float* x, ws.floats(n_tokens * d));  // [T, d], the residual stream
    KESTREL_ASSIGN_OR_RETURN(float* attn_norm, ws.floats(n_tokens * d));
    KESTREL_ASSIGN_OR_RETURN(float* attn_out, ws.floats(n_tokens * d));
    KESTREL_ASSIGN_OR_RETURN(float* ffn_norm, ws.floats(n_tokens * d));
    KESTREL_ASSIGN_OR_RETURN(float* shared_out, ws.floats(any_separate ? n_tokens * d : 1));
    KESTREL_ASSIGN_OR_RETURN(float* mixer_in,
                             ws.floats(n_tokens * std::max(cdim + value_dim + 2 * nv, attn_width)));
    KESTREL_ASSIGN_OR_RETURN(float* mixer_mid, ws.floats(n_tokens * std::max(cdim, q_width)));
    KESTREL_ASSIGN_OR_RETURN(float* core, ws.floats(n_tokens * value_dim));
    KESTREL_ASSIGN_OR_RETURN(float* moe_in, ws.floats(n_tokens * moe_width_max));
    KESTREL_ASSIGN_OR_RETURN(float* route_w, ws.floats(n_tokens * (k_used + 1)));
    KESTREL_ASSIGN_OR_RETURN(float* route_id_space, ws.floats(n_tokens * (k_used + 1)));
    KESTREL_ASSIGN_OR_RETURN(float* sh_act, ws.floats(any_separate ? n_tokens * fs : 1));
    auto* route_ids = reinterpret_cast<int32_t*>(route_id_space);  // int32 ids in float-sized slots
    float* router_logits = moe_in;
    float* sh_g = router_logits + n_tokens * n_exp;  // separate shared expert only
    float* sh_u = sh_g + n_tokens * fs;              // separate shared expert only

    ops.embed(batch.tokens, w_.token_embd, 1.0f, x);
    show("inp_embd", -1, x, d);

    for (int64_t il = 0; il < config_.n_layers; ++il) {
        const Qwen35Layer& layer = w_.layers[il];
        const LayerConfig& lc = config_.layers[il];

        if (lc.kind == LayerKind::kLinear) {
            // ---- Gated DeltaNet: h = rms_norm(x); qkv | z | b | a = h W^T ----
            // HF: mixed_qkv = silu(conv1d(mixed_qkv)) over [conv_state | new inputs].
            const RecurrentLayerView& state = batch.recurrent[il];
            float* qkv = mixer_in;
            float* z = qkv + n_tokens * cdim;
            float* b = z + n_tokens * value_dim;
            float* a = b + n_tokens * nv;
            float* conv_out = mixer_mid;
            ops.rms_norm_linear_conv1d(x, layer.attn_norm.f32(), n_tokens, d, eps, attn_norm, keep,
                                       layer.w_gdn_in, gdn_widths, mixer_in, layer.conv.f32(),
                                       state, /*silu=*/true, conv_out);
            show("attn_norm", il, attn_norm, d);
            show("linear_attn_qkv_mixed", il, qkv, cdim);
            show("z", il, z, value_dim);
            show("conv_output_silu", il, conv_out, cdim);
            // HF: the chunked rule for prompts, the recurrent one for single-token decode
            // (chunk 64 as torch_chunk_gated_delta_rule).
            const GatedDeltaParams params{nk, nv, dk, dv, order_, n_tokens > 1 ? 64 : 0};
            ops.gated_delta_rule(conv_out, a, b, layer.a_neg.f32(), layer.dt_bias.f32(), n_tokens,
                                 params, state, core);
            show("attn_output", il, core, value_dim);
            float* gated = mixer_mid;  // the conv's output is spent
            ops.rms_norm_gated_linear(core, z, layer.ssm_norm.f32(), n_tokens, nv, dv, eps, gated,
                                      keep, layer.w_out, attn_out);
            show("final_output", il, gated, value_dim);
        } else {
            // ---- gated full attention: h = rms_norm(x); q | gate | k | v = h W^T ----
            const int64_t hd = lc.head_dim, n_kv = lc.n_kv_heads;
            const int64_t attn_widths[] = {nh * hd, nh * hd, n_kv * hd, n_kv * lc.v_head_dim};
            ops.rms_norm_linear_blocks(x, layer.attn_norm.f32(), n_tokens, d, eps, attn_norm, keep,
                                       layer.w_attn_in, attn_widths, mixer_in);
            show("attn_norm", il, attn_norm, d);
            float* q = mixer_in;
            float* gate = q + n_tokens * nh * hd;
            float* k = gate + n_tokens * nh * hd;
            float* v = k + n_tokens * n_kv * hd;
            float* kqv = mixer_mid;
            // HF: q_norm / k_norm per head (1 + w), then partial rotate-half RoPE (M-RoPE with
            // equal text positions), on the first rope_dim values of each head; then k, v into the
            // cache. One fused op (rms_norm x 2, rope_neox_partial x 2, kv_write on the CPU).
            AttentionInputsParams inputs;
            inputs.n_heads = nh;
            inputs.n_kv_heads = n_kv;
            inputs.head_dim = hd;
            inputs.eps = eps;
            inputs.theta = config_.rope_theta;
            inputs.partial_rotary_dim = config_.rope_dim > 0 ? config_.rope_dim : hd;
            KESTREL_RETURN_IF_ERROR(ops.attention_inputs(q, k, v, layer.q_norm.f32(),
                                                         layer.k_norm.f32(), batch.positions,
                                                         inputs, kv[il]));
            show("Qcur", il, q, nh * hd);
            show("Kcur", il, k, n_kv * hd);
            show("Vcur", il, v, n_kv * lc.v_head_dim);
            const AttentionParams params{nh, static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))), 0, 0.0f};
            ops.attention(q, batch.positions, kv[il], params, kqv);
            // HF: attn_output * sigmoid(gate), elementwise over [T, nh * hd].
            ops.sigmoid_mul(kqv, gate, n_tokens * nh * lc.v_head_dim, kqv);
            show("kqv_out", il, kqv, nh * lc.v_head_dim);
            ops.linear(kqv, n_tokens, layer.wo, attn_out);
        }
        show("attn_proj", il, attn_out, d);

        // ---- MoE: softmax top-k routed experts + sigmoid-gated shared expert ----
        // x += y; h = rms_norm(x); router logits | (shared gate | shared up |) shared gate logit
        // = h W^T
        const bool stacked = layer.shared_in_experts;
        const std::span<const int64_t> moe_widths =
            stacked ? std::span<const int64_t>(moe_widths_stacked)
                    : std::span<const int64_t>(moe_widths_separate);
        const int64_t moe_width = stacked ? n_exp + 1 : n_exp + 2 * fs + 1;
        float* sh_gate_logit = moe_in + n_tokens * (moe_width - 1);
        ops.add_rms_norm_linear_blocks(attn_out, x, layer.post_attn_norm.f32(), n_tokens, d, eps,
                                       ffn_norm, true, layer.w_moe_in, moe_widths, moe_in);
        // Router: softmax top-k, slot k the shared expert (sigmoid of its gate) when stacked.
        ops.moe_route(router_logits, n_tokens, n_exp, k_used, stacked ? sh_gate_logit : nullptr,
                      route_ids, route_w);
        show("attn_residual", il, x, d);
        show("ffn_norm", il, ffn_norm, d);
        show("ffn_moe_logits", il, router_logits, n_exp);
        // x += sum_j w_j SwiGLU_e(h), the shared expert as slot k when stacked (HF adds the
        // shared expert's output to the routed sum, then the sum to x: the same order).
        const MoeExpertWeights experts{&layer.exp_gate_up, &layer.exp_down,
                                       stacked ? n_exp + 1 : n_exp, f, d};
        ops.moe_experts(ffn_norm, n_tokens, route_ids, route_w, stacked ? k_used + 1 : k_used,
                        experts, x);
        if (!stacked) {
            ops.silu_and_mul(sh_g, sh_u, n_tokens * fs, sh_act);
            ops.linear(sh_act, n_tokens, layer.sh_down, shared_out);
            show("ffn_shexp", il, shared_out, d);
            ops.add_sigmoid_scaled(shared_out, sh_gate_logit, n_tokens, d, x);
        }
        show("l_out", il, x, d);
    }

    // ---- output: final norm, lm_head (only the rows whose logits are asked for) ----
    KESTREL_RETURN_IF_ERROR(output_head(ops, config_, x, n_tokens, w_.output_norm.f32(),
                                        w_.output.empty() ? w_.token_embd : w_.output, options,
                                        logits));
    return ops.take_error();
}

// The routed experts as the engine's two stacks (MoeExpertWeights): gate_up [E 2f, d] with
// expert e's gate rows then its up rows, down [E d, f]; with_shared appends the shared expert
// (gate_proj, up_proj [f, d], down_proj [d, f]) as expert E.
Status read_experts(WeightReader& reader, int64_t il, int64_t n_exp, int64_t f, int64_t d,
                    bool with_shared, Qwen35Layer& layer) {
    std::vector<MatrixPart> gate_up_parts, down_parts;
    std::vector<RowBlock> gate_up_blocks, down_blocks;
    const std::string fused = reader.hf_prefix() + fmt::format(fmt::runtime(kHfExpGateUp), il);
    if (reader.gguf() || reader.dummy()) {
        gate_up_parts = {{fmt::format(fmt::runtime(kGgufExpGate), il), {n_exp, f, d}},
                         {fmt::format(fmt::runtime(kGgufExpUp), il), {n_exp, f, d}}};
        for (int64_t e = 0; e < n_exp; ++e) {
            gate_up_blocks.push_back({0, e * f, f});
            gate_up_blocks.push_back({1, e * f, f});
        }
        down_parts = {{fmt::format(fmt::runtime(kGgufExpDown), il), {n_exp, d, f}}};
        down_blocks = {{0, 0, n_exp * d}};
    } else if (reader.find(fused) != nullptr) {
        gate_up_parts = {{fused, {n_exp, 2 * f, d}}};  // already gate rows then up rows per expert
        gate_up_blocks = {{0, 0, n_exp * 2 * f}};
        down_parts = {
            {reader.hf_prefix() + fmt::format(fmt::runtime(kHfExpDown), il), {n_exp, d, f}}};
        down_blocks = {{0, 0, n_exp * d}};
    } else {
        for (int64_t e = 0; e < n_exp; ++e) {
            auto name = [&](const char* part) {
                return reader.hf_prefix() + fmt::format(fmt::runtime(kHfExpert), il, e, part);
            };
            gate_up_parts.push_back({name("gate_proj"), {f, d}});
            gate_up_parts.push_back({name("up_proj"), {f, d}});
            gate_up_blocks.push_back({static_cast<size_t>(2 * e), 0, f});
            gate_up_blocks.push_back({static_cast<size_t>(2 * e + 1), 0, f});
            down_parts.push_back({name("down_proj"), {d, f}});
            down_blocks.push_back({static_cast<size_t>(e), 0, d});
        }
    }
    if (with_shared) {
        const size_t gate = gate_up_parts.size();
        gate_up_parts.push_back({reader.name_of(kShGate, il), {f, d}});
        gate_up_parts.push_back({reader.name_of(kShUp, il), {f, d}});
        gate_up_blocks.push_back({gate, 0, f});
        gate_up_blocks.push_back({gate + 1, 0, f});
        down_parts.push_back({reader.name_of(kShDown, il), {d, f}});
        down_blocks.push_back({down_parts.size() - 1, 0, d});
    }
    KESTREL_ASSIGN_OR_RETURN(layer.exp_gate_up, reader.read_rows(gate_up_parts, gate_up_blocks, d,
                                                                 MatrixPrecision::kQuantised));
    KESTREL_ASSIGN_OR_RETURN(
        layer.exp_down, reader.read_rows(down_parts, down_blocks, f, MatrixPrecision::kQuantised));
    return ok_status();
}

// Whether the shared expert can join the routed stacks without changing their engine format: a
// GGUF's shared tensors of the same types as the routed stacks (Q4_K_M files may hold a Q6_K
// ffn_down_shexp beside Q4_K ffn_down_exps, and a stack is one format). HF and synthetic weights
// convert alike.
bool shared_expert_matches_routed(const WeightReader& reader, int64_t il) {
    if (!reader.gguf()) return true;
    const std::pair<std::string_view, TensorName> pairs[] = {
        {kGgufExpGate, kShGate}, {kGgufExpUp, kShUp}, {kGgufExpDown, kShDown}};
    for (const auto& [routed, shared] : pairs) {
        const WeightInfo* a = reader.find(fmt::format(fmt::runtime(routed), il));
        const WeightInfo* b = reader.find(shared, il);
        if (a == nullptr || b == nullptr || a->dtype != b->dtype) return false;
    }
    return true;
}

// q | gate | k | v of a full-attention layer: q_proj holds [nh, (q hd | gate hd), d] (HF and
// GGUF alike), split here into all query rows, then all gate rows.
Status read_attention_inputs(WeightReader& reader, int64_t il, int64_t nh, const LayerConfig& lc,
                             int64_t d, Qwen35Layer& layer) {
    const int64_t hd = lc.head_dim, n_kv = lc.n_kv_heads;
    const MatrixPart parts[] = {{reader.name_of(kAttnQ, il), {2 * nh * hd, d}},
                                {reader.name_of(kAttnK, il), {n_kv * hd, d}},
                                {reader.name_of(kAttnV, il), {n_kv * lc.v_head_dim, d}}};
    std::vector<RowBlock> blocks;
    for (int64_t h = 0; h < nh; ++h) blocks.push_back({0, h * 2 * hd, hd});
    for (int64_t h = 0; h < nh; ++h) blocks.push_back({0, h * 2 * hd + hd, hd});
    blocks.push_back({1, 0, n_kv * hd});
    blocks.push_back({2, 0, n_kv * lc.v_head_dim});
    KESTREL_ASSIGN_OR_RETURN(layer.w_attn_in, reader.read_rows(parts, blocks, d));
    return ok_status();
}

// Tensors the text forward does not use: the vision tower and the multi-token-prediction head.
void log_skipped(const ModelFiles& files, int64_t n_layers) {
    if (files.weights == nullptr) return;
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
    const std::string source =
        files.weights != nullptr ? files.weights->description() : "qwen35moe";
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

    WeightReader reader(files, ops, options);
    log_skipped(files, config.n_layers);
    Qwen35Weights w;
    KESTREL_ASSIGN_OR_RETURN(w.token_embd, reader.read_matrix(kTokenEmbd, -1, vocab, d));
    KESTREL_ASSIGN_OR_RETURN(w.output_norm, reader.read_vector(kOutputNorm, -1, {d}));
    if (reader.dummy() || reader.find(kOutput, -1) != nullptr) {
        KESTREL_ASSIGN_OR_RETURN(w.output, reader.read_matrix(kOutput, -1, vocab, d));
    }

    bool noted_separate = false;
    w.layers.resize(static_cast<size_t>(config.n_layers));
    for (int64_t il = 0; il < config.n_layers; ++il) {
        const LayerConfig& lc = config.layers[il];
        Qwen35Layer& layer = w.layers[il];
        KESTREL_ASSIGN_OR_RETURN(layer.attn_norm, reader.read_vector(kAttnNorm, il, {d}));
        KESTREL_ASSIGN_OR_RETURN(layer.post_attn_norm, reader.read_vector(kPostAttnNorm, il, {d}));
        if (lc.kind == LayerKind::kLinear) {
            const TensorName names[] = {kSsmQkv, kSsmZ, kSsmB, kSsmA};
            const int64_t outs[] = {cdim, value_dim, nv, nv};
            KESTREL_ASSIGN_OR_RETURN(layer.w_gdn_in, reader.read_matrix_stack(names, il, outs, d));
            KESTREL_ASSIGN_OR_RETURN(layer.conv, reader.read_vector(kSsmConv, il, {cdim, kernel}));
            KESTREL_ASSIGN_OR_RETURN(layer.a_neg, reader.read_vector(kSsmANeg, il, {nv}));
            KESTREL_ASSIGN_OR_RETURN(layer.dt_bias, reader.read_vector(kSsmDt, il, {nv}));
            KESTREL_ASSIGN_OR_RETURN(layer.ssm_norm, reader.read_vector(kSsmNorm, il, {dv}));
            KESTREL_ASSIGN_OR_RETURN(layer.w_out, reader.read_matrix(kSsmOut, il, d, value_dim));
        } else {
            if (lc.kind != LayerKind::kFull || lc.k_eq_v || lc.v_head_dim != lc.head_dim) {
                return Status(StatusCode::kCorruptFile,
                              fmt::format("{}: qwen35moe layer {} is neither Gated DeltaNet nor full attention", source, il));
            }
            KESTREL_RETURN_IF_ERROR(read_attention_inputs(reader, il, nh, lc, d, layer));
            KESTREL_ASSIGN_OR_RETURN(layer.q_norm,
                                     reader.read_vector(kAttnQNorm, il, {lc.head_dim}));
            KESTREL_ASSIGN_OR_RETURN(layer.k_norm,
                                     reader.read_vector(kAttnKNorm, il, {lc.head_dim}));
            KESTREL_ASSIGN_OR_RETURN(layer.wo,
                                     reader.read_matrix(kAttnOut, il, d, nh * lc.head_dim));
        }
        // The router at W8 or wider (MatrixPrecision::kAtLeastW8), and the shared expert's
        // projections of the same input with it (the scalar gate last: see forward()).
        layer.shared_in_experts = fs == f && shared_expert_matches_routed(reader, il);
        if (layer.shared_in_experts) {
            const TensorName names[] = {kRouter, kShGateInp};
            const int64_t outs[] = {n_exp, 1};
            KESTREL_ASSIGN_OR_RETURN(
                layer.w_moe_in,
                reader.read_matrix_stack(names, il, outs, d, MatrixPrecision::kAtLeastW8));
        } else {
            const TensorName names[] = {kRouter, kShGate, kShUp, kShGateInp};
            const int64_t outs[] = {n_exp, fs, fs, 1};
            KESTREL_ASSIGN_OR_RETURN(
                layer.w_moe_in,
                reader.read_matrix_stack(names, il, outs, d, MatrixPrecision::kAtLeastW8));
            KESTREL_ASSIGN_OR_RETURN(layer.sh_down, reader.read_matrix(kShDown, il, d, fs));
        }
        KESTREL_RETURN_IF_ERROR(
            read_experts(reader, il, n_exp, f, d, layer.shared_in_experts, layer));
        if (!layer.shared_in_experts && !noted_separate) {
            noted_separate = true;
            log_info(
                "qwen35moe: layer {}: the shared expert (ffn {}) runs beside the routed experts "
                "(ffn {}), not stacked with them{}",
                il, fs, f, fs == f ? ": its tensors' types differ from the routed stacks'" : "");
        }
    }
    // llama.cpp's converter reorders value heads to tiled order (gguf-layouts.md); HF keeps them grouped.
    const GdnHeadOrder order = reader.gguf() ? GdnHeadOrder::kTiled : GdnHeadOrder::kGrouped;
    return std::unique_ptr<Model>(std::make_unique<Qwen35Moe>(config, std::move(w), order));
}

}  // namespace kestrel
