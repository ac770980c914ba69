// Tokenizer::from_hf_folder: tokenizer.json as Hugging Face tokenizers writes it (a BPE model;
// normalizer, pre_tokenizer and added_tokens as Qwen's and Gemma's files use them) and the
// add_bos_token / bos_token / eos_token of tokenizer_config.json.
#include <fstream>
#include <sstream>

#include "core/printable.h"
#include "io/strict_json.h"
#include "tokenizer/byte_level_bpe.h"
#include "tokenizer/tokenizer_data.h"

namespace kestrel {
namespace {

using Json = nlohmann::json;

Result<std::string> read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Status(StatusCode::kNotFound, "cannot open " + quote_name(path.string()));
    std::stringstream text;
    text << in.rdbuf();
    if (in.bad()) return Status(StatusCode::kIoError, "cannot read " + quote_name(path.string()));
    return text.str();
}

// Every object of `node` (itself, or the members of a "Sequence") of type `type`.
std::vector<const Json*> components(const Json& node, std::string_view list_key, std::string_view type) {
    std::vector<const Json*> out;
    if (!node.is_object()) return out;
    const auto t = node.find("type");
    if (t == node.end() || !t->is_string()) return out;
    if (*t == "Sequence") {
        const auto list = node.find(std::string(list_key));
        if (list != node.end() && list->is_array()) {
            for (const Json& child : *list) {
                for (const Json* c : components(child, list_key, type)) out.push_back(c);
            }
        }
    } else if (*t == type) {
        out.push_back(&node);
    }
    return out;
}

const std::string* string_at(const Json& node, std::string_view key) {
    if (!node.is_object()) return nullptr;
    const auto it = node.find(std::string(key));
    return it != node.end() && it->is_string() ? it->get_ptr<const std::string*>() : nullptr;
}

bool bool_at(const Json& node, std::string_view key, bool fallback) {
    if (!node.is_object()) return fallback;
    const auto it = node.find(std::string(key));
    return it != node.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// tokenizer_config.json names tokens as a string or as {"content": ...}.
std::optional<std::string> config_token(const Json& config, std::string_view key) {
    if (const std::string* s = string_at(config, key)) return *s;
    const auto it = config.find(std::string(key));
    if (it != config.end() && it->is_object()) {
        if (const std::string* s = string_at(*it, "content")) return *s;
    }
    return std::nullopt;
}

Status read_normalizer(const Json& root, TokenizerData& data, const std::string& where) {
    const auto it = root.find("normalizer");
    if (it == root.end() || it->is_null()) return ok_status();
    std::vector<const Json*> parts = components(*it, "normalizers", "NFC");
    data.nfc = !parts.empty();
    // The other kinds we accept: SentencePiece's space handling.
    for (const Json* replace : components(*it, "normalizers", "Replace")) {
        const auto pattern = replace->find("pattern");
        const std::string* from = pattern != replace->end() ? string_at(*pattern, "String") : nullptr;
        const std::string* to = string_at(*replace, "content");
        if (from == nullptr || to == nullptr || *from != " " || *to != "\xE2\x96\x81") {
            return Status(StatusCode::kUnsupported, where + "normalizer Replace other than ' ' -> U+2581");
        }
    }
    for (const Json* prepend : components(*it, "normalizers", "Prepend")) {
        const std::string* with = string_at(*prepend, "prepend");
        if (with == nullptr || *with != "\xE2\x96\x81") {
            return Status(StatusCode::kUnsupported, where + "normalizer Prepend other than U+2581");
        }
        data.add_space_prefix = true;
    }
    const std::string* type = string_at(*it, "type");
    if (type != nullptr && *type != "Sequence" && *type != "NFC" && *type != "Replace" && *type != "Prepend") {
        return Status(StatusCode::kUnsupported, where + "normalizer " + quote_name(*type));
    }
    return ok_status();
}

Status read_merges(const Json& merges, TokenizerData& data, const std::string& where) {
    if (!merges.is_array()) return Status(StatusCode::kCorruptFile, where + "model.merges is not an array");
    data.merges.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const Json& merge = merges[rank];
        std::string left, right;
        if (merge.is_string()) {  // "a b"
            const std::string& s = merge.get_ref<const std::string&>();
            const size_t space = s.find(' ');
            if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
                return Status(StatusCode::kCorruptFile, where + "model.merges[" + std::to_string(rank) + "] " +
                                                            quote_name(s) + " is not two tokens separated by one space");
            }
            left = s.substr(0, space);
            right = s.substr(space + 1);
        } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {  // [a, b]
            left = merge[0].get<std::string>();
            right = merge[1].get<std::string>();
        } else {
            return Status(StatusCode::kCorruptFile,
                          where + "model.merges[" + std::to_string(rank) + "] is neither \"a b\" nor [a, b]");
        }
        const auto l = data.piece_to_id.find(left);
        const auto r = data.piece_to_id.find(right);
        const auto m = data.piece_to_id.find(left + right);
        if (l == data.piece_to_id.end() || r == data.piece_to_id.end() || m == data.piece_to_id.end()) {
            return Status(StatusCode::kCorruptFile, where + "model.merges[" + std::to_string(rank) + "] " +
                                                        quote_name(left + " " + right) +
                                                        " names a token that is not in the vocabulary");
        }
        data.merges.emplace(pair_key(l->second, r->second), MergeInfo{static_cast<int32_t>(rank), m->second});
    }
    return ok_status();
}

}  // namespace

