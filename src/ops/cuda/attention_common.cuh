// The flash-attention core shared by the prefill (attention_prefill.cu) and decode
// (attention_decode.cu) kernels, their argument block and the host-side argument check.
//
// One block owns 16 * kRowGroups "packed" query rows of one kv head: packed row r is token
// r / group, query head kv_head * group + r % group (GQA: every query head of a kv head shares
// the block's K/V tiles, read once). It walks one key range [key_begin, key_end) in tiles of
// kKeys keys (FA2, Dao 2023, online softmax in base 2):
//   S = scale * Q K^T (softcap)   mma.sync m16n8k16 bf16 -> fp32; q rounded to bf16 on load
//   m' = max(m, rowmax S); P = 2^(S log2e - m'); l = l 2^(m - m') + rowsum P;
//   O = O 2^(m - m') + P V
// Warp layout: kRowGroups x kColSplit warps. The kColSplit warps of a row group each compute S
// for kKeys / kColSplit of the tile's keys and O for head_dim / kColSplit of the output
// columns, exchanging row maxima and P (bf16) through shared memory, so O stays in registers at
// head dim 512 (16 x 256 fp32 per warp with kColSplit = 2) and no product is computed twice.
// K/V tiles are double (prefill) or triple (decode) buffered with cp.async (zero-filled past the
// range and past the head dim, so padding contributes exact zeros); a key's ring slot is
// key % capacity. Shared-memory rows are padded by 16 bytes so ldmatrix's eight row addresses hit
// distinct banks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <string>

#include "kestrel/status.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/attention_decode_inputs.cuh"
#include "ops/cuda/attention_inputs.h"  // AttentionInputs
#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/launch.cuh"  // wait_for_upstream
#include "ops/kv_tq4.h"

namespace kestrel::cuda {

// Split-K decode: at least this many keys per split (one K/V tile of the head-512 kernel), at
// most kDecodeMaxSplits splits, and no more blocks than kDecodeTargetBlocks (one block per SM:
// its shared memory is ~210 KiB with three stages). Short contexts are latency-bound, so they
// spread over many blocks: on the H100, Gemma 4's full layers (4 kv heads) at depth 512 took
// 21 us with 128 keys per split (16 blocks). Not over every SM, though: with 99 (three quarters
// of an H100's 132) a sliding layer's window over 16 kv heads takes 6 splits and a full layer 24,
// and Gemma 4 decoded at 115.8 / 115.9 tok/s at depth 32768 against 114.4 with 132 (8 and 33
// splits), the same at depth 512 (130.9 / 131.1 against 131.1 / 131.0); 66 gave 131.6 at 512 but
// 108.7 at 32768, 264 and 528 127.9 and 126.7 at 512 (H100, 2026-11-24, tg128). Likely why (not
// profiled): the SMs left free take the reduce's and the o-projection's blocks as they launch
// early (PDL). The TQ4 splits' kernel has its own target (kTq4DecodeTargetBlocks,
// attention_decode_tq4.h).
constexpr int kDecodeMinKeysPerSplit = 32;
constexpr int kDecodeMaxSplits = 128;
constexpr int kDecodeTargetBlocks = 99;
// A decode call is one split, a single pass that writes the output itself with no partials and
// nothing for the reduce kernel to do, while each block's K and V are at most this many bytes:
// decode_single_pass_keys() keys. Measured on the H100 under graph replay
// (bench/attention_bench.cu, us for split-K + reduce vs single pass): head 256 (16 kv heads)
// 64 keys 7.96 vs 7.03, 128 keys 8.43 vs 9.82; head 512 (4 kv heads) 32 keys 10.69 vs 10.67,
// 64 keys 11.65 vs 13.72: the crossover is at 64 KiB per block in both.
constexpr int64_t kDecodeSinglePassBytes = 64 * 1024;
// Live keys up to which a decode call makes a single pass: kDecodeSinglePassBytes of bf16 K and V
// per key, or KESTREL_DECODE_SINGLE_PASS_KEYS from the environment (to measure).
int decode_single_pass_keys(int64_t head_dim, int64_t v_head_dim);

// Everything a kernel needs, by value. Sizes fit int: the host checks them.
struct AttentionKernelArgs {
    const float* q = nullptr;             // [T, n_heads, head_dim]
    const int64_t* positions = nullptr;   // [T], device
    const uint16_t* k_cache = nullptr;    // [capacity, n_kv_heads, head_dim] bf16
    const uint16_t* v_cache = nullptr;    // [capacity, n_kv_heads, v_head_dim] bf16
    // A TQ4 cache (kv_tq4.h) instead: k_tq4 / v_tq4 the 4-bit indices [capacity, n_kv_heads,
    // head_dim / 2], k_norm / v_norm the bf16 norms [capacity, n_kv_heads], tq4_levels the
    // codebook; q and out are then in the rotated space. Null k_tq4: the bf16 cache above.
    const uint8_t* k_tq4 = nullptr;
    const uint8_t* v_tq4 = nullptr;
    const uint16_t* k_norm = nullptr;
    const uint16_t* v_norm = nullptr;
    float tq4_levels[16] = {};
    float* out = nullptr;  // [T, n_heads, v_head_dim]; decode: may be null with out_q8
    Q8Block* out_q8 =
        nullptr;  // decode: null, or the Q8 blocks of out [T, n_heads * v_head_dim / 32]
    float* partial_acc = nullptr;         // decode: [max_splits, T * n_heads, v_head_dim], unnormalised O
    float* partial_ml = nullptr;  // decode: [max_splits, T * n_heads, 2]: (m in log2 units, l)
    // bf16 decode launched in clusters of max_splits blocks (attention_decode.cu): the splits
    // combine through distributed shared memory instead of the partials and the reduce kernel.
    bool cluster_combine = false;
    int n_tokens = 0;
    int n_heads = 0;
    int n_kv_heads = 0;
    int group = 0;  // n_heads / n_kv_heads
    int head_dim = 0;
    int v_head_dim = 0;
    int capacity = 0;
    int window = 0;
    int max_splits = 1;
    int single_pass_keys = 0;  // decode: one split up to this many live keys
    float scale = 1.0f;
    float softcap = 0.0f;
};

// The kernels are compiled for these padded head dims; a smaller head dim is zero-padded.
inline int attention_padded_head_dim(int64_t head_dim, int64_t v_head_dim) {
    const int64_t d = head_dim > v_head_dim ? head_dim : v_head_dim;
    return d <= 64 ? 64 : d <= 128 ? 128 : d <= 256 ? 256 : 512;
}

inline bool attention_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Shapes and pointers both launchers require (see attention.h).
inline Status check_attention_arguments(const char* what, const float* q, const int64_t* positions,
                                        int64_t n_tokens, const KvCacheBf16View& cache,
                                        const AttentionShape& shape, const void* out) {
    const auto fail = [&](const std::string& message) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": " + message);
    };
    if (n_tokens < 1 || n_tokens > (int64_t{1} << 24)) return fail("n_tokens " + std::to_string(n_tokens));
    if (cache.n_kv_heads < 1 || cache.n_kv_heads > 65535 || shape.n_heads < cache.n_kv_heads ||
        shape.n_heads % cache.n_kv_heads != 0 || shape.n_heads > 4096) {
        return fail(std::to_string(shape.n_heads) + " query heads over " + std::to_string(cache.n_kv_heads) +
                    " kv heads (needs a whole number of query heads per kv head)");
    }
    for (const int64_t d : {cache.head_dim, cache.v_head_dim}) {
        // Rows are loaded in 8-element (16-byte) chunks masked by the real head dim, so any
        // multiple of 16 works; the tiny test fixtures use 16.
        if (d < 16 || d > 512 || d % 16 != 0) {
            return fail("head dims " + std::to_string(cache.head_dim) + " / " + std::to_string(cache.v_head_dim) +
                        " (each a multiple of 16, at most 512)");
        }
    }
    if (cache.capacity < 1 || cache.capacity >= (int64_t{1} << 31)) return fail("capacity " + std::to_string(cache.capacity));
    if (shape.window < 0 || shape.window >= (int64_t{1} << 31)) return fail("window " + std::to_string(shape.window));
    if (!(shape.softcap >= 0.0f) || !(shape.scale == shape.scale)) return fail("softcap must be >= 0 and scale a number");
    if (n_tokens * shape.n_heads >= (int64_t{1} << 31)) return fail("too many query rows");  // int row indices
    if (q == nullptr || positions == nullptr || cache.k == nullptr || cache.v == nullptr || out == nullptr ||
        !attention_aligned16(q) || !attention_aligned16(cache.k) || !attention_aligned16(cache.v) ||
        !attention_aligned16(out)) {
        return fail("null pointer, or q / cache / out not 16-byte aligned");
    }
    return ok_status();
}

