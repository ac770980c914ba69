#include "runtime/session.h"

#include <algorithm>

#include <fmt/format.h>

#include "runtime/engine.h"

namespace kestrel {

Session::Session(const Engine& engine, KvCache cache, int64_t context, int64_t prefill_chunk)
    : engine_(engine),
      cache_(std::move(cache)),
      recurrent_(engine.model().recurrent_layout()),
      context_(context),
      prefill_chunk_(prefill_chunk),
      logits_(static_cast<size_t>(engine.config().vocab_size)) {}

Status Session::check(std::span<const int32_t> tokens) const {
    if (tokens.empty()) return Status(StatusCode::kInvalidArgument, "no tokens to run (an empty prompt)");
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (position_ + n > context_) {
        return Status(StatusCode::kInvalidArgument,
                      position_ == 0
                          ? fmt::format("the prompt is {} tokens, longer than the context of {} tokens", n, context_)
                          : fmt::format("{} more tokens after {} exceed the context of {} tokens", n, position_,
                                        context_));
    }
    const int64_t vocab = engine_.config().vocab_size;
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= vocab) {
            return Status(StatusCode::kInvalidArgument,
                          fmt::format("token {} at index {} is outside the vocabulary [0, {})", tokens[i], i, vocab));
        }
    }
    return ok_status();
}

Status Session::step(std::span<const int32_t> tokens, LogitRows rows, std::span<float> logits) {
    positions_.resize(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) positions_[i] = position_ + static_cast<int64_t>(i);
    const Batch batch{tokens, positions_, recurrent_.views()};
    ForwardOptions options;
    options.logits = rows;
    options.debug = debug_;
    KESTREL_RETURN_IF_ERROR(engine_.model().forward(engine_.ops(), batch, cache_.views(), options, logits));
    position_ += static_cast<int64_t>(tokens.size());
    return ok_status();
}

Result<std::span<const float>> Session::prefill(std::span<const int32_t> tokens) {
    KESTREL_RETURN_IF_ERROR(check(tokens));
    // Chunks of at most prefill_chunk tokens: the sliding rings were sized for that.
    for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(prefill_chunk_)) {
        const size_t count = std::min(tokens.size() - begin, static_cast<size_t>(prefill_chunk_));
        const bool last = begin + count == tokens.size();
        KESTREL_RETURN_IF_ERROR(step(tokens.subspan(begin, count), last ? LogitRows::kLast : LogitRows::kNone,
                                     last ? std::span<float>(logits_) : std::span<float>()));
    }
    return std::span<const float>(logits_);
}

Result<std::span<const float>> Session::decode(int32_t token) {
    const int32_t one[1] = {token};
    KESTREL_RETURN_IF_ERROR(check(one));
    KESTREL_RETURN_IF_ERROR(step(one, LogitRows::kLast, logits_));
    return std::span<const float>(logits_);
}

Status Session::forward_all_logits(std::span<const int32_t> tokens, std::vector<float>& logits) {
    KESTREL_RETURN_IF_ERROR(check(tokens));
    const int64_t vocab = engine_.config().vocab_size;
    logits.resize(tokens.size() * static_cast<size_t>(vocab));
    for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(prefill_chunk_)) {
        const size_t count = std::min(tokens.size() - begin, static_cast<size_t>(prefill_chunk_));
        std::span<float> out(logits.data() + begin * static_cast<size_t>(vocab), count * static_cast<size_t>(vocab));
        KESTREL_RETURN_IF_ERROR(step(tokens.subspan(begin, count), LogitRows::kAll, out));
    }
    // The last token's logits are also the session's current ones.
    std::copy(logits.end() - vocab, logits.end(), logits_.begin());
    return ok_status();
}

}  // namespace kestrel
