// The progress line of a long prefill (issue 8: prompts up to 128k tokens take tens of seconds):
// tokens done, share and speed, on stderr every few seconds, so a long wait is never silent.
// Prompts of at most kQuietChunks chunks say nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string_view>

namespace kestrel {

class PrefillProgress {
public:
    static constexpr int64_t kQuietChunks = 8;
    static constexpr double kIntervalSeconds = 3.0;

    using Sink = std::function<void(std::string_view line)>;
    // `sink` gets each line (default: log_info). interval_seconds: the least time between lines.
    PrefillProgress(int64_t total_tokens, int64_t chunk_tokens, Sink sink = {},
                    double interval_seconds = kIntervalSeconds);

    // Whether a line is due after `done_tokens` (so that the caller waits for the device before
    // reporting, and only then).
    bool due(int64_t done_tokens) const;
    // Reports done_tokens when due; the last chunk closes with the total time, if any line was
    // printed before.
    void report(int64_t done_tokens);

private:
    using Clock = std::chrono::steady_clock;
    double elapsed() const;

    int64_t total_;
    bool enabled_;
    Sink sink_;
    double interval_;
    Clock::time_point start_ = Clock::now();
    double last_ = 0.0;
    bool reported_ = false;
};

}  // namespace kestrel
