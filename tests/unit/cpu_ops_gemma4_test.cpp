// Gemma 4's CPU op, checked by hand: proportional RoPE (ops/cpu/rope_proportional.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {
namespace {

// head_dim 8 (pairs (0,4), (1,5), (2,6), (3,7)), theta 1e4: inv_freq = 1, 0.1, 0.01, 0.001 for
// plain RoPE; proportional with 2 pairs keeps 1 and 0.1 (denominator still 8) and leaves dims
// 2, 3, 6, 7 alone.
TEST(CpuOpsGemma4, ProportionalRopeRotatesOnlyTheFirstPairs) {
    const std::vector<float> x0 = {1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<float> x = x0;
    const std::vector<int64_t> positions = {2};
    rope_proportional(x.data(), positions, 1, 8, 2, 1e4);
    const double a0 = 2.0 * 1.0, a1 = 2.0 * 0.1;  // pos * inv_freq
    EXPECT_NEAR(x[0], 1 * std::cos(a0) - 5 * std::sin(a0), 1e-5);
    EXPECT_NEAR(x[4], 5 * std::cos(a0) + 1 * std::sin(a0), 1e-5);
    EXPECT_NEAR(x[1], 2 * std::cos(a1) - 6 * std::sin(a1), 1e-5);
    EXPECT_NEAR(x[5], 6 * std::cos(a1) + 2 * std::sin(a1), 1e-5);
    for (int i : {2, 3, 6, 7}) EXPECT_EQ(x[i], x0[i]) << "dim " << i;
}

TEST(CpuOpsGemma4, ProportionalRopeWithEveryPairIsRopeNeox) {
    std::vector<float> a(3 * 2 * 16), b;
    for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
    b = a;
    const std::vector<int64_t> positions = {0, 7, 1000};
    rope_proportional(a.data(), positions, 2, 16, 8, 1e6);
    rope_neox(b.data(), positions, 2, 16, 1e6);
    EXPECT_EQ(a, b);
    // Position 0 and zero pairs are the identity.
    std::vector<float> c = b, d = b;
    rope_proportional(c.data(), positions, 2, 16, 0, 1e6);
    EXPECT_EQ(c, d);
}

}  // namespace
}  // namespace kestrel::cpu
