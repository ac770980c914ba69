// Perplexity as llama.cpp's `llama-perplexity` defines it, so our numbers compare with theirs.
#pragma once

#include <cstdint>
#include <span>

#include "kestrel/status.h"
#include "runtime/session.h"

namespace kestrel {

struct PerplexityResult {
    double perplexity = 0.0;  // exp(mean negative log-likelihood)
    double nll = 0.0;         // summed negative log-likelihood (nats)
    int64_t n_chunks = 0;
    int64_t n_scored = 0;     // predictions scored
};

// llama.cpp tools/perplexity: `tokens` (BOS first, as tokenized with add_bos) are cut into
// floor(n / ctx) non-overlapping chunks of ctx tokens; each chunk runs from an empty cache with
// its first token replaced by `bos`, and only its second half is scored: the logits at
// j in [ctx/2, ctx - 1) predict token j + 1. Resets `session` before every chunk (and leaves it
// holding the last chunk). kInvalidArgument when ctx < 4, ctx exceeds the session's context,
// or there are fewer than ctx tokens.
Result<PerplexityResult> perplexity(Session& session, std::span<const int32_t> tokens, int64_t ctx, int32_t bos);

}  // namespace kestrel