// What the TQ4 kernels need beyond check_attention_arguments of the shadow view.
inline Status check_tq4_cache(const char* what, const KvCacheTq4View& cache,
                              const AttentionShape& shape) {
    if (cache.head_dim < 32 || cache.head_dim > 512 || cache.head_dim % 32 != 0) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": TQ4 head dim " +
                                                        std::to_string(cache.head_dim) +
                                                        " (a multiple of 32, at most 512)");
    }
    if (cache.k_norm == nullptr || cache.v_norm == nullptr ||
        reinterpret_cast<uintptr_t>(cache.k_norm) % 2 != 0 ||
        reinterpret_cast<uintptr_t>(cache.v_norm) % 2 != 0) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": null or misaligned TQ4 norms");
    }
    if (cache.k_center != nullptr && shape.softcap > 0.0f) {
        // A centred key moves every score by q . mu; a softcap would not move them alike.
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": a centred TQ4 cache under softcapped scores");
    }
    return ok_status();
}

inline void set_tq4_arguments(const KvCacheTq4View& cache, AttentionKernelArgs& a) {
    a.k_tq4 = cache.k;
    a.v_tq4 = cache.v;
    a.k_norm = cache.k_norm;
    a.v_norm = cache.v_norm;
    const std::array<float, kTq4Levels> levels = tq4_levels(cache.head_dim);
    for (int i = 0; i < kTq4Levels; ++i) a.tq4_levels[i] = levels[i];
}

inline AttentionKernelArgs make_attention_kernel_args(const float* q, const int64_t* positions, int64_t n_tokens,
                                                      const KvCacheBf16View& cache, const AttentionShape& shape,
                                                      float* out) {
    AttentionKernelArgs a;
    a.q = q;
    a.positions = positions;
    a.k_cache = cache.k;
    a.v_cache = cache.v;
    a.out = out;
    a.n_tokens = static_cast<int>(n_tokens);
    a.n_heads = static_cast<int>(shape.n_heads);
    a.n_kv_heads = static_cast<int>(cache.n_kv_heads);
    a.group = static_cast<int>(shape.n_heads / cache.n_kv_heads);
    a.head_dim = static_cast<int>(cache.head_dim);
    a.v_head_dim = static_cast<int>(cache.v_head_dim);
    a.capacity = static_cast<int>(cache.capacity);
    a.window = static_cast<int>(shape.window);
    a.scale = shape.scale;
    a.softcap = shape.softcap;
    return a;
}

// One decode token's attention inputs (attention_inputs.h) as the fused decode kernels take them
// (attention_decode_inputs.cuh), writing the token's rows to `cache`.
inline DecodeInputsArgs make_decode_inputs_args(const AttentionInputs& inputs,
                                                const KvCacheBf16View& cache,
                                                const float* inv_freq) {
    DecodeInputsArgs fused;
    fused.k_raw = inputs.k;
    fused.v_raw = inputs.v;
    fused.q_norm = inputs.q_norm;
    fused.k_norm = inputs.k_norm;
    fused.k_cache = cache.k;
    fused.v_cache = cache.v;
    fused.eps = inputs.eps;
    fused.rotary_pairs = static_cast<int>(inputs.rotary_pairs);
    fused.v_from_raw_k = inputs.v_from_raw_k;
    fused.v_norm = inputs.v_norm;
    fused.q_norm_vec4 = attention_aligned16(inputs.q_norm);
    fused.k_norm_vec4 = attention_aligned16(inputs.k_norm);
    fused.inv_freq = inv_freq;
    return fused;
}

