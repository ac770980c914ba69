// Gated DeltaNet kernels of Qwen3.5's "linear_attention" layers (host API: gated_delta.h; CPU
// twins: ops/cpu/conv1d.cpp and ops/cpu/gated_delta.cpp's recurrent form). The chunked form for
// long calls is in gated_delta_chunked.cu; gated_delta_rule here checks the arguments and picks.
//
// conv1d_causal_kernel: one thread per (channel, block of kConvTokensPerThread tokens). A thread
//   keeps the kernel's window of inputs in registers and slides it over its tokens; the inputs
//   before its first token come from x or, for the first block only, from the carried state. That
//   first block also writes the new state, after it has read the old one, so no other block can
//   see a half-updated state. Taps are summed in j order from 0.0f with explicit _rn intrinsics
//   (no FMA contraction; the CPU is built with -ffp-contract=off): the sum is bit for bit the
//   CPU's, the SiLU differs only by expf's last bits.
//
// gated_delta_kernel (prefill, T > kMaxDecodeTokens): the recurrence S = exp(g) S;
//   S += k (beta (v - S^T k))^T; o = S^T q, per value head. Column j of S (S[:, j]) evolves on
//   its own: S^T k, the update and S^T q at column j read only that column and delta[j]. So a
//   block is one warp owning 32 columns of one head (grid n_v_heads x ceil(dv / 32); 128 blocks at
//   Qwen3.5's 32 heads x 128), lane j holding its column in registers (dk <= 128; up to
//   kMaxGdnKeyDim the columns sit in shared memory, 32 side by side). The state is read once,
//   carried through the T tokens and written back once. Per token the warp loads q and k of its
//   key head into shared memory, L2-normalises them with the CPU's dot() order (8 lanes of
//   strided sums, then the same pairwise reduction), and each lane runs the CPU's loops over i for
//   its column: every fp32 operation of the CPU, in its order, so only expf / log1pf in the gates
//   differ (by an ulp or two). It runs calls of 9 to kGdnChunkedMinRows - 1 tokens, and longer
//   ones where the chunked form cannot (no scratch, or dk > kGdnChunkedMaxKeyDim).
//
// gated_delta_decode_kernel (decode, T <= kMaxDecodeTokens = 8): the same blocks, each of
//   kDecodeWarps = 8 warps. At decode the call moves little (2 MiB of state at Qwen3.5's shapes,
//   read and written once) and the one-warp kernel's time is its latency chain, with one warp per
//   SM and nothing to hide it: the gates' loads issued only after q and k's round trip and the
//   norm's loop over shared memory, then 2 dk dependent fp32 adds per column and token (S^T k,
//   then S^T q), each behind the last. Here warp w holds rows [w dk/8, (w + 1) dk/8) of the block's
//   32 columns (16 rows at dk = 128), so the chains are dk/8 long and eight warps per SM overlap
//   them. Every global load (the state's rows, and warp t's token t: q, k, v, a, b) is issued at
//   once after the PDL wait; warp t normalises token t's q and k and computes its gates, for all
//   tokens in parallel, and one barrier publishes them. Per token each warp sums its rows' part of
//   S^T k, the parts meet in shared memory (a barrier) and every warp adds them in warp order to
//   the same delta, updates its rows and sums its part of S^T q, which one warp adds up after a
//   second barrier. The price is the order of those two sums: rows in order within each warp's
//   block of dk/8, then the 8 parts in order, where the CPU runs i = 0 .. dk - 1 in one chain. So o
//   and the state differ from the CPU's by fp32 rounding (each order is within about (dk/8 + 8) u
//   resp. dk u of the exact sum, relative to the sum of |terms|: the GPU's is the tighter), not bit
//   for bit; l2norm, the gates and every other operation are the CPU's, in its order. No operation
//   depends on T, so decoding token by token equals one call over the same tokens, bit for bit.
//   Longer calls take the one-warp kernel (with it the CPU's order) or the chunked form.
//
// The state stays fp32, as on the CPU: it accumulates the whole context (every token decays and
// rank-1 updates it), so bf16's 8-bit mantissa loses each update's low bits; 64 KiB per head is
// cheap at decode. Measured (tests/unit/gated_delta_state_precision_test.cpp, Qwen3.5's heads,
// 256 to 4096 tokens decoded one by one): relative output error against double 2.5e-7 with an
// fp32 state, 2e-3 to 5e-3 with the state rounded to bf16 after every token.
#include "ops/cuda/gated_delta.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gated_delta_internal.cuh"
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

