// Picks the next token from logits. The chain and the flag names follow llama.cpp, which users
// know (--temp --top-k --top-p --min-p --repeat-penalty --presence-penalty --frequency-penalty -s):
//   penalties -> top-k -> top-p -> min-p -> temperature -> draw
// temperature <= 0 is greedy (argmax, lowest id on ties). A given seed gives the same tokens on
// every machine: the generator and the uniform draw are ours, not the standard library's
// implementation-defined distributions.
#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

#include "kestrel/status.h"

namespace kestrel {

struct SamplingParams {
    float temperature = 0.8f;
    int32_t top_k = 40;           // <= 0: off
    float top_p = 0.95f;          // >= 1: off
    float min_p = 0.05f;          // <= 0: off; relative to the most likely token
    float repeat_penalty = 1.0f;  // 1: off. CTRL (Keskar et al. 2019): logit / p if > 0, else * p
    int32_t repeat_last_n = 64;   // tokens the penalties look back over; 0: off, -1: all
    float presence_penalty = 0.0f;   // OpenAI: logit -= presence * [count > 0]
    float frequency_penalty = 0.0f;  // OpenAI: logit -= frequency * count
    uint64_t seed = 0;
};

// One line naming the first out-of-range parameter, or ok.
Status validate(const SamplingParams& params);

class Sampler {
public:
    explicit Sampler(const SamplingParams& params);

    // Samples from `logits` [vocab] given the tokens accepted so far; does not accept the result.
    int32_t sample(std::span<const float> logits);
    // Records a token (prompt or generated) for the penalties.
    void accept(int32_t token);
    void reset();

    const SamplingParams& params() const { return params_; }

private:
    struct Candidate {
        int32_t id;
        float logit;
        float probability;
    };

    void apply_penalties(std::vector<Candidate>& candidates) const;
    double uniform();  // [0, 1) with 53 random bits

    SamplingParams params_;
    std::mt19937_64 rng_;
    std::deque<int32_t> history_;  // the last repeat_last_n accepted tokens
    std::vector<Candidate> candidates_;
};

// The most likely token, lowest id on ties. Exposed for greedy callers and tests.
int32_t argmax(std::span<const float> logits);

}  // namespace kestrel
