#include "io/hf_config.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <system_error>
#include <utility>

#include "core/mapped_file.h"
#include "core/printable.h"
#include "io/strict_json.h"

namespace kestrel {

using nlohmann::json;

namespace {

// Real configs nest three or four deep (rope_parameters.full_attention.rope_theta, quantisation
// configs a little more); the limit only stops a pathological file.
constexpr int kMaxConfigDepth = 64;
// Real configs are a few KB.
constexpr size_t kMaxConfigBytes = 64u << 20;


std::string brief_dump(const json& value) {
    std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
    if (text.size() > 60) text = text.substr(0, 57) + "...";
    return text;
}

const json* walk(const json& object, std::string_view path) {
    const json* node = &object;
    while (true) {
        if (!node->is_object()) return nullptr;
        const size_t dot = path.find('.');
        const std::string_view key = path.substr(0, dot);
        const auto it = node->find(key);
        if (it == node->end()) return nullptr;
        node = &*it;
        if (dot == std::string_view::npos) return node;
        path.remove_prefix(dot + 1);
    }
}

// Conversions: nothing when the value does not fit the type.
std::optional<int64_t> to_int(const json& value) {
    if (value.is_number_unsigned()) {
        const uint64_t v = value.get<uint64_t>();
        if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return static_cast<int64_t>(v);
        return std::nullopt;
    }
    if (value.is_number_integer()) return value.get<int64_t>();
    if (value.is_number_float()) {  // 4096.0: Python writes floats where ints were meant
        const double v = value.get<double>();
        // 2^63 is exact in a double; everything below it in magnitude converts without UB.
        if (std::isfinite(v) && std::trunc(v) == v && v >= -9223372036854775808.0 && v < 9223372036854775808.0) {
            return static_cast<int64_t>(v);
        }
    }
    return std::nullopt;
}

std::optional<double> to_float(const json& value) {
    if (value.is_number()) return value.get<double>();
    return std::nullopt;
}

std::optional<bool> to_bool(const json& value) {
    if (value.is_boolean()) return value.get<bool>();
    return std::nullopt;
}

std::optional<std::string> to_string(const json& value) {
    if (value.is_string()) return value.get<std::string>();
    return std::nullopt;
}

}  // namespace

Result<HfConfig> HfConfig::parse(std::string_view json_text, std::string display_name) {
    const std::string where = printable_full(display_name);
    Result<json> parsed = parse_json_strict(json_text, kMaxConfigDepth, /*allow_duplicate_keys=*/true);
    if (!parsed.ok()) {
        return Status(parsed.status().code(), fmt::format("{}: {}", where, parsed.status().message()));
    }
    HfConfig config;
    config.display_name = std::move(display_name);
    config.root = std::move(parsed).value();
    if (!config.root.is_object()) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: the file is {}, expected a JSON object", where, json_kind(config.root)));
    }

    const auto text_it = config.root.find("text_config");
    if (text_it != config.root.end() && text_it->is_object()) {
        config.text = *text_it;
        config.nested_text = true;
    } else if (text_it != config.root.end() && !text_it->is_null()) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: field 'text_config' is {}, expected an object", where,
                                  json_kind(*text_it)));
    } else {
        config.text = config.root;
    }

    for (const json* source : {&config.text, &config.root}) {
        const auto it = source->find("model_type");
        if (it == source->end() || it->is_null()) continue;
        if (!it->is_string()) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("{}: field '{}model_type' is {}, expected a string", where,
                                      source == &config.text && config.nested_text ? "text_config." : "",
                                      json_kind(*it)));
        }
        config.model_type = it->get<std::string>();
        break;
    }

    const auto arch_it = config.root.find("architectures");
    if (arch_it != config.root.end() && !arch_it->is_null()) {
        bool ok = arch_it->is_array();
        for (size_t i = 0; ok && i < arch_it->size(); ++i) ok = (*arch_it)[i].is_string();
        if (!ok) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("{}: field 'architectures' is {}, expected an array of strings", where,
                                      brief_dump(*arch_it)));
        }
        for (const json& name : *arch_it) config.architectures.push_back(name.get<std::string>());
    }
    return config;
}

const json* HfConfig::find(std::string_view path) const { return walk(text, path); }

const json* HfConfig::find_root(std::string_view path) const { return walk(root, path); }

bool HfConfig::has(std::string_view path) const {
    const json* value = find(path);
    return value && !value->is_null();
}

