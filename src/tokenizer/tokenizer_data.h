// What a Tokenizer holds, shared by the algorithm files (spm_bpe.cpp, byte_level_bpe.cpp) and
// the loaders (tokenizer_gguf.cpp, tokenizer_hf.cpp). Internal: include tokenizer.h instead.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kestrel {

class PretokenizerRegex;  // byte_level_bpe.h

// std::unordered_map keyed by std::string that finds std::string_view keys without a copy.
struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct MergeInfo {
    int32_t rank;    // lower merges first
    int32_t result;  // the merged token
};

inline uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct TokenizerData {
    TokenizerAlgorithm algorithm = TokenizerAlgorithm::kSpm;
    std::string source;  // the file, for messages

    // Per token, indexed by id.
    std::vector<std::string> pieces;  // the vocabulary's spelling (U+2581 for space, GPT-2 bytes)
    std::vector<float> scores;        // kSpm
    std::vector<TokenKind> kinds;
    std::vector<std::string> bytes;   // what the token decodes to
    PieceMap piece_to_id;             // normal pieces; added tokens too

    // Merges by pair of token ids (kSpmMerges, kByteLevel).
    std::unordered_map<uint64_t, MergeInfo> merges;
    bool ignore_merges = false;  // tokenizer.json: a pre-token that is one token skips the merges

    // kSpm / kSpmMerges.
    bool add_space_prefix = false;
    int32_t byte_tokens[256];  // <0xNN>, -1 when absent
    int32_t unk_id = -1;

    // kByteLevel.
    std::shared_ptr<const PretokenizerRegex> pretokenizer;
    int32_t byte_level_tokens[256];  // the token of each single byte
    bool nfc = false;  // normalise to NFC first (Qwen's tokenizer.json says so)

    // Added tokens matched in the text before the model sees it: by first byte, the lengths
    // present (longest first), so a position needs a handful of hash lookups.
    PieceMap added;  // text -> id (control and user-defined tokens)
    std::vector<uint32_t> added_lengths[256];

    int32_t bos_id = -1;
    int32_t eos_id = -1;
    bool add_bos = false;
    std::vector<int32_t> end_of_generation;

    TokenizerData() {
        for (int i = 0; i < 256; ++i) byte_tokens[i] = byte_level_tokens[i] = -1;
    }
};

// The algorithms: append the ids of `text`, a fragment with no added tokens in it.
// `after_special`: the fragment starts the text or follows an added token (where SPM adds its space prefix).
void spm_encode(const TokenizerData& data, std::string_view text, bool after_special, std::vector<int32_t>& out);
void byte_level_encode(const TokenizerData& data, std::string_view text, std::vector<int32_t>& out);

// Merges adjacent symbols (token ids) by rank, the lowest first and the leftmost among equals,
// until no pair of neighbours has a merge: Hugging Face tokenizers' BPE (models/bpe/word.rs),
// which is also tiktoken's rule when the merges come from ranks.
void bpe_merge_by_rank(const std::unordered_map<uint64_t, MergeInfo>& merges, std::vector<int32_t>& symbols);

// The GPT-2 byte <-> printable code point mapping (openai/gpt-2 encoder.py, bytes_to_unicode).
char32_t byte_to_unicode(uint8_t byte);
int byte_from_unicode(char32_t code_point);  // -1 when not a mapped byte
// A byte-level piece's bytes; false when a character is not a mapped byte.
bool byte_level_piece_bytes(std::string_view piece, std::string& out);

// Finishes loading: fills bytes, the added-token index and end-of-generation set, checks
// invariants; the loaders call it last (tokenizer.cpp).
Result<Tokenizer> make_tokenizer(TokenizerData data);

}  // namespace kestrel
