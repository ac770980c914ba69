// GGUF v2/v3 files (llama.cpp's format, docs/gguf.md in ggml): a header, typed metadata
// key/values, tensor infos, then aligned tensor data. The reader validates every byte it reads
// and every count and offset against the file's size; a bad file gives one Status naming the
// file, the offset or tensor, and what was expected.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"
#include "kestrel/status.h"

namespace kestrel {

// The metadata value types, numbered as in the file.
enum class GgufValueType : uint32_t {
    kUint8 = 0,
    kInt8 = 1,
    kUint16 = 2,
    kInt16 = 3,
    kUint32 = 4,
    kInt32 = 5,
    kFloat32 = 6,
    kBool = 7,
    kString = 8,
    kArray = 9,
    kUint64 = 10,
    kInt64 = 11,
    kFloat64 = 12,
};

std::string_view gguf_value_type_name(GgufValueType type);

struct GgufValue;

// An array keeps its declared element type so that an empty array still has one and the writer
// round-trips it; nested arrays are arrays of arrays.
struct GgufArray {
    GgufValueType element_type = GgufValueType::kUint8;
    std::vector<GgufValue> elements;
};

// A metadata value. The variant's alternatives are in GgufValueType order, so
// `data.index()` is the type id.
struct GgufValue {
    using Data = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                              std::string, GgufArray, uint64_t, int64_t, double>;
    Data data;

    GgufValueType type() const { return static_cast<GgufValueType>(data.index()); }
    bool is_integer() const;
    bool is_float() const { return type() == GgufValueType::kFloat32 || type() == GgufValueType::kFloat64; }

    // Value conversions; nothing when the type does not fit (a negative value to unsigned,
    // a string to a number).
    std::optional<int64_t> as_int() const;
    std::optional<double> as_double() const;  // integers and floats
    const std::string* as_string() const { return std::get_if<std::string>(&data); }
    const GgufArray* as_array() const { return std::get_if<GgufArray>(&data); }
};

struct GgufTensorInfo {
    std::string name;
    DType type;
    std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest (contiguous) dimension
    uint64_t offset;          // from the start of the data section
    int64_t n_elements;
    int64_t n_bytes;
};

struct GgufKeyValue {
    std::string key;
    GgufValue value;
};

class GgufFile {
public:
    static constexpr uint32_t kDefaultAlignment = 32;

    // Maps and parses a file.
    static Result<GgufFile> open(const std::filesystem::path& path);
    // Parses bytes held elsewhere (they must outlive the GgufFile); `display_name` stands for
    // the file in messages.
    static Result<GgufFile> parse(std::span<const uint8_t> bytes, std::string display_name);

    const std::string& display_name() const { return display_name_; }
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t file_size() const { return bytes_.size(); }

    const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
    const GgufValue* find(std::string_view key) const;

    // Typed metadata access: kNotFound when absent, kCorruptFile naming the key when the
    // stored type does not fit.
    Result<int64_t> get_int(std::string_view key) const;
    Result<double> get_float(std::string_view key) const;
    Result<bool> get_bool(std::string_view key) const;
    Result<std::string> get_string(std::string_view key) const;
    Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
    Result<std::vector<float>> get_float_array(std::string_view key) const;
    Result<std::vector<bool>> get_bool_array(std::string_view key) const;
    Result<std::vector<std::string>> get_string_array(std::string_view key) const;

    const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
    const GgufTensorInfo* find_tensor(std::string_view name) const;
    std::span<const uint8_t> tensor_data(const GgufTensorInfo& tensor) const;

private:
    std::shared_ptr<const MappedFile> mapping_;  // empty when parsing borrowed bytes
    std::span<const uint8_t> bytes_;
    std::string display_name_;
    uint32_t version_ = 0;
    uint64_t alignment_ = kDefaultAlignment;
    uint64_t data_offset_ = 0;
    std::vector<GgufKeyValue> metadata_;
    std::vector<GgufTensorInfo> tensors_;

    friend class GgufParser;
};

}  // namespace kestrel
