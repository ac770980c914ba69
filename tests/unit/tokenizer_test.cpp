// Tokenizers against Hugging Face on the same files (fixtures by scripts/make_tokenizer_fixtures.py):
// Gemma 3 from the default model's GGUF, Qwen3.5 from a tokenizer.json and from a GGUF built from
// it. Every corpus string must give exactly the reference's ids, with special tokens parsed and not.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/gguf_writer.h"
#include "io/model_files.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace kestrel {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(KESTREL_SOURCE_DIR) / "tests/fixtures/tokenizer";

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

nlohmann::json read_json(const std::filesystem::path& path) {
    return nlohmann::json::parse(read_file(path), nullptr, /*allow_exceptions=*/false);
}

std::string base64_decode(std::string_view in) {
    std::string out;
    uint32_t buffer = 0;
    int bits = 0;
    for (const char c : in) {
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else continue;  // '=' padding
        buffer = (buffer << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((buffer >> bits) & 0xFF);
        }
    }
    return out;
}

// The corpus as bytes: {"text"} entries are UTF-8, {"base64"} entries raw (invalid UTF-8).
const std::vector<std::string>& corpus() {
    static const std::vector<std::string> strings = [] {
        std::vector<std::string> out;
        const nlohmann::json j = read_json(kFixtures / "corpus.json");
        if (!j.is_object()) return out;
        for (const auto& item : j["strings"]) {
            out.push_back(item.contains("text") ? item["text"].get<std::string>()
                                                : base64_decode(item["base64"].get<std::string>()));
        }
        return out;
    }();
    return strings;
}

std::string show(const std::vector<int32_t>& ids) {
    std::string s = "[";
    for (size_t i = 0; i < ids.size(); ++i) {
        if (i > 0) s += ',';
        s += std::to_string(ids[i]);
    }
    return s + "]";
}

// Where transformers' GGUF conversion and llama.cpp (whose algorithm the GGUF was made for)
// disagree, the ids llama.cpp's llm_tokenizer_spm and tokenizer_st_partition give:
//  - transformers spells Gemma's user-defined space runs ("  ", token 138) as "▁▁" in its BPE
//    vocabulary, so literal U+2581 text merges into them; llama.cpp keeps them as raw spaces,
//    matched only against raw spaces, and merges "▁▁two" by score into "▁" "▁two".
//  - 100 spaces: llama.cpp matches the user-defined space runs longest first (31, 31, 31, 7);
//    transformers leaves them to BPE merges of equal score (-1000), which it orders arbitrarily.
const std::vector<std::pair<std::string, std::vector<int32_t>>> kGemmaLlamaCppOverrides = {
    {"\xE2\x96\x81\xE2\x96\x81two", {2, 236743, 1156}},
    {std::string(100, ' '), {2, 167, 167, 167, 143}},
};

// Compares every corpus string in both modes with the reference's ids (or an override's).
void expect_matches_reference(const Tokenizer& tokenizer, const std::filesystem::path& expected_path, bool add_bos,
                              const char* name,
                              const std::vector<std::pair<std::string, std::vector<int32_t>>>& overrides = {}) {
    const nlohmann::json expected = read_json(expected_path);
    ASSERT_TRUE(expected.is_object()) << "missing or invalid " << expected_path;
    const auto& strings = corpus();
    ASSERT_GE(strings.size(), 200u);
    for (const char* mode : {"with_special", "without_special"}) {
        const bool parse_special = std::string_view(mode) == "with_special";
        ASSERT_EQ(expected[mode].size(), strings.size());
        int exact = 0;
        int reported = 0;
        int overridden = 0;
        for (size_t i = 0; i < strings.size(); ++i) {
            std::vector<int32_t> want = expected[mode][i].get<std::vector<int32_t>>();
            for (const auto& [text, ids] : overrides) {
                if (text == strings[i]) {
                    want = ids;
                    ++overridden;
                }
            }
            const std::vector<int32_t> got = tokenizer.encode(strings[i], parse_special, add_bos);
            if (got == want) {
                ++exact;
            } else if (reported++ < 8) {
                ADD_FAILURE() << name << " " << mode << " string " << i << " '" << strings[i] << "'\n  ours " << show(got)
                              << "\n  want " << show(want);
            }
        }
        std::printf("%s %s: %d of %zu strings exact (%d of them llama.cpp's ids where the reference differs)\n", name,
                    mode, exact, strings.size(), overridden);
        EXPECT_EQ(overridden, static_cast<int>(overrides.size()));
        EXPECT_EQ(exact, static_cast<int>(strings.size())) << name << " " << mode;
    }
}

