// The CPU reference engine on the real Gemma 3 270M Q4_K_M GGUF against Hugging Face
// transformers (fp32, eager attention, the same GGUF dequantised by gguf-py), whose outputs
// scripts/make_gemma3_reference.py saved in tests/fixtures/gemma3/ and tests/fixtures/perplexity/.
//
// Tolerance: |ours - transformers| <= 1e-4 * max|logit| at the position, on each of the
// reference's top-32 logits and (at the long prompt's last position) on all 262144 logits. Both
// sides compute in fp32 from identical fp32 weights and differ only in summation order: measured
// at most 2.2e-6 * max|logit| (2.4e-5 absolute on logits of magnitude ~21), so the bound leaves a
// 45x margin and still catches any real mistake (a wrong norm, scale or mask moves logits by
// >1e-2). The tests print the measured values. Top-1 must be identical everywhere.
//
// Cost on 2 cores is kept to ~30 s: every position of the two short prompts is checked; the
// long prompt (540 tokens > sliding window 512) is checked at its last 60 positions, which are
// the ones that see the window mask and the ring, plus every logit of its last position.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "io/model_files.h"
#include "ops/kv_tq4.h"
#include "runtime/engine.h"
#include "runtime/perplexity.h"
#include "runtime/session.h"
#include "test_support.h"

namespace kestrel {
namespace {

constexpr double kRelativeTolerance = 1e-4;  // of max|logit| at the position

struct RefPrompt {
    std::vector<int32_t> ids;
    std::vector<std::vector<float>> top_logits;   // [T][32]
    std::vector<std::vector<int32_t>> top_ids;    // [T][32]
    std::vector<float> max_abs;                   // [T]
};

nlohmann::json read_json(const std::string& relative) {
    std::ifstream in(std::string(KESTREL_SOURCE_DIR) + "/" + relative);
    return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
}

class Gemma3Reference : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        Result<std::filesystem::path> path = default_model_path();
        if (!path.ok()) {
            error_ = path.status().message();
            return;
        }
        Result<std::unique_ptr<Engine>> engine = Engine::load(testing::cpu_engine_options(*path));
        if (!engine.ok()) {
            error_ = engine.status().message();
            return;
        }
        engine_ = std::move(engine).value().release();
        const nlohmann::json ref = read_json("tests/fixtures/gemma3/reference.json");
        if (!ref.is_object()) {
            error_ = "missing or invalid tests/fixtures/gemma3/reference.json";
            return;
        }
        for (const auto& p : ref["prompts"]) {
            RefPrompt prompt;
            prompt.ids = p["ids"].get<std::vector<int32_t>>();
            prompt.top_logits = p["top_k_logits"].get<std::vector<std::vector<float>>>();
            prompt.top_ids = p["top_k_ids"].get<std::vector<std::vector<int32_t>>>();
            prompt.max_abs = p["max_abs_logit"].get<std::vector<float>>();
            prompts_.push_back(std::move(prompt));
        }
        greedy_ = ref["greedy"]["ids"].get<std::vector<int32_t>>();
        std::ifstream full(std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/gemma3/long_last_logits.f32",
                           std::ios::binary);
        full_last_.resize(static_cast<size_t>(engine_->config().vocab_size));
        full.read(reinterpret_cast<char*>(full_last_.data()), static_cast<std::streamsize>(full_last_.size() * 4));
        if (!full) error_ = "missing or short tests/fixtures/gemma3/long_last_logits.f32";
    }
    static void TearDownTestSuite() {
        delete engine_;
        engine_ = nullptr;
    }
    void SetUp() override { ASSERT_TRUE(error_.empty()) << error_; }

    static std::unique_ptr<Session> session(int64_t context, int64_t chunk) {
        Result<std::unique_ptr<Session>> s = engine_->new_session(context, chunk);
        EXPECT_TRUE(s.ok()) << s.status().message();
        return std::move(s).value();
    }

    // Checks our logits of one position against the reference's top-k; returns max|diff| / max|logit|.
    static double check_position(std::span<const float> ours, const RefPrompt& ref, size_t position) {
        const auto& ids = ref.top_ids[position];
        const auto& values = ref.top_logits[position];
        double worst = 0.0;
        for (size_t i = 0; i < ids.size(); ++i) {
            worst = std::max(worst, std::abs(static_cast<double>(ours[static_cast<size_t>(ids[i])]) - values[i]));
        }
        const int64_t top1 = std::max_element(ours.begin(), ours.end()) - ours.begin();
        EXPECT_EQ(top1, ids[0]) << "top-1 differs at position " << position;
        const double relative = worst / ref.max_abs[position];
        EXPECT_LE(relative, kRelativeTolerance) << "position " << position;
        return relative;
    }

