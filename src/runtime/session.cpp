#include "runtime/session.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/log.h"
#include "runtime/engine.h"
#include "runtime/prefill_progress.h"

namespace kestrel {

Session::Session(const Engine& engine, KvCache cache, int64_t context, int64_t prefill_chunk)
    : engine_(engine),
      cache_(std::move(cache)),
      context_(context),
      prefill_chunk_(prefill_chunk),
      logits_(static_cast<size_t>(engine.config().vocab_size)) {}

Session::~Session() {
    (void)drop_pending();
}

Status Session::drop_pending() {
    Status first = ok_status();
    while (!pending_.empty()) {
        const Status waited = engine_.ops().wait_host_copy(pending_.front().ticket);
        if (first.ok()) first = waited;
        pending_.pop_front();
    }
    return first;
}

Status Session::allocate_staging() {
    Ops& ops = engine_.ops();
    KESTREL_ASSIGN_OR_RETURN(tokens_, ops.allocate(static_cast<size_t>(prefill_chunk_) * sizeof(int32_t)));
    KESTREL_ASSIGN_OR_RETURN(positions_backend_, ops.allocate(static_cast<size_t>(prefill_chunk_) * sizeof(int64_t)));
    KESTREL_ASSIGN_OR_RETURN(logits_backend_, ops.allocate(logits_.size() * sizeof(float)));
    KESTREL_ASSIGN_OR_RETURN(sampled_, ops.allocate(sizeof(int32_t)));
    KESTREL_ASSIGN_OR_RETURN(position_sequence_,
                             ops.allocate(static_cast<size_t>(context_) * sizeof(int64_t)));
    std::vector<int64_t> sequence(static_cast<size_t>(context_));
    for (size_t i = 0; i < sequence.size(); ++i) sequence[i] = static_cast<int64_t>(i);
    KESTREL_RETURN_IF_ERROR(ops.copy_to_backend(position_sequence_.data(), sequence.data(),
                                                sequence.size() * sizeof(int64_t)));
    KESTREL_RETURN_IF_ERROR(ops.synchronize());  // `sequence` is freed on return
    KESTREL_ASSIGN_OR_RETURN(recurrent_,
                             RecurrentState::create(ops, engine_.model().recurrent_layout()));
    return ok_status();
}

Status Session::check_room(int64_t n) const {
    if (position_ + n <= context_) return ok_status();
    return Status(StatusCode::kInvalidArgument,
                  position_ == 0
                      ? fmt::format("the prompt is {} tokens, longer than the context of {} tokens",
                                    n, context_)
                      : fmt::format("{} more tokens after {} exceed the context of {} tokens", n,
                                    position_, context_));
}

Status Session::check(std::span<const int32_t> tokens) const {
    if (tokens.empty()) return Status(StatusCode::kInvalidArgument, "no tokens to run (an empty prompt)");
    KESTREL_RETURN_IF_ERROR(check_room(static_cast<int64_t>(tokens.size())));
    const int64_t vocab = engine_.config().vocab_size;
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= vocab) {
            return Status(StatusCode::kInvalidArgument,
                          fmt::format("token {} at index {} is outside the vocabulary [0, {})", tokens[i], i, vocab));
        }
    }
    return ok_status();
}

Status Session::stage(std::span<const int32_t> tokens) {
    Ops& ops = engine_.ops();
    positions_.resize(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) positions_[i] = position_ + static_cast<int64_t>(i);
    KESTREL_RETURN_IF_ERROR(ops.copy_to_backend(tokens_.data(), tokens.data(), tokens.size_bytes()));
    return ops.copy_to_backend(positions_backend_.data(), positions_.data(), positions_.size() * sizeof(int64_t));
}

Status Session::step(int64_t n_tokens, LogitRows rows, std::span<float> backend_logits) {
    const auto count = static_cast<size_t>(n_tokens);
    const Batch batch{std::span<const int32_t>(static_cast<const int32_t*>(tokens_.data()), count),
                      std::span<const int64_t>(static_cast<const int64_t*>(positions_backend_.data()), count),
                      recurrent_.views()};
    ForwardOptions options;
    options.logits = rows;
    options.debug = debug_;
    KESTREL_RETURN_IF_ERROR(engine_.model().forward(engine_.ops(), batch, cache_.views(), options, backend_logits));
    position_ += n_tokens;
    return ok_status();
}

