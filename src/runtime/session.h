// Session: one sequence's state over an Engine — KV cache, position, the last logits.
// Not thread-safe; use one session per thread (the Engine may be shared, one session at a time).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "kestrel/status.h"
#include "runtime/kv_cache.h"
#include "runtime/recurrent_state.h"

namespace kestrel {

class Engine;
class PrefillProgress;

class Session {
public:
    // Use Engine::new_session.
    Session(const Engine& engine, KvCache cache, int64_t context, int64_t prefill_chunk);
    // Waits for any id sample_on_device() is still copying into the session.
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Appends the tokens at the current position, prefill_chunk tokens per forward step (a prompt
    // of more than 8 chunks prints a progress line every few seconds), and
    // returns the last token's logits [vocab] (valid until the next call). kInvalidArgument for
    // an empty prompt, a token outside the vocabulary, or a prompt past the context (naming both
    // lengths); the session is unchanged then.
    Result<std::span<const float>> prefill(std::span<const int32_t> tokens);

    // Appends one token and returns its logits [vocab]. On a backend with graphs, the second
    // decode captures the step and later ones replay it (DESIGN.md "CUDA rules").
    Result<std::span<const float>> decode(int32_t token);

    // Sampling on the backend (Ops::make_sampler): the next token from the current logits (after
    // prefill or decode), which stay in backend memory; only the id comes back. The sampler has
    // accepted every earlier token; this accepts the sampled one too.
    Result<int32_t> sample(DeviceSampler& sampler);
    // Records `tokens` (host) in the sampler's history, through the staging buffer.
    Status accept(DeviceSampler& sampler, std::span<const int32_t> tokens);
    // decode() without copying the logits to the host (for sample()).
    Status decode_on_device(int32_t token);

    // Pipelined decoding with backend sampling, so that the backend never waits for the host:
    // sample_on_device() draws the next token as sample() does but only starts copying its id
    // to the host; decode_sampled_on_device() appends the last token drawn, copied within the
    // backend (the host need not know it yet); take_sampled() waits for the oldest id not yet
    // taken. A loop queues step i + 1 and its draw before it takes token i.
    Status sample_on_device(DeviceSampler& sampler);
    Status decode_sampled_on_device();
    Result<int32_t> take_sampled();
    // Whether rewind() can drop decoded tokens: not with recurrent state (Gated DeltaNet), which
    // a step changes in place.
    bool can_rewind() const { return recurrent_.views().empty(); }
    // Forgets the last n decoded tokens (a pipelined step queued past the end of a generation):
    // their cache entries are simply never attended to again.
    Status rewind(int64_t n);

    // Appends the tokens like prefill, and writes every token's logits: logits [T, vocab].
    // For perplexity and tests.
    Status forward_all_logits(std::span<const int32_t> tokens, std::vector<float>& logits);

    const Engine& engine() const { return engine_; }
    // The number of tokens in the cache (the next token's position).
    int64_t position() const { return position_; }
    int64_t context() const { return context_; }
    int64_t prefill_chunk() const { return prefill_chunk_; }
    const KvCache& kv_cache() const { return cache_; }
    const RecurrentState& recurrent_state() const { return recurrent_; }
    // Whether decode replays a captured graph now.
    bool decode_captured() const { return decode_graph_ != nullptr; }

    // Forgets every token (and zeroes the Gated DeltaNet state); the next call starts at position 0.
    Status reset() {
        position_ = 0;
        KESTREL_RETURN_IF_ERROR(drop_pending());
        return recurrent_.reset();
    }

    // Sees the named intermediates of every later forward (null: none). Decode runs eagerly
    // while a hook is set, so that every step is seen.
    void set_debug_hook(const DebugHook* hook) { debug_ = hook; }

    // Use graphs for decode where the backend has them (default on).
    void set_decode_graphs(bool enabled) { graphs_enabled_ = enabled; }

private:
    friend class Engine;  // new_session allocates the staging buffers

    Status check(std::span<const int32_t> tokens) const;
    // Whether n more tokens fit the context (check's first half; the error names both lengths).
    Status check_room(int64_t n) const;
    // Stages the tokens and their positions in backend memory.
    Status stage(std::span<const int32_t> tokens);
    // Runs the staged tokens as one forward step at the current position, logits into backend memory.
    Status step(int64_t n_tokens, LogitRows rows, std::span<float> backend_logits);
    // The staged token's decode step: eager, captured, or replayed (decode_on_device's tail).
    Status run_decode_step();
    // Waits for the ids sample_on_device() started and forgets them.
    Status drop_pending();
    // The staging buffers and the recurrent state, in backend memory.
    Status allocate_staging();
    // A long prefill's progress line after done_tokens (runtime/prefill_progress.h).
    Status note_progress(PrefillProgress& progress, int64_t done_tokens);

    const Engine& engine_;
    KvCache cache_;
    RecurrentState recurrent_;  // Gated DeltaNet conv + delta-rule state (empty for attention-only models)
    int64_t context_;
    int64_t prefill_chunk_;
    int64_t position_ = 0;
    std::vector<float> logits_;       // [vocab], the last token's, on the host
    std::vector<int64_t> positions_;  // host scratch
    // Backend memory at fixed addresses (a captured decode reads them): the staged token ids and
    // positions [prefill_chunk], the last token's logits [vocab], and (on demand) all-logits rows.
    Buffer tokens_;
    Buffer positions_backend_;
    Buffer logits_backend_;
    Buffer all_logits_backend_;
    Buffer sampled_;  // [1] int32: sample()'s token
    // [context] int64 0, 1, ...: decode_sampled_on_device stages a position from here by a copy
    // within the backend (a host copy could wait for the queued steps).
    Buffer position_sequence_;
    // Ids sample_on_device() started copying to the host, oldest first (stable addresses).
    struct PendingToken {
        int32_t id = -1;
        int64_t ticket = -1;
    };
    std::deque<PendingToken> pending_;
    std::unique_ptr<CapturedStep> decode_graph_;
    int64_t eager_decodes_ = 0;
    bool graphs_enabled_ = true;
    bool graph_failed_ = false;
    const DebugHook* debug_ = nullptr;
};

}  // namespace kestrel
