#include "core/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <set>

namespace kestrel {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};

const char* level_prefix(LogLevel level) {
    switch (level) {
        case LogLevel::kDebug: return "debug: ";
        case LogLevel::kInfo: return "";
        case LogLevel::kWarning: return "warning: ";
        case LogLevel::kError: return "error: ";
        case LogLevel::kQuiet: return "";
    }
    return "";
}

}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

void log_message(LogLevel level, std::string_view message) {
    if (level < g_level || level == LogLevel::kQuiet) return;
    std::fprintf(stderr, "%s%.*s\n", level_prefix(level), static_cast<int>(message.size()),
                 message.data());
}

void log_once(LogLevel level, std::string_view key, std::string_view message) {
    static std::mutex mutex;
    static std::set<std::string, std::less<>> seen;
    {
        std::lock_guard lock(mutex);
        if (!seen.emplace(key).second) return;
    }
    log_message(level, message);
}

}  // namespace kestrel
