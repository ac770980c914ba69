// dequantize(): checks the sizes, then hands whole blocks to the per-type converter
// (dequantize_blocks.h). The plain element types live here: F32 is copied bit for bit (NaN
// payloads included, as gguf-py's `view(np.float32)`), F16 widens exactly (numpy's
// astype(np.float32), payloads kept), BF16 is the upper half of a float32 (gguf-py shifts
// the int16 left by 16).
#include "io/dequantize.h"

#include <cstring>
#include <string>
#include <utility>

#include "core/half.h"
#include "io/dequantize_blocks.h"

namespace kestrel {
namespace {

using BlockFn = void (*)(const uint8_t* src, int64_t n_blocks, float* dst);

void f32(const uint8_t* src, int64_t n, float* dst) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void f16(const uint8_t* src, int64_t n, float* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_le<uint16_t>(src + 2 * i));
}

void bf16(const uint8_t* src, int64_t n, float* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_le<uint16_t>(src + 2 * i));
}

// The converter for `type`, or nullptr when there is none. For the plain types a "block" is
// one element.
BlockFn block_function(DType type) {
    switch (type) {
        case DType::kF32:
            return f32;
        case DType::kF16:
            return f16;
        case DType::kBF16:
            return bf16;
        case DType::kQ4_0:
            return dequant::q4_0;
        case DType::kQ4_1:
            return dequant::q4_1;
        case DType::kQ5_0:
            return dequant::q5_0;
        case DType::kQ5_1:
            return dequant::q5_1;
        case DType::kQ8_0:
            return dequant::q8_0;
        case DType::kQ2_K:
            return dequant::q2_k;
        case DType::kQ3_K:
            return dequant::q3_k;
        case DType::kQ4_K:
            return dequant::q4_k;
        case DType::kQ5_K:
            return dequant::q5_k;
        case DType::kQ6_K:
            return dequant::q6_k;
        case DType::kIQ4_NL:
            return dequant::iq4_nl;
        case DType::kIQ4_XS:
            return dequant::iq4_xs;
        default:
            return nullptr;
    }
}

}  // namespace

bool dequantize_supported(DType type) {
    return block_function(type) != nullptr;
}

Status dequantize(DType type, std::span<const uint8_t> src, int64_t n_elements, float* dst) {
    const BlockFn convert = block_function(type);
    const std::string name(dtype_name(type));
    if (!convert) return Status(StatusCode::kUnsupported, "unsupported type " + name);

    const auto invalid = [](std::string message) {
        return Status(StatusCode::kInvalidArgument, std::move(message));
    };
    const DTypeInfo& info = dtype_info(type);
    const std::string what = std::to_string(n_elements) + " elements of " + name;
    if (n_elements < 0) return invalid("negative element count: " + what);
    if (n_elements % info.block_elements != 0) {
        return invalid(what + " are not a whole number of " + std::to_string(info.block_elements) +
                       "-element blocks");
    }
    const std::optional<int64_t> bytes = dtype_bytes(type, n_elements);
    if (!bytes) return invalid(what + " overflow a 64-bit byte count");
    if (static_cast<uint64_t>(*bytes) != src.size()) {
        return invalid(what + " take " + std::to_string(*bytes) + " bytes, but " +
                       std::to_string(src.size()) + " were given");
    }
    if (n_elements == 0) return ok_status();
    if (dst == nullptr) return invalid("null output buffer for " + what);

    convert(src.data(), n_elements / info.block_elements, dst);
    return ok_status();
}

}  // namespace kestrel
