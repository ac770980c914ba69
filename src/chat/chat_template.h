// Chat templates: a conversation rendered to the exact prompt text each model was trained on,
// byte-identical to Hugging Face `apply_chat_template(messages, tokenize=False, ...)` with the
// model's own template. No general Jinja engine: one small renderer per family
// (gemma3_template.cpp, gemma4_template.cpp, qwen35_template.cpp), each naming the template
// revision it reproduces; tests/fixtures/chat/ holds those templates and HF's renderings.
#pragma once

#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "kestrel/status.h"

namespace kestrel {

class GgufFile;

// One turn. `role` is "system", "user" or "assistant"; anything else is refused (the Gemma
// templates would print an unknown role verbatim, Qwen3.5's raises; we refuse everywhere).
// `content` is UTF-8 text; assistant content may still carry the model's thinking, which
// each family strips from history the way its template does.
struct ChatMessage {
    std::string role;
    std::string content;
};

enum class ChatFormat {
    kGemma3,  // <start_of_turn>user\n...<end_of_turn>\n, system merged into the first user turn
    kGemma4,  // <|turn>user\n...<turn|>\n, thinking via <|think|> and <|channel>thought...<channel|>
    kQwen35,  // ChatML <|im_start|>role\n...<|im_end|>\n with <think>...</think>
};

const char* chat_format_name(ChatFormat format);

struct ChatOptions {
    // Append the opening of the assistant's turn, so generation continues as the model.
    bool add_generation_prompt = true;
    // nullopt: the template's own default, as when HF is not passed `enable_thinking`
    // (Gemma 4: off; Qwen3.5: on). Gemma 3 has no thinking mode and ignores it.
    std::optional<bool> enable_thinking;
};

// Picks the renderer. A template (GGUF `tokenizer.chat_template`, tokenizer_config.json
// `chat_template` or chat_template.jinja) decides when present, since it is what the model
// was trained on even if the architecture says otherwise (a fine-tune may change format);
// it must be recognisably one of ours, or the answer is kUnsupported rather than a guess.
// Without a template the architecture decides (gemma3, gemma4, qwen35moe/qwen35): the Gemma 3
// 270M GGUF we ship carries no template.
Result<ChatFormat> detect_chat_format(std::string_view architecture, std::optional<std::string_view> template_text);

// Same, reading `general.architecture` and `tokenizer.chat_template` from a GGUF.
Result<ChatFormat> detect_chat_format(const GgufFile& file);

// The chat template of a Hugging Face model folder: chat_template.jinja if present, else
// tokenizer_config.json's "chat_template" (a string, or a list of {name, template} whose
// "default" entry is used). nullopt when the folder has neither.
Result<std::optional<std::string>> read_hf_chat_template(const std::filesystem::path& folder);

// Renders `messages` as the family's template does. Errors (kInvalidArgument) where the
// template raises (e.g. Gemma 3 roles not alternating, Qwen3.5 without a user turn or with a
// system message after the first) and for an empty conversation or an unknown role.
Result<std::string> render_chat(ChatFormat format, std::span<const ChatMessage> messages, const ChatOptions& options);

// A generated reply split into the model's thinking and the visible answer.
struct ReasoningSplit {
    std::string reasoning;  // thinking text without its markers, trimmed; empty if none
    std::string content;    // what a user should see, trimmed
};

// Qwen3.5: `<think>...</think>`; Gemma 4: `<|channel>thought\n...<channel|>` blocks (an
// unterminated block runs to the end). `starts_in_reasoning`: the prompt already opened the
// thinking block (Qwen3.5 with thinking on ends its prompt with "<think>\n"), so the reply
// is thinking until its `</think>`. Gemma 3 replies are all content.
ReasoningSplit split_reasoning(ChatFormat format, std::string_view reply, bool starts_in_reasoning = false);

// split_reasoning(...).content: the reply as it should be displayed.
std::string strip_reasoning(ChatFormat format, std::string_view reply, bool starts_in_reasoning = false);

}  // namespace kestrel
