// Parameter counts, KV-cache sizes and the memory plan of the full-size target models, from
// their shape tables (no weights), against the numbers the specs publish:
//   ../shared/specs/gemma4-and-gemma3.md §1.1  Gemma 4 31B: 30.70 B params, 80 KiB/token, 10 GiB at 128K
//   ../shared/specs/qwen35-moe.md §1.2         Qwen3.5-35B-A3B: experts 32.2 B, active ~2.95 B
//   ../shared/specs/gguf-layouts.md            tensor tables, 833 / 753 tensors, 30.70 B / 35.51 B
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "io/hf_config.h"
#include "models/model_config.h"
#include "runtime/memory_plan.h"
#include "target_models.h"

namespace kestrel {
namespace {

using nlohmann::json;
using namespace test_support;

constexpr int64_t kKiB = 1024;
constexpr int64_t kGiB = int64_t{1} << 30;

ModelConfig config_from_gguf(const GgufWriter& writer) {
    Result<std::vector<uint8_t>> bytes = writer.to_bytes();
    EXPECT_TRUE(bytes.ok()) << bytes.status().message();
    if (!bytes.ok()) return {};
    Result<GgufFile> file = GgufFile::parse(*bytes, "test.gguf");
    EXPECT_TRUE(file.ok()) << file.status().message();
    if (!file.ok()) return {};
    Result<ModelConfig> config = model_config_from_gguf(*file);
    EXPECT_TRUE(config.ok()) << config.status().message();
    return config.ok() ? *config : ModelConfig{};
}

void expect_within(double value, double target, double relative, const char* what) {
    EXPECT_LE(std::fabs(value - target), relative * target) << what << ": " << value << ", expected " << target
                                                             << " within " << relative * 100 << "%";
}

// ---- Gemma 4 31B -------------------------------------------------------------------------------

TEST(MemoryPlanGemma4, KvBytesPerTokenIs80KiB) {
    // §1.1: "full 8 KiB/layer -> 80 KiB per token over 10 layers" (4 kv heads x (512 + 512) x bf16).
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    EXPECT_EQ(kv_bytes_per_token(config), 80 * kKiB);
    EXPECT_EQ(kv_bytes_per_token(config, 1), 40 * kKiB);

    GgufWriter writer;
    gemma4_31b_gguf_metadata(writer);
    EXPECT_EQ(kv_bytes_per_token(config_from_gguf(writer)), 80 * kKiB);
}

TEST(MemoryPlanGemma4, PlanAt128K) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const FakeWeightSource weights = gemma4_31b_gguf_weights();
    const MemoryPlan plan = plan_memory(config, weights, {.context = 131072});
    EXPECT_EQ(plan.context, 131072);
    // Sliding rings: window 1024 plus the rest of a 512-token attention step (CUDA's default
    // chunk of 2048 takes its sliding attention in steps of kSlidingAttentionStep).
    EXPECT_EQ(plan.sliding_ring_entries, 1024 + 512 - 1);
    // §1.1: full layers "10 GiB at 128K, bf16"; sliding "16 KiB/layer" per ring slot over 50 layers.
    const int64_t full_bytes = 10 * kGiB;
    const int64_t sliding_bytes = int64_t{1535} * 16 * kKiB * 50;
    EXPECT_EQ(plan.kv_cache_bytes, full_bytes + sliding_bytes);
    EXPECT_EQ(plan.recurrent_state_bytes, 0);
    EXPECT_GT(plan.workspace_bytes, 0);
    EXPECT_EQ(plan.total_bytes(), plan.weight_bytes + plan.kv_cache_bytes + plan.recurrent_state_bytes +
                                      plan.workspace_bytes + plan.runtime_bytes);
}

TEST(MemoryPlanGemma4, ContextDefaultsToTrainedAndCapsTheRing) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const FakeWeightSource weights = gemma4_31b_gguf_weights();

    const MemoryPlan trained = plan_memory(config, weights, {});
    EXPECT_EQ(trained.context, 262144);
    EXPECT_EQ(trained.kv_cache_bytes, 20 * kGiB + int64_t{1535} * 16 * kKiB * 50);

