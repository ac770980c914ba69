// The sampler against the definitions it implements: CTRL's repetition penalty, OpenAI's
// presence/frequency penalties, top-k, nucleus (top-p, Holtzman et al.), min-p, and draws whose
// frequencies match softmax(logits / T).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "runtime/sampler.h"
#include "runtime/stop_strings.h"

namespace kestrel {
namespace {

std::vector<float> logits_for(const std::vector<double>& probabilities) {
    std::vector<float> logits;
    for (double p : probabilities) logits.push_back(static_cast<float>(std::log(p)));
    return logits;
}

std::map<int32_t, double> frequencies(Sampler& sampler, std::span<const float> logits, int draws) {
    std::map<int32_t, double> counts;
    for (int i = 0; i < draws; ++i) counts[sampler.sample(logits)] += 1.0 / draws;
    return counts;
}

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
    Sampler sampler({.temperature = 0});
    const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
    EXPECT_EQ(sampler.sample(logits), 1);
    EXPECT_EQ(argmax(logits), 1);
}

TEST(Sampler, SameSeedSameTokensOtherSeedOtherTokens) {
    const std::vector<float> logits = logits_for({0.2, 0.2, 0.2, 0.2, 0.2});
    const auto draw = [&](uint64_t seed) {
        Sampler sampler({.temperature = 1, .top_k = 0, .top_p = 1, .min_p = 0, .seed = seed});
        std::vector<int32_t> tokens;
        for (int i = 0; i < 64; ++i) tokens.push_back(sampler.sample(logits));
        return tokens;
    };
    EXPECT_EQ(draw(7), draw(7));
    EXPECT_NE(draw(7), draw(8));
    Sampler sampler({.temperature = 1, .top_k = 0, .top_p = 1, .min_p = 0, .seed = 7});
    const int32_t first = sampler.sample(logits);
    sampler.reset();
    EXPECT_EQ(sampler.sample(logits), first);
}

TEST(Sampler, DrawsAreTheSplitMix64StreamOfTheSeed) {
    // SplitMix64 seeded with 1234567: its first five outputs (Vigna's splitmix64.c; Rosetta Code
    // "Pseudo-random numbers/Splitmix64").
    const uint64_t expected[] = {6457827717110365317ull, 3203168211198807973ull, 9817491932198370423ull,
                                 4593380528125082431ull, 16408922859458223821ull};
    for (uint64_t step = 0; step < 5; ++step) {
        EXPECT_EQ(splitmix64(1234567 + step * 0x9E3779B97F4A7C15ull), expected[step]);
        EXPECT_EQ(sampling_uniform(1234567, step), static_cast<double>(expected[step] >> 11) * 0x1.0p-53);
    }
    // Draw n of a sampler is sampling_uniform(seed, n): with two equally likely tokens the token is
    // 1 exactly when u >= 0.5. Greedy samples draw nothing; reset() starts over.
    const std::vector<float> two = {0.0f, 0.0f};
    Sampler sampler({.temperature = 1, .top_k = 0, .top_p = 1, .min_p = 0, .seed = 42});
    Sampler greedy({.temperature = 0, .seed = 42});
    for (uint64_t step = 0; step < 64; ++step) {
        EXPECT_EQ(greedy.sample(two), 0);
        EXPECT_EQ(sampler.sample(two), sampling_uniform(42, step) >= 0.5 ? 1 : 0) << "draw " << step;
    }
    sampler.reset();
    EXPECT_EQ(sampler.sample(two), sampling_uniform(42, 0) >= 0.5 ? 1 : 0);
}

TEST(Sampler, DrawsFollowSoftmaxAtTemperature) {
    const std::vector<float> logits = {1.0f, 0.0f, -1.0f, 0.5f};
    const float temperature = 0.7f;
    Sampler sampler({.temperature = temperature, .top_k = 0, .top_p = 1, .min_p = 0, .seed = 1});
    const std::map<int32_t, double> seen = frequencies(sampler, logits, 40000);
    double total = 0;
    for (float l : logits) total += std::exp(l / temperature);
    for (int32_t id = 0; id < 4; ++id) {
        const double expected = std::exp(logits[id] / temperature) / total;
        const double observed = seen.count(id) ? seen.at(id) : 0.0;
        EXPECT_NEAR(observed, expected, 0.01) << "token " << id;
    }
}

TEST(Sampler, TopKKeepsTheKMostLikely) {
    Sampler sampler({.temperature = 5, .top_k = 2, .top_p = 1, .min_p = 0, .seed = 3});
    const std::map<int32_t, double> seen = frequencies(sampler, logits_for({0.1, 0.4, 0.2, 0.3}), 4000);
    EXPECT_EQ(seen.size(), 2u);
    EXPECT_TRUE(seen.count(1) && seen.count(3));
    Sampler top1({.temperature = 3, .top_k = 1, .top_p = 1, .min_p = 0, .seed = 3});
    for (int i = 0; i < 100; ++i) EXPECT_EQ(top1.sample(logits_for({0.1, 0.4, 0.2, 0.3})), 1);
}

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingP) {
    // Sorted probabilities 0.5, 0.3, 0.15, 0.05: 0.5 falls short of 0.75, 0.5 + 0.3 reaches it,
    // so two tokens remain, drawn in proportion 5:3.
    Sampler sampler({.temperature = 1, .top_k = 0, .top_p = 0.75f, .min_p = 0, .seed = 5});
    const std::map<int32_t, double> seen = frequencies(sampler, logits_for({0.15, 0.5, 0.05, 0.3}), 40000);
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_NEAR(seen.at(1), 0.5 / 0.8, 0.01);
    EXPECT_NEAR(seen.at(3), 0.3 / 0.8, 0.01);
}

