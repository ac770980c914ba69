// Shared by the per-family renderers in src/chat/; not part of the public API.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "chat/chat_template.h"

namespace kestrel::chat_detail {

// Python's str.strip() with no argument, which Jinja's `trim` filter calls: removes every
// code point for which str.isspace() is true (ASCII whitespace, U+001C..U+001F, U+0085, NBSP,
// U+1680, U+2000..U+200A, U+2028/9, U+202F, U+205F, U+3000) from both ends of UTF-8 text.
std::string_view python_strip(std::string_view text);

// str.lstrip('\n') / str.rstrip('\n').
std::string_view lstrip_newlines(std::string_view text);
std::string_view rstrip_newlines(std::string_view text);

// The renderers. `messages` is non-empty and every role is system, user or assistant
// (render_chat checks before dispatching).
Result<std::string> render_gemma3(std::span<const ChatMessage> messages, const ChatOptions& options);
Result<std::string> render_gemma4(std::span<const ChatMessage> messages, const ChatOptions& options);
Result<std::string> render_qwen35(std::span<const ChatMessage> messages, const ChatOptions& options);

}  // namespace kestrel::chat_detail
