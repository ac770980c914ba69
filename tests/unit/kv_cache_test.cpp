// The session KV cache's layout (runtime/kv_cache.h) with --kv-cache bf16 and tq4: which layers
// go to TQ4, their buffers and rotation, the bytes counted, and the refusals.
#include "runtime/kv_cache.h"

#include <gtest/gtest.h>

#include <bit>
#include <memory>
#include <vector>

#include "ops/kv_tq4.h"
#include "test_support.h"

namespace kestrel {
namespace {

// A sliding layer (window 4), a full layer (head dim 32), a Gated DeltaNet layer (no cache) and a
// second full layer of another head dim.
const std::vector<KvLayerSpec> kLayout = {
    {2, 16, 16, 4},
    {1, 32, 32, 0},
    {},
    {2, 64, 64, 0},
};
constexpr int64_t kContext = 100;
constexpr int64_t kChunk = 8;

TEST(KvCache, NativeFormatKeepsEveryLayerInTheBackendsDtype) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    Result<KvCache> cache = KvCache::create(kLayout, kContext, kChunk, *ops);
    ASSERT_TRUE(cache.ok()) << cache.status().message();
    for (const KvLayerView& view : cache->views()) {
        EXPECT_EQ(view.dtype, KvDtype::kF32);
        EXPECT_EQ(view.k_norm, nullptr);
        EXPECT_EQ(view.rotation, nullptr);
    }
    EXPECT_EQ(cache->capacity(0), 4 + kChunk - 1);
    EXPECT_EQ(cache->capacity(1), kContext);
    EXPECT_EQ(cache->views()[2].k, nullptr);
    EXPECT_EQ(cache->bytes(), (11 * 2 * 32 + 100 * 1 * 64 + 100 * 2 * 128) * 4);
}

// A chunk longer than the sliding step: the ring holds window + step - 1 entries, and its view
// tells the forward to write and attend in steps of that many tokens (forward_common.h
// attention_block); full layers and rings that hold a whole chunk take no steps.
TEST(KvCache, RingsHoldOneSlidingStepOfALongChunk) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    Result<KvCache> stepped =
        KvCache::create(kLayout, kContext, 40, *ops, KvCacheFormat::kNative, 8);
    ASSERT_TRUE(stepped.ok()) << stepped.status().message();
    EXPECT_EQ(stepped->capacity(0), 4 + 8 - 1);
    EXPECT_EQ(stepped->views()[0].step_tokens, 8);
    EXPECT_EQ(stepped->views()[1].step_tokens, 0);
    EXPECT_EQ(stepped->views()[3].step_tokens, 0);

    // The default step (kSlidingAttentionStep) is longer than this chunk: the whole chunk.
    Result<KvCache> whole = KvCache::create(kLayout, kContext, kChunk, *ops);
    ASSERT_TRUE(whole.ok());
    EXPECT_EQ(whole->capacity(0), 4 + kChunk - 1);
    EXPECT_EQ(whole->views()[0].step_tokens, 0);
    // A ring capped by a short context never wraps: no steps either.
    Result<KvCache> short_context =
        KvCache::create(kLayout, 10, 40, *ops, KvCacheFormat::kNative, 8);
    ASSERT_TRUE(short_context.ok());
    EXPECT_EQ(short_context->capacity(0), 10);
    EXPECT_EQ(short_context->views()[0].step_tokens, 0);

    EXPECT_FALSE(KvCache::create(kLayout, kContext, 40, *ops, KvCacheFormat::kNative, 0).ok());
}