TEST(Sampler, MinPCutsRelativeToTheMostLikely) {
    // min_p 0.2 of the top probability 0.5 = 0.1: 0.05 goes, 0.15 stays.
    Sampler sampler({.temperature = 1, .top_k = 0, .top_p = 1, .min_p = 0.2f, .seed = 9});
    const std::map<int32_t, double> seen = frequencies(sampler, logits_for({0.15, 0.5, 0.05, 0.3}), 20000);
    EXPECT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen.count(2), 0u);
    EXPECT_NEAR(seen.at(0), 0.15 / 0.95, 0.01);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
    // CTRL: a seen token's logit l becomes l / p when l > 0 and l * p otherwise.
    Sampler sampler({.temperature = 0, .repeat_penalty = 2.0f});
    sampler.accept(0);
    EXPECT_EQ(sampler.sample(std::vector<float>{3.0f, 2.0f}), 1);   // 3 / 2 = 1.5 < 2
    Sampler negative({.temperature = 0, .repeat_penalty = 2.0f});
    negative.accept(0);
    EXPECT_EQ(negative.sample(std::vector<float>{-1.0f, -1.5f}), 1);  // -1 * 2 = -2 < -1.5
}

TEST(Sampler, PresenceAndFrequencyPenalties) {
    // OpenAI: l -= count * frequency + presence for every seen token.
    Sampler sampler({.temperature = 0, .repeat_last_n = -1, .presence_penalty = 0.5f, .frequency_penalty = 0.25f});
    sampler.accept(0);
    sampler.accept(0);
    EXPECT_EQ(sampler.sample(std::vector<float>{1.0f, 0.1f}), 1);   // 1 - 2 * 0.25 - 0.5 = 0 < 0.1
    EXPECT_EQ(sampler.sample(std::vector<float>{1.0f, -0.1f}), 0);  // 0 > -0.1
}

TEST(Sampler, PenaltyWindowForgetsOldTokens) {
    Sampler sampler({.temperature = 0, .repeat_penalty = 10.0f, .repeat_last_n = 2});
    sampler.accept(0);
    sampler.accept(1);
    sampler.accept(1);  // token 0 has left the window of 2
    EXPECT_EQ(sampler.sample(std::vector<float>{1.0f, 2.0f}), 0);
}

TEST(Sampler, ValidationNamesTheFlag) {
    EXPECT_NE(validate({.temperature = -1}).message().find("--temp -1"), std::string::npos);
    EXPECT_NE(validate({.top_p = 0}).message().find("--top-p"), std::string::npos);
    EXPECT_NE(validate({.min_p = 1.5f}).message().find("--min-p"), std::string::npos);
    EXPECT_NE(validate({.repeat_penalty = 0}).message().find("--repeat-penalty"), std::string::npos);
    EXPECT_TRUE(validate({}).ok());
}

TEST(StopStrings, HoldsBackPossiblePrefixesAndCutsAtTheStop) {
    StopStringFilter filter({"</end>", "User:"});
    EXPECT_EQ(filter.push("Hello <"), "Hello ");
    EXPECT_EQ(filter.push("/en"), "");
    EXPECT_EQ(filter.push("x"), "</enx");  // not a stop after all
    EXPECT_EQ(filter.push(" Use"), " ");
    EXPECT_EQ(filter.push("r: more"), "");
    EXPECT_TRUE(filter.stopped());
    EXPECT_EQ(filter.push("ignored"), "");
    EXPECT_EQ(filter.flush(), "");
}

TEST(StopStrings, FlushReturnsWhatWasHeld) {
    StopStringFilter filter({"STOP"});
    EXPECT_EQ(filter.push("go ST"), "go ");
    EXPECT_FALSE(filter.stopped());
    EXPECT_EQ(filter.flush(), "ST");
    StopStringFilter none({});
    EXPECT_EQ(none.push("anything"), "anything");
}

}  // namespace
}  // namespace kestrel