void expect_round_trip(const Tokenizer& tokenizer, bool spm) {
    for (const std::string& s : corpus()) {
        // SentencePiece pieces spell a space as U+2581, so text that has U+2581 itself comes
        // back with spaces: lossy by design, as in SentencePiece.
        if (spm && s.find("\xE2\x96\x81") != std::string::npos) continue;
        // Qwen normalises to NFC: decomposed input comes back composed.
        const std::string sanitized =
            spm ? sanitize_utf8(s) : nfc_normalize(sanitize_utf8(s));
        const std::vector<int32_t> ids = tokenizer.encode(s, /*parse_special=*/false);
        EXPECT_EQ(tokenizer.decode(ids), sanitized) << "'" << s << "'";
        TokenStreamDecoder stream(tokenizer);
        std::string streamed;
        for (const int32_t id : ids) {
            const std::string part = stream.push(id);
            EXPECT_TRUE(is_valid_utf8(part));
            streamed += part;
        }
        streamed += stream.flush();
        EXPECT_EQ(streamed, sanitized) << "'" << s << "'";
    }
}

// ---- Gemma 3 ---------------------------------------------------------------------------------

class GemmaTokenizer : public ::testing::Test {
protected:
    // Loaded once; a missing default model fails every test (never skips).
    static void SetUpTestSuite() {
        Result<std::filesystem::path> path = default_model_path();
        if (!path.ok()) {
            error_ = path.status().message();
            return;
        }
        Result<GgufFile> file = GgufFile::open(*path);
        if (!file.ok()) {
            error_ = file.status().message();
            return;
        }
        Result<Tokenizer> tokenizer = Tokenizer::from_gguf(*file);
        if (!tokenizer.ok()) {
            error_ = tokenizer.status().message();
            return;
        }
        tokenizer_ = std::make_unique<Tokenizer>(std::move(tokenizer).value());
    }
    static void TearDownTestSuite() { tokenizer_.reset(); }
    void SetUp() override { ASSERT_TRUE(error_.empty()) << error_; }

    static inline std::unique_ptr<Tokenizer> tokenizer_;
    static inline std::string error_;
};

TEST_F(GemmaTokenizer, DescribesTheVocabulary) {
    const Tokenizer& t = *tokenizer_;
    EXPECT_EQ(t.algorithm(), TokenizerAlgorithm::kSpm);
    EXPECT_EQ(t.vocab_size(), 262144);
    EXPECT_EQ(t.bos_id(), 2);
    EXPECT_EQ(t.eos_id(), 1);
    EXPECT_TRUE(t.add_bos());
    EXPECT_EQ(t.find_token("<end_of_turn>"), 106);
    EXPECT_EQ(t.find_token("<start_of_turn>"), 105);
    EXPECT_FALSE(t.find_token("no such piece here").has_value());
    EXPECT_TRUE(t.is_control(106));
    EXPECT_FALSE(t.is_control(107));  // "\n" is user-defined
    EXPECT_EQ(t.token_kind(238), TokenKind::kByte);  // <0x00>
    EXPECT_EQ(t.end_of_generation_ids(), (std::vector<int32_t>{1, 106}));
    EXPECT_TRUE(t.is_end_of_generation(106));
    EXPECT_FALSE(t.is_end_of_generation(105));
}

TEST_F(GemmaTokenizer, MatchesTransformersOnTheCorpus) {
    expect_matches_reference(*tokenizer_, kFixtures / "gemma3_expected.json", /*add_bos=*/true, "gemma3",
                             kGemmaLlamaCppOverrides);
}

TEST_F(GemmaTokenizer, ParsesSpecialTokensOnlyWhenAsked) {
    const Tokenizer& t = *tokenizer_;
    EXPECT_EQ(t.encode("<start_of_turn>user", true), (std::vector<int32_t>{105, 2364}));
    const std::vector<int32_t> plain = t.encode("<start_of_turn>user", false);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), 105), 0);
    EXPECT_EQ(t.decode(plain), "<start_of_turn>user");
    // User-defined tokens match either way.
    EXPECT_EQ(t.encode("\n", false), (std::vector<int32_t>{107}));
    EXPECT_EQ(t.encode("hi", false, /*add_bos=*/true).front(), 2);
    EXPECT_EQ(t.decode({2, 105, 2364}, /*skip_special=*/true), "user");
    EXPECT_EQ(t.decode({2, 105, 2364}), "<bos><start_of_turn>user");
}

