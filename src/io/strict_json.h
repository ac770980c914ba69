// JSON from files we do not trust (safetensors headers, config.json, index files).
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "kestrel/status.h"

namespace kestrel {

// Parses JSON read from a file, stricter than nlohmann's defaults: containers nested deeper
// than `max_depth` are an error (copying or walking them would recurse), and so is a key
// repeated within one object unless `allow_duplicate_keys` (then the last wins, as in Python's
// json module). Never throws. The kCorruptFile message does not name the file: callers prefix it.
Result<nlohmann::json> parse_json_strict(std::string_view text, int max_depth,
                                         bool allow_duplicate_keys = false);

// "a string", "an array", ...: for "field 'x' is <this>, expected ..." messages.
std::string_view json_kind(const nlohmann::json& value);

}  // namespace kestrel
