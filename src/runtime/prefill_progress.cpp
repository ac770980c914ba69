#include "runtime/prefill_progress.h"

#include <fmt/format.h>

#include "core/log.h"

namespace kestrel {

PrefillProgress::PrefillProgress(int64_t total_tokens, int64_t chunk_tokens, Sink sink,
                                 double interval_seconds)
    : total_(total_tokens),
      enabled_(chunk_tokens > 0 && total_tokens > kQuietChunks * chunk_tokens),
      sink_(sink ? std::move(sink) : Sink([](std::string_view line) { log_info("{}", line); })),
      interval_(interval_seconds) {}

double PrefillProgress::elapsed() const {
    return std::chrono::duration<double>(Clock::now() - start_).count();
}

bool PrefillProgress::due(int64_t done_tokens) const {
    if (!enabled_) return false;
    if (done_tokens >= total_) return reported_;
    return elapsed() - last_ >= interval_;
}

void PrefillProgress::report(int64_t done_tokens) {
    if (!due(done_tokens)) return;
    const double seconds = elapsed();
    const double speed = seconds > 0.0 ? static_cast<double>(done_tokens) / seconds : 0.0;
    if (done_tokens >= total_) {
        sink_(fmt::format("prefill: {} tokens in {:.1f} s ({:.0f} tok/s)", total_, seconds, speed));
    } else {
        sink_(fmt::format("prefill: {} of {} tokens ({:.0f}%), {:.0f} tok/s", done_tokens, total_,
                          100.0 * static_cast<double>(done_tokens) / static_cast<double>(total_),
                          speed));
    }
    last_ = seconds;
    reported_ = true;
}

}  // namespace kestrel
