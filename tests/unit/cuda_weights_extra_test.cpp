// The synthetic W4 weights of `--dummy` models (fill_random_w4, src/ops/cuda/weights_extra.cu, and
// CudaOps::random_weight's kW4 case) against what weights_extra.h says they hold: qs byte i =
// random_weight_byte(seed, i), every group_scales word sc = m = 255, every super_scales word
// (d, dmin) = (fp16(2a / 15 / 255), fp16(a / 255)), so that the weights (w4_dequantize) are
// uniform in about [-a, a]; nothing written past the three arrays. Skips without a GPU.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/half.h"
#include "ops/cuda/weights_extra.h"
#include "ops/ops.h"
#include "ops/weight_format.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaWeightsExtra, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;

class CudaWeightsExtra : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
    }
};

constexpr size_t kGuardBytes = 64;  // poisoned bytes after each array: must stay untouched
constexpr uint8_t kPoison = 0xAB;

// The super word fill_random_w4 documents for amplitude a, as the two fp16 halves (d, dmin).
std::vector<uint16_t> expected_super_word(float a) {
    return {fp32_to_fp16(2.0f * a / 15.0f / 255.0f), fp32_to_fp16(a / 255.0f)};
}

// Checks the three arrays' contents (downloaded with their guards) against the description, then
// the weights they stand for against [-a, a]. `what` names the case in failure messages.
void check_w4_contents(const std::vector<uint8_t>& qs, const std::vector<uint16_t>& group_scales,
                       const std::vector<uint16_t>& super_scales, int64_t n, int64_t k, float a,
                       uint64_t seed, const char* what) {
    W4Weights w;
    w.n = n;
    w.k = k;
    const auto qs_bytes = static_cast<size_t>(w.qs_bytes());
    const auto groups = static_cast<size_t>(n * w.groups());
    const auto supers = static_cast<size_t>(n * w.supers());
    ASSERT_EQ(qs.size(), qs_bytes + kGuardBytes);
    for (size_t i = 0; i < qs_bytes; ++i) {
        ASSERT_EQ(qs[i], cuda::random_weight_byte(seed, i)) << what << ": qs byte " << i;
    }
    for (size_t i = qs_bytes; i < qs.size(); ++i) {
        ASSERT_EQ(qs[i], kPoison) << what << ": past qs, byte " << i;
    }
    for (size_t g = 0; g < groups; ++g) {
        ASSERT_EQ(group_scales[g], 0xFFFF) << what << ": group " << g << " (sc = m = 255)";
    }
    const uint16_t poison16 = kPoison | (kPoison << 8);
    for (size_t i = groups; i < group_scales.size(); ++i) {
        ASSERT_EQ(group_scales[i], poison16) << what << ": past group_scales, word " << i;
    }
    const std::vector<uint16_t> dd = expected_super_word(a);
    for (size_t s = 0; s < supers; ++s) {
        ASSERT_EQ(super_scales[2 * s], dd[0]) << what << ": d of super-group " << s;
        ASSERT_EQ(super_scales[2 * s + 1], dd[1]) << what << ": dmin of super-group " << s;
    }
    for (size_t i = 2 * supers; i < super_scales.size(); ++i) {
        ASSERT_EQ(super_scales[i], poison16) << what << ": past super_scales, half " << i;
    }

    w.qs.assign(qs.begin(), qs.begin() + static_cast<std::ptrdiff_t>(qs_bytes));
    w.group_scales.assign(group_scales.begin(),
                          group_scales.begin() + static_cast<std::ptrdiff_t>(groups));
    w.super_scales.assign(super_scales.begin(),
                          super_scales.begin() + static_cast<std::ptrdiff_t>(2 * supers));
    const std::vector<float> values = w4_dequantize(w);
    float lo = values[0], hi = values[0];
    double sum = 0.0;
    for (float v : values) {
        ASSERT_TRUE(std::isfinite(v));
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        sum += v;
    }
    // d and dmin are fp16 (subnormal at small a): a few per mille off, hence "about".
    EXPECT_LE(hi, 1.02f * a) << what;
    EXPECT_GE(lo, -1.02f * a) << what;
    EXPECT_GE(hi, 0.95f * a) << what;
    EXPECT_LE(lo, -0.95f * a) << what;
    EXPECT_LE(std::fabs(sum / static_cast<double>(values.size())), 0.05 * a)
        << what << ": not centred";
}

