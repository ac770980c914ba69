// The CPU reference ops of Qwen3.5: the chunked gated delta rule against the recurrent one on
// random inputs (the same function, computed two ways), and tiny hand-checked cases for the
// conv with state, routing, the experts, the gated norm, partial RoPE and the sigmoid gates.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {
namespace {

std::vector<float> random_vector(size_t n, std::mt19937& rng, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
    return worst;
}

struct GdnCase {
    int64_t nk, nv, dk, dv, rows, chunk;
    GdnHeadOrder order;
};

class GatedDeltaChunkedVsRecurrent : public ::testing::TestWithParam<GdnCase> {};

// The chunked form over T tokens, run in two calls (state carried), equals the recurrent form
// token by token: outputs and final state, from a non-zero initial state.
TEST_P(GatedDeltaChunkedVsRecurrent, OutputsAndStateAgree) {
    const GdnCase c = GetParam();
    std::mt19937 rng(static_cast<uint32_t>(c.rows * 131 + c.chunk));
    const int64_t row = 2 * c.nk * c.dk + c.nv * c.dv;
    const std::vector<float> qkv = random_vector(static_cast<size_t>(c.rows * row), rng);
    const std::vector<float> a = random_vector(static_cast<size_t>(c.rows * c.nv), rng);
    const std::vector<float> b = random_vector(static_cast<size_t>(c.rows * c.nv), rng);
    std::vector<float> a_neg = random_vector(static_cast<size_t>(c.nv), rng);
    for (float& x : a_neg) x = -std::exp(x * 0.5f);
    const std::vector<float> dt_bias = random_vector(static_cast<size_t>(c.nv), rng);
    const std::vector<float> s0 = random_vector(static_cast<size_t>(c.nv * c.dk * c.dv), rng, 0.3f);

    std::vector<float> s_rec = s0, s_chunk = s0;
    const RecurrentLayerView rec_view{nullptr, s_rec.data(), 0, 0};
    const RecurrentLayerView chunk_view{nullptr, s_chunk.data(), 0, 0};
    std::vector<float> out_rec(static_cast<size_t>(c.rows * c.nv * c.dv)), out_chunk(out_rec.size());
    GatedDeltaParams params{c.nk, c.nv, c.dk, c.dv, c.order, 0};
    for (int64_t t = 0; t < c.rows; ++t) {  // one token per call, as decode runs it
        gated_delta_rule(qkv.data() + t * row, a.data() + t * c.nv, b.data() + t * c.nv, a_neg.data(), dt_bias.data(),
                         1, params, rec_view, out_rec.data() + t * c.nv * c.dv, 2);
    }
    params.chunk = c.chunk;
    const int64_t split = c.rows / 3;  // two calls: the state carries between them
    gated_delta_rule(qkv.data(), a.data(), b.data(), a_neg.data(), dt_bias.data(), split, params, chunk_view,
                     out_chunk.data(), 2);
    gated_delta_rule(qkv.data() + split * row, a.data() + split * c.nv, b.data() + split * c.nv, a_neg.data(),
                     dt_bias.data(), c.rows - split, params, chunk_view, out_chunk.data() + split * c.nv * c.dv, 3);
    EXPECT_LE(max_abs_diff(out_chunk, out_rec), 2e-5);
    EXPECT_LE(max_abs_diff(s_chunk, s_rec), 2e-5);
    for (float x : out_chunk) ASSERT_TRUE(std::isfinite(x));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedDeltaChunkedVsRecurrent,
                         ::testing::Values(GdnCase{2, 4, 16, 24, 70, 64, GdnHeadOrder::kGrouped},
                                           GdnCase{2, 4, 16, 24, 70, 64, GdnHeadOrder::kTiled},
                                           GdnCase{1, 2, 8, 8, 33, 8, GdnHeadOrder::kGrouped},
                                           GdnCase{3, 3, 32, 16, 100, 16, GdnHeadOrder::kGrouped},
                                           GdnCase{2, 8, 16, 16, 130, 64, GdnHeadOrder::kTiled}));

// One head, dk = dv = 1, hand-computed: q = k = 1 after the L2 norm, scale 1.
// t0: S = 0; delta = beta (v - 0); S = beta v; o = S.
// t1: S *= exp(g); delta = beta (v1 - S); S += delta; o = S.
TEST(GatedDelta, HandCheckedScalar) {
    const float qkv[2][3] = {{2.0f, -3.0f, 1.0f}, {0.5f, 4.0f, 2.0f}};  // q, k (normalised to +1 / -1), v
    const float a[2] = {0.0f, 1.0f}, b[2] = {0.0f, 2.0f};
    const float a_neg[1] = {-1.0f}, dt_bias[1] = {0.0f};
    for (int64_t chunk : {0, 64}) {
        float s = 0.0f;
        float out[2] = {};
        const RecurrentLayerView view{nullptr, &s, 0, 0};
        gated_delta_rule(&qkv[0][0], a, b, a_neg, dt_bias, 2, GatedDeltaParams{1, 1, 1, 1, GdnHeadOrder::kGrouped, chunk},
                         view, out, 1);
        // k0 = -1 (sign of -3), q0 = +1; beta0 = 0.5, g0 = -softplus(0) = -log 2 (S starts 0).
        const double k0 = -3.0 / std::sqrt(9.0 + 1e-6), q0 = 2.0 / std::sqrt(4.0 + 1e-6);
        double S = 0.5 * (1.0 - 0.0) * k0;  // S = k0 * beta0 * v0
        const double o0 = S * q0;
        const double k1 = 4.0 / std::sqrt(16.0 + 1e-6), q1 = 0.5 / std::sqrt(0.25 + 1e-6);
        const double beta1 = 1.0 / (1.0 + std::exp(-2.0)), g1 = -std::log1p(std::exp(1.0));
        S *= std::exp(g1);
        S += k1 * beta1 * (2.0 - S * k1);
        const double o1 = S * q1;
        EXPECT_NEAR(out[0], o0, 1e-6) << "chunk " << chunk;
        EXPECT_NEAR(out[1], o1, 1e-6) << "chunk " << chunk;
        EXPECT_NEAR(s, S, 1e-6) << "chunk " << chunk;
    }
}

// Kernel 3, 2 channels: out[t] = w0 in[t-2] + w1 in[t-1] + w2 in[t], earlier inputs from the state.
TEST(Conv1dCausal, CarriesStateAcrossCalls) {
    const float w[6] = {1.0f, 10.0f, 100.0f, 2.0f, 0.0f, -1.0f};  // [C=2, K=3]
    std::vector<float> conv_state(4, 0.0f);                       // [K-1, C]
    const RecurrentLayerView view{conv_state.data(), nullptr, 3, 2};
    const float x1[4] = {1, 2, 3, 4};  // t0: (1, 2), t1: (3, 4)
    float out1[4];
    conv1d_causal(x1, 2, w, view, false, out1);
    EXPECT_FLOAT_EQ(out1[0], 100.0f * 1);               // c0, t0
    EXPECT_FLOAT_EQ(out1[1], -1.0f * 2);                // c1, t0
    EXPECT_FLOAT_EQ(out1[2], 10.0f * 1 + 100.0f * 3);   // c0, t1
    EXPECT_FLOAT_EQ(out1[3], 2.0f * 0 - 1.0f * 4);      // c1, t1
    EXPECT_EQ(conv_state, (std::vector<float>{1, 2, 3, 4}));
    const float x2[2] = {5, 6};
    float out2[2];
    conv1d_causal(x2, 1, w, view, true, out2);  // with SiLU
    const float c0 = 1.0f * 1 + 10.0f * 3 + 100.0f * 5, c1 = 2.0f * 2 + 0.0f * 4 - 1.0f * 6;
    EXPECT_FLOAT_EQ(out2[0], silu(c0));
    EXPECT_FLOAT_EQ(out2[1], silu(c1));
    EXPECT_EQ(conv_state, (std::vector<float>{3, 4, 5, 6}));
}

// router_softmax's sum is the one the CUDA router's warps form (xor shuffles: after the step of
// offset o every lane holds its value plus lane l ^ o's), chunk by chunk of 32 experts, the chunk
// sums added in order. The logits span ~40 in log space, so a sum in expert order rounds
// differently; the test checks that it does.
TEST(MoeRoute, RouterSoftmaxSumsLikeTheGpuWarps) {
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> spread(-20.0f, 20.0f);
    const int64_t n = 72;  // two whole warps and a part (padded with zeros)
    std::vector<float> logits(n);
    for (float& x : logits) x = spread(rng);
    float max_value = logits[0];
    for (const float x : logits) max_value = std::max(max_value, x);
    std::vector<float> e(n);
    for (int64_t i = 0; i < n; ++i)
        e[static_cast<size_t>(i)] = std::exp(logits[static_cast<size_t>(i)] - max_value);
    float warp_sums = 0.0f, in_order = 0.0f;
    for (int64_t first = 0; first < n; first += 32) {
        float lane[32];
        for (int l = 0; l < 32; ++l)
            lane[l] = first + l < n ? e[static_cast<size_t>(first + l)] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2) {
            float next[32];
            for (int l = 0; l < 32; ++l) next[l] = lane[l] + lane[l ^ offset];
            std::copy(next, next + 32, lane);
        }
        for (int l = 1; l < 32; ++l)
            ASSERT_EQ(lane[l], lane[0]) << "every lane ends with the same sum";
        warp_sums += lane[0];
    }
    for (const float v : e) in_order += v;
    ASSERT_NE(warp_sums, in_order) << "the data must tell the two orders apart";
    std::vector<float> probs = logits;
    router_softmax(probs.data(), n);
    const float inv_sum = 1.0f / warp_sums;
    for (int64_t i = 0; i < n; ++i) {
        EXPECT_EQ(probs[static_cast<size_t>(i)], e[static_cast<size_t>(i)] * inv_sum)
            << "expert " << i;
    }
}

