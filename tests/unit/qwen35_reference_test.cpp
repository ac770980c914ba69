// The CPU reference engine on a tiny random-weight Qwen3.5-MoE model (tests/fixtures/qwen35_tiny,
// made by scripts/make_qwen35_fixtures.py) against Hugging Face transformers' fp32 logits, from
// both the HF folder (safetensors, grouped value heads, w norms, A_log) and llama.cpp's own
// converter's GGUF (tiled value heads, 1 + w norms, -exp(A_log)). The same checks run on the HF
// folder of tests/fixtures/qwen35_tiny_shared32 (same script, --variant shared32: 2 layers), whose
// shared expert is as wide as a routed one (32 = 32, as Qwen3.5-35B-A3B's 512 = 512), the case
// where the engine may run the shared expert as one more expert of the routed-expert kernels.
//
// Tolerance: |ours - transformers| <= 1e-3 * max|logit| at every prefill position and decode
// step (the brief's bound; both sides compute in fp32 and differ only in summation order, and
// the tests print the measured worst case). Greedy tokens must be identical. Chunked prefill
// (chunked gated delta rule), one-shot and token-by-token (recurrent rule) agree to 1e-5 *
// max|logit|: the two forms of the delta rule are equal up to rounding, not bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace kestrel {
namespace {

constexpr double kReferenceTolerance = 1e-3;  // of max|logit| at the position
constexpr double kChunkingTolerance = 1e-5;   // chunked vs recurrent delta rule, of max|logit|

std::string fixture_dir(const std::string& fixture) {
    return std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/" + fixture;
}

const std::string kDir = fixture_dir("qwen35_tiny");
const std::string kGguf = kDir + "/qwen35_tiny-f32.gguf";

struct RefPrompt {
    std::vector<int32_t> ids;
    std::vector<int32_t> greedy;  // [decode_steps + 1]
    std::vector<float> logits;    // [ids.size() + decode_steps, vocab]
};

struct Reference {
    int64_t vocab = 0;
    int64_t steps = 0;
    std::vector<RefPrompt> prompts;
    std::string text;
    std::vector<int32_t> text_ids;
};

// reference.json and the logits files of a fixture folder; empty when missing or invalid.
Reference load_reference(const std::string& dir) {
    Reference r;
    std::ifstream in(dir + "/reference.json");
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return r;
    r.vocab = j["vocab"].get<int64_t>();
    r.steps = j["decode_steps"].get<int64_t>();
    r.text = j["tokenizer_check"]["text"].get<std::string>();
    r.text_ids = j["tokenizer_check"]["ids"].get<std::vector<int32_t>>();
    for (const auto& p : j["prompts"]) {
        RefPrompt prompt;
        prompt.ids = p["ids"].get<std::vector<int32_t>>();
        prompt.greedy = p["greedy"].get<std::vector<int32_t>>();
        prompt.logits.resize(static_cast<size_t>(p["rows"].get<int64_t>() * r.vocab));
        std::ifstream f(dir + "/" + p["logits"].get<std::string>(), std::ios::binary);
        f.read(reinterpret_cast<char*>(prompt.logits.data()),
               static_cast<std::streamsize>(prompt.logits.size() * sizeof(float)));
        if (!f) return Reference{};
        r.prompts.push_back(std::move(prompt));
    }
    return r;
}

// Loaded once per fixture folder.
const Reference& fixture_reference(const std::string& dir) {
    static std::map<std::string, Reference> cache;
    auto it = cache.find(dir);
    if (it == cache.end()) it = cache.emplace(dir, load_reference(dir)).first;
    return it->second;
}

int32_t argmax(std::span<const float> x) {
    return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
}

double max_abs(std::span<const float> x) {
    double m = 0.0;
    for (float v : x) m = std::max(m, std::abs(static_cast<double>(v)));
    return m;
}

// max |a - b| / max |b|
double relative_diff(std::span<const float> a, std::span<const float> b) {
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
    return worst / max_abs(b);
}

// One fixture folder in one format.
struct Case {
    const char* name;           // the test name's suffix
    const char* fixture;        // folder under tests/fixtures
    const char* model;          // the file in it to load; "" for the HF folder itself
    int64_t shared_expert_ffn;  // the routed experts' is 32 in both fixtures
};

// gtest prints a parameter in test listings (and ctest's names): the suffix, not the bytes.
void PrintTo(const Case& c, std::ostream* os) {
    *os << c.name;
}

constexpr Case kCases[] = {
    {"hf", "qwen35_tiny", "", 48},
    {"gguf", "qwen35_tiny", "qwen35_tiny-f32.gguf", 48},
    {"shared32_hf", "qwen35_tiny_shared32", "", 32},
};

class Qwen35Reference : public ::testing::TestWithParam<Case> {
protected:
    void SetUp() override {
        const Case& c = GetParam();
        const std::string dir = fixture_dir(c.fixture);
        ref_ = &fixture_reference(dir);
        ASSERT_FALSE(ref_->prompts.empty()) << "missing or invalid fixtures in " << dir;
        const std::string path = *c.model == '\0' ? dir : dir + "/" + c.model;
        Result<std::unique_ptr<Engine>> engine = Engine::load(testing::cpu_engine_options(path));
        ASSERT_TRUE(engine.ok()) << engine.status().message();
        engine_ = std::move(engine).value();
        ASSERT_EQ(engine_->config().architecture, "qwen35moe");
        ASSERT_EQ(engine_->config().vocab_size, ref_->vocab);
        // The shared32 fixture is there for shared == routed width: make sure it still is.
        ASSERT_EQ(engine_->config().expert_ffn_size, 32);
        ASSERT_EQ(engine_->config().shared_expert_ffn_size, c.shared_expert_ffn);
    }