TEST_F(GemmaTokenizer, RoundTripsAndStreams) { expect_round_trip(*tokenizer_, /*spm=*/true); }

TEST_F(GemmaTokenizer, ByteFallbackPiecesArePartialUtf8) {
    const Tokenizer& t = *tokenizer_;
    const std::vector<int32_t> ids = t.encode("\xF0\x9F\xAB\xA0");  // 🫠: not a piece, four <0xNN>
    TokenStreamDecoder stream(t);
    std::string out;
    for (const int32_t id : ids) out += stream.push(id);
    EXPECT_EQ(out + stream.flush(), "\xF0\x9F\xAB\xA0");
    // An unfinished character at the end comes out as U+FFFD.
    TokenStreamDecoder cut(t);
    EXPECT_EQ(cut.push(*t.find_token("<0xF0>")), "");
    EXPECT_EQ(cut.flush(), "\xEF\xBF\xBD");
}

// ---- Qwen3.5 ---------------------------------------------------------------------------------

// Unpacks the gzipped tokenizer.json into a temporary folder with tokenizer_config.json.
std::filesystem::path qwen_folder() {
    static const std::filesystem::path folder = [] {
        const std::filesystem::path dir =
            std::filesystem::temp_directory_path() / ("kestrel_tok_" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir);
        const std::string command = "gzip -dc '" + (kFixtures / "qwen35/tokenizer.json.gz").string() + "' > '" +
                                    (dir / "tokenizer.json").string() + "'";
        if (std::system(command.c_str()) != 0) return std::filesystem::path();
        std::filesystem::copy_file(kFixtures / "qwen35/tokenizer_config.json", dir / "tokenizer_config.json",
                                   std::filesystem::copy_options::overwrite_existing);
        return dir;
    }();
    return folder;
}

// A GGUF of the same vocabulary, written as llama.cpp's converter would (gpt2 / qwen35).
Result<std::vector<uint8_t>> qwen_gguf_bytes() {
    const nlohmann::json j = read_json(qwen_folder() / "tokenizer.json");
    if (!j.is_object()) return Status(StatusCode::kNotFound, "no tokenizer.json");
    const auto& vocab = j["model"]["vocab"];
    const auto& added = j["added_tokens"];
    std::vector<std::string> tokens(vocab.size() + added.size());
    std::vector<int32_t> types(tokens.size(), 1);
    for (auto entry = vocab.begin(); entry != vocab.end(); ++entry) tokens[entry.value().get<size_t>()] = entry.key();
    for (const auto& a : added) {
        tokens[a["id"].get<size_t>()] = a["content"].get<std::string>();
        types[a["id"].get<size_t>()] = a["special"].get<bool>() ? 3 : 4;
    }
    std::vector<std::string> merges;
    for (const auto& m : j["model"]["merges"]) merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    GgufWriter writer;
    writer.set("general.architecture", gguf_string("qwen35"));
    writer.set("tokenizer.ggml.model", gguf_string("gpt2"));
    writer.set("tokenizer.ggml.pre", gguf_string("qwen35"));
    writer.set("tokenizer.ggml.tokens", gguf_string_array(tokens));
    writer.set("tokenizer.ggml.token_type", gguf_i32_array(types));
    writer.set("tokenizer.ggml.merges", gguf_string_array(merges));
    writer.set("tokenizer.ggml.eos_token_id", gguf_u32(248046));
    writer.set("tokenizer.ggml.padding_token_id", gguf_u32(248044));
    writer.set("tokenizer.ggml.add_bos_token", gguf_bool(false));
    return writer.to_bytes();
}