// softmax over all 4 experts, top 2, renormalised: the weights are softmax over the two chosen logits.
TEST(MoeRoute, SoftmaxTopKRenormalised) {
    const float logits[8] = {0.0f, 2.0f, 1.0f, -1.0f, /* row 2 */ 3.0f, 3.0f, 0.0f, 5.0f};
    int32_t ids[4];
    float weights[4];
    moe_route(logits, 2, 4, 2, nullptr, ids, weights);
    EXPECT_EQ(ids[0], 1);
    EXPECT_EQ(ids[1], 2);
    EXPECT_NEAR(weights[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
    EXPECT_NEAR(weights[1], 1.0 / (1.0 + std::exp(1.0)), 1e-6);
    EXPECT_EQ(ids[2], 3);
    EXPECT_EQ(ids[3], 0);  // a tie between experts 0 and 1 goes to the lower id
    EXPECT_NEAR(weights[2] + weights[3], 1.0, 1e-6);
}

// moe_experts equals the naive sum over the chosen experts of w * down(silu(gate x) * up x).
TEST(MoeExperts, EqualsNaiveSum) {
    std::mt19937 rng(7);
    const int64_t n_exp = 5, f = 6, d = 8, rows = 4, k = 2;
    const std::vector<float> gate = random_vector(n_exp * f * d, rng), up = random_vector(n_exp * f * d, rng),
                             down = random_vector(n_exp * d * f, rng), x = random_vector(rows * d, rng);
    const int32_t ids[rows * k] = {0, 4, 4, 1, 2, 2 /* repeated */, 3, 0};
    const float weights[rows * k] = {0.7f, 0.3f, 0.5f, 0.5f, 0.25f, 0.75f, 0.9f, 0.1f};
    // The engine's stacks: expert e's gate rows then its up rows at row e * 2f.
    std::vector<float> gate_up;
    for (int64_t e = 0; e < n_exp; ++e) {
        gate_up.insert(gate_up.end(), gate.begin() + e * f * d, gate.begin() + (e + 1) * f * d);
        gate_up.insert(gate_up.end(), up.begin() + e * f * d, up.begin() + (e + 1) * f * d);
    }
    const Weight gate_up_weight = f32_view(gate_up.data(), n_exp * 2 * f, d);
    const Weight down_weight = f32_view(down.data(), n_exp * d, f);
    std::vector<float> out(rows * d);
    moe_experts(x.data(), rows, ids, weights, k,
                MoeExpertWeights{&gate_up_weight, &down_weight, n_exp, f, d}, out.data(), 2);
    for (int64_t t = 0; t < rows; ++t) {
        for (int64_t i = 0; i < d; ++i) {
            double expected = 0.0;
            for (int64_t j = 0; j < k; ++j) {
                const int64_t e = ids[t * k + j];
                double y = 0.0;
                for (int64_t m = 0; m < f; ++m) {
                    double g = 0.0, u = 0.0;
                    for (int64_t c = 0; c < d; ++c) {
                        g += gate[(e * f + m) * d + c] * x[t * d + c];
                        u += up[(e * f + m) * d + c] * x[t * d + c];
                    }
                    y += down[(e * d + i) * f + m] * (g / (1.0 + std::exp(-g)) * u);
                }
                expected += weights[t * k + j] * y;
            }
            EXPECT_NEAR(out[t * d + i], expected, 1e-4) << t << ", " << i;
        }
    }
}

TEST(RmsNormGated, HandChecked) {
    const float x[2] = {3.0f, 4.0f}, z[2] = {0.0f, 1.0f}, w[2] = {2.0f, 0.5f};
    float out[2];
    rms_norm_gated(x, z, w, 1, 2, 0.0f, out);
    const float inv_rms = 1.0f / std::sqrt(12.5f);
    EXPECT_FLOAT_EQ(out[0], 0.0f);  // silu(0) = 0
    EXPECT_NEAR(out[1], 0.5f * 4.0f * inv_rms * (1.0f / (1.0f + std::exp(-1.0f))), 1e-6);
}

// Head dim 6, rotary 4: dims (0, 2) and (1, 3) rotate by pos * theta^(-2j/4); dims 4, 5 pass through.
TEST(RopeNeoxPartial, RotatesOnlyTheFirstDims) {
    float x[6] = {1, 2, 3, 4, 5, 6};
    const int64_t pos[1] = {2};
    rope_neox_partial(x, pos, 1, 6, 4, 100.0);
    const double a0 = 2.0, a1 = 2.0 / 10.0;  // inv_freq = 1, 100^-0.5
    EXPECT_NEAR(x[0], 1 * std::cos(a0) - 3 * std::sin(a0), 1e-6);
    EXPECT_NEAR(x[2], 3 * std::cos(a0) + 1 * std::sin(a0), 1e-6);
    EXPECT_NEAR(x[1], 2 * std::cos(a1) - 4 * std::sin(a1), 1e-6);
    EXPECT_NEAR(x[3], 4 * std::cos(a1) + 2 * std::sin(a1), 1e-6);
    EXPECT_EQ(x[4], 5.0f);
    EXPECT_EQ(x[5], 6.0f);
}

TEST(SigmoidGates, HandChecked) {
    const float x[2] = {2.0f, -4.0f}, gate[2] = {0.0f, 100.0f};
    float out[2];
    sigmoid_mul(x, gate, 2, out);
    EXPECT_FLOAT_EQ(out[0], 1.0f);
    EXPECT_FLOAT_EQ(out[1], -4.0f);
    float acc[4] = {1, 1, 1, 1};
    const float shared[4] = {2, 4, 6, 8}, g[2] = {0.0f, -100.0f};
    add_sigmoid_scaled(shared, g, 2, 2, acc);
    EXPECT_FLOAT_EQ(acc[0], 2.0f);
    EXPECT_FLOAT_EQ(acc[1], 3.0f);
    EXPECT_FLOAT_EQ(acc[2], 1.0f);
    EXPECT_FLOAT_EQ(acc[3], 1.0f);
    EXPECT_FLOAT_EQ(softplus(30.0f), 30.0f);
    EXPECT_NEAR(softplus(0.0f), std::log(2.0f), 1e-7);
}

}  // namespace
}  // namespace kestrel::cpu
