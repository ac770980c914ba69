// The Gated DeltaNet kernels (src/ops/cuda/gated_delta.h) against their CPU twins (make_cpu_ops():
// conv1d_causal, and gated_delta_rule in its recurrent form, chunk 0) on random inputs: Qwen3.5-
// 35B-A3B's shapes (conv 8192 channels x kernel 4; 16 key heads, 32 value heads, dk = dv = 128,
// both head orders, T = 1 then T = 5 continuing the state, and T = 8, 9, 1), the tiny fixture's
// (conv 160; 2 key and 4 value heads of dk 16, dv 24) and odd ones (rows < kernel - 1, several
// token blocks, dk not a multiple of 8, dk > 128, dv not a multiple of 32). gated_delta_rule has
// two kernels, picked by T: the decode kernel (T <= 8, every dk) and the one-warp prefill kernel
// (T > 8; registers for dk <= 128, shared memory above); the cases give each of them every dk
// range, and hand the state from one to the other. Outputs are poisoned with NaN first and NaN
// never passes; the updated states are compared too. Skips without a GPU.
// Tolerances, with u = 2^-24 (half an fp32 ulp, relative):
//   conv1d_causal without SiLU, and its state: bit for bit (the same fp32 products and sums in
//     the same order).
//   conv1d_causal with SiLU: |gpu - cpu| <= 16u |cpu| (+ 16 subnormal ulps). Only expf differs
//     (CUDA 2 ulp, glibc under 1): a few u on 1 + exp(-x), one more rounding of the sum and of
//     the quotient.
//   gated_delta_rule, outputs and state, both kernels: |gpu - cpu| <= 1e-5 M (about 168u M),
//     where M is the element's magnitude: the recurrence run in double on absolute values (|S|,
//     |k|, |q|, |v|, beta, decay), i.e. the sum of the absolute values of every term that makes up
//     the element, carried over the tokens (the quantity of Higham's forward error bounds).
//     Two sources of difference, both random in sign, so they grow like sqrt(operations), not
//     like their count (the worst case, every rounding the same way, is vanishingly unlikely):
//     - the gates: expf / log1pf differ by an ulp or two, which perturbs decay, beta and so every
//       term by a few u, and the perturbed terms may round differently in each of the ~2 dk
//       operations of a column's sums: about sqrt(2 dk) u M. The decay's error is |g| e^g times a
//       few u, at most a few u since |g| e^g <= 1/e.
//     - the decode kernel's order: it sums S^T k and S^T q by blocks of dk/8 rows, then the 8
//       parts, where the CPU runs i = 0 .. dk - 1 in one chain, so every partial sum rounds
//       differently: again about sqrt(2 dk) u M (each order is within dk u M of the exact sum).
//     The prefill kernel has only the first (it runs the CPU's operations in the CPU's order).
//     Emulated on the host (Qwen3.5's shapes, inputs drawn as here, ~50 tokens in calls of 1 to
//     8): the order alone gives at most 9u M, the order with every expf / log1pf result moved by
//     up to 2 ulp at most 27u M (dk 5 to 200), against 168u M.
//   Two calls of T tokens and one call of 2T: bit for bit, outputs and state, for T = 1 and 4
//     (the decode kernel, whose operations do not depend on T) and T = 9 (the prefill kernel).
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda/gated_delta.h"
#include "ops/ops.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaGatedDelta, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::upload;

constexpr double kU = 0x1.0p-24;
constexpr double kGdnRelativeTolerance = 1e-5;
// SiLU of a very negative sum is subnormal, where a rounding is absolute (2^-149), not relative.
constexpr double kSubnormalSlack = 16 * 0x1.0p-149;

// Activations with the occasional outlier, as real ones have.
std::vector<float> random_vector(size_t n, uint32_t seed, float sigma = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, sigma);
    std::vector<float> x(n);
    for (float& v : x) v = normal(rng);
    for (size_t i = 13; i < n; i += 701) x[i] *= 25.0f;
    return x;
}