class QwenTokenizer : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        Result<Tokenizer> hf = Tokenizer::from_hf_folder(qwen_folder());
        if (!hf.ok()) {
            error_ = hf.status().message();
            return;
        }
        hf_ = std::make_unique<Tokenizer>(std::move(hf).value());
        Result<std::vector<uint8_t>> bytes = qwen_gguf_bytes();
        if (!bytes.ok()) {
            error_ = bytes.status().message();
            return;
        }
        gguf_bytes_ = std::move(bytes).value();
        Result<GgufFile> file = GgufFile::parse(gguf_bytes_, "qwen35-tokenizer.gguf");
        if (!file.ok()) {
            error_ = file.status().message();
            return;
        }
        Result<Tokenizer> gguf = Tokenizer::from_gguf(*file);
        if (!gguf.ok()) {
            error_ = gguf.status().message();
            return;
        }
        gguf_ = std::make_unique<Tokenizer>(std::move(gguf).value());
    }
    static void TearDownTestSuite() {
        hf_.reset();
        gguf_.reset();
        std::filesystem::remove_all(qwen_folder());
    }
    void SetUp() override { ASSERT_TRUE(error_.empty()) << error_; }

    static inline std::unique_ptr<Tokenizer> hf_;
    static inline std::unique_ptr<Tokenizer> gguf_;
    static inline std::vector<uint8_t> gguf_bytes_;
    static inline std::string error_;
};

TEST_F(QwenTokenizer, DescribesTheVocabulary) {
    for (const Tokenizer* t : {hf_.get(), gguf_.get()}) {
        EXPECT_EQ(t->algorithm(), TokenizerAlgorithm::kByteLevel);
        EXPECT_EQ(t->vocab_size(), 248077);
        EXPECT_FALSE(t->add_bos());
        EXPECT_EQ(t->eos_id(), 248046);
        EXPECT_EQ(t->find_token("<|im_start|>"), 248045);
        EXPECT_EQ(t->find_token("<think>"), 248068);
        EXPECT_TRUE(t->is_control(248045));
        EXPECT_EQ(t->end_of_generation_ids(), (std::vector<int32_t>{248044, 248046}));
    }
}

TEST_F(QwenTokenizer, TokenizerJsonMatchesHuggingFace) {
    expect_matches_reference(*hf_, kFixtures / "qwen35_expected.json", false, "qwen35 tokenizer.json");
}

TEST_F(QwenTokenizer, GgufMatchesHuggingFace) {
    expect_matches_reference(*gguf_, kFixtures / "qwen35_expected.json", false, "qwen35 gguf");
}

TEST_F(QwenTokenizer, ParsesSpecialTokensOnlyWhenAsked) {
    const Tokenizer& t = *hf_;
    EXPECT_EQ(t.encode("<|im_start|>", true), (std::vector<int32_t>{248045}));
    const std::vector<int32_t> plain = t.encode("<|im_start|>", false);
    EXPECT_GT(plain.size(), 1u);
    EXPECT_EQ(t.decode(plain), "<|im_start|>");
    EXPECT_EQ(t.decode({248045, 9419, 248046}, /*skip_special=*/true), "Hello");
}

TEST_F(QwenTokenizer, RoundTripsAndStreams) { expect_round_trip(*hf_, /*spm=*/false); }

// ---- bad files ---------------------------------------------------------------------------------

Result<Tokenizer> from_metadata(const std::function<void(GgufWriter&)>& edit) {
    GgufWriter writer;
    writer.set("tokenizer.ggml.model", gguf_string("llama"));
    writer.set("tokenizer.ggml.tokens", gguf_string_array({"<unk>", "<s>", "a", "b", "ab"}));
    writer.set("tokenizer.ggml.scores", gguf_f32_array({0, 0, -1, -1, -0.5f}));
    writer.set("tokenizer.ggml.token_type", gguf_i32_array({2, 3, 1, 1, 1}));
    writer.set("tokenizer.ggml.unknown_token_id", gguf_u32(0));
    writer.set("tokenizer.ggml.add_space_prefix", gguf_bool(false));
    edit(writer);
    static std::vector<uint8_t> bytes;  // the GgufFile borrows them
    Result<std::vector<uint8_t>> out = writer.to_bytes();
    if (!out.ok()) return out.status();
    bytes = std::move(out).value();
    Result<GgufFile> file = GgufFile::parse(bytes, "bad.gguf");
    if (!file.ok()) return file.status();
    return Tokenizer::from_gguf(*file);
}

void expect_one_line_error(const Result<Tokenizer>& result, std::string_view needle) {
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().message().find('\n'), std::string::npos);
    EXPECT_NE(result.status().message().find(needle), std::string::npos) << result.status().message();
}

TEST(TokenizerErrors, SmallSpmVocabularyWorks) {
    Result<Tokenizer> t = from_metadata([](GgufWriter&) {});
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(t->encode("ab"), (std::vector<int32_t>{4}));
    EXPECT_EQ(t->encode("abc"), (std::vector<int32_t>{4, 0}));  // no piece, no <0x63>: <unk>
}

