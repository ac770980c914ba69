// The original ggml block types: 32 weights per block, one fp16 scale d, and for the `_1`
// types an fp16 offset m. Layouts: ggml-common.h `block_q4_0` ... `block_q8_0`.
// Arithmetic: gguf-py quants.py `Q4_0.dequantize_blocks` ... `Q8_0.dequantize_blocks`,
// which widen d and m to float32 and then compute d * q (Q4_0, Q5_0, Q8_0) or
// (d * q) + m (Q4_1, Q5_1), one rounding per operation.
#include "core/half.h"
#include "io/dequantize_blocks.h"

namespace kestrel::dequant {
namespace {

constexpr int kBlock = 32;  // QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0

// block_q4_0, 18 bytes:
//   [0, 2)   d       fp16
//   [2, 18)  qs[16]  byte j: low nibble = weight j, high nibble = weight j + 16
// weight = d * (nibble - 8)
void block_q4_0(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const uint8_t* qs = block + 2;
    for (int j = 0; j < kBlock / 2; ++j) {
        y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
        y[j + kBlock / 2] = d * static_cast<float>((qs[j] >> 4) - 8);
    }
}

// block_q4_1, 20 bytes:
//   [0, 2)   d       fp16
//   [2, 4)   m       fp16 (the block minimum)
//   [4, 20)  qs[16]  as Q4_0, unsigned
// weight = (d * nibble) + m
void block_q4_1(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const float m = fp16_to_fp32(load_le<uint16_t>(block + 2));
    const uint8_t* qs = block + 4;
    for (int j = 0; j < kBlock / 2; ++j) {
        y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
        y[j + kBlock / 2] = d * static_cast<float>(qs[j] >> 4) + m;
    }
}

// The fifth bit of weight j in the Q5 types: bit j of the little-endian uint32 qh.
inline int high_bit(uint32_t qh, int j) {
    return static_cast<int>((qh >> j) & 1u) << 4;
}

// block_q5_0, 22 bytes:
//   [0, 2)   d       fp16
//   [2, 6)   qh      uint32 (unaligned), bit j = bit 4 of weight j
//   [6, 22)  qs[16]  low 4 bits, as Q4_0
// weight = d * (q - 16), q = nibble | (bit << 4) in [0, 31]
void block_q5_0(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const uint32_t qh = load_le<uint32_t>(block + 2);
    const uint8_t* qs = block + 6;
    for (int j = 0; j < kBlock / 2; ++j) {
        const int q0 = (qs[j] & 0x0F) | high_bit(qh, j);
        const int q1 = (qs[j] >> 4) | high_bit(qh, j + kBlock / 2);
        y[j] = d * static_cast<float>(q0 - 16);
        y[j + kBlock / 2] = d * static_cast<float>(q1 - 16);
    }
}

// block_q5_1, 24 bytes:
//   [0, 2)   d       fp16
//   [2, 4)   m       fp16
//   [4, 8)   qh      uint32, as Q5_0
//   [8, 24)  qs[16]  as Q5_0
// weight = (d * q) + m, q in [0, 31]
void block_q5_1(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const float m = fp16_to_fp32(load_le<uint16_t>(block + 2));
    const uint32_t qh = load_le<uint32_t>(block + 4);
    const uint8_t* qs = block + 8;
    for (int j = 0; j < kBlock / 2; ++j) {
        const int q0 = (qs[j] & 0x0F) | high_bit(qh, j);
        const int q1 = (qs[j] >> 4) | high_bit(qh, j + kBlock / 2);
        y[j] = d * static_cast<float>(q0) + m;
        y[j + kBlock / 2] = d * static_cast<float>(q1) + m;
    }
}

// block_q8_0, 34 bytes:
//   [0, 2)   d       fp16
//   [2, 34)  qs[32]  int8, weight j
// weight = q * d
void block_q8_0(const uint8_t* block, float* y) {
    const float d = fp16_to_fp32(load_le<uint16_t>(block + 0));
    const uint8_t* qs = block + 2;
    for (int j = 0; j < kBlock; ++j) {
        y[j] = static_cast<float>(static_cast<int8_t>(qs[j])) * d;
    }
}

template <void (*kBlockFn)(const uint8_t*, float*), int64_t kBlockBytes>
void for_each_block(const uint8_t* src, int64_t n_blocks, float* dst) {
    for (int64_t i = 0; i < n_blocks; ++i) kBlockFn(src + i * kBlockBytes, dst + i * kBlock);
}

}  // namespace

void q4_0(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q4_0, 18>(src, n_blocks, dst);
}

void q4_1(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q4_1, 20>(src, n_blocks, dst);
}

void q5_0(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q5_0, 22>(src, n_blocks, dst);
}

void q5_1(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q5_1, 24>(src, n_blocks, dst);
}

void q8_0(const uint8_t* src, int64_t n_blocks, float* dst) {
    for_each_block<block_q8_0, 34>(src, n_blocks, dst);
}

}  // namespace kestrel::dequant