constexpr unsigned kFullMask = kGdnFullMask;
constexpr float kL2Eps = kGdnL2Eps;

// ops/cpu/qwen35_elementwise.cpp's silu, with the same fp32 operations (sigmoid and softplus:
// gated_delta_internal.cuh). CUDA's expf (2 ulp) may differ from glibc's in the last bits.
__device__ __forceinline__ float silu(float x) {
    return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x)));
}

__device__ __forceinline__ float sigmoid(float x) {
    return gdn_sigmoid(x);
}

__device__ __forceinline__ float softplus(float x) {
    return gdn_softplus(x);
}

// ---- conv1d_causal -----------------------------------------------------------------------------

constexpr int kConvThreads = 128;
// Tokens per thread. At least kMaxConvKernel - 1, so that only the first token block reaches
// back into the carried state.
constexpr int kConvTokensPerThread = 16;
static_assert(kConvTokensPerThread >= kMaxConvKernel - 1);

// Taps and the window are right-aligned in kMaxKernel slots (slot first + j holds tap j, first =
// kMaxKernel - kernel), so every register index is a compile-time constant.
template <int kMaxKernel>
__global__ void __launch_bounds__(kConvThreads)
    conv1d_causal_kernel(const float* x, int64_t rows, const float* weight, float* conv_state,
                         int kernel, int64_t channels, bool silu_act, float* out) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * kConvThreads + threadIdx.x;
    const bool active = c < channels;
    const int first = kMaxKernel - kernel;
    // The weights are constant: read them before waiting for the previous kernel.
    float w[kMaxKernel];
#pragma unroll
    for (int s = 0; s < kMaxKernel; ++s) {
        w[s] = active && s >= first ? weight[c * kernel + (s - first)] : 0.0f;
    }
    // No allow_downstream(): the next kernel (the delta rule's 32 x 4 blocks at decode) launches
    // at this one's end. Launched at its start, Qwen3.5 decoded 503 tok/s at depth 512 against
    // 512.7 (H100, tg128, same machine, two runs each); see attention_decode_kernel for a like
    // case.
    wait_for_upstream();
    if (!active) return;

    const int64_t past = kernel - 1;
    const int64_t t_begin = static_cast<int64_t>(blockIdx.y) * kConvTokensPerThread;
    const int64_t t_end =
        rows < t_begin + kConvTokensPerThread ? rows : t_begin + kConvTokensPerThread;
    // Input tau of the window [state | x]: tau < 0 is state row past + tau.
    auto input = [&](int64_t tau) {
        return tau < 0 ? conv_state[(past + tau) * channels + c] : x[tau * channels + c];
    };
    // While token t is computed, slot s holds input t - (kMaxKernel - 1) + s.
    float window[kMaxKernel];
#pragma unroll
    for (int s = 0; s < kMaxKernel - 1; ++s) {
        window[s] = s >= first ? input(t_begin - (kMaxKernel - 1) + s) : 0.0f;
    }
    for (int64_t t = t_begin; t < t_end; ++t) {
        window[kMaxKernel - 1] = x[t * channels + c];
        float acc = 0.0f;
#pragma unroll
        for (int s = 0; s < kMaxKernel; ++s) {
            if (s >= first) acc = __fadd_rn(acc, __fmul_rn(w[s], window[s]));
        }
        out[t * channels + c] = silu_act ? silu(acc) : acc;
#pragma unroll
        for (int s = 0; s < kMaxKernel - 1; ++s) window[s] = window[s + 1];
    }

    // The new state, the last kernel - 1 inputs: by the first token block, which alone read the
    // old one (and has read it already). With one block, its window now holds exactly those
    // inputs (slots first .. kMaxKernel - 2 = inputs rows - past .. rows - 1, some of them old
    // state rows when rows < past); with more, rows > kConvTokensPerThread >= past, so they are
    // all rows of x.
    if (blockIdx.y != 0) return;
    if (gridDim.y == 1) {
#pragma unroll
        for (int s = 0; s < kMaxKernel - 1; ++s) {
            if (s >= first) conv_state[(s - first) * channels + c] = window[s];
        }
    } else {
        for (int64_t r = 0; r < past; ++r) {
            conv_state[r * channels + c] = x[(rows - past + r) * channels + c];
        }
    }
}

