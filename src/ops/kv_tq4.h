// TurboQuant 4-bit KV vectors (TQ4; techniques.md §4, gemma4-and-gemma3.md §4): the format, its
// codebook and rotation, and the CPU reference encode / decode that the cache and the attention
// kernels are held to (issue 8).
//
// A K or V vector x of head_dim D is stored as
//   norm      bf16       ||x||_2
//   indices   [D / 2]    uint8, element 2b in the low nibble of byte b, 2b + 1 in the high one
//                        (our weights' order; ExecuTorch puts the even element high)
// where index i is the codebook level nearest to r_i, r = R x / ||x|| the unit vector turned by a
// fixed orthogonal rotation R [D, D]. A rotated unit vector's coordinates are close to
// N(0, 1 / D) whatever x was, so one codebook fits every vector: the 16-level Lloyd-Max
// quantiser of N(0, 1 / D), i.e. the one of N(0, 1) scaled by 1 / sqrt(D). Decode:
// x ~= norm * R^T c, c_i = codebook[index_i]. 4 bits per element plus 16 per vector: 258 bytes for
// D = 512 against 1024 in bf16 (3.97x).
// Attention never decodes: q is rotated once (R q), scores are norm_k * (R q) . c_k, values are
// accumulated as norm_v * c_v in the rotated space and the sum is turned back once (R^T).
//
// Key centring (a cache's k_center, ops.h KvLayerView): a layer's keys are stored as k - mu, mu
// one vector per kv head. Every score of a query then moves by the same q . mu, which softmax
// does not see, so attention is unchanged in exact arithmetic and needs no correction; only the
// quantisation error changes, and it is ~10% of the stored vector's norm. Real models' keys share
// a large component (Gemma 3 270M: half of E||k||^2 in a global layer), so their centred norms,
// and the error, are much smaller: its perplexity over TQ4 against the fp32 cache's went from
// +12.9% to -0.5% (the test fixture's chunks of 128), +8.0% to +1.0% (-c 256) and +6.4% to
// -0.1% (-c 512). Values are stored as they are: centring them too (adding mu back after the
// weighted sum, also exact) measured worse on Gemma 3 (+2.2% at -c 256, +2.5% at -c 512).
// mu is the mean of the keys of a write of at least kTq4CenterMinTokens tokens that starts at
// position 0 (a sequence's first prompt chunk), in fp32 summed in token order then divided by the
// token count; every other write keeps the centre as it is. Softcapped scores (softcap * tanh(s /
// softcap)) would not be shifted alike, so a centred cache is not for softcapped attention (no
// model we run softcaps its attention scores; the CUDA attention refuses the pair).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace kestrel {

constexpr int kTq4Levels = 16;

// The fewest tokens whose keys' mean becomes a layer's key centre (see "Key centring" above): a
// shorter first write (a one-token prompt) leaves the centre as it was (zero in a new cache, the
// previous sequence's in a reused one: any centre keeps attention exact).
constexpr int64_t kTq4CenterMinTokens = 16;

// The seed of the rotation's random stream: recorded here so that a cache written by one build
// decodes in another (the rotation is part of the format).
constexpr uint64_t kTq4RotationSeed = 0x4b455354'52454c31ull;  // "KESTREL1"

// The 16-level Lloyd-Max quantiser of the standard normal N(0, 1) (Max 1960): levels ascending,
// symmetric about 0, and the 15 decision boundaries (midpoints of neighbouring levels). Computed
// by our Lloyd iteration in double to a fixed point (changes below 1e-13).
struct Tq4Codebook {
    std::array<double, kTq4Levels> levels;
    std::array<double, kTq4Levels - 1> boundaries;
    double distortion;  // E[(X - Q(X))^2] for X ~ N(0, 1)
};
const Tq4Codebook& tq4_standard_normal_codebook();

// The levels for head_dim D as the kernels use them: fp32(level / sqrt(D)).
std::array<float, kTq4Levels> tq4_levels(int64_t head_dim);

// The rotation R [D, D] (row-major, fp32 of a double-precision Gram-Schmidt QR of a Gaussian
// matrix from kTq4RotationSeed, so Haar-distributed): the same bits for a given D on every
// machine (splitmix64, Box-Muller, IEEE double arithmetic in a fixed order).
std::vector<float> tq4_rotation(int64_t head_dim);

// One vector of head_dim D (even) encoded: fp32 arithmetic for the rotation (R rows dotted with
// x in order), the norm in double rounded to fp32 then bf16. A zero vector gets norm 0 and index
// 8 (the smallest positive level) everywhere; it decodes to zeros. Non-finite input gives a NaN
// norm, so it never decodes to plausible numbers.
struct Tq4Vector {
    uint16_t norm_bf16 = 0;
    std::vector<uint8_t> indices;  // [D / 2]
};
Tq4Vector tq4_encode(std::span<const float> x, std::span<const float> rotation);

// The same encoding written in place (a KV cache slot): *norm_bf16 and indices [D / 2]. One
// function for both, so a cache holds tq4_encode()'s bits.
void tq4_encode_into(std::span<const float> x, std::span<const float> rotation, uint16_t* norm_bf16,
                     uint8_t* indices);

// Bytes one stored vector takes: D / 2 of indices and the bf16 norm (258 for D = 512).
constexpr int64_t tq4_vector_bytes(int64_t head_dim) {
    return head_dim / 2 + 2;
}

// x ~= norm * R^T c, in fp32 (sums over i in order).
std::vector<float> tq4_decode(const Tq4Vector& v, std::span<const float> rotation);

// One query's attention over n keys and values stored as TQ4 (the CPU twin the attention kernels
// are held to), in the rotated space, never decoding a vector:
//   q' = R q;  s_j = scale * norm_kj * (q' . c_kj), then softcap * tanh(s_j / softcap) if
//   softcap > 0;  p = softmax(s);  out = R^T (sum_j p_j norm_vj c_vj)
// which is attention over the decoded keys and values up to rounding (R is orthogonal:
// (R q) . c = q . (R^T c)). Sums in double, rounded once to fp32.
std::vector<float> tq4_attend(std::span<const float> q, std::span<const Tq4Vector> keys,
                              std::span<const Tq4Vector> values, std::span<const float> rotation,
                              float scale, float softcap);

// Index of the level nearest to r (the boundaries' bucket: boundary b_i separates levels i, i + 1;
// a value exactly on a boundary goes to the lower level).
int tq4_index(float r, const std::array<float, kTq4Levels - 1>& boundaries);

// fp32(boundary / sqrt(D)).
std::array<float, kTq4Levels - 1> tq4_boundaries(int64_t head_dim);

}  // namespace kestrel