TEST(TokenizerErrors, BadGgufMetadata) {
    expect_one_line_error(from_metadata([](GgufWriter& w) { w.set("tokenizer.ggml.scores", gguf_f32_array({0, 1})); }),
                          "tokenizer.ggml.scores has 2 entries for 5 tokens");
    expect_one_line_error(
        from_metadata([](GgufWriter& w) { w.set("tokenizer.ggml.token_type", gguf_i32_array({1})); }),
        "tokenizer.ggml.token_type has 1 entries");
    expect_one_line_error(from_metadata([](GgufWriter& w) { w.set("tokenizer.ggml.model", gguf_string("bert")); }),
                          "tokenizer.ggml.model 'bert'");
    expect_one_line_error(
        from_metadata([](GgufWriter& w) { w.set("tokenizer.ggml.tokens", gguf_string_array({})); }), "tokens");
    expect_one_line_error(from_metadata([](GgufWriter& w) { w.set("tokenizer.ggml.bos_token_id", gguf_u32(99)); }),
                          "outside the vocabulary");
    expect_one_line_error(from_metadata([](GgufWriter& w) {
                              w.set("tokenizer.ggml.model", gguf_string("gemma4"));
                              w.set("tokenizer.ggml.merges", gguf_string_array({"a b", "a zz"}));
                          }),
                          "tokenizer.ggml.merges[1] 'a zz' names a token that is not in the vocabulary");
    expect_one_line_error(from_metadata([](GgufWriter& w) {
                              w.set("tokenizer.ggml.model", gguf_string("gpt2"));
                              w.set("tokenizer.ggml.pre", gguf_string("qwen35"));
                              w.set("tokenizer.ggml.merges", gguf_string_array({}));
                          }),
                          "no token for byte");
}

TEST(TokenizerErrors, GemmaFourStyleMergesWork) {
    Result<Tokenizer> t = from_metadata([](GgufWriter& w) {
        w.set("tokenizer.ggml.model", gguf_string("gemma4"));
        w.set("tokenizer.ggml.merges", gguf_string_array({"a b"}));
    });
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(t->algorithm(), TokenizerAlgorithm::kSpmMerges);
    EXPECT_EQ(t->encode("abab"), (std::vector<int32_t>{4, 4}));
}

TEST(TokenizerErrors, BadTokenizerJson) {
    const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("kestrel_badtok_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto write = [&](const std::string& text) { std::ofstream(dir / "tokenizer.json") << text; };
    std::string vocab = "{";
    for (int b = 0; b < 256; ++b) {
        std::string piece;
        append_utf8(piece, b < 33 ? 256 + b : b);  // not the real mapping: only the count matters here
        vocab += nlohmann::json(piece).dump() + ":" + std::to_string(b) + ",";
    }
    vocab += "\"ab\":256}";
    const std::string pre = R"("pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true})";
    write(R"({"model":{"type":"BPE","vocab":)" + vocab + R"(,"merges":["a b","a q"]},)" + pre + "}");
    Result<Tokenizer> t = Tokenizer::from_hf_folder(dir);
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("model.merges[1] 'a q' names a token that is not in the vocabulary"),
              std::string::npos)
        << t.status().message();
    write(R"({"model":{"type":"WordPiece","vocab":{}}})");
    expect_one_line_error(Tokenizer::from_hf_folder(dir), "model.type 'WordPiece'");
    write("{\"model\":");
    expect_one_line_error(Tokenizer::from_hf_folder(dir), "tokenizer.json");
    std::filesystem::remove_all(dir);
    expect_one_line_error(Tokenizer::from_hf_folder(dir), "cannot open");
}

TEST(Utf8, InvalidBytesBecomeReplacementCharacters) {
    // Python: b"\xe4\xbd\xa0\xe5".decode("utf-8", "replace") == "你\ufffd"; maximal subparts.
    EXPECT_EQ(sanitize_utf8("\xE4\xBD\xA0\xE5"), "\xE4\xBD\xA0\xEF\xBF\xBD");
    EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    EXPECT_EQ(sanitize_utf8("\xF0\x9F\x98"), "\xEF\xBF\xBD");
    EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F"), 2u);
    EXPECT_EQ(incomplete_utf8_tail("a\xFF"), 0u);
    EXPECT_EQ(nfc_normalize("e\xCC\x81"), "\xC3\xA9");                                // é
    EXPECT_EQ(nfc_normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // 각
}

}  // namespace
}  // namespace kestrel
