// Per-type block dequantisers behind dequantize() (dequantize.h); internal to src/io.
//
// Each function converts `n_blocks` consecutive blocks starting at `src` into
// n_blocks * block_elements floats at `dst`. The caller has checked the sizes. Each file
// describes its block layouts (ggml-common.h `block_*` structs) by byte offset and follows
// the float32 operation order of gguf-py's `gguf/quants.py`: fp16 scales are widened to
// float32 exactly, then each product and sum is one float32 operation in gguf-py's order.
// (Products of an fp16 scale and these small integers are exact in float32, so the only
// rounding is the final + m or - dmin * m; see dequantize_kquants.cpp.)
#pragma once

#include <cstdint>

namespace kestrel::dequant {

// dequantize_legacy.cpp: 32-element blocks with one fp16 scale (and an fp16 minimum for _1).
void q4_0(const uint8_t* src, int64_t n_blocks, float* dst);
void q4_1(const uint8_t* src, int64_t n_blocks, float* dst);
void q5_0(const uint8_t* src, int64_t n_blocks, float* dst);
void q5_1(const uint8_t* src, int64_t n_blocks, float* dst);
void q8_0(const uint8_t* src, int64_t n_blocks, float* dst);

// Q4_K and Q5_K pack eight 6-bit scales and eight 6-bit minimums into 12 bytes
// (ggml-quants.c get_scale_min_k4; letters are the bits of sub-blocks 0..7):
//   bytes 0-3   [sc4..7 bits 4-5 | sc0..3 bits 0-5]
//   bytes 4-7   [m4..7  bits 4-5 | m0..3  bits 0-5]
//   bytes 8-11  [m4..7 bits 0-3  | sc4..7 bits 0-3]
// Also used by the engine's W4 conversion (src/ops/weight_format.cpp).
struct ScaleMin {
    int scale;
    int min;
};
ScaleMin k4_scale_min(const uint8_t* scales, int j);

// dequantize_kquants.cpp: 256-element super-blocks with quantised sub-block scales.
void q2_k(const uint8_t* src, int64_t n_blocks, float* dst);
void q3_k(const uint8_t* src, int64_t n_blocks, float* dst);
void q4_k(const uint8_t* src, int64_t n_blocks, float* dst);
void q5_k(const uint8_t* src, int64_t n_blocks, float* dst);
void q6_k(const uint8_t* src, int64_t n_blocks, float* dst);

// dequantize_iquants.cpp: 4-bit indices into the non-linear IQ4_NL codebook.
void iq4_nl(const uint8_t* src, int64_t n_blocks, float* dst);
void iq4_xs(const uint8_t* src, int64_t n_blocks, float* dst);

}  // namespace kestrel::dequant
