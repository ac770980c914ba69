// The Gated DeltaNet kernels (src/ops/cuda/gated_delta.h) against their CPU twins (make_cpu_ops():
// conv1d_causal, and gated_delta_rule in its recurrent form, chunk 0) on random inputs: Qwen3.5-
// 35B-A3B's shapes (conv 8192 channels x kernel 4; 16 key heads, 32 value heads, dk = dv = 128,
// both head orders, T = 1 then T = 5 continuing the state, and T = 8, 9, 1), the tiny fixture's
// (conv 160; 2 key and 4 value heads of dk 16, dv 24) and odd ones (rows < kernel - 1, several
// token blocks, dk not a multiple of 8, dk > 128, dv not a multiple of 32). gated_delta_rule has
// two kernels, picked by T: the decode kernel (T <= 8, every dk) and the one-warp prefill kernel
// (T > 8; registers for dk <= 128, shared memory above); the cases give each of them every dk
// range, and hand the state from one to the other. (These call gated_delta_rule without scratch,
// so long calls stay on the one-warp kernel.) The chunked form (gated_delta_chunked.cu, taken
// from kGdnChunkedMinRows = 64 tokens with scratch) has its own tests below, against a double
// reference and the CPU's chunked form, with their tolerance explained there: Qwen3.5's shape at
// 64, 200 and 2048 tokens and handing the state to and from decode, odd shapes over 1 to 130
// tokens, and a prompt split 100 + 157 against one call of 257. Outputs are poisoned with NaN
// first and NaN never passes; the updated states are compared too. Skips without a GPU.
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
#include <span>
#include <string>
#include <thread>
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
using kestrel::testing::random_vector;
using kestrel::testing::upload;

constexpr double kU = 0x1.0p-24;
constexpr double kGdnRelativeTolerance = 1e-5;
// SiLU of a very negative sum is subnormal, where a rounding is absolute (2^-149), not relative.
constexpr double kSubnormalSlack = 16 * 0x1.0p-149;

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
            kestrel::testing::wait_for_host_copies();
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
        kestrel::testing::wait_for_host_copies();
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
                kestrel::testing::wait_for_host_copies();
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
            kestrel::testing::wait_for_host_copies();
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

// ---- gated_delta_rule, the chunked form ------------------------------------------------------
//
// The chunked form (gated_delta_chunked.cu) is held to a double-precision run of the recurrence
// and to the CPU's chunked form (chunk 64, the same algorithm in fp32), FlashAttention-3 style:
// its error must be of the size of the CPU's own. For each call's outputs and for the state after
// it, with M the element's magnitude (gdn_magnitudes: the recurrence on absolute values, so
// |exact| <= M) and e(x) = max over elements of |x - double| / M:
//     e(gpu) <= 4 e(cpu chunked) + 256u.
// Why this and not a fixed bound: the chunked form's rounding is not the recurrence's. G is a
// cumulative sum inside the chunk, so exp(G_r - G_s) carries |G| u of absolute error in the
// exponent (|G| reaches hundreds after an outlier a: the cases' a[0] = 30, and the x25
// outliers); T = (I + A)^-1 may have entries above 1, which amplify the rounding of R and of the
// dk-long dot products (sqrt(dk) u |terms| each, random in sign). Both the CPU and the GPU pay
// all of these, in other summation orders (the GPU applies T as a matrix where the CPU
// substitutes into U and W, and every matrix product as 3xTF32 on the tensor cores, whose
// operands keep ~21 of fp32's 24 bits), so their errors have the same sources and size; 4 covers
// the spread between two maxima over 10^3 to 10^6 elements of errors of one distribution whose
// constants differ by the algorithms' details. The floor, 256u (1.5e-5), is for short calls where
// the CPU's error can be 0 by chance: it is about sqrt(2 dk) u M of the dot products at dk = 128
// times a few for the gates' expf / log1pf ulps. An indexing, masking or synchronisation error
// gives errors of order M, 10^4 times more. NaN never passes; outputs and scratch are poisoned
// with 0xff (NaN) first. The per-case errors are printed (H100, the tensor-core kernels: e(gpu) /
// e(cpu) 0.9 to 1.1, but 3.6 in one case where both are near 1e-7, far under the floor).
// Below a magnitude of 2^-102 (2e-31, nothing a model's activations hold) an element is held to an
// absolute error instead, e normalised by 2^-102: the tensor cores lose subnormal operands and
// products, up to ~2^-126 a term over a few hundred terms, which 256u of 2^-102 (2^-118) covers.
// Seen on the split-prompt case with the tensor-core scan: outputs near 1e-43 after strong decays,
// 5 subnormal ulps off, were errors of 2e-3 "of the magnitude".
constexpr double kChunkedErrorFactor = 4.0;
constexpr double kChunkedErrorFloor = 256 * kU;
constexpr double kMagnitudeFloor = 0x1p-102;

