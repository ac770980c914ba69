// The chunked (WY) form of the gated delta rule on CUDA: gated_delta_rule's path for long calls
// (prefill). Host API: gated_delta.h; CPU twin: ops/cpu/gated_delta.cpp's chunked_head, whose
// comment states the algorithm. Per chunk of L = 64 tokens of one value head, with the chunk-start
// state S [dk, dv] and G_r = g_1 + ... + g_r inside the chunk (r = 0 .. L - 1):
//
//   A[r, s]  = beta_r (k_r . k_s) exp(G_r - G_s)            s < r, else 0
//   T        = (I + A)^-1                                   (unit lower triangular)
//   QK[r, s] = (q_r . k_s) exp(G_r - G_s)                   s <= r, else 0
//   V'       = T R,   R_r = beta_r (v_r - exp(G_r) S^T k_r)
//   o_r      = exp(G_r) S^T q_r + sum_{s <= r} QK[r, s] V'_s
//   S        = exp(G_L) S + sum_r exp(G_L - G_r) k_r V'_r^T
//
// V' = T R is the CPU's V' = U - W S regrouped: U = T diag(beta) V and W = T diag(beta exp(G)) K,
// so U - W S = T (diag(beta) V - diag(beta exp(G)) K S). Keeping T (64 x 64) instead of W and U
// (64 x (dk + dv)) needs only 2 x 64 floats of scratch per token and value head, and T R (a 64 x 64
// triangle times R) costs less than W S (64 x dk times S).
//
// Two kernels, both 256 threads (8 warps):
//
// gdn_chunk_prepare_kernel, grid (n_chunks, n_v_heads): everything that does not depend on the
//   state, for all chunks at once. Loads the chunk's q and k of its key head into shared memory
//   (rows padded to ldk = round_up(dk, 32) + 4 floats: a lane's float4 of its own row is then
//   conflict-free), L2-normalises them (a warp per row, xor-shuffle sums), computes beta, g and
//   the cumulative G (one thread, in order), then A and QK (thread (s, r0) owns column s and rows
//   r0 + 4m, 16 x 2 dot products over dk), and T by forward substitution (thread c owns column c:
//   T[r, c] = delta_rc - sum_{c <= s < r} A[r, s] T[s, c], which reads only its own column).
//   Writes T, QK and per token G, beta and the norms' inverses to scratch.
//   Shared memory: 2 x 64 x ldk + 2 x 64 x 65 + 4 x 64 floats (100 KiB at dk = 128).
//
// gdn_chunk_scan_kernel<kMaxDk>, grid (n_v_heads, ceil(dv / 32)): the serial part. A block owns
//   32 columns of one head's state, S^T in shared memory (row j = column j of S, stride kMaxDk + 4
//   so a lane's float4 is conflict-free), read from `state` once and written back once; it walks
//   the chunks in order. Per chunk it loads the normalised q and k (kMaxDk floats per row, zero
//   past dk and past the chunk's last token), v's 32 columns, T, QK and the gates, then
//     1. X = K S and Y = Q S (thread (warp w, lane j): rows w + 8m of column j), so R and
//        exp(G) Y (the output's inter-chunk part) in registers;
//     2. V' = T R;   3. o += QK V', written to out;   4. S = exp(G_L) S + K^T (exp(G_L - G) V')
//        (thread (w, j) updates rows [w kMaxDk / 8, (w + 1) kMaxDk / 8) of column j).
//   Shared memory: 32 (kMaxDk + 4) + 2 x 64 kMaxDk + 2 x 64 x 64 + 2 x 64 x 32 + 5 x 64 floats
//   (130 KiB at kMaxDk = 128: one block per SM). kMaxDk = 32, 64, 128 (kGdnChunkedMaxKeyDim; a
//   256 variant would need 210 KiB, more than sm_80 gives a block).
//
// Rounding: fp32 throughout (CUDA cores; FMA contraction allowed), so the results differ from
// the CPU's chunked form by fp32 rounding in another order (the dot products' order, T applied as
// a matrix where the CPU substitutes into U and W), not bit for bit; l2norm, beta and g are
// computed as in gated_delta.cu. A call of n tokens is ceil(n / 64) chunks from its first token,
// so splitting a prompt over calls moves the chunk boundaries: the same function, other rounding.
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/gated_delta.h"
#include "ops/cuda/gated_delta_internal.cuh"
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

