// gemv_w4a8_conv1d (src/ops/cuda/gemv_w4a8.h): the W4A8 decode GEMV at m = 1 with Qwen3.5's causal
// conv1d applied to its first `channels` outputs in the same launch, against its definition, the
// two launches gemv_w4a8 then conv1d_causal (gated_delta.h). y, out and the updated state must
// match bit for bit (memcmp), token after token with the state carried over 3 calls; outputs are
// poisoned with NaN first and every y and out must be finite. The shapes: Qwen3.5's in-projection
// (K = 2048, N = 12352, 8192 channels, kernel 4, SiLU), odd ones, channels == N, kernel 1 without
// state, kernels 5 and 8 (the epilogue's 8-slot form, which uses the state before the row's loads),
// and between them every split-K variant S = 1, 2, 4, 8 (checked on the GPU at hand).
// So that the comparison can fail, each case checks on the host that its data tells a wrong tap
// order apart (the sum reversed differs in fp32 on many channels, kernel >= 3), that the state
// really moves (the reference's new state is the old one shifted by a row, y last), and that the
// reference's out is the conv (against a double-precision sum). Skips without a GPU.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda/gated_delta.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/weight_format.h"

#include "cuda_test_support.h"
#include "cuda_w4_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaGemvConv1d, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::DeviceW4;
using kestrel::testing::download;
using kestrel::testing::random_vector;
using kestrel::testing::random_w4;
using kestrel::testing::upload;
using kestrel::testing::upload_w4;

class CudaGemvConv1d : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
    }
};

constexpr int kTokens = 3;

struct Case {
    const char* name;
    int64_t k, n, channels, kernel;
    bool silu;
};

// S (gemv_w4a8_warps_per_row at m = 1) on an H100's or H200's 132 SMs in the comments; the test
// checks on the GPU at hand that the cases reach all four.
constexpr Case kCases[] = {
    // 64 groups: short rows (gemv_w4a8.h), at most 2 a lane: S = 1.
    {"qwen35 in-projection", 2048, 12352, 8192, 4, true},
    // 64 groups again, over many more rows: S = 1.
    {"large N", 2048, 20000, 16384, 4, true},
    // 3 groups, less than 2 slices: S = 1 on any GPU.
    {"odd", 96, 37, 20, 3, false},
    // 33 groups: S = 1; kernel 2.
    {"kernel 2", 1056, 250, 100, 2, true},
    // 129 groups = 4 slices, 1001 rows: S = 4; every row convolved; 8-slot epilogue.
    {"channels == n, kernel 5", 4128, 1001, 1001, 5, true},
    // 65 groups = 2 slices, one block: S = 2; 8-slot epilogue at its largest kernel.
    {"channels == n, kernel 8", 2080, 45, 45, 8, false},
    // 257 groups = 8 slices, one block: S = 8; no state at all.
    {"kernel 1, null state", 8224, 37, 30, 1, true},
};

// Index of the first element whose bits differ, or -1.
int64_t first_difference(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return static_cast<int64_t>(i);
    }
    return -1;
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& expected,
                      const std::string& what) {
    ASSERT_EQ(got.size(), expected.size()) << what;
    const int64_t i = first_difference(got, expected);
    ASSERT_EQ(i, -1) << what << " element " << i << ": fused " << got[static_cast<size_t>(i)]
                     << ", gemv_w4a8 + conv1d_causal " << expected[static_cast<size_t>(i)];
}

void expect_finite(const std::vector<float>& v, const std::string& what) {
    for (size_t i = 0; i < v.size(); ++i) {
        ASSERT_TRUE(std::isfinite(v[i])) << what << " element " << i << " = " << v[i];
    }
}

