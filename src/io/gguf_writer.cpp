#include "io/gguf_writer.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <system_error>

namespace kestrel {
namespace {

template <class T>
void put(std::vector<uint8_t>& out, T value) {
    const size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &value, sizeof(T));
}

void put_string(std::vector<uint8_t>& out, const std::string& text) {
    put<uint64_t>(out, text.size());
    out.insert(out.end(), text.begin(), text.end());
}

void put_value(std::vector<uint8_t>& out, const GgufValue& value) {
    std::visit(
        [&](const auto& v) {
            using T = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<T, std::string>) {
                put_string(out, v);
            } else if constexpr (std::is_same_v<T, GgufArray>) {
                put<uint32_t>(out, static_cast<uint32_t>(v.element_type));
                put<uint64_t>(out, v.elements.size());
                for (const GgufValue& element : v.elements) put_value(out, element);
            } else if constexpr (std::is_same_v<T, bool>) {
                put<uint8_t>(out, v ? 1 : 0);
            } else {
                put<T>(out, v);
            }
        },
        value.data);
}

template <class T>
GgufValue array_of(GgufValueType type, const std::vector<T>& values) {
    GgufArray array{type, {}};
    array.elements.reserve(values.size());
    for (const T& v : values) array.elements.push_back(GgufValue{v});
    return GgufValue{std::move(array)};
}

}  // namespace

GgufValue gguf_array(GgufValueType element_type, std::vector<GgufValue> elements) {
    return GgufValue{GgufArray{element_type, std::move(elements)}};
}
GgufValue gguf_string_array(const std::vector<std::string>& values) {
    return array_of(GgufValueType::kString, values);
}
GgufValue gguf_f32_array(const std::vector<float>& values) { return array_of(GgufValueType::kFloat32, values); }
GgufValue gguf_i32_array(const std::vector<int32_t>& values) { return array_of(GgufValueType::kInt32, values); }
GgufValue gguf_u32_array(const std::vector<uint32_t>& values) { return array_of(GgufValueType::kUint32, values); }
GgufValue gguf_bool_array(const std::vector<bool>& values) {
    GgufArray array{GgufValueType::kBool, {}};
    for (bool v : values) array.elements.push_back(GgufValue{v});
    return GgufValue{std::move(array)};
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
    if (alignment_ != GgufFile::kDefaultAlignment) set("general.alignment", gguf_u32(alignment_));
}

void GgufWriter::set(const std::string& key, GgufValue value) {
    for (GgufKeyValue& entry : metadata_) {
        if (entry.key == key) {
            entry.value = std::move(value);
            return;
        }
    }
    metadata_.push_back({key, std::move(value)});
}

Status GgufWriter::add_tensor_info(std::string name, DType type, std::vector<int64_t> ne, PendingTensor& out) {
    for (const PendingTensor& tensor : tensors_) {
        if (tensor.name == name) return Status(StatusCode::kInvalidArgument, "GGUF writer: duplicate tensor '" + name + "'");
    }
    if (ne.empty() || ne.size() > 4) {
        return Status(StatusCode::kInvalidArgument, fmt::format("GGUF writer: tensor '{}' has {} dimensions", name, ne.size()));
    }
    int64_t n_elements = 1;
    for (int64_t extent : ne) n_elements *= extent;
    const DTypeInfo& info = dtype_info(type);
    const std::optional<int64_t> n_bytes = dtype_bytes(type, n_elements);
    if (ne[0] % info.block_elements != 0 || !n_bytes) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("GGUF writer: tensor '{}' row length {} is not a multiple of the {} block size {}",
                                  name, ne[0], info.name, info.block_elements));
    }
    out.name = std::move(name);
    out.type = type;
    out.ne = std::move(ne);
    out.n_bytes = *n_bytes;
    out.offset = data_size_;
    return ok_status();
}

