// Reference (CPU) dequantisation of GGUF block types to float32, bit-exact with gguf-py's
// `gguf.quants.dequantize` (tests/unit/dequantize_test.cpp holds it to fixtures made by
// scripts/make_dequant_fixtures.py). Block layouts: ggml-common.h; see also
// ../shared/specs/gguf-layouts.md.
#pragma once

#include <cstdint>
#include <span>

#include "core/dtype.h"
#include "kestrel/status.h"

namespace kestrel {

// F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS.
bool dequantize_supported(DType type);

// Converts `n_elements` elements of `type` (a whole number of blocks, exactly
// dtype_bytes(type, n_elements) bytes in `src`) into `dst`. kUnsupported for other types,
// kInvalidArgument when the sizes disagree.
Status dequantize(DType type, std::span<const uint8_t> src, int64_t n_elements, float* dst);

}  // namespace kestrel
