#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace kestrel {

namespace {

// -log softmax(logits)[target], in double: log(sum exp(l - max)) + max - l[target].
double negative_log_likelihood(std::span<const float> logits, int32_t target) {
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (float l : logits) sum += std::exp(static_cast<double>(l) - max_logit);
    return std::log(sum) + max_logit - static_cast<double>(logits[static_cast<size_t>(target)]);
}

}  // namespace

Result<PerplexityResult> perplexity(Session& session, std::span<const int32_t> tokens, int64_t ctx, int32_t bos) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (ctx < 4 || ctx > session.context() || n < ctx) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("perplexity needs 4 <= ctx <= context ({}) and at least ctx tokens; got ctx {} "
                                  "and {} tokens",
                                  session.context(), ctx, n));
    }
    PerplexityResult result;
    result.n_chunks = n / ctx;
    const int64_t first = ctx / 2;
    std::vector<int32_t> chunk(static_cast<size_t>(ctx));
    std::vector<float> logits;  // [ctx - first, vocab]
    for (int64_t c = 0; c < result.n_chunks; ++c) {
        std::copy_n(tokens.begin() + c * ctx, ctx, chunk.begin());
        chunk[0] = bos;
        KESTREL_RETURN_IF_ERROR(session.reset());
        // The first half only conditions the second: no logits are needed for it.
        KESTREL_RETURN_IF_ERROR(session.prefill(std::span(chunk).first(static_cast<size_t>(first))).status());
        KESTREL_RETURN_IF_ERROR(session.forward_all_logits(std::span(chunk).subspan(static_cast<size_t>(first)), logits));
        const size_t vocab = logits.size() / static_cast<size_t>(ctx - first);
        for (int64_t j = first; j < ctx - 1; ++j) {
            std::span<const float> row(logits.data() + static_cast<size_t>(j - first) * vocab, vocab);
            result.nll += negative_log_likelihood(row, chunk[static_cast<size_t>(j + 1)]);
            ++result.n_scored;
        }
    }
    result.perplexity = std::exp(result.nll / static_cast<double>(result.n_scored));
    return result;
}

}  // namespace kestrel
