// UTF-8 helpers for the tokenizers: decoding with the Unicode "maximal subpart" rule for bad
// bytes (Unicode 15 §3.9, what Python's bytes.decode("utf-8", "replace") does), and NFC.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kestrel {

inline constexpr char32_t kReplacementCharacter = 0xFFFD;

struct Utf8Char {
    char32_t code_point;  // kReplacementCharacter when !valid
    int length;           // bytes consumed, >= 1
    bool valid;
};

// The character at text[pos] (pos < text.size()). An invalid sequence consumes its maximal
// subpart: a lead byte and the continuation bytes that could still have completed it.
Utf8Char decode_utf8(std::string_view text, size_t pos);
void append_utf8(std::string& out, char32_t code_point);
bool is_valid_utf8(std::string_view text);
// `text` with every maximal invalid subpart replaced by U+FFFD.
std::string sanitize_utf8(std::string_view text);
// Bytes at the end of `text` that begin a character still missing continuation bytes (0..3).
size_t incomplete_utf8_tail(std::string_view text);

// Unicode Normalization Form C (UAX #15) of valid UTF-8: canonical decomposition, canonical
// ordering, canonical composition. Tables in unicode_nfc_data.cpp.
std::string nfc_normalize(std::string_view text);

}  // namespace kestrel
