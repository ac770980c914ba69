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
// Two kernels, both 256 threads (8 warps). Global loads are issued in batches (float4 where dk,
// the row stride and qkv's address allow) before their first use, so their latencies overlap.
//
// gdn_chunk_prepare_kernel, grid (n_chunks, n_v_heads): everything that does not depend on the
//   state, for all chunks at once. Loads the chunk's q and k of its key head into shared memory
//   (rows padded to ldk = round_up(dk, 32) + 4 floats: a lane's float4 of its own row is then
//   conflict-free), L2-normalises them (a warp per row, xor-shuffle sums), computes beta, g and
//   the cumulative G (one thread, in order, in registers), then A and QK (thread (s, r0) owns
//   column s and rows r0 + 4m, 16 x 2 dot products over dk), and T by forward substitution
//   (thread c owns column c, in 64 registers, column-oriented: once T[s, c] is final it is added
//   into every later row's sum, so the sums are independent FMAs in the row-oriented order).
//   Writes T, QK and per token G, beta and the norms' inverses to scratch.
//   Shared memory: 2 x 64 x ldk + 64 x 68 + 4 x 64 floats (84 KiB at dk = 128: two blocks per SM).
//
// gdn_chunk_scan_kernel<kMaxDk>, grid (n_v_heads, ceil(dv / 16)): the serial part. A block owns
//   16 columns of one head's state, S^T in shared memory (row j = column j of S, stride kMaxDk + 4
//   so float4s of 8 consecutive rows are conflict-free), read from `state` once and written back
//   once; it walks the chunks in order. Thread t owns token rows g, g + 32 and columns c, c + 8
//   (g = t / 8, c = t % 8) in steps 1-3: every product is a 2 x 2 register tile fed by float4s.
//   Per chunk it loads the normalised q and k (kMaxDk floats per row, zero past dk and past the
//   chunk's last token), its own v, gates and G_L into registers, and (issued before step 1,
//   stored after it into Q's buffer) its warp's 8 rows of T and QK, then
//     1. X = K S and Y = Q S, so R (to R^T in shared memory) and exp(G) Y (the output's
//        inter-chunk part) in registers;
//     2. V' = T R (T's rows of the warp only: a __syncwarp, not a block barrier, after storing
//        them), to V'^T and W^T = (exp(G_L - G) V')^T;
//     3. o += QK V', written to out;   4. S = exp(G_L) S + K^T W (thread t updates state rows
//        4 (t / 8) .. + 3 of columns c, c + 8: a 4 x 2 tile).
//   Four block barriers per chunk. Shared memory: (16 + 64) (kMaxDk + 4) + max(64 (kMaxDk + 4),
//   2 x 64 x 68) + 3 x 16 x 68 floats (88 KiB at kMaxDk = 128: two blocks per H100 SM, so 256
//   blocks at Qwen3.5's 32 heads x 128 columns, and one block's loads overlap the other's math).
//   kMaxDk = 32, 64, 128 (kGdnChunkedMaxKeyDim).
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
constexpr int kMatrixFloats = kChunk * kChunk;
// Per token and value head: G, beta, 1 / |q|, 1 / |k| (the norms' inverses, before q's dk^-0.5).
constexpr int kTokenFields = 4;
static_assert(kChunk == 64 && kThreads == 256, "the kernels' thread layouts assume 64 x 256");

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

// Row stride of the 64-wide matrices in shared memory (A^T in the prepare kernel; T, QK, R^T,
// V'^T, W^T in the scan): float4 rows, and 4 consecutive rows in 4 different bank groups.
constexpr int kLdT = kChunk + 4;

size_t prepare_shared_bytes(int dk) {
    const int ldk = prepare_row_stride(dk);
    return sizeof(float) * static_cast<size_t>(2 * kChunk * ldk + kChunk * kLdT + 4 * kChunk);
}

// The scan: 16 state columns per block. Thread tid owns, in steps 1-3, token rows g and g + 32
// and columns c and c + 8 (g = tid / 8, c = tid % 8), and in step 4 state rows 4 (tid / 8) .. + 3
// of the same two columns.
constexpr int kScanColumns = 16;
constexpr int kHalfColumns = kScanColumns / 2;
static_assert(kThreads / kHalfColumns == kChunk / 2, "steps 1-3: two token rows per thread");

// S^T's, K's and Q's row stride in the scan (conflict-free float4s of 8 consecutive rows).
template <int kMaxDk>
__host__ __device__ constexpr int scan_row_stride() {
    return kMaxDk + 4;
}

