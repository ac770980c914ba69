// Exact tokenizers for the models Kestrel runs, built from GGUF metadata or a Hugging Face
// folder (tokenizer.json + tokenizer_config.json):
//   kSpm        Gemma 3 ("llama" in GGUF): SentencePiece BPE by piece score with <0xNN> byte
//               fallback, as llama.cpp's llm_tokenizer_spm (llama-vocab.cpp) does it.
//   kSpmMerges  Gemma 4 ("gemma4" in GGUF) and SentencePiece-style tokenizer.json files
//               (BPE with byte_fallback): the same pieces, merged by merge rank.
//   kByteLevel  Qwen ("gpt2" in GGUF, ByteLevel in tokenizer.json): GPT-2 byte-to-unicode
//               mapping, a PCRE2 pre-tokenizer regex, merges by rank.
// A Tokenizer is immutable after loading and cheap to copy (the tables are shared).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/gguf.h"
#include "kestrel/status.h"

namespace kestrel {

enum class TokenizerAlgorithm { kSpm, kSpmMerges, kByteLevel };

// GGUF's tokenizer.ggml.token_type numbering (llama.cpp's llama_token_type).
enum class TokenKind : uint8_t {
    kUndefined = 0,
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,      // special: matched in text only when the caller parses special tokens
    kUserDefined = 4,  // always matched in text as one token (Gemma's "\n\n", "<start_of_image>")
    kUnused = 5,
    kByte = 6,         // SentencePiece byte fallback <0xNN>
};

struct TokenizerData;  // tokenizer_data.h

class Tokenizer {
public:
    static Result<Tokenizer> from_gguf(const GgufFile& file);
    // tokenizer.json (required) and tokenizer_config.json (optional: add_bos_token, bos_token,
    // eos_token) in `folder`.
    static Result<Tokenizer> from_hf_folder(const std::filesystem::path& folder);

    // Text to ids. Text that is not valid UTF-8 is read with each maximal invalid subsequence
    // replaced by U+FFFD (as Python's bytes.decode("utf-8", "replace")), so any bytes encode.
    // `parse_special`: control tokens' text ("<start_of_turn>", "<|im_start|>") becomes that
    // token; otherwise it is ordinary text. User-defined tokens always match.
    // `add_bos`: prepend bos_id() when add_bos() says the model wants it.
    std::vector<int32_t> encode(std::string_view text, bool parse_special = false, bool add_bos = false) const;

    // Ids to bytes: the concatenation of token_to_piece(). Valid UTF-8 when the ids came from
    // encode() of valid UTF-8 (decode(encode(s)) == s); ids cut from a longer sequence may end
    // in part of a character. Ids out of range decode to nothing. `skip_special` drops control
    // tokens (BOS, <end_of_turn>).
    std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
    // One token's bytes: possibly part of a UTF-8 character (byte fallback, byte-level BPE);
    // TokenStreamDecoder assembles them for printing.
    std::string token_to_piece(int32_t id) const;

    TokenizerAlgorithm algorithm() const;
    int32_t vocab_size() const;
    int32_t bos_id() const;  // -1 when the model has none
    int32_t eos_id() const;  // -1 when the model has none
    bool add_bos() const;
    std::optional<int32_t> find_token(std::string_view text) const;  // the vocabulary's own spelling
    const std::string& token_text(int32_t id) const;                   // "" when out of range
    TokenKind token_kind(int32_t id) const;
    bool is_control(int32_t id) const;
    // Tokens that end generation: EOS plus end-of-turn (Gemma <end_of_turn>, Qwen <|im_end|>).
    const std::vector<int32_t>& end_of_generation_ids() const;
    bool is_end_of_generation(int32_t id) const;

private:
    explicit Tokenizer(std::shared_ptr<const TokenizerData> data) : data_(std::move(data)) {}
    std::shared_ptr<const TokenizerData> data_;

    friend Result<Tokenizer> make_tokenizer(TokenizerData data);
};

// Turns token pieces into printable text as they are generated: holds back the bytes of a
// character that is not complete yet, and writes bytes that can never form one as U+FFFD.
class TokenStreamDecoder {
public:
    explicit TokenStreamDecoder(const Tokenizer& tokenizer, bool skip_special = false)
        : tokenizer_(&tokenizer), skip_special_(skip_special) {}

    // The text that is complete after `id`; may be empty.
    std::string push(int32_t id);
    // What is still held back (an unfinished character, as U+FFFD).
    std::string flush();

private:
    const Tokenizer* tokenizer_;
    bool skip_special_;
    std::string pending_;
};

}  // namespace kestrel