Status Session::note_progress(PrefillProgress& progress, int64_t done_tokens) {
    if (!progress.due(done_tokens)) return ok_status();
    // The device may run behind the host: wait for it, so the line says what is done.
    KESTREL_RETURN_IF_ERROR(engine_.ops().synchronize());
    progress.report(done_tokens);
    return ok_status();
}

Result<std::span<const float>> Session::prefill(std::span<const int32_t> tokens) {
    KESTREL_RETURN_IF_ERROR(check(tokens));
    Ops& ops = engine_.ops();
    std::span<float> backend_logits(logits_backend_.floats(), logits_.size());
    // Chunks of at most prefill_chunk tokens: the sliding rings were sized for that.
    PrefillProgress progress(static_cast<int64_t>(tokens.size()), prefill_chunk_);
    for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(prefill_chunk_)) {
        const size_t count = std::min(tokens.size() - begin, static_cast<size_t>(prefill_chunk_));
        const bool last = begin + count == tokens.size();
        KESTREL_RETURN_IF_ERROR(stage(tokens.subspan(begin, count)));
        KESTREL_RETURN_IF_ERROR(step(static_cast<int64_t>(count), last ? LogitRows::kLast : LogitRows::kNone,
                                     last ? backend_logits : std::span<float>()));
        KESTREL_RETURN_IF_ERROR(note_progress(progress, static_cast<int64_t>(begin + count)));
    }
    KESTREL_RETURN_IF_ERROR(ops.copy_to_host(logits_.data(), logits_backend_.data(), logits_.size() * sizeof(float)));
    KESTREL_RETURN_IF_ERROR(ops.synchronize());
    return std::span<const float>(logits_);
}

Result<std::span<const float>> Session::decode(int32_t token) {
    KESTREL_RETURN_IF_ERROR(decode_on_device(token));
    Ops& ops = engine_.ops();
    KESTREL_RETURN_IF_ERROR(ops.copy_to_host(logits_.data(), logits_backend_.data(), logits_.size() * sizeof(float)));
    KESTREL_RETURN_IF_ERROR(ops.synchronize());
    return std::span<const float>(logits_);
}

Status Session::decode_on_device(int32_t token) {
    const int32_t one[1] = {token};
    KESTREL_RETURN_IF_ERROR(check(one));
    KESTREL_RETURN_IF_ERROR(stage(one));
    return run_decode_step();
}

Status Session::decode_sampled_on_device() {
    KESTREL_RETURN_IF_ERROR(check_room(1));
    Ops& ops = engine_.ops();
    KESTREL_RETURN_IF_ERROR(ops.copy_within(tokens_.data(), sampled_.data(), sizeof(int32_t)));
    KESTREL_RETURN_IF_ERROR(ops.copy_within(
        positions_backend_.data(),
        static_cast<const int64_t*>(position_sequence_.data()) + position_, sizeof(int64_t)));
    positions_.assign(1, position_);
    return run_decode_step();
}

Status Session::run_decode_step() {
    Ops& ops = engine_.ops();
    std::span<float> backend_logits(logits_backend_.floats(), logits_.size());
    if (decode_graph_ != nullptr && debug_ == nullptr) {
        // The graph reads the token and position just staged; attention bounds come from the
        // position in device memory, so the same graph is right at every position.
        KESTREL_RETURN_IF_ERROR(decode_graph_->replay());
        position_ += 1;
    } else if (graphs_enabled_ && !graph_failed_ && debug_ == nullptr && eager_decodes_ > 0) {
        // The first decode ran eagerly and sized every buffer; this one is recorded (and run).
        const int64_t position_before = position_;
        Result<std::unique_ptr<CapturedStep>> captured =
            ops.capture([&]() { return step(1, LogitRows::kLast, backend_logits); });
        if (!captured.ok()) return captured.status();
        decode_graph_ = std::move(*captured);
        if (decode_graph_ == nullptr) {
            // A backend without graphs: run the step eagerly, now and from here on.
            graph_failed_ = true;
            position_ = position_before;
            KESTREL_RETURN_IF_ERROR(step(1, LogitRows::kLast, backend_logits));
        } else {
            log_info("decode step captured as a graph ({} backend)", ops.name());
            position_ = position_before + 1;
        }
    } else {
        KESTREL_RETURN_IF_ERROR(step(1, LogitRows::kLast, backend_logits));
        ++eager_decodes_;
    }
    return ops.take_error();
}

