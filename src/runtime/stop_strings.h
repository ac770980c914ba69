// Streams generated text while watching for stop strings: text that could still be the start of
// a stop string is held back until it is known not to be one, so a user never sees a partial
// "</s" or "User:" that the stop then takes back.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kestrel {

class StopStringFilter {
public:
    explicit StopStringFilter(std::vector<std::string> stops);

    // Adds generated text; returns what may be shown now. After a stop string completes, the
    // text before it is returned, the rest is dropped and stopped() is true.
    std::string push(std::string_view text);
    // At the end of generation: whatever was held back.
    std::string flush();
    bool stopped() const { return stopped_; }

private:
    std::vector<std::string> stops_;
    std::string pending_;
    bool stopped_ = false;
};

}  // namespace kestrel
