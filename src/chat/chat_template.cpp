// Format detection, dispatch to the per-family renderers, and the reasoning split.
#include "chat/chat_template.h"

#include <cstdint>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "chat/chat_internal.h"
#include "io/gguf.h"

namespace kestrel {
namespace chat_detail {
namespace {

// Python's str.isspace() for one code point (Unicode White_Space plus the ASCII separators
// U+001C..U+001F that Python also counts).
bool is_python_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Decodes the UTF-8 sequence at text[pos]; returns its length, 0 if malformed.
size_t decode_utf8(std::string_view text, size_t pos, uint32_t* cp) {
    const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
    const uint8_t lead = byte(pos);
    size_t length = 0;
    if (lead < 0x80) {
        *cp = lead;
        return 1;
    }
    if ((lead & 0xE0) == 0xC0) {
        length = 2;
        *cp = lead & 0x1F;
    } else if ((lead & 0xF0) == 0xE0) {
        length = 3;
        *cp = lead & 0x0F;
    } else if ((lead & 0xF8) == 0xF0) {
        length = 4;
        *cp = lead & 0x07;
    } else {
        return 0;
    }
    if (pos + length > text.size()) return 0;
    for (size_t i = 1; i < length; ++i) {
        if ((byte(pos + i) & 0xC0) != 0x80) return 0;
        *cp = (*cp << 6) | (byte(pos + i) & 0x3F);
    }
    return length;
}

}  // namespace

std::string_view python_strip(std::string_view text) {
    // Leading: decode forward while the code point is whitespace. Malformed bytes stop the
    // scan (Python never sees them; they are content to us).
    size_t begin = 0;
    while (begin < text.size()) {
        uint32_t cp = 0;
        const size_t length = decode_utf8(text, begin, &cp);
        if (length == 0 || !is_python_space(cp)) break;
        begin += length;
    }
    // Trailing: step back to the start of the last sequence (at most 3 continuation bytes).
    size_t end = text.size();
    while (end > begin) {
        size_t start = end - 1;
        while (start > begin && end - start < 4 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
        uint32_t cp = 0;
        const size_t length = decode_utf8(text, start, &cp);
        if (length != end - start || !is_python_space(cp)) break;
        end = start;
    }
    return text.substr(begin, end - begin);
}

std::string_view lstrip_newlines(std::string_view text) {
    const size_t begin = text.find_first_not_of('\n');
    return begin == std::string_view::npos ? std::string_view() : text.substr(begin);
}

std::string_view rstrip_newlines(std::string_view text) {
    const size_t last = text.find_last_not_of('\n');
    return last == std::string_view::npos ? std::string_view() : text.substr(0, last + 1);
}

}  // namespace chat_detail

const char* chat_format_name(ChatFormat format) {
    switch (format) {
        case ChatFormat::kGemma3: return "gemma3";
        case ChatFormat::kGemma4: return "gemma4";
        case ChatFormat::kQwen35: return "qwen35";
    }
    return "unknown";
}

Result<ChatFormat> detect_chat_format(std::string_view architecture, std::optional<std::string_view> template_text) {
    if (template_text && !template_text->empty()) {
        const std::string_view text = *template_text;
        const auto has = [&](std::string_view marker) { return text.find(marker) != std::string_view::npos; };
        // Markers are each family's turn delimiters, which no other family's template prints.
        if (has("<|turn>") && has("<|channel>")) return ChatFormat::kGemma4;
        if (has("<start_of_turn>")) return ChatFormat::kGemma3;
        // ChatML alone is not enough: Qwen2.5-style templates have no thinking block and
        // render assistant history differently.
        if (has("<|im_start|>") && has("<think>")) return ChatFormat::kQwen35;
        return Status(StatusCode::kUnsupported,
                      fmt::format("chat template ({} bytes, architecture '{}') is not one Kestrel renders: expected Gemma 3 "
                                  "(<start_of_turn>), Gemma 4 (<|turn> and <|channel>) or Qwen3.5 (<|im_start|> and <think>)",
                                  text.size(), architecture));
    }
    if (architecture == "gemma3") return ChatFormat::kGemma3;
    if (architecture == "gemma4") return ChatFormat::kGemma4;
    if (architecture == "qwen35moe" || architecture == "qwen35") return ChatFormat::kQwen35;
    return Status(StatusCode::kUnsupported,
                  fmt::format("no chat template given and architecture '{}' has no built-in one (known: gemma3, gemma4, "
                              "qwen35moe, qwen35)",
                              architecture));
}

Result<ChatFormat> detect_chat_format(const GgufFile& file) {
    Result<std::string> architecture = file.get_string("general.architecture");
    if (!architecture.ok() && architecture.status().code() != StatusCode::kNotFound) return architecture.status();
    Result<std::string> text = file.get_string("tokenizer.chat_template");
    if (!text.ok() && text.status().code() != StatusCode::kNotFound) return text.status();

    const std::string arch = architecture.ok() ? *architecture : std::string();
    Result<ChatFormat> format = detect_chat_format(arch, text.ok() ? std::optional<std::string_view>(*text) : std::nullopt);
    if (!format.ok()) {
        return Status(format.status().code(), fmt::format("{}: {}", file.display_name(), format.status().message()));
    }
    return format;
}

Result<std::optional<std::string>> read_hf_chat_template(const std::filesystem::path& folder) {
    const auto read_all = [](const std::filesystem::path& path) -> Result<std::string> {
        std::ifstream in(path, std::ios::binary);
        if (!in) return Status(StatusCode::kIoError, fmt::format("{}: cannot open", path.string()));
        std::ostringstream text;
        text << in.rdbuf();
        return text.str();
    };

    // Recent transformers save the template on its own; older ones inside tokenizer_config.json.
    const std::filesystem::path jinja = folder / "chat_template.jinja";
    if (std::filesystem::exists(jinja)) {
        Result<std::string> text = read_all(jinja);
        if (!text.ok()) return text.status();
        return std::optional<std::string>(std::move(text).value());
    }
    const std::filesystem::path config_path = folder / "tokenizer_config.json";
    if (!std::filesystem::exists(config_path)) return std::optional<std::string>();
    Result<std::string> text = read_all(config_path);
    if (!text.ok()) return text.status();

    const nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
        return Status(StatusCode::kCorruptFile, fmt::format("{}: not a JSON object", config_path.string()));
    }
    const auto found = config.find("chat_template");
    if (found == config.end() || found->is_null()) return std::optional<std::string>();
    if (found->is_string()) return std::optional<std::string>(found->get<std::string>());
    if (found->is_array()) {
        for (const nlohmann::json& entry : *found) {
            if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") && entry["template"].is_string()) {
                return std::optional<std::string>(entry["template"].get<std::string>());
            }
        }
    }
    return Status(StatusCode::kCorruptFile,
                  fmt::format("{}: field 'chat_template' is neither a string nor a list with a 'default' template", config_path.string()));
}

