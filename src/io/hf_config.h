// A Hugging Face `config.json`: the whole JSON, plus typed access to the *text* config.
//
// Multimodal checkpoints (Gemma 3/4 `*ForConditionalGeneration`, Qwen3.5) nest the language
// model's settings under "text_config"; text-only ones keep them at the root. HfConfig hides
// the difference: the getters read the text config, which is "text_config" when the root has
// one and the root otherwise.
//
// Keys are dotted paths into the text config ("rope_parameters.full_attention.rope_theta"):
// Gemma 4 nests rope settings per layer type. JSON null counts as absent, as transformers reads
// `"sliding_window": null` as "not set".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kestrel/status.h"

namespace kestrel {

struct HfConfig {
    std::string display_name;  // the file, for messages: "/models/gemma-3-1b/config.json"
    nlohmann::json root;       // the whole file
    nlohmann::json text;       // root["text_config"] when it is an object, else root
    bool nested_text = false;  // whether `text` came from "text_config"
    std::string model_type;    // text config's "model_type", else the root's ("" if neither)
    std::vector<std::string> architectures;  // the root's "architectures" (may be empty)

    // Parses config.json text; `display_name` stands for the file in messages.
    static Result<HfConfig> parse(std::string_view json_text, std::string display_name);

    // The value at a dotted path in the text config (null included), or nullptr.
    const nlohmann::json* find(std::string_view path) const;
    // The same in the root object, for settings multimodal configs keep outside text_config.
    const nlohmann::json* find_root(std::string_view path) const;
    // Present and not null.
    bool has(std::string_view path) const;

    // Typed access: kNotFound when absent or null, kCorruptFile when of another type, each
    // message "<file>: field 'text_config.x' is ..., expected ...". Integers accept a JSON
    // float with an integral value (4096.0); floats accept integers.
    Result<int64_t> get_int(std::string_view path) const;
    Result<double> get_float(std::string_view path) const;
    Result<bool> get_bool(std::string_view path) const;
    Result<std::string> get_string(std::string_view path) const;
    Result<std::vector<int64_t>> get_int_array(std::string_view path) const;
    Result<std::vector<double>> get_float_array(std::string_view path) const;
    Result<std::vector<std::string>> get_string_array(std::string_view path) const;

    // With a default for an absent or null field; a present field of the wrong type is still
    // an error, because silently using the default would load a different model.
    Result<int64_t> get_int_or(std::string_view path, int64_t fallback) const;
    Result<double> get_float_or(std::string_view path, double fallback) const;
    Result<bool> get_bool_or(std::string_view path, bool fallback) const;
    Result<std::string> get_string_or(std::string_view path, std::string fallback) const;

private:
    std::string field_name(std::string_view path) const;  // "text_config.x" or "x"
};

// Loads `folder_or_file`/config.json, or the file itself when given a file.
Result<HfConfig> load_hf_config(const std::filesystem::path& folder_or_file);

}  // namespace kestrel