template <int kMaxKernel>
Status launch_conv(const float* x, int64_t rows, const float* weight, float* conv_state,
                   int64_t kernel, int64_t channels, bool silu_act, float* out,
                   cudaStream_t stream) {
    const dim3 grid(
        static_cast<unsigned>((channels + kConvThreads - 1) / kConvThreads),
        static_cast<unsigned>((rows + kConvTokensPerThread - 1) / kConvTokensPerThread));
    KESTREL_CUDA_CHECK(launch_overlapped(conv1d_causal_kernel<kMaxKernel>, grid, dim3(kConvThreads),
                                         0, stream, x, rows, weight, conv_state,
                                         static_cast<int>(kernel), channels, silu_act, out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

// ---- gated_delta_rule --------------------------------------------------------------------------

// Value columns per block: one warp, so the token's shared q and k need only __syncwarp.
constexpr int kGdnColumns = 32;

// A lane's column S[:, j] in registers: only ever indexed with unrolled-loop constants.
template <int kMaxDk>
struct RegisterColumn {
    float v[kMaxDk];
    __device__ __forceinline__ float& operator[](int i) { return v[i]; }
};

// A lane's column in shared memory, the warp's 32 columns side by side (row i of the block's
// columns is 32 consecutive floats: conflict-free).
struct SharedColumn {
    float* base;
    __device__ __forceinline__ float& operator[](int i) { return base[i * kGdnColumns]; }
};

// The recurrence for this block's (head, 32 columns), over all tokens. q_s, k_s: kMaxDk floats
// of shared memory each.
template <int kMaxDk, class Column>
__device__ __forceinline__ void gated_delta_columns(const GdnArgs& p, Column& s, float* q_s,
                                                    float* k_s) {
    const int lane = static_cast<int>(threadIdx.x);
    const int h = static_cast<int>(blockIdx.x);
    const int j = static_cast<int>(blockIdx.y) * kGdnColumns + lane;
    const bool active = j < p.dv;
    const int dk = p.dk;
    const int key_head = p.grouped ? h / (p.n_v_heads / p.n_k_heads) : h % p.n_k_heads;
    const int64_t key_dim = static_cast<int64_t>(p.n_k_heads) * dk;
    const int64_t row_stride = 2 * key_dim + static_cast<int64_t>(p.n_v_heads) * p.dv;
    const float* q_in = p.qkv + static_cast<int64_t>(key_head) * dk;
    const float* k_in = q_in + key_dim;
    const float* v_in = p.qkv + 2 * key_dim + static_cast<int64_t>(h) * p.dv + j;
    // Constant weights: read before waiting for the previous kernel.
    const float a_neg = p.a_neg[h];
    const float dt_bias = p.dt_bias[h];
    allow_downstream();
    wait_for_upstream();

    // S[h][i][j] at column[i * dv].
    float* column = p.state + static_cast<int64_t>(h) * dk * p.dv + j;
#pragma unroll
    for (int i = 0; i < kMaxDk; ++i) {
        if (i >= dk) break;
        s[i] = active ? column[static_cast<int64_t>(i) * p.dv] : 0.0f;
    }

    for (int64_t t = 0; t < p.rows; ++t) {
        const int64_t offset = t * row_stride;
        __syncwarp();  // every lane is done with the previous token's q_s, k_s
        for (int i = lane; i < dk; i += kGdnColumns) {
            q_s[i] = q_in[offset + i];
            k_s[i] = k_in[offset + i];
        }
        __syncwarp();
        // l2norm's sums of squares in ops/cpu dot()'s order: lane l of 8 sums the products of
        // elements i = l (mod 8) in order, then ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))
        // (the xor shuffles 4, 1, 2; fp32 addition commutes). Lanes 0-7 sum q, lanes 8-15 k.
        const float* squared = lane < 8 ? q_s : k_s;
        float sum = 0.0f;
        if (lane < 16) {
            for (int i = lane & 7; i < dk; i += 8) {
                sum = __fadd_rn(sum, __fmul_rn(squared[i], squared[i]));
            }
        }
        sum = __fadd_rn(sum, __shfl_xor_sync(kFullMask, sum, 4));
        sum = __fadd_rn(sum, __shfl_xor_sync(kFullMask, sum, 1));
        sum = __fadd_rn(sum, __shfl_xor_sync(kFullMask, sum, 2));
        // HF l2norm: x * rsqrt(sum(x^2) + eps), as the CPU computes it: 1 / sqrt(...), then q's
        // dk^-0.5 as a second product.
        const float q_inv =
            __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__shfl_sync(kFullMask, sum, 0), kL2Eps)));
        const float k_inv =
            __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__shfl_sync(kFullMask, sum, 8), kL2Eps)));
        __syncwarp();  // the sums have read q_s, k_s
        for (int i = lane; i < dk; i += kGdnColumns) {
            q_s[i] = __fmul_rn(__fmul_rn(q_s[i], q_inv), p.q_scale);
            k_s[i] = __fmul_rn(k_s[i], k_inv);
        }
        __syncwarp();
        // HF: beta = b.sigmoid(); g = -A_log.exp() * softplus(a + dt_bias); every lane computes
        // the same values.
        const int64_t gate = t * p.n_v_heads + h;
        const float beta = sigmoid(p.b[gate]);
        const float decay = expf(__fmul_rn(a_neg, softplus(__fadd_rn(p.a[gate], dt_bias))));
        if (!active) continue;

        // S = exp(g) S and S^T k, in one pass over the column (the CPU decays all of S first;
        // each element sees the same operations).
        float sk = 0.0f;
