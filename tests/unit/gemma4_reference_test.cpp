// The Gemma 4 forward pass against Hugging Face transformers on a tiny random-weight model
// (tests/fixtures/gemma4_tiny/, made by scripts/make_gemma4_fixtures.py): 6 layers SSF SSF,
// sliding head dim 16 / full head dim 32, K = V and proportional RoPE on full layers, window 8,
// layer_scalar, final softcap 30. The same weights (bf16-representable) in three files: the HF
// folder as transformers saved it (fp32, model.language_model.*), a bf16 text-only folder
// (model.*), and the GGUF llama.cpp's own convert_hf_to_gguf.py made of the first.
//
// Tolerance: max|ours - transformers| <= 1e-3 * max|logit| over each prompt's rows. Both sides
// compute in fp32 from identical weights, so the difference is summation order only (the
// tests print it: ~1e-6 relative); a wrong norm, RoPE pair, mask or scale moves logits by
// >1e-2. Greedy tokens must be identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/session.h"
#include "test_support.h"

namespace kestrel {
namespace {

constexpr double kRelativeTolerance = 1e-3;  // of max|logit| over the prompt's rows

const std::string kFixture = std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/gemma4_tiny";

struct RefPrompt {
    std::vector<int32_t> prompt;
    std::vector<int32_t> greedy;  // [n_decode]
    std::vector<float> logits;    // [prompt + n_decode - 1, vocab]: transformers over prompt + greedy[:-1]
    float max_abs = 0.0f;
};

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
    return worst;
}

int32_t argmax(std::span<const float> logits) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

class Gemma4Reference : public ::testing::TestWithParam<const char*> {
protected:
    static void SetUpTestSuite() {
        std::ifstream in(kFixture + "/reference.json");
        const nlohmann::json ref = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
        if (!ref.is_object()) {
            error_ = "missing or invalid tests/fixtures/gemma4_tiny/reference.json";
            return;
        }
        vocab_ = ref["vocab_size"].get<int64_t>();
        std::ifstream blob(kFixture + "/logits.f32", std::ios::binary);
        for (const auto& p : ref["prompts"]) {
            RefPrompt prompt;
            prompt.prompt = p["prompt"].get<std::vector<int32_t>>();
            prompt.greedy = p["greedy"].get<std::vector<int32_t>>();
            prompt.max_abs = p["max_abs_logit"].get<float>();
            prompt.logits.resize(p["rows"].get<size_t>() * static_cast<size_t>(vocab_));
            blob.read(reinterpret_cast<char*>(prompt.logits.data()),
                      static_cast<std::streamsize>(prompt.logits.size() * sizeof(float)));
            prompts_.push_back(std::move(prompt));
        }
        if (!blob) error_ = "missing or short tests/fixtures/gemma4_tiny/logits.f32";
    }
    static void TearDownTestSuite() { engines_.clear(); }

    void SetUp() override {
        ASSERT_TRUE(error_.empty()) << error_;
        std::unique_ptr<Engine>& engine = engines_[GetParam()];
        if (!engine) {
            Result<std::unique_ptr<Engine>> loaded = Engine::load(testing::cpu_engine_options(kFixture + "/" + GetParam(), 2));
            ASSERT_TRUE(loaded.ok()) << loaded.status().message();
            engine = std::move(loaded).value();
        }
        engine_ = engine.get();
        ASSERT_EQ(engine_->config().vocab_size, vocab_);
    }

    std::unique_ptr<Session> session(int64_t chunk,
                                     int64_t sliding_step = kSlidingAttentionStep) const {
        Result<std::unique_ptr<Session>> s =
            engine_->new_session(128, chunk, KvCacheFormat::kNative, sliding_step);
        EXPECT_TRUE(s.ok()) << s.status().message();
        return std::move(s).value();
    }

    // prompt + greedy[:-1]: the sequence whose every position transformers' logits cover.
    static std::vector<int32_t> full_sequence(const RefPrompt& p) {
        std::vector<int32_t> ids = p.prompt;
        ids.insert(ids.end(), p.greedy.begin(), p.greedy.end() - 1);
        return ids;
    }

    std::span<const float> ref_row(const RefPrompt& p, size_t row) const {
        return std::span<const float>(p.logits).subspan(row * static_cast<size_t>(vocab_), static_cast<size_t>(vocab_));
    }