// The TQ4 prefill kernel on Hopper's warpgroup MMA, for head dim 512 (when to use it:
// attention_prefill_tq4_wgmma.h).
Status launch_attention_prefill_tq4_wgmma(const AttentionKernelArgs& args, cudaStream_t stream);

// ---- device side ------------------------------------------------------------------------------

// The first key position a query at `position` sees (cpu::first_visible_position).
__host__ __device__ inline int attention_first_visible(int position, int window) {
    return window > 0 ? (position - window + 1 > 0 ? position - window + 1 : 0) : 0;
}

// The keys packed query row `packed` sees: lo <= key <= hi, hi clipped to the call's last key
// (key_end - 1); none (hi = -1) for a padding row past the call's rows.
__device__ __forceinline__ void visible_keys(const AttentionKernelArgs& a, int packed, int key_end,
                                             int& lo, int& hi) {
    const int position =
        packed < a.n_tokens * a.group ? static_cast<int>(a.positions[packed / a.group]) : -1;
    lo = a.window > 0 ? position - a.window + 1 : 0;
    hi = position < key_end - 1 ? position : key_end - 1;
}

// Splits a decode call uses for `n_keys` live keys (the same on every block and in the reduce).
__host__ __device__ inline int decode_splits_used(int n_keys, int max_splits,
                                                  int single_pass_keys) {
    if (n_keys <= single_pass_keys) return 1;
    int splits = (n_keys + kDecodeMinKeysPerSplit - 1) / kDecodeMinKeysPerSplit;
    if (splits > max_splits) splits = max_splits;
    return splits < 1 ? 1 : splits;
}

