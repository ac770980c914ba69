#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "core/printable.h"
#include "tokenizer/tokenizer_data.h"
#include "tokenizer/unicode.h"

namespace kestrel {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581

std::string replace_space_markers(std::string_view piece) {
    std::string out;
    out.reserve(piece.size());
    for (size_t pos = 0; pos < piece.size();) {
        if (piece.substr(pos, kSpaceMarker.size()) == kSpaceMarker) {
            out += ' ';
            pos += kSpaceMarker.size();
        } else {
            out += piece[pos++];
        }
    }
    return out;
}

// "<0x41>" -> 0x41, or -1.
int parse_byte_piece(std::string_view piece) {
    if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
    int value = 0;
    for (const char c : piece.substr(3, 2)) {
        value *= 16;
        if (c >= '0' && c <= '9') {
            value += c - '0';
        } else if (c >= 'A' && c <= 'F') {
            value += c - 'A' + 10;
        } else if (c >= 'a' && c <= 'f') {
            value += c - 'a' + 10;
        } else {
            return -1;
        }
    }
    return value;
}

}  // namespace

Result<Tokenizer> make_tokenizer(TokenizerData data) {
    const size_t n = data.pieces.size();
    const std::string where = quote_name(data.source) + ": ";
    if (n == 0) return Status(StatusCode::kCorruptFile, where + "the tokenizer has no tokens");
    if (n > static_cast<size_t>(INT32_MAX)) return Status(StatusCode::kCorruptFile, where + "too many tokens");
    if (data.kinds.empty()) data.kinds.assign(n, TokenKind::kNormal);
    if (data.kinds.size() != n) {
        return Status(StatusCode::kCorruptFile, where + "token types: " + std::to_string(data.kinds.size()) +
                                                    " entries for " + std::to_string(n) + " tokens");
    }
    if (data.algorithm == TokenizerAlgorithm::kSpm && data.scores.size() != n) {
        return Status(StatusCode::kCorruptFile, where + "token scores: " + std::to_string(data.scores.size()) +
                                                    " entries for " + std::to_string(n) + " tokens");
    }
    for (const int32_t id : {data.bos_id, data.eos_id, data.unk_id}) {
        if (id < -1 || id >= static_cast<int64_t>(n)) {
            return Status(StatusCode::kCorruptFile, where + "special token id " + std::to_string(id) +
                                                        " is outside the vocabulary of " + std::to_string(n));
        }
    }

    const bool spm = data.algorithm != TokenizerAlgorithm::kByteLevel;
    data.bytes.resize(n);
    for (size_t i = 0; i < n; ++i) {
        const std::string& piece = data.pieces[i];
        const auto id = static_cast<int32_t>(i);
        if (!piece.empty()) data.piece_to_id.emplace(piece, id);  // the first of duplicates wins
        const TokenKind kind = data.kinds[i];
        if (kind == TokenKind::kControl || kind == TokenKind::kUserDefined || kind == TokenKind::kUnknown) {
            // Matched in the text before the model runs, as llama.cpp's cache_special_tokens.
            data.bytes[i] = piece;  // added tokens are their own text
            if (!piece.empty()) data.added.emplace(piece, id);
        } else if (spm) {
            const int byte = kind == TokenKind::kByte ? parse_byte_piece(piece) : -1;
            if (byte >= 0) {
                data.bytes[i] = std::string(1, static_cast<char>(byte));
                if (data.byte_tokens[byte] < 0) data.byte_tokens[byte] = id;
            } else {
                data.bytes[i] = replace_space_markers(piece);
            }
        } else if (!byte_level_piece_bytes(piece, data.bytes[i])) {
            data.bytes[i] = piece;  // not a byte-level spelling: shown as written
        }
    }
    for (const auto& [text, id] : data.added) {
        auto& lengths = data.added_lengths[static_cast<uint8_t>(text[0])];
        if (std::find(lengths.begin(), lengths.end(), text.size()) == lengths.end()) {
            lengths.push_back(static_cast<uint32_t>(text.size()));
        }
    }
    for (auto& lengths : data.added_lengths) std::sort(lengths.rbegin(), lengths.rend());

    if (!spm) {
        for (int b = 0; b < 256; ++b) {
            std::string piece;
            append_utf8(piece, byte_to_unicode(static_cast<uint8_t>(b)));
            const auto it = data.piece_to_id.find(piece);
            if (it == data.piece_to_id.end()) {
                return Status(StatusCode::kCorruptFile,
                              where + "byte-level vocabulary has no token for byte " + std::to_string(b));
            }
            data.byte_level_tokens[b] = it->second;
        }
        if (!data.pretokenizer) return Status(StatusCode::kInternal, where + "no pre-tokenizer");
    }

    // End of generation: EOS, what the loader found (eot_token_id), and the end-of-turn tokens
    // of the chat formats we know, when the vocabulary has them as control tokens.
    if (data.eos_id >= 0) data.end_of_generation.push_back(data.eos_id);
    for (const std::string_view text : {"<end_of_turn>", "<|im_end|>", "<|endoftext|>", "<turn|>", "<|eot_id|>"}) {
        const auto it = data.piece_to_id.find(text);
        if (it != data.piece_to_id.end() && data.kinds[static_cast<size_t>(it->second)] == TokenKind::kControl) {
            data.end_of_generation.push_back(it->second);
        }
    }
    std::sort(data.end_of_generation.begin(), data.end_of_generation.end());
    data.end_of_generation.erase(std::unique(data.end_of_generation.begin(), data.end_of_generation.end()),
                                 data.end_of_generation.end());
    return Tokenizer(std::make_shared<const TokenizerData>(std::move(data)));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special, bool add_bos) const {
    const TokenizerData& d = *data_;
    std::string sanitized;
    if (!is_valid_utf8(text)) {
        sanitized = sanitize_utf8(text);
        text = sanitized;
    }
    std::vector<int32_t> out;
    if (add_bos && d.add_bos && d.bos_id >= 0) out.push_back(d.bos_id);
    bool after_special = true;
    const auto encode_fragment = [&](std::string_view fragment) {
        if (fragment.empty()) return;
        if (d.algorithm == TokenizerAlgorithm::kByteLevel) {
            byte_level_encode(d, fragment, out);
        } else {
            spm_encode(d, fragment, after_special, out);
        }
        after_special = false;
    };
    // Added tokens first, leftmost-longest (Hugging Face's AddedVocabulary). llama.cpp's
    // tokenizer_st_partition instead takes the longest token anywhere first; the two differ only
    // for overlapping different tokens, which Gemma's and Qwen's added tokens never form.
    size_t start = 0;
    for (size_t pos = 0; pos < text.size();) {
        int32_t match = -1;
        size_t match_length = 0;
        for (const uint32_t length : d.added_lengths[static_cast<uint8_t>(text[pos])]) {
            if (pos + length > text.size()) continue;
            const auto it = d.added.find(text.substr(pos, length));
            if (it == d.added.end()) continue;
            const TokenKind kind = d.kinds[static_cast<size_t>(it->second)];
            if (!parse_special && (kind == TokenKind::kControl || kind == TokenKind::kUnknown)) continue;
            match = it->second;
            match_length = length;
            break;
        }
        if (match < 0) {
            ++pos;
            continue;
        }
        encode_fragment(text.substr(start, pos - start));
        out.push_back(match);
        after_special = true;
        pos += match_length;
        start = pos;
    }
    encode_fragment(text.substr(start));
    return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
    const TokenizerData& d = *data_;
    std::string out;
    bool first_text = true;
    for (const int32_t id : ids) {
        if (id < 0 || id >= vocab_size()) continue;
        const auto i = static_cast<size_t>(id);
        if (d.kinds[i] == TokenKind::kControl) {
            if (!skip_special) out += d.bytes[i];
            continue;
        }
        std::string_view piece = d.bytes[i];
        // Undo the space encode() put in front (SentencePiece's add_dummy_prefix).
        if (first_text && d.add_space_prefix && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
        first_text = false;
        out += piece;
    }
    return out;
}

std::string Tokenizer::token_to_piece(int32_t id) const {
    return id >= 0 && id < vocab_size() ? data_->bytes[static_cast<size_t>(id)] : std::string();
}

TokenizerAlgorithm Tokenizer::algorithm() const { return data_->algorithm; }
int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(data_->pieces.size()); }
int32_t Tokenizer::bos_id() const { return data_->bos_id; }
int32_t Tokenizer::eos_id() const { return data_->eos_id; }
bool Tokenizer::add_bos() const { return data_->add_bos; }

