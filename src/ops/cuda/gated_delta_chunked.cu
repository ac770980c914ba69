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
//   the cumulative G (one thread, in order, in registers), then A and QK on the tensor cores
//   (3xTF32, below: warp w takes 16 rows of K K^T or Q K^T, w / 4, and the key tiles at or below
//   the diagonal, four at a time; on the CUDA cores the kernel took 751 us a Qwen3.5 layer at 8192
//   tokens, 666 now, ncu), and T by forward substitution (thread c owns column c, in 64
//   registers, column-oriented: once T[s, c] is final it is added into every later row's sum, so
//   the sums are independent FMAs in the row-oriented order). Writes T, QK and per token G, beta
//   and the norms' inverses to scratch. Shared memory: 2 x 64 x ldk + 64 x 68 + 4 x 64 floats (84
//   KiB at dk = 128: two blocks per SM).
//
// gdn_chunk_scan_kernel<kMaxDk>, grid (n_v_heads, ceil(dv / 16)): the serial part. A block owns
//   16 columns of one head's state, S^T in shared memory (row j = column j of S, stride kMaxDk +
//   4), read from `state` once and written back once; it walks the chunks in order. Per chunk it
//   loads the normalised q and k (kMaxDk floats per row, zero past dk and past the chunk's last
//   token), and the gates, v, T and QK (issued before step 1, stored after it into Q's buffer),
//   then
//     1. X = K S and Y = Q S, so R (to R^T in shared memory) and exp(G) Y (the output's
//        inter-chunk part) in registers;
//     2. V' = T R, to V'^T and W^T = (exp(G_L - G) V')^T;
//     3. o += QK V', written to out;   4. S = exp(G_L) S + K^T W (beside step 3).
//   Every product runs on the tensor cores as 3xTF32 (see mma_3xtf32), warp by warp in m16n8k8
//   tiles: warp w takes token rows 16 (w % 4) .. + 15 in steps 1-3 (of K or Q in step 1 by w / 4,
//   the state's column tile w / 4 in step 2, warps 4-7 alone in step 3) and the state's dk tiles
//   w, w + 8, ... in step 4. It ran on the CUDA cores in fp32 before, bound by shared-memory reads
//   (87% of L1 throughput): ncu, Qwen3.5 at 8192 tokens, 1.96 -> 1.59 ms a layer. Five block
//   barriers per chunk. Shared memory: (16 + 64) (kMaxDk + 4) + max(64 (kMaxDk + 4),
//   2 x 64 x 68) + 3 x 16 x 68 floats (88 KiB at kMaxDk = 128: two blocks per H100 SM, so 256
//   blocks at Qwen3.5's 32 heads x 128 columns, and one block's loads overlap the other's math).
//   The strides (4 more than a multiple of 32 floats) make every fragment load conflict-free but
//   step 4's reads of K by column (2-way). kMaxDk = 32, 64, 128 (kGdnChunkedMaxKeyDim).
//
// Rounding: fp32 throughout (the substitution and the elementwise steps on CUDA cores, FMA
// contraction allowed; every matrix product as 3xTF32 on the tensor cores, whose errors against the
// double reference measure 0.9 to 1.1 times the CPU chunked form's in the tests, 3.6 times in one
// case where both are near 10^-7), so the results differ from the CPU's chunked form by rounding in
// another order (the dot products' order, T applied as a matrix where the CPU substitutes into U
// and W), not bit for bit; l2norm, beta and g are computed as in gated_delta.cu. A call of n tokens
// is ceil(n / 64) chunks from its first token, so splitting a prompt over calls moves the chunk
// boundaries: the same function, other rounding.
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

// The scan: 16 state columns per block (one m16 tile in step 4, two n8 tiles in steps 1-3).
constexpr int kScanColumns = 16;

// S^T's, K's and Q's row stride in the scan (4 more than a multiple of 32: the fragment loads,
// rows g and columns t, hit 32 different banks).
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

// ---- 3xTF32 on the tensor cores ---------------------------------------------------------------

// The products on the tensor cores (the prepare kernel's A and QK, the scan's four), to near fp32
// accuracy: mma.sync m16n8k8 takes tf32 operands (the top 19 bits of an fp32: 11 significant
// bits), so each fp32 operand x is split as big = x with its 13 low bits cleared plus small =
// x - big (exact), and a b is summed as a_big b_big + a_small b_big + a_big b_small (3xTF32). The
// hardware reads small's top 11 bits too, so an operand keeps ~21 of its 24 bits (error <= 2^-20
// |x|) and the dropped a_small b_small is ~2^-20 of the product: well under the CPU chunked
// form's own error against the double reference (tests/unit/cuda_gated_delta_test.cpp).
// Subnormal operands and results are lost (flushed or truncated away), an absolute error near
// 2^-126 per term.
// Fragments (lane l, g = l / 4, t = l % 4): a0 (row g, k t), a1 (row g + 8, k t), a2 (row g,
// k t + 4), a3 (row g + 8, k t + 4); b0 (k t, n g), b1 (k t + 4, n g); c0, c1 (row g, n 2t,
// 2t + 1), c2, c3 (row g + 8).
struct Tf32Split {
    uint32_t big, small;
};

