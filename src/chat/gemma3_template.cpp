// Gemma 3 chat format. Reproduces the "chat_template" of google/gemma-3-*-it
// tokenizer_config.json (one template for 270m..27b -it), copied to
// tests/fixtures/chat/gemma3.jinja; scripts/make_chat_fixtures.py says where the copy came from.
//
//   <bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n...
#include <string>

#include <fmt/format.h>

#include "chat/chat_internal.h"

namespace kestrel::chat_detail {

Result<std::string> render_gemma3(std::span<const ChatMessage> messages, const ChatOptions& options) {
    std::string out = "<bos>";

    // Gemma 3 has no system role: the system text goes, untrimmed (the template does not trim
    // it), in front of the first turn after it. A system-only conversation therefore renders
    // no system text at all, as the template does.
    std::string first_prefix;
    size_t start = 0;
    if (messages[0].role == "system") {
        first_prefix = messages[0].content + "\n\n";
        start = 1;
    }

    for (size_t i = start; i < messages.size(); ++i) {
        const ChatMessage& message = messages[i];
        const size_t turn = i - start;
        // Template: (role == 'user') != (loop.index0 % 2 == 0) raises. Only "user" counts as
        // user, so a late system message passes at odd turns (and is printed as "system").
        if ((message.role == "user") != (turn % 2 == 0)) {
            return Status(StatusCode::kInvalidArgument,
                          fmt::format("gemma3 chat: message {} has role '{}' where the template requires roles to alternate "
                                      "user/assistant/user/... (after an optional leading system message)",
                                      i, message.role));
        }
        const std::string_view role = message.role == "assistant" ? std::string_view("model") : message.role;
        out += "<start_of_turn>";
        out += role;
        out += '\n';
        if (turn == 0) out += first_prefix;
        out += python_strip(message.content);
        out += "<end_of_turn>\n";
    }

    if (options.add_generation_prompt) out += "<start_of_turn>model\n";
    return out;
}

}  // namespace kestrel::chat_detail
