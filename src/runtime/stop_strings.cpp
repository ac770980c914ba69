#include "runtime/stop_strings.h"

#include <algorithm>

namespace kestrel {

StopStringFilter::StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
    std::erase_if(stops_, [](const std::string& stop) { return stop.empty(); });
}

std::string StopStringFilter::push(std::string_view text) {
    if (stopped_) return {};
    pending_ += text;
    // The earliest complete stop string ends generation.
    size_t first_stop = std::string::npos;
    for (const std::string& stop : stops_) first_stop = std::min(first_stop, pending_.find(stop));
    if (first_stop != std::string::npos) {
        stopped_ = true;
        std::string out = pending_.substr(0, first_stop);
        pending_.clear();
        return out;
    }
    // Hold back the longest tail that is a proper prefix of some stop string.
    size_t hold = 0;
    for (const std::string& stop : stops_) {
        for (size_t length = std::min(stop.size() - 1, pending_.size()); length > hold; --length) {
            if (pending_.compare(pending_.size() - length, length, stop, 0, length) == 0) {
                hold = length;
                break;
            }
        }
    }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
}

std::string StopStringFilter::flush() {
    std::string out = stopped_ ? std::string() : pending_;
    pending_.clear();
    return out;
}

}  // namespace kestrel