// The keys of a whole decode call: from the first key its first token sees to its last token.
__device__ __forceinline__ void decode_key_span(const AttentionKernelArgs& a, int& lo, int& hi) {
    lo = attention_first_visible(static_cast<int>(a.positions[0]), a.window);
    hi = static_cast<int>(a.positions[a.n_tokens - 1]) + 1;
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // RNE; .x (lo) in the low half
    return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t shared_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ldmatrix: lane i gives the address of row i % 8 of matrix i / 8; register j receives matrix j
// as lane l holding row l / 4, columns 2 (l % 4) and +1 (.trans: the transposed matrix).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const uint16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(shared_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

// d += a (16x16, row-major) * b (16x8, column-major), bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared, asynchronously; `valid` false writes 16 zero bytes instead.
__device__ __forceinline__ void cp_async_16(uint16_t* shared, const uint16_t* global, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)), "l"(global),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_16_bytes(unsigned char* shared, const uint8_t* global,
                                                  bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)),
                 "l"(global), "r"(valid ? 16 : 0)
                 : "memory");
}
// Entry `byte` of one lane's copy of the TQ4 byte -> bf16 pair table (flash_attend): lane_table
// is the shared-space address of the copy's first entry, its entries lie kCopies words apart. One
// address instruction (the byte shifted onto the base) before the load, not an index multiply
// and a separate conversion to bytes.
template <int kCopies>
__device__ __forceinline__ uint32_t tq4_pair(uint32_t lane_table, uint32_t byte) {
    uint32_t pair;
    asm("ld.shared.b32 %0, [%1];\n" : "=r"(pair) : "r"(lane_table + byte * (4 * kCopies)));
    return pair;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
// Waits until at most kPending of the thread's newest commit groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait_pending() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Barrier for the `threads` threads of one row group (barrier 0 is __syncthreads).
__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Signals named barrier `id` without waiting (the waiters use named_barrier with the same count).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// kBf16Stages: K/V tile stages over a bf16 cache (kBf16Stages - 1 tiles in flight while one is
// computed). Decode uses 3 (it has the shared memory: one block per SM). Measured on the H100
// (bench/attention_bench.cu, head dim 512, 4 kv heads, depth 32768): with 2 stages and a modulo
// per key 137.1 us; 3 stages alone did not move the decode step (Gemma 4 at that depth 106.55 ->
// 106.66 tok/s); 3 stages with the per-tile slot stepping of load_tile 122.9 us.
template <int kHeadDimPad, int kRowGroups, int kColSplit, int kBf16Stages = 2>
struct FlashConfig {
    static constexpr int kHeadDim = kHeadDimPad;
    static constexpr int kGroups = kRowGroups;
    static constexpr int kSplit = kColSplit;
    static constexpr int kStages = kBf16Stages;
    static constexpr int kRows = 16 * kRowGroups;             // packed query rows per block
    static constexpr int kKeys =
        kHeadDimPad >= 512 ? 32 : 64;  // keys per K/V tile (a K + V stage ~ 66 KiB)
    static constexpr int kWarps = kRowGroups * kColSplit;
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kStride = kHeadDimPad + 8;            // bf16 per Q/K/V shared row
    static constexpr int kPStride = kKeys + 8;                 // bf16 per P shared row
    static constexpr int kKeysPerWarp = kKeys / kColSplit;     // S columns of one warp
    static constexpr int kColsPerWarp = kHeadDimPad / kColSplit;  // O columns of one warp
    static constexpr int kKeyTiles = kKeysPerWarp / 8;
    static constexpr int kColTiles = kColsPerWarp / 8;
    static constexpr int kChunks = kHeadDimPad / 8;            // 16-byte chunks per K/V row
    // Q fragments in registers (64 at head dim 256) unless that would spill next to O.
    static constexpr bool kQInRegisters = kHeadDimPad <= 256;

    static constexpr int kQBytes = kRows * kStride * 2;
    static constexpr int kTileBytes = kKeys * kStride * 2;
    static constexpr int kPBytes = kRows * kPStride * 2;
    static constexpr int kReduceBytes = kRowGroups * kColSplit * 16 * 4;
    static constexpr int kSharedBytes =
        kQBytes + 2 * kStages * kTileBytes + kPBytes + 2 * kReduceBytes;
    // A TQ4 cache (prefill; decode has its own kernel, attention_decode_tq4.cu): one stage of
    // bf16 K/V tiles, then the next tile before dequantisation (K and V index bytes [kKeys]
    // [kHeadDimPad / 2] each), which is the double buffer, then two tiles' K and V norms (fp32
    // [2][2][kKeys]).
    static constexpr int kTq4RawRowBytes = kHeadDimPad / 2;
    static constexpr int kTq4RawBytes = 2 * kKeys * kTq4RawRowBytes + 2 * 2 * kKeys * 4;
    static constexpr int kTq4RawOffset = kQBytes + 2 * kTileBytes + kPBytes + 2 * kReduceBytes;
    static constexpr int kTq4SharedBytes = kTq4RawOffset + kTq4RawBytes;
    // Copies of the TQ4 byte -> bf16 pair table (flash_attend), one per lane: a warp's 32 lookups
    // of random bytes then never share a bank. With 8 copies (four lanes a copy) most lookups
    // took two or three shared-memory wavefronts, the largest share of the TQ4 kernels' traffic
    // (ncu, H100: shared memory ~79% busy in both).
    static constexpr int kTq4TableCopies = 32;
    static constexpr int kTq4TableBytes = 256 * kTq4TableCopies * 4;

    static_assert(kKeysPerWarp % 8 == 0 && kColsPerWarp % 16 == 0 && kKeys % 16 == 0);
    static_assert(kThreads % kChunks == 0, "each thread loads one fixed 16-byte column of the K/V rows");
    static_assert(kStages >= 2 && kSharedBytes <= 227 * 1024);
    static_assert(kTq4SharedBytes + kTq4TableBytes + 1024 <= 227 * 1024);
    static_assert(kTq4RawRowBytes % 16 == 0, "a raw row is whole 16-byte cp.async chunks");
};

// The running state of the thread's two rows (warp rows lane / 4 and lane / 4 + 8): O columns
// (fragment layout), max m (log2 units), sum l.
template <class C>
struct FlashState {
    float o[C::kColTiles][4];
    float m[2];
    float l[2];
};

// Runs the block over keys [key_begin, key_end) for packed rows [row0, row0 + kRows) of kv_head.
// On return every warp of a row group holds the same m and the full l of its rows, and its own
// O columns [col_part * kColsPerWarp, +kColsPerWarp). Contains __syncthreads: call from all
// threads. kTq4: the K/V tiles come from a TQ4 cache (a.k_tq4, ...): the next tile's index
// bytes are copied with cp.async into a raw area (C::kTq4RawOffset) and its norms loaded into
// registers while the current tile is computed; after it, every thread dequantises 8-element
// chunks (consecutive threads, consecutive 16-byte stores: no bank conflicts) into the single
// stage as the bare levels bf16(level); a key's norm scales its score, a value's norm the
// probability that multiplies it (bf16(p * norm_v) in P V; l sums the plain p). Decode over a TQ4
// cache has its own kernel (attention_decode_tq4.cu).
//
// early_keys_end < 0: the caller has waited for the previous kernel (launch.cuh). Otherwise it
// has not, and keys below early_keys_end are older than this step (no kernel of the step writes
// them, and no later one can have started: launch.cuh): if the first tiles hold only such keys
// they are issued before wait_for_upstream(), so their DRAM latency overlaps the previous
// kernel's tail (which then is the only one still running).
//
// kFusedInputs (decode of one token over a bf16 cache, head dim 256 or 512; `inputs` set): a.q
// holds the raw q rows, and the token's attention inputs are done here
// (attention_decode_inputs.cuh): the Q tile from the raw rows, and, in the block whose keys hold
// the token's own key, its k and v rows into the cache and into that key's tile row, over
// whatever the tile's copy of the slot brought. No tile then depends on the previous kernel,
// so the caller passes an early_keys_end past every key.
template <class C, bool kTq4 = false, bool kFusedInputs = false>
__device__ __forceinline__ void flash_attend(const AttentionKernelArgs& a, int kv_head, int row0,
                                             int key_begin, int key_end, unsigned char* shared,
                                             FlashState<C>& st, int early_keys_end = -1,
                                             const DecodeInputsArgs* inputs = nullptr) {
    static_assert(!kFusedInputs || (!kTq4 && (C::kHeadDim == 256 || C::kHeadDim == 512)),
                  "fused inputs: bf16 cache, each lane's RoPE pairs in its own chunks");
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int row_group = warp / C::kSplit;
    const int col_part = warp % C::kSplit;
    const int g = lane >> 2;  // fragment row (and +8)
    const int c = lane & 3;   // fragment column pair
    const int rows_total = a.n_tokens * a.group;

    uint16_t* q_s = reinterpret_cast<uint16_t*>(shared);
    // Stage s: K tile at kQBytes + 2 s kTileBytes, V tile right after it.
    const auto k_s = [&](int stage) { return reinterpret_cast<uint16_t*>(shared + C::kQBytes + 2 * stage * C::kTileBytes); };
    const auto v_s = [&](int stage) {
        return reinterpret_cast<uint16_t*>(shared + C::kQBytes + (2 * stage + 1) * C::kTileBytes);
    };
    // C::kStages stages of K/V tiles on a bf16 cache; one on a TQ4 cache (its raw tile is the
    // other).
    constexpr int kStageTiles = 2 * (kTq4 ? 1 : C::kStages);
    uint16_t* p_s = reinterpret_cast<uint16_t*>(shared + C::kQBytes + kStageTiles * C::kTileBytes);
    float* red_max =
        reinterpret_cast<float*>(shared + C::kQBytes + kStageTiles * C::kTileBytes + C::kPBytes);
    float* red_sum = red_max + C::kGroups * C::kSplit * 16;

    // K/V tile of keys [k0, k0 + kKeys): thread tid always loads 16-byte column tid % kChunks.
    // Its keys are j = tid / kChunks + kKeyStep * step; their ring slots step from one modulo per
    // tile (a modulo per key was much of the decode kernel's instruction count, which, with one
    // block of 4 warps per SM, is what bounds it: ncu at depth 32768, head dim 512).
    const int chunk = tid % C::kChunks;
    const bool k_column = chunk * 8 < a.head_dim;
    const bool v_column = chunk * 8 < a.v_head_dim;
    constexpr int kKeyStep = C::kThreads / C::kChunks;
    constexpr int kLoadSteps = (C::kKeys + kKeyStep - 1) / kKeyStep;
    const int first_key = tid / C::kChunks;
    const uint16_t* k_column_base =
        a.k_cache + static_cast<int64_t>(kv_head) * a.head_dim + chunk * 8;
    const uint16_t* v_column_base =
        a.v_cache + static_cast<int64_t>(kv_head) * a.v_head_dim + chunk * 8;
    const int64_t k_slot_stride = static_cast<int64_t>(a.n_kv_heads) * a.head_dim;
    const int64_t v_slot_stride = static_cast<int64_t>(a.n_kv_heads) * a.v_head_dim;
    const auto load_tile = [&](int stage, int k0) {
        int slot = (k0 + first_key) % a.capacity;
#pragma unroll
        for (int step = 0; step < kLoadSteps; ++step) {
            const int j = first_key + step * kKeyStep;
            if (j >= C::kKeys) break;
            const bool in_range = k0 + j < key_end;
            const bool k_ok = in_range && k_column;
            const bool v_ok = in_range && v_column;
            cp_async_16(k_s(stage) + j * C::kStride + chunk * 8,
                        k_ok ? k_column_base + slot * k_slot_stride : a.k_cache, k_ok);
            cp_async_16(v_s(stage) + j * C::kStride + chunk * 8,
                        v_ok ? v_column_base + slot * v_slot_stride : a.v_cache, v_ok);
            slot += kKeyStep;
            while (slot >= a.capacity) slot -= a.capacity;
        }
    };

    // TQ4: issue_tq4 starts the copy of tile [k0, k0 + kKeys)'s index bytes (zeros past the range
    // and past the head dim) and loads the norm of thread tid's key (K for tid < kKeys, V for the
    // next kKeys; 0 past the range); dequantise_tq4 turns the raw tile into the stage as the bare
    // codebook levels, bf16(level), two per index byte from a table of every byte's pair (a copy
    // per lane: FlashConfig::kTq4TableCopies). The norms stay out of the tiles: they scale each
    // key's score and each value's probability (below), which saves a multiply and a conversion per
    // element.
    constexpr int kCopies = C::kTq4TableCopies;
    __shared__ uint32_t pair_table[kTq4 ? 256 * kCopies : 1];
    unsigned char* raw_k = shared + C::kTq4RawOffset;
    unsigned char* raw_v = raw_k + C::kKeys * C::kTq4RawRowBytes;
    // [tile parity][K norms [kKeys], V norms [kKeys]]: the current tile's stay readable while the
    // next one's are stored.
    float* tile_norms = reinterpret_cast<float*>(raw_v + C::kKeys * C::kTq4RawRowBytes);
    float norm_carry = 0.0f;
    // As load_tile: the thread's 16-byte part is fixed, its keys step by kRawKeyStep from one
    // modulo per tile.
    constexpr int kRawChunks = C::kTq4RawRowBytes / 16;
    static_assert(C::kThreads % kRawChunks == 0, "each thread copies one fixed part of raw rows");
    constexpr int kRawKeyStep = C::kThreads / kRawChunks;
    constexpr int kRawSteps = (C::kKeys + kRawKeyStep - 1) / kRawKeyStep;
    const int raw_part = tid % kRawChunks;
    const int raw_first_key = tid / kRawChunks;
    const bool raw_column = raw_part * 32 < a.head_dim;
    const int64_t raw_slot_stride = static_cast<int64_t>(a.n_kv_heads) * (a.head_dim / 2);
    const int64_t raw_column_offset =
        static_cast<int64_t>(kv_head) * (a.head_dim / 2) + raw_part * 16;
    // A TQ4 cache is a full layer's: a key's slot is the key itself unless the cache is a ring
    // that has wrapped, so the modulo is a branch seldom taken (the step-and-subtract of load_tile
    // cost a loop per key here: ~200 of ~1150 instructions a tile when this core also ran TQ4
    // decode).
    const auto slot_of = [&](int key) { return key < a.capacity ? key : key % a.capacity; };
    const auto issue_tq4 = [&](int k0) {
#pragma unroll
        for (int step = 0; step < kRawSteps; ++step) {
            const int j = raw_first_key + step * kRawKeyStep;  // raw_first_key < kRawKeyStep
            if (C::kKeys % kRawKeyStep != 0 && j >= C::kKeys) break;
            const bool valid = k0 + j < key_end && raw_column;
            const int64_t offset =
                valid ? raw_column_offset + slot_of(k0 + j) * raw_slot_stride : 0;
            cp_async_16_bytes(raw_k + j * C::kTq4RawRowBytes + raw_part * 16, a.k_tq4 + offset,
                              valid);
            cp_async_16_bytes(raw_v + j * C::kTq4RawRowBytes + raw_part * 16, a.v_tq4 + offset,
                              valid);
        }
        norm_carry = 0.0f;
        if (tid < 2 * C::kKeys) {
            const int key = k0 + tid % C::kKeys;
            if (key < key_end) {
                const int64_t row = static_cast<int64_t>(slot_of(key)) * a.n_kv_heads + kv_head;
                const uint16_t bits = __ldg((tid < C::kKeys ? a.k_norm : a.v_norm) + row);
                norm_carry = bf16_bits_to_float(bits);
            }
        }
    };
    const auto dequantise_tq4 = [&](int tile) {
        cp_async_wait_all();
        if (tid < 2 * C::kKeys) tile_norms[(tile & 1) * 2 * C::kKeys + tid] = norm_carry;
        __syncthreads();  // the raw tile and its norms visible; every warp done with the stage
        // Thread tid's 8-element chunk of each row is fixed (kThreads is a multiple of the row's
        // chunks); its rows step by kRowStep, K's then V's, in a loop the compiler unrolls, so
        // every address is a constant offset from two bases.
        constexpr int kRowChunks = C::kHeadDim / 8;
        constexpr int kRowStep = C::kThreads / kRowChunks;
        static_assert(C::kKeys % kRowStep == 0, "whole steps of rows per tile");
        constexpr int kSteps = C::kKeys / kRowStep;
        const uint32_t table = shared_address(pair_table + lane);
        const int part = tid % kRowChunks;
        const int first_row = tid / kRowChunks;
        // Columns past the head dim hold index bytes 0 (zero-filled copies), so level 0 there:
        // finite, multiplied by Q's zero columns in Q K^T, and in P V landing in output columns
        // that are never stored. No branch per chunk. raw_v follows raw_k and v_s(0) follows
        // k_s(0) by kKeys rows: V's steps go on from K's.
        static_assert(!kTq4 || C::kTileBytes == C::kKeys * C::kStride * 2,
                      "V's tile right after K's");
        const unsigned char* raw_chunk = raw_k + first_row * C::kTq4RawRowBytes + part * 4;
        uint16_t* stage_chunk = k_s(0) + first_row * C::kStride + part * 8;
#pragma unroll
        for (int step = 0; step < 2 * kSteps; ++step) {
            const uint32_t bytes = *reinterpret_cast<const uint32_t*>(
                raw_chunk + step * kRowStep * C::kTq4RawRowBytes);
            const uint4 packed = make_uint4(tq4_pair<kCopies>(table, bytes & 0xffu),
                                            tq4_pair<kCopies>(table, (bytes >> 8) & 0xffu),
                                            tq4_pair<kCopies>(table, (bytes >> 16) & 0xffu),
                                            tq4_pair<kCopies>(table, bytes >> 24));
            *reinterpret_cast<uint4*>(stage_chunk + step * kRowStep * C::kStride) = packed;
        }
    };

    const int n_tiles = key_end > key_begin ? (key_end - key_begin + C::kKeys - 1) / C::kKeys : 0;
    bool waited = early_keys_end < 0;
    const int prologue_end = key_begin + (kTq4 ? 1 : C::kStages - 1) * C::kKeys;
    if (!waited && min(prologue_end, key_end) > early_keys_end) {
        wait_for_upstream();
        waited = true;
    }
    if constexpr (kTq4) {
        // Byte b holds elements 2i (low nibble) and 2i + 1: the bf16 pair (low half first) of
        // their levels, as pack_bf16x2 rounds them.
        // Through 16 shared floats first: indexing the parameter array per thread would serialise
        // on the constant cache.
        __shared__ float levels[16];
        if (tid < 16) levels[tid] = a.tq4_levels[tid];
        __syncthreads();
        // Four copies a 16-byte store.
        for (int i = tid; i < 256 * kCopies / 4; i += C::kThreads) {
            const int byte = i / (kCopies / 4);
            const uint32_t pair = pack_bf16x2(levels[byte & 0x0f], levels[byte >> 4]);
            reinterpret_cast<uint4*>(pair_table)[i] = make_uint4(pair, pair, pair, pair);
        }
        if (n_tiles > 0) {
            issue_tq4(key_begin);
            cp_async_commit();
            dequantise_tq4(0);  // its barrier also publishes the table
        }
    } else {
        // One commit group per tile, empty past the last: the loop's wait counts on it.
#pragma unroll
        for (int t = 0; t < C::kStages - 1; ++t) {
            if (t < n_tiles) load_tile(t, key_begin + t * C::kKeys);
            cp_async_commit();
        }
    }

    // Fused inputs: the token's key (T = 1) and the constants of its rows, before the wait. The
    // RoPE table goes to the last stage's K tile, which the prologue leaves empty and the main
    // loop fills only after the Q tile is built.
    constexpr int kInputChunks = kFusedInputs ? C::kHeadDim / 128 : 2;
    int new_tile = -1;  // the tile holding the token's key, in the block that has it
    int64_t new_position = 0;
    float2* rotations = reinterpret_cast<float2*>(k_s(C::kStages - 1));
    float4 q_weight[kInputChunks];
    float4 k_weight[kInputChunks];
    uint2 new_row[kInputChunks];  // warp 0: the token's k row, warp 1: its v row, as bf16
    if constexpr (kFusedInputs) {
        static_assert(C::kStages >= 2 && C::kTileBytes >= C::kHeadDim / 2 * 8,
                      "the RoPE table fits the last stage's K tile");
        new_position = a.positions[0];
        const int new_key = static_cast<int>(new_position);
        if (new_key >= key_begin && new_key < key_end) new_tile = (new_key - key_begin) / C::kKeys;
        load_row_chunks<32, kInputChunks>(inputs->q_norm, a.head_dim, inputs->q_norm_vec4, lane,
                                          q_weight);
        load_row_chunks<32, kInputChunks>(inputs->k_norm, a.head_dim, inputs->k_norm_vec4, lane,
                                          k_weight);
        decode_input_rotations<C::kThreads>(*inputs, new_position, rotations);
        __syncthreads();
    }

    if (!waited) wait_for_upstream();  // q is the previous kernel's output

    // Q tile -> bf16 in shared memory; rows past the call and columns past head_dim are zeros.
    constexpr int kQuads = C::kHeadDim / 4;
    if constexpr (kFusedInputs) {
        decode_inputs_fill<kInputChunks, C::kRows, C::kStride, C::kThreads / 32>(
            a, *inputs, kv_head, row0, new_tile >= 0, new_position, rotations, q_weight, k_weight,
            q_s, new_row);
    }
    for (int i = tid; !kFusedInputs && i < C::kRows * kQuads; i += C::kThreads) {
        const int r = i / kQuads;
        const int col = (i % kQuads) * 4;
        const int packed = row0 + r;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (packed < rows_total && col < a.head_dim) {
            const int t = packed / a.group;
            const int h = kv_head * a.group + packed % a.group;
            x = *reinterpret_cast<const float4*>(a.q + (static_cast<int64_t>(t) * a.n_heads + h) * a.head_dim + col);
        }
        *reinterpret_cast<uint2*>(q_s + r * C::kStride + col) = make_uint2(pack_bf16x2(x.x, x.y), pack_bf16x2(x.z, x.w));
    }

    // The visible keys of the thread's two rows: row_lo <= key <= row_hi (empty for padding rows).
    int row_lo[2];
    int row_hi[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        visible_keys(a, row0 + row_group * 16 + g + 8 * i, key_end, row_lo[i], row_hi[i]);
        st.m[i] = -INFINITY;
        st.l[i] = 0.0f;
    }
#pragma unroll
    for (int t = 0; t < C::kColTiles; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st.o[t][e] = 0.0f;
    }
    __syncthreads();  // Q tile stored

    // A fragments of the warp's 16 Q rows: matrices (rows 0-7 | 8-15) x (columns 0-7 | 8-15).
    const int a_row = (lane & 7) + 8 * ((lane >> 3) & 1);
    const int a_col = 8 * (lane >> 4);
    const uint16_t* q_warp = q_s + (row_group * 16 + a_row) * C::kStride + a_col;
    constexpr bool kQInRegisters = C::kQInRegisters;
    uint32_t q_frag[kQInRegisters ? C::kHeadDim / 16 : 1][4];
    if constexpr (kQInRegisters) {
#pragma unroll
        for (int kk = 0; kk < C::kHeadDim / 16; ++kk) ldmatrix_x4(q_frag[kk], q_warp + kk * 16);
    }
    // B fragments of K (stored [key][dim] = column-major B): matrices (keys 0-7 | 8-15) x (dims 0-7 | 8-15)
    // in the order b0, b1 of keys 0-7, then b0, b1 of keys 8-15.
    const int b_row = (lane & 7) + 8 * (lane >> 4);
    const int b_col = 8 * ((lane >> 3) & 1);
    // B fragments of V (stored [key][col] = row-major B, so .trans): (keys 0-7 | 8-15) x (cols 0-7 | 8-15).
    const int v_row = (lane & 7) + 8 * ((lane >> 3) & 1);
    const int v_col = 8 * (lane >> 4);
    constexpr float kLog2e = 1.4426950408889634f;
    const int barrier_id = 1 + row_group;

    for (int tile = 0; tile < n_tiles; ++tile) {
        const int stage = kTq4 ? 0 : tile % C::kStages;
        const int k0 = key_begin + tile * C::kKeys;
        if constexpr (kTq4) {
            __syncthreads();  // tile visible to all; every warp is done with the other stage, P,
                              // red_max, raw
            if (tile + 1 < n_tiles) issue_tq4(k0 + C::kKeys);
            cp_async_commit();
        } else {
            cp_async_wait_pending<C::kStages - 2>();  // this tile's group done
            __syncthreads();  // tile visible to all; every warp is done with the previous tile's
                              // stage, P and red_max
            constexpr int kAhead = C::kStages - 1;
            if (tile + kAhead < n_tiles) {
                load_tile((tile + kAhead) % C::kStages, k0 + kAhead * C::kKeys);
            }
            cp_async_commit();
            if constexpr (kFusedInputs) {
                if (tile == new_tile) {  // the whole block: the tile holds the token's key
                    if (warp < 2) {
                        uint16_t* row = (warp == 0 ? k_s(stage) : v_s(stage)) +
                                        (static_cast<int>(new_position) - k0) * C::kStride;
#pragma unroll
                        for (int k = 0; k < kInputChunks; ++k) {
                            *reinterpret_cast<uint2*>(row + 4 * (lane + 32 * k)) = new_row[k];
                        }
                    }
                    __syncthreads();
                }
            }
        }

        // S = Q K^T over this warp's keys [key_off, key_off + kKeysPerWarp) of the tile.
        const int key_off = col_part * C::kKeysPerWarp;
        const uint16_t* k_warp = k_s(stage) + key_off * C::kStride;
        float s[C::kKeyTiles][4];
#pragma unroll
        for (int j = 0; j < C::kKeyTiles; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
        }
#pragma unroll  // fully: q_frag[kk] must stay in registers
        for (int kk = 0; kk < C::kHeadDim / 16; ++kk) {
            uint32_t qa[4];
            if constexpr (kQInRegisters) {
#pragma unroll
                for (int e = 0; e < 4; ++e) qa[e] = q_frag[kk][e];
            } else {
                ldmatrix_x4(qa, q_warp + kk * 16);
            }
#pragma unroll
            for (int jp = 0; jp < C::kKeyTiles / 2; ++jp) {
                uint32_t b[4];
                ldmatrix_x4(b, k_warp + (jp * 16 + b_row) * C::kStride + kk * 16 + b_col);
                mma_bf16_16x8x16(s[2 * jp], qa, b[0], b[1]);
                mma_bf16_16x8x16(s[2 * jp + 1], qa, b[2], b[3]);
            }
            if constexpr (C::kKeyTiles % 2 == 1) {
                uint32_t b[2];
                ldmatrix_x2(b, k_warp + ((C::kKeyTiles - 1) * 8 + (lane & 7)) * C::kStride + kk * 16 + b_col);
                mma_bf16_16x8x16(s[C::kKeyTiles - 1], qa, b[0], b[1]);
            }
        }

        // Scale, softcap, mask; row maxima of the warp's keys (a row's values sit in one lane
        // quad). TQ4: each key's score also takes its norm (its tile row holds the bare levels).
        const float* k_norms = tile_norms + (tile & 1) * 2 * C::kKeys;
        const float* v_norms = k_norms + C::kKeys;
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < C::kKeyTiles; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1;
                const int key = k0 + key_off + j * 8 + 2 * c + (e & 1);
                float x = s[j][e] * a.scale;
                if constexpr (kTq4) x *= k_norms[key - k0];
                if (a.softcap > 0.0f) x = a.softcap * tanhf(x / a.softcap);
                x = (key >= row_lo[i] && key <= row_hi[i]) ? x * kLog2e : -INFINITY;
                s[j][e] = x;
                tile_max[i] = fmaxf(tile_max[i], x);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
            tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
        }
        if constexpr (C::kSplit > 1) {
            float* group_max = red_max + row_group * C::kSplit * 16;
            if (c == 0) {
                group_max[col_part * 16 + g] = tile_max[0];
                group_max[col_part * 16 + g + 8] = tile_max[1];
            }
            named_barrier(barrier_id, C::kSplit * 32);
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int part = 0; part < C::kSplit; ++part) {
                    tile_max[i] = fmaxf(tile_max[i], group_max[part * 16 + g + 8 * i]);
                }
            }
        }
        // New max; a row that has seen no key yet keeps m = -inf and uses 0 as its reference,
        // so its P and its rescale factor are exact zeros instead of NaN.
        float reference[2];
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float m_new = fmaxf(st.m[i], tile_max[i]);
            reference[i] = m_new == -INFINITY ? 0.0f : m_new;
            alpha[i] = exp2f(st.m[i] - reference[i]);
            st.m[i] = m_new;
        }

        // P = 2^(S - m) -> bf16 in shared memory ([row][key] of the row group); l in fp32.
        uint16_t* p_warp = p_s + row_group * 16 * C::kPStride + key_off + 2 * c;
        float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < C::kKeyTiles; ++j) {
            const float p0 = exp2f(s[j][0] - reference[0]);
            const float p1 = exp2f(s[j][1] - reference[0]);
            const float p2 = exp2f(s[j][2] - reference[1]);
            const float p3 = exp2f(s[j][3] - reference[1]);
            row_sum[0] += p0 + p1;
            row_sum[1] += p2 + p3;
            // TQ4: the value norms go into the probabilities multiplying the bare levels (l
            // keeps the plain sums).
            float v0 = 1.0f, v1 = 1.0f;
            if constexpr (kTq4) {
                v0 = v_norms[key_off + j * 8 + 2 * c];
                v1 = v_norms[key_off + j * 8 + 2 * c + 1];
            }
            *reinterpret_cast<uint32_t*>(p_warp + g * C::kPStride + j * 8) =
                pack_bf16x2(p0 * v0, p1 * v1);
            *reinterpret_cast<uint32_t*>(p_warp + (g + 8) * C::kPStride + j * 8) =
                pack_bf16x2(p2 * v0, p3 * v1);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) st.l[i] = st.l[i] * alpha[i] + row_sum[i];
        // Once the first tiles have set the rows' maxima they seldom move, and alpha is then
        // exactly 1 (2^0): the warp skips the rescale unless one of its rows moved (a vote, not
        // kColTiles * 4 multiplies).
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int t = 0; t < C::kColTiles; ++t) {
                st.o[t][0] *= alpha[0];
                st.o[t][1] *= alpha[0];
                st.o[t][2] *= alpha[1];
                st.o[t][3] *= alpha[1];
            }
        }
        if constexpr (C::kSplit > 1) {
            named_barrier(barrier_id, C::kSplit * 32);  // the row group's P complete
        } else {
            __syncwarp();
        }

        // O += P V over all keys of the tile, this warp's columns.
        const uint16_t* p_group = p_s + (row_group * 16 + a_row) * C::kPStride + a_col;
        const uint16_t* v_warp = v_s(stage) + v_row * C::kStride + col_part * C::kColsPerWarp + v_col;
