// The memory plan with --kv-cache tq4 (issue 8), from the target models' shape tables and the
// format's definition (ops/kv_tq4.h: D / 2 index bytes and a bf16 norm per vector; techniques.md
// §4, gemma4-and-gemma3.md §4.1: "258 bytes per vector vs 1024 bf16" for D = 512), and the
// up-front refusal of a session that does not fit, with the -c it suggests.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "io/hf_config.h"
#include "models/model_config.h"
#include "models/model_shapes.h"
#include "runtime/memory_plan.h"
#include "target_models.h"
#include "test_support.h"

namespace kestrel {
namespace {

using namespace test_support;

constexpr int64_t kKiB = 1024;
constexpr int64_t kMiB = kKiB * 1024;
constexpr int64_t kGiB = kMiB * 1024;

// Gemma 4 31B: 10 global layers x 4 kv heads x (512 / 2 + 2) bytes x (K and V) per token.
constexpr int64_t kGemma4Tq4PerToken = 10 * 4 * (256 + 2) * 2;
// 50 sliding layers keep bf16 rings of window 1024 + sliding step 512 - 1 entries, 16 KiB each.
constexpr int64_t kGemma4Rings = int64_t{1535} * 16 * kKiB * 50;
constexpr int64_t kGemma4Rotation = 512 * 512 * 4;  // one head dim among the global layers
constexpr int64_t kGemma4Centers = 10 * 4 * 512 * 4;  // a key centre per global layer and kv head

TEST(MemoryPlanTq4, Gemma4At128K) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    EXPECT_EQ(kv_bytes_per_token(config, 2, KvCacheFormat::kTq4), kGemma4Tq4PerToken);
    EXPECT_EQ(kv_bytes_per_token(config, 2, KvCacheFormat::kTq4), 20640);
    // 80 KiB / 20640 bytes: 3.97x smaller (gemma4-and-gemma3.md §4.1).
    EXPECT_NEAR(static_cast<double>(kv_bytes_per_token(config)) / kGemma4Tq4PerToken, 3.97, 0.005);

    const FakeWeightSource weights = gemma4_31b_gguf_weights();
    const MemoryPlan bf16 = plan_memory(config, weights, {.context = 131072});
    const MemoryPlan tq4 =
        plan_memory(config, weights, {.context = 131072, .kv_cache = KvCacheFormat::kTq4});
    EXPECT_EQ(tq4.kv_cache_bytes, int64_t{131072} * kGemma4Tq4PerToken + kGemma4Rings +
                                      kGemma4Rotation + kGemma4Centers);
    EXPECT_EQ(tq4.sliding_ring_entries, bf16.sliding_ring_entries);
    EXPECT_EQ(tq4.weight_bytes, bf16.weight_bytes);
    // Plus the CUDA TQ4 scratch of a 2048-token chunk: rotated q (32 heads), centred K and
    // rotated K, V (4 kv heads each) of head dim 512 in fp32.
    EXPECT_EQ(tq4.workspace_bytes - bf16.workspace_bytes, int64_t{2048} * (32 + 3 * 4) * 512 * 4);
    EXPECT_EQ(
        bf16.kv_cache_bytes - tq4.kv_cache_bytes,
        int64_t{131072} * (80 * kKiB - kGemma4Tq4PerToken) - kGemma4Rotation - kGemma4Centers);
    std::printf(
        "Gemma 4 31B at 131072, W4: KV cache %.2f GiB with tq4 (%.2f GiB bf16), total %.2f GiB "
        "(%.2f GiB)\n",
        static_cast<double>(tq4.kv_cache_bytes) / kGiB,
        static_cast<double>(bf16.kv_cache_bytes) / kGiB,
        static_cast<double>(tq4.total_bytes()) / kGiB,
        static_cast<double>(bf16.total_bytes()) / kGiB);
}

TEST(MemoryPlanTq4, Qwen35FullLayersOnly) {
    const ModelConfig config = config_from_json(qwen35_config_json());
    // 10 full layers x 2 kv heads x (256 / 2 + 2) x 2; no sliding layers, one 256 x 256 rotation,
    // a key centre per full layer and kv head.
    EXPECT_EQ(kv_bytes_per_token(config, 2, KvCacheFormat::kTq4), 10 * 2 * 130 * 2);
    const MemoryPlan plan =
        plan_session_memory(config, {.context = 262144, .kv_cache = KvCacheFormat::kTq4});
    EXPECT_EQ(plan.kv_cache_bytes,
              int64_t{262144} * 10 * 2 * 130 * 2 + 256 * 256 * 4 + 10 * 2 * 256 * 4);
    EXPECT_EQ(plan.weight_bytes, 0);  // a session's part only
}

TEST(MemoryPlanTq4, SessionPlanIsThePlanLessTheWeights) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const MemoryPlanOptions options{.context = 8192, .kv_cache = KvCacheFormat::kTq4};
    const MemoryPlan whole = plan_memory(config, gemma4_31b_gguf_weights(), options);
    const MemoryPlan session = plan_session_memory(config, options);
    EXPECT_EQ(session.kv_cache_bytes, whole.kv_cache_bytes);
    EXPECT_EQ(session.workspace_bytes, whole.workspace_bytes);
    EXPECT_EQ(session.total_bytes(), whole.total_bytes() - whole.weight_bytes);
}