TEST_F(CudaWeightsExtra, FillRandomW4MatchesItsDescription) {
    // {n, k}: rows ending in a short super-group (20 groups = 2 x 8 + 4), and the Gemma 4 width.
    const int64_t shapes[][2] = {{70, 640}, {3, 5376}};
    uint64_t seed = 1234;
    for (const auto& shape : shapes) {
        const int64_t n = shape[0], k = shape[1];
        W4Weights sizes;
        sizes.n = n;
        sizes.k = k;
        const auto qs_bytes = static_cast<size_t>(sizes.qs_bytes());
        const auto gs_bytes = static_cast<size_t>(sizes.group_scales_bytes());
        const auto ss_bytes = static_cast<size_t>(sizes.super_scales_bytes());
        DeviceBuffer qs, gs, ss;
        CUDA_OK(qs.alloc(qs_bytes + kGuardBytes));
        CUDA_OK(gs.alloc(gs_bytes + kGuardBytes));
        CUDA_OK(ss.alloc(ss_bytes + kGuardBytes));
        CUDA_OK(cudaMemset(qs.as<void>(), kPoison, qs_bytes + kGuardBytes));
        CUDA_OK(cudaMemset(gs.as<void>(), kPoison, gs_bytes + kGuardBytes));
        CUDA_OK(cudaMemset(ss.as<void>(), kPoison, ss_bytes + kGuardBytes));
        kestrel::testing::wait_for_host_copies();
        const float a = std::sqrt(3.0f / static_cast<float>(k));
        ++seed;
        const Status s = cuda::fill_random_w4(qs.as<uint8_t>(), gs.as<uint16_t>(),
                                              ss.as<uint32_t>(), n, k, a, seed, nullptr);
        ASSERT_TRUE(s.ok()) << s.message();
        CUDA_OK(cudaDeviceSynchronize());
        check_w4_contents(download<uint8_t>(qs, qs_bytes + kGuardBytes),
                          download<uint16_t>(gs, (gs_bytes + kGuardBytes) / 2),
                          download<uint16_t>(ss, (ss_bytes + kGuardBytes) / 2), n, k, a, seed,
                          k == 640 ? "k 640" : "k 5376");
        if (HasFatalFailure()) return;
    }
}

TEST_F(CudaWeightsExtra, FillRandomW4RejectsBadArguments) {
    DeviceBuffer d;
    CUDA_OK(d.alloc(4096));
    const auto code = [&](uint8_t* qs, uint16_t* gs, uint32_t* ss, int64_t n, int64_t k) {
        return cuda::fill_random_w4(qs, gs, ss, n, k, 0.1f, 1, nullptr).code();
    };
    EXPECT_EQ(code(d.as<uint8_t>(), d.as<uint16_t>(), d.as<uint32_t>(), 2, 48),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(code(d.as<uint8_t>(), d.as<uint16_t>(), d.as<uint32_t>(), 0, 64),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(code(d.as<uint8_t>(), nullptr, d.as<uint32_t>(), 2, 64),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(code(d.as<uint8_t>(), d.as<uint16_t>(), nullptr, 2, 64),
              StatusCode::kInvalidArgument);
}

// The backend's random W4 weight: the three arrays at their sizes, filled as fill_random_w4 with
// a = sqrt(3 / in) and the weight's seed.
TEST_F(CudaWeightsExtra, RandomWeightW4) {
    Result<std::unique_ptr<Ops> > ops = make_cuda_ops();
    ASSERT_TRUE(ops.ok()) << ops.status().message();
    const int64_t out = 70, in = 640;
    const uint64_t seed = 99;
    Result<Weight> w = (*ops)->random_weight(WeightFormat::kW4, out, in, seed);
    ASSERT_TRUE(w.ok()) << w.status().message();
    EXPECT_EQ(w->data.bytes(), static_cast<size_t>(out * in / 2));
    EXPECT_EQ(w->scales.bytes(), static_cast<size_t>(out * (in / 32) * 2));
    EXPECT_EQ(w->super_scales.bytes(), static_cast<size_t>(out * ((in / 32 + 7) / 8) * 4));
    CUDA_OK(cudaDeviceSynchronize());
    // Downloaded with kGuardBytes of poison appended, as check_w4_contents expects.
    auto with_guard = [](std::vector<uint8_t> bytes) {
        bytes.insert(bytes.end(), kGuardBytes, kPoison);
        return bytes;
    };
    const std::vector<uint8_t> qs =
        with_guard(download(static_cast<const uint8_t*>(w->data.data()), w->data.bytes()));
    const std::vector<uint8_t> gs_bytes =
        with_guard(download(static_cast<const uint8_t*>(w->scales.data()), w->scales.bytes()));
    const std::vector<uint8_t> ss_bytes = with_guard(
        download(static_cast<const uint8_t*>(w->super_scales.data()), w->super_scales.bytes()));
    std::vector<uint16_t> gs(gs_bytes.size() / 2), ss(ss_bytes.size() / 2);
    std::memcpy(gs.data(), gs_bytes.data(), gs.size() * 2);
    std::memcpy(ss.data(), ss_bytes.data(), ss.size() * 2);
    check_w4_contents(qs, gs, ss, out, in, std::sqrt(3.0f / static_cast<float>(in)), seed,
                      "random_weight");
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
