// Why the Gated DeltaNet recurrent state is kept in fp32 (issue 7 asks for the state precision
// chosen by measured quality; the CUDA kernels and the CPU keep it fp32, gated_delta.cu): the
// recurrent form decodes a long sequence token by token twice, once as the engine does (fp32
// state) and once with the state rounded to bf16 after every token (what a bf16 state would
// store), both against the recurrence run in double on the same inputs. Qwen3.5-35B-A3B's head
// shape (dk = dv = 128), 2 value heads over 1 key head, 1024 tokens; gates drawn as the CUDA
// tests draw them (A = -exp(A_log), A_log ~ log U[1, 16]; dt_bias in [-6.9, -2.3], so most
// heads keep a long memory, as trained ones do). Measured (x86-64, the CPU backend), relative
// error of all outputs: fp32 state 2.4e-7, bf16 state 1.9e-3 at 1024 tokens (256 and 4096 tokens,
// other draws: 2.6e-7 against 5.2e-3 and 5.1e-3). A bf16 state would add errors four orders of
// magnitude above fp32's to every Gated DeltaNet output, for a state of 64 KiB a head (2 MiB a
// Qwen3.5 layer at decode) that costs little to keep in fp32. The test holds fp32 below 1e-5 and
// bf16 above 100 times fp32.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "core/half.h"
#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {
namespace {

constexpr int64_t kKeyHeads = 1, kValueHeads = 2, kHeadDim = 128, kTokens = 1024;

struct Inputs {
    std::vector<float> qkv, a, b, a_neg, dt_bias;
};

Inputs random_inputs(uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    const int64_t width = 2 * kKeyHeads * kHeadDim + kValueHeads * kHeadDim;
    Inputs in;
    in.qkv.resize(static_cast<size_t>(kTokens * width));
    for (float& x : in.qkv) x = normal(rng);
    in.a.resize(static_cast<size_t>(kTokens * kValueHeads));
    in.b.resize(in.a.size());
    for (float& x : in.a) x = normal(rng);
    for (float& x : in.b) x = 2.0f * normal(rng);
    for (int64_t h = 0; h < kValueHeads; ++h) {
        in.a_neg.push_back(-std::exp(std::log(1.0f + 15.0f * uniform(rng))));
        in.dt_bias.push_back(-6.9f + 4.6f * uniform(rng));
    }
    return in;
}

// HF's recurrence (torch_recurrent_gated_delta_rule) in double: q and k l2-normalised (eps 1e-6),
// q scaled by dk^-0.5, beta = sigmoid(b), decay = exp(A softplus(a + dt_bias)); per token
// S = decay S, S += k (beta (v - S^T k))^T, o = S^T q. out [tokens, heads, dv].
std::vector<double> reference(const Inputs& in) {
    const int64_t key_dim = kKeyHeads * kHeadDim;
    const int64_t width = 2 * key_dim + kValueHeads * kHeadDim;
    std::vector<double> out(static_cast<size_t>(kTokens * kValueHeads * kHeadDim));
    std::vector<double> state(static_cast<size_t>(kValueHeads * kHeadDim * kHeadDim), 0.0);
    std::vector<double> q(kHeadDim), k(kHeadDim), sk(kHeadDim);
    for (int64_t t = 0; t < kTokens; ++t) {
        const float* row = in.qkv.data() + t * width;
        for (int64_t h = 0; h < kValueHeads; ++h) {
            const int64_t kh = h / (kValueHeads / kKeyHeads);  // grouped
            double q_sq = 0.0, k_sq = 0.0;
            for (int64_t i = 0; i < kHeadDim; ++i) {
                q_sq += static_cast<double>(row[kh * kHeadDim + i]) * row[kh * kHeadDim + i];
                k_sq += static_cast<double>(row[key_dim + kh * kHeadDim + i]) *
                        row[key_dim + kh * kHeadDim + i];
            }
            const double q_inv =
                1.0 / std::sqrt(q_sq + 1e-6) / std::sqrt(static_cast<double>(kHeadDim));
            const double k_inv = 1.0 / std::sqrt(k_sq + 1e-6);
            for (int64_t i = 0; i < kHeadDim; ++i) {
                q[i] = row[kh * kHeadDim + i] * q_inv;
                k[i] = row[key_dim + kh * kHeadDim + i] * k_inv;
            }
            const double beta =
                1.0 / (1.0 + std::exp(-static_cast<double>(in.b[t * kValueHeads + h])));
            const double x = static_cast<double>(in.a[t * kValueHeads + h]) + in.dt_bias[h];
            const double decay = std::exp(in.a_neg[h] * (x > 20.0 ? x : std::log1p(std::exp(x))));
            double* s = state.data() + h * kHeadDim * kHeadDim;
            std::fill(sk.begin(), sk.end(), 0.0);
            for (int64_t i = 0; i < kHeadDim; ++i) {
                for (int64_t j = 0; j < kHeadDim; ++j) {
                    s[i * kHeadDim + j] *= decay;
                    sk[j] += s[i * kHeadDim + j] * k[i];
                }
            }
            const float* v = row + 2 * key_dim + h * kHeadDim;
            for (int64_t j = 0; j < kHeadDim; ++j) {
                const double delta = beta * (v[j] - sk[j]);
                double o = 0.0;
                for (int64_t i = 0; i < kHeadDim; ++i) {
                    s[i * kHeadDim + j] += k[i] * delta;
                    o += s[i * kHeadDim + j] * q[i];
                }
                out[static_cast<size_t>((t * kValueHeads + h) * kHeadDim + j)] = o;
            }
        }
    }
    return out;
}

// The CPU backend's recurrent form one token per call (as decode runs it); with bf16_state the
// state is rounded to bf16 (nearest even) after every token. Returns ||out - ref|| / ||ref||.
double decode_error(const Inputs& in, const std::vector<double>& ref, bool bf16_state) {
    GatedDeltaParams p;
    p.n_k_heads = kKeyHeads;
    p.n_v_heads = kValueHeads;
    p.k_head_dim = kHeadDim;
    p.v_head_dim = kHeadDim;
    p.order = GdnHeadOrder::kGrouped;
    p.chunk = 0;
    const int64_t width = 2 * kKeyHeads * kHeadDim + kValueHeads * kHeadDim;
    std::vector<float> state(static_cast<size_t>(kValueHeads * kHeadDim * kHeadDim), 0.0f);
    std::vector<float> out(static_cast<size_t>(kValueHeads * kHeadDim));
    const RecurrentLayerView view{nullptr, state.data(), 0, 0};
    double err_sq = 0.0, ref_sq = 0.0;
    for (int64_t t = 0; t < kTokens; ++t) {
        gated_delta_rule(in.qkv.data() + t * width, in.a.data() + t * kValueHeads,
                         in.b.data() + t * kValueHeads, in.a_neg.data(), in.dt_bias.data(), 1, p,
                         view, out.data(), 1);
        if (bf16_state) {
            for (float& s : state) s = bf16_to_fp32(fp32_to_bf16(s));
        }
        for (size_t i = 0; i < out.size(); ++i) {
            const double r = ref[static_cast<size_t>(t) * out.size() + i];
            EXPECT_TRUE(std::isfinite(out[i])) << "token " << t;
            err_sq += (out[i] - r) * (out[i] - r);
            ref_sq += r * r;
        }
    }
    return std::sqrt(err_sq / ref_sq);
}

TEST(GatedDeltaStatePrecision, Bf16StateDriftsFp32DoesNot) {
    const Inputs in = random_inputs(2025);
    const std::vector<double> ref = reference(in);
    const double fp32 = decode_error(in, ref, false);
    const double bf16 = decode_error(in, ref, true);
    std::printf(
        "Gated DeltaNet, %lld tokens decoded one by one, dk = dv = %lld: relative error of the "
        "outputs against double, fp32 state %.3g, bf16 state %.3g\n",
        static_cast<long long>(kTokens), static_cast<long long>(kHeadDim), fp32, bf16);
    EXPECT_LT(fp32, 1e-5);
    EXPECT_GT(bf16, 100.0 * fp32);
}

}  // namespace
}  // namespace kestrel::cpu