    static inline std::string error_;
    static inline int64_t vocab_ = 0;
    static inline std::vector<RefPrompt> prompts_;
    static inline std::map<std::string, std::unique_ptr<Engine>> engines_;
    const Engine* engine_ = nullptr;
};

TEST_P(Gemma4Reference, ConfigIsTheFixtures) {
    const ModelConfig& c = engine_->config();
    EXPECT_EQ(c.architecture, "gemma4");
    EXPECT_EQ(c.layer_pattern(), "SSF SSF");
    EXPECT_EQ(c.sliding_window, 8);
    EXPECT_EQ(c.layers[0].head_dim, 16);
    EXPECT_EQ(c.layers[2].head_dim, 32);
    EXPECT_EQ(c.layers[2].n_kv_heads, 1);
    EXPECT_TRUE(c.layers[2].k_eq_v);
    EXPECT_FALSE(c.layers[0].k_eq_v);
    EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
    EXPECT_DOUBLE_EQ(c.rope_theta_sliding, 1e4);
    EXPECT_DOUBLE_EQ(c.final_logit_softcap, 30.0);
}

// Every prefill position of every prompt (one forward over prompt + the greedy continuation),
// then the prompt and 32 greedy decode steps: the same tokens and, at each step, the same logits.
TEST_P(Gemma4Reference, PrefillAndGreedyDecodeMatchTransformers) {
    for (size_t p = 0; p < prompts_.size(); ++p) {
        const RefPrompt& ref = prompts_[p];
        const std::vector<int32_t> ids = full_sequence(ref);
        auto one_shot = session(512);
        std::vector<float> logits;
        ASSERT_TRUE(one_shot->forward_all_logits(ids, logits).ok());
        const double prefill_diff = max_abs_diff(logits, ref.logits);
        for (size_t t = 0; t < ids.size(); ++t) {
            ASSERT_EQ(argmax(std::span<const float>(logits).subspan(t * vocab_, vocab_)), argmax(ref_row(ref, t)))
                << "top-1 differs at position " << t;
        }

        auto s = session(512);
        Result<std::span<const float>> step = s->prefill(ref.prompt);
        ASSERT_TRUE(step.ok()) << step.status().message();
        double decode_diff = 0.0;
        std::vector<int32_t> generated;
        for (size_t i = 0; i < ref.greedy.size(); ++i) {
            decode_diff = std::max(decode_diff, max_abs_diff(*step, ref_row(ref, ref.prompt.size() - 1 + i)));
            generated.push_back(argmax(*step));
            if (i + 1 < ref.greedy.size()) {
                step = s->decode(generated.back());
                ASSERT_TRUE(step.ok()) << step.status().message();
            }
        }
        EXPECT_EQ(generated, ref.greedy) << "prompt " << p;
        std::printf("%s prompt %zu (%zu tokens + %zu decoded): max|diff| prefill %.3e, decode %.3e, "
                    "max|logit| %.2f, ratio %.2e\n",
                    GetParam(), p, ref.prompt.size(), ref.greedy.size(), prefill_diff, decode_diff, ref.max_abs,
                    std::max(prefill_diff, decode_diff) / ref.max_abs);
        EXPECT_LE(prefill_diff, kRelativeTolerance * ref.max_abs) << "prompt " << p;
        EXPECT_LE(decode_diff, kRelativeTolerance * ref.max_abs) << "prompt " << p;
    }
}

// The long prompt + continuation (71 tokens, window 8) in chunks that divide, straddle and
// exceed the window; then token by token after a chunked start. Every op is row-independent and
// sums in a fixed order, so all of them agree bit for bit with the one-shot prefill.
TEST_P(Gemma4Reference, ChunkedPrefillEqualsOneShotEqualsDecode) {
    const RefPrompt& ref = prompts_.back();
    const std::vector<int32_t> ids = full_sequence(ref);
    ASSERT_GT(ids.size(), 3u * 8u);
    auto one_shot = session(512);
    std::vector<float> expected;
    ASSERT_TRUE(one_shot->forward_all_logits(ids, expected).ok());

    for (int64_t chunk : {1, 3, 7, 8, 9, 13, 16, 50}) {
        auto s = session(chunk);
        std::vector<float> logits;
        ASSERT_TRUE(s->forward_all_logits(ids, logits).ok());
        EXPECT_EQ(max_abs_diff(logits, expected), 0.0) << "chunk " << chunk;
    }
    // Rings shorter than window + chunk - 1: the sliding layers write and attend in steps
    // (forward_common.h attention_block). Without the steps a chunk's later keys overwrite
    // earlier ones its first queries still read.
    for (const auto& [chunk, step] :
         {std::pair<int64_t, int64_t>{50, 1}, {50, 3}, {16, 7}, {71, 8}}) {
        auto s = session(chunk, step);
        ASSERT_EQ(s->kv_cache().capacity(0), std::min<int64_t>(8 + step - 1, 128))
            << "chunk " << chunk;
        std::vector<float> logits;
        ASSERT_TRUE(s->forward_all_logits(ids, logits).ok());
        EXPECT_EQ(max_abs_diff(logits, expected), 0.0) << "chunk " << chunk << ", step " << step;
    }

    auto stepped = session(5);
    const size_t decode_from = 11;
    ASSERT_TRUE(stepped->prefill(std::span(ids).first(decode_from)).ok());
    for (size_t t = decode_from; t < ids.size(); ++t) {
        Result<std::span<const float>> step = stepped->decode(ids[t]);
        ASSERT_TRUE(step.ok()) << step.status().message();
        ASSERT_EQ(max_abs_diff(*step, std::span<const float>(expected).subspan(t * vocab_, vocab_)), 0.0)
            << "decode at position " << t;
    }
}

// The tiny SentencePiece-style tokenizer (byte fallback) from tokenizer.json or from the GGUF's
// "gemma4" vocabulary and merges encodes like HF tokenizers.
TEST_P(Gemma4Reference, TokenizerMatchesHfTokenizers) {
    std::ifstream in(kFixture + "/reference.json");
    const nlohmann::json ref = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(ref.is_object());
    const std::string text = ref["tokenizer"]["text"].get<std::string>();
    EXPECT_EQ(engine_->tokenizer().encode(text), ref["tokenizer"]["ids"].get<std::vector<int32_t>>());
}

TEST_P(Gemma4Reference, DebugHookSeesNamedIntermediates) {
    auto s = session(64);
    std::vector<std::string> seen;
    DebugHook hook = [&](std::string_view name, int64_t layer, const float*, int64_t, int64_t cols) {
        if (layer == 2) {
            seen.push_back(std::string(name));
            if (name == "Kcur" || name == "Vcur") {
                EXPECT_EQ(cols, 32);  // one kv head of dim 32
            }
        }
    };
    s->set_debug_hook(&hook);
    ASSERT_TRUE(s->prefill(prompts_[0].prompt).ok());
    for (const char* name : {"attn_norm", "Qcur", "Kcur", "Vcur", "kqv_out", "attn_proj", "ffn_out", "l_out"}) {
        EXPECT_NE(std::find(seen.begin(), seen.end(), name), seen.end()) << name;
    }
}

INSTANTIATE_TEST_SUITE_P(Formats, Gemma4Reference, ::testing::Values("hf", "hf_bf16", "model.gguf"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                             return std::string(info.param) == "hf" ? std::string("HfFp32")
                                    : std::string(info.param) == "hf_bf16" ? std::string("HfBf16")
                                                                           : std::string("Gguf");
                         });

TEST(Gemma4Cli, RunAndInfoWorkOnTheFixture) {
    testing::CommandResult run = testing::run_kestrel("run -m '" + kFixture + "/hf' -p 'hello kestrel' -n 8 --temp 0");
    EXPECT_TRUE(run.exited);
    EXPECT_EQ(run.exit_code, 0) << run.err;
    EXPECT_FALSE(run.out.empty());
    testing::CommandResult gguf =
        testing::run_kestrel("run -m '" + kFixture + "/model.gguf' -p 'hello kestrel' -n 8 --temp 0");
    EXPECT_EQ(gguf.exit_code, 0) << gguf.err;
    EXPECT_EQ(gguf.out, run.out);  // same weights, same tokenizer, greedy

    testing::CommandResult info = testing::run_kestrel("info -m '" + kFixture + "/model.gguf'");
    EXPECT_EQ(info.exit_code, 0) << info.err;
    EXPECT_NE(info.out.find("gemma4"), std::string::npos) << info.out;
    EXPECT_NE(info.out.find("SSF SSF"), std::string::npos) << info.out;
    EXPECT_NE(info.out.find("V = K projection"), std::string::npos) << info.out;
}

}  // namespace
}  // namespace kestrel