// What a session must find free: its parts and the runtime's late part.
int64_t session_bytes(const ModelConfig& config, MemoryPlanOptions options, int64_t context) {
    options.context = context;
    const MemoryPlan plan = plan_session_memory(config, options);
    return plan.kv_cache_bytes + plan.recurrent_state_bytes + plan.workspace_bytes +
           kLateRuntimeBytes;
}

// A session whose plan exceeds the free memory is refused before anything is allocated, naming
// the sizes and the longest -c that fits (and that it does fit, and 256 more does not); with
// bf16, TQ4's longer context is offered too.
TEST(MemoryPlanTq4, RefusesUpFrontWithAContextThatFits) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const MemoryPlanOptions bf16{.context = 131072};
    const MemoryPlanOptions tq4{.context = 131072, .kv_cache = KvCacheFormat::kTq4};
    const int64_t available = 8 * kGiB;
    ASSERT_GT(session_bytes(config, bf16, 131072), available);
    ASSERT_LT(session_bytes(config, tq4, 131072), available);
    EXPECT_TRUE(check_session_fits(config, tq4, available, true).ok());

    const Status refused = check_session_fits(config, bf16, available, true);
    ASSERT_EQ(refused.code(), StatusCode::kOutOfMemory);
    const std::string& message = refused.message();
    std::printf("%s\n", message.c_str());
    EXPECT_EQ(message.find('\n'), std::string::npos);
    EXPECT_NE(message.find("context 131072"), std::string::npos) << message;
    EXPECT_NE(message.find("8.00 GiB is free"), std::string::npos) << message;
    EXPECT_NE(message.find("-c 131072 with --kv-cache tq4"), std::string::npos) << message;
    const size_t at = message.find("; -c ");
    ASSERT_NE(at, std::string::npos) << message;
    const int64_t suggested = std::stoll(message.substr(at + 5));
    EXPECT_EQ(suggested % 256, 0);
    EXPECT_LE(session_bytes(config, bf16, suggested), available);
    EXPECT_GT(session_bytes(config, bf16, suggested + 256), available);

    // Without a TQ4 backend only the bf16 context is offered; with too little memory, none.
    const Status no_tq4 = check_session_fits(config, bf16, available, false);
    EXPECT_EQ(no_tq4.message().find("tq4"), std::string::npos) << no_tq4.message();
    const Status nothing = check_session_fits(config, tq4, 64 * kMiB, true);
    EXPECT_EQ(nothing.code(), StatusCode::kOutOfMemory);
    EXPECT_NE(nothing.message().find("no context fits"), std::string::npos) << nothing.message();
}