#pragma unroll
        for (int i = 0; i < kMaxDk; ++i) {
            if (i >= dk) break;
            s[i] = __fmul_rn(s[i], decay);
            sk = __fadd_rn(sk, __fmul_rn(s[i], k_s[i]));
        }
        const float delta = __fmul_rn(__fsub_rn(v_in[offset], sk), beta);
        // S += k delta^T, then o = S^T q.
        float o = 0.0f;
#pragma unroll
        for (int i = 0; i < kMaxDk; ++i) {
            if (i >= dk) break;
            s[i] = __fadd_rn(s[i], __fmul_rn(k_s[i], delta));
            o = __fadd_rn(o, __fmul_rn(s[i], q_s[i]));
        }
        p.out[(t * p.n_v_heads + h) * p.dv + j] = o;
    }

    if (!active) return;
#pragma unroll
    for (int i = 0; i < kMaxDk; ++i) {
        if (i >= dk) break;
        column[static_cast<int64_t>(i) * p.dv] = s[i];
    }
}

// dk <= kMaxDk <= 128: the columns in registers (128 floats per lane at Qwen3.5's dk).
template <int kMaxDk>
__global__ void __launch_bounds__(kGdnColumns) gated_delta_kernel_registers(GdnArgs p) {
    __shared__ float q_s[kMaxDk];
    __shared__ float k_s[kMaxDk];
    RegisterColumn<kMaxDk> s;
    gated_delta_columns<kMaxDk>(p, s, q_s, k_s);
}

// dk <= kMaxGdnKeyDim: the columns in shared memory (kMaxGdnKeyDim x 32 floats, 32 KiB).
__global__ void __launch_bounds__(kGdnColumns) gated_delta_kernel_shared(GdnArgs p) {
    constexpr int kMaxDk = static_cast<int>(kMaxGdnKeyDim);
    __shared__ float q_s[kMaxDk];
    __shared__ float k_s[kMaxDk];
    __shared__ float columns[kMaxDk * kGdnColumns];
    SharedColumn s{columns + threadIdx.x};
    gated_delta_columns<kMaxDk>(p, s, q_s, k_s);
}

// ---- gated_delta_rule at decode (T <= kMaxDecodeTokens) ----------------------------------------

// A block owns 32 columns of one value head, as above, but its kDecodeWarps warps split the dk
// rows: lane l of warp w holds S[i][col0 + l] for its kMaxDk / kDecodeWarps rows i.
constexpr int kDecodeWarps = 8;
constexpr int kDecodeThreads = kDecodeWarps * kGdnColumns;
// Warp t prepares token t (l2norm, gates, v), all of them at once, and stores its output.
constexpr int kMaxDecodeTokens = kDecodeWarps;
static_assert(kMaxGdnKeyDim <= 256, "gated_delta_decode_kernel<256> covers every dk");

