// Qwen3.5 chat format. Reproduces Qwen/Qwen3.5-35B-A3B chat_template.jinja (the same ChatML
// template the Qwen3.5 family ships), copied to tests/fixtures/chat/qwen35.jinja;
// scripts/make_chat_fixtures.py says where the copy came from. Text-only turns: the tool
// declarations, tool calls, role "tool", images/videos and `reasoning_content` of that
// template are not modelled.
//
//   [<|im_start|>system\n{system}<|im_end|>\n]<|im_start|>user\n{user}<|im_end|>\n
//   <|im_start|>assistant\n{answer}<|im_end|>\n ... <|im_start|>assistant\n<think>\n[\n</think>\n\n]
#include <string>

#include <fmt/format.h>

#include "chat/chat_internal.h"

namespace kestrel::chat_detail {

Result<std::string> render_qwen35(std::span<const ChatMessage> messages, const ChatOptions& options) {
    constexpr std::string_view kThinkOpen = "<think>";
    constexpr std::string_view kThinkClose = "</think>";

    std::string out;
    if (messages[0].role == "system") {
        out += "<|im_start|>system\n";
        out += python_strip(messages[0].content);
        out += "<|im_end|>\n";
    }

    // The last real user query: a user message that is not just a wrapped tool response.
    // Assistant turns after it keep their thinking; earlier ones lose it.
    std::optional<size_t> last_query;
    for (size_t i = messages.size(); i-- > 0;) {
        if (messages[i].role != "user") continue;
        const std::string_view content = python_strip(messages[i].content);
        if (!(content.starts_with("<tool_response>") && content.ends_with("</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    if (!last_query) {
        return Status(StatusCode::kInvalidArgument, "qwen35 chat: no user query found in messages (the template raises)");
    }

    for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& message = messages[i];
        std::string_view content = python_strip(message.content);
        if (message.role == "system") {
            if (i != 0) {
                return Status(StatusCode::kInvalidArgument,
                              fmt::format("qwen35 chat: message {} is a system message; the template allows one only at the beginning", i));
            }
        } else if (message.role == "user") {
            out += "<|im_start|>user\n";
            out += content;
            out += "<|im_end|>\n";
        } else {
            // Template: reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
            //           content   = content.split('</think>')[-1].lstrip('\n')
            std::string_view reasoning;
            if (const size_t first_close = content.find(kThinkClose); first_close != std::string_view::npos) {
                reasoning = rstrip_newlines(content.substr(0, first_close));
                if (const size_t open = reasoning.rfind(kThinkOpen); open != std::string_view::npos) {
                    reasoning = reasoning.substr(open + kThinkOpen.size());
                }
                reasoning = lstrip_newlines(reasoning);
                content = lstrip_newlines(content.substr(content.rfind(kThinkClose) + kThinkClose.size()));
            }
            reasoning = python_strip(reasoning);
            out += "<|im_start|>assistant\n";
            // After the last query every assistant turn carries a think block, an empty one if
            // there was no thinking, whatever enable_thinking says.
            if (i > *last_query) {
                out += "<think>\n";
                out += reasoning;
                out += "\n</think>\n\n";
            }
            out += content;
            out += "<|im_end|>\n";
        }
    }

    if (options.add_generation_prompt) {
        out += "<|im_start|>assistant\n";
        // Only an explicit enable_thinking=false turns thinking off (`is false` in the template).
        out += options.enable_thinking.value_or(true) ? "<think>\n" : "<think>\n\n</think>\n\n";
    }
    return out;
}

}  // namespace kestrel::chat_detail
