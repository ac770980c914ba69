// The engine's W8 weight format, the conversions of GGUF tensors into the engine's formats at
// load (convert_for_engine), and the CPU twins of the W8A8 decode GEMV
// (src/ops/cuda/gemv_w8a8.cu; tests/unit/cuda_gemv_w8_test.cpp holds the kernel to them).
//
// W8 (int8, group 32, asymmetric like W4 so both GEMVs share one structure; one fp16 pair per
// group rather than W4's two-level scales, which int8 codes would barely shrink), for W [N, K]
// (y = W x), K % 32 == 0:
//   qs         [N, K]          int8    row n, column c at n*K + c.
//   scale_min  [N, K/32, 2]    fp16    (scale, min) of each group, row-major per output row; on
//                                      the device one 32-bit word per group, scale in the low half.
//   w[n, 32g+i] = scale * q - min      (fp32 arithmetic on the widened fp16 values; scale * q is
//                                       exact in fp32, 11 x 8 bits, so only the subtraction rounds)
// 9.0 bits per weight (8 + 2 x 16 / 32).
//
// W8A8 dot per (output row n, group g, activation row m), the activations being the Q8 blocks
// of ops/weight_format.h: dot = Σ_i q_w[i] q_a[i] (int32, exact),
// contribution = d_a (scale dot - min sum_a), summed over the groups in fp32. The kernel splits
// each group between two lanes (bytes 0-15 and 16-31, so a warp's weight loads are 512
// contiguous bytes) and adds d_a (scale dot_half) per half, the min term once: its result
// agrees with matvec_w8a8 to fp32 accumulation-order tolerance, judged against `magnitude`.
#pragma once

#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "kestrel/status.h"
#include "ops/weight_format.h"

namespace kestrel {

constexpr int64_t kW8Group = 32;

struct W8Weights {
    int64_t n = 0;                    // output features (rows)
    int64_t k = 0;                    // input features, a multiple of kW8Group
    std::vector<int8_t> qs;           // [n, k]
    std::vector<uint16_t> scale_min;  // [n, k/32, 2] fp16 bits: scale, then min

