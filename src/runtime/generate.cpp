#include "runtime/generate.h"

#include <chrono>
#include <memory>

#include "runtime/engine.h"
#include "runtime/stop_strings.h"

namespace kestrel {

const char* stop_reason_name(StopReason reason) {
    switch (reason) {
        case StopReason::kEndOfGeneration: return "end of generation";
        case StopReason::kStopString: return "stop string";
        case StopReason::kMaxTokens: return "token limit";
        case StopReason::kContextFull: return "context full";
        case StopReason::kCancelled: return "cancelled";
    }
    return "unknown";
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Result<GenerateResult> generate(Session& session, const Tokenizer& tokenizer, Sampler& sampler,
                                std::span<const int32_t> prompt, const GenerateOptions& options,
                                const TextSink& on_text) {
    GenerateResult result;
    result.prompt_tokens = static_cast<int64_t>(prompt.size());
    auto start = std::chrono::steady_clock::now();
    KESTREL_ASSIGN_OR_RETURN(std::span<const float> logits, session.prefill(prompt));
    result.prompt_seconds = seconds_since(start);
    std::unique_ptr<DeviceSampler> device;
    if (options.device_sampling && sampler.fresh()) {
        const SamplingParams& p = sampler.params();
        const SamplerSettings settings{p.temperature,    p.top_k,          p.top_p,
                                       p.min_p,          p.repeat_penalty, p.repeat_last_n,
                                       p.presence_penalty, p.frequency_penalty, p.seed};
        KESTREL_ASSIGN_OR_RETURN(device,
                                 session.engine().ops().make_sampler(session.engine().config().vocab_size, settings));
        if (device != nullptr) KESTREL_RETURN_IF_ERROR(session.accept(*device, prompt));
    }
    for (int32_t token : prompt) sampler.accept(token);
    // Pipelined: while the backend decodes token i and draws token i + 1, the host reads token i.
    const bool pipelined = device != nullptr && (options.session_ends || session.can_rewind());
    if (pipelined && options.max_tokens != 0)
        KESTREL_RETURN_IF_ERROR(session.sample_on_device(*device));
    // The next token: drawn on the backend from logits that never leave it, or on the host.
    const auto next_token = [&]() -> Result<int32_t> {
        if (device == nullptr) return sampler.sample(logits);
        KESTREL_ASSIGN_OR_RETURN(int32_t token,
                                 pipelined ? session.take_sampled() : session.sample(*device));
        if (sampler.params().temperature > 0.0f) sampler.advance_draws(1);
        return token;
    };
    // A queued step whose token ended the generation: its draw is never shown, and the token
    // leaves the cache where the session goes on.
    bool queued = false;
    const auto drop_queued = [&]() -> Status {
        if (!queued) return ok_status();
        KESTREL_RETURN_IF_ERROR(session.take_sampled().status());
        return session.can_rewind() ? session.rewind(1) : ok_status();
    };

    TokenStreamDecoder decoder(tokenizer, /*skip_special=*/true);
    StopStringFilter stops(options.stop_strings);
    const auto emit = [&](const std::string& text) {
        if (text.empty()) return true;
        result.text += text;
        return on_text ? on_text(text) : true;
    };

    start = std::chrono::steady_clock::now();
    result.stop_reason = StopReason::kMaxTokens;
    while (options.max_tokens < 0 || static_cast<int64_t>(result.tokens.size()) < options.max_tokens) {
        // Pipelined, the step that appends this token is queued before it is read, exactly when
        // the plain loop below would run it should the token not end the generation.
        queued = false;
        if (pipelined &&
            (options.max_tokens < 0 ||
             static_cast<int64_t>(result.tokens.size()) + 1 < options.max_tokens) &&
            session.position() < session.context()) {
            KESTREL_RETURN_IF_ERROR(session.decode_sampled_on_device());
            KESTREL_RETURN_IF_ERROR(session.sample_on_device(*device));
            queued = true;
        }
        KESTREL_ASSIGN_OR_RETURN(const int32_t token, next_token());
        sampler.accept(token);
        result.tokens.push_back(token);
        if (tokenizer.is_end_of_generation(token)) {
            result.stop_reason = StopReason::kEndOfGeneration;
            KESTREL_RETURN_IF_ERROR(drop_queued());
            break;
        }
        if (!emit(stops.push(decoder.push(token)))) {
            result.stop_reason = StopReason::kCancelled;
            KESTREL_RETURN_IF_ERROR(drop_queued());
            break;
        }
        if (stops.stopped()) {
            result.stop_reason = StopReason::kStopString;
            KESTREL_RETURN_IF_ERROR(drop_queued());
            break;
        }
        // The sampled token is shown; it needs a cache slot only if another one follows.
        const bool budget_left = options.max_tokens < 0 || static_cast<int64_t>(result.tokens.size()) < options.max_tokens;
        if (!budget_left) break;
        if (!queued && session.position() >= session.context()) {
            result.stop_reason = StopReason::kContextFull;
            break;
        }
        if (!queued) {
            if (device != nullptr) {
                KESTREL_RETURN_IF_ERROR(session.decode_on_device(token));
            } else {
                KESTREL_ASSIGN_OR_RETURN(logits, session.decode(token));
            }
        }
        ++result.generated_tokens;
    }
    if (result.stop_reason != StopReason::kStopString && result.stop_reason != StopReason::kCancelled) {
        emit(stops.push(decoder.flush()));
        emit(stops.flush());
    }
    result.generate_seconds = seconds_since(start);
    return result;
}

}  // namespace kestrel
