// Names read from files (metadata keys, tensor names) go into one-line error messages; a hostile
// or damaged file can put newlines, terminal escapes or megabytes into them.
#pragma once

#include <string>
#include <string_view>

namespace kestrel {

// `text` with control bytes and DEL as \xNN, cut to `max_length` bytes with "..." after.
std::string printable(std::string_view text, size_t max_length = 96);

}  // namespace kestrel