#pragma unroll
        for (int kk = 0; kk < C::kKeys / 16; ++kk) {
            uint32_t pa[4];
            ldmatrix_x4(pa, p_group + kk * 16);
#pragma unroll
            for (int np = 0; np < C::kColTiles / 2; ++np) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_warp + kk * 16 * C::kStride + np * 16);
                mma_bf16_16x8x16(st.o[2 * np], pa, b[0], b[1]);
                mma_bf16_16x8x16(st.o[2 * np + 1], pa, b[2], b[3]);
            }
        }
        // TQ4: the next tile into the one stage, after dequantise_tq4's barrier (reached by every
        // thread: n_tiles is the block's) has seen every warp done with this one.
        if constexpr (kTq4) {
            if (tile + 1 < n_tiles) dequantise_tq4(tile + 1);
        }
    }

    // l: over the lane quad, then over the row group's warps (same order in every warp).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        st.l[i] += __shfl_xor_sync(0xffffffffu, st.l[i], 1);
        st.l[i] += __shfl_xor_sync(0xffffffffu, st.l[i], 2);
    }
    if constexpr (C::kSplit > 1) {
        float* group_sum = red_sum + row_group * C::kSplit * 16;
        if (c == 0) {
            group_sum[col_part * 16 + g] = st.l[0];
            group_sum[col_part * 16 + g + 8] = st.l[1];
        }
        named_barrier(barrier_id, C::kSplit * 32);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float total = 0.0f;
#pragma unroll
            for (int part = 0; part < C::kSplit; ++part) total += group_sum[part * 16 + g + 8 * i];
            st.l[i] = total;
        }
    }
}

}  // namespace kestrel::cuda