// The recurrence in double on signed values (as the CPU's recurrent form) and on absolute values
// (gdn_magnitudes), one value head per task. Inputs are `rows` tokens from qkv, a, b; the states
// [n_v, dk, dv] are updated. out, magnitude [rows, n_v, dv].
struct GdnReference {
    std::vector<double> out, magnitude;
};

GdnReference gdn_reference(const GatedDeltaParams& p, int64_t rows, const float* qkv,
                           const float* a, const float* b, const std::vector<float>& a_neg,
                           const std::vector<float>& dt_bias, std::vector<double>& state,
                           std::vector<double>& state_magnitude) {
    const int64_t nk = p.n_k_heads, nv = p.n_v_heads, dk = p.k_head_dim, dv = p.v_head_dim;
    const int64_t key_dim = nk * dk, width = qkv_width(p);
    GdnReference ref;
    ref.out.resize(static_cast<size_t>(rows * nv * dv));
    ref.magnitude.resize(ref.out.size());
    auto run_head = [&](int64_t h) {
        const int64_t kh = p.order == GdnHeadOrder::kGrouped ? h / (nv / nk) : h % nk;
        std::vector<double> q(static_cast<size_t>(dk)), k(q.size()), q_abs(q.size()),
            k_abs(q.size()), sk(static_cast<size_t>(dv)), sk_abs(sk.size());
        double* s = state.data() + h * dk * dv;
        double* s_abs = state_magnitude.data() + h * dk * dv;
        for (int64_t t = 0; t < rows; ++t) {
            const float* row = qkv + t * width;
            double q_sq = 0, k_sq = 0;
            for (int64_t i = 0; i < dk; ++i) {
                q_sq += static_cast<double>(row[kh * dk + i]) * row[kh * dk + i];
                k_sq +=
                    static_cast<double>(row[key_dim + kh * dk + i]) * row[key_dim + kh * dk + i];
            }
            const double q_inv = 1.0 / std::sqrt(q_sq + 1e-6) / std::sqrt(static_cast<double>(dk));
            const double k_inv = 1.0 / std::sqrt(k_sq + 1e-6);
            for (int64_t i = 0; i < dk; ++i) {
                q[i] = row[kh * dk + i] * q_inv;
                k[i] = row[key_dim + kh * dk + i] * k_inv;
                q_abs[i] = std::fabs(q[i]);
                k_abs[i] = std::fabs(k[i]);
            }
            const double beta = 1.0 / (1.0 + std::exp(-static_cast<double>(b[t * nv + h])));
            const double x = static_cast<double>(a[t * nv + h]) + dt_bias[h];
            const double decay = std::exp(a_neg[h] * (x > 20.0 ? x : std::log1p(std::exp(x))));
            std::fill(sk.begin(), sk.end(), 0.0);
            std::fill(sk_abs.begin(), sk_abs.end(), 0.0);
            for (int64_t i = 0; i < dk; ++i) {
                for (int64_t j = 0; j < dv; ++j) {
                    s[i * dv + j] *= decay;
                    s_abs[i * dv + j] *= decay;
                    sk[j] += s[i * dv + j] * k[i];
                    sk_abs[j] += s_abs[i * dv + j] * k_abs[i];
                }
            }
            const size_t o = static_cast<size_t>((t * nv + h) * dv);
            for (int64_t j = 0; j < dv; ++j) {
                const double v = row[2 * key_dim + h * dv + j];
                const double delta = beta * (v - sk[j]);
                const double delta_abs = beta * (std::fabs(v) + sk_abs[j]);
                double out = 0.0, out_abs = 0.0;
                for (int64_t i = 0; i < dk; ++i) {
                    s[i * dv + j] += k[i] * delta;
                    s_abs[i * dv + j] += k_abs[i] * delta_abs;
                    out += s[i * dv + j] * q[i];
                    out_abs += s_abs[i * dv + j] * q_abs[i];
                }
                ref.out[o + j] = out;
                ref.magnitude[o + j] = out_abs;
            }
        }
    };
    const int64_t workers =
        std::min<int64_t>(nv, std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (int64_t w = 0; w < workers; ++w) {
        pool.emplace_back([&, w] {
            for (int64_t h = w; h < nv; h += workers) run_head(h);
        });
    }
    for (std::thread& thread : pool) thread.join();
    return ref;
}

// max_i |got_i - ref_i| / magnitude_i into `error` (an element of magnitude 0 must be exact);
// NaN fails.
void normalised_error(const std::vector<float>& got, const std::vector<double>& ref,
                      const std::vector<double>& magnitude, const std::string& what,
                      double& error) {
    ASSERT_EQ(got.size(), ref.size()) << what;
    error = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << what << ": NaN at element " << i;
        const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
        if (magnitude[i] > 0.0) {
            error = std::max(error, err / std::max(magnitude[i], kMagnitudeFloor));
        } else {
            ASSERT_EQ(err, 0.0) << what << " element " << i << " of magnitude 0";
        }
    }
}

