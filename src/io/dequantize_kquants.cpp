// k-quants: 256-weight super-blocks (QK_K) split into 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K)
// or 8 of 32 (Q4_K, Q5_K), each with a small integer scale (and minimum) relative to the
// super-block's fp16 d (and dmin). Layouts: ggml-common.h `block_q2_K` ... `block_q6_K`.
//
// Arithmetic, as gguf-py quants.py `Q2_K.dequantize_blocks` ... `Q6_K.dequantize_blocks` does
// it in float32 (and ggml-quants.c dequantize_row_q*_K groups the same way): first the
// sub-block factors dl = d * float(sc) and ml = dmin * float(m), then
// weight = dl * float(q) - ml. Every product here is exact in float32: an fp16 d has at most
// 11 significant bits and |sc * q| < 4096 needs at most 12, so no product rounds, and the
// final subtraction of ml is the only rounding. The result is thus the correctly rounded
// d*sc*q - dmin*m whatever the grouping, and a fused multiply-add gives the same bits (what
// would not: computing any of it in fp16, as half2 GPU code may).
#include "core/half.h"
#include "io/dequantize_blocks.h"

namespace kestrel::dequant {

ScaleMin k4_scale_min(const uint8_t* scales, int j) {
    if (j < 4) return {scales[j] & 0x3F, scales[j + 4] & 0x3F};
    return {(scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)};
}

namespace {

constexpr int kSuper = 256;  // QK_K

// block_q2_K, 84 bytes:
//   [0, 16)    scales[16]  sub-block i (weights 16i .. 16i+15): low nibble sc, high nibble m
//   [16, 80)   qs[64]      2-bit quants; two halves of 32 bytes, each holding 128 weights:
//                          bits 2s..2s+1 of byte l of half h = weight 128h + 32s + l
//   [80, 82)   d           fp16
//   [82, 84)   dmin        fp16
// weight = (d * sc) * q - (dmin * m)
void block_q2_k(const uint8_t* block, float* y) {
    const uint8_t* scales = block + 0;
    const uint8_t* qs = block + 16;
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 80));
    const float dmin = fp16_to_fp32(load_le<uint16_t>(block + 82));
    float dl[16];
    float ml[16];
    for (int i = 0; i < 16; ++i) {
        dl[i] = d * static_cast<float>(scales[i] & 0x0F);
        ml[i] = dmin * static_cast<float>(scales[i] >> 4);
    }
    for (int h = 0; h < 2; ++h) {
        for (int s = 0; s < 4; ++s) {
            for (int l = 0; l < 32; ++l) {
                const int i = 128 * h + 32 * s + l;
                const int q = (qs[32 * h + l] >> (2 * s)) & 3;
                y[i] = dl[i / 16] * static_cast<float>(q) - ml[i / 16];
            }
        }
    }
}

// Q3_K's sixteen 6-bit scales in 12 bytes (gguf-py's diagram; A..P are sub-blocks 0..15):
//   bytes 0-7    low nibble: bits 0-3 of scale i (i < 8); high nibble: of scale i + 8
//   bytes 8-11   bit pairs: bits 4-5 of scale 4k + b sit at bits 2k..2k+1 of byte 8 + b
// stored with a +32 bias: the signed scale is the 6-bit value - 32.
int q3_k_scale(const uint8_t* scales, int i) {
    const int low = i < 8 ? scales[i] & 0x0F : scales[i - 8] >> 4;
    const int high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (low | (high << 4)) - 32;
}

// block_q3_K, 110 bytes:
//   [0, 32)     hmask[32]  bit b of byte l = high bit of weight 32b + l
//   [32, 96)    qs[64]     low 2 bits, laid out as Q2_K's qs
//   [96, 108)   scales[12] sixteen signed 6-bit scales (q3_k_scale)
//   [108, 110)  d          fp16
// q = low2 - (high bit set ? 0 : 4)  (a clear bit subtracts 4), weight = (d * sc) * q
void block_q3_k(const uint8_t* block, float* y) {
    const uint8_t* hmask = block + 0;
    const uint8_t* qs = block + 32;
    const uint8_t* scales = block + 96;
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 108));
    float dl[16];
    for (int i = 0; i < 16; ++i) dl[i] = d * static_cast<float>(q3_k_scale(scales, i));
    for (int h = 0; h < 2; ++h) {
        for (int s = 0; s < 4; ++s) {
            for (int l = 0; l < 32; ++l) {
                const int i = 128 * h + 32 * s + l;
                const int low = (qs[32 * h + l] >> (2 * s)) & 3;
                const int high_clear = ((hmask[l] >> (i / 32)) & 1) ^ 1;
                y[i] = dl[i / 16] * static_cast<float>(low - 4 * high_clear);
            }
        }
    }
}