    static inline Engine* engine_ = nullptr;
    static inline std::string error_;
    static inline std::vector<RefPrompt> prompts_;
    static inline std::vector<int32_t> greedy_;
    static inline std::vector<float> full_last_;
};

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
    return worst;
}

TEST_F(Gemma3Reference, ShortPromptsMatchTransformersAtEveryPosition) {
    const size_t vocab = static_cast<size_t>(engine_->config().vocab_size);
    for (size_t p = 0; p < 2; ++p) {
        auto s = session(256, 512);
        std::vector<float> logits;
        ASSERT_TRUE(s->forward_all_logits(prompts_[p].ids, logits).ok());
        double worst = 0.0;
        for (size_t t = 0; t < prompts_[p].ids.size(); ++t) {
            worst = std::max(worst, check_position(std::span(logits).subspan(t * vocab, vocab), prompts_[p], t));
        }
        std::printf("prompt %zu (%zu tokens): max |ours - transformers| / max|logit| = %.2e\n", p,
                    prompts_[p].ids.size(), worst);
    }
}

// The long prompt in one-shot (chunk 512), chunk 100, chunk 7 + token-by-token decode: the tail
// positions match transformers, and all three agree bit for bit (every op is row-independent
// and sums in a fixed order, so chunking must not change a single bit).
TEST_F(Gemma3Reference, LongPromptChunkedPrefillAndDecodeAgree) {
    const RefPrompt& ref = prompts_[2];
    const size_t n = ref.ids.size();
    const size_t vocab = static_cast<size_t>(engine_->config().vocab_size);
    const size_t tail = 480;  // positions [tail, n) are compared with all logits
    ASSERT_GT(n, 512u);
    const std::span<const int32_t> ids(ref.ids);

    // One-shot (chunk 512: chunks [0, 512) and [512, 540)); the last position against all 262144 logits.
    auto one_shot = session(1024, 512);
    Result<std::span<const float>> last = one_shot->prefill(ids);
    ASSERT_TRUE(last.ok()) << last.status().message();
    const std::vector<float> last_one_shot(last->begin(), last->end());
    const double full_diff = max_abs_diff(last_one_shot, full_last_);
    const double full_max = *std::max_element(full_last_.begin(), full_last_.end(),
                                              [](float a, float b) { return std::abs(a) < std::abs(b); });
    std::printf("long prompt, last position, all %zu logits: max|diff| = %.3e (max|logit| %.2f, ratio %.2e)\n",
                vocab, full_diff, std::abs(full_max), full_diff / std::abs(full_max));
    EXPECT_LE(full_diff, kRelativeTolerance * std::abs(full_max));
    check_position(last_one_shot, ref, n - 1);

    // Chunk 100: the tail with every logit, against transformers.
    auto chunked = session(1024, 100);
    ASSERT_TRUE(chunked->prefill(ids.first(tail)).ok());
    std::vector<float> tail_logits;
    ASSERT_TRUE(chunked->forward_all_logits(ids.subspan(tail), tail_logits).ok());
    double worst = 0.0;
    for (size_t t = tail; t < n; ++t) {
        worst = std::max(worst, check_position(std::span(tail_logits).subspan((t - tail) * vocab, vocab), ref, t));
    }
    std::printf("long prompt positions [%zu, %zu): max |ours - transformers| / max|logit| = %.2e\n", tail, n, worst);
    EXPECT_EQ(max_abs_diff(std::span(tail_logits).last(vocab), last_one_shot), 0.0);

    // Chunk 7 (ring of 518 slots, which wraps), then one token at a time across the window edge.
    auto stepped = session(1024, 7);
    EXPECT_EQ(stepped->kv_cache().capacity(0), 512 + 7 - 1);
    const size_t decode_from = 500;
    ASSERT_TRUE(stepped->prefill(ids.first(decode_from)).ok());
    for (size_t t = decode_from; t < n; ++t) {
        Result<std::span<const float>> step = stepped->decode(ids[t]);
        ASSERT_TRUE(step.ok()) << step.status().message();
        ASSERT_EQ(max_abs_diff(*step, std::span(tail_logits).subspan((t - tail) * vocab, vocab)), 0.0)
            << "decode at position " << t << " differs from chunked prefill";
    }
    EXPECT_EQ(stepped->position(), static_cast<int64_t>(n));
}

