// Quality of the TQ4 KV cache on whole models (issue 8 item 4): the tiny Gemma 4 and Qwen3.5
// fixtures (tests/fixtures/gemma4_tiny, qwen35_tiny: the same files the transformers reference
// tests load) run one long prompt, as long as their trained context (512) allows, with every
// position's logits, once with the native (fp32) cache and once with --kv-cache tq4; prefill in
// chunks, so that later chunks attend to earlier chunks' stored vectors.
//
// The issue asks for a per-position logit cosine >= 0.999 (techniques.md §4: ~0.9997 on Gemma 4
// 31B). These random-weight fixtures cannot reach it, and not because of the head dim: TQ4 keeps
// ~10% of each vector's norm as error at any D (the codebook's distortion, 0.0095), and random
// keys and queries give peaked scores it perturbs a lot. Measured on gemma4_tiny's layer 2 (scale
// 1, QK-normed head dim 32): score error rms 0.58 against a score spread of 5.8, so the attention
// output moves by 21% (K) and 9% (V). Random keys share no component, so key centring (kv_tq4.h),
// which brings the real Gemma 3 within 2% in perplexity, does little here. The test holds the
// cosines measured with the CPU reference (gemma4_tiny: min 0.7942, mean 0.9528; qwen35_tiny: min
// 0.8944, mean 0.9988; before centring 0.7066 / 0.9571 and 0.8987 / 0.9987), a little below,
// and they do catch a broken cache: with the nibbles of each byte swapped in attention they fall
// to min 0.156 / mean 0.575 and min 0.222 / mean 0.948. The rows must also differ (TQ4 was
// applied).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/session.h"
#include "test_support.h"

namespace kestrel {
namespace {

struct Case {
    const char* name;
    const char* model;  // under tests/fixtures
    int64_t tokens;     // the prompt: the trained context (512) less a little
    int64_t chunk;
    double min_cosine;   // over positions (measured, see above)
    double mean_cosine;  // over positions
};

void PrintTo(const Case& c, std::ostream* os) {
    *os << c.name;
}

const Case kCases[] = {
    // Full layers: head dim 32, 1 kv head (K = V), partial proportional RoPE; window 8 elsewhere.
    {"gemma4_tiny", "gemma4_tiny/hf", 500, 128, 0.65, 0.95},
    // Full (gated) layers: head dim 32, 2 kv heads; Gated DeltaNet elsewhere.
    {"qwen35_tiny", "qwen35_tiny", 500, 128, 0.85, 0.995},
};

std::vector<float> all_logits(const Engine& engine, const Case& c, std::span<const int32_t> tokens,
                              KvCacheFormat format) {
    Result<std::unique_ptr<Session>> session = engine.new_session(512, c.chunk, format);
    EXPECT_TRUE(session.ok()) << session.status().message();
    if (!session.ok()) return {};
    std::vector<float> logits;
    const Status status = (*session)->forward_all_logits(tokens, logits);
    EXPECT_TRUE(status.ok()) << status.message();
    return logits;
}

class Tq4Quality : public ::testing::TestWithParam<Case> {};

TEST_P(Tq4Quality, LogitsCosineAtEveryPositionOfALongPrompt) {
    const Case c = GetParam();
    Result<std::unique_ptr<Engine>> loaded = Engine::load(testing::cpu_engine_options(
        std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/" + c.model, 2));
    ASSERT_TRUE(loaded.ok()) << loaded.status().message();
    const Engine& engine = **loaded;
    ASSERT_GE(engine.config().context_length, c.tokens);
    const int64_t vocab = engine.config().vocab_size;
    std::mt19937 rng(2024);
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
    std::vector<int32_t> tokens(static_cast<size_t>(c.tokens));
    for (int32_t& t : tokens) t = token(rng);

    const std::vector<float> native = all_logits(engine, c, tokens, KvCacheFormat::kNative);
    const std::vector<float> tq4 = all_logits(engine, c, tokens, KvCacheFormat::kTq4);
    ASSERT_EQ(native.size(), tokens.size() * static_cast<size_t>(vocab));
    ASSERT_EQ(tq4.size(), native.size());
    double min_cosine = 1.0, sum_cosine = 0.0;
    int64_t worst_position = -1, differing_rows = 0;
    for (int64_t t = 0; t < c.tokens; ++t) {
        double dot = 0.0, aa = 0.0, bb = 0.0;
        bool differs = false;
        for (int64_t i = t * vocab; i < (t + 1) * vocab; ++i) {
            const double a = native[static_cast<size_t>(i)], b = tq4[static_cast<size_t>(i)];
            ASSERT_TRUE(std::isfinite(b)) << "position " << t;
            dot += a * b;
            aa += a * a;
            bb += b * b;
            differs = differs || a != b;
        }
        const double cosine = dot / std::sqrt(aa * bb);
        sum_cosine += cosine;
        differing_rows += differs ? 1 : 0;
        if (cosine < min_cosine) {
            min_cosine = cosine;
            worst_position = t;
        }
    }
    std::printf(
        "%s: %lld tokens in chunks of %lld, logits cosine TQ4 vs native KV: min %.6f (position "
        "%lld), "
        "mean %.6f; %lld rows differ\n",
        c.name, static_cast<long long>(c.tokens), static_cast<long long>(c.chunk), min_cosine,
        static_cast<long long>(worst_position), sum_cosine / static_cast<double>(c.tokens),
        static_cast<long long>(differing_rows));
    EXPECT_GE(min_cosine, c.min_cosine) << "at position " << worst_position;
    EXPECT_GE(sum_cosine / static_cast<double>(c.tokens), c.mean_cosine);
    // TQ4 was applied: the quantised cache changes the logits (from the first position on, whose
    // only key is itself, its value the one quantised vector).
    EXPECT_GT(differing_rows, c.tokens / 2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Tq4Quality, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

}  // namespace
}  // namespace kestrel