    // A context shorter than the window: the ring never holds more than the context.
    const MemoryPlan small = plan_memory(config, weights, {.context = 300});
    EXPECT_EQ(small.sliding_ring_entries, 300);
    EXPECT_EQ(small.kv_cache_bytes, 300 * 80 * kKiB + 300 * 16 * kKiB * 50);

    // A smaller prefill chunk shrinks the ring; 1-byte K/V halves everything.
    const MemoryPlan chunk64 = plan_memory(config, weights, {.context = 131072, .prefill_chunk = 64, .kv_bytes_per_element = 1});
    EXPECT_EQ(chunk64.sliding_ring_entries, 1024 + 64 - 1);
    EXPECT_EQ(chunk64.kv_cache_bytes, 5 * kGiB + int64_t{1087} * 8 * kKiB * 50);
}

TEST(MemoryPlanGemma4, ParameterCountFromGgufShapes) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const FakeWeightSource weights = gemma4_31b_gguf_weights();
    // The fake is the file gguf-layouts.md describes: 833 tensors, 17.39 GiB at Q4_K_M.
    ASSERT_EQ(weights.tensors().size(), 833u);
    expect_within(static_cast<double>(weights.all_bytes()), 17.39 * kGiB, 0.001, "Q4_K_M file bytes");

    const ParameterCount count = count_parameters(config, weights);
    // §1.1: "Total ≈ 50·478.9M + 10·534.0M + 262144·5376 (tied embed) = 30.70 B".
    expect_within(static_cast<double>(count.total), 30.70e9, 0.005, "total parameters");
    // Exactly: §1.1's per-layer matrices plus the norms, layer scalars and rope_freqs it leaves out.
    const int64_t norms = 50 * (4 * 5376 + 2 * 256 + 1) + 10 * (4 * 5376 + 2 * 512 + 1) + 5376 + 256;
    EXPECT_EQ(count.total, int64_t{50} * 478'937'088 + int64_t{10} * 533'987'328 + int64_t{262144} * 5376 + norms);
    EXPECT_EQ(count.total, weights.all_elements());  // nothing to skip in a text-only GGUF
    EXPECT_EQ(count.active, count.total);            // dense
}

TEST(MemoryPlanGemma4, HfCheckpointCountsTheSameAndSkipsTheVisionTower) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const FakeWeightSource hf = gemma4_31b_hf_weights();
    const FakeWeightSource gguf = gemma4_31b_gguf_weights();
    const ParameterCount count = count_parameters(config, hf);
    // Same model, less rope_freqs.weight (GGUF-only, generated) and the vision tower.
    EXPECT_EQ(count.total, count_parameters(config, gguf).total - 256);
    EXPECT_LT(count.total, hf.all_elements());

    // --weights bf16: 2 bytes per matrix element, 1-D tensors (norms) kept as fp32.
    const MemoryPlan plan =
        plan_memory(config, hf, {.context = 4096, .float_weights = WeightFormat::kBF16});
    int64_t vectors = 0;
    for (const WeightInfo& tensor : hf.tensors()) {
        if (tensor.shape.size() == 1 && is_loaded_tensor(config, tensor.name)) vectors += tensor.n_elements;
    }
    EXPECT_EQ(plan.weight_bytes, (count.total - vectors) * 2 + vectors * 4);
    // The default, w4: every matrix row of this model is a multiple of 256 wide, so 4.625 bits.
    const MemoryPlan w4_plan = plan_memory(config, hf, {.context = 4096});
    EXPECT_EQ(w4_plan.weight_bytes, (count.total - vectors) * 37 / 64 + vectors * 4);
}