void expect_gpu_error_like_cpu(double gpu, double cpu, const std::string& what) {
    EXPECT_LE(gpu, kChunkedErrorFactor * cpu + kChunkedErrorFloor)
        << what << ": gpu error " << gpu << " of the magnitude, cpu chunked " << cpu;
}

enum class GdnEntry {
    kDispatch,  // cuda::gated_delta_rule with gated_delta_scratch_bytes of scratch (Ops' path)
    kChunked,   // cuda::gated_delta_rule_chunked, whatever the call's length
};

// One sequence of calls continuing one state, on the GPU, on the CPU's chunked form and in double.
struct GdnRun {
    std::vector<float> gpu_out;         // [total rows, n_v, dv], the calls' outputs in order
    std::vector<double> out_magnitude;  // the same shape
    std::vector<float> gpu_state;       // after the last call
    std::vector<double> state_magnitude;
    double worst_cpu_error = 0.0;  // the CPU chunked form's largest e over the calls and states
    double worst_gpu_error = 0.0;
};

struct GdnSetup {
    GatedDeltaParams params;
    GdnInputs in;  // every call's tokens, concatenated
    std::vector<float> a_neg, dt_bias, state0;
};

GdnSetup make_gdn_setup(int64_t nk, int64_t nv, int64_t dk, int64_t dv, GdnHeadOrder order,
                        int64_t total_rows, uint32_t seed) {
    GdnSetup setup;
    GatedDeltaParams& p = setup.params;
    p.n_k_heads = nk;
    p.n_v_heads = nv;
    p.k_head_dim = dk;
    p.v_head_dim = dv;
    p.order = order;
    p.chunk = cuda::kGdnChunk;  // the CPU's chunked form, as the GPU's
    setup.in = random_gdn_inputs(p, total_rows, seed);
    // As in GatedDeltaRuleMatchesCpu: A = -exp(A_log), A_log ~ log U[1, 16]; dt_bias in [-6.9,
    // -2.3].
    setup.a_neg = random_uniform(static_cast<size_t>(nv), seed + 3, -16.0f, -1.0f);
    setup.dt_bias = random_uniform(static_cast<size_t>(nv), seed + 4, -6.9f, -2.3f);
    setup.state0 = random_vector(static_cast<size_t>(nv * dk * dv), seed + 5, 0.5f);
    return setup;
}