Result<int32_t> Session::sample(DeviceSampler& sampler) {
    Ops& ops = engine_.ops();
    auto* token = static_cast<int32_t*>(sampled_.data());
    KESTREL_RETURN_IF_ERROR(sampler.sample(logits_backend_.floats(), token));
    KESTREL_RETURN_IF_ERROR(sampler.accept(token, 1));
    int32_t host = -1;
    KESTREL_RETURN_IF_ERROR(ops.copy_to_host(&host, token, sizeof(host)));
    KESTREL_RETURN_IF_ERROR(ops.synchronize());
    return host;
}

Status Session::sample_on_device(DeviceSampler& sampler) {
    Ops& ops = engine_.ops();
    auto* token = static_cast<int32_t*>(sampled_.data());
    KESTREL_RETURN_IF_ERROR(sampler.sample(logits_backend_.floats(), token));
    KESTREL_RETURN_IF_ERROR(sampler.accept(token, 1));
    PendingToken& pending = pending_.emplace_back();
    Result<int64_t> ticket = ops.copy_to_host_async(&pending.id, token, sizeof(int32_t));
    if (!ticket.ok()) {
        pending_.pop_back();
        return ticket.status();
    }
    pending.ticket = *ticket;
    return ok_status();
}

Result<int32_t> Session::take_sampled() {
    if (pending_.empty())
        return Status(StatusCode::kInternal, "take_sampled: no token was sampled");
    KESTREL_RETURN_IF_ERROR(engine_.ops().wait_host_copy(pending_.front().ticket));
    const int32_t id = pending_.front().id;
    pending_.pop_front();
    KESTREL_RETURN_IF_ERROR(engine_.ops().take_error());
    return id;
}

Status Session::rewind(int64_t n) {
    if (!can_rewind()) {
        return Status(StatusCode::kUnsupported,
                      "a session with recurrent state cannot drop decoded tokens");
    }
    if (n < 0 || n > position_) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("cannot drop {} of {} tokens", n, position_));
    }
    position_ -= n;
    return ok_status();
}

Status Session::accept(DeviceSampler& sampler, std::span<const int32_t> tokens) {
    Ops& ops = engine_.ops();
    for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(prefill_chunk_)) {
        const size_t count = std::min(tokens.size() - begin, static_cast<size_t>(prefill_chunk_));
        KESTREL_RETURN_IF_ERROR(ops.copy_to_backend(tokens_.data(), tokens.data() + begin, count * sizeof(int32_t)));
        KESTREL_RETURN_IF_ERROR(sampler.accept(static_cast<const int32_t*>(tokens_.data()), static_cast<int64_t>(count)));
    }
    return ops.synchronize();
}

Status Session::forward_all_logits(std::span<const int32_t> tokens, std::vector<float>& logits) {
    KESTREL_RETURN_IF_ERROR(check(tokens));
    Ops& ops = engine_.ops();
    const int64_t vocab = engine_.config().vocab_size;
    logits.resize(tokens.size() * static_cast<size_t>(vocab));
    const size_t chunk_floats =
        std::min(tokens.size(), static_cast<size_t>(prefill_chunk_)) * static_cast<size_t>(vocab);
    if (all_logits_backend_.bytes() < chunk_floats * sizeof(float)) {
        KESTREL_ASSIGN_OR_RETURN(all_logits_backend_, ops.allocate(chunk_floats * sizeof(float)));
    }
    PrefillProgress progress(static_cast<int64_t>(tokens.size()), prefill_chunk_);
    for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(prefill_chunk_)) {
        const size_t count = std::min(tokens.size() - begin, static_cast<size_t>(prefill_chunk_));
        const size_t floats = count * static_cast<size_t>(vocab);
        KESTREL_RETURN_IF_ERROR(stage(tokens.subspan(begin, count)));
        KESTREL_RETURN_IF_ERROR(step(static_cast<int64_t>(count), LogitRows::kAll,
                                     std::span<float>(all_logits_backend_.floats(), floats)));
        KESTREL_RETURN_IF_ERROR(ops.copy_to_host(logits.data() + begin * static_cast<size_t>(vocab),
                                                 all_logits_backend_.data(), floats * sizeof(float)));
        KESTREL_RETURN_IF_ERROR(note_progress(progress, static_cast<int64_t>(begin + count)));
    }
    KESTREL_RETURN_IF_ERROR(ops.synchronize());
    // The last token's logits are also the session's current ones.
    std::copy(logits.end() - vocab, logits.end(), logits_.begin());
    return ok_status();
}

}  // namespace kestrel
