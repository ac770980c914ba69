// The CPU reference ops on tiny cases whose answers are known by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/ops.h"

namespace kestrel::cpu {
namespace {

TEST(CpuOps, RmsNormOfAConstantVectorIsTheWeight) {
    // x = c everywhere: mean(x^2) = c^2, so x / rms = 1 (up to eps) and the output is the weight.
    const std::vector<float> x(8, 3.0f);
    const std::vector<float> w = {1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<float> out(8);
    rms_norm(x.data(), w.data(), 1, 8, 1e-6f, out.data());
    for (int i = 0; i < 8; ++i) EXPECT_NEAR(out[i], w[i], 1e-5f);
    rms_norm(x.data(), nullptr, 1, 8, 0.0f, out.data());
    for (float v : out) EXPECT_FLOAT_EQ(v, 1.0f);
}

// The forward's bump allocator: small buffers share 16 MiB blocks, a larger one gets a block of
// its own size (not the size of the largest before it), and the next forward of the same shape
// gets the same addresses without allocating.
TEST(Workspace, BlocksFitTheirBuffersAndAreReused) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    Workspace& ws = ops->workspace();
    constexpr int64_t kMiBFloats = int64_t{1} << 18;
    const std::vector<int64_t> sizes = {kMiBFloats,      kMiBFloats,      168 * kMiBFloats,
                                        84 * kMiBFloats, 80 * kMiBFloats, kMiBFloats};
    std::vector<float*> first;
    for (const int64_t n : sizes) {
        Result<float*> p = ws.floats(n);
        ASSERT_TRUE(p.ok());
        first.push_back(*p);
    }
    // 16 (two 1 MiB buffers), 168, 84, 80 and 16 MiB (the last 1 MiB buffer: no room after 80).
    EXPECT_EQ(ws.bytes_reserved(), (16 + 168 + 84 + 80 + 16) << 20);
    ws.reset();
    for (size_t i = 0; i < sizes.size(); ++i) {
        Result<float*> p = ws.floats(sizes[i]);
        ASSERT_TRUE(p.ok());
        EXPECT_EQ(*p, first[i]) << i;
    }
    EXPECT_EQ(ws.bytes_reserved(), (16 + 168 + 84 + 80 + 16) << 20);
}

TEST(CpuOps, RmsNormHandComputed) {
    const std::vector<float> x = {3.0f, 4.0f};  // mean square 12.5
    std::vector<float> out(2);
    rms_norm(x.data(), nullptr, 1, 2, 0.0f, out.data());
    EXPECT_NEAR(out[0], 3.0f / std::sqrt(12.5f), 1e-6f);
    EXPECT_NEAR(out[1], 4.0f / std::sqrt(12.5f), 1e-6f);
}

TEST(CpuOps, LinearMatchesHandComputedAndIsIndependentOfRowCount) {
    // W [3, 2], x [2, 2]
    const std::vector<float> w = {1, 2, 3, 4, 5, 6};
    const std::vector<float> x = {1, 1, 2, -1};
    std::vector<float> y(6);
    linear(x.data(), 2, f32_view(w.data(), 3, 2), y.data(), 1);
    EXPECT_EQ(y, (std::vector<float>{3, 7, 11, 0, 2, 4}));

    // Random-ish 37 x 70 weight, 9 rows: each row equals the one-row result bit for bit, for
    // any thread count (the 4-row tiles and the leftover rows sum in the same order).
    const int64_t n = 37, k = 70, rows = 9;
    std::vector<float> big_w(n * k), big_x(rows * k);
    for (size_t i = 0; i < big_w.size(); ++i) big_w[i] = std::sin(0.37f * static_cast<float>(i));
    for (size_t i = 0; i < big_x.size(); ++i) big_x[i] = std::cos(0.11f * static_cast<float>(i));
    const Weight lw = f32_view(big_w.data(), n, k);
    std::vector<float> all(rows * n), one(n), threaded(rows * n);
    linear(big_x.data(), rows, lw, all.data(), 1);
    linear(big_x.data(), rows, lw, threaded.data(), 3);
    EXPECT_EQ(all, threaded);
    for (int64_t r = 0; r < rows; ++r) {
        linear(big_x.data() + r * k, 1, lw, one.data(), 1);
        for (int64_t j = 0; j < n; ++j) {
            ASSERT_EQ(all[r * n + j], one[j]);
            double expected = 0.0;
            for (int64_t i = 0; i < k; ++i) expected += static_cast<double>(big_x[r * k + i]) * big_w[j * k + i];
            EXPECT_NEAR(one[j], expected, 1e-4);
        }
    }
}

TEST(CpuOps, RopeAtPositionZeroIsIdentity) {
    std::vector<float> x(2 * 8);
    std::iota(x.begin(), x.end(), 1.0f);
    const std::vector<float> original = x;
    const int64_t positions[] = {0};
    rope_neox(x.data(), positions, 2, 8, 10000.0);
    EXPECT_EQ(x, original);
}

TEST(CpuOps, RopeRotatesHalvesByPositionTimesFrequency) {
    // head_dim 4: pairs (0, 2) with inv_freq 1 and (1, 3) with inv_freq theta^-0.5 = 0.01.
    std::vector<float> x = {1, 1, 0, 0};
    const int64_t positions[] = {3};
    rope_neox(x.data(), positions, 1, 4, 10000.0);
    EXPECT_NEAR(x[0], std::cos(3.0), 1e-6);
    EXPECT_NEAR(x[2], std::sin(3.0), 1e-6);
    EXPECT_NEAR(x[1], std::cos(0.03), 1e-6);
    EXPECT_NEAR(x[3], std::sin(0.03), 1e-6);
    // A rotation keeps the norm.
    EXPECT_NEAR(x[0] * x[0] + x[2] * x[2], 1.0, 1e-6);
}

TEST(CpuOps, SoftmaxSumsToOne) {
    std::vector<float> x = {1.0f, 2.0f, 3.0f, -100.0f, 1000.0f};
    softmax(x.data(), static_cast<int64_t>(x.size()));
    EXPECT_NEAR(std::accumulate(x.begin(), x.end(), 0.0), 1.0, 1e-6);
    EXPECT_FLOAT_EQ(x[4], 1.0f);  // max-subtracted: no overflow
    std::vector<float> two = {0.0f, std::log(3.0f)};
    softmax(two.data(), 2);
    EXPECT_NEAR(two[0], 0.25f, 1e-6f);
    EXPECT_NEAR(two[1], 0.75f, 1e-6f);
}

TEST(CpuOps, GeluTanh) {
    EXPECT_EQ(gelu_tanh(0.0f), 0.0f);
    EXPECT_NEAR(gelu_tanh(1.0f), 0.8411920f, 1e-6f);   // torch gelu(1, approximate='tanh')
    EXPECT_NEAR(gelu_tanh(-1.0f), -0.1588080f, 1e-6f);
    const float gate[] = {1.0f, 0.0f}, up[] = {2.0f, 5.0f};
    float out[2];
    gelu_tanh_and_mul(gate, up, 2, out);
    EXPECT_NEAR(out[0], 2 * 0.8411920f, 1e-6f);
    EXPECT_EQ(out[1], 0.0f);
}

struct TinyCache {
    TinyCache(int64_t capacity, int64_t n_kv_heads, int64_t head_dim)
        : k(capacity * n_kv_heads * head_dim), v(k.size()),
          view{k.data(), v.data(), capacity, n_kv_heads, head_dim, head_dim} {}
    std::vector<float> k, v;
    KvLayerView view;
};

TEST(CpuOps, AttentionWithOneKeyReturnsItsValue) {
    TinyCache cache(4, 1, 2);
    const float k[] = {0.3f, -0.7f}, v[] = {5.0f, -2.0f};
    const int64_t positions[] = {0};
    kv_write(cache.view, positions, k, v);
    const float q[] = {1.0f, 2.0f, -3.0f, 0.5f};  // two query heads sharing the kv head (GQA)
    float out[4];
    attention(q, positions, cache.view, AttentionParams{2, 0.5f, 0, 0.0f}, out, 1);
    EXPECT_EQ(out[0], 5.0f);
    EXPECT_EQ(out[1], -2.0f);
    EXPECT_EQ(out[2], 5.0f);
    EXPECT_EQ(out[3], -2.0f);
}

TEST(CpuOps, AttentionAveragesEqualScores) {
    TinyCache cache(4, 1, 2);
    const float k[] = {1, 0, 1, 0, 1, 0}, v[] = {1, 0, 0, 1, 2, 2};
    const int64_t positions[] = {0, 1, 2};
    kv_write(cache.view, positions, k, v);
    const float q[] = {0, 1};  // q . k = 0 for every key: uniform weights
    const int64_t query_position[] = {2};
    float out[2];
    attention(q, query_position, cache.view, AttentionParams{1, 1.0f, 0, 0.0f}, out, 1);
    EXPECT_NEAR(out[0], 1.0f, 1e-6f);
    EXPECT_NEAR(out[1], 1.0f, 1e-6f);
}

TEST(CpuOps, SlidingWindowMaskExcludesExactlyTheOldKeys) {
    // HF: key k visible from query q iff k <= q and q - k < window.
    EXPECT_EQ(first_visible_position(0, 3), 0);
    EXPECT_EQ(first_visible_position(2, 3), 0);
    EXPECT_EQ(first_visible_position(3, 3), 1);
    EXPECT_EQ(first_visible_position(10, 3), 8);
    EXPECT_EQ(first_visible_position(10, 0), 0);

    // A ring of 4 slots, window 3: after positions 0..5, the query at 5 sees 3, 4, 5 only.
    // Values are one-hot by position, so the output is the attention weight of each position.
    TinyCache cache(4, 1, 8);
    std::vector<float> k(6 * 8, 0.0f), v(6 * 8, 0.0f);
    for (int p = 0; p < 6; ++p) v[p * 8 + p] = 1.0f;
    const int64_t positions[] = {0, 1, 2, 3, 4, 5};
    // Write one at a time as decode would (the ring is too small for a 6-token chunk).
    for (int p = 0; p < 6; ++p) kv_write(cache.view, std::span(positions + p, 1), k.data() + p * 8, v.data() + p * 8);
    const std::vector<float> q(8, 0.0f);
    std::vector<float> out(8);
    attention(q.data(), std::span(positions + 5, 1), cache.view, AttentionParams{1, 1.0f, 3, 0.0f}, out.data(), 1);
    for (int p = 0; p < 3; ++p) EXPECT_EQ(out[p], 0.0f) << "position " << p << " is outside the window";
    for (int p = 3; p < 6; ++p) EXPECT_NEAR(out[p], 1.0f / 3.0f, 1e-6f) << "position " << p;
    // Full attention over a flat cache sees all six.
    TinyCache flat(6, 1, 8);
    kv_write(flat.view, positions, k.data(), v.data());
    attention(q.data(), std::span(positions + 5, 1), flat.view, AttentionParams{1, 1.0f, 0, 0.0f}, out.data(), 1);
    for (int p = 0; p < 6; ++p) EXPECT_NEAR(out[p], 1.0f / 6.0f, 1e-6f);
}

TEST(CpuOps, FusedOpsEqualTheirParts) {
    CpuOps ops(1);
    std::vector<float> x = {1, -2, 3, 0.5f, 2, 2, 1, -1};  // [2 tokens, 1 head, 4]
    const std::vector<float> w = {1.5f, 0.5f, 1, 2};
    const int64_t positions[] = {7, 8};
    std::vector<float> parts = x;
    rms_norm(parts.data(), w.data(), 2, 4, 1e-6f, parts.data());
    rope_neox(parts.data(), positions, 1, 4, 100.0);
    std::vector<float> partial = x, partial_parts = x;
    ops.head_norm_rope(x.data(), w.data(), positions, 1, 4, 2, 1e-6f, 100.0);
    EXPECT_EQ(x, parts);
    // One rotating pair of two (Gemma 4's proportional RoPE): rms_norm then rope_proportional.
    rms_norm(partial_parts.data(), w.data(), 2, 4, 1e-6f, partial_parts.data());
    rope_proportional(partial_parts.data(), positions, 1, 4, 1, 100.0);
    ops.head_norm_rope(partial.data(), w.data(), positions, 1, 4, 1, 1e-6f, 100.0);
    EXPECT_EQ(partial, partial_parts);
    EXPECT_NE(partial, x);

    std::vector<float> residual = {1, 1, 1, 1}, expected = residual, normed(4);
    const std::vector<float> a = {2, 0, 0, 0};
    rms_norm(a.data(), w.data(), 1, 4, 1e-6f, normed.data());
    add(expected.data(), normed.data(), 4, expected.data());
    ops.rms_norm_add(a.data(), w.data(), 1, 4, 1e-6f, residual.data());
    EXPECT_EQ(residual, expected);
}

TEST(CpuOps, LinearBlocksStoresEachBlockContiguously) {
    // W = [q rows (2) | k rows (1) | v rows (3)] x in 2; x has 3 rows. Block b of the output is
    // [3, width_b], the blocks one after another, each equal to its own linear.
    CpuOps ops(1);
    std::vector<float> w(6 * 2), x = {1, 2, -1, 0.5f, 3, -2};
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.25f * static_cast<float>(i) - 1.0f;
    const Weight stacked = f32_view(w.data(), 6, 2);
    const int64_t widths[] = {2, 1, 3};
    std::vector<float> out(3 * 6, NAN);
    ops.linear_blocks(x.data(), 3, stacked, widths, out.data());
    int64_t row = 0;
    float* block = out.data();
    for (const int64_t width : widths) {
        std::vector<float> expected(static_cast<size_t>(3 * width));
        linear(x.data(), 3, f32_view(w.data() + row * 2, width, 2), expected.data(), 1);
        EXPECT_EQ(std::vector<float>(block, block + 3 * width), expected) << "block at row " << row;
        block += 3 * width;
        row += width;
    }
}

TEST(CpuOps, EmbedScalesRows) {
    const std::vector<float> table = {1, 2, 3, 4, 5, 6};  // [3, 2]
    const int32_t ids[] = {2, 0};
    float out[4];
    embed(ids, table.data(), 2, 0.5f, out);
    EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{2.5f, 3.0f, 0.5f, 1.0f}));
}

}  // namespace
}  // namespace kestrel::cpu
