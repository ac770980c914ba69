#include "core/printable.h"

#include <fmt/format.h>

namespace kestrel {

std::string printable(std::string_view text, size_t max_length) {
    std::string out;
    for (size_t i = 0; i < text.size() && i < max_length; ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c < 0x20 || c == 0x7f) {
            out += fmt::format("\\x{:02x}", c);
        } else {
            out += static_cast<char>(c);
        }
    }
    if (text.size() > max_length) out += "...";
    return out;
}

std::string quote_name(std::string_view text) {
    // Appending, not "'" + ...: GCC 12 warns (-Wrestrict) on operator+ with a literal first.
    std::string out = "'";
    out += printable(text);
    out += '\'';
    return out;
}

}  // namespace kestrel
