// The TQ4 KV cache's rotation and write (host API: kv_cache_tq4.h; CPU reference: ops/kv_tq4.cpp).
//
// rotate_rows_kernel<BM, BN, TM, TN>: prefill's rows (hundreds and more): a tiled fp32 GEMM
//   y = x B with B = R^T (into the rotated space) or R (back). A block computes BM x BN outputs
//   from BK-wide slices of x and B staged in shared memory, a thread TM x TN of them, each
//   summed in k order.
// rotate_few_rows_kernel: decode's rows (a step's 32 query heads, 8 K / V vectors): one warp per
//   output column (described below), since there the op is latency bound; with kEncode it is the
//   whole cache write of a decode step in one launch.
// center_keys_kernel: the key centre of a cache write (ops/kv_tq4.h, "Key centring"): one thread
//   per (kv head, element): the write's mean of that element (fp32, token order, as the CPU
//   twin) when the write may set the centre and starts at position 0, else the stored centre;
//   then the write's keys less it, into scratch, which the encode reads instead of k.
// tq4_encode_kernel: prefill's cache write after rotate_rows_kernel: one warp per vector: the
//   norm from the original row (fp64 sum of squares, as tq4_encode), then each element's bucket
//   of (R x)_i / norm from the rotated row, the indices staged in shared memory and packed two
//   per byte (element 2b in the low nibble of byte b).
#include <algorithm>
#include <array>
#include <string>

#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/kv_cache_tq4.h"
#include "ops/cuda/launch.cuh"
#include "ops/kv_tq4.h"

