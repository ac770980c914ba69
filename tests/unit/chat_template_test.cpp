// Chat templates against tests/fixtures/chat/expected.json: every conversation rendered by
// Hugging Face's own renderer (scripts/make_chat_fixtures.py) with each model's published
// template must come out of render_chat byte for byte, and every case where the template
// raised must be an error here. Plus format detection, the reasoning split and our own
// refusals (unknown roles).
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(KESTREL_SOURCE_DIR) / "tests" / "fixtures" / "chat";

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

template <class T>
void expect_error(const Result<T>& result, StatusCode code, std::initializer_list<std::string> mentions) {
    ASSERT_FALSE(result.ok());
    const std::string& message = result.status().message();
    EXPECT_EQ(result.status().code(), code) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const std::string& text : mentions) EXPECT_NE(message.find(text), std::string::npos) << message;
}

ChatFormat format_from_family(const std::string& family) {
    if (family == "gemma3") return ChatFormat::kGemma3;
    if (family == "gemma4") return ChatFormat::kGemma4;
    return ChatFormat::kQwen35;
}

std::string escape(const std::string& text) {
    return nlohmann::json(text).dump();  // shows \n and friends in failure messages
}

TEST(ChatTemplate, MatchesHuggingFaceRenderingForEveryFixtureCase) {
    const nlohmann::json document = nlohmann::json::parse(read_text(kFixtures / "expected.json"), nullptr, false);
    ASSERT_TRUE(document.is_object()) << "missing or invalid tests/fixtures/chat/expected.json";
    const nlohmann::json& cases = document["cases"];
    ASSERT_GE(cases.size(), 60u);

    std::map<std::string, int> rendered_per_family;
    for (const nlohmann::json& c : cases) {
        const std::string family = c["family"];
        const std::string name = c["name"];
        SCOPED_TRACE(family + "/" + name);
        std::vector<ChatMessage> messages;
        for (const nlohmann::json& m : c["messages"]) messages.push_back({m["role"], m["content"]});
        ChatOptions options;
        options.add_generation_prompt = c["add_generation_prompt"];
        options.enable_thinking = c["enable_thinking"].get<bool>();

        Result<std::string> text = render_chat(format_from_family(family), messages, options);
        if (c.contains("error")) {
            EXPECT_FALSE(text.ok()) << "HF raised (" << c["error"].get<std::string>() << ") but we rendered " << escape(*text);
            if (!text.ok()) {
                EXPECT_EQ(text.status().code(), StatusCode::kInvalidArgument);
                EXPECT_NE(text.status().message().find(family), std::string::npos) << text.status().message();
            }
        } else {
            ASSERT_TRUE(text.ok()) << text.status().message();
            const std::string expected = c["expected"];
            EXPECT_EQ(*text, expected) << "ours:     " << escape(*text) << "\nexpected: " << escape(expected);
            ++rendered_per_family[family];
        }
    }
    // Most cases render in every family; a broken fixture file that is all errors must fail.
    EXPECT_GE(rendered_per_family["gemma3"], 20);
    EXPECT_GE(rendered_per_family["gemma4"], 25);
    EXPECT_GE(rendered_per_family["qwen35"], 20);
}

TEST(ChatTemplate, TemplateDefaultForEnableThinking) {
    const std::vector<ChatMessage> messages = {{"user", "Hi"}};
    ChatOptions unset;  // enable_thinking = nullopt, as HF without the kwarg
    ChatOptions on;
    on.enable_thinking = true;
    ChatOptions off;
    off.enable_thinking = false;
    // Qwen3.5 thinks unless told `enable_thinking=false`; Gemma 4 thinks only when told to.
    EXPECT_EQ(*render_chat(ChatFormat::kQwen35, messages, unset), *render_chat(ChatFormat::kQwen35, messages, on));
    EXPECT_EQ(*render_chat(ChatFormat::kGemma4, messages, unset), *render_chat(ChatFormat::kGemma4, messages, off));
    EXPECT_EQ(*render_chat(ChatFormat::kGemma3, messages, on), *render_chat(ChatFormat::kGemma3, messages, off));
    EXPECT_EQ(*render_chat(ChatFormat::kGemma4, messages, unset),
              "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>");
}