std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
    const auto it = data_->piece_to_id.find(text);
    if (it == data_->piece_to_id.end()) return std::nullopt;
    return it->second;
}

const std::string& Tokenizer::token_text(int32_t id) const {
    static const std::string empty;
    return id >= 0 && id < vocab_size() ? data_->pieces[static_cast<size_t>(id)] : empty;
}

TokenKind Tokenizer::token_kind(int32_t id) const {
    return id >= 0 && id < vocab_size() ? data_->kinds[static_cast<size_t>(id)] : TokenKind::kUndefined;
}

bool Tokenizer::is_control(int32_t id) const { return token_kind(id) == TokenKind::kControl; }

const std::vector<int32_t>& Tokenizer::end_of_generation_ids() const { return data_->end_of_generation; }

bool Tokenizer::is_end_of_generation(int32_t id) const {
    return std::binary_search(data_->end_of_generation.begin(), data_->end_of_generation.end(), id);
}

std::string TokenStreamDecoder::push(int32_t id) {
    if (skip_special_ && tokenizer_->is_control(id)) return {};
    pending_ += tokenizer_->token_to_piece(id);
    const size_t keep = incomplete_utf8_tail(pending_);
    std::string ready = sanitize_utf8(std::string_view(pending_).substr(0, pending_.size() - keep));
    pending_.erase(0, pending_.size() - keep);
    return ready;
}

std::string TokenStreamDecoder::flush() {
    std::string rest = sanitize_utf8(pending_);
    pending_.clear();
    return rest;
}

}  // namespace kestrel
