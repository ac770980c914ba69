// Names read from files (metadata keys, tensor names, paths) go into one-line error messages; a
// hostile or damaged file can put newlines, terminal escapes or megabytes into them.
#pragma once

#include <string>
#include <string_view>

namespace kestrel {

// `text` with control bytes and DEL as \xNN, cut to `max_length` bytes with "..." after.
std::string printable(std::string_view text, size_t max_length = 200);
// The same, never cut (paths the user gave us).
inline std::string printable_full(std::string_view text) { return printable(text, std::string_view::npos); }
// printable() in single quotes: 'name'.
std::string quote_name(std::string_view text);

}  // namespace kestrel