namespace kestrel::cuda {
namespace {

constexpr int kRotateSliceK = 32;  // BK

template <int BM, int BN, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    rotate_rows_kernel(const float* __restrict__ x, int rows, int d,
                       const float* __restrict__ rotation, bool transpose, float* __restrict__ y) {
    constexpr int kThreads = (BM / TM) * (BN / TN);
    constexpr int BK = kRotateSliceK;
    // +4: float4 stores stay aligned; the transposed scalar stores spread over banks.
    __shared__ __align__(16) float a_s[BK][BM + 4];
    __shared__ __align__(16) float b_s[BK][BN + 4];
    wait_for_upstream();
    allow_downstream();
    const int tid = static_cast<int>(threadIdx.x);
    const int row0 = static_cast<int>(blockIdx.x) * BM;
    const int col0 = static_cast<int>(blockIdx.y) * BN;
    const int ty = tid / (BN / TN);
    const int tx = tid % (BN / TN);
    float acc[TM][TN] = {};
    for (int k0 = 0; k0 < d; k0 += BK) {
        // x slice [BM, BK]: float4 along k, stored transposed (a_s[k][row]).
        for (int i = tid; i < BM * BK / 4; i += kThreads) {
            const int r = i / (BK / 4);
            const int k = (i % (BK / 4)) * 4;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (row0 + r < rows)
                v = *reinterpret_cast<const float4*>(x + static_cast<int64_t>(row0 + r) * d + k0 +
                                                     k);
            a_s[k][r] = v.x;
            a_s[k + 1][r] = v.y;
            a_s[k + 2][r] = v.z;
            a_s[k + 3][r] = v.w;
        }
        // B slice [BK, BN]: B[k][n] = R[n][k] (into the rotated space) or R[k][n] (back).
        for (int i = tid; i < BK * BN / 4; i += kThreads) {
            if (transpose) {
                const int k = i / (BN / 4);
                const int n = (i % (BN / 4)) * 4;
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (col0 + n < d)
                    v = *reinterpret_cast<const float4*>(
                        rotation + static_cast<int64_t>(k0 + k) * d + col0 + n);
                *reinterpret_cast<float4*>(&b_s[k][n]) = v;
            } else {
                const int n = i / (BK / 4);
                const int k = (i % (BK / 4)) * 4;
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (col0 + n < d)
                    v = *reinterpret_cast<const float4*>(
                        rotation + static_cast<int64_t>(col0 + n) * d + k0 + k);
                b_s[k][n] = v.x;
                b_s[k + 1][n] = v.y;
                b_s[k + 2][n] = v.z;
                b_s[k + 3][n] = v.w;
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = a_s[k][ty * TM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = b_s[k][tx * TN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int r = row0 + ty * TM + i;
        if (r >= rows) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = col0 + tx * TN + j;
            if (n < d) y[static_cast<int64_t>(r) * d + n] = acc[i][j];
        }
    }
}

constexpr int kEncodeWarps = 4;
constexpr int kMaxHeadDim = 512;
// Up to this many rows a rotation (or a cache write's K and V rows) takes the few-rows kernel.
constexpr int64_t kFewRowsMax = 256;

struct EncodeArgs {
    const float* k;  // [T, n_kv, d] original rows
    const float* v;
    const float* rotated;  // [2, T, n_kv, d]: R k rows, then R v rows
    const int64_t* positions;
    uint8_t* k_cache;
    uint8_t* v_cache;
    uint16_t* k_norm;
    uint16_t* v_norm;
    int n_vectors;  // 2 * T * n_kv
    int n_kv;
    int d;
    int capacity;
    float boundaries[kTq4Levels - 1];
};

// The index tq4_encode gives element (R x)_i = rotated of a vector of norm `norm`: the codebook
// bucket of rotated / norm (a value on a boundary takes the lower level); 8 everywhere for a
// zero or non-finite vector (it decodes to zeros, or NaN through its norm).
__device__ __forceinline__ int tq4_bucket(float rotated, float norm,
                                          const float (&boundaries)[kTq4Levels - 1]) {
    if (!(norm > 0.0f)) return kTq4Levels / 2;
    const float unit = __fdiv_rn(rotated, norm);
    int index = 0;
#pragma unroll
    for (int b = 0; b < kTq4Levels - 1; ++b) index += unit > boundaries[b] ? 1 : 0;
    return index;
}

__global__ void __launch_bounds__(kEncodeWarps * 32) tq4_encode_kernel(EncodeArgs a) {
    __shared__ uint8_t staged[kEncodeWarps][kMaxHeadDim];
    wait_for_upstream();
    allow_downstream();
    const int lane = static_cast<int>(threadIdx.x % 32u);
    const int warp = static_cast<int>(threadIdx.x / 32u);
    const int vector = static_cast<int>(blockIdx.x) * kEncodeWarps + warp;
    if (vector >= a.n_vectors) return;  // whole warps
    const int per_kind = a.n_vectors / 2;
    const bool is_v = vector >= per_kind;
    const int row = is_v ? vector - per_kind : vector;  // t * n_kv + head
    const float* x = (is_v ? a.v : a.k) + static_cast<int64_t>(row) * a.d;
    const float* r = a.rotated + static_cast<int64_t>(vector) * a.d;

    double sum_squares = 0.0;
    bool finite = true;
    for (int i = lane; i < a.d; i += 32) {
        const float value = x[i];
        finite = finite && isfinite(value);
        sum_squares += static_cast<double>(value) * value;
    }
    for (int off = 16; off > 0; off >>= 1)
        sum_squares += __shfl_xor_sync(0xffffffffu, sum_squares, off);
    finite = __all_sync(0xffffffffu, finite);
    const float norm = finite ? static_cast<float>(sqrt(sum_squares)) : __int_as_float(0x7fc00000);

    uint8_t* indices = staged[warp];
    for (int i = lane; i < a.d; i += 32) {
        indices[i] = static_cast<uint8_t>(tq4_bucket(r[i], norm, a.boundaries));
    }
    __syncwarp();
    const int t = row / a.n_kv;
    const int head = row % a.n_kv;
    const int64_t slot = static_cast<int64_t>(a.positions[t] % a.capacity) * a.n_kv + head;
    uint8_t* dst = (is_v ? a.v_cache : a.k_cache) + slot * (a.d / 2);
    for (int b = lane; b < a.d / 2; b += 32) {
        dst[b] = static_cast<uint8_t>(indices[2 * b] | (indices[2 * b + 1] << 4));
    }
    if (lane == 0) (is_v ? a.v_norm : a.k_norm)[slot] = static_cast<uint16_t>(bf16_bits(norm));
}

constexpr int kCenterThreads = 128;

// k [tokens, row] (row = n_kv * d) -> centered [tokens, row] = k - mu; mu = center, or, when
// may_set and positions[0] == 0 (a sequence's first long write; a device value, so the launch
// holds in a captured graph), the mean over the tokens, stored to center first.
__global__ void __launch_bounds__(kCenterThreads)
    center_keys_kernel(const float* __restrict__ k, const int64_t* __restrict__ positions,
                       int tokens, int row, bool may_set, float* __restrict__ center,
                       float* __restrict__ centered) {
    wait_for_upstream();
    allow_downstream();
    const int i = static_cast<int>(blockIdx.x) * kCenterThreads + static_cast<int>(threadIdx.x);
    if (i >= row) return;
    float mu;
    if (may_set && positions[0] == 0) {
        float sum = 0.0f;  // token order, as kv_write_tq4's CPU twin
#pragma unroll 8
        for (int t = 0; t < tokens; ++t) sum = __fadd_rn(sum, k[static_cast<int64_t>(t) * row + i]);
        mu = __fdiv_rn(sum, static_cast<float>(tokens));
        center[i] = mu;
    } else {
        mu = center[i];
    }
#pragma unroll 8
    for (int t = 0; t < tokens; ++t) {
        const int64_t at = static_cast<int64_t>(t) * row + i;
        centered[at] = __fsub_rn(k[at], mu);
    }
}

// ---- few rows (decode): one warp per output column ---------------------------------------------
//
// rotate_few_rows_kernel<kEncode>: block = 8 warps = outputs n0 .. n0 + 7 of half the rows (rows
//   [16 y, 16 y + 16) of each pass of 32, blockIdx.y = y; one half for up to 16 rows); warp n
//   holds its coefficients m_k = M[n][k] in registers (lane l: k = l + 32 j), loaded before the
//   PDL wait since R never changes. Rows go through shared memory 16 at a time (rows padded to
//   d + 1 floats: lanes reading one column of 16 rows hit distinct banks); lane l sums its k of
//   every live row, then one transposing butterfly over 32 sums (31 shuffles, not 32 x 5; the
//   other 16 are zeros) leaves row l's dot in lane l.
//   With kEncode (the cache write, M = R): the rows are k then v, and instead of y the kernel
//   stores row l's index for output n: the bucket of y / norm, norm = ||x|| (fp64 sum of squares,
//   one warp per 2 rows), packed two per byte through shared memory; the blocks with blockIdx.x
//   = 0 write the norms. With k_center set, a K row is stored to shared memory less the centre
//   (decode's keys; the centre's chunks are loaded with the row's).
constexpr int kFewWarps = 8;
constexpr int kFewRows = 32;  // rows per pass
// 16-byte loads of a block's rows of a pass per thread, at most: all issued before any is stored
// to shared memory. A loop storing each load before issuing the next (32 rows a block then) made a
// pass 16 round trips to L2 in a row: 10.9 us a launch on the critical path of a decode step
// (H100, Gemma 4 over a TQ4 cache, traced), three launches a full layer.
constexpr int kFewLoads = kFewRows / 2 * kMaxHeadDim / 4 / (kFewWarps * 32);
// A pass's rows are split between blockIdx.y = 0 and 1 (kPartRows each), so that 32 query heads
// at head dim 512 take 128 blocks, not 64 on a 132-SM GPU.
constexpr int kPartRows = kFewRows / 2;

struct FewRowsArgs {
    const float* x;    // rows [0, first_v_row) from here
    const float* x_v;  // rows [first_v_row, rows) from here (the cache write's v)
    int first_v_row;
    int rows;
    int d;
    const float* rotation;
    bool transpose;  // M = R^T (y = R^T x) instead of R
    float* y;        // [rows, d] (rotation only)
    // The cache write: row g < first_v_row is k of token g / n_kv, head g % n_kv; then v alike.
    const int64_t* positions;
    int n_kv;
    int capacity;
    uint8_t* k_cache;
    uint8_t* v_cache;
    uint16_t* k_norm;
    uint16_t* v_norm;
    const float* k_center;  // null, or [n_kv, d]: subtracted from the K rows (the cache write)
    float boundaries[kTq4Levels - 1];
};

// One butterfly step: a lane keeps the half of its S * 2 sums selected by its bit S and adds the
// partner's copy of that half.
template <int S>
__device__ __forceinline__ void butterfly_step(float (&v)[kFewRows], int lane) {
    const bool upper = (lane & S) != 0;
#pragma unroll
    for (int i = 0; i < S; ++i) {
        const float send = upper ? v[i] : v[i + S];
        const float keep = upper ? v[i + S] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, S);
    }
}

// v[i] over the 32 lanes -> lane l returns the sum over lanes of v[l].
__device__ __forceinline__ float transpose_reduce(float (&v)[kFewRows], int lane) {
    static_assert(kFewRows == 32, "one butterfly step per lane bit");
    butterfly_step<16>(v, lane);
    butterfly_step<8>(v, lane);
    butterfly_step<4>(v, lane);
    butterfly_step<2>(v, lane);
    butterfly_step<1>(v, lane);
    return v[0];
}

template <bool kEncode>
__global__ void __launch_bounds__(kFewWarps * 32) rotate_few_rows_kernel(FewRowsArgs a) {
    extern __shared__ float rows_s[];  // [kPartRows][d + 1]
    __shared__ float norm_s[kFewRows];
    __shared__ uint8_t index_s[kFewRows][kFewWarps];
    const int lane = static_cast<int>(threadIdx.x % 32u);
    const int warp = static_cast<int>(threadIdx.x / 32u);
    const int n0 = static_cast<int>(blockIdx.x) * kFewWarps;
    const int n = n0 + warp;
    const int stride = a.d + 1;
    const int per_lane = a.d / 32;
    float m[kMaxHeadDim / 32];
#pragma unroll
    for (int j = 0; j < kMaxHeadDim / 32; ++j) {
        const int k = lane + 32 * j;
        m[j] = 0.0f;
        if (j < per_lane && n < a.d) {
            m[j] = a.transpose ? a.rotation[static_cast<int64_t>(k) * a.d + n]
                               : a.rotation[static_cast<int64_t>(n) * a.d + k];
        }
    }
    wait_for_upstream();
    allow_downstream();
    for (int pass0 = 0; pass0 < a.rows; pass0 += kFewRows) {
        const int row0 = pass0 + static_cast<int>(blockIdx.y) * kPartRows;
        const int count = min(kPartRows, a.rows - row0);
        if (count <= 0) break;  // block-uniform; later passes have fewer rows still
        // Load u of the thread is 16-byte chunk i = tid + u * kThreads of the pass, row i / chunks,
        // column 4 (i % chunks); both step by a constant (with a carry) from load to load.
        constexpr int kThreads = kFewWarps * 32;
        const int chunks = a.d / 4;
        const int row_step = kThreads / chunks;
        const int column_step = kThreads % chunks;
        const auto next_chunk = [&](int& r, int& c) {
            r += row_step;
            c += column_step;
            if (c >= chunks) {
                c -= chunks;
                ++r;
            }
        };
        float4 loaded[kFewLoads];
        {
            int r = static_cast<int>(threadIdx.x) / chunks;
            int c = static_cast<int>(threadIdx.x) % chunks;
#pragma unroll
            for (int u = 0; u < kFewLoads; ++u) {
                loaded[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (r < count) {
                    const int g = row0 + r;
                    const float* src = g < a.first_v_row
                                           ? a.x + static_cast<int64_t>(g) * a.d
                                           : a.x_v + static_cast<int64_t>(g - a.first_v_row) * a.d;
                    loaded[u] = *reinterpret_cast<const float4*>(src + 4 * c);
                    if (a.k_center != nullptr &&
                        g < a.first_v_row) {  // a key less its head's centre
                        const float4 mu = *reinterpret_cast<const float4*>(
                            a.k_center + static_cast<int64_t>(g % a.n_kv) * a.d + 4 * c);
                        loaded[u] =
                            make_float4(__fsub_rn(loaded[u].x, mu.x), __fsub_rn(loaded[u].y, mu.y),
                                        __fsub_rn(loaded[u].z, mu.z), __fsub_rn(loaded[u].w, mu.w));
                    }
                }
                next_chunk(r, c);
            }
        }
        __syncthreads();  // the previous pass is done with rows_s
        {
            int r = static_cast<int>(threadIdx.x) / chunks;
            int c = static_cast<int>(threadIdx.x) % chunks;
#pragma unroll
            for (int u = 0; u < kFewLoads; ++u) {
                if (r < kPartRows) {  // rows past count are stored as zeros
                    float* dst = rows_s + r * stride + 4 * c;
                    dst[0] = loaded[u].x;
                    dst[1] = loaded[u].y;
                    dst[2] = loaded[u].z;
                    dst[3] = loaded[u].w;
                }
                next_chunk(r, c);
            }
        }
        __syncthreads();
        if constexpr (kEncode) {
            // ||x|| of rows warp, warp + 8, ...: fp64 squares, summed per lane then across lanes.
            for (int r = warp; r < kPartRows; r += kFewWarps) {
                double sum = 0.0;
                bool finite = true;
                for (int k = lane; k < a.d; k += 32) {
                    const float value = rows_s[r * stride + k];
                    finite = finite && isfinite(value);
                    sum += static_cast<double>(value) * value;
                }
#pragma unroll
                for (int off = 16; off > 0; off >>= 1)
                    sum += __shfl_xor_sync(0xffffffffu, sum, off);
                finite = __all_sync(0xffffffffu, finite);
                if (lane == 0)
                    norm_s[r] = finite ? static_cast<float>(sqrt(sum)) : __int_as_float(0x7fc00000);
            }
        }
        float partial[kFewRows];
#pragma unroll
        for (int r = 0; r < kFewRows; ++r) {
            float sum = 0.0f;
            // The butterfly takes 32 rows; the block has kPartRows, `count` of them live (a
            // decode cache write has 8).
            if (r >= kPartRows || r >= count) {
                partial[r] = 0.0f;
                continue;
            }
#pragma unroll
            for (int j = 0; j < kMaxHeadDim / 32; ++j) {
                if (j < per_lane) sum = fmaf(m[j], rows_s[r * stride + lane + 32 * j], sum);
            }
            partial[r] = sum;
        }
        const float dot = transpose_reduce(partial, lane);  // row row0 + lane, output n
        if constexpr (!kEncode) {
            if (lane < count && n < a.d) a.y[static_cast<int64_t>(row0 + lane) * a.d + n] = dot;
        } else {
            __syncthreads();  // norm_s complete
            if (lane < kPartRows)  // lanes past the block's rows hold zero sums
                index_s[lane][warp] =
                    static_cast<uint8_t>(tq4_bucket(dot, norm_s[lane], a.boundaries));
            __syncthreads();
            // One thread per row: the 8 indices n0 .. n0 + 7 as 4 bytes, element 2b low.
            if (threadIdx.x < static_cast<unsigned>(count)) {
                const int r = static_cast<int>(threadIdx.x);
                const int g = row0 + r;
                const bool is_v = g >= a.first_v_row;
                const int row = is_v ? g - a.first_v_row : g;  // t * n_kv + head
                const int64_t slot =
                    static_cast<int64_t>(a.positions[row / a.n_kv] % a.capacity) * a.n_kv +
                    row % a.n_kv;
                uint32_t packed = 0;
#pragma unroll
                for (int b = 0; b < kFewWarps / 2; ++b) {
                    packed |=
                        static_cast<uint32_t>(index_s[r][2 * b] | (index_s[r][2 * b + 1] << 4))
                        << (8 * b);
                }
                uint8_t* dst = (is_v ? a.v_cache : a.k_cache) + slot * (a.d / 2) + n0 / 2;
                *reinterpret_cast<uint32_t*>(dst) = packed;
                if (blockIdx.x == 0)
                    (is_v ? a.v_norm : a.k_norm)[slot] =
                        static_cast<uint16_t>(bf16_bits(norm_s[r]));
            }
        }
    }
}

template <bool kEncode>
Status launch_few_rows(const FewRowsArgs& args, cudaStream_t stream) {
    const size_t shared = static_cast<size_t>(kPartRows * (args.d + 1)) * sizeof(float);
    KESTREL_CUDA_CHECK(cudaFuncSetAttribute(rotate_few_rows_kernel<kEncode>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared)));
    KESTREL_CUDA_CHECK(
        launch_overlapped(rotate_few_rows_kernel<kEncode>,
                          dim3(static_cast<unsigned>((args.d + kFewWarps - 1) / kFewWarps),
                               args.rows > kPartRows ? 2u : 1u),
                          dim3(kFewWarps * 32), shared, stream, args));
    return ok_status();
}

template <int BM, int BN, int TM, int TN>
Status launch_rotate(const float* x, int64_t rows, int64_t d, const float* rotation, bool transpose,
                     float* y, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>((rows + BM - 1) / BM),
                    static_cast<unsigned>((d + BN - 1) / BN));
    KESTREL_CUDA_CHECK(launch_overlapped(
        rotate_rows_kernel<BM, BN, TM, TN>, grid, dim3((BM / TM) * (BN / TN)), 0, stream, x,
        static_cast<int>(rows), static_cast<int>(d), rotation, transpose, y));
    return ok_status();
}

bool aligned16(const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

Status tq4_rotate_rows(const float* x, int64_t rows, int64_t d, const float* rotation,
                       bool transpose, float* y, cudaStream_t stream) {
    if (rows < 1 || rows >= (int64_t{1} << 31) / 512 || d < 32 || d > kMaxHeadDim || d % 32 != 0) {
        return Status(StatusCode::kInvalidArgument, "tq4_rotate_rows: " + std::to_string(rows) +
                                                        " rows of " + std::to_string(d) +
                                                        " (d a multiple of 32, at most 512)");
    }
    if (x == nullptr || rotation == nullptr || y == nullptr || !aligned16(x) ||
        !aligned16(rotation) || !aligned16(y) || x == y) {
        return Status(StatusCode::kInvalidArgument,
                      "tq4_rotate_rows: null, misaligned (16 bytes) or in-place pointers");
    }
    if (rows <= kFewRowsMax) {
        FewRowsArgs args{};
        args.x = x;
        args.x_v = x;
        args.first_v_row = static_cast<int>(rows);
        args.rows = static_cast<int>(rows);
        args.d = static_cast<int>(d);
        args.rotation = rotation;
        args.transpose = transpose;
        args.y = y;
        return launch_few_rows<false>(args, stream);
    }
    return launch_rotate<64, 64, 4, 4>(x, rows, d, rotation, transpose, y, stream);
}

size_t kv_write_tq4_scratch_bytes(int64_t n_tokens, const KvCacheTq4View& cache) {
    // The rotated K and V rows, then the centred K rows.
    return static_cast<size_t>(3 * n_tokens * cache.n_kv_heads * cache.head_dim) * sizeof(float);
}

Status kv_write_tq4(const KvCacheTq4View& cache, const int64_t* positions, int64_t n_tokens,
                    const float* k, const float* v, void* scratch, cudaStream_t stream) {
    const int64_t d = cache.head_dim;
    if (n_tokens < 1 || n_tokens > cache.capacity || cache.capacity >= (int64_t{1} << 31) ||
        cache.n_kv_heads < 1 || d < 32 || d > kMaxHeadDim || d % 32 != 0 ||
        2 * n_tokens * cache.n_kv_heads >= (int64_t{1} << 31) / 512) {
        return Status(StatusCode::kInvalidArgument,
                      "kv_write_tq4: " + std::to_string(n_tokens) +
                          " tokens into a cache of capacity " + std::to_string(cache.capacity) +
                          ", " + std::to_string(cache.n_kv_heads) + " kv heads x " +
                          std::to_string(d) + " (head dim a multiple of 32, at most 512)");
    }
    if (positions == nullptr || k == nullptr || v == nullptr || scratch == nullptr ||
        cache.k == nullptr || cache.v == nullptr || cache.k_norm == nullptr ||
        cache.v_norm == nullptr || cache.rotation == nullptr || !aligned16(k) || !aligned16(v) ||
        !aligned16(scratch) || !aligned16(cache.k) || !aligned16(cache.v) ||
        (cache.k_center != nullptr && !aligned16(cache.k_center))) {
        return Status(StatusCode::kInvalidArgument,
                      "kv_write_tq4: null pointer, or k / v / scratch / cache / centre not "
                      "16-byte aligned");
    }
    const int64_t rows = n_tokens * cache.n_kv_heads;
    const std::array<float, kTq4Levels - 1> boundaries = tq4_boundaries(d);
    const bool few_rows = 2 * rows <= kFewRowsMax;
    // Key centring (ops/kv_tq4.h): a write that may set the centre, or too many rows for the
    // few-rows kernel's own subtraction, goes through center_keys_kernel; a decode step's keys
    // lose the centre inside rotate_few_rows_kernel.
    const bool may_set_center = n_tokens >= kTq4CenterMinTokens;
    const float* keys = k;
    if (cache.k_center != nullptr && (may_set_center || !few_rows)) {
        float* centered = static_cast<float*>(scratch) + 2 * rows * d;
        const int64_t row = cache.n_kv_heads * d;
        KESTREL_CUDA_CHECK(launch_overlapped(
            center_keys_kernel,
            dim3(static_cast<unsigned>((row + kCenterThreads - 1) / kCenterThreads)),
            dim3(kCenterThreads), 0, stream, k, positions, static_cast<int>(n_tokens),
            static_cast<int>(row), may_set_center, cache.k_center, centered));
        keys = centered;
    }
    if (few_rows) {  // decode: rotation and encoding in one launch
        FewRowsArgs args{};
        args.x = keys;
        args.x_v = v;
        args.first_v_row = static_cast<int>(rows);
        args.rows = static_cast<int>(2 * rows);
        args.d = static_cast<int>(d);
        args.rotation = cache.rotation;
        args.positions = positions;
        args.n_kv = static_cast<int>(cache.n_kv_heads);
        args.capacity = static_cast<int>(cache.capacity);
        args.k_cache = cache.k;
        args.v_cache = cache.v;
        args.k_norm = cache.k_norm;
        args.v_norm = cache.v_norm;
        args.k_center = keys == k ? cache.k_center : nullptr;
        std::copy(boundaries.begin(), boundaries.end(), args.boundaries);
        return launch_few_rows<true>(args, stream);
    }
    float* rotated = static_cast<float*>(scratch);
    if (v == keys + rows * d) {  // q | k | v of one stacked projection: one launch turns both
        KESTREL_RETURN_IF_ERROR(
            tq4_rotate_rows(keys, 2 * rows, d, cache.rotation, false, rotated, stream));
    } else {
        KESTREL_RETURN_IF_ERROR(
            tq4_rotate_rows(keys, rows, d, cache.rotation, false, rotated, stream));
        KESTREL_RETURN_IF_ERROR(
            tq4_rotate_rows(v, rows, d, cache.rotation, false, rotated + rows * d, stream));
    }
    EncodeArgs args{};
    args.k = keys;
    args.v = v;
    args.rotated = rotated;
    args.positions = positions;
    args.k_cache = cache.k;
    args.v_cache = cache.v;
    args.k_norm = cache.k_norm;
    args.v_norm = cache.v_norm;
    args.n_vectors = static_cast<int>(2 * rows);
    args.n_kv = static_cast<int>(cache.n_kv_heads);
    args.d = static_cast<int>(d);
    args.capacity = static_cast<int>(cache.capacity);
    std::copy(boundaries.begin(), boundaries.end(), args.boundaries);
    const int64_t blocks = (2 * rows + kEncodeWarps - 1) / kEncodeWarps;
    KESTREL_CUDA_CHECK(launch_overlapped(tq4_encode_kernel, dim3(static_cast<unsigned>(blocks)),
                                         dim3(kEncodeWarps * 32), 0, stream, args));
    return ok_status();
}

}  // namespace kestrel::cuda