TEST(ChatTemplate, RefusesUnknownRolesAndEmptyConversations) {
    for (ChatFormat format : {ChatFormat::kGemma3, ChatFormat::kGemma4, ChatFormat::kQwen35}) {
        SCOPED_TRACE(chat_format_name(format));
        const std::vector<ChatMessage> with_tool = {{"user", "Hi"}, {"tool", "42"}};
        expect_error(render_chat(format, with_tool, {}), StatusCode::kInvalidArgument, {"message 1", "'tool'", chat_format_name(format)});
        const std::vector<ChatMessage> with_developer = {{"developer", "Be nice."}, {"user", "Hi"}};
        expect_error(render_chat(format, with_developer, {}), StatusCode::kInvalidArgument, {"message 0", "'developer'"});
        expect_error(render_chat(format, std::span<const ChatMessage>(), {}), StatusCode::kInvalidArgument, {"no messages"});
    }
    expect_error(render_chat(ChatFormat::kGemma3, std::vector<ChatMessage>{{"assistant", "x"}}, {}), StatusCode::kInvalidArgument,
                 {"alternate"});
    expect_error(render_chat(ChatFormat::kQwen35, std::vector<ChatMessage>{{"system", "s"}}, {}), StatusCode::kInvalidArgument,
                 {"no user query"});
    expect_error(render_chat(ChatFormat::kQwen35, std::vector<ChatMessage>{{"user", "u"}, {"system", "s"}}, {}),
                 StatusCode::kInvalidArgument, {"message 1", "beginning"});
}

TEST(ChatTemplate, DetectsFormatFromArchitecture) {
    EXPECT_EQ(*detect_chat_format("gemma3", std::nullopt), ChatFormat::kGemma3);
    EXPECT_EQ(*detect_chat_format("gemma4", std::nullopt), ChatFormat::kGemma4);
    EXPECT_EQ(*detect_chat_format("qwen35moe", std::nullopt), ChatFormat::kQwen35);
    EXPECT_EQ(*detect_chat_format("qwen35", std::string_view()), ChatFormat::kQwen35);  // empty template = none
    expect_error(detect_chat_format("llama", std::nullopt), StatusCode::kUnsupported, {"'llama'", "no chat template"});
    expect_error(detect_chat_format("", std::nullopt), StatusCode::kUnsupported, {"architecture ''"});
}

TEST(ChatTemplate, DetectsFormatFromTemplateText) {
    const std::string gemma3 = read_text(kFixtures / "gemma3.jinja");
    const std::string gemma4 = read_text(kFixtures / "gemma4.jinja");
    const std::string qwen35 = read_text(kFixtures / "qwen35.jinja");
    ASSERT_FALSE(gemma3.empty());
    ASSERT_FALSE(gemma4.empty());
    ASSERT_FALSE(qwen35.empty());
    EXPECT_EQ(*detect_chat_format("", gemma3), ChatFormat::kGemma3);
    EXPECT_EQ(*detect_chat_format("", gemma4), ChatFormat::kGemma4);
    EXPECT_EQ(*detect_chat_format("", qwen35), ChatFormat::kQwen35);
    EXPECT_EQ(*detect_chat_format("unknownarch", qwen35), ChatFormat::kQwen35);
    // The template is what the model was trained on, so it wins over the architecture.
    EXPECT_EQ(*detect_chat_format("gemma3", qwen35), ChatFormat::kQwen35);

    // Plain ChatML without a think block (Qwen2.5 style) is not Qwen3.5's format.
    const std::string chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    expect_error(detect_chat_format("mystery", chatml), StatusCode::kUnsupported, {"'mystery'", "not one Kestrel renders"});
    expect_error(detect_chat_format("qwen35moe", chatml), StatusCode::kUnsupported, {"'qwen35moe'"});
    expect_error(detect_chat_format("", std::string_view("{{ messages }}")), StatusCode::kUnsupported, {"14 bytes"});
}

