// Picks the next token from logits. The chain and the flag names follow llama.cpp, which users
// know (--temp --top-k --top-p --min-p --repeat-penalty --presence-penalty --frequency-penalty -s):
//   penalties -> top-k -> top-p -> min-p -> temperature -> draw
// temperature <= 0 is greedy (argmax, lowest id on ties). A given seed gives the same tokens on
// every machine: the generator and the uniform draw are ours, not the standard library's
// implementation-defined distributions.
//
// The draws are counter-based, so that the GPU sampler (ops/cuda/sampling.h) can compute the same
// ones from a step counter in device memory: the draw after `step` earlier draws of a sampler
// seeded with `seed` is
//   u = (splitmix64(seed + step * 0x9E3779B97F4A7C15) >> 11) * 2^-53   in [0, 1),
// where splitmix64(s) is the output of Vigna's SplitMix64 from state s (add the golden gamma, then
// mix): the draws are the SplitMix64 stream seeded with `seed`. Only the temperature > 0 path
// draws, once per sample() call; reset() restarts the count.
#pragma once

#include <cstdint>
#include <deque>
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

// SplitMix64's output from state s: z = s + 0x9E3779B97F4A7C15, then its two xor-shift-multiply rounds.
uint64_t splitmix64(uint64_t state);
// The sampler's draw number `step` (0-based) for `seed`, as defined above.
double sampling_uniform(uint64_t seed, uint64_t step);

class Sampler {
public:
    explicit Sampler(const SamplingParams& params);

    // Samples from `logits` [vocab] given the tokens accepted so far; does not accept the result.
    int32_t sample(std::span<const float> logits);
    // Records a token (prompt or generated) for the penalties.
    void accept(int32_t token);
    void reset();

    const SamplingParams& params() const { return params_; }
    // No token accepted and nothing drawn yet: a device sampler (Ops::make_sampler) started now
    // draws what this one would.
    bool fresh() const { return draws_ == 0 && history_.empty(); }
    // Counts `n` draws made by a device sampler in this sampler's place (accept() the tokens too).
    void advance_draws(uint64_t n) { draws_ += n; }

private:
    struct Candidate {
        int32_t id;
        float logit;
        float probability;
    };

    void apply_penalties(std::vector<Candidate>& candidates) const;
    double uniform();  // sampling_uniform(seed, draws_), then counts the draw

    SamplingParams params_;
    uint64_t draws_ = 0;  // draws so far: the step of the next one
    std::deque<int32_t> history_;  // the last repeat_last_n accepted tokens
    std::vector<Candidate> candidates_;
};

// The most likely token, lowest id on ties. Exposed for greedy callers and tests.
int32_t argmax(std::span<const float> logits);

}  // namespace kestrel
