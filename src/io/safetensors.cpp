#include "io/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <limits>
#include <new>
#include <tuple>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/half.h"
#include "core/printable.h"
#include "io/strict_json.h"

namespace kestrel {

using nlohmann::json;

namespace {

// Root object > tensor entry > shape array: a real header nests three deep.
constexpr int kMaxHeaderDepth = 8;

struct DTypeName {
    std::string_view name;
    DType dtype;
};

// The dtypes we read, spelled as safetensors' header spells them (safetensors/src/tensor.rs
// `enum Dtype`). The others it defines (U16, U32, U64, F8_*, F6_*, F4, E8M0, C64) are kUnsupported.
constexpr std::array<DTypeName, 10> kDTypes = {{
    {"F64", DType::kF64},
    {"F32", DType::kF32},
    {"F16", DType::kF16},
    {"BF16", DType::kBF16},
    {"I64", DType::kI64},
    {"I32", DType::kI32},
    {"I16", DType::kI16},
    {"I8", DType::kI8},
    {"U8", DType::kU8},
    {"BOOL", DType::kBool},
}};

std::optional<DType> dtype_from_name(std::string_view name) {
    for (const DTypeName& entry : kDTypes) {
        if (entry.name == name) return entry.dtype;
    }
    return std::nullopt;
}

std::string supported_dtype_list() {
    std::string list;
    for (const DTypeName& entry : kDTypes) {
        if (!list.empty()) list += ", ";
        list += entry.name;
    }
    return list;
}


// A JSON integer in [0, max], or nothing (negative, fractional, too large, not a number).
std::optional<uint64_t> as_unsigned(const json& value, uint64_t max) {
    if (value.is_number_unsigned()) {
        const uint64_t v = value.get<uint64_t>();
        if (v <= max) return v;
    } else if (value.is_number_integer()) {
        const int64_t v = value.get<int64_t>();
        if (v >= 0 && static_cast<uint64_t>(v) <= max) return static_cast<uint64_t>(v);
    }
    return std::nullopt;
}

// A JSON value as written, short, for messages: "[-3, 4]", "\"abc\"".
std::string brief_dump(const json& value) {
    std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
    if (text.size() > 80) text = text.substr(0, 77) + "...";
    return text;
}

std::string shape_string(const std::vector<int64_t>& shape) {
    return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

std::string_view safetensors_dtype_name(DType dtype) {
    for (const DTypeName& entry : kDTypes) {
        if (entry.dtype == dtype) return entry.name;
    }
    return {};
}

// Fills a SafetensorsFile from its bytes, checking everything before trusting anything.
class SafetensorsParser {
public:
    explicit SafetensorsParser(SafetensorsFile& file)
        : file_(file), where_(printable_full(file.display_name_)) {}

    Status run() {
        const std::span<const uint8_t> bytes = file_.bytes_;
        if (bytes.size() < 8) {
            return corrupt(fmt::format(
                "file is {} bytes, shorter than the 8-byte header length (not a safetensors file)",
                bytes.size()));
        }
        const uint64_t header_bytes = load_le<uint64_t>(bytes.data());
        if (header_bytes > SafetensorsFile::kMaxHeaderBytes) {
            return corrupt(fmt::format("header length {} is over the {}-byte limit (not a safetensors "
                                       "file, or a corrupt length)",
                                       header_bytes, SafetensorsFile::kMaxHeaderBytes));
        }
        if (header_bytes > bytes.size() - 8) {
            return corrupt(fmt::format("header length {} runs past the end of the file ({} bytes; "
                                       "truncated?)",
                                       header_bytes, bytes.size()));
        }
        // The format requires the header to start with '{' (and allows trailing spaces).
        if (header_bytes == 0 || bytes[8] != '{') {
            return corrupt("header does not start with '{' (expected a JSON object)");
        }
        file_.data_offset_ = 8 + header_bytes;
        const uint64_t data_size = bytes.size() - file_.data_offset_;

        const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), header_bytes);
        Result<json> parsed = parse_json_strict(text, kMaxHeaderDepth);
        if (!parsed.ok()) {
            return Status(parsed.status().code(),
                          fmt::format("{}: header: {}", where_, parsed.status().message()));
        }
        const json& header = *parsed;
        if (!header.is_object()) {
            return corrupt(fmt::format("header is {}, expected a JSON object", json_kind(header)));
        }

        file_.tensors_.reserve(header.size());
        for (const auto& [name, entry] : header.items()) {
            if (name == "__metadata__") {
                KESTREL_RETURN_IF_ERROR(parse_metadata(entry));
                continue;
            }
            SafetensorsTensor tensor;
            KESTREL_RETURN_IF_ERROR(parse_tensor(name, entry, data_size, tensor));
            file_.tensors_.push_back(std::move(tensor));
        }

        // Data-region order; zero-byte tensors first among equal offsets so they never look
        // like they overlap their neighbour.
        std::sort(file_.tensors_.begin(), file_.tensors_.end(),
                  [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
                      return std::tie(a.offset, a.n_bytes, a.name) < std::tie(b.offset, b.n_bytes, b.name);
                  });
        const SafetensorsTensor* furthest = nullptr;  // the tensor with the largest end so far
        for (const SafetensorsTensor& tensor : file_.tensors_) {
            if (tensor.n_bytes == 0) continue;  // holds no bytes, overlaps nothing
            if (furthest && tensor.offset < furthest->offset + furthest->n_bytes) {
                return tensor_error(
                    StatusCode::kCorruptFile, tensor.name,
                    fmt::format("data_offsets [{}, {}] overlap tensor {} at [{}, {}] (each tensor "
                                "needs its own bytes)",
                                tensor.offset, tensor.offset + tensor.n_bytes,
                                quote_name(furthest->name), furthest->offset,
                                furthest->offset + furthest->n_bytes));
            }
            if (!furthest || tensor.offset + tensor.n_bytes > furthest->offset + furthest->n_bytes) {
                furthest = &tensor;
            }
        }
        for (size_t i = 0; i < file_.tensors_.size(); ++i) file_.by_name_.emplace(file_.tensors_[i].name, i);
        return ok_status();
    }

private:
    Status corrupt(std::string_view what) const {
        return Status(StatusCode::kCorruptFile, fmt::format("{}: {}", where_, what));
    }

