// Logging to stderr. Levels, and `log_once` for "this fast path cannot run" notices that must
// be said exactly once, never silently.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace kestrel {

enum class LogLevel { kDebug, kInfo, kWarning, kError, kQuiet };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, std::string_view message);
// Logs `message` the first time `key` is seen in this process.
void log_once(LogLevel level, std::string_view key, std::string_view message);

template <class... Args>
void log_info(fmt::format_string<Args...> format, Args&&... args) {
    if (log_level() <= LogLevel::kInfo)
        log_message(LogLevel::kInfo, fmt::format(format, std::forward<Args>(args)...));
}

template <class... Args>
void log_warning(fmt::format_string<Args...> format, Args&&... args) {
    if (log_level() <= LogLevel::kWarning)
        log_message(LogLevel::kWarning, fmt::format(format, std::forward<Args>(args)...));
}

template <class... Args>
void log_debug(fmt::format_string<Args...> format, Args&&... args) {
    if (log_level() <= LogLevel::kDebug)
        log_message(LogLevel::kDebug, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace kestrel