void run_gdn_calls(Ops& cpu, const GdnSetup& setup, const std::vector<int64_t>& calls,
                   GdnEntry entry, const std::string& what, GdnRun& run) {
    const GatedDeltaParams& p = setup.params;
    const int64_t nv = p.n_v_heads, dv = p.v_head_dim, width = qkv_width(p);
    int64_t total = 0;
    for (const int64_t rows : calls) total += rows;
    ASSERT_EQ(static_cast<size_t>(total * nv), setup.in.a.size()) << what;
    const size_t state_size = setup.state0.size();

    DeviceBuffer dqkv, da, db, da_neg, ddt_bias, dstate, dout;
    upload(dqkv, setup.in.qkv);
    upload(da, setup.in.a);
    upload(db, setup.in.b);
    upload(da_neg, setup.a_neg);
    upload(ddt_bias, setup.dt_bias);
    upload(dstate, setup.state0);
    const size_t n_out = static_cast<size_t>(total * nv * dv);
    CUDA_OK(dout.alloc(n_out * 4));
    CUDA_OK(cudaMemset(dout.as<void>(), 0xff, n_out * 4));
    kestrel::testing::wait_for_host_copies();

    std::vector<float> cpu_state = setup.state0;
    std::vector<double> state64(state_size);
    run.state_magnitude.assign(state_size, 0.0);
    for (size_t i = 0; i < state_size; ++i) {
        state64[i] = setup.state0[i];
        run.state_magnitude[i] = std::fabs(setup.state0[i]);
    }
    run.gpu_out.assign(n_out, 0.0f);
    run.out_magnitude.assign(n_out, 0.0);
    run.worst_cpu_error = run.worst_gpu_error = 0.0;

    int64_t t0 = 0;
    for (size_t call = 0; call < calls.size(); ++call) {
        const int64_t rows = calls[call];
        const std::string call_what =
            what + ", call " + std::to_string(call + 1) + " (" + std::to_string(rows) + " tokens)";
        const float* qkv = setup.in.qkv.data() + t0 * width;
        const float* a = setup.in.a.data() + t0 * nv;
        const float* b = setup.in.b.data() + t0 * nv;
        const size_t call_out = static_cast<size_t>(rows * nv * dv);
        const size_t out_offset = static_cast<size_t>(t0 * nv * dv);

        // The CPU's chunked form, chunk 64 from the call's first token (as the GPU's).
        std::vector<float> cpu_out(call_out);
        const RecurrentLayerView view{nullptr, cpu_state.data(), 0, 0};
        cpu.gated_delta_rule(qkv, a, b, setup.a_neg.data(), setup.dt_bias.data(), rows, p, view,
                             cpu_out.data());
        const GdnReference ref = gdn_reference(p, rows, qkv, a, b, setup.a_neg, setup.dt_bias,
                                               state64, run.state_magnitude);

        const size_t scratch_bytes = entry == GdnEntry::kChunked
                                         ? cuda::gated_delta_chunked_scratch_bytes(rows, nv)
                                         : cuda::gated_delta_scratch_bytes(rows, p);
        DeviceBuffer scratch;
        CUDA_OK(scratch.alloc(scratch_bytes));
        CUDA_OK(cudaMemset(scratch.as<void>(), 0xff, std::max<size_t>(scratch_bytes, 16)));
        kestrel::testing::wait_for_host_copies();
        const float* dq = dqkv.as<float>() + t0 * width;
        const float* dav = da.as<float>() + t0 * nv;
        const float* dbv = db.as<float>() + t0 * nv;
        float* dst = dout.as<float>() + out_offset;
        if (entry == GdnEntry::kChunked) {
            STATUS_OK(cuda::gated_delta_rule_chunked(
                dq, dav, dbv, da_neg.as<float>(), ddt_bias.as<float>(), rows, p, dstate.as<float>(),
                dst, scratch.as<void>(), scratch_bytes, nullptr));
        } else {
            STATUS_OK(cuda::gated_delta_rule(
                dq, dav, dbv, da_neg.as<float>(), ddt_bias.as<float>(), rows, p, dstate.as<float>(),
                dst, nullptr, scratch_bytes > 0 ? scratch.as<void>() : nullptr, scratch_bytes));
        }
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<float> gpu_out = download<float>(dst, call_out);
        const std::vector<float> gpu_state = download<float>(dstate, state_size);

        const std::vector<double>& state_ref = state64;  // the double state after this call
        double cpu_out_error = 0, gpu_out_error = 0, cpu_state_error = 0, gpu_state_error = 0;
        ASSERT_NO_FATAL_FAILURE(normalised_error(cpu_out, ref.out, ref.magnitude,
                                                 call_what + ", cpu out", cpu_out_error));
        ASSERT_NO_FATAL_FAILURE(normalised_error(gpu_out, ref.out, ref.magnitude,
                                                 call_what + ", gpu out", gpu_out_error));
        ASSERT_NO_FATAL_FAILURE(normalised_error(cpu_state, state_ref, run.state_magnitude,
                                                 call_what + ", cpu state", cpu_state_error));
        ASSERT_NO_FATAL_FAILURE(normalised_error(gpu_state, state_ref, run.state_magnitude,
                                                 call_what + ", gpu state", gpu_state_error));
        expect_gpu_error_like_cpu(gpu_out_error, cpu_out_error, call_what + ", out");
        expect_gpu_error_like_cpu(gpu_state_error, cpu_state_error, call_what + ", state");
        run.worst_cpu_error = std::max({run.worst_cpu_error, cpu_out_error, cpu_state_error});
        run.worst_gpu_error = std::max({run.worst_gpu_error, gpu_out_error, gpu_state_error});

        std::copy(gpu_out.begin(), gpu_out.end(), run.gpu_out.begin() + out_offset);
        std::copy(ref.magnitude.begin(), ref.magnitude.end(),
                  run.out_magnitude.begin() + out_offset);
        run.gpu_state = gpu_state;
        t0 += rows;
    }
    std::printf("%s: max error / magnitude: gpu %.3g, cpu chunked %.3g\n", what.c_str(),
                run.worst_gpu_error, run.worst_cpu_error);
}