TEST(KvCache, Tq4PutsFullAttentionLayersInTq4AndKeepsTheRings) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    Result<KvCache> cache = KvCache::create(kLayout, kContext, kChunk, *ops, KvCacheFormat::kTq4);
    ASSERT_TRUE(cache.ok()) << cache.status().message();
    const std::span<const KvLayerView> views = cache->views();
    EXPECT_EQ(views[0].dtype, KvDtype::kF32);  // the sliding ring stays native
    EXPECT_EQ(views[0].capacity, 4 + kChunk - 1);
    EXPECT_EQ(views[0].rotation, nullptr);
    EXPECT_EQ(views[2].k, nullptr);  // no attention, no cache
    for (const size_t il : {size_t{1}, size_t{3}}) {
        const KvLayerView& view = views[il];
        EXPECT_EQ(view.dtype, KvDtype::kTq4) << il;
        EXPECT_EQ(view.capacity, kContext) << il;
        EXPECT_NE(view.k, nullptr);
        EXPECT_NE(view.v, nullptr);
        EXPECT_NE(view.k_norm, nullptr);
        EXPECT_NE(view.v_norm, nullptr);
        // The rotation the format fixes (ops/kv_tq4.h), bit for bit.
        const std::vector<float> rotation = tq4_rotation(view.head_dim);
        ASSERT_NE(view.rotation, nullptr);
        for (size_t i = 0; i < rotation.size(); ++i) {
            ASSERT_EQ(std::bit_cast<uint32_t>(view.rotation[i]),
                      std::bit_cast<uint32_t>(rotation[i]))
                << il << " " << i;
        }
    }
    EXPECT_NE(views[1].rotation, views[3].rotation);  // one per head dim
    // Ring in fp32; per full layer and entry, K and V: D / 2 index bytes + a 2-byte norm; the
    // rotations; per full layer and kv head, the fp32 key centre (ops/kv_tq4.h).
    const int64_t ring = 11 * 2 * 32 * 4;
    const int64_t full = 100 * 1 * 2 * (16 + 2) + 100 * 2 * 2 * (32 + 2);
    const int64_t centres = (1 * 32 + 2 * 64) * 4;
    EXPECT_EQ(cache->bytes(), ring + full + (32 * 32 + 64 * 64) * 4 + centres);
    ASSERT_NE(views[1].k_center, nullptr);
    for (int64_t i = 0; i < 32; ++i) EXPECT_EQ(views[1].k_center[i], 0.0f) << i;  // zeroed
    EXPECT_EQ(views[0].k_center, nullptr);  // the ring holds keys as they are
}

TEST(KvCache, Tq4LayersOfOneHeadDimShareOneRotation) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    const std::vector<KvLayerSpec> layout = {{1, 32, 32, 0}, {2, 32, 32, 0}};
    Result<KvCache> cache = KvCache::create(layout, 16, 4, *ops, KvCacheFormat::kTq4);
    ASSERT_TRUE(cache.ok()) << cache.status().message();
    EXPECT_EQ(cache->views()[0].rotation, cache->views()[1].rotation);
    EXPECT_EQ(cache->bytes(), 16 * 3 * 2 * (16 + 2) + 32 * 32 * 4 + (1 + 2) * 32 * 4);
}

TEST(KvCache, Tq4WithoutFullAttentionLayersChangesNothing) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    const std::vector<KvLayerSpec> layout = {{2, 16, 16, 4}, {}};
    Result<KvCache> native = KvCache::create(layout, 64, 8, *ops);
    Result<KvCache> tq4 = KvCache::create(layout, 64, 8, *ops, KvCacheFormat::kTq4);
    ASSERT_TRUE(tq4.ok()) << tq4.status().message();
    EXPECT_EQ(tq4->views()[0].dtype, KvDtype::kF32);
    EXPECT_EQ(tq4->bytes(), native->bytes());
}

TEST(KvCache, Tq4RefusesUnequalOrOddHeadDims) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    const std::vector<KvLayerSpec> unequal = {{2, 16, 16, 4}, {1, 64, 32, 0}};
    testing::expect_error(KvCache::create(unequal, 64, 8, *ops, KvCacheFormat::kTq4),
                          StatusCode::kInvalidArgument, {"--kv-cache tq4", "layer 1", "64", "32"});
    const std::vector<KvLayerSpec> odd = {{1, 33, 33, 0}};
    testing::expect_error(KvCache::create(odd, 64, 8, *ops, KvCacheFormat::kTq4),
                          StatusCode::kInvalidArgument, {"layer 0", "33", "even"});
    // The native cache takes them.
    EXPECT_TRUE(KvCache::create(unequal, 64, 8, *ops).ok());
}

TEST(KvCacheFormat, ParsesTheFlagsSpellings) {
    EXPECT_EQ(*parse_kv_cache_format("bf16"), KvCacheFormat::kNative);
    EXPECT_EQ(*parse_kv_cache_format("tq4"), KvCacheFormat::kTq4);
    testing::expect_error(parse_kv_cache_format("q8"), StatusCode::kInvalidArgument,
                          {"q8", "bf16", "tq4"});
    EXPECT_STREQ(kv_cache_format_name(KvCacheFormat::kTq4), "tq4");
    EXPECT_STREQ(kv_cache_format_name(KvCacheFormat::kNative), "bf16");
}

}  // namespace
}  // namespace kestrel