// Q's buffer, reused after step 1 for T and QK.
template <int kMaxDk>
__host__ __device__ constexpr int scan_union_floats() {
    return kChunk * scan_row_stride<kMaxDk>() > 2 * kChunk * kLdT
               ? kChunk * scan_row_stride<kMaxDk>()
               : 2 * kChunk * kLdT;
}

template <int kMaxDk>
constexpr size_t scan_shared_bytes() {
    return sizeof(float) *
           static_cast<size_t>((kScanColumns + kChunk) * scan_row_stride<kMaxDk>() +
                               scan_union_floats<kMaxDk>() + 3 * kScanColumns * kLdT);
}
// Two blocks per SM: an H100 SM has 228 KiB of shared memory and reserves 1 KiB per block.
static_assert(scan_shared_bytes<kGdnChunkedMaxKeyDim>() <= 113 * 1024, "two scan blocks per SM");
static_assert(kGdnChunkedMaxKeyDim == 128, "launch_gated_delta_chunked's variants cover dk <= 128");

__device__ __forceinline__ float4 load4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}

__device__ __forceinline__ void store4(float* p, float4 v) {
    *reinterpret_cast<float4*>(p) = v;
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

// Whether q and k rows can be read as float4s: dk, the row stride and the base all allow it.
__device__ __forceinline__ bool qk_float4_rows(const GdnArgs& p, int64_t row_stride) {
    return p.dk % 4 == 0 && row_stride % 4 == 0 && reinterpret_cast<uintptr_t>(p.qkv) % 16 == 0;
}

// A chunk's 64 q and k rows of one key head (q_src: the chunk's first token's q, k key_dim
// further) into q_dst and k_dst [64][ld], `width` floats a row (a multiple of 16, >= dk), zero
// past dk and past the chunk's len tokens. With `inv` (the chunk's token fields from 1 / |q|
// on), normalised as the prepare kernel did: q (q inv_q) q_scale, k inv_k. The loads of a batch
// are issued before its first store, so their latencies overlap.
__device__ __forceinline__ void load_qk_rows(const float* q_src, int64_t key_dim,
                                             int64_t row_stride, int len, int dk, bool vec,
                                             int width, float* q_dst, float* k_dst, int ld,
                                             const float* inv, float q_scale) {
    constexpr int kBatch = 4;
    const int per_row = width / 4;
    const int total = kChunk * per_row;  // a multiple of kThreads
    for (int base = static_cast<int>(threadIdx.x); base < total; base += kBatch * kThreads) {
        float4 q[kBatch], k[kBatch];
        float q_inv[kBatch], k_inv[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
            const int idx = base + u * kThreads;
            const int r = idx / per_row;
            const int i = idx % per_row * 4;
            q[u] = k[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            q_inv[u] = k_inv[u] = 1.0f;
            if (idx < total && r < len && i < dk) {
                const float* row = q_src + r * row_stride + i;
                if (vec) {
                    q[u] = load4(row);
                    k[u] = load4(row + key_dim);
                } else {
                    q[u].x = row[0];
                    k[u].x = row[key_dim];
                    if (i + 1 < dk) {
                        q[u].y = row[1];
                        k[u].y = row[key_dim + 1];
                    }
                    if (i + 2 < dk) {
                        q[u].z = row[2];
                        k[u].z = row[key_dim + 2];
                    }
                    if (i + 3 < dk) {
                        q[u].w = row[3];
                        k[u].w = row[key_dim + 3];
                    }
                }
                if (inv != nullptr) {
                    q_inv[u] = inv[r * kTokenFields];
                    k_inv[u] = inv[r * kTokenFields + 1];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
            const int idx = base + u * kThreads;
            if (idx >= total) continue;
            const int r = idx / per_row;
            const int i = idx % per_row * 4;
            float4 qn = q[u], kn = k[u];
            if (inv != nullptr) {
                qn.x = __fmul_rn(__fmul_rn(qn.x, q_inv[u]), q_scale);
                qn.y = __fmul_rn(__fmul_rn(qn.y, q_inv[u]), q_scale);
                qn.z = __fmul_rn(__fmul_rn(qn.z, q_inv[u]), q_scale);
                qn.w = __fmul_rn(__fmul_rn(qn.w, q_inv[u]), q_scale);
                kn.x = __fmul_rn(kn.x, k_inv[u]);
                kn.y = __fmul_rn(kn.y, k_inv[u]);
                kn.z = __fmul_rn(kn.z, k_inv[u]);
                kn.w = __fmul_rn(kn.w, k_inv[u]);
            }
            store4(q_dst + r * ld + i, qn);
            store4(k_dst + r * ld + i, kn);
        }
    }
}

// ---- kernel A: per (chunk, value head), the state-free part -------------------------------------

__global__ void __launch_bounds__(kThreads) gdn_chunk_prepare_kernel(GdnArgs p, float* scratch) {
    extern __shared__ __align__(16) float shared[];
    const int dk = p.dk;
    const int ldk = prepare_row_stride(dk);
    float* q_s = shared;                // [64][ldk] q, then normalised and scaled
    float* k_s = q_s + kChunk * ldk;    // [64][ldk] k, then normalised
    float* at_s = k_s + kChunk * ldk;   // [64][kLdT] A^T: at_s[s][r] = A[r][s]
    float* g_s = at_s + kChunk * kLdT;  // [64] g, then the cumulative G
    float* beta_s = g_s + kChunk;       // [64]
    float* inv_s = beta_s + kChunk;     // [128] 1 / |q_r| (r < 64), then 1 / |k_r|

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

    // 1. The gates, and the chunk's raw q and k (zero past dk and past the last token; the rows'
    //    padding past round_up(dk, 32) is never read).
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
    load_qk_rows(p.qkv + t0 * row_stride + static_cast<int64_t>(key_head) * dk, key_dim, row_stride,
                 len, dk, qk_float4_rows(p, row_stride), (dk + 31) / 32 * 32, q_s, k_s, ldk,
                 nullptr, 1.0f);
    __syncthreads();

    // 2. G = cumulative g (in token order, as the CPU; in one thread's registers), and l2norm of
    //    the 64 q and 64 k rows: a warp per row. HF l2norm: x * rsqrt(sum(x^2) + eps), computed
    //    as the CPU does (1 / sqrt), then q's dk^-0.5 as a second product. Each lane rescales
    //    only the elements it summed.
    if (tid == 0) {
        float g[kChunk];
#pragma unroll
        for (int r = 0; r < kChunk; ++r) g[r] = g_s[r];
        float cumulative = 0.0f;
#pragma unroll
        for (int r = 0; r < kChunk; ++r) g_s[r] = cumulative = __fadd_rn(cumulative, g[r]);
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
    //    q (float4 broadcasts: one row per warp). A goes to shared memory transposed (A^T's rows
    //    are the substitution's float4 reads).
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
            at_s[s * kLdT + r] = a;
            qk_out[r * kChunk + s] = q;
        }
    }
    __syncthreads();

    // 4. T = (I + A)^-1 by forward substitution, one column per thread: (I + A) T = I gives
    //    T[r, c] = delta_rc - sum_{c <= s < r} A[r, s] T[s, c] (T[s, c] = 0 for s < c). Column-
    //    oriented, in registers: once T[s, c] is final it is added into every later row's sum,
    //    so each row's sum still runs over s in increasing order (the same rounding as a row-
    //    oriented loop) but the 64 sums are independent FMAs, not one dependent chain. Terms with
    //    s < c add A[r, s] x 0 to +0 (exact); a warp skips the s below its first column. Past the
    //    last token A's rows are zero, so T is the identity there.
    if (tid < kChunk) {
        const int c = tid;
        const int s_first = c / 32 * 32;  // warp-uniform
        float t[kChunk];                  // t[r]: row r's running sum, then T[r, c]
#pragma unroll
        for (int r = 0; r < kChunk; ++r) t[r] = 0.0f;
#pragma unroll
        for (int s = 0; s < kChunk; ++s) {
            if (s < s_first) continue;
            const float ts = s < c ? 0.0f : (s == c ? 1.0f : -t[s]);
            t[s] = ts;
#pragma unroll
            for (int r4 = (s + 1) / 4 * 4; r4 < kChunk; r4 += 4) {
                const float4 a4 = load4(at_s + s * kLdT + r4);
                if (r4 > s) t[r4] = fmaf(a4.x, ts, t[r4]);
                if (r4 + 1 > s) t[r4 + 1] = fmaf(a4.y, ts, t[r4 + 1]);
                if (r4 + 2 > s) t[r4 + 2] = fmaf(a4.z, ts, t[r4 + 2]);
                t[r4 + 3] = fmaf(a4.w, ts, t[r4 + 3]);
            }
        }
#pragma unroll
        for (int r = 0; r < kChunk; ++r) t_out[r * kChunk + c] = t[r];
    }
    // Late: the scan's blocks would only wait, holding shared memory this kernel's blocks need.
    allow_downstream();
}

// ---- kernel B: per (value head, 16 state columns), serial over the chunks -----------------------

template <int kMaxDk>
__global__ void __launch_bounds__(kThreads, 2)
    gdn_chunk_scan_kernel(GdnArgs p, const float* scratch, int n_chunks) {
    constexpr int kLd = scan_row_stride<kMaxDk>();
    static_assert(2 * kMaxDk <= kThreads, "step 4: one 4 x 2 tile of S per thread at most");
    extern __shared__ __align__(16) float shared[];
    float* st_s = shared;                    // [16][kLd] S^T: st_s[j][i] = S[i][col0 + j]
    float* k_s = st_s + kScanColumns * kLd;  // [64][kLd] normalised k
    float* q_s = k_s + kChunk * kLd;         // [64][kLd] normalised, scaled q; after step 1:
    float* t_s = q_s;                        //   [64][kLdT] T
    float* qk_s = t_s + kChunk * kLdT;       //   [64][kLdT] QK
    float* rt_s = q_s + scan_union_floats<kMaxDk>();  // [16][kLdT] R^T
    float* vt_s = rt_s + kScanColumns * kLdT;         // [16][kLdT] V'^T
    float* wt_s = vt_s + kScanColumns * kLdT;         // [16][kLdT] (exp(G_L - G_r) V'_r)^T

    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = tid / kHalfColumns;  // token rows g and g + 32 (steps 1-3)
    const int c = tid % kHalfColumns;  // columns c and c + 8 (all steps)
    const int h = static_cast<int>(blockIdx.x);
    const int col0 = static_cast<int>(blockIdx.y) * kScanColumns;
    const int dk = p.dk;
    const int dk4 = (dk + 3) / 4 * 4;
    const int key_head = gdn_key_head(p, h);
    const int64_t key_dim = static_cast<int64_t>(p.n_k_heads) * dk;
    const int64_t row_stride = 2 * key_dim + static_cast<int64_t>(p.n_v_heads) * p.dv;
    const float* q_in = p.qkv + static_cast<int64_t>(key_head) * dk;
    const float* v_in = p.qkv + 2 * key_dim + static_cast<int64_t>(h) * p.dv + col0;
    float* state = p.state + static_cast<int64_t>(h) * dk * p.dv;
    const bool vec = qk_float4_rows(p, row_stride);
    allow_downstream();
    wait_for_upstream();

    // The state's 16 columns, S^T, zero past dk and past dv (so they add exact zeros). Coalesced
    // global reads: consecutive threads take consecutive columns.
    for (int idx = tid; idx < kMaxDk * kScanColumns; idx += kThreads) {
        const int i = idx / kScanColumns;
        const int j = idx % kScanColumns;
        st_s[j * kLd + i] =
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

        // v and the gates of this thread's rows, and G_L, for after the loads of q and k.
        float gate[2], beta[2], v[2][2];
#pragma unroll
        for (int m = 0; m < 2; ++m) {
            const int r = g + 32 * m;
            gate[m] = token_in[r * kTokenFields];
            beta[m] = token_in[r * kTokenFields + 1];
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                const int j = c + kHalfColumns * n;
                v[m][n] = r < len && col0 + j < p.dv ? v_in[(t0 + r) * row_stride + j] : 0.0f;
            }
        }
        const float g_last = token_in[(len - 1) * kTokenFields];

        __syncthreads();  // the previous chunk is done with every buffer (and S^T is loaded)
        // q and k normalised exactly as the prepare kernel did (the same two or one products).
        load_qk_rows(q_in + t0 * row_stride, key_dim, row_stride, len, dk, vec, kMaxDk, q_s, k_s,
                     kLd, token_in + 2, p.q_scale);
        // Issued before step 1, used after it (their latency hides behind it): this warp's 8
        // rows of T and QK (4 warp + 0..3 and + 32, the rows its threads use in steps 2 and 3).
        float4 t_pre[4], qk_pre[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int e = lane + 32 * u;  // float4 e of the warp's 8 x 16
            const int row = 4 * warp + (e / 16) % 4 + e / 64 * 32;
            t_pre[u] = load4(t_in + row * kChunk + e % 16 * 4);
            qk_pre[u] = load4(qk_in + row * kChunk + e % 16 * 4);
        }
        __syncthreads();

        // 1. X = K S and Y = Q S for rows g, g + 32 and columns c, c + 8 (a 2 x 2 tile of each;
        //    per float4 of dk, 6 float4 reads for 32 FMAs); then R_r = beta_r (v_r - exp(G_r) X_r)
        //    into R^T and exp(G_r) Y_r, the output's read of the chunk-start state, kept in o.
        float o[2][2];
        {
            float x[2][2] = {}, y[2][2] = {};
            const float* s_column0 = st_s + c * kLd;
            const float* s_column1 = st_s + (c + kHalfColumns) * kLd;
#pragma unroll 2
            for (int i = 0; i < dk4; i += 4) {
                const float4 s0 = load4(s_column0 + i);
                const float4 s1 = load4(s_column1 + i);
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const float4 k4 = load4(k_s + (g + 32 * m) * kLd + i);
                    const float4 q4 = load4(q_s + (g + 32 * m) * kLd + i);
                    x[m][0] = dot4(k4, s0, x[m][0]);
                    x[m][1] = dot4(k4, s1, x[m][1]);
                    y[m][0] = dot4(q4, s0, y[m][0]);
                    y[m][1] = dot4(q4, s1, y[m][1]);
                }
            }
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int r = g + 32 * m;
                const float decay = expf(gate[m]);
#pragma unroll
                for (int n = 0; n < 2; ++n) {
                    float residual = 0.0f;
                    o[m][n] = 0.0f;
                    if (r < len) {
                        residual = beta[m] * (v[m][n] - decay * x[m][n]);
                        o[m][n] = decay * y[m][n];
                    }
                    rt_s[(c + kHalfColumns * n) * kLdT + r] = residual;
                }
            }
        }
        __syncthreads();  // R^T is complete; Q is read (its buffer takes T and QK)

        // Each warp stores its own rows of T and QK: only its threads read them.
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int e = lane + 32 * u;
            const int row = 4 * warp + (e / 16) % 4 + e / 64 * 32;
            store4(t_s + row * kLdT + e % 16 * 4, t_pre[u]);
            store4(qk_s + row * kLdT + e % 16 * 4, qk_pre[u]);
        }
        __syncwarp();

        // Steps 2 and 3 sum over s <= r: T and QK are lower triangular (zero above the diagonal
        // and past the last token, as are R's rows), so row g stops at s_mid = round_up(g + 1, 4)
        // (the same for the warp's four g) and row g + 32 at s_mid + 32. Extra zero terms are
        // exact.
        const int s_mid = (g + 4) / 4 * 4;

        // 2. V' = T R, a 2 x 2 tile; then V'^T and W^T = (exp(G_L - G_r) V'_r)^T.
        {
            float vp[2][2] = {};
            for (int s = 0; s < s_mid; s += 4) {
                const float4 a0 = load4(t_s + g * kLdT + s);
                const float4 a1 = load4(t_s + (g + 32) * kLdT + s);
                const float4 b0 = load4(rt_s + c * kLdT + s);
                const float4 b1 = load4(rt_s + (c + kHalfColumns) * kLdT + s);
                vp[0][0] = dot4(a0, b0, vp[0][0]);
                vp[0][1] = dot4(a0, b1, vp[0][1]);
                vp[1][0] = dot4(a1, b0, vp[1][0]);
                vp[1][1] = dot4(a1, b1, vp[1][1]);
            }
            for (int s = s_mid; s < s_mid + 32; s += 4) {
                const float4 a1 = load4(t_s + (g + 32) * kLdT + s);
                vp[1][0] = dot4(a1, load4(rt_s + c * kLdT + s), vp[1][0]);
                vp[1][1] = dot4(a1, load4(rt_s + (c + kHalfColumns) * kLdT + s), vp[1][1]);
            }
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int r = g + 32 * m;
                const float decay_end = r < len ? expf(g_last - gate[m]) : 0.0f;
#pragma unroll
                for (int n = 0; n < 2; ++n) {
                    vt_s[(c + kHalfColumns * n) * kLdT + r] = vp[m][n];
                    wt_s[(c + kHalfColumns * n) * kLdT + r] = vp[m][n] * decay_end;
                }
            }
        }
        __syncthreads();  // V'^T and W^T are complete

        // 3. o_r += sum_{s <= r} QK[r, s] V'_s, then out.
        for (int s = 0; s < s_mid; s += 4) {
            const float4 a0 = load4(qk_s + g * kLdT + s);
            const float4 a1 = load4(qk_s + (g + 32) * kLdT + s);
            const float4 b0 = load4(vt_s + c * kLdT + s);
            const float4 b1 = load4(vt_s + (c + kHalfColumns) * kLdT + s);
            o[0][0] = dot4(a0, b0, o[0][0]);
            o[0][1] = dot4(a0, b1, o[0][1]);
            o[1][0] = dot4(a1, b0, o[1][0]);
            o[1][1] = dot4(a1, b1, o[1][1]);
        }
        for (int s = s_mid; s < s_mid + 32; s += 4) {
            const float4 a1 = load4(qk_s + (g + 32) * kLdT + s);
            o[1][0] = dot4(a1, load4(vt_s + c * kLdT + s), o[1][0]);
            o[1][1] = dot4(a1, load4(vt_s + (c + kHalfColumns) * kLdT + s), o[1][1]);
        }