constexpr int kChunk = static_cast<int>(kGdnChunk);
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileColumns = 32;  // state columns per scan block (one per lane)
constexpr int kMatrixFloats = kChunk * kChunk;
// Per token and value head: G, beta, 1 / |q|, 1 / |k| (the norms' inverses, before q's dk^-0.5).
constexpr int kTokenFields = 4;
static_assert(kChunk % kWarps == 0 && kChunk % 4 == 0);

// Scratch: [n_v_heads][n_chunks] blocks of T then QK (64 x 64 each, row-major), then
// [n_v_heads][n_chunks * 64] tokens of kTokenFields floats.
__host__ __device__ constexpr int64_t matrix_floats(int64_t n_v_heads, int64_t n_chunks) {
    return n_v_heads * n_chunks * 2 * kMatrixFloats;
}

__host__ __device__ constexpr int64_t chunk_count(int64_t rows) {
    return (rows + kChunk - 1) / kChunk;
}

// The prepare kernel's q and k row stride: >= dk, a multiple of 4 (float4 rows) and 4 more than a
// multiple of 32, so the 8 lanes of a quarter warp reading float4s of 8 consecutive rows hit 8
// different 16-byte bank groups.
__host__ __device__ constexpr int prepare_row_stride(int dk) {
    return (dk + 31) / 32 * 32 + 4;
}

constexpr int kPaddedChunk = kChunk + 1;  // A and T in the prepare kernel: column reads by lane

size_t prepare_shared_bytes(int dk) {
    const int ldk = prepare_row_stride(dk);
    return sizeof(float) *
           static_cast<size_t>(2 * kChunk * ldk + 2 * kChunk * kPaddedChunk + 4 * kChunk);
}

template <int kMaxDk>
constexpr size_t scan_shared_bytes() {
    return sizeof(float) *
           static_cast<size_t>(kTileColumns * (kMaxDk + 4) + 2 * kChunk * kMaxDk +
                               2 * kMatrixFloats + 2 * kChunk * kTileColumns + 5 * kChunk);
}
// sm_80 lets a block opt in to 163 KiB of shared memory, sm_90 to 227 KiB.
static_assert(scan_shared_bytes<kGdnChunkedMaxKeyDim>() <= 163 * 1024, "the scan fits an A100 SM");
static_assert(kGdnChunkedMaxKeyDim == 128, "launch_gated_delta_chunked's variants cover dk <= 128");

__device__ __forceinline__ float4 load4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

// ---- kernel A: per (chunk, value head), the state-free part -------------------------------------