std::string HfConfig::field_name(std::string_view path) const {
    return printable_full(nested_text ? "text_config." + std::string(path) : std::string(path));
}

namespace {

// The one shape of every typed getter: find, then convert or explain.
template <class T, class Convert>
Result<T> get_typed(const HfConfig& config, std::string_view path, std::string_view expected,
                    Convert convert, const std::string& field) {
    const json* value = config.find(path);
    if (!value || value->is_null()) {
        return Status(StatusCode::kNotFound,
                      fmt::format("{}: field '{}' is {}, expected {}", printable_full(config.display_name),
                                  field, value ? "null" : "missing", expected));
    }
    if (std::optional<T> converted = convert(*value)) return std::move(*converted);
    return Status(StatusCode::kCorruptFile,
                  fmt::format("{}: field '{}' is {} {}, expected {}", printable_full(config.display_name),
                              field, json_kind(*value), brief_dump(*value), expected));
}

template <class T, class Convert>
Result<std::vector<T>> get_array(const HfConfig& config, std::string_view path, std::string_view expected,
                                 Convert convert, const std::string& field) {
    const auto convert_all = [&](const json& value) -> std::optional<std::vector<T>> {
        if (!value.is_array()) return std::nullopt;
        std::vector<T> out;
        out.reserve(value.size());
        for (const json& element : value) {
            std::optional<T> converted = convert(element);
            if (!converted) return std::nullopt;
            out.push_back(std::move(*converted));
        }
        return out;
    };
    return get_typed<std::vector<T>>(config, path, expected, convert_all, field);
}

template <class T>
Result<T> or_default(Result<T> result, T fallback) {
    if (!result.ok() && result.status().code() == StatusCode::kNotFound) return fallback;
    return result;
}

}  // namespace

Result<int64_t> HfConfig::get_int(std::string_view path) const {
    return get_typed<int64_t>(*this, path, "an integer", to_int, field_name(path));
}

Result<double> HfConfig::get_float(std::string_view path) const {
    return get_typed<double>(*this, path, "a number", to_float, field_name(path));
}

Result<bool> HfConfig::get_bool(std::string_view path) const {
    return get_typed<bool>(*this, path, "true or false", to_bool, field_name(path));
}

Result<std::string> HfConfig::get_string(std::string_view path) const {
    return get_typed<std::string>(*this, path, "a string", to_string, field_name(path));
}

Result<std::vector<int64_t>> HfConfig::get_int_array(std::string_view path) const {
    return get_array<int64_t>(*this, path, "an array of integers", to_int, field_name(path));
}

Result<std::vector<double>> HfConfig::get_float_array(std::string_view path) const {
    return get_array<double>(*this, path, "an array of numbers", to_float, field_name(path));
}

Result<std::vector<std::string>> HfConfig::get_string_array(std::string_view path) const {
    return get_array<std::string>(*this, path, "an array of strings", to_string, field_name(path));
}

Result<int64_t> HfConfig::get_int_or(std::string_view path, int64_t fallback) const {
    return or_default(get_int(path), fallback);
}

Result<double> HfConfig::get_float_or(std::string_view path, double fallback) const {
    return or_default(get_float(path), fallback);
}

Result<bool> HfConfig::get_bool_or(std::string_view path, bool fallback) const {
    return or_default(get_bool(path), fallback);
}

Result<std::string> HfConfig::get_string_or(std::string_view path, std::string fallback) const {
    return or_default(get_string(path), std::move(fallback));
}

Result<HfConfig> load_hf_config(const std::filesystem::path& folder_or_file) {
    std::error_code error;
    const bool is_folder = std::filesystem::is_directory(folder_or_file, error);
    const std::filesystem::path path = is_folder ? folder_or_file / "config.json" : folder_or_file;
    Result<MappedFile> file = MappedFile::open(path);
    if (!file.ok()) {
        if (file.status().code() == StatusCode::kNotFound) {
            return Status(StatusCode::kNotFound,
                          fmt::format("{}: no such file (expected a Hugging Face config.json)",
                                      printable_full(path.string())));
        }
        return Status(file.status().code(), printable_full(file.status().message()));
    }
    if (file->size() > kMaxConfigBytes) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: {} bytes is too large for a config.json (limit {})",
                                  printable_full(path.string()), file->size(), kMaxConfigBytes));
    }
    const std::span<const uint8_t> bytes = file->bytes();
    return HfConfig::parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                           path.string());
}

}  // namespace kestrel
