// Gemma 4 chat format. Reproduces google/gemma-4-31B-it chat_template.jinja in the revision
// with `preserve_thinking` and merged consecutive assistant turns (llama.cpp vendors it as
// models/templates/google-gemma-4-31B-it.jinja), copied to tests/fixtures/chat/gemma4.jinja;
// scripts/make_chat_fixtures.py says where the copy came from. Text-only turns: the tool
// declarations, tool calls/responses and `reasoning_content` fields of that template are not
// modelled (ChatMessage has no such fields).
//
//   <bos>[<|turn>system\n[<|think|>\n]{system}<turn|>\n]<|turn>user\n{user}<turn|>\n
//   <|turn>model\n{answer without thinking}<turn|>\n ... <|turn>model\n[<|channel>thought\n<channel|>]
#include <string>

#include "chat/chat_internal.h"

namespace kestrel::chat_detail {
namespace {

// The template's strip_thinking macro: split on "<channel|>", keep each piece up to its
// "<|channel>", trim the concatenation. Past answers thus lose their thought channels; note
// that an unterminated "<|channel>" drops the rest of the text.
std::string strip_thinking(std::string_view text) {
    constexpr std::string_view kOpen = "<|channel>";
    constexpr std::string_view kClose = "<channel|>";
    std::string result;
    size_t begin = 0;
    while (true) {
        const size_t close = text.find(kClose, begin);
        const std::string_view part = text.substr(begin, close == std::string_view::npos ? std::string_view::npos : close - begin);
        result += part.substr(0, part.find(kOpen));  // npos keeps the whole part
        if (close == std::string_view::npos) break;
        begin = close + kClose.size();
    }
    return std::string(python_strip(result));
}

}  // namespace

Result<std::string> render_gemma4(std::span<const ChatMessage> messages, const ChatOptions& options) {
    const bool thinking = options.enable_thinking.value_or(false);
    std::string out = "<bos>";

    // A system turn opens the prompt when there is a system message or thinking is on: the
    // <|think|> switch lives at the top of the first system turn.
    size_t start = 0;
    if (thinking || messages[0].role == "system") {
        out += "<|turn>system\n";
        if (thinking) out += "<|think|>\n";
        if (messages[0].role == "system") {
            out += python_strip(messages[0].content);
            start = 1;
        }
        out += "<turn|>\n";
    }

    for (size_t i = start; i < messages.size(); ++i) {
        const ChatMessage& message = messages[i];
        const bool is_assistant = message.role == "assistant";
        // Consecutive assistant messages continue one model turn: no second <|turn>model
        // header, though each still ends with <turn|>.
        const bool continues_model_turn = is_assistant && i > start && messages[i - 1].role == "assistant";
        if (!continues_model_turn) {
            out += "<|turn>";
            out += is_assistant ? std::string_view("model") : std::string_view(message.role);
            out += '\n';
        }
        // Later system messages are printed as system turns; the template allows them.
        if (is_assistant) {
            out += strip_thinking(message.content);
        } else {
            out += python_strip(message.content);
        }
        out += "<turn|>\n";
    }

    if (options.add_generation_prompt) {
        out += "<|turn>model\n";
        // With thinking off the prompt closes an empty thought channel, so the model answers
        // directly; with thinking on it is left to open one.
        if (!thinking) out += "<|channel>thought\n<channel|>";
    }
    return out;
}

}  // namespace kestrel::chat_detail
