// Session: one sequence's state over an Engine — KV cache, position, the last logits.
// Not thread-safe; use one session per thread (the Engine may be shared).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kestrel/status.h"
#include "runtime/kv_cache.h"
#include "runtime/recurrent_state.h"

namespace kestrel {

class Engine;

class Session {
public:
    Session(const Engine& engine, KvCache cache, int64_t context, int64_t prefill_chunk);

    // Appends the tokens at the current position, prefill_chunk tokens per forward step, and
    // returns the last token's logits [vocab] (valid until the next call). kInvalidArgument for
    // an empty prompt, a token outside the vocabulary, or a prompt past the context (naming both
    // lengths); the session is unchanged then.
    Result<std::span<const float>> prefill(std::span<const int32_t> tokens);

    // Appends one token and returns its logits [vocab].
    Result<std::span<const float>> decode(int32_t token);

    // Appends the tokens like prefill, and writes every token's logits: logits [T, vocab].
    // For perplexity and tests.
    Status forward_all_logits(std::span<const int32_t> tokens, std::vector<float>& logits);

    // The number of tokens in the cache (the next token's position).
    int64_t position() const { return position_; }
    int64_t context() const { return context_; }
    int64_t prefill_chunk() const { return prefill_chunk_; }
    const KvCache& kv_cache() const { return cache_; }
    const RecurrentState& recurrent_state() const { return recurrent_; }

    // Forgets every token (and zeroes the Gated DeltaNet state); the next call starts at position 0.
    void reset() {
        position_ = 0;
        recurrent_.reset();
    }

    // Sees the named intermediates of every later forward (null: none).
    void set_debug_hook(const DebugHook* hook) { debug_ = hook; }

private:
    Status check(std::span<const int32_t> tokens) const;
    // Runs the tokens as one forward step at the current position.
    Status step(std::span<const int32_t> tokens, LogitRows rows, std::span<float> logits);

    const Engine& engine_;
    KvCache cache_;
    RecurrentState recurrent_;  // Gated DeltaNet conv + delta-rule state (empty for attention-only models)
    int64_t context_;
    int64_t prefill_chunk_;
    int64_t position_ = 0;
    std::vector<float> logits_;      // [vocab], the last token's
    std::vector<int64_t> positions_; // scratch
    const DebugHook* debug_ = nullptr;
};

}  // namespace kestrel