TEST(MemoryPlanGemma4, EngineWeightBytesOfTheQ4KMFile) {
    const ModelConfig config = config_from_json(gemma4_31b_config_json());
    const FakeWeightSource weights = gemma4_31b_gguf_weights();
    const MemoryPlan plan = plan_memory(config, weights, {.context = 131072});
    // Q4_K (4.5 bits) -> W4 (4.625 bits), Q6_K (6.5625 bits) -> W8 (9 bits): more than the file,
    // less than bf16.
    EXPECT_GT(plan.weight_bytes, weights.all_bytes());
    EXPECT_LT(plan.weight_bytes, weights.all_elements() * 2);
    // The loader stacks q | k | v: in the 25 sliding layers whose attn_v is Q6_K (W8) the Q4_K q
    // and k are held as W8 too (gemma4-and-gemma3.md §7.4's mix).
    std::set<std::string> widened_blocks;
    for (const WeightInfo& tensor : weights.tensors()) {
        if (tensor.dtype == DType::kQ6_K && tensor.name.ends_with(".attn_v.weight")) {
            widened_blocks.insert(
                tensor.name.substr(0, tensor.name.size() - std::string(".attn_v.weight").size()));
        }
    }
    EXPECT_EQ(widened_blocks.size(), 25u);
    int64_t expected = 0;
    for (const WeightInfo& tensor : weights.tensors()) {
        const int64_t n = tensor.n_elements;
        const std::string block = tensor.name.substr(0, tensor.name.find('.', 4));
        const bool widened =
            widened_blocks.count(block) > 0 &&
            (tensor.name.ends_with(".attn_q.weight") || tensor.name.ends_with(".attn_k.weight"));
        if (tensor.dtype == DType::kQ4_K) {
            expected +=
                widened ? n + n / 32 * 4 : n / 2 + n / 32 * 2 + n / 256 * 4;  // rows of 256s
        }
        if (tensor.dtype == DType::kQ6_K) expected += n + n / 32 * 4;
        if (tensor.dtype == DType::kF32) expected += n * 4;  // all 1-D here
    }
    EXPECT_EQ(plan.weight_bytes, expected);
}

// ---- Qwen3.5-35B-A3B ---------------------------------------------------------------------------

// qwen35-moe.md §1.1: per Gated DeltaNet layer, conv state (kernel 4 - 1) x 8192 channels and a
// 128 x 128 recurrent state for each of 32 v heads, fp32.
constexpr int64_t kQwenRecurrentBytes = 30 * ((4 - 1) * 8192 + 32 * 128 * 128) * 4;
// 10 full layers x 2 kv heads x (256 + 256) x bf16.
constexpr int64_t kQwenKvPerToken = 10 * 2 * (256 + 256) * 2;

TEST(MemoryPlanQwen35, RecurrentStateAndKvCache) {
    const ModelConfig config = config_from_json(qwen35_config_json());
    EXPECT_EQ(kv_bytes_per_token(config), kQwenKvPerToken);
    EXPECT_EQ(kv_bytes_per_token(config), 20 * kKiB);

    const FakeWeightSource weights = qwen35_gguf_weights();
    const MemoryPlan plan = plan_memory(config, weights, {.context = 4096});  // §1.1 max_seq_len 4096
    EXPECT_EQ(plan.recurrent_state_bytes, kQwenRecurrentBytes);
    EXPECT_EQ(plan.recurrent_state_bytes, 65'863'680);
    EXPECT_EQ(plan.sliding_ring_entries, 0);
    EXPECT_EQ(plan.kv_cache_bytes, 4096 * kQwenKvPerToken);

    // The recurrent state does not grow with the context.
    const MemoryPlan long_plan = plan_memory(config, weights, {.context = 262144});
    EXPECT_EQ(long_plan.recurrent_state_bytes, kQwenRecurrentBytes);
    EXPECT_EQ(long_plan.kv_cache_bytes, 262144 * kQwenKvPerToken);  // 5 GiB
    EXPECT_EQ(long_plan.kv_cache_bytes, 5 * kGiB);

    // The GGUF metadata plans the same.
    GgufWriter writer;
    qwen35_gguf_metadata(writer);
    const ModelConfig from_gguf = config_from_gguf(writer);
    const MemoryPlan gguf_plan = plan_memory(from_gguf, weights, {.context = 4096});
    EXPECT_EQ(gguf_plan.recurrent_state_bytes, plan.recurrent_state_bytes);
    EXPECT_EQ(gguf_plan.kv_cache_bytes, plan.kv_cache_bytes);
    EXPECT_EQ(gguf_plan.weight_bytes, plan.weight_bytes);
}