std::vector<float> random_uniform(size_t n, uint32_t seed, float lo, float hi) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(lo, hi);
    std::vector<float> x(n);
    for (float& v : x) v = uniform(rng);
    return x;
}

bool same_bits(float a, float b) {
    return std::memcmp(&a, &b, sizeof(float)) == 0;
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& expected,
                      const std::string& what) {
    ASSERT_EQ(got.size(), expected.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(same_bits(got[i], expected[i]))
            << what << " element " << i << ": gpu " << got[i] << " cpu " << expected[i];
    }
}

// |got - expected| <= rel * magnitude, element by element; NaN fails.
void expect_close(const std::vector<float>& got, const std::vector<float>& expected,
                  const std::vector<double>& magnitude, double rel, const std::string& what,
                  double& worst) {
    ASSERT_EQ(got.size(), expected.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << what << ": NaN at " << i;
        const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
        ASSERT_LE(err, rel * magnitude[i])
            << what << " element " << i << ": gpu " << got[i] << " cpu " << expected[i]
            << " magnitude " << magnitude[i];
        if (magnitude[i] > 0) worst = std::max(worst, err / magnitude[i]);
    }
}

class CudaGatedDelta : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        cpu_ = make_cpu_ops(1);
    }
    std::unique_ptr<Ops> cpu_;
};

// ---- conv1d_causal ---------------------------------------------------------------------------

struct ConvCase {
    int64_t rows;
    int64_t kernel;
    int64_t channels;
    const char* what;
};

// Qwen3.5-35B-A3B: 8192 channels (2 * 16 * 128 + 32 * 128), kernel 4; the tiny fixture: 160
// (2 * 2 * 16 + 4 * 24). 16 tokens per thread: 17 and 37 rows span 2 and 3 token blocks.
const ConvCase kConvCases[] = {
    {1, 4, 8192, "Qwen3.5 decode"},
    {5, 4, 8192, "Qwen3.5, 5 tokens"},
    {37, 4, 8192, "Qwen3.5 prefill, 3 token blocks"},
    {1, 4, 160, "tiny, 1 row (< kernel - 1)"},
    {2, 4, 160, "tiny, 2 rows (< kernel - 1)"},
    {3, 4, 160, "tiny, 3 rows (= kernel - 1)"},
    {7, 4, 160, "tiny, 7 rows"},
    {16, 4, 130, "one full token block"},
    {17, 4, 130, "two token blocks, the second of one row"},
    {2, 3, 37, "kernel 3, 37 channels"},
    {3, 8, 33, "kernel 8, 3 rows (< kernel - 1)"},
    {20, 5, 37, "kernel 5, two token blocks"},
    {4, 1, 50, "kernel 1 (no state)"},
    {5, 2, 1, "kernel 2, one channel"},
};

