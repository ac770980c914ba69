// Typed access to a parsed GGUF file's metadata and tensors.
#include <fmt/format.h>

#include <limits>

#include "core/printable.h"
#include "io/gguf.h"

namespace kestrel {

bool GgufValue::is_integer() const {
    switch (type()) {
        case GgufValueType::kUint8:
        case GgufValueType::kInt8:
        case GgufValueType::kUint16:
        case GgufValueType::kInt16:
        case GgufValueType::kUint32:
        case GgufValueType::kInt32:
        case GgufValueType::kUint64:
        case GgufValueType::kInt64: return true;
        default: return false;
    }
}

std::optional<int64_t> GgufValue::as_int() const {
    return std::visit(
        [](const auto& v) -> std::optional<int64_t> {
            using T = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<T, uint64_t>) {
                if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
                return static_cast<int64_t>(v);
            } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
                return static_cast<int64_t>(v);
            } else {
                return std::nullopt;
            }
        },
        data);
}

std::optional<double> GgufValue::as_double() const {
    if (const float* f = std::get_if<float>(&data)) return *f;
    if (const double* d = std::get_if<double>(&data)) return *d;
    if (std::optional<int64_t> i = as_int()) return static_cast<double>(*i);
    return std::nullopt;
}

const GgufValue* GgufFile::find(std::string_view key) const {
    for (const GgufKeyValue& entry : metadata_) {
        if (entry.key == key) return &entry.value;
    }
    return nullptr;
}

namespace {

Status missing(const GgufFile& file, std::string_view key) {
    return Status(StatusCode::kNotFound, fmt::format("{}: metadata key '{}' is missing", file.display_name(), printable(key)));
}

Status wrong_type(const GgufFile& file, std::string_view key, const GgufValue& value, std::string_view expected) {
    std::string stored(gguf_value_type_name(value.type()));
    if (const GgufArray* array = value.as_array()) {
        stored = fmt::format("array of {}", gguf_value_type_name(array->element_type));
    }
    return Status(StatusCode::kCorruptFile,
                  fmt::format("{}: metadata key '{}' is {}, expected {}", file.display_name(), printable(key), stored, expected));
}

// Converts every element of an array with `convert` (returning optional); fails on the first
// element that does not convert.
template <class T, class Convert>
Result<std::vector<T>> convert_array(const GgufFile& file, std::string_view key, std::string_view expected,
                                     Convert convert) {
    const GgufValue* value = file.find(key);
    if (!value) return missing(file, key);
    const GgufArray* array = value->as_array();
    if (!array) return wrong_type(file, key, *value, expected);
    std::vector<T> out;
    out.reserve(array->elements.size());
    for (const GgufValue& element : array->elements) {
        std::optional<T> converted = convert(element);
        if (!converted) return wrong_type(file, key, *value, expected);
        out.push_back(std::move(*converted));
    }
    return out;
}

}  // namespace

Result<int64_t> GgufFile::get_int(std::string_view key) const {
    const GgufValue* value = find(key);
    if (!value) return missing(*this, key);
    std::optional<int64_t> result = value->as_int();
    if (!result) return wrong_type(*this, key, *value, "an integer");
    return *result;
}

Result<double> GgufFile::get_float(std::string_view key) const {
    const GgufValue* value = find(key);
    if (!value) return missing(*this, key);
    std::optional<double> result = value->as_double();
    if (!result) return wrong_type(*this, key, *value, "a number");
    return *result;
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
    const GgufValue* value = find(key);
    if (!value) return missing(*this, key);
    const bool* result = std::get_if<bool>(&value->data);
    if (!result) return wrong_type(*this, key, *value, "a bool");
    return *result;
}

Result<std::string> GgufFile::get_string(std::string_view key) const {
    const GgufValue* value = find(key);
    if (!value) return missing(*this, key);
    const std::string* result = value->as_string();
    if (!result) return wrong_type(*this, key, *value, "a string");
    return *result;
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
    return convert_array<int64_t>(*this, key, "an array of integers",
                                  [](const GgufValue& v) { return v.as_int(); });
}

Result<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
    return convert_array<float>(*this, key, "an array of numbers", [](const GgufValue& v) -> std::optional<float> {
        if (std::optional<double> d = v.as_double()) return static_cast<float>(*d);
        return std::nullopt;
    });
}

Result<std::vector<bool>> GgufFile::get_bool_array(std::string_view key) const {
    return convert_array<bool>(*this, key, "an array of bools", [](const GgufValue& v) -> std::optional<bool> {
        if (const bool* b = std::get_if<bool>(&v.data)) return *b;
        return std::nullopt;
    });
}

Result<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
    return convert_array<std::string>(*this, key, "an array of strings",
                                      [](const GgufValue& v) -> std::optional<std::string> {
                                          if (const std::string* s = v.as_string()) return *s;
                                          return std::nullopt;
                                      });
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
    for (const GgufTensorInfo& tensor : tensors_) {
        if (tensor.name == name) return &tensor;
    }
    return nullptr;
}

std::span<const uint8_t> GgufFile::tensor_data(const GgufTensorInfo& tensor) const {
    // The parser proved data_offset + offset + n_bytes <= file size for every tensor.
    return bytes_.subspan(data_offset_ + tensor.offset, static_cast<size_t>(tensor.n_bytes));
}

}  // namespace kestrel