TEST(MemoryPlanQwen35, ParameterCountSkipsTheMtpBlock) {
    const ModelConfig config = config_from_json(qwen35_config_json());
    const FakeWeightSource weights = qwen35_gguf_weights();
    // gguf-layouts.md: "753 tensors incl. the MTP block, 35.51 B params".
    ASSERT_EQ(weights.tensors().size(), 753u);
    expect_within(static_cast<double>(weights.all_elements()), 35.51e9, 0.001, "all tensors incl. MTP");
    // "20.21 GiB": the fake's Q4_K / Q6_K choices are a guess at the mix, so only roughly.
    expect_within(static_cast<double>(weights.all_bytes()), 20.21 * kGiB, 0.01, "Q4_K_M file bytes");

    int64_t mtp = 0;
    for (const WeightInfo& tensor : weights.tensors()) {
        if (tensor.name.starts_with("blk.40.")) mtp += tensor.n_elements;
    }
    ASSERT_GT(mtp, 0);
    const ParameterCount count = count_parameters(config, weights);
    EXPECT_EQ(count.total, weights.all_elements() - mtp);

    // §1.2: experts 256·3·512·2048·40 ≈ 32.2 B; dense ≈ 1.43 B; embedding 0.51 B; lm_head 0.51 B.
    const int64_t experts = int64_t{256} * 3 * 512 * 2048 * 40;
    const int64_t embedding = int64_t{248320} * 2048;
    expect_within(static_cast<double>(count.total), 32.2e9 + 1.43e9 + 0.51e9 + 0.51e9, 0.005, "total");
    expect_within(static_cast<double>(count.total - experts - 2 * embedding), 1.43e9, 0.01, "dense part");

    // Active: 8 of 256 routed experts per layer.
    EXPECT_EQ(count.active, count.total - experts / 256 * 248);
    // §1.2: "Active/token ≈ 1.0 B routed + 1.43 B dense + 0.51 B lm_head ≈ 2.95 B". That sum
    // leaves out the input embedding (a token reads one row of it); count_parameters includes
    // it, as "A3B"-style counts do.
    expect_within(static_cast<double>(count.active - embedding), 2.95e9, 0.01, "active less the embedding");
    EXPECT_GT(count.active, 3.0e9);
    EXPECT_LT(count.active, 3.5e9);

    // The GGUF config (block_count 41, nextn_predict_layers 1) skips blk.40 the same way.
    GgufWriter writer;
    qwen35_gguf_metadata(writer);
    const ParameterCount from_gguf = count_parameters(config_from_gguf(writer), weights);
    EXPECT_EQ(from_gguf.total, count.total);
    EXPECT_EQ(from_gguf.active, count.active);
}

// ---- the pieces --------------------------------------------------------------------------------

TEST(MemoryPlanPieces, IsLoadedTensor) {
    ModelConfig config;
    config.n_layers = 40;
    for (const char* name : {"token_embd.weight", "output.weight", "blk.0.attn_qkv.weight", "blk.39.ffn_down_exps.weight",
                             "model.language_model.layers.39.mlp.gate.weight", "lm_head.weight",
                             "model.language_model.embed_tokens.weight"}) {
        EXPECT_TRUE(is_loaded_tensor(config, name)) << name;
    }
    for (const char* name :
         {"blk.40.attn_q.weight", "blk.40.nextn.eh_proj.weight", "blk.41.attn_norm.weight", "mtp.fc.weight",
          "mtp.layers.0.self_attn.q_proj.weight", "model.visual.blocks.0.attn.qkv.weight",
          "model.vision_tower.encoder.layers.0.mlp.fc1.weight", "model.audio_tower.layers.0.weight",
          "model.embed_vision.embedding_projection.weight", "model.embed_audio.embedding_projection.weight",
          "multi_modal_projector.mm_input_projection_weight"}) {
        EXPECT_FALSE(is_loaded_tensor(config, name)) << name;
    }
}