fs::path temp_dir(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("kestrel_chat_" + name + "_" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

Result<GgufFile> gguf_with(const std::vector<std::pair<std::string, std::string>>& strings, std::vector<uint8_t>& storage) {
    GgufWriter writer;
    for (const auto& [key, value] : strings) writer.set(key, gguf_string(value));
    Result<std::vector<uint8_t>> bytes = writer.to_bytes();
    if (!bytes.ok()) return bytes.status();
    storage = std::move(bytes).value();
    return GgufFile::parse(storage, "test.gguf");
}

TEST(ChatTemplate, DetectsFormatFromGguf) {
    std::vector<uint8_t> storage;
    // Like the Gemma 3 270M GGUF we ship: an architecture and no tokenizer.chat_template.
    Result<GgufFile> gemma3 = gguf_with({{"general.architecture", "gemma3"}}, storage);
    ASSERT_TRUE(gemma3.ok()) << gemma3.status().message();
    EXPECT_EQ(*detect_chat_format(*gemma3), ChatFormat::kGemma3);

    std::vector<uint8_t> storage2;
    Result<GgufFile> qwen = gguf_with({{"general.architecture", "qwen35moe"}, {"tokenizer.chat_template", read_text(kFixtures / "qwen35.jinja")}}, storage2);
    ASSERT_TRUE(qwen.ok()) << qwen.status().message();
    EXPECT_EQ(*detect_chat_format(*qwen), ChatFormat::kQwen35);

    std::vector<uint8_t> storage3;
    Result<GgufFile> unknown = gguf_with({{"general.architecture", "llama"}, {"tokenizer.chat_template", "{{ x }}"}}, storage3);
    ASSERT_TRUE(unknown.ok()) << unknown.status().message();
    expect_error(detect_chat_format(*unknown), StatusCode::kUnsupported, {"test.gguf", "'llama'"});
}

TEST(ChatTemplate, ReadsTemplateFromHfFolder) {
    const fs::path dir = temp_dir("hf");
    Result<std::optional<std::string>> none = read_hf_chat_template(dir);
    ASSERT_TRUE(none.ok()) << none.status().message();
    EXPECT_FALSE(none->has_value());

    std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<bos>", "chat_template": "{{ bos_token }}<start_of_turn>"})";
    Result<std::optional<std::string>> from_config = read_hf_chat_template(dir);
    ASSERT_TRUE(from_config.ok()) << from_config.status().message();
    EXPECT_EQ(from_config->value(), "{{ bos_token }}<start_of_turn>");

    std::ofstream(dir / "tokenizer_config.json", std::ios::trunc)
        << R"({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "<|im_start|><think>"}]})";
    EXPECT_EQ(read_hf_chat_template(dir)->value(), "<|im_start|><think>");

    std::ofstream(dir / "tokenizer_config.json", std::ios::trunc) << R"({"chat_template": 7})";
    expect_error(read_hf_chat_template(dir), StatusCode::kCorruptFile, {"tokenizer_config.json", "chat_template"});

    // chat_template.jinja takes precedence, as in transformers.
    std::ofstream(dir / "chat_template.jinja") << read_text(kFixtures / "gemma4.jinja");
    Result<std::optional<std::string>> from_jinja = read_hf_chat_template(dir);
    ASSERT_TRUE(from_jinja.ok()) << from_jinja.status().message();
    EXPECT_EQ(*detect_chat_format("", from_jinja->value()), ChatFormat::kGemma4);
    fs::remove_all(dir);
}

TEST(ChatTemplate, SplitsQwenThinking) {
    // Thinking on: the prompt ended with "<think>\n", so the reply starts inside the block.
    ReasoningSplit split = split_reasoning(ChatFormat::kQwen35, "Add 2 and 2.\n</think>\n\nThe answer is 4.", true);
    EXPECT_EQ(split.reasoning, "Add 2 and 2.");
    EXPECT_EQ(split.content, "The answer is 4.");
    // A reply that opens its own block.
    split = split_reasoning(ChatFormat::kQwen35, "<think>\nhmm\n</think>\n\nYes.");
    EXPECT_EQ(split.reasoning, "hmm");
    EXPECT_EQ(split.content, "Yes.");
    // Thinking off: the empty block was in the prompt; the reply is all answer.
    EXPECT_EQ(strip_reasoning(ChatFormat::kQwen35, "Just the answer.\n"), "Just the answer.");
    // Cut off mid-thought: nothing to show yet.
    split = split_reasoning(ChatFormat::kQwen35, "still thinking about it", true);
    EXPECT_EQ(split.reasoning, "still thinking about it");
    EXPECT_EQ(split.content, "");
}

TEST(ChatTemplate, SplitsGemma4ThoughtChannel) {
    ReasoningSplit split = split_reasoning(ChatFormat::kGemma4, "<|channel>thought\nCount: 2+2=4.<channel|>It is 4.");
    EXPECT_EQ(split.reasoning, "Count: 2+2=4.");
    EXPECT_EQ(split.content, "It is 4.");
    split = split_reasoning(ChatFormat::kGemma4, "<|channel>thought\nfirst<channel|>A <|channel>thought\nsecond<channel|>B");
    EXPECT_EQ(split.reasoning, "first\nsecond");
    EXPECT_EQ(split.content, "A B");
    split = split_reasoning(ChatFormat::kGemma4, "Visible <|channel>thought\ncut off");
    EXPECT_EQ(split.reasoning, "cut off");
    EXPECT_EQ(split.content, "Visible");
    EXPECT_EQ(strip_reasoning(ChatFormat::kGemma4, "No thinking here. "), "No thinking here.");
    // Gemma 3 has no thinking syntax: the reply is shown as is (trimmed).
    EXPECT_EQ(strip_reasoning(ChatFormat::kGemma3, " <think>x</think> y "), "<think>x</think> y");
}

}  // namespace
}  // namespace kestrel