__global__ void __launch_bounds__(kThreads) gdn_chunk_prepare_kernel(GdnArgs p, float* scratch) {
    extern __shared__ __align__(16) float shared[];
    const int dk = p.dk;
    const int ldk = prepare_row_stride(dk);
    float* q_s = shared;                       // [64][ldk] q, then normalised and scaled
    float* k_s = q_s + kChunk * ldk;           // [64][ldk] k, then normalised
    float* a_s = k_s + kChunk * ldk;           // [64][65] A
    float* t_s = a_s + kChunk * kPaddedChunk;  // [64][65] T
    float* g_s = t_s + kChunk * kPaddedChunk;  // [64] g, then the cumulative G
    float* beta_s = g_s + kChunk;              // [64]
    float* inv_s = beta_s + kChunk;            // [128] 1 / |q_r| (r < 64), then 1 / |k_r|

    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int chunk = static_cast<int>(blockIdx.x);
    const int h = static_cast<int>(blockIdx.y);
    const int64_t n_chunks = gridDim.x;
    const int64_t t0 = static_cast<int64_t>(chunk) * kChunk;
    const int len = static_cast<int>(p.rows - t0 < kChunk ? p.rows - t0 : kChunk);
    const int key_head = gdn_key_head(p, h);
    const int64_t key_dim = static_cast<int64_t>(p.n_k_heads) * dk;
    const int64_t row_stride = 2 * key_dim + static_cast<int64_t>(p.n_v_heads) * p.dv;
    // Constant weights: read before waiting for the previous kernel.
    const float a_neg = p.a_neg[h];
    const float dt_bias = p.dt_bias[h];
    wait_for_upstream();

    // 1. The chunk's raw q and k (zero past dk and past the last token), and the gates.
    for (int idx = tid; idx < kChunk * ldk; idx += kThreads) {
        const int r = idx / ldk;
        const int i = idx % ldk;
        float q = 0.0f, k = 0.0f;
        if (r < len && i < dk) {
            const float* row = p.qkv + (t0 + r) * row_stride + static_cast<int64_t>(key_head) * dk;
            q = row[i];
            k = row[key_dim + i];
        }
        q_s[idx] = q;
        k_s[idx] = k;
    }
    if (tid < kChunk) {
        float g = 0.0f, beta = 0.0f;  // past the last token: no decay, no update
        if (tid < len) {
            // HF: beta = b.sigmoid(); g = -A_log.exp() * softplus(a + dt_bias)
            const int64_t gate = (t0 + tid) * p.n_v_heads + h;
            beta = gdn_sigmoid(p.b[gate]);
            g = __fmul_rn(a_neg, gdn_softplus(__fadd_rn(p.a[gate], dt_bias)));
        }
        g_s[tid] = g;
        beta_s[tid] = beta;
    }
    __syncthreads();

    // 2. G = cumulative g (in token order, as the CPU), and l2norm of the 64 q and 64 k rows: a
    //    warp per row. HF l2norm: x * rsqrt(sum(x^2) + eps), computed as the CPU does (1 / sqrt),
    //    then q's dk^-0.5 as a second product. Each lane rescales only the elements it summed.
    if (tid == 0) {
        float cumulative = 0.0f;
        for (int r = 0; r < kChunk; ++r) g_s[r] = cumulative = __fadd_rn(cumulative, g_s[r]);
    }
    for (int row = warp; row < 2 * kChunk; row += kWarps) {
        const bool is_q = row < kChunk;
        float* x = (is_q ? q_s : k_s) + (row % kChunk) * ldk;
        float sum = 0.0f;
        for (int i = lane; i < dk; i += 32) sum = fmaf(x[i], x[i], sum);
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) {
            sum += __shfl_xor_sync(kGdnFullMask, sum, offset);
        }
        const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(sum, kGdnL2Eps)));
        for (int i = lane; i < dk; i += 32) {
            x[i] = is_q ? __fmul_rn(__fmul_rn(x[i], inv), p.q_scale) : __fmul_rn(x[i], inv);
        }
        if (lane == 0) inv_s[row] = inv;
    }
    __syncthreads();

    const int64_t block = static_cast<int64_t>(h) * n_chunks + chunk;
    float* t_out = scratch + block * 2 * kMatrixFloats;
    float* qk_out = t_out + kMatrixFloats;
    float* token_out =
        scratch + matrix_floats(p.n_v_heads, n_chunks) + block * kChunk * kTokenFields;
    if (tid < kChunk) {
        float* token = token_out + tid * kTokenFields;
        token[0] = g_s[tid];
        token[1] = beta_s[tid];
        token[2] = inv_s[tid];
        token[3] = inv_s[kChunk + tid];
    }

    // 3. A and QK. Thread (s, r0) owns column s and rows r0 + 4m: per 4 elements of dk, its own
    //    k_s (a float4; the stride makes the warp's reads conflict-free) against 16 rows of k and
    //    q (float4 broadcasts: one row per warp).
    {
        constexpr int kRowGroups = kThreads / kChunk;  // 4
        constexpr int kRows = kChunk / kRowGroups;     // 16
        const int s = tid % kChunk;
        const int r0 = tid / kChunk;
        float kk[kRows], qk[kRows];
#pragma unroll
        for (int m = 0; m < kRows; ++m) kk[m] = qk[m] = 0.0f;
        const int dk4 = (dk + 3) / 4 * 4;  // zeros between dk and dk4
        for (int i = 0; i < dk4; i += 4) {
            const float4 ks = load4(k_s + s * ldk + i);
#pragma unroll
            for (int m = 0; m < kRows; ++m) {
                const int r = r0 + kRowGroups * m;
                kk[m] = dot4(load4(k_s + r * ldk + i), ks, kk[m]);
                qk[m] = dot4(load4(q_s + r * ldk + i), ks, qk[m]);
            }
        }
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
            const int r = r0 + kRowGroups * m;
            float a = 0.0f, q = 0.0f;
            // Only s <= r: exp(G_r - G_s) may overflow above the diagonal (G falls).
            if (r < len && s <= r) {
                const float decay = expf(g_s[r] - g_s[s]);
                if (s < r) a = beta_s[r] * kk[m] * decay;
                q = qk[m] * decay;
            }
            a_s[r * kPaddedChunk + s] = a;
            qk_out[r * kChunk + s] = q;
        }
    }
    __syncthreads();

    // 4. T = (I + A)^-1 by forward substitution, one column per thread: (I + A) T = I gives
    //    T[r, c] = delta_rc - sum_{c <= s < r} A[r, s] T[s, c] (T[s, c] = 0 for s < c). Past the
    //    last token A's rows are zero, so T is the identity there.
    if (tid < kChunk) {
        const int c = tid;
        for (int r = 0; r < kChunk; ++r) {
            float t;
            if (r < c) {
                t = 0.0f;
            } else if (r == c) {
                t = 1.0f;
            } else {
                float acc = 0.0f;
                for (int s = c; s < r; ++s) {
                    acc = fmaf(a_s[r * kPaddedChunk + s], t_s[s * kPaddedChunk + c], acc);
                }
                t = -acc;
            }
            t_s[r * kPaddedChunk + c] = t;
            t_out[r * kChunk + c] = t;
        }
    }
    // Late: the scan's blocks would only wait, holding shared memory this kernel's blocks need.
    allow_downstream();
}