Status GgufWriter::add_tensor(std::string name, DType type, std::vector<int64_t> ne, std::vector<uint8_t> bytes) {
    PendingTensor tensor;
    KESTREL_RETURN_IF_ERROR(add_tensor_info(std::move(name), type, std::move(ne), tensor));
    if (static_cast<int64_t>(bytes.size()) != tensor.n_bytes) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("GGUF writer: tensor '{}' needs {} bytes, got {}", tensor.name, tensor.n_bytes,
                                  bytes.size()));
    }
    tensor.bytes = std::move(bytes);
    data_size_ += (tensor.n_bytes + alignment_ - 1) / alignment_ * alignment_;
    tensors_.push_back(std::move(tensor));
    return ok_status();
}

Status GgufWriter::add_tensor(std::string name, DType type, std::vector<int64_t> ne, FillBytes fill) {
    PendingTensor tensor;
    KESTREL_RETURN_IF_ERROR(add_tensor_info(std::move(name), type, std::move(ne), tensor));
    tensor.fill = std::move(fill);
    data_size_ += (tensor.n_bytes + alignment_ - 1) / alignment_ * alignment_;
    tensors_.push_back(std::move(tensor));
    return ok_status();
}

std::vector<uint8_t> GgufWriter::header_bytes() const {
    std::vector<uint8_t> out;
    put<uint32_t>(out, 0x46554747);  // "GGUF"
    put<uint32_t>(out, 3);
    put<uint64_t>(out, tensors_.size());
    put<uint64_t>(out, metadata_.size());
    for (const GgufKeyValue& entry : metadata_) {
        put_string(out, entry.key);
        put<uint32_t>(out, static_cast<uint32_t>(entry.value.type()));
        put_value(out, entry.value);
    }
    for (const PendingTensor& tensor : tensors_) {
        put_string(out, tensor.name);
        put<uint32_t>(out, static_cast<uint32_t>(tensor.ne.size()));
        for (int64_t extent : tensor.ne) put<uint64_t>(out, static_cast<uint64_t>(extent));
        put<uint32_t>(out, static_cast<uint32_t>(tensor.type));
        put<uint64_t>(out, tensor.offset);
    }
    out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, 0);
    return out;
}

Result<std::vector<uint8_t>> GgufWriter::to_bytes() const {
    std::vector<uint8_t> out = header_bytes();
    const size_t data_start = out.size();
    out.resize(data_start + data_size_, 0);
    for (const PendingTensor& tensor : tensors_) {
        std::span<uint8_t> target(out.data() + data_start + tensor.offset, static_cast<size_t>(tensor.n_bytes));
        if (tensor.fill) {
            KESTREL_RETURN_IF_ERROR(tensor.fill(target));
        } else {
            std::memcpy(target.data(), tensor.bytes.data(), tensor.bytes.size());
        }
    }
    return out;
}

Status GgufWriter::write(const std::filesystem::path& path) const {
    const std::filesystem::path temporary = path.string() + ".tmp";
    const auto io_error = [&](std::string_view what) {
        std::error_code ignored;
        std::filesystem::remove(temporary, ignored);
        return Status(StatusCode::kIoError, fmt::format("{}: {}: {}", path.string(), what, std::strerror(errno)));
    };
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) return io_error("cannot create");
        const std::vector<uint8_t> header = header_bytes();
        out.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size()));
        std::vector<uint8_t> buffer;
        const std::vector<char> padding(alignment_, 0);
        for (const PendingTensor& tensor : tensors_) {
            std::span<const uint8_t> bytes = tensor.bytes;
            if (tensor.fill) {
                buffer.assign(static_cast<size_t>(tensor.n_bytes), 0);
                Status filled = tensor.fill(buffer);
                if (!filled.ok()) {
                    out.close();
                    std::error_code ignored;
                    std::filesystem::remove(temporary, ignored);
                    return filled;
                }
                bytes = buffer;
            }
            out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
            const uint64_t pad = (alignment_ - tensor.n_bytes % alignment_) % alignment_;
            out.write(padding.data(), static_cast<std::streamsize>(pad));
        }
        out.flush();
        if (!out) return io_error("write failed");
    }
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) return io_error("cannot rename the temporary file into place");
    return ok_status();
}

}  // namespace kestrel