struct ChunkedCase {
    int64_t n_k_heads, n_v_heads, k_head_dim, v_head_dim;
    std::vector<int64_t> calls;  // tokens per call, each continuing the previous call's state
    const char* what;
};

std::string order_name(GdnHeadOrder order) {
    return order == GdnHeadOrder::kGrouped ? "grouped" : "tiled";
}

// Each case in both head orders, its calls one after another on one state, each held to the
// references by run_gdn_calls; the inputs' seed advances by 10 per (case, order) from `seed`.
void run_chunked_cases(Ops& cpu, std::span<const ChunkedCase> cases, GdnEntry entry,
                       uint32_t seed) {
    for (const ChunkedCase& c : cases) {
        for (const GdnHeadOrder order : {GdnHeadOrder::kGrouped, GdnHeadOrder::kTiled}) {
            int64_t total = 0;
            for (const int64_t rows : c.calls) total += rows;
            seed += 10;
            const GdnSetup setup = make_gdn_setup(c.n_k_heads, c.n_v_heads, c.k_head_dim,
                                                  c.v_head_dim, order, total, seed);
            GdnRun run;
            ASSERT_NO_FATAL_FAILURE(run_gdn_calls(
                cpu, setup, c.calls, entry, std::string(c.what) + ", " + order_name(order), run));
        }
    }
}

// Qwen3.5-35B-A3B's shape through gated_delta_rule (Ops' path): one chunk, 200 tokens (a partial
// last chunk of 8), 2048 (the CUDA backend's prefill step), and a chunked call, decode calls (the
// 8-warp kernel) and a chunked call again, handing the state from one to the other.
TEST_F(CudaGatedDelta, GatedDeltaRuleChunkedMatchesCpuAtQwen35Shapes) {
    const std::unique_ptr<Ops> cpu = make_cpu_ops(0);
    const ChunkedCase cases[] = {
        {16, 32, 128, 128, {64}, "Qwen3.5-35B-A3B, 64 tokens"},
        {16, 32, 128, 128, {200}, "Qwen3.5-35B-A3B, 200 tokens"},
        {16, 32, 128, 128, {2048}, "Qwen3.5-35B-A3B, 2048 tokens"},
        {16,
         32,
         128,
         128,
         {200, 1, 3, 70},
         "Qwen3.5-35B-A3B, prefill 200, decode 1, 3, prefill 70"},
    };
    run_chunked_cases(*cpu, cases, GdnEntry::kDispatch, 500);
}

// gated_delta_rule_chunked on short and odd calls: the tiny fixture's shape (dk 16, dv 24) over
// calls of 1 to 130 tokens continuing one state (below, at and above one and two chunks), dk =
// dv = 16, dk 64 with dv 40 (a partial column block), dk 5 and dv 3, dk 33 (not a multiple of 4:
// the float4 rows' zero padding) with dv 72, dk 128 with one key and value head and dv 40.
TEST_F(CudaGatedDelta, GatedDeltaRuleChunkedMatchesCpuAtOddShapes) {
    const std::unique_ptr<Ops> cpu = make_cpu_ops(0);
    const ChunkedCase cases[] = {
        {2, 4, 16, 24, {1, 2, 5, 63, 64, 65, 127, 128, 130}, "tiny fixture, 1 to 130 tokens"},
        {2, 4, 16, 16, {100}, "dk = dv = 16, 100 tokens"},
        {3, 6, 64, 40, {70, 33}, "dk 64, dv 40"},
        {1, 3, 5, 3, {77, 1}, "dk 5, dv 3"},
        {4, 8, 33, 72, {64, 66}, "dk 33, dv 72"},
        {1, 1, 128, 40, {129}, "one head, dk 128, dv 40"},
    };
    run_chunked_cases(*cpu, cases, GdnEntry::kChunked, 700);
}

