// Session's pipelined decoding (sample_on_device, decode_sampled_on_device, take_sampled) on the
// CPU backend, with a greedy DeviceSampler over its (host) memory: the token a step consumes and
// its position are staged within the backend, never by the host, so a loop that queues step
// i + 1 before it takes token i must decode exactly what the plain loop (decode, then argmax of
// the host logits) decodes. rewind() drops queued steps where the model has no recurrent state.
#include <gtest/gtest.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "runtime/session.h"

namespace kestrel {
namespace {

const std::string kTinyGemma4 =
    std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/gemma4_tiny/model.gguf";

// Greedy over logits in CPU-backend memory, which is host memory.
class HostGreedySampler final : public DeviceSampler {
public:
    explicit HostGreedySampler(int64_t vocab) : vocab_(vocab) {}
    Status sample(const float* logits, int32_t* token) override {
        *token = argmax(std::span<const float>(logits, static_cast<size_t>(vocab_)));
        return ok_status();
    }
    Status accept(const int32_t* tokens, int64_t count) override {
        accepted_ += count;
        (void)tokens;
        return ok_status();
    }
    int64_t accepted() const { return accepted_; }

private:
    int64_t vocab_;
    int64_t accepted_ = 0;
};

std::unique_ptr<Engine> load_tiny_gemma4() {
    EngineOptions options;
    options.model = kTinyGemma4;
    options.device = Device::kCpu;
    Result<std::unique_ptr<Engine>> engine = Engine::load(options);
    EXPECT_TRUE(engine.ok()) << engine.status().message();
    return engine.ok() ? std::move(*engine) : nullptr;
}

TEST(SessionPipeline, QueuedStepsDecodeWhatThePlainLoopDecodes) {
    std::unique_ptr<Engine> engine = load_tiny_gemma4();
    ASSERT_TRUE(engine);
    const std::vector<int32_t> prompt = {2, 40, 41, 42, 43, 44};
    constexpr int kSteps = 12;

    auto plain = engine->new_session(64, 8);
    ASSERT_TRUE(plain.ok()) << plain.status().message();
    Result<std::span<const float>> logits = (*plain)->prefill(prompt);
    ASSERT_TRUE(logits.ok()) << logits.status().message();
    std::vector<int32_t> expected;
    int32_t token = argmax(*logits);
    for (int i = 0; i < kSteps; ++i) {
        expected.push_back(token);
        logits = (*plain)->decode(token);
        ASSERT_TRUE(logits.ok()) << logits.status().message();
        token = argmax(*logits);
    }

    auto piped = engine->new_session(64, 8);
    ASSERT_TRUE(piped.ok()) << piped.status().message();
    ASSERT_TRUE((*piped)->prefill(prompt).ok());
    HostGreedySampler sampler(engine->config().vocab_size);
    std::vector<int32_t> got;
    ASSERT_TRUE((*piped)->sample_on_device(sampler).ok());  // token 0, from the prompt
    for (int i = 0; i < kSteps; ++i) {
        ASSERT_TRUE((*piped)->decode_sampled_on_device().ok());  // appends token i
        ASSERT_TRUE((*piped)->sample_on_device(sampler).ok());   // draws token i + 1
        Result<int32_t> taken = (*piped)->take_sampled();        // token i
        ASSERT_TRUE(taken.ok()) << taken.status().message();
        got.push_back(*taken);
    }
    EXPECT_EQ(got, expected);
    EXPECT_EQ((*piped)->position(), (*plain)->position());
    Result<int32_t> next = (*piped)->take_sampled();
    ASSERT_TRUE(next.ok());
    EXPECT_EQ(*next, token);
    EXPECT_EQ(sampler.accepted(), kSteps + 1);
    EXPECT_FALSE((*piped)->take_sampled().ok()) << "nothing is left to take";
}

TEST(SessionPipeline, RewindDropsDecodedTokens) {
    std::unique_ptr<Engine> engine = load_tiny_gemma4();
    ASSERT_TRUE(engine);
    const std::vector<int32_t> prompt = {2, 40};
    auto reference = engine->new_session(64, 8);
    auto session = engine->new_session(64, 8);
    ASSERT_TRUE(reference.ok() && session.ok());
    ASSERT_TRUE((*session)->can_rewind());
    ASSERT_TRUE((*reference)->prefill(prompt).ok());
    Result<std::span<const float>> first = (*reference)->decode(41);
    ASSERT_TRUE(first.ok());
    const std::vector<float> expected(first->begin(), first->end());
    // Three tokens decoded and dropped, then the first of them again at its position: the logits
    // are the reference's, bit for bit (the dropped entries are never attended to).
    ASSERT_TRUE((*session)->prefill(prompt).ok());
    for (const int32_t token : {41, 50, 51}) ASSERT_TRUE((*session)->decode(token).ok());
    ASSERT_TRUE((*session)->rewind(3).ok());
    EXPECT_EQ((*session)->position(), 2);
    Result<std::span<const float>> again = (*session)->decode(41);
    ASSERT_TRUE(again.ok());
    ASSERT_EQ(again->size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i)
        ASSERT_EQ((*again)[i], expected[i]) << "logit " << i;
    EXPECT_FALSE((*session)->rewind(4).ok()) << "more tokens than the session holds";
}

}  // namespace
}  // namespace kestrel
