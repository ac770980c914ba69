// SentencePiece-style BPE over pieces in which U+2581 stands for a space (Gemma).
//   kSpm: llama.cpp's llm_tokenizer_spm (src/llama-vocab.cpp), itself SentencePiece's
//   bpe_model.cc: start from UTF-8 characters; repeatedly merge the adjacent pair whose
//   concatenation is a vocabulary piece with the highest score (the leftmost among equal
//   scores); then a symbol that is no piece falls back to its bytes' <0xNN> tokens.
//   kSpmMerges: Hugging Face's BPE with byte_fallback (tokenizers models/bpe): characters that
//   are no piece become <0xNN> tokens first, then merges apply by rank.
#include <queue>

#include "tokenizer/tokenizer_data.h"
#include "tokenizer/unicode.h"

namespace kestrel {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

void append_byte_fallback(const TokenizerData& data, std::string_view text, std::vector<int32_t>& out) {
    for (const char c : text) {
        const int32_t id = data.byte_tokens[static_cast<uint8_t>(c)];
        if (id >= 0) {
            out.push_back(id);
        } else if (data.unk_id >= 0) {
            out.push_back(data.unk_id);
        }
    }
}

void spm_score_merge(const TokenizerData& data, std::string_view text, std::vector<int32_t>& out) {
    struct Symbol {
        int prev;
        int next;
        size_t start;
        size_t length;  // 0 once merged into its left neighbour
    };
    std::vector<Symbol> symbols;
    for (size_t pos = 0; pos < text.size();) {
        const int length = decode_utf8(text, pos).length;
        const int index = static_cast<int>(symbols.size());
        symbols.push_back({index - 1, -1, pos, static_cast<size_t>(length)});
        if (index > 0) symbols[index - 1].next = index;
        pos += static_cast<size_t>(length);
    }
    struct Bigram {
        float score;
        int left;
        int right;
        size_t length;  // of the merged text, to spot a stale entry
    };
    // Highest score first; among equal scores the leftmost (llama_sp_bigram::comparator).
    const auto lower = [](const Bigram& a, const Bigram& b) {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(lower);
    const auto try_add = [&](int left, int right) {
        if (left < 0 || right < 0) return;
        const size_t length = symbols[left].length + symbols[right].length;
        const auto it = data.piece_to_id.find(text.substr(symbols[left].start, length));
        if (it == data.piece_to_id.end()) return;
        queue.push({data.scores[static_cast<size_t>(it->second)], left, right, length});
    };
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
        const Bigram bigram = queue.top();
        queue.pop();
        Symbol& left = symbols[bigram.left];
        Symbol& right = symbols[bigram.right];
        if (left.length == 0 || right.length == 0 || left.length + right.length != bigram.length) continue;
        left.length += right.length;
        right.length = 0;
        left.next = right.next;
        if (right.next >= 0) symbols[right.next].prev = bigram.left;
        try_add(left.prev, bigram.left);
        try_add(bigram.left, left.next);
    }
    // Every merged symbol is a piece; a single character may not be.
    for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
        const std::string_view piece = text.substr(symbols[i].start, symbols[i].length);
        const auto it = data.piece_to_id.find(piece);
        if (it != data.piece_to_id.end()) {
            out.push_back(it->second);
        } else {
            append_byte_fallback(data, piece, out);
        }
    }
}

void spm_rank_merge(const TokenizerData& data, std::string_view text, std::vector<int32_t>& out) {
    std::vector<int32_t> symbols;
    symbols.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        const int length = decode_utf8(text, pos).length;
        const std::string_view c = text.substr(pos, static_cast<size_t>(length));
        const auto it = data.piece_to_id.find(c);
        if (it != data.piece_to_id.end()) {
            symbols.push_back(it->second);
        } else {
            append_byte_fallback(data, c, symbols);
        }
        pos += static_cast<size_t>(length);
    }
    bpe_merge_by_rank(data.merges, symbols);
    out.insert(out.end(), symbols.begin(), symbols.end());
}

}  // namespace

void spm_encode(const TokenizerData& data, std::string_view text, bool after_special, std::vector<int32_t>& out) {
    // SentencePiece's normaliser as the GGUF describes it: spaces become U+2581, and with
    // add_space_prefix the text starts with one (llama.cpp: at the start and after each special token).
    std::string normalized;
    normalized.reserve(text.size() + text.size() / 2 + 3);
    if (data.add_space_prefix && after_special) normalized += kSpaceMarker;
    for (const char c : text) {
        if (c == ' ') {
            normalized += kSpaceMarker;
        } else {
            normalized += c;
        }
    }
    if (normalized.empty()) return;
    if (data.algorithm == TokenizerAlgorithm::kSpm) {
        spm_score_merge(data, normalized, out);
    } else {
        spm_rank_merge(data, normalized, out);
    }
}

}  // namespace kestrel
