// GGUF parsing. Layout (ggml docs/gguf.md, v2 and v3 differ only in v3 allowing big-endian
// files, which we refuse):
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value_type | value }
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment | tensor data
// A string is u64 length + bytes (no terminator); an array is u32 element type + u64 count +
// elements. Every read is checked against the bytes left, and every count against the
// smallest size its elements could have, so a hostile file cannot make us allocate or loop
// beyond what its own size allows.
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <unordered_set>

#include "core/half.h"
#include "core/printable.h"
#include "io/gguf.h"

namespace kestrel {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxDims = 4;              // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;      // deeper nesting is not seen in real files

bool is_valid_value_type(uint32_t type) { return type <= static_cast<uint32_t>(GgufValueType::kFloat64); }

// Bytes the smallest value of a type occupies: bounds element counts before we allocate.
uint64_t min_value_bytes(GgufValueType type) {
    switch (type) {
        case GgufValueType::kUint8:
        case GgufValueType::kInt8:
        case GgufValueType::kBool: return 1;
        case GgufValueType::kUint16:
        case GgufValueType::kInt16: return 2;
        case GgufValueType::kUint32:
        case GgufValueType::kInt32:
        case GgufValueType::kFloat32: return 4;
        case GgufValueType::kString:
        case GgufValueType::kUint64:
        case GgufValueType::kInt64:
        case GgufValueType::kFloat64: return 8;
        case GgufValueType::kArray: return 12;
    }
    return 1;
}

}  // namespace

std::string_view gguf_value_type_name(GgufValueType type) {
    switch (type) {
        case GgufValueType::kUint8: return "uint8";
        case GgufValueType::kInt8: return "int8";
        case GgufValueType::kUint16: return "uint16";
        case GgufValueType::kInt16: return "int16";
        case GgufValueType::kUint32: return "uint32";
        case GgufValueType::kInt32: return "int32";
        case GgufValueType::kFloat32: return "float32";
        case GgufValueType::kBool: return "bool";
        case GgufValueType::kString: return "string";
        case GgufValueType::kArray: return "array";
        case GgufValueType::kUint64: return "uint64";
        case GgufValueType::kInt64: return "int64";
        case GgufValueType::kFloat64: return "float64";
    }
    return "unknown";
}

class GgufParser {
public:
    GgufParser(std::span<const uint8_t> bytes, std::string name)
        : bytes_(bytes), name_(std::move(name)) {}

    Status parse(GgufFile& file) {
        file.bytes_ = bytes_;
        file.display_name_ = name_;

        uint32_t magic = 0;
        KESTREL_RETURN_IF_ERROR(read(magic, "the magic number"));
        if (magic != kMagic) {
            return fail(0, fmt::format("not a GGUF file: bad magic {:02x} {:02x} {:02x} {:02x}, "
                                       "expected 47 47 55 46 (\"GGUF\")",
                                       bytes_[0], bytes_[1], bytes_[2], bytes_[3]));
        }
        KESTREL_RETURN_IF_ERROR(read(file.version_, "the version"));
        if (file.version_ != 2 && file.version_ != 3) {
            const bool byte_swapped = file.version_ == 0x02000000 || file.version_ == 0x03000000;
            return Status(StatusCode::kUnsupported,
                          fmt::format("{}: unsupported GGUF version {}{}; expected 2 or 3", name_,
                                      file.version_,
                                      byte_swapped ? " (a big-endian file)" : ""));
        }
        uint64_t tensor_count = 0;
        uint64_t kv_count = 0;
        KESTREL_RETURN_IF_ERROR(read(tensor_count, "the tensor count"));
        KESTREL_RETURN_IF_ERROR(read(kv_count, "the metadata count"));
        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at
        // least 8 + 4 + 8 + 4 + 8.
        KESTREL_RETURN_IF_ERROR(check_count(kv_count, 13, "metadata key/value pairs", 16));
        KESTREL_RETURN_IF_ERROR(check_count(tensor_count, 32, "tensor infos", 8));

        file.metadata_.reserve(kv_count);
        std::unordered_set<std::string_view> keys;
        for (uint64_t i = 0; i < kv_count; ++i) {
            const uint64_t entry_offset = pos_;
            GgufKeyValue entry;
            KESTREL_RETURN_IF_ERROR(read_string(entry.key, fmt::format("metadata key #{}", i)));
            if (entry.key.empty()) return fail(entry_offset, fmt::format("metadata key #{} is empty", i));
            uint32_t type = 0;
            KESTREL_RETURN_IF_ERROR(read(type, [&] { return fmt::format("the type of key '{}'", printable(entry.key)); }));
            KESTREL_RETURN_IF_ERROR(read_value(type, entry.value, printable(entry.key), 0));
            file.metadata_.push_back(std::move(entry));
            if (!keys.insert(file.metadata_.back().key).second) {
                return fail(entry_offset, fmt::format("duplicate metadata key '{}'", printable(file.metadata_.back().key)));
            }
        }
        KESTREL_RETURN_IF_ERROR(read_alignment(file));

        file.tensors_.reserve(tensor_count);
        std::unordered_set<std::string_view> names;
        for (uint64_t i = 0; i < tensor_count; ++i) {
            const uint64_t info_offset = pos_;
            KESTREL_RETURN_IF_ERROR(read_tensor_info(file, i));
            if (!names.insert(file.tensors_.back().name).second) {
                return fail(info_offset, fmt::format("duplicate tensor name '{}'", printable(file.tensors_.back().name)));
            }
        }

        // The data section starts at the next multiple of the alignment after the infos.
        const uint64_t padding = (file.alignment_ - pos_ % file.alignment_) % file.alignment_;
        file.data_offset_ = pos_ + padding;
        return check_tensor_extents(file);
    }

private:
    std::span<const uint8_t> bytes_;
    std::string name_;
    uint64_t pos_ = 0;