template <int kMaxDk>
__global__ void __launch_bounds__(kDecodeThreads) gated_delta_decode_kernel(GdnArgs p) {
    constexpr int kRows = kMaxDk / kDecodeWarps;  // rows of S per thread
    static_assert(kRows % 4 == 0, "the rows' q and k are read as float4");
    // The tokens' normalised q and k (zero beyond dk), their gates and the block's v.
    __shared__ __align__(16) float q_s[kMaxDecodeTokens][kMaxDk];
    __shared__ __align__(16) float k_s[kMaxDecodeTokens][kMaxDk];
    __shared__ float v_s[kMaxDecodeTokens][kGdnColumns];
    __shared__ float beta_s[kMaxDecodeTokens];
    __shared__ float decay_s[kMaxDecodeTokens];
    // The warps' partial sums of S^T k and S^T q, per column.
    __shared__ float sk_part[kDecodeWarps][kGdnColumns];
    __shared__ float o_part[kDecodeWarps][kGdnColumns];

    const int lane = static_cast<int>(threadIdx.x) % kGdnColumns;
    const int warp = static_cast<int>(threadIdx.x) / kGdnColumns;
    const int h = static_cast<int>(blockIdx.x);
    const int j = static_cast<int>(blockIdx.y) * kGdnColumns + lane;
    const bool active = j < p.dv;
    const int dk = p.dk;
    const int rows = static_cast<int>(p.rows);  // <= kMaxDecodeTokens
    const int row0 = warp * kRows;
    const int key_head = p.grouped ? h / (p.n_v_heads / p.n_k_heads) : h % p.n_k_heads;
    const int64_t key_dim = static_cast<int64_t>(p.n_k_heads) * dk;
    const int64_t row_stride = 2 * key_dim + static_cast<int64_t>(p.n_v_heads) * p.dv;
    // Constant weights: read before waiting for the previous kernel.
    const float a_neg = p.a_neg[h];
    const float dt_bias = p.dt_bias[h];
    allow_downstream();
    wait_for_upstream();

    // Every global load is issued here, before anything waits on one: the state's rows, then
    // warp t's token t.
    float* column = p.state + static_cast<int64_t>(h) * dk * p.dv + j;
    float s[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        const int i = row0 + r;
        s[r] = active && i < dk ? column[static_cast<int64_t>(i) * p.dv] : 0.0f;
    }
    if (warp < rows) {
        const int t = warp;
        const int64_t offset = t * row_stride;
        // Lanes 0-7 hold q's elements i = lane (mod 8), lanes 8-15 k's: the CPU dot()'s lanes.
        constexpr int kPerLane = kMaxDk / 8;
        const float* src = p.qkv + offset + static_cast<int64_t>(key_head) * dk +
                           (lane < 8 ? 0 : key_dim) + (lane & 7);
        float x[kPerLane];
#pragma unroll
        for (int m = 0; m < kPerLane; ++m) {
            x[m] = lane < 16 && (lane & 7) + 8 * m < dk ? src[8 * m] : 0.0f;
        }
        const float v =
            active ? p.qkv[offset + 2 * key_dim + static_cast<int64_t>(h) * p.dv + j] : 0.0f;
        const int64_t gate = static_cast<int64_t>(t) * p.n_v_heads + h;
        const float a_in = p.a[gate];
        const float b_in = p.b[gate];
        v_s[t][lane] = v;
        if (lane == 16) {
            // HF: beta = b.sigmoid(); g = -A_log.exp() * softplus(a + dt_bias).
            beta_s[t] = sigmoid(b_in);
            decay_s[t] = expf(__fmul_rn(a_neg, softplus(__fadd_rn(a_in, dt_bias))));
        }
        // l2norm's sums of squares in dot()'s order (see gated_delta_columns); after the xor
        // shuffles every lane of the 8 holds the same sum. Lanes 16-31 add zeros.
        float sum = 0.0f;
#pragma unroll
        for (int m = 0; m < kPerLane; ++m) {
            if ((lane & 7) + 8 * m < dk) sum = __fadd_rn(sum, __fmul_rn(x[m], x[m]));
        }
        sum = __fadd_rn(sum, __shfl_xor_sync(kFullMask, sum, 4));
        sum = __fadd_rn(sum, __shfl_xor_sync(kFullMask, sum, 1));
        sum = __fadd_rn(sum, __shfl_xor_sync(kFullMask, sum, 2));
        const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(sum, kL2Eps)));
        // Past dk, zeros: the rows there hold zeros too, and add exact zeros to the sums.
        if (lane < 8) {
#pragma unroll
            for (int m = 0; m < kPerLane; ++m) {
                q_s[t][lane + 8 * m] = __fmul_rn(__fmul_rn(x[m], inv), p.q_scale);
            }
        } else if (lane < 16) {
#pragma unroll
            for (int m = 0; m < kPerLane; ++m) k_s[t][(lane & 7) + 8 * m] = __fmul_rn(x[m], inv);
        }
    }
    __syncthreads();

