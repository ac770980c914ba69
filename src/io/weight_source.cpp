#include "io/weight_source.h"

#include <fmt/format.h>

#include "core/half.h"
#include "core/printable.h"
#include "io/dequantize.h"

namespace kestrel {

const WeightInfo* WeightSource::find(std::string_view name) const {
    for (const WeightInfo& tensor : tensors()) {
        if (tensor.name == name) return &tensor;
    }
    return nullptr;
}

namespace {

template <class T>
void widen(std::span<const uint8_t> bytes, float* out) {
    for (size_t i = 0; i < bytes.size() / sizeof(T); ++i) {
        out[i] = static_cast<float>(load_le<T>(bytes.data() + i * sizeof(T)));
    }
}

}  // namespace

Result<std::vector<float>> read_tensor_f32(const WeightSource& source, const WeightInfo& tensor) {
    std::span<const uint8_t> bytes = source.bytes(tensor);
    std::vector<float> out(static_cast<size_t>(tensor.n_elements));
    switch (tensor.dtype) {  // integer tensors (safetensors) widen; block types dequantise
        case DType::kF64: widen<double>(bytes, out.data()); return out;
        case DType::kI8: widen<int8_t>(bytes, out.data()); return out;
        case DType::kU8:
        case DType::kBool: widen<uint8_t>(bytes, out.data()); return out;
        case DType::kI16: widen<int16_t>(bytes, out.data()); return out;
        case DType::kI32: widen<int32_t>(bytes, out.data()); return out;
        case DType::kI64: widen<int64_t>(bytes, out.data()); return out;
        default: break;
    }
    Status status = dequantize(tensor.dtype, bytes, tensor.n_elements, out.data());
    if (!status.ok()) {
        // The name comes from the file: quoted printable, so the message stays one line.
        return Status(status.code(), fmt::format("{} in tensor {} of {}", status.message(), quote_name(tensor.name),
                                                 printable_full(source.description())));
    }
    return out;
}

Result<std::vector<float>> read_tensor_f32(const WeightSource& source, std::string_view name) {
    const WeightInfo* tensor = source.find(name);
    if (!tensor) {
        return Status(StatusCode::kNotFound, fmt::format("{}: no tensor named '{}'", source.description(), name));
    }
    return read_tensor_f32(source, *tensor);
}

}  // namespace kestrel
