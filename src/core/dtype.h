// Element and block types of stored tensors. The values of the GGML block types are
// ggml's own type ids (ggml.h `enum ggml_type`, GGUF tensor infos store them), so a GGUF
// type id converts with a table lookup; types that ggml lacks (U8, BOOL) sit above 1000.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace kestrel {

enum class DType : uint32_t {
    kF32 = 0,
    kF16 = 1,
    kQ4_0 = 2,
    kQ4_1 = 3,
    kQ5_0 = 6,
    kQ5_1 = 7,
    kQ8_0 = 8,
    kQ8_1 = 9,
    kQ2_K = 10,
    kQ3_K = 11,
    kQ4_K = 12,
    kQ5_K = 13,
    kQ6_K = 14,
    kQ8_K = 15,
    kIQ2_XXS = 16,
    kIQ2_XS = 17,
    kIQ3_XXS = 18,
    kIQ1_S = 19,
    kIQ4_NL = 20,
    kIQ3_S = 21,
    kIQ2_S = 22,
    kIQ4_XS = 23,
    kI8 = 24,
    kI16 = 25,
    kI32 = 26,
    kI64 = 27,
    kF64 = 28,
    kIQ1_M = 29,
    kBF16 = 30,
    kTQ1_0 = 34,
    kTQ2_0 = 35,
    kMXFP4 = 39,
    kNVFP4 = 40,
    kQ1_0 = 41,
    // Not ggml types: only safetensors files carry these.
    kU8 = 1000,
    kBool = 1001,
};

struct DTypeInfo {
    std::string_view name;    // as ggml and gguf-py spell it: "Q4_K", "BF16"
    int64_t block_elements;   // elements per block (1 for plain element types)
    int64_t block_bytes;      // bytes per block
};

// The layout of a known type. Every DType enumerator has one.
const DTypeInfo& dtype_info(DType type);
inline std::string_view dtype_name(DType type) { return dtype_info(type).name; }

// The DType for a ggml type id read from a file, or nothing for an id ggml does not define.
std::optional<DType> dtype_from_ggml_id(uint32_t id);

// Bytes of `n_elements` elements, or nothing when n_elements is not a whole number of blocks
// or the byte count overflows int64.
std::optional<int64_t> dtype_bytes(DType type, int64_t n_elements);

}  // namespace kestrel