    const Reference& reference() const { return *ref_; }
    const char* name() const { return GetParam().name; }

    std::unique_ptr<Session> session(int64_t chunk) const {
        Result<std::unique_ptr<Session>> s = engine_->new_session(256, chunk);
        EXPECT_TRUE(s.ok()) << s.status().message();
        return std::move(s).value();
    }

    const Reference* ref_ = nullptr;
    std::unique_ptr<Engine> engine_;
};

// Every prefill position and greedy decode step (32; 10 in shared32) of each prompt against
// transformers (prefill with DynamicCache: the chunked rule; decode: the recurrent rule with
// carried state).
TEST_P(Qwen35Reference, LogitsMatchTransformersAtEveryPositionAndDecodeStep) {
    const Reference& ref = reference();
    const size_t vocab = static_cast<size_t>(ref.vocab);
    for (size_t p = 0; p < ref.prompts.size(); ++p) {
        const RefPrompt& prompt = ref.prompts[p];
        const size_t n = prompt.ids.size();
        auto s = session(512);
        std::vector<float> logits;
        ASSERT_TRUE(s->forward_all_logits(prompt.ids, logits).ok());
        double worst_prefill = 0.0, worst_decode = 0.0;
        for (size_t t = 0; t < n; ++t) {
            const std::span<const float> ours(logits.data() + t * vocab, vocab);
            const std::span<const float> theirs(prompt.logits.data() + t * vocab, vocab);
            const double rel = relative_diff(ours, theirs);
            EXPECT_LE(rel, kReferenceTolerance) << name() << " prompt " << p << " position " << t;
            EXPECT_EQ(argmax(ours), argmax(theirs))
                << name() << " prompt " << p << " position " << t;
            worst_prefill = std::max(worst_prefill, rel);
        }
        EXPECT_EQ(argmax(std::span<const float>(logits).subspan((n - 1) * vocab, vocab)),
                  prompt.greedy[0]);
        for (int64_t step = 0; step < ref.steps; ++step) {
            Result<std::span<const float>> out =
                s->decode(prompt.greedy[static_cast<size_t>(step)]);
            ASSERT_TRUE(out.ok()) << out.status().message();
            const std::span<const float> theirs(
                prompt.logits.data() + (n + static_cast<size_t>(step)) * vocab, vocab);
            const double rel = relative_diff(*out, theirs);
            EXPECT_LE(rel, kReferenceTolerance)
                << name() << " prompt " << p << " decode step " << step;
            EXPECT_EQ(argmax(*out), prompt.greedy[static_cast<size_t>(step) + 1])
                << name() << " prompt " << p << " decode step " << step;
            worst_decode = std::max(worst_decode, rel);
        }
        std::printf(
            "%s prompt %zu (%zu tokens + %lld steps): max |ours - transformers| / max|logit| = "
            "%.2e prefill, %.2e decode\n",
            name(), p, n, static_cast<long long>(ref.steps), worst_prefill, worst_decode);
    }
}

// The 70-token prompt one-shot (chunked rule, chunks of 64 + 6), in prefill chunks of 16 and 5
// (state carried between forward calls), and token by token (the recurrent rule): all agree.
TEST_P(Qwen35Reference, ChunkedPrefillEqualsOneShotEqualsTokenByToken) {
    const RefPrompt& prompt = reference().prompts[2];
    const size_t vocab = static_cast<size_t>(reference().vocab);
    const size_t n = prompt.ids.size();
    std::vector<float> one_shot;
    ASSERT_TRUE(session(512)->forward_all_logits(prompt.ids, one_shot).ok());
    for (int64_t chunk : {16, 5, 1}) {
        auto s = session(chunk);
        std::vector<float> chunked;
        if (chunk == 1) {
            for (int32_t id : prompt.ids) {
                Result<std::span<const float>> out = s->decode(id);
                ASSERT_TRUE(out.ok());
                chunked.insert(chunked.end(), out->begin(), out->end());
            }
        } else {
            ASSERT_TRUE(s->forward_all_logits(prompt.ids, chunked).ok());
        }
        double worst = 0.0;
        for (size_t t = 0; t < n; ++t) {
            const std::span<const float> a(chunked.data() + t * vocab, vocab),
                b(one_shot.data() + t * vocab, vocab);
            worst = std::max(worst, relative_diff(a, b));
            EXPECT_EQ(argmax(a), argmax(b)) << "chunk " << chunk << " position " << t;
        }
        EXPECT_LE(worst, kChunkingTolerance) << "chunk " << chunk;
        std::printf("%s chunk %lld vs one-shot: max diff / max|logit| = %.2e\n", name(),
                    static_cast<long long>(chunk), worst);
    }
}

// The conv and delta-rule state carry the sequence across decode steps (the decode test above
// depends on it), are non-zero after a prompt, zero after reset, and a reset session (or a new
// one) reproduces the first run bit for bit.
TEST_P(Qwen35Reference, RecurrentStateSurvivesDecodeAndResets) {
    const RefPrompt& prompt = reference().prompts[0];
    auto s = session(512);
    auto run = [&](Session& session) {
        std::vector<float> all;
        Result<std::span<const float>> out = session.prefill(prompt.ids);
        EXPECT_TRUE(out.ok());
        all.insert(all.end(), out->begin(), out->end());
        for (int step = 0; step < 8; ++step) {
            out = session.decode(prompt.greedy[static_cast<size_t>(step)]);
            EXPECT_TRUE(out.ok());
            all.insert(all.end(), out->begin(), out->end());
        }
        return all;
    };
    auto state_abs_sum = [](const Session& session) {
        double sum = 0.0;
        for (const RecurrentLayerView& view : session.recurrent_state().views()) {
            if (view.state == nullptr) continue;
            for (int64_t i = 0; i < (view.conv_kernel - 1) * view.conv_channels; ++i)
                sum += std::abs(view.conv[i]);
            sum += std::abs(view.state[0]);
        }
        return sum;
    };
    const std::vector<float> first = run(*s);
    EXPECT_GT(state_abs_sum(*s), 0.0);
    ASSERT_TRUE(s->reset().ok());
    EXPECT_EQ(s->position(), 0);
    EXPECT_EQ(state_abs_sum(*s), 0.0);
    EXPECT_EQ(run(*s), first);
    EXPECT_EQ(run(*session(512)), first);

    // Without the carried state the continuation would differ: decoding the last prompt token
    // in a fresh session is not the prompt's last-position logits.
    auto fresh = session(512);
    Result<std::span<const float>> alone = fresh->decode(prompt.ids.back());
    ASSERT_TRUE(alone.ok());
    const size_t vocab = static_cast<size_t>(reference().vocab);
    EXPECT_GT(relative_diff(*alone, std::span<const float>(first).subspan(0, vocab)), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Qwen35Reference, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

TEST(Qwen35Fixture, TokenizersLoadFromBothFormats) {
    const Reference& ref = fixture_reference(kDir);
    ASSERT_FALSE(ref.text_ids.empty());
    Result<Tokenizer> hf = Tokenizer::from_hf_folder(kDir);
    ASSERT_TRUE(hf.ok()) << hf.status().message();
    EXPECT_EQ(hf->algorithm(), TokenizerAlgorithm::kByteLevel);
    EXPECT_EQ(hf->encode(ref.text), ref.text_ids);
    EXPECT_EQ(hf->decode(ref.text_ids), ref.text);
    Result<GgufFile> file = GgufFile::open(kGguf);
    ASSERT_TRUE(file.ok()) << file.status().message();
    Result<Tokenizer> gguf = Tokenizer::from_gguf(*file);
    ASSERT_TRUE(gguf.ok()) << gguf.status().message();
    EXPECT_EQ(gguf->encode(ref.text), ref.text_ids);
}

TEST(Qwen35Fixture, CliRunAndInfo) {
    // Greedy: the generated tokens are transformers' greedy continuation of the text prompt,
    // decoded by the format's own tokenizer (the GGUF's vocabulary pads to 320 with [PADn]
    // tokens, which tokenizer.json does not have; this random model does emit them).
    const RefPrompt& prompt = fixture_reference(kDir).prompts[1];
    const std::vector<int32_t> first4(prompt.greedy.begin(), prompt.greedy.begin() + 4);
    Result<Tokenizer> hf = Tokenizer::from_hf_folder(kDir);
    ASSERT_TRUE(hf.ok());
    Result<GgufFile> file = GgufFile::open(kGguf);
    ASSERT_TRUE(file.ok());
    Result<Tokenizer> gguf = Tokenizer::from_gguf(*file);
    ASSERT_TRUE(gguf.ok());
    for (const std::string& model : {kDir, kGguf}) {
        const std::string expected = (model == kDir ? *hf : *gguf).decode(first4);
        testing::CommandResult run = testing::run_kestrel(
            "run -m '" + model + "' -p '" + fixture_reference(kDir).text + "' -n 4 --temp 0");
        ASSERT_TRUE(run.exited);
        EXPECT_EQ(run.exit_code, 0) << run.err;
        EXPECT_EQ(run.out, expected + "\n") << model;
        EXPECT_NE(run.err.find("multi-token-prediction"), std::string::npos) << run.err;

        testing::CommandResult info = testing::run_kestrel("info -m '" + model + "'");
        ASSERT_TRUE(info.exited);
        EXPECT_EQ(info.exit_code, 0) << info.err;
        EXPECT_NE(info.out.find("qwen35moe"), std::string::npos) << info.out;
        EXPECT_NE(info.out.find("LF LF"), std::string::npos) << info.out;
    }
}

}  // namespace
}  // namespace kestrel
