// The generation loop: prefill the prompt, then sample, decode and stream text until an
// end-of-generation token, a stop string, the token budget or the context ends it.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kestrel/status.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace kestrel {

enum class StopReason { kEndOfGeneration, kStopString, kMaxTokens, kContextFull, kCancelled };
const char* stop_reason_name(StopReason reason);

struct GenerateOptions {
    int64_t max_tokens = -1;  // -1: until end of generation or a full context
    std::vector<std::string> stop_strings;
    // Sample on the backend where it can (GPU sampling: only the token id comes back) when the
    // sampler is fresh; the tokens are the same either way.
    bool device_sampling = true;
    // The session is not used after this call (kestrel run). With backend sampling, decoding is
    // pipelined (the step for token i is queued before token i is read); a step queued for a
    // token that ends the generation is dropped afterwards (Session::rewind), which a model with
    // recurrent state cannot do: it pipelines only when the session ends here.
    bool session_ends = false;
};

struct GenerateResult {
    std::string text;                 // what was streamed, stop string excluded
    std::vector<int32_t> tokens;      // every sampled token, the end-of-generation one included
    StopReason stop_reason = StopReason::kMaxTokens;
    int64_t prompt_tokens = 0;
    double prompt_seconds = 0;
    int64_t generated_tokens = 0;     // tokens decoded after the prompt
    double generate_seconds = 0;
};

// Receives text as it becomes printable; returns false to stop generating.
using TextSink = std::function<bool(std::string_view text)>;

// Runs `prompt` (appended at the session's position) and generates. The sampler sees the prompt
// tokens (for the penalties) and every sampled token.
Result<GenerateResult> generate(Session& session, const Tokenizer& tokenizer, Sampler& sampler,
                                std::span<const int32_t> prompt, const GenerateOptions& options,
                                const TextSink& on_text);

}  // namespace kestrel