// ---- kernel B: per (value head, 32 state columns), serial over the chunks -----------------------

template <int kMaxDk>
__global__ void __launch_bounds__(kThreads)
    gdn_chunk_scan_kernel(GdnArgs p, const float* scratch, int n_chunks) {
    constexpr int kLdS = kMaxDk + 4;                 // S^T's row stride (conflict-free float4s)
    constexpr int kRowsPerThread = kChunk / kWarps;  // token rows of a thread in steps 1-3
    constexpr int kStateRows = kMaxDk / kWarps;      // state rows of a thread in step 4
    static_assert(kStateRows % 4 == 0, "a thread's state rows are read as float4");
    extern __shared__ __align__(16) float shared[];
    float* st_s = shared;                       // [32][kLdS] S^T: st_s[j][i] = S[i][col0 + j]
    float* k_s = st_s + kTileColumns * kLdS;    // [64][kMaxDk] normalised k
    float* q_s = k_s + kChunk * kMaxDk;         // [64][kMaxDk] normalised, scaled q
    float* t_s = q_s + kChunk * kMaxDk;         // [64][64] T
    float* qk_s = t_s + kMatrixFloats;          // [64][64] QK
    float* r_s = qk_s + kMatrixFloats;          // [64][32] v, then R
    float* vp_s = r_s + kChunk * kTileColumns;  // [64][32] V'
    float* g_s = vp_s + kChunk * kTileColumns;  // [64] G
    float* beta_s = g_s + kChunk;               // [64]
    float* q_inv_s = beta_s + kChunk;           // [64]
    float* k_inv_s = q_inv_s + kChunk;          // [64]
    float* decay_end_s = k_inv_s + kChunk;      // [64] exp(G_L - G_r)

    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int h = static_cast<int>(blockIdx.x);
    const int col0 = static_cast<int>(blockIdx.y) * kTileColumns;
    const int col = col0 + lane;
    const bool active = col < p.dv;
    const int dk = p.dk;
    const int dk4 = (dk + 3) / 4 * 4;
    const int key_head = gdn_key_head(p, h);
    const int64_t key_dim = static_cast<int64_t>(p.n_k_heads) * dk;
    const int64_t row_stride = 2 * key_dim + static_cast<int64_t>(p.n_v_heads) * p.dv;
    const float* q_in = p.qkv + static_cast<int64_t>(key_head) * dk;
    const float* k_in = q_in + key_dim;
    const float* v_in = p.qkv + 2 * key_dim + static_cast<int64_t>(h) * p.dv;
    float* state = p.state + static_cast<int64_t>(h) * dk * p.dv;
    allow_downstream();
    wait_for_upstream();

    // The state's 32 columns, S^T, zero past dk and past dv (so they add exact zeros). Coalesced
    // global reads: consecutive threads take consecutive columns.
    for (int idx = tid; idx < kMaxDk * kTileColumns; idx += kThreads) {
        const int i = idx / kTileColumns;
        const int j = idx % kTileColumns;
        st_s[j * kLdS + i] =
            i < dk && col0 + j < p.dv ? state[static_cast<int64_t>(i) * p.dv + col0 + j] : 0.0f;
    }

    for (int chunk = 0; chunk < n_chunks; ++chunk) {
        const int64_t t0 = static_cast<int64_t>(chunk) * kChunk;
        const int len = static_cast<int>(p.rows - t0 < kChunk ? p.rows - t0 : kChunk);
        const int64_t block = static_cast<int64_t>(h) * n_chunks + chunk;
        const float* t_in = scratch + block * 2 * kMatrixFloats;
        const float* qk_in = t_in + kMatrixFloats;
        const float* token_in =
            scratch + matrix_floats(p.n_v_heads, n_chunks) + block * kChunk * kTokenFields;

        __syncthreads();  // the previous chunk is done with every buffer (and S^T is loaded)
        if (tid < kChunk) {
            const float* token = token_in + tid * kTokenFields;
            g_s[tid] = token[0];
            beta_s[tid] = token[1];
            q_inv_s[tid] = token[2];
            k_inv_s[tid] = token[3];
        }
        for (int idx = tid; idx < kMatrixFloats / 4; idx += kThreads) {
            reinterpret_cast<float4*>(t_s)[idx] = reinterpret_cast<const float4*>(t_in)[idx];
            reinterpret_cast<float4*>(qk_s)[idx] = reinterpret_cast<const float4*>(qk_in)[idx];
        }
        for (int idx = tid; idx < kChunk * kTileColumns; idx += kThreads) {
            const int r = idx / kTileColumns;
            const int j = idx % kTileColumns;
            r_s[idx] = r < len && col0 + j < p.dv ? v_in[(t0 + r) * row_stride + col0 + j] : 0.0f;
        }
        __syncthreads();  // the norms' inverses
        // q and k normalised exactly as the prepare kernel did (the same two or one products).
        for (int idx = tid; idx < kChunk * kMaxDk; idx += kThreads) {
            const int r = idx / kMaxDk;
            const int i = idx % kMaxDk;
            float q = 0.0f, k = 0.0f;
            if (r < len && i < dk) {
                const int64_t offset = (t0 + r) * row_stride + i;
                q = __fmul_rn(__fmul_rn(q_in[offset], q_inv_s[r]), p.q_scale);
                k = __fmul_rn(k_in[offset], k_inv_s[r]);
            }
            q_s[idx] = q;
            k_s[idx] = k;
        }
        if (tid < kChunk) decay_end_s[tid] = tid < len ? expf(g_s[len - 1] - g_s[tid]) : 0.0f;
        __syncthreads();

        // 1. X = K S and Y = Q S for rows r = warp + 8m of column `lane`; then R_r = beta_r (v_r -
        //    exp(G_r) X_r) into r_s (over v, which only this thread read) and exp(G_r) Y_r, the
        //    output's read of the chunk-start state, kept in o.
        float o[kRowsPerThread];
        {
            float x[kRowsPerThread], y[kRowsPerThread];
#pragma unroll
            for (int m = 0; m < kRowsPerThread; ++m) x[m] = y[m] = 0.0f;
            const float* s_column = st_s + lane * kLdS;
            for (int i = 0; i < dk4; i += 4) {
                const float4 s4 = load4(s_column + i);
#pragma unroll
                for (int m = 0; m < kRowsPerThread; ++m) {
                    const int r = warp + kWarps * m;
                    x[m] = dot4(load4(k_s + r * kMaxDk + i), s4, x[m]);
                    y[m] = dot4(load4(q_s + r * kMaxDk + i), s4, y[m]);
                }
            }
#pragma unroll
            for (int m = 0; m < kRowsPerThread; ++m) {
                const int r = warp + kWarps * m;
                float residual = 0.0f;
                o[m] = 0.0f;
                if (r < len) {
                    const float decay = expf(g_s[r]);
                    residual = beta_s[r] * (r_s[r * kTileColumns + lane] - decay * x[m]);
                    o[m] = decay * y[m];
                }
                r_s[r * kTileColumns + lane] = residual;
            }
        }
        __syncthreads();

        // 2. V' = T R. T is lower triangular and zero past the last token (so are R's rows), so
        //    the sum over s stops at this thread's last row (warp + 56), rounded up to float4s.
        const int last_row = warp + kWarps * (kRowsPerThread - 1);
        const int s_end = ((len < last_row + 1 ? len : last_row + 1) + 3) / 4 * 4;
        {
            float vp[kRowsPerThread];
#pragma unroll
            for (int m = 0; m < kRowsPerThread; ++m) vp[m] = 0.0f;
            for (int s = 0; s < s_end; s += 4) {
                const float4 r4 = make_float4(
                    r_s[s * kTileColumns + lane], r_s[(s + 1) * kTileColumns + lane],
                    r_s[(s + 2) * kTileColumns + lane], r_s[(s + 3) * kTileColumns + lane]);
#pragma unroll
                for (int m = 0; m < kRowsPerThread; ++m) {
                    const int r = warp + kWarps * m;
                    vp[m] = dot4(load4(t_s + r * kChunk + s), r4, vp[m]);
                }
            }
#pragma unroll
            for (int m = 0; m < kRowsPerThread; ++m) {
                vp_s[(warp + kWarps * m) * kTileColumns + lane] = vp[m];
            }
        }
        __syncthreads();

        // 3. o_r += sum_{s <= r} QK[r, s] V'_s (QK is zero above the diagonal), then out.
        for (int s = 0; s < s_end; s += 4) {
            const float4 v4 = make_float4(
                vp_s[s * kTileColumns + lane], vp_s[(s + 1) * kTileColumns + lane],
                vp_s[(s + 2) * kTileColumns + lane], vp_s[(s + 3) * kTileColumns + lane]);
#pragma unroll
            for (int m = 0; m < kRowsPerThread; ++m) {
                const int r = warp + kWarps * m;
                o[m] = dot4(load4(qk_s + r * kChunk + s), v4, o[m]);
            }
        }
        if (active) {
#pragma unroll
            for (int m = 0; m < kRowsPerThread; ++m) {
                const int r = warp + kWarps * m;
                if (r < len) p.out[((t0 + r) * p.n_v_heads + h) * p.dv + col] = o[m];
            }
        }

        // 4. S = exp(G_L) S + sum_r k_r (exp(G_L - G_r) V'_r)^T for this thread's state rows
        //    [warp kStateRows, (warp + 1) kStateRows) of column `lane` (past dk: k and S are zero
        //    there and stay zero). Step 1 read S before the barriers above; no other thread
        //    touches these elements.
        {
            const int i0 = warp * kStateRows;
            float* s_column = st_s + lane * kLdS + i0;
            const float end_decay = expf(g_s[len - 1]);
            float acc[kStateRows];
#pragma unroll
            for (int n = 0; n < kStateRows; n += 4) {
                const float4 s4 = load4(s_column + n);
                acc[n] = s4.x * end_decay;
                acc[n + 1] = s4.y * end_decay;
                acc[n + 2] = s4.z * end_decay;
                acc[n + 3] = s4.w * end_decay;
            }
            for (int r = 0; r < len; ++r) {
                const float w = vp_s[r * kTileColumns + lane] * decay_end_s[r];
#pragma unroll
                for (int n = 0; n < kStateRows; n += 4) {
                    const float4 k4 = load4(k_s + r * kMaxDk + i0 + n);
                    acc[n] = fmaf(k4.x, w, acc[n]);
                    acc[n + 1] = fmaf(k4.y, w, acc[n + 1]);
                    acc[n + 2] = fmaf(k4.z, w, acc[n + 2]);
                    acc[n + 3] = fmaf(k4.w, w, acc[n + 3]);
                }
            }
#pragma unroll
            for (int n = 0; n < kStateRows; n += 4) {
                *reinterpret_cast<float4*>(s_column + n) =
                    make_float4(acc[n], acc[n + 1], acc[n + 2], acc[n + 3]);
            }
        }
    }

    __syncthreads();  // every thread's last state rows are in S^T
    for (int idx = tid; idx < dk * kTileColumns; idx += kThreads) {
        const int i = idx / kTileColumns;
        const int j = idx % kTileColumns;
        if (col0 + j < p.dv) state[static_cast<int64_t>(i) * p.dv + col0 + j] = st_s[j * kLdS + i];
    }
}