    int64_t groups() const { return k / kW8Group; }
    int64_t qs_bytes() const { return n * k; }
    int64_t scale_min_bytes() const { return n * groups() * 4; }
};

// The fp32 weight matrix [n, k] that W8 stands for: scale * q - min.
std::vector<float> w8_dequantize(const W8Weights& w);

// `threads` below: the conversions split rows across threads (0 = every hardware thread);
// the result is the same for every thread count.

// From GGUF Q8_0 (rows of k / 32 blocks of 34 bytes): scale = d, min = 0, q copied. Exact:
// scale * q - 0 == q * d in fp32. kInvalidArgument for a non-finite d.
Result<W8Weights> w8_from_q8_0(std::span<const uint8_t> src, int64_t n, int64_t k, int threads = 0);

// From GGUF Q5_K (rows of k / 256 blocks of 176 bytes). Per 32-weight sub-block the source is
// w = a q5 - b with a = d sc, b = dmin m (both exact in fp32), q5 in [0, 31]. Stored as
//   q = q5 - c,  scale = fp16(a),  min = b - c a rounded to fp16   (c an integer in [0, 31])
// which is w exactly but for the two fp16 roundings. c, and which fp16 neighbour of b - c a,
// are chosen per group, c among {0, 16, the midpoint of the group's q5 range, b / a} (each
// rounded both ways), as the pair whose actual worst error over the group's q5 values is
// smallest (never worse than rounding to nearest). Error bound over a group, with
// R = max(|b|, |31 a - b|) the group's largest representable |w|:
//   max |Δw| <= min over the candidates c of 2^-11 (|a| max|q5 - c| + |b - c a|)
//            <= 2^-11 (33/31) R                                        (c = 16 gives this)
// plus the fp32 rounding of the final subtraction (2^-24 |w|, as the reference has). fp16
// rounds relatively by <= 2^-11 in its normal range; below 2^-14 the values are multiples of
// 2^-24 (d, dmin are fp16), which fp16 subnormals hold exactly. c = 0 alone (q = q5, min =
// fp16(b)) would give 2^-11 (31 |a| + |b|), up to twice as much. kInvalidArgument when a or
// b - c a exceeds fp16 for every candidate, or d / dmin is not finite.
Result<W8Weights> w8_from_q5_k(std::span<const uint8_t> src, int64_t n, int64_t k, int threads = 0);

// From GGUF Q6_K (rows of k / 256 blocks of 210 bytes): each 32-group spans two of Q6_K's
// 16-weight sub-blocks (two scales), so it is requantised from its exact fp32 values, as
// w8_from_f32 does: symmetric, |Δw| <= (1/2 + 2^-17) scale with scale <= (1 + 2^-10) amax / 127
// when amax >= 127 * 2^-14 (scale a normal fp16), else scale <= amax / 127 + 2^-24: at most
// ~amax / 254 (0.39% of the group's largest |w|), a quarter of Q6_K's own step or less.
Result<W8Weights> w8_from_q6_k(std::span<const uint8_t> src, int64_t n, int64_t k, int threads = 0);

// From fp32 [n, k]: symmetric per group, scale = fp16(amax / 127), raised by fp16 ulps where
// that rounding (or fp16's subnormal spacing) would put rint(amax / scale) above 127; q =
// rint(w / scale) in [-127, 127], min = 0. Error bound as w8_from_q6_k. kInvalidArgument for
// non-finite weights or amax / 127 beyond fp16's range.
Result<W8Weights> w8_from_f32(std::span<const float> src, int64_t n, int64_t k, int threads = 0);

// W4 as W8: the same 4-bit codes as int8, and each group's (scale, min) = (d sc, dmin m), exact
// in fp32, rounded to W8's fp16: |Δw| <= 2^-11 (|scale q| + |min|) (d sc has up to 19
// significant bits, fp16 11). For stacking a W4 matrix with a W8 one (a Q4_K q|k beside a Q6_K
// v) into one projection.
W8Weights w8_from_w4(const W4Weights& w4, int threads = 0);

// y[m, n] = Σ_k W[n, k] x[m, k], x [m_rows, k] fp32, y [m_rows, n]: the fp32 W8 reference
// (weights dequantised in fp32, products accumulated in double, rounded once to fp32).
void matvec_w8_f32(const W8Weights& w, const float* x, int64_t m_rows, float* y);

// The W8A8 twin of the CUDA GEMV: a [m_rows, k/32] Q8 blocks, y [m_rows, n]. Per group
// t = scale dot - min sum_a (dot exact in int32), acc += d_a t in group order.
// `magnitude`, when not null, receives Σ_g |d_a| (|scale dot_0-15| + |scale dot_16-31| +
// |min sum_a|) per output: the scale of the kernel's rounding (it rounds each half's product
// on its own), against which accumulation-order differences are judged.
void matvec_w8a8(const W8Weights& w, const Q8Block* a, int64_t m_rows, float* y,
                 float* magnitude = nullptr);

// ---- conversion at load ------------------------------------------------------------------

enum class EngineWeightFormat { kW4, kW8, kBf16 };

struct Bf16Weights {
    int64_t n = 0;
    int64_t k = 0;
    std::vector<uint16_t> values;  // [n, k] bf16 bits
};

// Exactly one of the engine's formats.
using EngineWeights = std::variant<W4Weights, W8Weights, Bf16Weights>;

EngineWeightFormat engine_format_of(const EngineWeights& weights);

// Converts a GGUF tensor [n, k] of `type` (raw: n rows of k / block_elements blocks, exactly
// its byte size) into the engine's format. Policy (the closest format the source fits in):
//   Q4_K, Q4_0          -> W4 always (w4_from_q4_k: exact; w4_from_q4_0: the 8-bit rounding
//                          of each group's scale under its super-group's, ~3% of a step)
//   Q5_K, Q6_K, Q8_0    -> W8 (w8_from_*: more exact than W4, Q8_0 exactly), unless
//                          preferred is kW4: then dequantised and requantised by w4_from_f32
//   F32, F16, BF16      -> preferred: kW4 w4_from_f32, kW8 w8_from_f32, kBf16 rounded to
//                          nearest-even bf16 (BF16 copied bit for bit)
//   other types that src/io dequantises (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, IQ4_NL, IQ4_XS)
//                       -> dequantised to fp32, then as F32
// kInvalidArgument naming the shape when k is not a multiple of 32 (or of the type's block),
// or the byte size is wrong; kUnsupported for types src/io cannot dequantise. Rows are split
// across `threads` (0 = every hardware thread); fp32 staging is per chunk of rows, never the
// whole tensor.
Result<EngineWeights> convert_for_engine(DType type, std::span<const uint8_t> raw, int64_t n,
                                         int64_t k, EngineWeightFormat preferred, int threads = 0);

}  // namespace kestrel