TEST_F(Gemma3Reference, GreedyContinuationMatchesTransformers) {
    auto s = session(256, 512);
    Result<std::span<const float>> logits = s->prefill(prompts_[0].ids);
    ASSERT_TRUE(logits.ok());
    std::vector<int32_t> generated;
    for (size_t i = 0; i < greedy_.size(); ++i) {
        const int32_t next = static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) - logits->begin());
        generated.push_back(next);
        logits = s->decode(next);
        ASSERT_TRUE(logits.ok());
    }
    EXPECT_EQ(generated, greedy_);

    // A reset session gives the identical result.
    ASSERT_TRUE(s->reset().ok());
    EXPECT_EQ(s->position(), 0);
    Result<std::span<const float>> again = s->prefill(prompts_[0].ids);
    ASSERT_TRUE(again.ok());
    auto fresh = session(256, 512);
    Result<std::span<const float>> first = fresh->prefill(prompts_[0].ids);
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(max_abs_diff(*again, *first), 0.0);
}

TEST_F(Gemma3Reference, PromptLongerThanContextIsAnError) {
    auto s = session(16, 8);
    std::vector<int32_t> prompt(17, 2);
    Result<std::span<const float>> r = s->prefill(prompt);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("17"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("16"), std::string::npos) << r.status().message();
    EXPECT_EQ(s->position(), 0);
    // Filling the context exactly works; one more token is refused.
    prompt.resize(16);
    ASSERT_TRUE(s->prefill(prompt).ok());
    EXPECT_EQ(s->decode(2).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s->decode(static_cast<int32_t>(engine_->config().vocab_size)).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(s->prefill({}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_FALSE(engine_->new_session(engine_->config().context_length + 1).ok());
}

TEST_F(Gemma3Reference, PerplexityMatchesTransformers) {
    const nlohmann::json ref = read_json("tests/fixtures/perplexity/pride_and_prejudice_ch1.json");
    ASSERT_TRUE(ref.is_object());
    const auto ids = ref["ids"].get<std::vector<int32_t>>();
    const int64_t ctx = ref["ctx"].get<int64_t>();
    auto s = session(ctx, 512);
    Result<PerplexityResult> ppl = perplexity(*s, ids, ctx, ref["bos"].get<int32_t>());
    ASSERT_TRUE(ppl.ok()) << ppl.status().message();
    const double expected = ref["perplexity"].get<double>();
    std::printf("perplexity: ours %.5f, transformers %.5f (%lld chunks, %lld scored)\n", ppl->perplexity, expected,
                static_cast<long long>(ppl->n_chunks), static_cast<long long>(ppl->n_scored));
    EXPECT_EQ(ppl->n_chunks, ref["n_chunks"].get<int64_t>());
    EXPECT_EQ(ppl->n_scored, ref["n_scored"].get<int64_t>());
    EXPECT_NEAR(ppl->perplexity, expected, 0.01 * expected);
}

// --kv-cache tq4 on the real model (its 3 global layers of 18, head dim 256, in TQ4; the
// sliding layers keep fp32): perplexity of the same chunks. Gemma 3 270M's keys carry a large
// shared component (half of E||k||^2 in layer 5) and TQ4's error is ~10% of the stored vector's
// norm: stored whole, scores moved by ~1.06 rms against a spread of ~2.7 and the perplexity rose
// from 19.658 to 22.200 (+12.9%; at -c 256 +8.0%, at -c 512 +6.4%). With the keys centred
// (ops/kv_tq4.h, "Key centring") it is 19.559 (-0.5%; at -c 256 +1.0%, at -c 512 -0.1%). The
// bound holds it within 3% either way; TQ4 must also be seen (the perplexity differs).
TEST_F(Gemma3Reference, PerplexityWithTq4KvCacheStaysClose) {
    const nlohmann::json ref = read_json("tests/fixtures/perplexity/pride_and_prejudice_ch1.json");
    ASSERT_TRUE(ref.is_object());
    const auto ids = ref["ids"].get<std::vector<int32_t>>();
    const int64_t ctx = ref["ctx"].get<int64_t>();
    const int32_t bos = ref["bos"].get<int32_t>();
    Result<PerplexityResult> native = perplexity(*session(ctx, 512), ids, ctx, bos);
    Result<std::unique_ptr<Session>> tq4_session =
        engine_->new_session(ctx, 512, KvCacheFormat::kTq4);
    ASSERT_TRUE(tq4_session.ok()) << tq4_session.status().message();
    Result<PerplexityResult> tq4 = perplexity(**tq4_session, ids, ctx, bos);
    ASSERT_TRUE(native.ok() && tq4.ok());
    std::printf("perplexity: fp32 KV %.4f, TQ4 KV %.4f (%+.2f%%)\n", native->perplexity,
                tq4->perplexity, 100.0 * (tq4->perplexity / native->perplexity - 1.0));
    EXPECT_NE(tq4->perplexity, native->perplexity);
    EXPECT_LT(std::fabs(tq4->perplexity / native->perplexity - 1.0), 0.03);
}

// Per-position logit cosine, TQ4 against the fp32 cache, over the first 384 tokens of the
// perplexity text: prefilled in chunks of 128 (the keys centred by the first chunk's mean) and of
// 8 (shorter than kTq4CenterMinTokens: no centre, the format alone). Measured: centred min 0.9814
// / mean 0.99719, uncentred min 0.8764 / mean 0.98538: the centre cuts 1 - cosine five-fold on
// average (techniques.md §4 quotes ~0.9997 for Gemma 4 31B).
TEST_F(Gemma3Reference, Tq4LogitsCosineWithCentredKeys) {
    const nlohmann::json ref = read_json("tests/fixtures/perplexity/pride_and_prejudice_ch1.json");
    ASSERT_TRUE(ref.is_object());
    std::vector<int32_t> ids = ref["ids"].get<std::vector<int32_t>>();
    ids.resize(std::min<size_t>(ids.size(), 384));
    const int64_t vocab = engine_->config().vocab_size;
    double mean_cosine[2] = {}, min_cosine[2] = {};
    for (const int64_t chunk : {int64_t{128}, int64_t{8}}) {
        const int slot = chunk >= kTq4CenterMinTokens ? 0 : 1;  // 0: centred keys, 1: none
        std::vector<float> native, tq4;
        Result<std::unique_ptr<Session>> a =
            engine_->new_session(512, chunk, KvCacheFormat::kNative);
        Result<std::unique_ptr<Session>> b = engine_->new_session(512, chunk, KvCacheFormat::kTq4);
        ASSERT_TRUE(a.ok() && b.ok());
        const Status native_status = (*a)->forward_all_logits(ids, native);
        const Status tq4_status = (*b)->forward_all_logits(ids, tq4);
        ASSERT_TRUE(native_status.ok()) << native_status.message();
        ASSERT_TRUE(tq4_status.ok()) << tq4_status.message();
        ASSERT_EQ(native.size(), ids.size() * static_cast<size_t>(vocab));
        ASSERT_EQ(tq4.size(), native.size());
        double lowest = 1.0, sum = 0.0;
        for (size_t t = 0; t < ids.size(); ++t) {
            double dot = 0.0, aa = 0.0, bb = 0.0;
            for (size_t i = t * static_cast<size_t>(vocab);
                 i < (t + 1) * static_cast<size_t>(vocab); ++i) {
                dot += static_cast<double>(native[i]) * tq4[i];
                aa += static_cast<double>(native[i]) * native[i];
                bb += static_cast<double>(tq4[i]) * tq4[i];
            }
            const double cosine = dot / std::sqrt(aa * bb);
            ASSERT_TRUE(std::isfinite(cosine)) << "position " << t;
            lowest = std::min(lowest, cosine);
            sum += cosine;
        }
        min_cosine[slot] = lowest;
        mean_cosine[slot] = sum / static_cast<double>(ids.size());
        std::printf("chunks of %lld: logits cosine TQ4 vs fp32 KV min %.6f mean %.6f\n",
                    static_cast<long long>(chunk), lowest, mean_cosine[slot]);
    }
    EXPECT_GE(min_cosine[0], 0.97);
    EXPECT_GE(mean_cosine[0], 0.995);
    EXPECT_LT(1.0 - mean_cosine[0], 0.5 * (1.0 - mean_cosine[1]));  // the centre's doing
}

TEST_F(Gemma3Reference, DebugHookSeesNamedIntermediates) {
    auto s = session(64, 64);
    std::vector<std::string> seen;
    DebugHook hook = [&](std::string_view name, int64_t layer, const float* data, int64_t rows, int64_t cols) {
        if (layer == 7) seen.push_back(std::string(name));
        EXPECT_EQ(rows, layer >= 0 ? 3 : (name == "result_norm" ? 1 : 3));
        EXPECT_GT(cols, 0);
        EXPECT_TRUE(std::isfinite(data[0]));
    };
    s->set_debug_hook(&hook);
    const int32_t ids[] = {2, 818, 3823};
    ASSERT_TRUE(s->prefill(ids).ok());
    EXPECT_NE(std::find(seen.begin(), seen.end(), "attn_norm"), seen.end());
    EXPECT_NE(std::find(seen.begin(), seen.end(), "ffn_out"), seen.end());
}

}  // namespace
}  // namespace kestrel