template <int kMaxDk>
cudaError_t launch_scan(const GdnArgs& args, const float* scratch, int n_chunks,
                        cudaStream_t stream) {
    constexpr size_t kShared = scan_shared_bytes<kMaxDk>();
    const cudaError_t set = cudaFuncSetAttribute(gdn_chunk_scan_kernel<kMaxDk>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(kShared));
    if (set != cudaSuccess) return set;
    const dim3 grid(static_cast<unsigned>(args.n_v_heads),
                    static_cast<unsigned>((args.dv + kTileColumns - 1) / kTileColumns));
    return launch_overlapped(gdn_chunk_scan_kernel<kMaxDk>, grid, dim3(kThreads), kShared, stream,
                             args, scratch, n_chunks);
}

}  // namespace

size_t gated_delta_chunked_scratch_bytes(int64_t rows, int64_t n_v_heads) {
    if (rows <= 0 || n_v_heads <= 0) return 0;
    const int64_t n_chunks = chunk_count(rows);
    return sizeof(float) * static_cast<size_t>(matrix_floats(n_v_heads, n_chunks) +
                                               n_v_heads * n_chunks * kChunk * kTokenFields);
}

size_t gated_delta_scratch_bytes(int64_t rows, const GatedDeltaParams& params) {
    const bool chunked = rows >= kGdnChunkedMinRows && params.k_head_dim <= kGdnChunkedMaxKeyDim;
    return chunked ? gated_delta_chunked_scratch_bytes(rows, params.n_v_heads) : 0;
}

cudaError_t launch_gated_delta_chunked(const GdnArgs& args, void* scratch, cudaStream_t stream) {
    float* work = static_cast<float*>(scratch);
    const int n_chunks = static_cast<int>(chunk_count(args.rows));
    const size_t prepare_shared = prepare_shared_bytes(args.dk);
    cudaError_t error =
        cudaFuncSetAttribute(gdn_chunk_prepare_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(prepare_shared));
    if (error != cudaSuccess) return error;
    error = launch_overlapped(
        gdn_chunk_prepare_kernel,
        dim3(static_cast<unsigned>(n_chunks), static_cast<unsigned>(args.n_v_heads)),
        dim3(kThreads), prepare_shared, stream, args, work);
    if (error != cudaSuccess) return error;
    error = cudaGetLastError();
    if (error != cudaSuccess) return error;
    if (args.dk <= 32) return launch_scan<32>(args, work, n_chunks, stream);
    if (args.dk <= 64) return launch_scan<64>(args, work, n_chunks, stream);
    return launch_scan<128>(args, work, n_chunks, stream);
}

}  // namespace kestrel::cuda