TEST(MemoryPlanPieces, EngineWeightBytes) {
    const auto info = [](DType dtype, std::vector<int64_t> shape) {
        FakeWeightSource one;
        one.add("t", dtype, std::move(shape));
        return one.tensors()[0];
    };
    // DESIGN.md "The Ops interface" / memory_plan.h: 1-D stays fp32, float matrices --weights,
    // <= 4.5-bit blocks W4 (4.625 bits/weight: int4 + 8-bit scale and min per 32 + fp16 d and dmin
    // per 256 of a row), wider blocks W8 (9 bits/weight: int8 + fp16 scale and min).
    EXPECT_EQ(engine_weight_bytes(info(DType::kF32, {5376})), 5376 * 4);
    EXPECT_EQ(engine_weight_bytes(info(DType::kBF16, {5376})), 5376 * 4);
    // Float matrices as --weights makes them: w4 (the default), w8, bf16.
    EXPECT_EQ(engine_weight_bytes(info(DType::kBF16, {4096, 5376})), 4096 * 5376 * 37 / 64);
    EXPECT_EQ(engine_weight_bytes(info(DType::kF16, {4096, 5376}), WeightFormat::kW8),
              4096 * 5376 * 9 / 8);
    EXPECT_EQ(engine_weight_bytes(info(DType::kBF16, {4096, 5376}), WeightFormat::kBF16),
              4096 * 5376 * 2);
    EXPECT_EQ(engine_weight_bytes(info(DType::kF16, {4096, 5376}), WeightFormat::kBF16),
              4096 * 5376 * 2);
    // A depthwise conv's [channels, 4 taps]: no linear's rows, kept fp32 whatever --weights says.
    EXPECT_EQ(engine_weight_bytes(info(DType::kF32, {8192, 4}), WeightFormat::kBF16), 8192 * 4 * 4);
    EXPECT_EQ(engine_weight_bytes(info(DType::kBF16, {8192, 4})), 8192 * 4 * 4);
    EXPECT_EQ(engine_weight_bytes(info(DType::kQ4_K, {4096, 5376})), 4096 * 5376 * 37 / 64);
    EXPECT_EQ(engine_weight_bytes(info(DType::kQ4_0, {4096, 5376})), 4096 * 5376 * 37 / 64);
    // A row of 640 (Gemma 3 270M) ends in a short super-group: 3 (d, dmin) pairs per row.
    EXPECT_EQ(engine_weight_bytes(info(DType::kQ4_0, {100, 640})), 100 * (320 + 20 * 2 + 3 * 4));
    EXPECT_EQ(engine_weight_bytes(info(DType::kQ6_K, {4096, 5376})), 4096 * 5376 * 9 / 8);
    EXPECT_EQ(engine_weight_bytes(info(DType::kQ8_0, {4096, 5376})), 4096 * 5376 * 9 / 8);
    EXPECT_EQ(engine_weight_bytes(info(DType::kQ5_K, {4096, 5376})), 4096 * 5376 * 9 / 8);
    // Experts [256, 512, 2048] at Q4_K: W4 over all 268 M weights.
    EXPECT_EQ(engine_weight_bytes(info(DType::kQ4_K, {256, 512, 2048})),
              int64_t{256} * 512 * 2048 * 37 / 64);
}

TEST(MemoryPlanPieces, LayerPatternGroupsByThePeriod) {
    ModelConfig config;
    for (const LayerKind kind : {LayerKind::kSliding, LayerKind::kFull, LayerKind::kSliding, LayerKind::kFull}) {
        config.layers.push_back(LayerConfig{.kind = kind});
    }
    EXPECT_EQ(config.layer_pattern(), "SF SF");
    config.layers.assign(3, LayerConfig{.kind = LayerKind::kLinear});
    EXPECT_EQ(config.layer_pattern(), "LLL");  // no full layer: no grouping
    EXPECT_EQ(config.count_layers(LayerKind::kLinear), 3);
    EXPECT_EQ(config.count_layers(LayerKind::kFull), 0);
}

}  // namespace
}  // namespace kestrel
