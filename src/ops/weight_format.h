// The engine's W4 weight format and the Q8 activation blocks of the W4A8 decode GEMV, with
// their CPU reference twins. The twins define the CUDA kernels' exact semantics
// (src/ops/cuda/gemv_w4a8.cu); tests/unit/cuda_gemv_test.cpp holds the kernels to them.
//
// W4 (int4, group 32, asymmetric), for a weight matrix W [N, K] (y = W x), K % 32 == 0:
//   qs         [N, K/2]         uint8   row n = K/32 groups of 16 bytes. In group g, byte b holds
//                                       weight 32g+b in its low nibble and weight 32g+b+16 in its
//                                       high nibble (ggml's Q4_0 order). q in [0, 15].
//   scale_min  [N, K/32, 2]     fp16    (scale, min) of each group, row-major per output row.
//   w[n, 32g+i] = scale * q - min       (fp32 arithmetic on the widened fp16 values)
// 5.0 bits per weight (4 + 2 x 16 / 32).
//
// Why this layout (techniques.md §1): a decode warp owns an output row; lane l reads group
// g = l + 32j as one 16-byte load, so the warp's loads of a row are 512 contiguous bytes, and
// the same lanes read their (scale, min) pairs as 4-byte loads, 128 contiguous bytes. The low
// nibbles of a 4-byte word are weights i..i+3 and the high nibbles weights i+16..i+19, which
// line up with the Q8 block's natural byte order: `p & 0x0F0F0F0F` dp4a's against activation
// bytes 0-15, `(p >> 4) & 0x0F0F0F0F` against bytes 16-31, without shuffles.
//
// Q8 block (activations, one per 32 consecutive elements of a row of x), 48 bytes, 16-aligned
// so the kernel loads it as three 16-byte vectors (ExecuTorch's padding, gemma4 spec §5.1):
//   d = amax / 127 (fp32), q = clamp(rint(x / d), -127, 127), sum = Σ q; x ≈ d * q.
//   A block holding a NaN or an infinity gets d = NaN, so the GEMV's output is NaN too.
//
// W4A8 dot per (output row n, group g, activation row m), all integer parts exact:
//   dot = Σ_i q_w[i] * q_a[i]  (int32)      contribution = d_a * (scale * dot - min * sum_a)
// summed over the groups in fp32 (the kernel's order differs from the twin's: they agree to
// fp32 accumulation-order tolerance, not bit for bit).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kestrel/status.h"

namespace kestrel {

constexpr int64_t kW4Group = 32;

struct W4Weights {
    int64_t n = 0;                   // output features (rows)
    int64_t k = 0;                   // input features, a multiple of kW4Group
    std::vector<uint8_t> qs;         // [n, k/2]
    std::vector<uint16_t> scale_min; // [n, k/32, 2] fp16 bits: scale, then min

    int64_t groups() const { return k / kW4Group; }
    int64_t qs_bytes() const { return n * (k / 2); }
    int64_t scale_min_bytes() const { return n * groups() * 4; }
};

// Exactly the bytes of one output row's quantised weights: q of weight i of group g.
inline int w4_q(const W4Weights& w, int64_t row, int64_t col) {
    const uint8_t byte = w.qs[static_cast<size_t>(row * (w.k / 2) + (col / 32) * 16 + (col % 16))];
    return (col % 32) < 16 ? (byte & 0x0F) : (byte >> 4);
}

// The fp32 weight matrix [n, k] that W4 stands for: scale * q - min.
std::vector<float> w4_dequantize(const W4Weights& w);

// From GGUF Q4_K (rows of k / 256 blocks of 144 bytes, row-major, as stored for a [n, k]
// tensor): scale = fp16(d * sc), min = fp16(dmin * m) per 32-group; q copied. The only error is
// the fp16 rounding of d * sc and dmin * m (each exact in fp32): |Δw| <= 2^-11 (|d sc q| + |dmin m|).
Result<W4Weights> w4_from_q4_k(std::span<const uint8_t> src, int64_t n, int64_t k);

// From GGUF Q4_0 (rows of k / 32 blocks of 18 bytes): scale = d, min = 8 d, q copied.
// Exact: scale * q - min == d * (q - 8) in fp32 for every q.
Result<W4Weights> w4_from_q4_0(std::span<const uint8_t> src, int64_t n, int64_t k);

// From fp32 [n, k]: per group, round-to-nearest asymmetric min/max quantisation with the
// fp16-rounded scale = (max - min) / 15 and min = -lo; q = clamp(rint((w + min) / scale), 0, 15).
// kInvalidArgument for non-finite weights or ones beyond fp16's range.
Result<W4Weights> w4_from_f32(std::span<const float> src, int64_t n, int64_t k);

struct alignas(16) Q8Block {
    int8_t qs[32];     // elements 0..31 in order
    float d;           // scale: x ≈ d * q
    int32_t sum;       // Σ qs
    int32_t pad[2];    // to 48 bytes: three 16-byte loads
};
static_assert(sizeof(Q8Block) == 48, "Q8Block must be 48 bytes");

// Quantises one row of k elements (k % 32 == 0) into k / 32 blocks.
void quantize_q8_row(const float* x, int64_t k, Q8Block* out);

// y[m, n] = Σ_k W[n, k] x[m, k], x [m_rows, k] fp32, y [m_rows, n]: the fp32 W4 reference
// (weights dequantised in fp32, products accumulated in double, rounded once to fp32).
void matvec_w4_f32(const W4Weights& w, const float* x, int64_t m_rows, float* y);

// The W4A8 twin of the CUDA GEMV: a [m_rows, k/32] Q8 blocks, y [m_rows, n].
// `magnitude`, when not null, receives Σ_g |d_a| (|scale dot| + |min sum|) per output (the
// scale against which fp32 accumulation-order differences are judged).
void matvec_w4a8(const W4Weights& w, const Q8Block* a, int64_t m_rows, float* y,
                 float* magnitude = nullptr);

}  // namespace kestrel
