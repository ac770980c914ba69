// Byte-level BPE (GPT-2, Qwen): text -> regex pieces -> bytes shown as GPT-2's printable
// characters -> merges by rank (Hugging Face tokenizers: pre_tokenizers/byte_level.rs,
// models/bpe). Qwen's tokenizer.json asks for NFC first.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/byte_level_bpe.h"
#include "tokenizer/tokenizer_data.h"
#include "tokenizer/unicode.h"

namespace kestrel {
namespace {

// The Unicode White_Space property as a character class body.
constexpr std::string_view kWhiteSpace =
    R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

Result<std::string> rewrite_whitespace(std::string_view pattern) {
    std::string out;
    bool in_class = false;
    for (size_t i = 0; i < pattern.size(); ++i) {
        const char c = pattern[i];
        if (c == '\\' && i + 1 < pattern.size()) {
            const char e = pattern[++i];
            if (e == 's') {
                out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
            } else if (e == 'S') {
                if (in_class) {
                    return Status(StatusCode::kUnsupported, "pre-tokenizer regex: \\S inside a character class");
                }
                out += "[^" + std::string(kWhiteSpace) + "]";
            } else {
                out += c;
                out += e;
            }
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            out += c;
            // A ']' right after '[' or '[^' is a literal.
            if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
            if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        out += c;
    }
    return out;
}

}  // namespace

Result<std::shared_ptr<const PretokenizerRegex>> PretokenizerRegex::compile(std::string_view pattern) {
    KESTREL_ASSIGN_OR_RETURN(const std::string rewritten, rewrite_whitespace(pattern));
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code == nullptr) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error, message, sizeof(message));
        return Status(StatusCode::kUnsupported, "pre-tokenizer regex does not compile: " +
                                                    std::string(reinterpret_cast<const char*>(message)) +
                                                    " at offset " + std::to_string(offset));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // faster when available; interpreted otherwise
    std::shared_ptr<PretokenizerRegex> regex(new PretokenizerRegex());
    regex->code_ = code;
    return std::shared_ptr<const PretokenizerRegex>(std::move(regex));
}

PretokenizerRegex::~PretokenizerRegex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::string_view> PretokenizerRegex::split(std::string_view text) const {
    std::vector<std::string_view> pieces;
    auto* code = static_cast<pcre2_code*>(code_);
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(code, nullptr);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    size_t gap_start = 0;
    while (pos < text.size()) {
        const int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, match, nullptr);
        if (rc < 0) break;  // no match (or a match limit): the rest is one piece
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
        const size_t start = ovector[0];
        const size_t end = ovector[1];
        if (end == start) {
            // An empty match: step over one character, which stays in the gap.
            pos = start + static_cast<size_t>(decode_utf8(text, start).length);
            continue;
        }
        if (start > gap_start) pieces.push_back(text.substr(gap_start, start - gap_start));
        pieces.push_back(text.substr(start, end - start));
        pos = end;
        gap_start = end;
    }
    if (gap_start < text.size()) pieces.push_back(text.substr(gap_start));
    pcre2_match_data_free(match);
    return pieces;
}

char32_t byte_to_unicode(uint8_t byte) {
    // Printable Latin-1 bytes stand for themselves; the other 68 are shifted to U+0100 upwards
    // in byte order.
    if ((byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE)) return byte;
    int n = 0;
    for (int b = 0; b < byte; ++b) {
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))) ++n;
    }
    return static_cast<char32_t>(256 + n);
}

int byte_from_unicode(char32_t cp) {
    static const std::vector<int> table = [] {
        std::vector<int> t(324, -1);
        for (int b = 0; b < 256; ++b) t[byte_to_unicode(static_cast<uint8_t>(b))] = b;
        return t;
    }();
    return cp < table.size() ? table[cp] : -1;
}

bool byte_level_piece_bytes(std::string_view piece, std::string& out) {
    for (size_t pos = 0; pos < piece.size();) {
        const Utf8Char c = decode_utf8(piece, pos);
        const int b = c.valid ? byte_from_unicode(c.code_point) : -1;
        if (b < 0) return false;
        out += static_cast<char>(b);
        pos += static_cast<size_t>(c.length);
    }
    return true;
}

void byte_level_encode(const TokenizerData& data, std::string_view text, std::vector<int32_t>& out) {
    std::string normalized;
    if (data.nfc) {
        normalized = nfc_normalize(text);
        text = normalized;
    }
    std::vector<int32_t> symbols;
    std::string mapped;
    for (const std::string_view piece : data.pretokenizer->split(text)) {
        if (data.ignore_merges) {
            mapped.clear();
            for (const char c : piece) append_utf8(mapped, byte_to_unicode(static_cast<uint8_t>(c)));
            const auto it = data.piece_to_id.find(mapped);
            if (it != data.piece_to_id.end()) {
                out.push_back(it->second);
                continue;
            }
        }
        symbols.clear();
        for (const char c : piece) symbols.push_back(data.byte_level_tokens[static_cast<uint8_t>(c)]);
        bpe_merge_by_rank(data.merges, symbols);
        out.insert(out.end(), symbols.begin(), symbols.end());
    }
}

}  // namespace kestrel