__device__ __forceinline__ Tf32Split split_tf32(float x) {
    const uint32_t big = __float_as_uint(x) & 0xffffe000u;
    return {big, __float_as_uint(x - __uint_as_float(big))};
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// d += a b over one k step of 8. The tensor cores truncate their fp32 sums, so a long chain of
// mma.sync into one accumulator drifts one way and waits on each mma's latency: each k step sums
// into fresh registers and d takes them by one rounded fp32 add.
__device__ __forceinline__ void mma_3xtf32(float (&d)[4], const Tf32Split (&a)[4],
                                           const Tf32Split (&b)[2]) {
    float step[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_tf32(step, a[0].small, a[1].small, a[2].small, a[3].small, b[0].big, b[1].big);
    mma_tf32(step, a[0].big, a[1].big, a[2].big, a[3].big, b[0].small, b[1].small);
    mma_tf32(step, a[0].big, a[1].big, a[2].big, a[3].big, b[0].big, b[1].big);
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] = __fadd_rn(d[i], step[i]);
}

// The A fragment of rows `rows` (row g; row g + 8 is 8 strides on) at k0, split.
__device__ __forceinline__ void load_a_split(const float* rows, int ld, int k0, int t,
                                             Tf32Split (&a)[4]) {
    a[0] = split_tf32(rows[k0 + t]);
    a[1] = split_tf32(rows[8 * ld + k0 + t]);
    a[2] = split_tf32(rows[k0 + t + 4]);
    a[3] = split_tf32(rows[8 * ld + k0 + t + 4]);
}

// The B fragment from a row of B^T (`column`: B's column g, k contiguous) at k0, split.
__device__ __forceinline__ void load_b_split(const float* column, int k0, int t,
                                             Tf32Split (&b)[2]) {
    b[0] = split_tf32(column[k0 + t]);
    b[1] = split_tf32(column[k0 + t + 4]);
}

// ---- kernel A: per (chunk, value head), the state-free part -------------------------------------

__global__ void __launch_bounds__(kThreads, 2) gdn_chunk_prepare_kernel(GdnArgs p, float* scratch) {
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

    // 3. A and QK on the tensor cores (3xTF32): warp w computes rows 16 (w % 4) .. + 15 of K K^T
    //    (w < 4) or Q K^T (w >= 4) against the key columns s of its n tiles at or below the
    //    diagonal (2 (w % 4) + 2 of the 8; the rest of the row is zero: s > r). Then the decays
    //    and masks in the C fragments' layout: A goes to shared memory transposed (A^T's rows are
    //    the substitution's float4 reads), QK to scratch.
    {
        constexpr int kTiles = kChunk / 8;  // n tiles of a row
        constexpr int kTilesAtOnce = 4;     // accumulators for half a row (registers)
        const int g = lane / 4;
        const int t = lane % 4;
        const int row_tile = warp % 4;
        const bool is_qk = warp >= 4;
        const int n_tiles = 2 * row_tile + 2;
        const int k_steps = (dk + 7) / 8;  // zeros between dk and the row's padding
        const float* a_rows = (is_qk ? q_s : k_s) + (16 * row_tile + g) * ldk;
        for (int nt0 = 0; nt0 < kTiles; nt0 += kTilesAtOnce) {
            float acc[kTilesAtOnce][4] = {};
            for (int ks = 0; nt0 < n_tiles && ks < k_steps; ++ks) {
                Tf32Split a[4];
                load_a_split(a_rows, ldk, 8 * ks, t, a);
#pragma unroll
                for (int u = 0; u < kTilesAtOnce; ++u) {
                    if (nt0 + u >= n_tiles) break;  // warp-uniform
                    Tf32Split b[2];
                    load_b_split(k_s + (8 * (nt0 + u) + g) * ldk, 8 * ks, t, b);
                    mma_3xtf32(acc[u], a, b);
                }
            }
#pragma unroll
            for (int u = 0; u < kTilesAtOnce; ++u) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = 16 * row_tile + g + 8 * (e >> 1);
                    const int s = 8 * (nt0 + u) + 2 * t + (e & 1);
                    float value = 0.0f;
                    // Only s <= r: exp(G_r - G_s) may overflow above the diagonal (G falls).
                    if (nt0 + u < n_tiles && r < len && s <= r) {
                        const float decay = expf(g_s[r] - g_s[s]);
                        if (is_qk) {
                            value = acc[u][e] * decay;
                        } else if (s < r) {
                            value = beta_s[r] * acc[u][e] * decay;
                        }
                    }
                    if (is_qk) {
                        qk_out[r * kChunk + s] = value;
                    } else {
                        at_s[s * kLdT + r] = value;
                    }
                }
            }
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
    constexpr int kDkTiles = kMaxDk / 8;  // k steps of step 1, n tiles of step 4
    constexpr int kStateTilesPerWarp = (kDkTiles + kWarps - 1) / kWarps;
    static_assert(kMaxDk % 8 == 0 && kScanColumns == 16, "m16n8k8 tiles");
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
    const int g = lane / 4;  // fragment row (and B column)
    const int t = lane % 4;  // fragment k (and C column pair)
    // Warp w works on the chunk's token rows 16 (w % 4) .. + 15 in steps 1-3: in step 1 those
    // rows of K (warps 0-3) or of Q (warps 4-7), in step 2 of T for the state columns of n tile
    // w / 4, in step 3 (warps 4-7) of QK. A thread's rows are row_lo and row_lo + 8.
    const int row_tile = warp % 4;
    const bool q_warp = warp >= 4;
    const int row_lo = 16 * row_tile + g;
    const int h = static_cast<int>(blockIdx.x);
    const int col0 = static_cast<int>(blockIdx.y) * kScanColumns;
    const int dk = p.dk;
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

        // The gates of this thread's two rows and (K warps) its v, in the C fragments' layout:
        // v[m][j][c] at row row_lo + 8 m, column 8 j + 2 t + c.
        float gate[2], beta[2], v[2][2][2];
#pragma unroll
        for (int m = 0; m < 2; ++m) {
            const int r = row_lo + 8 * m;
            gate[m] = token_in[r * kTokenFields];
            beta[m] = token_in[r * kTokenFields + 1];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = 8 * j + 2 * t + c;
                    v[m][j][c] = !q_warp && r < len && col0 + col < p.dv
                                     ? v_in[(t0 + r) * row_stride + col]
                                     : 0.0f;
                }
            }
        }
        const float g_last = token_in[(len - 1) * kTokenFields];

        __syncthreads();  // the previous chunk is done with every buffer (and S^T is loaded)
        // q and k normalised exactly as the prepare kernel did (the same two or one products).
        load_qk_rows(q_in + t0 * row_stride, key_dim, row_stride, len, dk, vec, kMaxDk, q_s, k_s,
                     kLd, token_in + 2, p.q_scale);
        // T and QK, issued before step 1 and stored after it (their latency hides behind it).
        float4 t_pre[4], qk_pre[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int e = tid + kThreads * u;  // float4 e of 64 x 16
            t_pre[u] = load4(t_in + e * 4);
            qk_pre[u] = load4(qk_in + e * 4);
        }
        __syncthreads();

        // 1. X = K S (warps 0-3) or Y = Q S (warps 4-7) for the warp's 16 rows and the 16
        //    columns (two n tiles). Then, in the C layout, R_r = beta_r (v_r - exp(G_r) X_r)
        //    into R^T, or exp(G_r) Y_r, the output's read of the chunk-start state, kept in o.
        float o[2][4];  // warps 4-7: [n tile][C register]
        {
            float acc[2][4] = {};
            const float* a_rows = (q_warp ? q_s : k_s) + row_lo * kLd;
#pragma unroll 2
            for (int ks = 0; ks < kDkTiles; ++ks) {
                Tf32Split a[4];
                load_a_split(a_rows, kLd, 8 * ks, t, a);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    Tf32Split b[2];
                    load_b_split(st_s + (8 * j + g) * kLd, 8 * ks, t, b);
                    mma_3xtf32(acc[j], a, b);
                }
            }
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int r = row_lo + 8 * m;
                const float decay = expf(gate[m]);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const float x = acc[j][2 * m + c];
                        if (q_warp) {
                            o[j][2 * m + c] = r < len ? decay * x : 0.0f;
                        } else {
                            rt_s[(8 * j + 2 * t + c) * kLdT + r] =
                                r < len ? beta[m] * (v[m][j][c] - decay * x) : 0.0f;
                        }
                    }
                }
            }
        }
        __syncthreads();  // R^T is complete; Q is read (its buffer takes T and QK)
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int e = tid + kThreads * u;
            store4(t_s + e / 16 * kLdT + e % 16 * 4, t_pre[u]);
            store4(qk_s + e / 16 * kLdT + e % 16 * 4, qk_pre[u]);
        }
        __syncthreads();  // T and QK are stored

        // Steps 2 and 3 sum over s <= r: T and QK are lower triangular (zero above the diagonal
        // and past the last token, as are R's rows), so the warp's rows stop at k step
        // 2 row_tile + 1. Extra zero terms are exact.
        const int triangle_steps = 2 * row_tile + 2;

        // 2. V' = T R for the warp's rows and n tile j = warp / 4; then V'^T and
        //    W^T = (exp(G_L - G_r) V'_r)^T.
        {
            const int j = warp / 4;
            float vp[4] = {};
            for (int ks = 0; ks < triangle_steps; ++ks) {
                Tf32Split a[4], b[2];
                load_a_split(t_s + row_lo * kLdT, kLdT, 8 * ks, t, a);
                load_b_split(rt_s + (8 * j + g) * kLdT, 8 * ks, t, b);
                mma_3xtf32(vp, a, b);
            }
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int r = row_lo + 8 * m;
                const float decay_end = r < len ? expf(g_last - gate[m]) : 0.0f;
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = 8 * j + 2 * t + c;
                    vt_s[col * kLdT + r] = vp[2 * m + c];
                    wt_s[col * kLdT + r] = vp[2 * m + c] * decay_end;
                }
            }
        }
        __syncthreads();  // V'^T and W^T are complete

        // 3. (warps 4-7) o_r += sum_{s <= r} QK[r, s] V'_s, then out.
        if (q_warp) {
            for (int ks = 0; ks < triangle_steps; ++ks) {
                Tf32Split a[4];
                load_a_split(qk_s + row_lo * kLdT, kLdT, 8 * ks, t, a);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    Tf32Split b[2];
                    load_b_split(vt_s + (8 * j + g) * kLdT, 8 * ks, t, b);
                    mma_3xtf32(o[j], a, b);
                }
            }
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int r = row_lo + 8 * m;
#pragma unroll
                for (int j = 0; j < 2; ++j) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const int col = col0 + 8 * j + 2 * t + c;
                        if (r < len && col < p.dv) {
                            p.out[((t0 + r) * p.n_v_heads + h) * p.dv + col] = o[j][2 * m + c];
                        }
                    }
                }
            }
        }

        // 4. (all warps, beside step 3) S^T = exp(G_L) S^T + W^T K: M = the 16 columns, N = dk
        //    (n tiles warp, warp + 8, ...), K = the chunk's tokens up to len (past it W and k
        //    are zero; past dk k and S are zero and stay zero). Step 1 read S before the
        //    barriers above; step 3 does not touch it.
        {
            const float end_decay = expf(g_last);
            float acc[kStateTilesPerWarp][4];
#pragma unroll
            for (int u = 0; u < kStateTilesPerWarp; ++u) {
                const int nt = warp + kWarps * u;
                if (nt >= kDkTiles) break;
                const float2 lo = *reinterpret_cast<const float2*>(st_s + g * kLd + 8 * nt + 2 * t);
                const float2 hi =
                    *reinterpret_cast<const float2*>(st_s + (g + 8) * kLd + 8 * nt + 2 * t);
                acc[u][0] = lo.x * end_decay;
                acc[u][1] = lo.y * end_decay;
                acc[u][2] = hi.x * end_decay;
                acc[u][3] = hi.y * end_decay;
            }
            const int token_steps = (len + 7) / 8;
            for (int ks = 0; ks < token_steps; ++ks) {
                Tf32Split a[4];
                load_a_split(wt_s + g * kLdT, kLdT, 8 * ks, t, a);
#pragma unroll
                for (int u = 0; u < kStateTilesPerWarp; ++u) {
                    const int nt = warp + kWarps * u;
                    if (nt >= kDkTiles) break;
                    Tf32Split b[2];
                    b[0] = split_tf32(k_s[(8 * ks + t) * kLd + 8 * nt + g]);
                    b[1] = split_tf32(k_s[(8 * ks + t + 4) * kLd + 8 * nt + g]);
                    mma_3xtf32(acc[u], a, b);
                }
            }
#pragma unroll
            for (int u = 0; u < kStateTilesPerWarp; ++u) {
                const int nt = warp + kWarps * u;
                if (nt >= kDkTiles) break;
                *reinterpret_cast<float2*>(st_s + g * kLd + 8 * nt + 2 * t) =
                    make_float2(acc[u][0], acc[u][1]);
                *reinterpret_cast<float2*>(st_s + (g + 8) * kLd + 8 * nt + 2 * t) =
                    make_float2(acc[u][2], acc[u][3]);
            }
        }
    }

    __syncthreads();  // every warp's last state tiles are in S^T
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