#pragma unroll
        for (int m = 0; m < 2; ++m) {
            const int r = g + 32 * m;
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                const int col = col0 + c + kHalfColumns * n;
                if (r < len && col < p.dv) {
                    p.out[((t0 + r) * p.n_v_heads + h) * p.dv + col] = o[m][n];
                }
            }
        }

        // 4. S = exp(G_L) S + sum_r k_r W_r^T for state rows i0 .. i0 + 3 (i0 = 4 (tid / 8)) of
        //    columns c and c + 8: per 4 tokens, 4 float4s of K and 2 of W^T for 32 FMAs (past dk:
        //    k and S are zero there and stay zero; past the last token W is zero). Step 1 read S
        //    before the barriers above; no other thread touches these elements.
        if (tid < 2 * kMaxDk) {
            const int i0 = tid / kHalfColumns * 4;
            float* s_column0 = st_s + c * kLd + i0;
            float* s_column1 = st_s + (c + kHalfColumns) * kLd + i0;
            const float end_decay = expf(g_last);
            float4 acc0 = load4(s_column0), acc1 = load4(s_column1);
            acc0 = make_float4(acc0.x * end_decay, acc0.y * end_decay, acc0.z * end_decay,
                               acc0.w * end_decay);
            acc1 = make_float4(acc1.x * end_decay, acc1.y * end_decay, acc1.z * end_decay,
                               acc1.w * end_decay);
            const int r_end = (len + 3) / 4 * 4;
            for (int r = 0; r < r_end; r += 4) {
                const float4 w0 = load4(wt_s + c * kLdT + r);
                const float4 w1 = load4(wt_s + (c + kHalfColumns) * kLdT + r);
                const float w0s[4] = {w0.x, w0.y, w0.z, w0.w};
                const float w1s[4] = {w1.x, w1.y, w1.z, w1.w};
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const float4 k4 = load4(k_s + (r + u) * kLd + i0);
                    acc0.x = fmaf(k4.x, w0s[u], acc0.x);
                    acc0.y = fmaf(k4.y, w0s[u], acc0.y);
                    acc0.z = fmaf(k4.z, w0s[u], acc0.z);
                    acc0.w = fmaf(k4.w, w0s[u], acc0.w);
                    acc1.x = fmaf(k4.x, w1s[u], acc1.x);
                    acc1.y = fmaf(k4.y, w1s[u], acc1.y);
                    acc1.z = fmaf(k4.z, w1s[u], acc1.z);
                    acc1.w = fmaf(k4.w, w1s[u], acc1.w);
                }
            }
            store4(s_column0, acc0);
            store4(s_column1, acc1);
        }
    }

    __syncthreads();  // every thread's last state rows are in S^T
    for (int idx = tid; idx < dk * kScanColumns; idx += kThreads) {
        const int i = idx / kScanColumns;
        const int j = idx % kScanColumns;
        if (col0 + j < p.dv) state[static_cast<int64_t>(i) * p.dv + col0 + j] = st_s[j * kLd + i];
    }
}

template <int kMaxDk>
cudaError_t launch_scan(const GdnArgs& args, const float* scratch, int n_chunks,
                        cudaStream_t stream) {
    constexpr size_t kShared = scan_shared_bytes<kMaxDk>();
    cudaError_t error = cudaFuncSetAttribute(gdn_chunk_scan_kernel<kMaxDk>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kShared));
    if (error != cudaSuccess) return error;
    // A hint: the most shared memory (L1 matters little here), so that two blocks fit an SM.
    error = cudaFuncSetAttribute(gdn_chunk_scan_kernel<kMaxDk>,
                                 cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
    if (error != cudaSuccess) return error;
    const dim3 grid(static_cast<unsigned>(args.n_v_heads),
                    static_cast<unsigned>((args.dv + kScanColumns - 1) / kScanColumns));
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