#pragma unroll 1
    for (int t = 0; t < rows; ++t) {
        float q[kRows], k[kRows];
#pragma unroll
        for (int r = 0; r < kRows; r += 4) {
            const float4 q4 = *reinterpret_cast<const float4*>(&q_s[t][row0 + r]);
            const float4 k4 = *reinterpret_cast<const float4*>(&k_s[t][row0 + r]);
            q[r] = q4.x, q[r + 1] = q4.y, q[r + 2] = q4.z, q[r + 3] = q4.w;
            k[r] = k4.x, k[r + 1] = k4.y, k[r + 2] = k4.z, k[r + 3] = k4.w;
        }
        const float decay = decay_s[t];
        // S = exp(g) S and this warp's part of S^T k, rows in order.
        float sk = 0.0f;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            s[r] = __fmul_rn(s[r], decay);
            sk = __fadd_rn(sk, __fmul_rn(s[r], k[r]));
        }
        sk_part[warp][lane] = sk;
        __syncthreads();
        // Every warp sums the parts in warp order, to the same delta.
        sk = sk_part[0][lane];
#pragma unroll
        for (int w = 1; w < kDecodeWarps; ++w) sk = __fadd_rn(sk, sk_part[w][lane]);
        const float delta = __fmul_rn(__fsub_rn(v_s[t][lane], sk), beta_s[t]);
        // S += k delta^T, and this warp's part of o = S^T q.
        float o = 0.0f;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            s[r] = __fadd_rn(s[r], __fmul_rn(k[r], delta));
            o = __fadd_rn(o, __fmul_rn(s[r], q[r]));
        }
        o_part[warp][lane] = o;
        // The parts are read after this barrier and rewritten only after the next token's first
        // one; sk_part likewise, the other way round.
        __syncthreads();
        if (warp == t && active) {  // warp t, which prepared token t
            o = o_part[0][lane];
#pragma unroll
            for (int w = 1; w < kDecodeWarps; ++w) o = __fadd_rn(o, o_part[w][lane]);
            p.out[(static_cast<int64_t>(t) * p.n_v_heads + h) * p.dv + j] = o;
        }
    }

    if (!active) return;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        const int i = row0 + r;
        if (i < dk) column[static_cast<int64_t>(i) * p.dv] = s[r];
    }
}

Status invalid(const char* op, const std::string& message) {
    return Status(StatusCode::kInvalidArgument, std::string(op) + ": " + message);
}

bool overlaps(const float* a, int64_t a_count, const float* b, int64_t b_count) {
    return a < b + b_count && b < a + a_count;
}

}  // namespace

Status conv1d_causal(const float* x, int64_t rows, const float* weight, float* conv_state,
                     int64_t kernel, int64_t channels, bool silu, float* out, cudaStream_t stream) {
    constexpr const char* kOp = "conv1d_causal";
    if (rows < 0) return invalid(kOp, "negative row count " + std::to_string(rows));
    if (kernel < 1 || kernel > kMaxConvKernel) {
        return invalid(kOp, "kernel " + std::to_string(kernel) + " outside [1, " +
                                std::to_string(kMaxConvKernel) + "]");
    }
    constexpr int64_t kMaxChannels = int64_t{1} << 30;
    if (channels < 1 || channels > kMaxChannels) {
        return invalid(kOp, "channels " + std::to_string(channels) + " outside [1, 2^30]");
    }
    // grid.y counts token blocks (at most 65535).
    constexpr int64_t kMaxRows = int64_t{65535} * kConvTokensPerThread;
    if (rows > kMaxRows) {
        return invalid(kOp, "rows " + std::to_string(rows) + " above " + std::to_string(kMaxRows));
    }
    if (rows == 0) return ok_status();  // no tokens: the state stays as it is
    if (x == nullptr || weight == nullptr || out == nullptr) return invalid(kOp, "null pointer");
    if (kernel > 1 && conv_state == nullptr) return invalid(kOp, "null conv_state");
    if (overlaps(x, rows * channels, out, rows * channels)) {
        return invalid(kOp, "out overlaps x (later token blocks read earlier tokens' inputs)");
    }
    if (kernel <= 4) {
        return launch_conv<4>(x, rows, weight, conv_state, kernel, channels, silu, out, stream);
    }
    return launch_conv<kMaxConvKernel>(x, rows, weight, conv_state, kernel, channels, silu, out,
                                       stream);
}