// The host checks that make the bit-for-bit comparison mean something (see the file comment).
// weight [channels, kernel]; old_state, new_state [kernel - 1, channels]; y [n], out [channels]:
// the reference's inputs and results of one token. `order_sensitive` counts the channels whose
// fp32 sum, taps reversed, differs from the sum in order.
void check_reference(const Case& c, const std::vector<float>& weight,
                     const std::vector<float>& old_state, const std::vector<float>& new_state,
                     const std::vector<float>& y, const std::vector<float>& out,
                     int64_t& order_sensitive) {
    const int64_t kernel = c.kernel, channels = c.channels, past = kernel - 1;
    for (int64_t ch = 0; ch < channels; ++ch) {
        // The window [state rows oldest first, y].
        std::vector<float> window(static_cast<size_t>(kernel));
        for (int64_t r = 0; r < past; ++r) {
            window[static_cast<size_t>(r)] = old_state[static_cast<size_t>(r * channels + ch)];
        }
        window[static_cast<size_t>(past)] = y[static_cast<size_t>(ch)];
        for (int64_t r = 0; r < past; ++r) {
            const float moved = new_state[static_cast<size_t>(r * channels + ch)];
            const float expected = window[static_cast<size_t>(r + 1)];
            ASSERT_EQ(std::memcmp(&moved, &expected, sizeof(float)), 0)
                << c.name << ": reference state row " << r << " channel " << ch;
        }
        double sum = 0.0, magnitude = 0.0;
        float forward = 0.0f, reversed = 0.0f;
        for (int64_t j = 0; j < kernel; ++j) {
            const float w = weight[static_cast<size_t>(ch * kernel + j)];
            const float wr = weight[static_cast<size_t>(ch * kernel + kernel - 1 - j)];
            sum += static_cast<double>(w) * window[static_cast<size_t>(j)];
            magnitude += std::fabs(static_cast<double>(w) * window[static_cast<size_t>(j)]);
            forward += w * window[static_cast<size_t>(j)];
            reversed += wr * window[static_cast<size_t>(kernel - 1 - j)];
        }
        if (forward != reversed) ++order_sensitive;
        // SiLU's slope is within [-0.1, 1.1]; its own few roundings are relative to the result.
        const double expected = c.silu ? sum / (1.0 + std::exp(-sum)) : sum;
        const double got = out[static_cast<size_t>(ch)];
        const double tolerance = 1e-5 * magnitude + 1e-5 * std::fabs(expected) + 1e-30;
        ASSERT_LE(std::fabs(got - expected), tolerance)
            << c.name << ": reference out channel " << ch << " = " << got << ", conv " << expected;
    }
}