Result<Tokenizer> Tokenizer::from_hf_folder(const std::filesystem::path& folder) {
    const std::filesystem::path json_path = folder / "tokenizer.json";
    const std::string where = quote_name(json_path.string()) + ": ";
    KESTREL_ASSIGN_OR_RETURN(const std::string text, read_text(json_path));
    auto parsed = parse_json_strict(text, 64);
    if (!parsed.ok()) return Status(parsed.status().code(), where + parsed.status().message());
    const Json& root = *parsed;
    if (!root.is_object()) return Status(StatusCode::kCorruptFile, where + "not a JSON object");

    TokenizerData data;
    data.source = json_path.string();
    const auto model_it = root.find("model");
    if (model_it == root.end() || !model_it->is_object()) {
        return Status(StatusCode::kCorruptFile, where + "no \"model\" object");
    }
    const Json& model = *model_it;
    const std::string* type = string_at(model, "type");
    if (type == nullptr || *type != "BPE") {
        return Status(StatusCode::kUnsupported,
                      where + "model.type " + quote_name(type ? *type : "(none)") + " (supported: BPE)");
    }
    KESTREL_RETURN_IF_ERROR(read_normalizer(root, data, where));

    // Which BPE: ByteLevel in the pre-tokenizer means byte-level (Qwen); byte_fallback means
    // SentencePiece pieces (Gemma).
    const Json pre = root.contains("pre_tokenizer") ? root["pre_tokenizer"] : Json();
    const auto byte_level = components(pre, "pretokenizers", "ByteLevel");
    if (!byte_level.empty()) {
        data.algorithm = TokenizerAlgorithm::kByteLevel;
        const auto splits = components(pre, "pretokenizers", "Split");
        std::string pattern;
        if (splits.size() == 1) {
            const Json& split = *splits[0];
            const auto pattern_it = split.find("pattern");
            const std::string* regex = pattern_it != split.end() ? string_at(*pattern_it, "Regex") : nullptr;
            const std::string* behavior = string_at(split, "behavior");
            if (regex == nullptr || behavior == nullptr || *behavior != "Isolated" || bool_at(split, "invert", false)) {
                return Status(StatusCode::kUnsupported,
                              where + "pre_tokenizer Split must be a Regex with behavior Isolated, not inverted");
            }
            pattern = *regex;
        } else if (splits.empty() && bool_at(*byte_level[0], "use_regex", true)) {
            pattern = std::string(kGpt2Pattern);
        } else {
            return Status(StatusCode::kUnsupported, where + "pre_tokenizer: expected one Split regex and ByteLevel");
        }
        if (bool_at(*byte_level[0], "add_prefix_space", false)) {
            return Status(StatusCode::kUnsupported, where + "ByteLevel add_prefix_space");
        }
        auto regex = PretokenizerRegex::compile(pattern);
        if (!regex.ok()) return Status(regex.status().code(), where + regex.status().message());
        data.pretokenizer = *regex;
    } else if (bool_at(model, "byte_fallback", false)) {
        data.algorithm = TokenizerAlgorithm::kSpmMerges;
    } else {
        return Status(StatusCode::kUnsupported, where + "a BPE model that is neither ByteLevel nor byte_fallback");
    }
    data.ignore_merges = bool_at(model, "ignore_merges", false);

    // Vocabulary and added tokens; ids may leave gaps, which stay empty unused tokens.
    const auto vocab_it = model.find("vocab");
    if (vocab_it == model.end() || !vocab_it->is_object()) {
        return Status(StatusCode::kCorruptFile, where + "model.vocab is not an object");
    }
    const Json added = root.contains("added_tokens") ? root["added_tokens"] : Json::array();
    if (!added.is_array()) return Status(StatusCode::kCorruptFile, where + "added_tokens is not an array");
    constexpr int64_t kMaxVocab = 1 << 24;
    const auto check_id = [&](const Json& id, const std::string& token) -> Result<int32_t> {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxVocab) {
            return Status(StatusCode::kCorruptFile, where + "token " + quote_name(token) + " has a bad id");
        }
        return static_cast<int32_t>(id.get<int64_t>());
    };
    const auto place = [&](int32_t id, const std::string& piece, TokenKind kind) {
        if (static_cast<size_t>(id) >= data.pieces.size()) {
            data.pieces.resize(static_cast<size_t>(id) + 1);
            data.kinds.resize(static_cast<size_t>(id) + 1, TokenKind::kUnused);
        }
        data.pieces[static_cast<size_t>(id)] = piece;
        data.kinds[static_cast<size_t>(id)] = kind;
    };
    for (auto entry = vocab_it->begin(); entry != vocab_it->end(); ++entry) {
        const std::string& piece = entry.key();
        KESTREL_ASSIGN_OR_RETURN(const int32_t id, check_id(entry.value(), piece));
        TokenKind kind = TokenKind::kNormal;
        if (data.algorithm == TokenizerAlgorithm::kSpmMerges && piece.size() == 6 && piece.rfind("<0x", 0) == 0) {
            kind = TokenKind::kByte;
        }
        place(id, piece, kind);
    }
    for (const Json& token : added) {
        const std::string* content = string_at(token, "content");
        if (content == nullptr || content->empty() || !token.contains("id")) {
            return Status(StatusCode::kCorruptFile, where + "an added_tokens entry without content or id");
        }
        KESTREL_ASSIGN_OR_RETURN(const int32_t id, check_id(token["id"], *content));
        place(id, *content, bool_at(token, "special", false) ? TokenKind::kControl : TokenKind::kUserDefined);
    }
    for (size_t i = 0; i < data.pieces.size(); ++i) data.piece_to_id.emplace(data.pieces[i], static_cast<int32_t>(i));
    const auto merges_it = model.find("merges");
    if (merges_it != model.end()) KESTREL_RETURN_IF_ERROR(read_merges(*merges_it, data, where));
    if (const std::string* unk = string_at(model, "unk_token")) {
        const auto it = data.piece_to_id.find(*unk);
        if (it != data.piece_to_id.end()) data.unk_id = it->second;
    }

    // tokenizer_config.json, when there is one.
    const std::filesystem::path config_path = folder / "tokenizer_config.json";
    if (std::filesystem::exists(config_path)) {
        const std::string config_where = quote_name(config_path.string()) + ": ";
        KESTREL_ASSIGN_OR_RETURN(const std::string config_text, read_text(config_path));
        auto config = parse_json_strict(config_text, 64);
        if (!config.ok()) return Status(config.status().code(), config_where + config.status().message());
        if (!config->is_object()) return Status(StatusCode::kCorruptFile, config_where + "not a JSON object");
        const auto token_named = [&](std::string_view key) -> Result<int32_t> {
            const std::optional<std::string> name = config_token(*config, key);
            if (!name) return -1;
            const auto it = data.piece_to_id.find(*name);
            if (it == data.piece_to_id.end()) {
                return Status(StatusCode::kCorruptFile,
                              config_where + std::string(key) + " " + quote_name(*name) + " is not in the vocabulary");
            }
            return it->second;
        };
        KESTREL_ASSIGN_OR_RETURN(data.bos_id, token_named("bos_token"));
        KESTREL_ASSIGN_OR_RETURN(data.eos_id, token_named("eos_token"));
        data.add_bos = bool_at(*config, "add_bos_token", false) && data.bos_id >= 0;
    }
    return make_tokenizer(std::move(data));
}

}  // namespace kestrel