Result<std::string> render_chat(ChatFormat format, std::span<const ChatMessage> messages, const ChatOptions& options) {
    // Every template indexes messages[0]; HF fails on an empty list too.
    if (messages.empty()) {
        return Status(StatusCode::kInvalidArgument, fmt::format("{} chat: no messages to render", chat_format_name(format)));
    }
    for (size_t i = 0; i < messages.size(); ++i) {
        const std::string& role = messages[i].role;
        if (role != "system" && role != "user" && role != "assistant") {
            return Status(StatusCode::kInvalidArgument,
                          fmt::format("{} chat: message {} has role '{}'; expected system, user or assistant",
                                      chat_format_name(format), i, role));
        }
    }
    switch (format) {
        case ChatFormat::kGemma3: return chat_detail::render_gemma3(messages, options);
        case ChatFormat::kGemma4: return chat_detail::render_gemma4(messages, options);
        case ChatFormat::kQwen35: return chat_detail::render_qwen35(messages, options);
    }
    return Status(StatusCode::kInternal, "render_chat: unknown ChatFormat");
}

ReasoningSplit split_reasoning(ChatFormat format, std::string_view reply, bool starts_in_reasoning) {
    using chat_detail::python_strip;
    ReasoningSplit split;
    std::string content;

    const auto append_reasoning = [&](std::string_view text) {
        text = python_strip(text);
        if (text.empty()) return;
        if (!split.reasoning.empty()) split.reasoning += '\n';
        split.reasoning += text;
    };

    if (format == ChatFormat::kQwen35) {
        constexpr std::string_view kOpen = "<think>";
        constexpr std::string_view kClose = "</think>";
        std::string_view rest = reply;
        bool in_think = starts_in_reasoning;
        while (!rest.empty()) {
            if (in_think) {
                const size_t close = rest.find(kClose);
                append_reasoning(rest.substr(0, close));
                if (close == std::string_view::npos) break;  // cut off while thinking
                rest.remove_prefix(close + kClose.size());
                in_think = false;
            } else {
                const size_t open = rest.find(kOpen);
                content += rest.substr(0, open);
                if (open == std::string_view::npos) break;
                rest.remove_prefix(open + kOpen.size());
                in_think = true;
            }
        }
    } else if (format == ChatFormat::kGemma4) {
        constexpr std::string_view kOpen = "<|channel>";
        constexpr std::string_view kClose = "<channel|>";
        constexpr std::string_view kThought = "thought";
        std::string_view rest = reply;
        bool in_channel = starts_in_reasoning;
        while (!rest.empty()) {
            if (in_channel) {
                const size_t close = rest.find(kClose);
                std::string_view block = rest.substr(0, close);
                // The channel's name ("thought") is a label, not part of the thinking.
                if (block.starts_with(kThought)) block.remove_prefix(kThought.size());
                append_reasoning(block);
                if (close == std::string_view::npos) break;
                rest.remove_prefix(close + kClose.size());
                in_channel = false;
            } else {
                const size_t open = rest.find(kOpen);
                content += rest.substr(0, open);
                if (open == std::string_view::npos) break;
                rest.remove_prefix(open + kOpen.size());
                in_channel = true;
            }
        }
    } else {
        content = reply;
    }
    split.content = std::string(python_strip(content));
    return split;
}

std::string strip_reasoning(ChatFormat format, std::string_view reply, bool starts_in_reasoning) {
    return split_reasoning(format, reply, starts_in_reasoning).content;
}

}  // namespace kestrel
