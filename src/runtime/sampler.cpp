#include "runtime/sampler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace kestrel {

Status validate(const SamplingParams& p) {
    const auto bad = [](std::string what) { return Status(StatusCode::kInvalidArgument, std::move(what)); };
    if (!std::isfinite(p.temperature) || p.temperature < 0) {
        return bad(fmt::format("--temp {}: the temperature must be 0 (greedy) or positive", p.temperature));
    }
    if (!(p.top_p > 0 && p.top_p <= 1)) return bad(fmt::format("--top-p {}: expected a value in (0, 1]", p.top_p));
    if (!(p.min_p >= 0 && p.min_p <= 1)) return bad(fmt::format("--min-p {}: expected a value in [0, 1]", p.min_p));
    if (!(p.repeat_penalty > 0) || !std::isfinite(p.repeat_penalty)) {
        return bad(fmt::format("--repeat-penalty {}: expected a positive value (1 = off)", p.repeat_penalty));
    }
    if (p.repeat_last_n < -1) return bad(fmt::format("--repeat-last-n {}: expected -1, 0 or more", p.repeat_last_n));
    if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty)) {
        return bad("presence and frequency penalties must be finite");
    }
    return ok_status();
}

int32_t argmax(std::span<const float> logits) {
    int32_t best = 0;
    for (size_t i = 1; i < logits.size(); ++i) {
        if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
    }
    return best;
}

uint64_t splitmix64(uint64_t state) {
    uint64_t z = state + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double sampling_uniform(uint64_t seed, uint64_t step) {
    return static_cast<double>(splitmix64(seed + step * 0x9E3779B97F4A7C15ull) >> 11) * 0x1.0p-53;
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {}

void Sampler::reset() {
    draws_ = 0;
    history_.clear();
}

void Sampler::accept(int32_t token) {
    if (params_.repeat_last_n == 0) return;
    history_.push_back(token);
    if (params_.repeat_last_n > 0 && history_.size() > static_cast<size_t>(params_.repeat_last_n)) history_.pop_front();
}

double Sampler::uniform() { return sampling_uniform(params_.seed, draws_++); }

void Sampler::apply_penalties(std::vector<Candidate>& candidates) const {
    if (history_.empty()) return;
    const bool repeat = params_.repeat_penalty != 1.0f;
    if (!repeat && params_.presence_penalty == 0.0f && params_.frequency_penalty == 0.0f) return;
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t token : history_) ++counts[token];
    for (const auto& [token, count] : counts) {
        if (token < 0 || static_cast<size_t>(token) >= candidates.size()) continue;
        float& logit = candidates[token].logit;  // candidates are still indexed by id here
        if (repeat) logit = logit > 0 ? logit / params_.repeat_penalty : logit * params_.repeat_penalty;
        logit -= static_cast<float>(count) * params_.frequency_penalty + params_.presence_penalty;
    }
}

int32_t Sampler::sample(std::span<const float> logits) {
    candidates_.resize(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) candidates_[i] = {static_cast<int32_t>(i), logits[i], 0.0f};
    apply_penalties(candidates_);
    if (params_.temperature <= 0.0f) {
        const auto best = std::max_element(candidates_.begin(), candidates_.end(), [](const Candidate& a, const Candidate& b) {
            return a.logit < b.logit || (a.logit == b.logit && a.id > b.id);
        });
        return best->id;
    }

    // Sorted by logit (ties: lower id first) so every filter below is a prefix cut.
    const auto by_logit = [](const Candidate& a, const Candidate& b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };
    size_t keep = candidates_.size();
    if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
        keep = static_cast<size_t>(params_.top_k);
        std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
    } else {
        std::sort(candidates_.begin(), candidates_.end(), by_logit);
    }
    candidates_.resize(keep);

    // Softmax at temperature 1 for the top-p and min-p cuts (llama.cpp applies temperature last).
    const auto softmax = [&](float temperature) {
        const float max_logit = candidates_.front().logit;
        double total = 0;
        for (Candidate& c : candidates_) {
            c.probability = std::exp((c.logit - max_logit) / temperature);
            total += c.probability;
        }
        for (Candidate& c : candidates_) c.probability = static_cast<float>(c.probability / total);
    };
    softmax(1.0f);
    if (params_.top_p < 1.0f) {
        // Keep the smallest prefix whose probability reaches top_p (Holtzman et al. 2019).
        double cumulative = 0;
        size_t cut = candidates_.size();
        for (size_t i = 0; i < candidates_.size(); ++i) {
            cumulative += candidates_[i].probability;
            if (cumulative >= params_.top_p) {
                cut = i + 1;
                break;
            }
        }
        candidates_.resize(cut);
    }
    if (params_.min_p > 0.0f) {
        // Keep tokens at least min_p times as likely as the most likely one.
        const float threshold = candidates_.front().probability * params_.min_p;
        size_t cut = 1;
        while (cut < candidates_.size() && candidates_[cut].probability >= threshold) ++cut;
        candidates_.resize(cut);
    }
    softmax(params_.temperature);

    double draw = uniform();
    for (const Candidate& c : candidates_) {
        draw -= c.probability;
        if (draw < 0) return c.id;
    }
    return candidates_.back().id;  // rounding left a sliver of probability unassigned
}

}  // namespace kestrel
