// Tokenizer::from_gguf: the tokenizer.ggml.* keys as llama.cpp's convert_hf_to_gguf.py writes
// them and llama-vocab.cpp (llama_vocab::impl::load) reads them.
#include "core/printable.h"
#include "tokenizer/byte_level_bpe.h"
#include "tokenizer/tokenizer_data.h"

namespace kestrel {
namespace {

// An optional key: its value, `fallback` when absent, the error when present with a bad type.
template <class T, class Getter>
Result<T> optional_key(const GgufFile& file, std::string_view key, T fallback, Getter get) {
    if (file.find(key) == nullptr) return fallback;
    return get(key);
}

Status parse_merges(const GgufFile& file, TokenizerData& data) {
    KESTREL_ASSIGN_OR_RETURN(const std::vector<std::string> merges, file.get_string_array("tokenizer.ggml.merges"));
    data.merges.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const std::string& merge = merges[rank];
        const size_t space = merge.find(' ');
        const std::string where = quote_name(file.display_name()) + ": tokenizer.ggml.merges[" +
                                  std::to_string(rank) + "] " + quote_name(merge);
        if (space == std::string::npos || merge.find(' ', space + 1) != std::string::npos) {
            return Status(StatusCode::kCorruptFile, where + " is not two tokens separated by one space");
        }
        const std::string_view left = std::string_view(merge).substr(0, space);
        const std::string_view right = std::string_view(merge).substr(space + 1);
        const auto l = data.piece_to_id.find(left);
        const auto r = data.piece_to_id.find(right);
        const auto m = data.piece_to_id.find(std::string(left) + std::string(right));
        if (l == data.piece_to_id.end() || r == data.piece_to_id.end() || m == data.piece_to_id.end()) {
            return Status(StatusCode::kCorruptFile, where + " names a token that is not in the vocabulary");
        }
        // A pair listed twice keeps its first (lowest) rank, as Hugging Face's BPE builder does.
        data.merges.emplace(pair_key(l->second, r->second), MergeInfo{static_cast<int32_t>(rank), m->second});
    }
    return ok_status();
}

}  // namespace

