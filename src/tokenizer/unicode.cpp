#include "tokenizer/unicode.h"

#include <algorithm>
#include <iterator>
#include <vector>

#include "tokenizer/unicode_nfc_data.h"

namespace kestrel {

Utf8Char decode_utf8(std::string_view text, size_t pos) {
    const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
    const uint8_t lead = byte(pos);
    if (lead < 0x80) return {lead, 1, true};
    int length = 0;
    char32_t cp = 0;
    // The second byte's range depends on the lead (Unicode Table 3-7), which rules out overlong
    // forms, surrogates and code points above U+10FFFF at the first place they show.
    uint8_t lo = 0x80, hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2;
        cp = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        cp = lead & 0x0F;
        if (lead == 0xE0) lo = 0xA0;
        if (lead == 0xED) hi = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        cp = lead & 0x07;
        if (lead == 0xF0) lo = 0x90;
        if (lead == 0xF4) hi = 0x8F;
    } else {
        return {kReplacementCharacter, 1, false};
    }
    for (int i = 1; i < length; ++i) {
        if (pos + i >= text.size()) return {kReplacementCharacter, i, false};
        const uint8_t b = byte(pos + i);
        const uint8_t min = i == 1 ? lo : 0x80;
        const uint8_t max = i == 1 ? hi : 0xBF;
        if (b < min || b > max) return {kReplacementCharacter, i, false};
        cp = (cp << 6) | (b & 0x3F);
    }
    return {cp, length, true};
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

bool is_valid_utf8(std::string_view text) {
    for (size_t pos = 0; pos < text.size();) {
        const Utf8Char c = decode_utf8(text, pos);
        if (!c.valid) return false;
        pos += c.length;
    }
    return true;
}

std::string sanitize_utf8(std::string_view text) {
    if (is_valid_utf8(text)) return std::string(text);
    std::string out;
    out.reserve(text.size() + 8);
    for (size_t pos = 0; pos < text.size();) {
        const Utf8Char c = decode_utf8(text, pos);
        if (c.valid) {
            out.append(text.substr(pos, c.length));
        } else {
            append_utf8(out, kReplacementCharacter);
        }
        pos += c.length;
    }
    return out;
}

size_t incomplete_utf8_tail(std::string_view text) {
    // Look at most 3 bytes back for a lead byte whose character runs past the end.
    for (size_t back = 1; back <= 3 && back <= text.size(); ++back) {
        const size_t pos = text.size() - back;
        const uint8_t b = static_cast<uint8_t>(text[pos]);
        if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
        const Utf8Char c = decode_utf8(text, pos);
        // Incomplete only when it failed for lack of bytes, not because a byte was wrong.
        return !c.valid && pos + c.length == text.size() && c.length == static_cast<int>(back) &&
                       b >= 0xC2 && b <= 0xF4
                   ? back
                   : 0;
    }
    return 0;
}

namespace {

// Hangul syllables decompose and compose by arithmetic (Unicode 15 §3.12).
constexpr char32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr char32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr char32_t kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = kHangulLCount * kHangulNCount;

uint8_t combining_class(char32_t cp) {
    if (cp < 0x300) return 0;
    const auto* end = std::end(kCombiningClasses);
    const auto* it = std::lower_bound(std::begin(kCombiningClasses), end, cp,
                                      [](const CombiningClass& e, char32_t v) { return e.code_point < v; });
    return it != end && it->code_point == cp ? it->ccc : 0;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
    if (cp >= kHangulS && cp < kHangulS + kHangulSCount) {
        const char32_t index = cp - kHangulS;
        out.push_back(kHangulL + index / kHangulNCount);
        out.push_back(kHangulV + (index % kHangulNCount) / kHangulTCount);
        if (index % kHangulTCount != 0) out.push_back(kHangulT + index % kHangulTCount);
        return;
    }
    const auto* end = std::end(kDecompositions);
    const auto* it = std::lower_bound(std::begin(kDecompositions), end, cp,
                                      [](const Decomposition& e, char32_t v) { return e.code_point < v; });
    if (it != end && it->code_point == cp) {
        out.insert(out.end(), kDecompositionPool + it->offset, kDecompositionPool + it->offset + it->length);
    } else {
        out.push_back(cp);
    }
}

// The primary composite of a pair, or 0.
char32_t compose(char32_t first, char32_t second) {
    if (first >= kHangulL && first < kHangulL + kHangulLCount && second >= kHangulV &&
        second < kHangulV + kHangulVCount) {
        return kHangulS + ((first - kHangulL) * kHangulVCount + (second - kHangulV)) * kHangulTCount;
    }
    if (first >= kHangulS && first < kHangulS + kHangulSCount && (first - kHangulS) % kHangulTCount == 0 &&
        second > kHangulT && second < kHangulT + kHangulTCount) {
        return first + (second - kHangulT);
    }
    const auto* end = std::end(kCompositions);
    const auto* it = std::lower_bound(std::begin(kCompositions), end, std::pair(first, second),
                                      [](const Composition& e, const std::pair<char32_t, char32_t>& v) {
                                          return std::pair(e.first, e.second) < v;
                                      });
    return it != end && it->first == first && it->second == second ? it->composite : 0;
}

}  // namespace

std::string nfc_normalize(std::string_view text) {
    // Below U+0300 every character is already NFC and none combines with what precedes it, so
    // text whose bytes are all below 0xCC (the first lead byte of U+0300) is left as it is.
    if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<uint8_t>(c) < 0xCC; })) {
        return std::string(text);
    }
    std::vector<char32_t> cps;
    cps.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        const Utf8Char c = decode_utf8(text, pos);
        decompose(c.code_point, cps);
        pos += c.length;
    }
    // Canonical ordering: each run of non-starters sorted by combining class, stably.
    for (size_t i = 0; i < cps.size();) {
        if (combining_class(cps[i]) == 0) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
        std::stable_sort(cps.begin() + static_cast<std::ptrdiff_t>(i), cps.begin() + static_cast<std::ptrdiff_t>(j),
                         [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
        i = j;
    }
    // Canonical composition: a character joins the last starter unless something between them
    // blocks it (a starter, or a mark of the same or higher class).
    std::vector<char32_t> out;
    out.reserve(cps.size());
    std::ptrdiff_t starter = -1;
    uint8_t last_class = 0;
    for (const char32_t cp : cps) {
        const uint8_t cc = combining_class(cp);
        const bool adjacent = starter >= 0 && static_cast<size_t>(starter) + 1 == out.size();
        if (starter >= 0 && (adjacent || (last_class != 0 && last_class < cc))) {
            if (const char32_t composite = compose(out[static_cast<size_t>(starter)], cp)) {
                out[static_cast<size_t>(starter)] = composite;
                continue;
            }
        }
        if (cc == 0) {
            starter = static_cast<std::ptrdiff_t>(out.size());
            last_class = 0;
        } else {
            last_class = cc;
        }
        out.push_back(cp);
    }
    std::string result;
    result.reserve(text.size());
    for (const char32_t cp : out) append_utf8(result, cp);
    return result;
}

}  // namespace kestrel