    uint64_t left() const { return bytes_.size() - pos_; }

    Status fail(uint64_t offset, const std::string& what) const {
        return Status(StatusCode::kCorruptFile, fmt::format("{}: {} (at byte offset {})", name_, what, offset));
    }

    // `what` describes the item for a message: a string, or a callable that makes one, so that
    // the hot path (262k-entry vocabularies) formats nothing.
    template <class What>
    static std::string describe(const What& what) {
        if constexpr (std::is_invocable_v<What>) {
            return what();
        } else {
            return std::string(what);
        }
    }

    template <class What>
    Status need(uint64_t n, const What& what) const {
        if (n <= left()) return ok_status();
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: truncated: {} needs {} bytes at offset {}, but the file ends "
                                  "at {}",
                                  name_, describe(what), n, pos_, bytes_.size()));
    }

    template <class T, class What>
    Status read(T& value, const What& what) {
        KESTREL_RETURN_IF_ERROR(need(sizeof(T), what));
        value = load_le<T>(bytes_.data() + pos_);
        pos_ += sizeof(T);
        return ok_status();
    }

    template <class What>
    Status read_string(std::string& out, const What& what) {
        uint64_t length = 0;
        KESTREL_RETURN_IF_ERROR(read(length, [&] { return "the length of " + describe(what); }));
        if (length > left()) {
            return fail(pos_ - 8, fmt::format("{} claims {} bytes but only {} remain in the file",
                                              describe(what), length, left()));
        }
        out.assign(reinterpret_cast<const char*>(bytes_.data() + pos_), length);
        pos_ += length;
        return ok_status();
    }

    // Refuses counts that could not fit in the rest of the file even at `min_bytes` each.
    Status check_count(uint64_t count, uint64_t min_bytes, std::string_view what, uint64_t count_offset) const {
        if (count <= left() / min_bytes) return ok_status();
        return fail(count_offset, fmt::format("{} {} cannot fit in the {} bytes left in the file", count,
                                              what, left()));
    }

    // `key` is already printable().
    Status read_value(uint32_t type_id, GgufValue& value, const std::string& key, int depth) {
        if (!is_valid_value_type(type_id)) {
            return fail(pos_ - 4, fmt::format("key '{}' has unknown value type {}", key, type_id));
        }
        const auto what = [&] { return fmt::format("the value of key '{}'", key); };
        switch (static_cast<GgufValueType>(type_id)) {
            case GgufValueType::kUint8: return read_scalar<uint8_t>(value, what);
            case GgufValueType::kInt8: return read_scalar<int8_t>(value, what);
            case GgufValueType::kUint16: return read_scalar<uint16_t>(value, what);
            case GgufValueType::kInt16: return read_scalar<int16_t>(value, what);
            case GgufValueType::kUint32: return read_scalar<uint32_t>(value, what);
            case GgufValueType::kInt32: return read_scalar<int32_t>(value, what);
            case GgufValueType::kFloat32: return read_scalar<float>(value, what);
            case GgufValueType::kUint64: return read_scalar<uint64_t>(value, what);
            case GgufValueType::kInt64: return read_scalar<int64_t>(value, what);
            case GgufValueType::kFloat64: return read_scalar<double>(value, what);
            case GgufValueType::kBool: {
                uint8_t byte = 0;
                KESTREL_RETURN_IF_ERROR(read(byte, what));
                if (byte > 1) return fail(pos_ - 1, fmt::format("key '{}' holds bool value {}, expected 0 or 1", key, byte));
                value.data = byte == 1;
                return ok_status();
            }
            case GgufValueType::kString: {
                std::string text;
                KESTREL_RETURN_IF_ERROR(read_string(text, what));
                value.data = std::move(text);
                return ok_status();
            }
            case GgufValueType::kArray: return read_array(value, key, depth);
        }
        return fail(pos_, "unreachable value type");
    }

    template <class T, class What>
    Status read_scalar(GgufValue& value, const What& what) {
        T scalar{};
        KESTREL_RETURN_IF_ERROR(read(scalar, what));
        value.data = scalar;
        return ok_status();
    }

    Status read_array(GgufValue& value, const std::string& key, int depth) {
        if (depth >= kMaxArrayNesting) {
            return fail(pos_, fmt::format("key '{}' nests arrays more than {} deep", key, kMaxArrayNesting));
        }
        GgufArray array;
        uint32_t element_type = 0;
        uint64_t count = 0;
        KESTREL_RETURN_IF_ERROR(read(element_type, fmt::format("the element type of array '{}'", key)));
        if (!is_valid_value_type(element_type)) {
            return fail(pos_ - 4, fmt::format("array '{}' has unknown element type {}", key, element_type));
        }
        KESTREL_RETURN_IF_ERROR(read(count, fmt::format("the length of array '{}'", key)));
        array.element_type = static_cast<GgufValueType>(element_type);
        KESTREL_RETURN_IF_ERROR(check_count(count, min_value_bytes(array.element_type),
                                            fmt::format("elements of array '{}'", key), pos_ - 8));
        array.elements.resize(count);
        for (uint64_t i = 0; i < count; ++i) {
            KESTREL_RETURN_IF_ERROR(read_value(element_type, array.elements[i], key, depth + 1));
        }
        value.data = std::move(array);
        return ok_status();
    }

    Status read_alignment(GgufFile& file) const {
        const GgufValue* value = file.find("general.alignment");
        if (!value) return ok_status();
        const uint32_t* alignment = std::get_if<uint32_t>(&value->data);
        if (!alignment) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("{}: general.alignment is {}, expected uint32", name_,
                                      gguf_value_type_name(value->type())));
        }
        if (*alignment == 0 || (*alignment & (*alignment - 1)) != 0) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("{}: general.alignment is {}, expected a power of two", name_, *alignment));
        }
        file.alignment_ = *alignment;
        return ok_status();
    }

    Status read_tensor_info(GgufFile& file, uint64_t index) {
        GgufTensorInfo tensor;
        const uint64_t info_offset = pos_;
        KESTREL_RETURN_IF_ERROR(read_string(tensor.name, fmt::format("the name of tensor #{}", index)));
        if (tensor.name.empty()) return fail(info_offset, fmt::format("tensor #{} has an empty name", index));
        const std::string label = fmt::format("tensor '{}'", printable(tensor.name));

        uint32_t n_dims = 0;
        KESTREL_RETURN_IF_ERROR(read(n_dims, fmt::format("the dimension count of {}", label)));
        if (n_dims == 0 || n_dims > kMaxDims) {
            return fail(pos_ - 4, fmt::format("{} has {} dimensions, expected 1 to {}", label, n_dims, kMaxDims));
        }
        tensor.n_elements = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            uint64_t extent = 0;
            KESTREL_RETURN_IF_ERROR(read(extent, fmt::format("dimension {} of {}", d, label)));
            if (extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
                (extent != 0 && static_cast<uint64_t>(tensor.n_elements) >
                                    static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / extent)) {
                return fail(pos_ - 8, fmt::format("{} shape overflows: dimension {} is {}", label, d, extent));
            }
            tensor.ne.push_back(static_cast<int64_t>(extent));
            tensor.n_elements *= static_cast<int64_t>(extent);
        }

        uint32_t type_id = 0;
        KESTREL_RETURN_IF_ERROR(read(type_id, fmt::format("the type of {}", label)));
        const std::optional<DType> type = dtype_from_ggml_id(type_id);
        if (!type) return fail(pos_ - 4, fmt::format("{} has unknown ggml type {}", label, type_id));
        tensor.type = *type;
        const DTypeInfo& info = dtype_info(tensor.type);
        if (tensor.ne[0] % info.block_elements != 0) {
            return fail(info_offset, fmt::format("{}: row length {} is not a multiple of the {} block size {}",
                                                 label, tensor.ne[0], info.name, info.block_elements));
        }
        const std::optional<int64_t> n_bytes = dtype_bytes(tensor.type, tensor.n_elements);
        if (!n_bytes) return fail(info_offset, fmt::format("{} byte size overflows", label));
        tensor.n_bytes = *n_bytes;

        KESTREL_RETURN_IF_ERROR(read(tensor.offset, fmt::format("the data offset of {}", label)));
        if (tensor.offset % file.alignment_ != 0) {
            return fail(pos_ - 8, fmt::format("{} data offset {} is not a multiple of the alignment {}", label,
                                              tensor.offset, file.alignment_));
        }
        file.tensors_.push_back(std::move(tensor));
        return ok_status();
    }

    // Every tensor's bytes lie inside the file and no two tensors share a byte.
    Status check_tensor_extents(const GgufFile& file) const {
        const uint64_t size = bytes_.size();
        for (const GgufTensorInfo& tensor : file.tensors_) {
            const uint64_t n_bytes = static_cast<uint64_t>(tensor.n_bytes);
            if (file.data_offset_ > size || tensor.offset > size - file.data_offset_ ||
                n_bytes > size - file.data_offset_ - tensor.offset) {
                return Status(StatusCode::kCorruptFile,
                              fmt::format("{}: tensor '{}' data ({} bytes at offset {}) lies outside the "
                                          "file of {} bytes (truncated?)",
                                          name_, printable(tensor.name), n_bytes, file.data_offset_ + tensor.offset, size));
            }
        }
        std::vector<size_t> order(file.tensors_.size());
        std::iota(order.begin(), order.end(), size_t{0});
        std::sort(order.begin(), order.end(),
                  [&](size_t a, size_t b) { return file.tensors_[a].offset < file.tensors_[b].offset; });
        for (size_t i = 1; i < order.size(); ++i) {
            const GgufTensorInfo& before = file.tensors_[order[i - 1]];
            const GgufTensorInfo& after = file.tensors_[order[i]];
            if (before.offset + static_cast<uint64_t>(before.n_bytes) > after.offset && after.n_bytes > 0) {
                return Status(StatusCode::kCorruptFile,
                              fmt::format("{}: tensor '{}' (data bytes {}..{}) overlaps tensor '{}' (starts at {})",
                                          name_, printable(before.name), before.offset,
                                          before.offset + before.n_bytes, printable(after.name), after.offset));
            }
        }
        return ok_status();
    }
};

Result<GgufFile> GgufFile::parse(std::span<const uint8_t> bytes, std::string display_name) {
    GgufFile file;
    GgufParser parser(bytes, std::move(display_name));
    KESTREL_RETURN_IF_ERROR(parser.parse(file));
    return file;
}

Result<GgufFile> GgufFile::open(const std::filesystem::path& path) {
    KESTREL_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
    auto mapping = std::make_shared<const MappedFile>(std::move(mapped));
    KESTREL_ASSIGN_OR_RETURN(GgufFile file, parse(mapping->bytes(), path.string()));
    file.mapping_ = std::move(mapping);
    return file;
}

}  // namespace kestrel