TEST_F(CudaGatedDelta, Conv1dMatchesCpu) {
    uint32_t seed = 1;
    double worst = 0.0;
    for (const ConvCase& c : kConvCases) {
        for (const bool silu : {false, true}) {
            const std::string what = std::string(c.what) + (silu ? ", SiLU" : ", no activation") +
                                     " (rows " + std::to_string(c.rows) + ", kernel " +
                                     std::to_string(c.kernel) + ", channels " +
                                     std::to_string(c.channels) + ")";
            const int64_t past = c.kernel - 1;
            const std::vector<float> x =
                random_vector(static_cast<size_t>(c.rows * c.channels), ++seed);
            const std::vector<float> w =
                random_vector(static_cast<size_t>(c.channels * c.kernel), ++seed, 0.5f);
            const std::vector<float> state0 =
                random_vector(static_cast<size_t>(past * c.channels), ++seed);
            const size_t n = x.size();

            std::vector<float> expected(n), cpu_state = state0;
            const RecurrentLayerView view{cpu_state.data(), nullptr, c.kernel, c.channels};
            cpu_->conv1d_causal(x.data(), c.rows, w.data(), view, silu, expected.data());

            DeviceBuffer dx, dw, dstate, dout;
            upload(dx, x);
            upload(dw, w);
            upload(dstate, state0);
            CUDA_OK(dout.alloc(n * 4));
            CUDA_OK(cudaMemset(dout.as<void>(), 0xff, n * 4));
            STATUS_OK(cuda::conv1d_causal(dx.as<float>(), c.rows, dw.as<float>(),
                                          past > 0 ? dstate.as<float>() : nullptr, c.kernel,
                                          c.channels, silu, dout.as<float>(), nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            const std::vector<float> got = download<float>(dout, n);
            if (silu) {
                for (size_t i = 0; i < n; ++i) {
                    const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
                    ASSERT_LE(err, 16 * kU * std::fabs(expected[i]) + kSubnormalSlack)
                        << what << " element " << i << ": gpu " << got[i] << " cpu " << expected[i];
                    if (expected[i] != 0.0f) {
                        worst = std::max(worst, err / (kU * std::fabs(expected[i])));
                    }
                }
            } else {
                ASSERT_NO_FATAL_FAILURE(expect_same_bits(got, expected, what + ", out"));
            }
            ASSERT_NO_FATAL_FAILURE(expect_same_bits(download<float>(dstate, state0.size()),
                                                     cpu_state, what + ", conv state"));
        }
    }
    std::printf("conv1d_causal with SiLU: max |gpu - cpu| = %.2f u |cpu| (tolerance 16 u)\n",
                worst);
}

TEST_F(CudaGatedDelta, Conv1dTwoCallsOfOneTokenEqualOneCallOfTwo) {
    for (const int64_t channels : {int64_t{8192}, int64_t{160}}) {
        const int64_t kernel = 4, rows = 2;
        const std::vector<float> x = random_vector(static_cast<size_t>(rows * channels), 40);
        const std::vector<float> w =
            random_vector(static_cast<size_t>(channels * kernel), 41, 0.5f);
        const std::vector<float> state0 =
            random_vector(static_cast<size_t>((kernel - 1) * channels), 42);
        const size_t n = x.size();
        DeviceBuffer dx, dw, dstate_once, dstate_twice, dout_once, dout_twice;
        upload(dx, x);
        upload(dw, w);
        upload(dstate_once, state0);
        upload(dstate_twice, state0);
        CUDA_OK(dout_once.alloc(n * 4));
        CUDA_OK(dout_twice.alloc(n * 4));
        CUDA_OK(cudaMemset(dout_once.as<void>(), 0xff, n * 4));
        CUDA_OK(cudaMemset(dout_twice.as<void>(), 0xff, n * 4));
        STATUS_OK(cuda::conv1d_causal(dx.as<float>(), rows, dw.as<float>(), dstate_once.as<float>(),
                                      kernel, channels, true, dout_once.as<float>(), nullptr));
        for (int64_t t = 0; t < rows; ++t) {
            STATUS_OK(cuda::conv1d_causal(dx.as<float>() + t * channels, 1, dw.as<float>(),
                                          dstate_twice.as<float>(), kernel, channels, true,
                                          dout_twice.as<float>() + t * channels, nullptr));
        }
        CUDA_OK(cudaDeviceSynchronize());
        const std::string what = "channels " + std::to_string(channels);
        const std::vector<float> once = download<float>(dout_once, n);
        for (float v : once) ASSERT_FALSE(std::isnan(v)) << what;
        ASSERT_NO_FATAL_FAILURE(
            expect_same_bits(download<float>(dout_twice, n), once, what + ", out"));
        ASSERT_NO_FATAL_FAILURE(expect_same_bits(download<float>(dstate_twice, state0.size()),
                                                 download<float>(dstate_once, state0.size()),
                                                 what + ", conv state"));
    }
}

// ---- gated_delta_rule ------------------------------------------------------------------------

struct GdnInputs {
    std::vector<float> qkv, a, b;
};

int64_t qkv_width(const GatedDeltaParams& p) {
    return 2 * p.n_k_heads * p.k_head_dim + p.n_v_heads * p.v_head_dim;
}

// q, k, v activations; a and b around their trained ranges. a of token 0, head 0 is 30, so
// a + dt_bias > 20 takes softplus's linear branch (and the state all but vanishes).
GdnInputs random_gdn_inputs(const GatedDeltaParams& p, int64_t rows, uint32_t seed) {
    GdnInputs in;
    in.qkv = random_vector(static_cast<size_t>(rows * qkv_width(p)), seed);
    in.a = random_vector(static_cast<size_t>(rows * p.n_v_heads), seed + 1);
    in.b = random_vector(static_cast<size_t>(rows * p.n_v_heads), seed + 2, 2.0f);
    in.a[0] = 30.0f;
    return in;
}

// The magnitude of each output and state element (see the header): the recurrence in double on
// absolute values, from state_magnitude (|S| before the first call), which it updates.
std::vector<double> gdn_magnitudes(const GatedDeltaParams& p, int64_t rows, const GdnInputs& in,
                                   const std::vector<float>& a_neg,
                                   const std::vector<float>& dt_bias,
                                   std::vector<double>& state_magnitude) {
    const int64_t nk = p.n_k_heads, nv = p.n_v_heads, dk = p.k_head_dim, dv = p.v_head_dim;
    const int64_t key_dim = nk * dk, width = qkv_width(p);
    std::vector<double> out(static_cast<size_t>(rows * nv * dv));
    std::vector<double> q(static_cast<size_t>(dk)), k(q.size()), sk(static_cast<size_t>(dv));
    for (int64_t t = 0; t < rows; ++t) {
        const float* row = in.qkv.data() + t * width;
        for (int64_t h = 0; h < nv; ++h) {
            const int64_t kh = p.order == GdnHeadOrder::kGrouped ? h / (nv / nk) : h % nk;
            double q_sq = 0, k_sq = 0;
            for (int64_t i = 0; i < dk; ++i) {
                q_sq += static_cast<double>(row[kh * dk + i]) * row[kh * dk + i];
                k_sq +=
                    static_cast<double>(row[key_dim + kh * dk + i]) * row[key_dim + kh * dk + i];
            }
            const double q_inv = 1.0 / std::sqrt(q_sq + 1e-6) / std::sqrt(static_cast<double>(dk));
            const double k_inv = 1.0 / std::sqrt(k_sq + 1e-6);
            for (int64_t i = 0; i < dk; ++i) {
                q[i] = std::fabs(row[kh * dk + i]) * q_inv;
                k[i] = std::fabs(row[key_dim + kh * dk + i]) * k_inv;
            }
            const double beta = 1.0 / (1.0 + std::exp(-static_cast<double>(in.b[t * nv + h])));
            const double x = static_cast<double>(in.a[t * nv + h]) + dt_bias[h];
            const double g = a_neg[h] * (x > 20.0 ? x : std::log1p(std::exp(x)));
            const double decay = std::exp(g);
            double* s = state_magnitude.data() + h * dk * dv;
            std::fill(sk.begin(), sk.end(), 0.0);
            for (int64_t i = 0; i < dk; ++i) {
                for (int64_t j = 0; j < dv; ++j) {
                    s[i * dv + j] *= decay;
                    sk[j] += s[i * dv + j] * k[i];
                }
            }
            double* o = out.data() + (t * nv + h) * dv;
            for (int64_t j = 0; j < dv; ++j) {
                const double delta = beta * (std::fabs(row[2 * key_dim + h * dv + j]) + sk[j]);
                o[j] = 0.0;
                for (int64_t i = 0; i < dk; ++i) {
                    s[i * dv + j] += k[i] * delta;
                    o[j] += s[i * dv + j] * q[i];
                }
            }
        }
    }
    return out;
}

struct GdnCase {
    int64_t n_k_heads, n_v_heads, k_head_dim, v_head_dim;
    std::vector<int64_t> calls;  // tokens per call, each continuing the previous call's state
    const char* what;
};

// Qwen3.5-35B-A3B (dk = dv = 128), the tiny fixture (dk 16, dv 24), the odd shape (dk =
// dv = 16) and: dk 64 with a partial second block of columns; dk 5 (< 8 lanes of the norm's sum,
// and rows for only 2 of the decode kernel's 8 warps) and dv 3; dk 129 and 200 (not multiples of
// 8; the decode kernel's 256 rows, and the prefill kernel's shared-memory columns). Calls of up
// to 8 tokens run the decode kernel (8: its largest), longer ones the prefill kernel.
const GdnCase kGdnCases[] = {
    {16, 32, 128, 128, {1, 5}, "Qwen3.5-35B-A3B"},
    {16, 32, 128, 128, {8, 9, 1}, "Qwen3.5-35B-A3B, decode 8, prefill 9, decode 1"},
    {2, 4, 16, 24, {1, 3, 12}, "tiny fixture"},
    {2, 4, 16, 16, {1, 7}, "dk = dv = 16"},
    {3, 6, 64, 40, {2, 1, 10, 8}, "dk 64, dv 40"},
    {1, 3, 5, 3, {4, 9}, "dk 5, dv 3"},
    {2, 2, 129, 33, {1, 2, 10}, "dk 129, dv 33"},
    {1, 2, 200, 72, {3, 9, 8}, "dk 200, dv 72"},
};

TEST_F(CudaGatedDelta, GatedDeltaRuleMatchesCpu) {
    uint32_t seed = 100;
    double worst = 0.0;
    for (const GdnCase& c : kGdnCases) {
        for (const GdnHeadOrder order : {GdnHeadOrder::kGrouped, GdnHeadOrder::kTiled}) {
            GatedDeltaParams p;
            p.n_k_heads = c.n_k_heads;
            p.n_v_heads = c.n_v_heads;
            p.k_head_dim = c.k_head_dim;
            p.v_head_dim = c.v_head_dim;
            p.order = order;
            p.chunk = 0;  // the CPU's recurrent form, the one the kernel runs
            const int64_t nv = p.n_v_heads, dv = p.v_head_dim;
            const std::string shape =
                std::string(c.what) + (order == GdnHeadOrder::kGrouped ? ", grouped" : ", tiled");
            // A = -exp(A_log), A_log ~ log U[1, 16] (Mamba's init); dt_bias = softplus^-1(dt),
            // dt in [1e-3, 0.1] gives [-6.9, -2.3].
            std::vector<float> a_neg = random_uniform(static_cast<size_t>(nv), ++seed, 1.0f, 16.0f);
            for (float& v : a_neg) v = -v;
            const std::vector<float> dt_bias =
                random_uniform(static_cast<size_t>(nv), ++seed, -6.9f, -2.3f);
            const std::vector<float> state0 =
                random_vector(static_cast<size_t>(nv * p.k_head_dim * dv), ++seed, 0.5f);
            std::vector<float> cpu_state = state0;
            std::vector<double> state_magnitude(state0.size());
            for (size_t i = 0; i < state0.size(); ++i) state_magnitude[i] = std::fabs(state0[i]);

            DeviceBuffer da_neg, ddt_bias, dstate;
            upload(da_neg, a_neg);
            upload(ddt_bias, dt_bias);
            upload(dstate, state0);
            for (size_t call = 0; call < c.calls.size(); ++call) {
                const int64_t rows = c.calls[call];
                const std::string what = shape + ", call " + std::to_string(call + 1) + " (" +
                                         std::to_string(rows) + " tokens)";
                seed += 3;
                const GdnInputs in = random_gdn_inputs(p, rows, seed);
                const size_t n_out = static_cast<size_t>(rows * nv * dv);
                std::vector<float> expected(n_out);
                const RecurrentLayerView view{nullptr, cpu_state.data(), 0, 0};
                cpu_->gated_delta_rule(in.qkv.data(), in.a.data(), in.b.data(), a_neg.data(),
                                       dt_bias.data(), rows, p, view, expected.data());
                const std::vector<double> out_magnitude =
                    gdn_magnitudes(p, rows, in, a_neg, dt_bias, state_magnitude);

                DeviceBuffer dqkv, da, db, dout;
                upload(dqkv, in.qkv);
                upload(da, in.a);
                upload(db, in.b);
                CUDA_OK(dout.alloc(n_out * 4));
                CUDA_OK(cudaMemset(dout.as<void>(), 0xff, n_out * 4));
                STATUS_OK(cuda::gated_delta_rule(dqkv.as<float>(), da.as<float>(), db.as<float>(),
                                                 da_neg.as<float>(), ddt_bias.as<float>(), rows, p,
                                                 dstate.as<float>(), dout.as<float>(), nullptr));
                CUDA_OK(cudaDeviceSynchronize());
                ASSERT_NO_FATAL_FAILURE(expect_close(download<float>(dout, n_out), expected,
                                                     out_magnitude, kGdnRelativeTolerance,
                                                     what + ", out", worst));
                ASSERT_NO_FATAL_FAILURE(
                    expect_close(download<float>(dstate, state0.size()), cpu_state, state_magnitude,
                                 kGdnRelativeTolerance, what + ", state", worst));
            }
        }
    }
    std::printf("gated_delta_rule: max |gpu - cpu| = %.3g of the magnitude (tolerance %.0e)\n",
                worst, kGdnRelativeTolerance);
}

// Two calls of T tokens and one call of 2T: T = 1 and 4 (both on the decode kernel, also the
// one call of 2 and 8 tokens), T = 9 (the prefill kernel).
TEST_F(CudaGatedDelta, GatedDeltaRuleTwoCallsOfTTokensEqualOneCallOf2T) {
    const GdnCase cases[] = {{16, 32, 128, 128, {}, "Qwen3.5-35B-A3B"},
                             {2, 4, 16, 24, {}, "tiny fixture"},
                             {1, 2, 200, 40, {}, "dk 200"}};
    for (const GdnCase& c : cases) {
        for (const int64_t step : {int64_t{1}, int64_t{4}, int64_t{9}}) {
            GatedDeltaParams p;
            p.n_k_heads = c.n_k_heads;
            p.n_v_heads = c.n_v_heads;
            p.k_head_dim = c.k_head_dim;
            p.v_head_dim = c.v_head_dim;
            p.order = GdnHeadOrder::kTiled;
            const int64_t rows = 2 * step, nv = p.n_v_heads, dv = p.v_head_dim,
                          width = qkv_width(p);
            const std::string what = std::string(c.what) + ", 2 x " + std::to_string(step);
            const GdnInputs in = random_gdn_inputs(p, rows, 300);
            const std::vector<float> a_neg =
                random_uniform(static_cast<size_t>(nv), 303, -16.0f, -1.0f);
            const std::vector<float> dt_bias =
                random_uniform(static_cast<size_t>(nv), 304, -6.9f, -2.3f);
            const std::vector<float> state0 =
                random_vector(static_cast<size_t>(nv * p.k_head_dim * dv), 305, 0.5f);
            const size_t n_out = static_cast<size_t>(rows * nv * dv);
            DeviceBuffer dqkv, da, db, da_neg, ddt_bias, dstate_once, dstate_twice, dout_once,
                dout_twice;
            upload(dqkv, in.qkv);
            upload(da, in.a);
            upload(db, in.b);
            upload(da_neg, a_neg);
            upload(ddt_bias, dt_bias);
            upload(dstate_once, state0);
            upload(dstate_twice, state0);
            CUDA_OK(dout_once.alloc(n_out * 4));
            CUDA_OK(dout_twice.alloc(n_out * 4));
            CUDA_OK(cudaMemset(dout_once.as<void>(), 0xff, n_out * 4));
            CUDA_OK(cudaMemset(dout_twice.as<void>(), 0xff, n_out * 4));
            STATUS_OK(cuda::gated_delta_rule(dqkv.as<float>(), da.as<float>(), db.as<float>(),
                                             da_neg.as<float>(), ddt_bias.as<float>(), rows, p,
                                             dstate_once.as<float>(), dout_once.as<float>(),
                                             nullptr));
            for (int64_t t = 0; t < rows; t += step) {
                STATUS_OK(cuda::gated_delta_rule(
                    dqkv.as<float>() + t * width, da.as<float>() + t * nv, db.as<float>() + t * nv,
                    da_neg.as<float>(), ddt_bias.as<float>(), step, p, dstate_twice.as<float>(),
                    dout_twice.as<float>() + t * nv * dv, nullptr));
            }
            CUDA_OK(cudaDeviceSynchronize());
            const std::vector<float> once = download<float>(dout_once, n_out);
            for (float v : once) ASSERT_FALSE(std::isnan(v)) << what;
            ASSERT_NO_FATAL_FAILURE(
                expect_same_bits(download<float>(dout_twice, n_out), once, what + ", out"));
            ASSERT_NO_FATAL_FAILURE(expect_same_bits(download<float>(dstate_twice, state0.size()),
                                                     download<float>(dstate_once, state0.size()),
                                                     what + ", state"));
        }
    }
}

TEST_F(CudaGatedDelta, RejectsBadArguments) {
    DeviceBuffer d, o;
    CUDA_OK(d.alloc(1 << 20));
    CUDA_OK(o.alloc(1 << 20));
    float* x = d.as<float>();
    float* out = o.as<float>();
    const auto invalid = StatusCode::kInvalidArgument;
    // conv1d_causal: kernel out of range, negative rows, no state, out over x.
    EXPECT_EQ(cuda::conv1d_causal(x, 1, x, x, 0, 64, true, out, nullptr).code(), invalid);
    EXPECT_EQ(
        cuda::conv1d_causal(x, 1, x, x, cuda::kMaxConvKernel + 1, 64, true, out, nullptr).code(),
        invalid);
    EXPECT_EQ(cuda::conv1d_causal(x, -1, x, x, 4, 64, true, out, nullptr).code(), invalid);
    EXPECT_EQ(cuda::conv1d_causal(x, 1, x, nullptr, 4, 64, true, out, nullptr).code(), invalid);
    EXPECT_EQ(cuda::conv1d_causal(x, 2, x, x, 4, 64, true, x + 64, nullptr).code(), invalid);
    EXPECT_EQ(cuda::conv1d_causal(x, 1, x, x, 4, 0, true, out, nullptr).code(), invalid);

    // gated_delta_rule: n_v not a multiple of n_k, dk too large, dv 0, a null pointer, out over
    // the state.
    GatedDeltaParams p;
    p.n_k_heads = 2;
    p.n_v_heads = 4;
    p.k_head_dim = 16;
    p.v_head_dim = 16;
    EXPECT_TRUE(cuda::gated_delta_rule(x, x, x, x, x, 0, p, x, out, nullptr).ok());  // no tokens
    GatedDeltaParams bad = p;
    bad.n_v_heads = 3;
    EXPECT_EQ(cuda::gated_delta_rule(x, x, x, x, x, 1, bad, x, out, nullptr).code(), invalid);
    bad = p;
    bad.k_head_dim = cuda::kMaxGdnKeyDim + 1;
    EXPECT_EQ(cuda::gated_delta_rule(x, x, x, x, x, 1, bad, x, out, nullptr).code(), invalid);
    bad = p;
    bad.v_head_dim = 0;
    EXPECT_EQ(cuda::gated_delta_rule(x, x, x, x, x, 1, bad, x, out, nullptr).code(), invalid);
    EXPECT_EQ(cuda::gated_delta_rule(x, x, nullptr, x, x, 1, p, x, out, nullptr).code(), invalid);
    EXPECT_EQ(cuda::gated_delta_rule(x, x, x, x, x, -1, p, x, out, nullptr).code(), invalid);
    EXPECT_EQ(cuda::gated_delta_rule(x, x, x, x, x, 1, p, out, out, nullptr).code(), invalid);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