// kTokens decode steps of one case: fresh activations each token, the state carried.
void run_case(const Case& c, uint32_t seed) {
    const int64_t k = c.k, n = c.n, channels = c.channels, kernel = c.kernel;
    const int64_t state_count = (kernel - 1) * channels;
    const bool has_state = kernel > 1;
    DeviceW4 dw;
    upload_w4(random_w4(n, k, seed), dw);
    if (::testing::Test::HasFatalFailure()) return;

    // Conv weights of a few sizes, signs mixed; the state on the scale of y's outputs.
    const std::vector<float> weight =
        random_vector(static_cast<size_t>(channels * kernel), seed + 1, 0.4f);
    std::vector<float> state = random_vector(static_cast<size_t>(state_count), seed + 2, 1.0f);
    DeviceBuffer dx, da, dweight, dstate_ref, dstate, dy_ref, dy, dout_ref, dout;
    upload(dweight, weight);
    upload(dstate_ref, state);
    upload(dstate, state);
    CUDA_OK(dx.alloc(static_cast<size_t>(k) * sizeof(float)));
    CUDA_OK(da.alloc(static_cast<size_t>(k / 32) * sizeof(Q8Block)));
    for (DeviceBuffer* b : {&dy_ref, &dy}) CUDA_OK(b->alloc(static_cast<size_t>(n) * 4));
    for (DeviceBuffer* b : {&dout_ref, &dout}) CUDA_OK(b->alloc(static_cast<size_t>(channels) * 4));

    cuda::GemvConv1d conv;
    conv.weight = dweight.as<float>();
    conv.state = has_state ? dstate.as<float>() : nullptr;
    conv.kernel = kernel;
    conv.channels = channels;
    conv.silu = c.silu;
    conv.out = dout.as<float>();

    int64_t order_sensitive = 0;
    for (int token = 0; token < kTokens; ++token) {
        const std::string what = std::string(c.name) + " token " + std::to_string(token);
        const std::vector<float> x =
            random_vector(static_cast<size_t>(k), seed + 10 + static_cast<uint32_t>(token), 1.0f);
        CUDA_OK(cudaMemcpy(dx.as<void>(), x.data(), x.size() * 4, cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
        STATUS_OK(cuda::quantize_q8(dx.as<float>(), 1, k, k, da.as<Q8Block>(), nullptr));
        for (DeviceBuffer* b : {&dy_ref, &dy}) {
            CUDA_OK(cudaMemset(b->as<void>(), 0xff, static_cast<size_t>(n) * 4));  // NaN
        }
        for (DeviceBuffer* b : {&dout_ref, &dout}) {
            CUDA_OK(cudaMemset(b->as<void>(), 0xff, static_cast<size_t>(channels) * 4));
            kestrel::testing::wait_for_host_copies();
        }
        const std::vector<float> old_state =
            download<float>(dstate_ref, static_cast<size_t>(state_count));

        STATUS_OK(cuda::gemv_w4a8(dw.view, da.as<Q8Block>(), 1, dy_ref.as<float>(), nullptr));
        STATUS_OK(cuda::conv1d_causal(dy_ref.as<float>(), 1, dweight.as<float>(),
                                      has_state ? dstate_ref.as<float>() : nullptr, kernel,
                                      channels, c.silu, dout_ref.as<float>(), nullptr));
        STATUS_OK(cuda::gemv_w4a8_conv1d(dw.view, da.as<Q8Block>(), dy.as<float>(), conv, nullptr));
        CUDA_OK(cudaDeviceSynchronize());

        const std::vector<float> y_ref = download<float>(dy_ref, static_cast<size_t>(n));
        const std::vector<float> y = download<float>(dy, static_cast<size_t>(n));
        const std::vector<float> out_ref = download<float>(dout_ref, static_cast<size_t>(channels));
        const std::vector<float> out = download<float>(dout, static_cast<size_t>(channels));
        const std::vector<float> state_ref =
            download<float>(dstate_ref, static_cast<size_t>(state_count));
        const std::vector<float> state_got =
            download<float>(dstate, static_cast<size_t>(state_count));

        expect_finite(y_ref, what + " y (gemv_w4a8)");
        expect_finite(y, what + " y");
        expect_finite(out, what + " out");
        check_reference(c, weight, old_state, state_ref, y_ref, out_ref, order_sensitive);
        expect_same_bits(y, y_ref, what + " y");
        expect_same_bits(out, out_ref, what + " out");
        expect_same_bits(state_got, state_ref, what + " state");
        if (::testing::Test::HasFatalFailure()) return;
    }
    // With 3 taps or more a wrong order must show (with 2, 0 + a + b is b + a exactly).
    if (kernel >= 3) {
        EXPECT_GE(order_sensitive, kTokens * channels / 10)
            << c.name << ": the data hardly tells the tap order apart";
    }
}

TEST_F(CudaGemvConv1d, CasesReachEveryWarpSplitAndBothEpilogueForms) {
    const Result<int> sms = cuda::gemv_sm_count();
    ASSERT_TRUE(sms.ok()) << sms.status().message();
    std::vector<int> reached;
    bool four_slots = false, eight_slots = false;
    for (const Case& c : kCases) {
        const int split = cuda::gemv_w4a8_warps_per_row(c.n, c.k, 1, *sms);
        std::printf("%-26s K %5lld N %5lld channels %5lld kernel %lld: S = %d\n", c.name,
                    static_cast<long long>(c.k), static_cast<long long>(c.n),
                    static_cast<long long>(c.channels), static_cast<long long>(c.kernel), split);
        reached.push_back(split);
        (c.kernel <= 4 ? four_slots : eight_slots) = true;
    }
    for (const int split : {1, 2, 4, 8}) {
        EXPECT_NE(std::find(reached.begin(), reached.end(), split), reached.end())
            << "no case reaches S = " << split << " on " << *sms << " SMs: add one to kCases";
    }
    EXPECT_TRUE(four_slots && eight_slots) << "kernels <= 4 and > 4 take different epilogues";
    // The two ends of the split that hold on any GPU: short rows stay whole, one block of a
    // 257-group row splits all the way.
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(37, 96, 1, *sms), 1);
    EXPECT_EQ(cuda::gemv_w4a8_warps_per_row(37, 8224, 1, *sms), 8);
}

TEST_F(CudaGemvConv1d, MatchesGemvThenConvBitForBit) {
    uint32_t seed = 100;
    for (const Case& c : kCases) {
        run_case(c, seed += 100);
        if (HasFatalFailure()) return;
    }
}

TEST_F(CudaGemvConv1d, RejectsBadArguments) {
    const int64_t n = 40, k = 64, channels = 16, kernel = 4;
    DeviceW4 dw;
    upload_w4(random_w4(n, k, 1), dw);
    DeviceBuffer da, dy, dweight, dstate, dout;
    CUDA_OK(da.alloc(static_cast<size_t>(k / 32) * sizeof(Q8Block)));
    CUDA_OK(cudaMemset(da.as<void>(), 0, static_cast<size_t>(k / 32) * sizeof(Q8Block)));
    kestrel::testing::wait_for_host_copies();
    CUDA_OK(dy.alloc(static_cast<size_t>(n) * 4));
    CUDA_OK(dweight.alloc(static_cast<size_t>(channels * 8) * 4));
    CUDA_OK(dstate.alloc(static_cast<size_t>(channels * 7) * 4));
    CUDA_OK(dout.alloc(static_cast<size_t>(n) * 4));
    CUDA_OK(cudaMemset(dweight.as<void>(), 0, static_cast<size_t>(channels * 8) * 4));
    CUDA_OK(cudaMemset(dstate.as<void>(), 0, static_cast<size_t>(channels * 7) * 4));
    kestrel::testing::wait_for_host_copies();
    cuda::GemvConv1d good;
    good.weight = dweight.as<float>();
    good.state = dstate.as<float>();
    good.kernel = kernel;
    good.channels = channels;
    good.silu = true;
    good.out = dout.as<float>();
    const auto call = [&](const cuda::GemvConv1d& conv) {
        return cuda::gemv_w4a8_conv1d(dw.view, da.as<Q8Block>(), dy.as<float>(), conv, nullptr);
    };
    STATUS_OK(call(good));  // so the rejections below are the field's, not the setup's
    CUDA_OK(cudaDeviceSynchronize());

    struct Bad {
        const char* what;
        cuda::GemvConv1d conv;
    };
    std::vector<Bad> bad;
    const auto with = [&](const char* what, auto change) {
        cuda::GemvConv1d conv = good;
        change(conv);
        bad.push_back({what, conv});
    };
    with("channels 0", [](cuda::GemvConv1d& c) { c.channels = 0; });
    with("channels > n", [&](cuda::GemvConv1d& c) { c.channels = n + 1; });
    with("kernel 0", [](cuda::GemvConv1d& c) { c.kernel = 0; });
    with("kernel 9", [](cuda::GemvConv1d& c) { c.kernel = 9; });
    with("null out", [](cuda::GemvConv1d& c) { c.out = nullptr; });
    with("null weight", [](cuda::GemvConv1d& c) { c.weight = nullptr; });
    with("null state, kernel 2", [](cuda::GemvConv1d& c) {
        c.state = nullptr;
        c.kernel = 2;
    });
    with("out misaligned",
         [&](cuda::GemvConv1d& c) { c.out = reinterpret_cast<float*>(dout.as<uint8_t>() + 2); });
    // Overlaps inside the buffers, so that a missing check could not write past them.
    with("out overlaps y", [&](cuda::GemvConv1d& c) { c.out = dy.as<float>() + 1; });
    with("state overlaps out", [&](cuda::GemvConv1d& c) {
        c.state = dstate.as<float>();
        c.out = dstate.as<float>() + 1;
    });
    for (const Bad& b : bad) {
        EXPECT_EQ(call(b.conv).code(), StatusCode::kInvalidArgument) << b.what;
    }
    // The GEMV's own checks still apply.
    cuda::W4DeviceView odd_k = dw.view;
    odd_k.k = 48;
    EXPECT_EQ(cuda::gemv_w4a8_conv1d(odd_k, da.as<Q8Block>(), dy.as<float>(), good, nullptr).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(cuda::gemv_w4a8_conv1d(dw.view, da.as<Q8Block>(), nullptr, good, nullptr).code(),
              StatusCode::kInvalidArgument);
    // kernel 1 needs no state.
    cuda::GemvConv1d no_state = good;
    no_state.kernel = 1;
    no_state.state = nullptr;
    STATUS_OK(call(no_state));
    CUDA_OK(cudaDeviceSynchronize());
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
