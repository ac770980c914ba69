// IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear codebook of 16 int8 values
// (ggml-common.h kvalues_iq4nl), scaled per block of 32. Layouts: ggml-common.h
// `block_iq4_nl`, `block_iq4_xs`. Arithmetic: gguf-py quants.py `IQ4_NL`/`IQ4_XS
// .dequantize_blocks`: weight = d * float(kvalue) for IQ4_NL and (d * float(sc)) * float(kvalue)
// for IQ4_XS, in float32.
#include "core/half.h"
#include "io/dequantize_blocks.h"

namespace kestrel::dequant {
namespace {

// The IQ4_NL codebook (ggml-common.h kvalues_iq4nl), shared by IQ4_XS.
constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

// 32 weights from 16 bytes: low nibble of byte l = weight l, high nibble = weight l + 16
// (the Q4_0 order), each mapped through the codebook and scaled by `scale`.
void codebook_32(const uint8_t* qs, float scale, float* y) {
    for (int l = 0; l < 16; ++l) {
        y[l] = scale * static_cast<float>(kIq4nlValues[qs[l] & 0x0F]);
        y[l + 16] = scale * static_cast<float>(kIq4nlValues[qs[l] >> 4]);
    }
}

// block_iq4_nl, 18 bytes:
//   [0, 2)   d       fp16
//   [2, 18)  qs[16]  codebook indices, Q4_0 order
void block_iq4_nl(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    codebook_32(block + 2, d, y);
}

// block_iq4_xs, 136 bytes (256 weights, 8 sub-blocks of 32):
//   [0, 2)     d            fp16
//   [2, 4)     scales_h     uint16, bits 2j..2j+1 = bits 4-5 of the scale of sub-block j
//   [4, 8)     scales_l[4]  nibble j % 2 of byte j / 2 = bits 0-3 of the scale of sub-block j
//   [8, 136)   qs[128]      16 bytes per sub-block, codebook indices in Q4_0 order
// sub-block scale = 6-bit value - 32; weight = (d * scale) * kvalue
void block_iq4_xs(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const uint16_t scales_h = load_le<uint16_t>(block + 2);
    const uint8_t* scales_l = block + 4;
    const uint8_t* qs = block + 8;
    for (int j = 0; j < 8; ++j) {
        const int low = (scales_l[j / 2] >> (4 * (j % 2))) & 0x0F;
        const int high = (scales_h >> (2 * j)) & 3;
        const float dl = d * static_cast<float>((low | (high << 4)) - 32);
        codebook_32(qs + 16 * j, dl, y + 32 * j);
    }
}

}  // namespace

void iq4_nl(const uint8_t* src, int64_t n_blocks, float* dst) {
    for (int64_t i = 0; i < n_blocks; ++i) block_iq4_nl(src + i * 18, dst + i * 32);
}

void iq4_xs(const uint8_t* src, int64_t n_blocks, float* dst) {
    for (int64_t i = 0; i < n_blocks; ++i) block_iq4_xs(src + i * 136, dst + i * 256);
}

}  // namespace kestrel::dequant