// block_q4_K, 144 bytes:
//   [0, 2)     d           fp16
//   [2, 4)     dmin        fp16
//   [4, 16)    scales[12]  eight 6-bit (sc, m) pairs (k4_scale_min)
//   [16, 144)  qs[128]     four chunks of 32 bytes, each holding 64 weights:
//                          low nibble of byte l of chunk c = weight 64c + l (sub-block 2c),
//                          high nibble = weight 64c + 32 + l (sub-block 2c + 1)
// weight = (d * sc) * q - (dmin * m)
void block_q4_k(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const float dmin = fp16_to_fp32(load_le<uint16_t>(block + 2));
    const uint8_t* scales = block + 4;
    const uint8_t* qs = block + 16;
    for (int j = 0; j < 8; ++j) {  // sub-block of 32 weights
        const ScaleMin sm = k4_scale_min(scales, j);
        const float dl = d * static_cast<float>(sm.scale);
        const float ml = dmin * static_cast<float>(sm.min);
        const uint8_t* q = qs + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        for (int l = 0; l < 32; ++l) {
            y[32 * j + l] = dl * static_cast<float>((q[l] >> shift) & 0x0F) - ml;
        }
    }
}

// block_q5_K, 176 bytes:
//   [0, 2)     d           fp16
//   [2, 4)     dmin        fp16
//   [4, 16)    scales[12]  as Q4_K
//   [16, 48)   qh[32]      bit j of byte l = bit 4 of weight 32j + l
//   [48, 176)  qs[128]     low 4 bits, as Q4_K's qs
// weight = (d * sc) * q - (dmin * m), q in [0, 31]
void block_q5_k(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const float dmin = fp16_to_fp32(load_le<uint16_t>(block + 2));
    const uint8_t* scales = block + 4;
    const uint8_t* qh = block + 16;
    const uint8_t* qs = block + 48;
    for (int j = 0; j < 8; ++j) {
        const ScaleMin sm = k4_scale_min(scales, j);
        const float dl = d * static_cast<float>(sm.scale);
        const float ml = dmin * static_cast<float>(sm.min);
        const uint8_t* q = qs + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        for (int l = 0; l < 32; ++l) {
            const int value = ((q[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
            y[32 * j + l] = dl * static_cast<float>(value) - ml;
        }
    }
}

// block_q6_K, 210 bytes:
//   [0, 128)    ql[128]     low 4 bits; two halves of 64 bytes, each holding 128 weights:
//                           nibble k of byte l of half h = weight 128h + 64k + l
//   [128, 192)  qh[64]      high 2 bits; two halves of 32 bytes:
//                           bits 2s..2s+1 of byte l of half h = weight 128h + 32s + l
//   [192, 208)  scales[16]  int8, sub-block i = weights 16i .. 16i+15
//   [208, 210)  d           fp16
// weight = (d * sc) * (q - 32), q in [0, 63]
void block_q6_k(const uint8_t* block, float* y) {
    const uint8_t* ql = block + 0;
    const uint8_t* qh = block + 128;
    const uint8_t* scales = block + 192;
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 208));
    float dl[16];
    for (int i = 0; i < 16; ++i) dl[i] = d * static_cast<float>(static_cast<int8_t>(scales[i]));
    for (int h = 0; h < 2; ++h) {
        for (int r = 0; r < 128; ++r) {  // weight within the half
            const int i = 128 * h + r;
            const int low = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
            const int high = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            y[i] = dl[i / 16] * static_cast<float>((low | (high << 4)) - 32);
        }
    }
}

template <void (*kBlockFn)(const uint8_t*, float*), int64_t kBlockBytes>
void for_each_block(const uint8_t* src, int64_t n_blocks, float* dst) {
    for (int64_t i = 0; i < n_blocks; ++i) kBlockFn(src + i * kBlockBytes, dst + i * kSuper);
}

}  // namespace

void q2_k(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q2_k, 84>(src, n_blocks, dst);
}

void q3_k(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q3_k, 110>(src, n_blocks, dst);
}

void q4_k(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q4_k, 144>(src, n_blocks, dst);
}

void q5_k(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q5_k, 176>(src, n_blocks, dst);
}

void q6_k(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q6_k, 210>(src, n_blocks, dst);
}

}  // namespace kestrel::dequant