// With the default chunk (-b 0) a session that does not fit gets the largest halving of the
// default chunk that does (a 24 GB card at 128k: the chunk's workspace shrinks, and below the
// sliding step of 512 the rings of window + chunk - 1 entries too); an explicit -b is kept and
// refused, naming the -b that fits.
TEST(MemoryPlanTq4, ChoosesASmallerPrefillChunkWhereTheDefaultDoesNotFit) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const MemoryPlanOptions automatic{.context = 131072, .kv_cache = KvCacheFormat::kTq4};
    MemoryPlanOptions at = automatic;
    const auto session_at = [&](int64_t chunk) {
        at.prefill_chunk = chunk;
        const MemoryPlan plan = plan_session_memory(config, at);
        return plan.kv_cache_bytes + plan.recurrent_state_bytes + plan.workspace_bytes +
               kLateRuntimeBytes;
    };
    // Each halving saves the rings' and the workspace's share of the chunk.
    ASSERT_GT(session_at(2048), session_at(1024));
    ASSERT_GT(session_at(1024), session_at(512));
    ASSERT_GT(session_at(512), session_at(256));
    // Above the sliding step the rings stay at window + 512 - 1 entries: only the workspace
    // shrinks (at least the chunk's [T, 2 x 21504] fp32 gate | up); below it they shrink too.
    EXPECT_GE(session_at(2048) - session_at(1024), int64_t{1024} * 2 * 21504 * 4);
    EXPECT_LT(session_at(2048) - session_at(1024), int64_t{1024} * 16 * kKiB * 50);
    EXPECT_GE(session_at(512) - session_at(256), int64_t{256} * 16 * kKiB * 50);

    // Room for the default: the default.
    Result<int64_t> chunk = choose_prefill_chunk(config, automatic, session_at(2048), true);
    ASSERT_TRUE(chunk.ok()) << chunk.status().message();
    EXPECT_EQ(*chunk, 2048);
    // Room for 512 but not 1024: 512, and it fits.
    const int64_t available = session_at(512) + kMiB;
    ASSERT_LT(available, session_at(1024));
    chunk = choose_prefill_chunk(config, automatic, available, true);
    ASSERT_TRUE(chunk.ok()) << chunk.status().message();
    EXPECT_EQ(*chunk, 512);
    // An explicit -b is the user's: refused, with the chunk that would fit.
    MemoryPlanOptions explicit_chunk = automatic;
    explicit_chunk.prefill_chunk = 2048;
    const Result<int64_t> refused = choose_prefill_chunk(config, explicit_chunk, available, true);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kOutOfMemory);
    EXPECT_NE(refused.status().message().find("-b 512 at this context"), std::string::npos)
        << refused.status().message();
    // A 24 GB card (the target): after the CUDA context (~0.5 GiB) and the W4 weights the
    // engine picks 1024 at 128k with TQ4 (its sliding rings no longer grow with the chunk; measured
    // on the H100 at -b 1024: 23.65 GB peak, bench/results/2026-11-24-h100-sliding-steps.md), and
    // the whole plan stays within the card.
    // The synthetic model's weights (every matrix Q4_K -> W4, 16.53 GiB), as the bench measured.
    const ShapeOnlySource weights("gemma4-31b", model_tensor_shapes(config, DType::kQ4_K));
    constexpr int64_t kCard = 24'000'000'000;
    const int64_t free_after_load =
        kCard - 512 * kMiB - plan_memory(config, weights, automatic).weight_bytes;
    const Result<int64_t> on_24gb = choose_prefill_chunk(config, automatic, free_after_load, true);
    ASSERT_TRUE(on_24gb.ok()) << on_24gb.status().message();
    EXPECT_EQ(*on_24gb, 1024);
    MemoryPlanOptions picked = automatic;
    picked.prefill_chunk = *on_24gb;
    EXPECT_LE(plan_memory(config, weights, picked).total_bytes(), kCard);

    // Not even the smallest chunk: refused.
    const Result<int64_t> none =
        choose_prefill_chunk(config, automatic, session_at(256) - kMiB, true);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.status().code(), StatusCode::kOutOfMemory);
    EXPECT_EQ(none.status().message().find("-b "), std::string::npos) << none.status().message();
}

// The prefill GEMM's scratch is planned: the chunk's widest dense input (Gemma 4 31B: the FFN's
// 21504) in bf16 and one bf16 weight slice (the CUDA backend dequantises W4 in slices of at most
// 256 MiB, so a perplexity run's 262144 x 5376 lm_head takes 11 of ~244 MiB, not 2.8 GB at once,
// and gate | up two halves of 21504 rows); a model whose largest matrix is smaller than a slice
// needs only that matrix.
TEST(MemoryPlanTq4, WorkspaceHoldsThePrefillGemmScratch) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const MemoryPlan plan = plan_session_memory(config, {.context = 4096, .prefill_chunk = 2048});
    // One chunk's activations, a row of logits and the session's 4096 positions.
    const int64_t activations =
        int64_t{2048} * (3 * 5376 + 2 * (2 * 21504)) * 4 + 262144 * 4 + 4096 * 8;
    // The lm_head's slices: ceil(262144 / 24960) = 11 of 23872 rows (a multiple of 64).
    EXPECT_EQ(prefill_weight_slice_rows(262144, 5376, kPrefillWeightSliceBytes), 23872);
    EXPECT_EQ(prefill_weight_slice_rows(43008, 5376, kPrefillWeightSliceBytes), 21504);
    EXPECT_EQ(prefill_weight_slice_rows(16384, 5376, kPrefillWeightSliceBytes), 16384);
    EXPECT_EQ(prefill_weight_slice_rows(1000, 5376, 0), 1000);
    EXPECT_EQ(prefill_weight_slice_rows(1000, 5376, 1024), 64);
    EXPECT_EQ(plan.workspace_bytes - activations,
              int64_t{2048} * 21504 * 2 + int64_t{23872} * 5376 * 2);
    EXPECT_LE(int64_t{23872} * 5376 * 2, kPrefillWeightSliceBytes);

    ModelConfig small = config;
    small.vocab_size = 1024;
    small.ffn_size = 1024;
    small.hidden_size = 512;
    for (LayerConfig& layer : small.layers) layer.head_dim = layer.v_head_dim = 16;
    const MemoryPlan small_plan =
        plan_session_memory(small, {.context = 4096, .prefill_chunk = 256});
    EXPECT_LT(small_plan.workspace_bytes, kPrefillWeightSliceBytes);
}

}  // namespace
}  // namespace kestrel