namespace {

// gated_delta_rule's argument checks (both entry points); fills `args` for a call with tokens.
Status check_gated_delta(const char* op, const float* qkv, const float* a, const float* b,
                         const float* a_neg, const float* dt_bias, int64_t rows,
                         const GatedDeltaParams& params, float* state, float* out, GdnArgs& args) {
    const int64_t nk = params.n_k_heads, nv = params.n_v_heads;
    const int64_t dk = params.k_head_dim, dv = params.v_head_dim;
    if (rows < 0) return invalid(op, "negative row count " + std::to_string(rows));
    // grid.x counts value heads, grid.y blocks of 32 value columns (at most 65535 each).
    constexpr int64_t kMaxHeads = 65535;
    constexpr int64_t kMaxValueDim = int64_t{65535} * kGdnColumns;
    if (nk < 1 || nv < 1 || nv > kMaxHeads || nv % nk != 0) {
        return invalid(op, "head counts n_k " + std::to_string(nk) + ", n_v " + std::to_string(nv) +
                               ": need 1 <= n_k, n_v <= 65535 and n_v a multiple of n_k");
    }
    if (dk < 1 || dk > kMaxGdnKeyDim) {
        return invalid(op, "k_head_dim " + std::to_string(dk) + " outside [1, " +
                               std::to_string(kMaxGdnKeyDim) + "]");
    }
    if (dv < 1 || dv > kMaxValueDim) {
        return invalid(op, "v_head_dim " + std::to_string(dv) + " outside [1, " +
                               std::to_string(kMaxValueDim) + "]");
    }
    if (params.order != GdnHeadOrder::kGrouped && params.order != GdnHeadOrder::kTiled) {
        return invalid(op, "unknown head order");
    }
    // The chunked form's grid.x counts chunks (an int).
    constexpr int64_t kMaxRows = int64_t{0x7fffffff} / kGdnChunk * kGdnChunk;
    if (rows > kMaxRows) {
        return invalid(op, "rows " + std::to_string(rows) + " above " + std::to_string(kMaxRows));
    }
    if (rows == 0) return ok_status();
    if (qkv == nullptr || a == nullptr || b == nullptr || a_neg == nullptr || dt_bias == nullptr ||
        state == nullptr || out == nullptr) {
        return invalid(op, "null pointer");
    }
    const int64_t out_count = rows * nv * dv;
    if (overlaps(out, out_count, state, nv * dk * dv) ||
        overlaps(out, out_count, qkv, rows * (2 * nk * dk + nv * dv))) {
        return invalid(op, "out overlaps the state or qkv");
    }

    args = GdnArgs{};
    args.qkv = qkv;
    args.a = a;
    args.b = b;
    args.a_neg = a_neg;
    args.dt_bias = dt_bias;
    args.state = state;
    args.out = out;
    args.rows = rows;
    args.n_k_heads = static_cast<int>(nk);
    args.n_v_heads = static_cast<int>(nv);
    args.dk = static_cast<int>(dk);
    args.dv = static_cast<int>(dv);
    args.grouped = params.order == GdnHeadOrder::kGrouped;
    args.q_scale = 1.0f / std::sqrt(static_cast<float>(dk));  // ops/cpu/gated_delta.cpp's scale
    return ok_status();
}

// The chunked form's own checks: dk and the scratch.
Status check_chunked_scratch(const char* op, int64_t rows, const GatedDeltaParams& params,
                             const void* scratch, size_t scratch_bytes) {
    if (params.k_head_dim > kGdnChunkedMaxKeyDim) {
        return invalid(op, "k_head_dim " + std::to_string(params.k_head_dim) +
                               " above the chunked form's " + std::to_string(kGdnChunkedMaxKeyDim));
    }
    const size_t needed = gated_delta_chunked_scratch_bytes(rows, params.n_v_heads);
    if (scratch == nullptr || scratch_bytes < needed) {
        return invalid(op, "scratch of " + std::to_string(scratch_bytes) + " bytes at " +
                               (scratch == nullptr ? "null" : "non-null") + ", need " +
                               std::to_string(needed) + " (gated_delta_chunked_scratch_bytes)");
    }
    if (reinterpret_cast<uintptr_t>(scratch) % 16 != 0) {
        return invalid(op, "scratch not 16-byte aligned (the scan reads it as float4)");
    }
    return ok_status();
}

Status launch_chunked(const GdnArgs& args, void* scratch, cudaStream_t stream) {
    KESTREL_CUDA_CHECK(launch_gated_delta_chunked(args, scratch, stream));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg,
                        const float* dt_bias, int64_t rows, const GatedDeltaParams& params,
                        float* state, float* out, cudaStream_t stream, void* scratch,
                        size_t scratch_bytes) {
    constexpr const char* kOp = "gated_delta_rule";
    GdnArgs args{};
    KESTREL_RETURN_IF_ERROR(
        check_gated_delta(kOp, qkv, a, b, a_neg, dt_bias, rows, params, state, out, args));
    if (rows == 0) return ok_status();  // no tokens: the state stays as it is
    const int64_t dk = params.k_head_dim, dv = params.v_head_dim;

    // Long calls: the chunked form, where the caller gave it scratch (gated_delta_scratch_bytes).
    if (scratch != nullptr && gated_delta_scratch_bytes(rows, params) > 0) {
        KESTREL_RETURN_IF_ERROR(check_chunked_scratch(kOp, rows, params, scratch, scratch_bytes));
        return launch_chunked(args, scratch, stream);
    }

    const dim3 grid(static_cast<unsigned>(params.n_v_heads),
                    static_cast<unsigned>((dv + kGdnColumns - 1) / kGdnColumns));
    cudaError_t launched;
    if (rows <= kMaxDecodeTokens) {
        const dim3 block(kDecodeThreads);
        if (dk <= 32) {
            launched =
                launch_overlapped(gated_delta_decode_kernel<32>, grid, block, 0, stream, args);
        } else if (dk <= 64) {
            launched =
                launch_overlapped(gated_delta_decode_kernel<64>, grid, block, 0, stream, args);
        } else if (dk <= 128) {
            launched =
                launch_overlapped(gated_delta_decode_kernel<128>, grid, block, 0, stream, args);
        } else {
            launched =
                launch_overlapped(gated_delta_decode_kernel<256>, grid, block, 0, stream, args);
        }
    } else {
        const dim3 block(kGdnColumns);
        if (dk <= 32) {
            launched =
                launch_overlapped(gated_delta_kernel_registers<32>, grid, block, 0, stream, args);
        } else if (dk <= 64) {
            launched =
                launch_overlapped(gated_delta_kernel_registers<64>, grid, block, 0, stream, args);
        } else if (dk <= 128) {
            launched =
                launch_overlapped(gated_delta_kernel_registers<128>, grid, block, 0, stream, args);
        } else {
            launched = launch_overlapped(gated_delta_kernel_shared, grid, block, 0, stream, args);
        }
    }
    KESTREL_CUDA_CHECK(launched);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status gated_delta_rule_chunked(const float* qkv, const float* a, const float* b,
                                const float* a_neg, const float* dt_bias, int64_t rows,
                                const GatedDeltaParams& params, float* state, float* out,
                                void* scratch, size_t scratch_bytes, cudaStream_t stream) {
    constexpr const char* kOp = "gated_delta_rule_chunked";
    GdnArgs args{};
    KESTREL_RETURN_IF_ERROR(
        check_gated_delta(kOp, qkv, a, b, a_neg, dt_bias, rows, params, state, out, args));
    if (rows == 0) return ok_status();  // no tokens: the state stays as it is
    KESTREL_RETURN_IF_ERROR(check_chunked_scratch(kOp, rows, params, scratch, scratch_bytes));
    return launch_chunked(args, scratch, stream);
}

}  // namespace kestrel::cuda