Result<Tokenizer> Tokenizer::from_gguf(const GgufFile& file) {
    TokenizerData data;
    data.source = file.display_name();
    const std::string where = quote_name(file.display_name()) + ": ";
    KESTREL_ASSIGN_OR_RETURN(const std::string model, file.get_string("tokenizer.ggml.model"));
    std::string pre;
    if (model == "llama") {
        data.algorithm = TokenizerAlgorithm::kSpm;
    } else if (model == "gemma4") {
        data.algorithm = TokenizerAlgorithm::kSpmMerges;
    } else if (model == "gpt2") {
        data.algorithm = TokenizerAlgorithm::kByteLevel;
        KESTREL_ASSIGN_OR_RETURN(pre, file.get_string("tokenizer.ggml.pre"));
    } else {
        return Status(StatusCode::kUnsupported,
                      where + "tokenizer.ggml.model " + quote_name(model) + " (supported: llama, gemma4, gpt2)");
    }
    KESTREL_ASSIGN_OR_RETURN(data.pieces, file.get_string_array("tokenizer.ggml.tokens"));
    const auto n = static_cast<int64_t>(data.pieces.size());
    if (n == 0) return Status(StatusCode::kCorruptFile, where + "tokenizer.ggml.tokens is empty");

    if (file.find("tokenizer.ggml.scores") != nullptr) {
        KESTREL_ASSIGN_OR_RETURN(data.scores, file.get_float_array("tokenizer.ggml.scores"));
        if (static_cast<int64_t>(data.scores.size()) != n) {
            return Status(StatusCode::kCorruptFile, where + "tokenizer.ggml.scores has " +
                                                        std::to_string(data.scores.size()) + " entries for " +
                                                        std::to_string(n) + " tokens");
        }
    } else if (data.algorithm == TokenizerAlgorithm::kSpm) {
        return Status(StatusCode::kNotFound, where + "tokenizer.ggml.scores is missing (the llama tokenizer needs it)");
    }
    if (file.find("tokenizer.ggml.token_type") != nullptr) {
        KESTREL_ASSIGN_OR_RETURN(const std::vector<int64_t> types, file.get_int_array("tokenizer.ggml.token_type"));
        if (static_cast<int64_t>(types.size()) != n) {
            return Status(StatusCode::kCorruptFile, where + "tokenizer.ggml.token_type has " +
                                                        std::to_string(types.size()) + " entries for " +
                                                        std::to_string(n) + " tokens");
        }
        data.kinds.reserve(types.size());
        for (size_t i = 0; i < types.size(); ++i) {
            if (types[i] < 0 || types[i] > 6) {
                return Status(StatusCode::kCorruptFile, where + "tokenizer.ggml.token_type[" + std::to_string(i) +
                                                            "] is " + std::to_string(types[i]) + " (expected 0..6)");
            }
            data.kinds.push_back(static_cast<TokenKind>(types[i]));
        }
    }
    // make_tokenizer builds the map too; the merges need it now.
    for (size_t i = 0; i < data.pieces.size(); ++i) data.piece_to_id.emplace(data.pieces[i], static_cast<int32_t>(i));

    if (data.algorithm != TokenizerAlgorithm::kSpm) KESTREL_RETURN_IF_ERROR(parse_merges(file, data));
    if (data.algorithm == TokenizerAlgorithm::kByteLevel) {
        // tokenizer.ggml.pre names the regex (llama-vocab.cpp's LLAMA_VOCAB_PRE_TYPE_*).
        std::string_view pattern;
        if (pre == "qwen2") {
            pattern = kQwen2Pattern;
        } else if (pre == "qwen35") {
            pattern = kQwen35Pattern;
        } else if (pre == "gpt-2" || pre == "default") {
            pattern = kGpt2Pattern;
        } else {
            return Status(StatusCode::kUnsupported,
                          where + "tokenizer.ggml.pre " + quote_name(pre) + " (supported: qwen2, qwen35, gpt-2)");
        }
        KESTREL_ASSIGN_OR_RETURN(data.pretokenizer, PretokenizerRegex::compile(pattern));
        // Qwen's tokenizer.json normalises to NFC; convert_hf_to_gguf.py does not record that.
        data.nfc = pre == "qwen2" || pre == "qwen35";
    }

    const auto token_id = [&](std::string_view key) -> Result<int32_t> {
        KESTREL_ASSIGN_OR_RETURN(const int64_t id, optional_key<int64_t>(file, key, -1, [&](std::string_view k) {
                                     return file.get_int(k);
                                 }));
        if (id < -1 || id >= n) {
            return Status(StatusCode::kCorruptFile, where + std::string(key) + " is " + std::to_string(id) +
                                                        ", outside the vocabulary of " + std::to_string(n));
        }
        return static_cast<int32_t>(id);
    };
    KESTREL_ASSIGN_OR_RETURN(data.bos_id, token_id("tokenizer.ggml.bos_token_id"));
    KESTREL_ASSIGN_OR_RETURN(data.eos_id, token_id("tokenizer.ggml.eos_token_id"));
    KESTREL_ASSIGN_OR_RETURN(data.unk_id, token_id("tokenizer.ggml.unknown_token_id"));
    KESTREL_ASSIGN_OR_RETURN(const int32_t eot_id, token_id("tokenizer.ggml.eot_token_id"));
    if (eot_id >= 0) data.end_of_generation.push_back(eot_id);
    // llama.cpp's defaults: SentencePiece models add BOS and a space prefix unless told otherwise.
    const bool spm = data.algorithm != TokenizerAlgorithm::kByteLevel;
    const auto get_bool = [&](std::string_view k) { return file.get_bool(k); };
    KESTREL_ASSIGN_OR_RETURN(data.add_bos, optional_key<bool>(file, "tokenizer.ggml.add_bos_token", spm, get_bool));
    KESTREL_ASSIGN_OR_RETURN(data.add_space_prefix,
                             optional_key<bool>(file, "tokenizer.ggml.add_space_prefix",
                                                data.algorithm == TokenizerAlgorithm::kSpm, get_bool));
    return make_tokenizer(std::move(data));
}

}  // namespace kestrel