    Status tensor_error(StatusCode code, std::string_view name, std::string_view what) const {
        return Status(code, fmt::format("{}: tensor {}: {}", where_, quote_name(name), what));
    }

    Status parse_metadata(const json& entry) {
        if (entry.is_null()) return ok_status();  // the reference reads null as "no metadata"
        if (!entry.is_object()) {
            return corrupt(fmt::format("'__metadata__' is {}, expected an object of strings", json_kind(entry)));
        }
        for (const auto& [key, value] : entry.items()) {
            if (!value.is_string()) {
                return corrupt(fmt::format("'__metadata__' entry {} is {}, expected a string",
                                           quote_name(key), json_kind(value)));
            }
            file_.metadata_.emplace(key, value.get<std::string>());
        }
        return ok_status();
    }

    Status parse_tensor(const std::string& name, const json& entry, uint64_t data_size,
                        SafetensorsTensor& out) const {
        if (!entry.is_object()) {
            return tensor_error(StatusCode::kCorruptFile, name,
                                fmt::format("entry is {}, expected an object with dtype, shape and "
                                            "data_offsets",
                                            json_kind(entry)));
        }
        const auto missing = [&](std::string_view field, std::string_view expected) {
            return tensor_error(StatusCode::kCorruptFile, name,
                                fmt::format("missing field '{}' (expected {})", field, expected));
        };
        const auto wrong = [&](std::string_view field, const json& value, std::string_view expected) {
            return tensor_error(StatusCode::kCorruptFile, name,
                                fmt::format("field '{}' is {} {}, expected {}", field, json_kind(value),
                                            brief_dump(value), expected));
        };

        // dtype
        const auto dtype_it = entry.find("dtype");
        if (dtype_it == entry.end()) return missing("dtype", "a string such as \"BF16\"");
        if (!dtype_it->is_string()) return wrong("dtype", *dtype_it, "a string such as \"BF16\"");
        const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
        const std::optional<DType> dtype = dtype_from_name(dtype_name);
        if (!dtype) {
            return tensor_error(StatusCode::kUnsupported, name,
                                fmt::format("dtype {} is not supported (Kestrel reads {})",
                                            quote_name(dtype_name), supported_dtype_list()));
        }

        // shape
        const auto shape_it = entry.find("shape");
        const std::string_view shape_expected = "an array of non-negative integers";
        if (shape_it == entry.end()) return missing("shape", shape_expected);
        if (!shape_it->is_array()) return wrong("shape", *shape_it, shape_expected);
        std::vector<int64_t> shape;
        shape.reserve(shape_it->size());
        int64_t n_elements = 1;
        bool overflow = false;
        for (const json& dim : *shape_it) {
            const std::optional<uint64_t> value =
                as_unsigned(dim, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
            if (!value) return wrong("shape", *shape_it, shape_expected);
            shape.push_back(static_cast<int64_t>(*value));
            if (!overflow && __builtin_mul_overflow(n_elements, shape.back(), &n_elements)) overflow = true;
        }
        // A zero dimension makes any overflow elsewhere harmless: the tensor is empty.
        if (std::find(shape.begin(), shape.end(), 0) != shape.end()) {
            n_elements = 0;
            overflow = false;
        }
        const std::optional<int64_t> n_bytes = overflow ? std::nullopt : dtype_bytes(*dtype, n_elements);
        if (!n_bytes) {
            return tensor_error(StatusCode::kCorruptFile, name,
                                fmt::format("shape {} of {} is too large (its byte size overflows 64 bits)",
                                            shape_string(shape), dtype_name));
        }

        // data_offsets
        const auto offsets_it = entry.find("data_offsets");
        const std::string_view offsets_expected = "[begin, end], two non-negative integers";
        if (offsets_it == entry.end()) return missing("data_offsets", offsets_expected);
        if (!offsets_it->is_array() || offsets_it->size() != 2) {
            return wrong("data_offsets", *offsets_it, offsets_expected);
        }
        const uint64_t kAny = std::numeric_limits<uint64_t>::max();
        const std::optional<uint64_t> begin = as_unsigned((*offsets_it)[0], kAny);
        const std::optional<uint64_t> end = as_unsigned((*offsets_it)[1], kAny);
        if (!begin || !end) return wrong("data_offsets", *offsets_it, offsets_expected);
        if (*end < *begin) {
            return tensor_error(StatusCode::kCorruptFile, name,
                                fmt::format("data_offsets [{}, {}] end before they begin", *begin, *end));
        }
        if (*end > data_size) {
            return tensor_error(StatusCode::kCorruptFile, name,
                                fmt::format("data_offsets [{}, {}] run past the end of the data region "
                                            "({} bytes; truncated file?)",
                                            *begin, *end, data_size));
        }
        if (*end - *begin != static_cast<uint64_t>(*n_bytes)) {
            return tensor_error(
                StatusCode::kCorruptFile, name,
                fmt::format("data_offsets [{}, {}] hold {} bytes, expected {} for {} {} ({} elements of "
                            "{} bytes)",
                            *begin, *end, *end - *begin, *n_bytes, dtype_name, shape_string(shape),
                            n_elements, dtype_info(*dtype).block_bytes));
        }

        out.name = name;
        out.dtype = *dtype;
        out.shape = std::move(shape);
        out.offset = *begin;
        out.n_elements = n_elements;
        out.n_bytes = *n_bytes;
        return ok_status();
    }

    SafetensorsFile& file_;
    std::string where_;  // the display name, safe for a one-line message
};

Result<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
    KESTREL_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
    auto mapping = std::make_shared<const MappedFile>(std::move(mapped));
    KESTREL_ASSIGN_OR_RETURN(SafetensorsFile file, parse(mapping->bytes(), path.string()));
    file.mapping_ = std::move(mapping);
    return file;
}

Result<SafetensorsFile> SafetensorsFile::parse(std::span<const uint8_t> bytes, std::string display_name) {
    SafetensorsFile file;
    file.bytes_ = bytes;
    file.display_name_ = std::move(display_name);
    try {
        KESTREL_RETURN_IF_ERROR(SafetensorsParser(file).run());
    } catch (const std::bad_alloc&) {
        return Status(StatusCode::kOutOfMemory, fmt::format("{}: out of memory while reading the header",
                                                            printable_full(file.display_name_)));
    } catch (const std::exception& error) {  // a nlohmann accessor we did not guard: still a value
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: header: {}", printable_full(file.display_name_),
                                  quote_name(error.what())));
    }
    return file;
}

const SafetensorsTensor* SafetensorsFile::find_tensor(std::string_view name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::tensor_data(const SafetensorsTensor& tensor) const {
    // Parsing proved this in bounds for our own tensors; the check keeps a foreign one from
    // reading past the mapping.
    const uint64_t size = bytes_.size();
    if (data_offset_ > size || tensor.offset > size - data_offset_ ||
        static_cast<uint64_t>(tensor.n_bytes) > size - data_offset_ - tensor.offset) {
        return {};
    }
    return bytes_.subspan(data_offset_ + tensor.offset, static_cast<size_t>(tensor.n_bytes));
}

}  // namespace kestrel
