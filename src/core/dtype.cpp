#include "core/dtype.h"

#include <array>
#include <limits>

namespace kestrel {
namespace {

struct Entry {
    DType type;
    DTypeInfo info;
};

// Block sizes from ggml's type traits (ggml.c) as gguf-py's GGML_QUANT_SIZES lists them.
constexpr std::array kTypes = {
    Entry{DType::kF32, {"F32", 1, 4}},          Entry{DType::kF16, {"F16", 1, 2}},
    Entry{DType::kQ4_0, {"Q4_0", 32, 18}},      Entry{DType::kQ4_1, {"Q4_1", 32, 20}},
    Entry{DType::kQ5_0, {"Q5_0", 32, 22}},      Entry{DType::kQ5_1, {"Q5_1", 32, 24}},
    Entry{DType::kQ8_0, {"Q8_0", 32, 34}},      Entry{DType::kQ8_1, {"Q8_1", 32, 40}},
    Entry{DType::kQ2_K, {"Q2_K", 256, 84}},     Entry{DType::kQ3_K, {"Q3_K", 256, 110}},
    Entry{DType::kQ4_K, {"Q4_K", 256, 144}},    Entry{DType::kQ5_K, {"Q5_K", 256, 176}},
    Entry{DType::kQ6_K, {"Q6_K", 256, 210}},    Entry{DType::kQ8_K, {"Q8_K", 256, 292}},
    Entry{DType::kIQ2_XXS, {"IQ2_XXS", 256, 66}}, Entry{DType::kIQ2_XS, {"IQ2_XS", 256, 74}},
    Entry{DType::kIQ3_XXS, {"IQ3_XXS", 256, 98}}, Entry{DType::kIQ1_S, {"IQ1_S", 256, 50}},
    Entry{DType::kIQ4_NL, {"IQ4_NL", 32, 18}},  Entry{DType::kIQ3_S, {"IQ3_S", 256, 110}},
    Entry{DType::kIQ2_S, {"IQ2_S", 256, 82}},   Entry{DType::kIQ4_XS, {"IQ4_XS", 256, 136}},
    Entry{DType::kI8, {"I8", 1, 1}},            Entry{DType::kI16, {"I16", 1, 2}},
    Entry{DType::kI32, {"I32", 1, 4}},          Entry{DType::kI64, {"I64", 1, 8}},
    Entry{DType::kF64, {"F64", 1, 8}},          Entry{DType::kIQ1_M, {"IQ1_M", 256, 56}},
    Entry{DType::kBF16, {"BF16", 1, 2}},        Entry{DType::kTQ1_0, {"TQ1_0", 256, 54}},
    Entry{DType::kTQ2_0, {"TQ2_0", 256, 66}},   Entry{DType::kMXFP4, {"MXFP4", 32, 17}},
    Entry{DType::kNVFP4, {"NVFP4", 64, 36}},    Entry{DType::kQ1_0, {"Q1_0", 128, 18}},
    Entry{DType::kU8, {"U8", 1, 1}},            Entry{DType::kBool, {"BOOL", 1, 1}},
};

const Entry* find_entry(uint32_t id) {
    for (const Entry& entry : kTypes) {
        if (static_cast<uint32_t>(entry.type) == id) return &entry;
    }
    return nullptr;
}

}  // namespace

const DTypeInfo& dtype_info(DType type) {
    static constexpr DTypeInfo kUnknown{"UNKNOWN", 1, 1};
    const Entry* entry = find_entry(static_cast<uint32_t>(type));
    return entry ? entry->info : kUnknown;
}

std::optional<DType> dtype_from_ggml_id(uint32_t id) {
    if (id >= static_cast<uint32_t>(DType::kU8)) return std::nullopt;
    const Entry* entry = find_entry(id);
    if (!entry) return std::nullopt;
    return entry->type;
}

std::optional<int64_t> dtype_bytes(DType type, int64_t n_elements) {
    const DTypeInfo& info = dtype_info(type);
    if (n_elements < 0 || n_elements % info.block_elements != 0) return std::nullopt;
    const int64_t blocks = n_elements / info.block_elements;
    if (blocks > std::numeric_limits<int64_t>::max() / info.block_bytes) return std::nullopt;
    return blocks * info.block_bytes;
}

}  // namespace kestrel
