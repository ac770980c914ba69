// The engine's W4 weight format and the Q8 activation blocks of the W4A8 decode GEMV, with
// their CPU reference twins. The twins define the CUDA kernels' exact semantics
// (src/ops/cuda/gemv_w4a8.cu); tests/unit/cuda_gemv_test.cpp holds the kernels to them.
//
// W4 (int4, group 32, asymmetric, two-level scales as in ggml's Q4_K), for a weight matrix
// W [N, K] (y = W x), K % 32 == 0, G = K/32 groups and S = ceil(G/8) super-groups per row:
//   qs            [N, K/2]   uint8   row n = G groups of 16 bytes. In group g, byte b holds
//                                    weight 32g+b in its low nibble and weight 32g+b+16 in its
//                                    high nibble (ggml's Q4_0 order). q in [0, 15].
//   group_scales  [N, G]     uint16  sc (low byte) | m << 8 (high byte): unsigned 8-bit
//                                    multipliers of group g's scale and min.
//   super_scales  [N, S, 2]  fp16    (d, dmin) of super-group s = groups 8s..8s+7 (the last
//                                    super-group of a row may hold fewer than 8).
//   scale = d * sc,  min = dmin * m,  w[n, 32g+i] = scale * q - min       (fp32; d, dmin of g / 8)
// d * sc and dmin * m are exact in fp32 (11 x 8 bits), and so is scale * q (19 x 4 bits): the only
// rounding is the final subtraction's, the same as ggml's Q4_K dequantisation, so a Q4_K tensor
// converts without error. 4.625 bits per weight (4 + 16 / 32 + 32 / 256); the earlier layout,
// an fp16 (scale, min) pair per group, took 5.0, and decode streams every weight byte once per
// token (Gemma 4 31B: 19.2 GB -> 17.8 GB per token).
//
// Why this layout (techniques.md §1): a decode warp owns an output row; lane l reads group
// g = l + 32j as one 16-byte load, so the warp's loads of a row are 512 contiguous bytes; the
// same lanes read their group_scales words as 2-byte loads (64 contiguous bytes) and the four
// super-groups those 32 groups fall in as one 16-byte stretch. The low nibbles of a 4-byte word
// are weights i..i+3 and the high nibbles weights i+16..i+19, which line up with the Q8 block's
// natural byte order: `p & 0x0F0F0F0F` dp4a's against activation bytes 0-15,
// `(p >> 4) & 0x0F0F0F0F` against bytes 16-31, without shuffles.
//
// Q8 block (activations, one per 32 consecutive elements of a row of x), 48 bytes, 16-aligned
// so the kernel loads it as three 16-byte vectors (ExecuTorch's padding, gemma4 spec §5.1):
//   d = amax / 127 (fp32), q = clamp(rint(x / d), -127, 127), sum = Σ q; x ≈ d * q.
//   A block holding a NaN or an infinity gets d = NaN, so the GEMV's output is NaN too.
//
// W4A8 dot per (output row n, group g, activation row m), all integer parts exact:
//   dot = Σ_i q_w[i] * q_a[i]  (int32)      contribution = d_a * (scale * dot - min * sum_a)
//   with scale = d * sc and min = dmin * m as above
// summed over the groups in fp32 (the kernel's order differs from the twin's: they agree to
// fp32 accumulation-order tolerance, not bit for bit).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kestrel/status.h"

namespace kestrel {

constexpr int64_t kW4Group = 32;
constexpr int64_t kW4GroupsPerSuper = 8;  // 256 weights share one (d, dmin), as in Q4_K

struct W4Weights {
    int64_t n = 0;                       // output features (rows)
    int64_t k = 0;                       // input features, a multiple of kW4Group
    std::vector<uint8_t> qs;             // [n, k/2]
    std::vector<uint16_t> group_scales;  // [n, groups()]: sc | m << 8
    std::vector<uint16_t> super_scales;  // [n, supers(), 2] fp16 bits: d, then dmin

    int64_t groups() const { return k / kW4Group; }
    int64_t supers() const { return (groups() + kW4GroupsPerSuper - 1) / kW4GroupsPerSuper; }
    int64_t qs_bytes() const { return n * (k / 2); }
    int64_t group_scales_bytes() const { return n * groups() * 2; }
    int64_t super_scales_bytes() const { return n * supers() * 4; }
};

// Exactly the bytes of one output row's quantised weights: q of weight i of group g.
inline int w4_q(const W4Weights& w, int64_t row, int64_t col) {
    const uint8_t byte = w.qs[static_cast<size_t>(row * (w.k / 2) + (col / 32) * 16 + (col % 16))];
    return (col % 32) < 16 ? (byte & 0x0F) : (byte >> 4);
}

// n x k weights of all-zero bytes (k % 32 == 0): the arrays sized, to be filled.
W4Weights w4_zeros(int64_t n, int64_t k);

// The (scale, min) of group g of a row: d * sc and dmin * m, each exact in fp32.
struct W4GroupScale {
    float scale;
    float min;
};
W4GroupScale w4_group_scale(const W4Weights& w, int64_t row, int64_t g);

// The fp32 weight matrix [n, k] that W4 stands for: scale * q - min.
std::vector<float> w4_dequantize(const W4Weights& w);

// From GGUF Q4_K (rows of k / 256 blocks of 144 bytes, row-major, as stored for a [n, k]
// tensor): a Q4_K block is one super-group: d, dmin copied, its eight 6-bit (sc, m) pairs
// widened to 8 bits, q copied. Exact: w4_dequantize equals ggml's Q4_K dequantisation bit for
// bit. kInvalidArgument for a block whose d or dmin is not finite.
Result<W4Weights> w4_from_q4_k(std::span<const uint8_t> src, int64_t n, int64_t k);

// From GGUF Q4_0 (rows of k / 32 blocks of 18 bytes; w = d (q - 8), d of either sign per group),
// keeping the codes: a group with d >= 0 becomes scale a = d, min 8 a, q; one with d < 0 becomes
// a = -d, min 7 a, q' = 15 - q (the same values). Per super-group D = fp16_at_least(max a / 255),
// Dmin = fp16_at_least(max min / 255), sc = rint(a / D), m = rint((min + 7.5 (D sc - a)) / Dmin)
// (the min absorbs half the scale's rounding, centring the error over q in [0, 15]). Not exact,
// unlike the earlier per-group fp16 layout: |Δw| <= 7.5 |D sc - a| + Dmin / 2 <= 3.75 D + Dmin / 2,
// about 3% of the super-group's largest step a (plus the fp32 rounding of the subtraction).
Result<W4Weights> w4_from_q4_0(std::span<const uint8_t> src, int64_t n, int64_t k);

// From fp32 [n, k]: per group, asymmetric min/max quantisation of [lo, hi] with lo clamped to
// <= 0 (so the min, -lo, is >= 0 as the unsigned m needs): ideal scale s = (hi - lo) / 15. Per
// super-group D = fp16_at_least(max s / 255), Dmin = fp16_at_least(max(-lo) / 255); sc =
// ceil(s / D) (so 15 D sc still spans the group), m = rint(-lo / Dmin); then q = clamp(rint((w +
// min) / scale), 0, 15) against the stored scale = D sc and min = Dmin m. |Δw| <= scale / 2 +
// Dmin / 2 (plus fp32 rounding), scale <= s + D. kInvalidArgument for non-finite weights or
// ones beyond fp16's range.
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