// A prompt of 257 tokens in one call and in calls of 100 and 157 (chunk boundaries at 0, 64, 128,
// 192, 256 against 0, 64, 100, 164, 228), each followed by 3 decode calls of one token: each run
// is held to the double reference as above, and the two to each other: |one - split| <= 2 (4
// e(cpu) + 256u) M, the sum of the two runs' allowances.
TEST_F(CudaGatedDelta, GatedDeltaRuleChunkedSplitPromptEqualsOneCall) {
    const std::unique_ptr<Ops> cpu = make_cpu_ops(0);
    const ChunkedCase shapes[] = {{16, 32, 128, 128, {}, "Qwen3.5-35B-A3B"},
                                  {2, 4, 16, 24, {}, "tiny fixture"}};
    for (const ChunkedCase& c : shapes) {
        const std::vector<int64_t> one = {257, 1, 1, 1};
        const std::vector<int64_t> split = {100, 157, 1, 1, 1};
        const GdnSetup setup = make_gdn_setup(c.n_k_heads, c.n_v_heads, c.k_head_dim, c.v_head_dim,
                                              GdnHeadOrder::kTiled, 260, 900);
        GdnRun run_one, run_split;
        ASSERT_NO_FATAL_FAILURE(run_gdn_calls(*cpu, setup, one, GdnEntry::kDispatch,
                                              std::string(c.what) + ", 257 + 3 x 1", run_one));
        ASSERT_NO_FATAL_FAILURE(run_gdn_calls(*cpu, setup, split, GdnEntry::kDispatch,
                                              std::string(c.what) + ", 100 + 157 + 3 x 1",
                                              run_split));
        const double allowance = 2 * (kChunkedErrorFactor * std::max(run_one.worst_cpu_error,
                                                                     run_split.worst_cpu_error) +
                                      kChunkedErrorFloor);
        double error = 0.0;
        const std::vector<double> one_out(run_one.gpu_out.begin(), run_one.gpu_out.end());
        ASSERT_NO_FATAL_FAILURE(normalised_error(run_split.gpu_out, one_out, run_one.out_magnitude,
                                                 std::string(c.what) + ", split vs one, out",
                                                 error));
        EXPECT_LE(error, allowance) << c.what << ": outputs of the split prompt";
        const std::vector<double> one_state(run_one.gpu_state.begin(), run_one.gpu_state.end());
        ASSERT_NO_FATAL_FAILURE(
            normalised_error(run_split.gpu_state, one_state, run_one.state_magnitude,
                             std::string(c.what) + ", split vs one, state", error));
        EXPECT_LE(error, allowance) << c.what << ": state after the split prompt";
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

    // The chunked form: no scratch, too little, misaligned, dk above kGdnChunkedMaxKeyDim; the
    // dispatch checks the scratch it is given for a long call.
    const size_t need = cuda::gated_delta_chunked_scratch_bytes(4, p.n_v_heads);
    DeviceBuffer scratch;
    CUDA_OK(scratch.alloc(need + 16));
    void* work = scratch.as<void>();
    EXPECT_TRUE(
        cuda::gated_delta_rule_chunked(x, x, x, x, x, 0, p, x, out, nullptr, 0, nullptr).ok());
    EXPECT_EQ(
        cuda::gated_delta_rule_chunked(x, x, x, x, x, 4, p, x, out, nullptr, need, nullptr).code(),
        invalid);
    EXPECT_EQ(
        cuda::gated_delta_rule_chunked(x, x, x, x, x, 4, p, x, out, work, need - 4, nullptr).code(),
        invalid);
    EXPECT_EQ(cuda::gated_delta_rule_chunked(x, x, x, x, x, 4, p, x, out,
                                             static_cast<char*>(work) + 4, need, nullptr)
                  .code(),
              invalid);
    bad = p;
    bad.k_head_dim = cuda::kGdnChunkedMaxKeyDim + 1;
    EXPECT_EQ(
        cuda::gated_delta_rule_chunked(x, x, x, x, x, 4, bad, x, out, work, need, nullptr).code(),
        invalid);
    const int64_t long_call = cuda::kGdnChunkedMinRows;
    EXPECT_EQ(cuda::gated_delta_scratch_bytes(long_call, p),
              cuda::gated_delta_chunked_scratch_bytes(long_call, p.n_v_heads));
    EXPECT_EQ(cuda::gated_delta_scratch_bytes(long_call - 1, p), 0u);
    EXPECT_EQ(cuda::gated_delta_scratch_bytes(long_call, bad), 0u);
    EXPECT_EQ(
        cuda::gated_delta_rule(x, x, x, x, x, long_call, p, x, out, nullptr, work, need - 4).code(),
        invalid);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
