// Prefill attention over a TQ4 cache at head dim 512 (Gemma 4's full layers) on Hopper's
// warpgroup MMA. The same mathematics as flash_attend<kTq4> (attention_common.cuh): online
// softmax in base 2 over the bare levels bf16(level), a key's norm scaling its score, a value's
// norm its probability in P V, l summing the plain probabilities.
//
// Why a kernel of its own: at head dim 512 the mma.sync core is bound by shared-memory reads (each
// of its four row groups reads the whole K and V tiles, and Q is re-read every tile: 159 TFLOP/s).
// wgmma reads its operands from shared memory once per warpgroup-wide 64-row MMA.
//
// Block = 64 packed query rows of one kv head (as attention_prefill.cu: packed row r is token
// r / group, head kv_head * group + r % group), keys in tiles of 64, three warpgroups:
//   producer  (warpgroup 0): loads each tile's K index bytes and both norms, dequantises the
//             bytes in registers (byte-permute lookups, no table in shared memory) and stores K
//             as [key][dim] bf16 in 128-byte-swizzled shared memory;
//   consumers (warpgroups 1, 2): consumer w computes S = Q K^T for keys [32 w, 32 w + 32) of the
//             tile (wgmma m64n32k16 over the 512 dims), the two exchange their row maxima, write
//             their halves of P (bf16) to shared memory, and consumer w accumulates output columns
//             [256 w, 256 w + 256) with O += P V (wgmma m64n256k16; V is the MN-major operand).
//             O is 64 x 256 fp32 a warpgroup: 128 registers a thread. Consumer w dequantises its
//             own V columns while its S MMAs run.
// One K buffer and one V buffer (64 KiB each; Q takes 64 KiB): the producer fills K(t + 1) while
// the consumers work on softmax and P V of tile t. Named barriers hand K over (full: producer
// arrives, consumers wait; empty: the reverse). Tiles fully masked by causality or the window are
// never visited: the block's keys are [first key its first token sees, its last token's
// position], as attention_prefill.cu.
//
// Measured on the H100 (bench/attention_bench.cu tq4: 32 query heads over 4 kv heads, 2048 tokens
// at depth 65536): 265-271 TFLOP/s against the mma.sync kernel's 158-160. What did not help (same
// bench, TFLOP/s): the consumers dequantising K as well, with no producer (216: K's
// dequantisation then sits between P V and the next S); each consumer dequantising half of its
// own K rows while its P V runs (246); each consumer computing S for all 64 keys, so that the two
// exchange nothing and P V takes P from registers (215: S's MMAs and their shared-memory reads
// double); each consumer computing S over its half of the dims for all 64 keys, adding the other's
// partial S through shared memory, P from registers (211); 136 producer and 184 consumer registers
// (181, the consumers spill); a 4th warpgroup (does not compile: m64n256k16's accumulator needs >=
// 154 registers at entry, 512 threads allow 128). Issuing S(t + 1) behind P V(t) made ptxas insert
// a wait at the loop's end (C7517), which undoes the overlap. What limits it (ncu, an earlier state
// at 250): the integer pipe at ~56% and 0.9 eligible warps a scheduler, i.e. the dequantisation's
// dependent byte permutes with three warps a scheduler to hide them.
#include <cuda_bf16.h>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_prefill_tq4_wgmma.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/wgmma.cuh"

namespace kestrel::cuda {
namespace {

constexpr int kRows = 64;  // packed query rows per block (the wgmma M)
constexpr int kKeys = 64;  // keys per tile
constexpr int kHeadDim = 512;
constexpr int kThreads = 384;           // three warpgroups
constexpr int kRegionBytes = 64 * 128;  // 64 rows x 64 bf16: one 128-byte-swizzled column block
constexpr int kTileBytes = (kHeadDim / 64) * kRegionBytes;  // a [64][512] bf16 tile: 64 KiB
constexpr int kQOffset = 0;
constexpr int kKOffset = kQOffset + kTileBytes;
constexpr int kVOffset = kKOffset + kTileBytes;
constexpr int kPOffset = kVOffset + kTileBytes;          // P [64 rows][64 keys] bf16
constexpr int kMaxOffset = kPOffset + kRegionBytes;      // fp32 [2 consumers][64 rows]
constexpr int kSumOffset = kMaxOffset + 2 * kRows * 4;   // fp32 [2 consumers][64 rows]
constexpr int kNormOffset = kSumOffset + 2 * kRows * 4;  // fp32 [2 tiles][K, V][64 keys]
constexpr int kSharedBytes = kNormOffset + 2 * 2 * kKeys * 4;
constexpr int kSharedAlloc = kSharedBytes + 1024;  // the swizzle atoms start 1024-aligned
static_assert(kSharedAlloc <= 227 * 1024);

// Register budgets after reallocation (setmaxnreg): 128 x 88 + 256 x 208 = 384 x 168, what the
// launch bound gives every thread.
constexpr int kProducerRegisters = 88;
constexpr int kConsumerRegisters = 208;

// Named barriers (0 is __syncthreads).
constexpr int kKFull = 1;
constexpr int kKEmpty = 2;
constexpr int kConsumersExchange = 3;  // the two consumers only (256 threads)
constexpr int kConsumersPReady = 4;

#if KESTREL_HAS_WGMMA

// The codebook is symmetric (level 15 - i = -level i, kv_tq4.h), so index i is the magnitude
// m = i - 8 (i >= 8) or 7 - i (i < 8), negated below 8. Magnitudes 0-7 as bf16 byte tables:
// byte k of low[j] / high[j] is the low / high byte of bf16(level 8 + 4 j + k).
struct Tq4MagnitudeBytes {
    uint32_t low[2];
    uint32_t high[2];
};

__device__ __forceinline__ Tq4MagnitudeBytes tq4_magnitude_bytes(const AttentionKernelArgs& a) {
    Tq4MagnitudeBytes t{};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const uint32_t bits = __bfloat16_as_ushort(__float2bfloat16_rn(a.tq4_levels[8 + k]));
        t.low[k / 4] |= (bits & 0xffu) << (8 * (k % 4));
        t.high[k / 4] |= (bits >> 8) << (8 * (k % 4));
    }
    return t;
}

// Eight 4-bit indices (element e in nibble e of `word`) -> their bf16 levels as four bf16 pairs
// (element 2 p in the low half of pair p). prmt looks four bytes up at once by their selectors'
// low three bits: ~20 integer instructions for eight elements.
__device__ __forceinline__ uint4 tq4_levels_of_eight(uint32_t word, const Tq4MagnitudeBytes& t) {
    const uint32_t negative = ~(word >> 3) & 0x11111111u;  // 1 in the nibbles of indices < 8
    const uint32_t magnitude = word ^ (negative * 7u);     // low 3 bits: m (no carries: 7 * 1)
    uint32_t pairs[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const uint32_t select = (magnitude >> (16 * h)) & 0x7777u;
        const uint32_t low_bytes = __byte_perm(t.low[0], t.low[1], select);
        const uint32_t sign = __byte_perm(0x00008000u, 0u, negative >> (16 * h));  // 0x80 / 0
        const uint32_t high_bytes = __byte_perm(t.high[0], t.high[1], select) | sign;
        pairs[2 * h] = __byte_perm(low_bytes, high_bytes, 0x5140u);
        pairs[2 * h + 1] = __byte_perm(low_bytes, high_bytes, 0x7362u);
    }
    return make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
}

// kChunks 16-byte chunks of key `k0 + key_in_tile`'s index row: chunk m is bytes
// first_byte + 32 m + [0, 16) (dims 2 first_byte + 64 m + [0, 32)). Keys past the block's are
// zero bytes: level 0 (finite), and masked in S anyway.
template <int kChunks>
__device__ __forceinline__ void load_index_chunks(const AttentionKernelArgs& a,
                                                  const uint8_t* indices, int kv_head, int key,
                                                  int key_end, int first_byte,
                                                  uint4 (&raw)[kChunks]) {
    if (key < key_end) {
        const uint4* row = reinterpret_cast<const uint4*>(
            indices +
            (static_cast<int64_t>(key % a.capacity) * a.n_kv_heads + kv_head) * (kHeadDim / 2) +
            first_byte);
#pragma unroll
        for (int m = 0; m < kChunks; ++m) raw[m] = __ldg(row + 2 * m);
    } else {
#pragma unroll
        for (int m = 0; m < kChunks; ++m) raw[m] = make_uint4(0, 0, 0, 0);
    }
}

// Dequantises those chunks into row key_in_tile of a [64][512] bf16 tile: chunk m (32 dims) goes
// to column block first_block + m, 16-byte chunks 4 half + [0, 4). With the lane mapping of both
// callers (two lanes a key, lane % 2 = half) eight lanes store to eight distinct swizzled chunks:
// no bank conflicts.
template <int kChunks>
__device__ __forceinline__ void store_levels(unsigned char* tile, int key_in_tile, int half,
                                             int first_block, const uint4 (&raw)[kChunks],
                                             const Tq4MagnitudeBytes& levels) {
#pragma unroll
    for (int m = 0; m < kChunks; ++m) {
        unsigned char* block = tile + (first_block + m) * kRegionBytes;
        const uint32_t words[4] = {raw[m].x, raw[m].y, raw[m].z, raw[m].w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            *reinterpret_cast<uint4*>(block + swizzled_offset(key_in_tile, 4 * half + q)) =
                tq4_levels_of_eight(words[q], levels);
        }
    }
}

// Warpgroup 0: K tiles, and each tile's K and V norms. Thread (warp pw, lane): key 16 pw + lane / 2
// of every tile, of its row the chunks at byte 16 (lane % 2) + 32 m (m = 0..7: column block m); two
// lanes read one 32-byte sector. Each tile's index bytes and norms are loaded a tile ahead, so that
// their latency is not on the way to the hand-over.
__device__ __forceinline__ void produce_keys(const AttentionKernelArgs& a, int kv_head,
                                             int key_begin, int key_end, int n_tiles,
                                             unsigned char* shared) {
    const int p = static_cast<int>(threadIdx.x);
    const int key_in_tile = 16 * (p >> 5) + ((p & 31) >> 1);
    const int half = p & 1;
    const Tq4MagnitudeBytes levels = tq4_magnitude_bytes(a);
    // Thread p's norm of a tile: key p of K's (p < 64) or key p - 64 of V's.
    float* norms = reinterpret_cast<float*>(shared + kNormOffset);
    const uint16_t* norm_source = p < kKeys ? a.k_norm : a.v_norm;
    const auto load_norm = [&](int k0) -> uint16_t {
        const int key = k0 + (p & (kKeys - 1));
        if (key >= key_end) return 0;  // +0.0
        return norm_source[static_cast<int64_t>(key % a.capacity) * a.n_kv_heads + kv_head];
    };

    uint4 raw[8];
    uint16_t norm_bits = 0;
    if (n_tiles > 0) {
        load_index_chunks(a, a.k_tq4, kv_head, key_begin + key_in_tile, key_end, 16 * half, raw);
        norm_bits = load_norm(key_begin);
    }
    for (int t = 0; t < n_tiles; ++t) {
        const int k0 = key_begin + t * kKeys;
        if (t > 0)
            named_barrier(kKEmpty, kThreads);  // S(t - 1) done with K, P(t - 2) with V's norms
        norms[(t & 1) * 2 * kKeys + p] = __bfloat162float(__ushort_as_bfloat16(norm_bits));
        store_levels(shared + kKOffset, key_in_tile, half, 0, raw, levels);
        fence_shared_to_async_proxy();
        named_barrier_arrive(kKFull, kThreads);
        if (t + 1 < n_tiles) {
            load_index_chunks(a, a.k_tq4, kv_head, k0 + kKeys + key_in_tile, key_end, 16 * half,
                              raw);
            norm_bits = load_norm(k0 + kKeys);
        }
    }
}

// Warpgroups 1 and 2 (consumer = 0, 1). Thread (warp w, lane): rows 16 w + lane / 4 and + 8 of
// every 64-row fragment (the wgmma accumulator layout: register 4 j + e holds row + 8 (e / 2),
// column 8 j + 2 (lane % 4) + e % 2). A consumer also dequantises the V columns it reads itself
// (its 4 column blocks: thread wtid takes key wtid / 2, chunks at byte 128 consumer + 16 (wtid
// % 2) + 32 m), while its S MMAs run, from index bytes loaded a tile ahead.
__device__ __forceinline__ void consume_tiles(const AttentionKernelArgs& a, int kv_head, int row0,
                                              int key_begin, int key_end, int n_tiles,
                                              unsigned char* shared) {
    const int consumer = static_cast<int>(threadIdx.x) / 128 - 1;
    const int wtid = static_cast<int>(threadIdx.x) & 127;
    const int lane = wtid & 31;
    const int warp = wtid >> 5;
    const int g = lane >> 2;
    const int c = lane & 3;
    const int rows_total = a.n_tokens * a.group;
    int row[2], row_lo[2], row_hi[2];
    float m[2], l[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        row[i] = 16 * warp + g + 8 * i;
        visible_keys(a, row0 + row[i], key_end, row_lo[i], row_hi[i]);
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;

    const Tq4MagnitudeBytes levels = tq4_magnitude_bytes(a);
    const int v_key = wtid >> 1;
    const int v_half = wtid & 1;
    const int v_first_byte = 128 * consumer + 16 * v_half;
    uint4 raw_v[4];
    if (n_tiles > 0) {
        load_index_chunks(a, a.v_tq4, kv_head, key_begin + v_key, key_end, v_first_byte, raw_v);
    }

    const uint32_t q_base = shared_address(shared + kQOffset);
    const uint32_t k_base = shared_address(shared + kKOffset) + consumer * 32 * 128;
    const uint32_t v_base = shared_address(shared + kVOffset) + consumer * 4 * kRegionBytes;
    const uint32_t p_base = shared_address(shared + kPOffset);
    unsigned char* p_tile = shared + kPOffset;
    float* row_max = reinterpret_cast<float*>(shared + kMaxOffset);
    float* row_sum = reinterpret_cast<float*>(shared + kSumOffset);
    const float* norms = reinterpret_cast<const float*>(shared + kNormOffset);
    constexpr float kLog2e = 1.4426950408889634f;

    for (int t = 0; t < n_tiles; ++t) {
        const int k0 = key_begin + t * kKeys;
        // S = Q K^T for this consumer's 32 keys: 32 steps of 16 dims, each step's 32 bytes of a
        // row inside one 128-byte column block (+32 bytes a step: the swizzle is applied to the
        // address, so the descriptor simply moves along the row).
        named_barrier(kKFull, kThreads);
        float s[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) s[i] = 0.0f;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kHeadDim / 16; ++kk) {
            const uint32_t step = (kk >> 2) * kRegionBytes + (kk & 3) * 32;
            wgmma_m64n32k16(s, wgmma_descriptor(q_base + step, 16, 1024),
                            wgmma_descriptor(k_base + step, 16, 1024), kk > 0);
        }
        wgmma_commit();
        // While the MMAs run: this tile's V columns (P V(t - 1) is done with them), the next
        // tile's index bytes, and the norms of the thread's keys.
        store_levels(shared + kVOffset, v_key, v_half, 4 * consumer, raw_v, levels);
        fence_shared_to_async_proxy();
        if (t + 1 < n_tiles) {
            load_index_chunks(a, a.v_tq4, kv_head, k0 + kKeys + v_key, key_end, v_first_byte,
                              raw_v);
        }
        const float* tile_norms = norms + (t & 1) * 2 * kKeys + 32 * consumer + 2 * c;
        float2 key_norm[4], value_norm[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            key_norm[j] = *reinterpret_cast<const float2*>(tile_norms + 8 * j);
            value_norm[j] = *reinterpret_cast<const float2*>(tile_norms + kKeys + 8 * j);
        }
        wgmma_wait<0>();
        wgmma_pin(s);
        if (t + 1 < n_tiles) named_barrier_arrive(kKEmpty, kThreads);

        // Scale, key norms, softcap, mask; row maxima over both consumers' keys.
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1;
                const int key = k0 + 32 * consumer + 8 * j + 2 * c + (e & 1);
                float x = s[4 * j + e] * a.scale * ((e & 1) ? key_norm[j].y : key_norm[j].x);
                if (a.softcap > 0.0f) x = a.softcap * tanhf(x / a.softcap);
                x = (key >= row_lo[i] && key <= row_hi[i]) ? x * kLog2e : -INFINITY;
                s[4 * j + e] = x;
                tile_max[i] = fmaxf(tile_max[i], x);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
            tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
            if (c == 0) row_max[consumer * kRows + row[i]] = tile_max[i];
        }
        named_barrier(kConsumersExchange, 256);
        float reference[2], alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float other = row_max[(1 - consumer) * kRows + row[i]];
            const float m_new = fmaxf(m[i], fmaxf(tile_max[i], other));
            // A row that has seen no key keeps m = -inf and uses 0 as its reference: its P and
            // rescale factor are exact zeros, not NaN.
            reference[i] = m_new == -INFINITY ? 0.0f : m_new;
            alpha[i] = exp2f(m[i] - reference[i]);
            m[i] = m_new;
        }

        // P = 2^(S - m) * norm_v -> bf16 into P's swizzled rows; l sums the plain p.
        float sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int key_in_tile = 32 * consumer + 8 * j + 2 * c;
            const float p0 = exp2f(s[4 * j + 0] - reference[0]);
            const float p1 = exp2f(s[4 * j + 1] - reference[0]);
            const float p2 = exp2f(s[4 * j + 2] - reference[1]);
            const float p3 = exp2f(s[4 * j + 3] - reference[1]);
            sum[0] += p0 + p1;
            sum[1] += p2 + p3;
            const int chunk = key_in_tile >> 3;
            const int byte_in_chunk = (key_in_tile & 7) * 2;
            *reinterpret_cast<uint32_t*>(p_tile + swizzled_offset(row[0], chunk) + byte_in_chunk) =
                pack_bf16x2(p0 * value_norm[j].x, p1 * value_norm[j].y);
            *reinterpret_cast<uint32_t*>(p_tile + swizzled_offset(row[1], chunk) + byte_in_chunk) =
                pack_bf16x2(p2 * value_norm[j].x, p3 * value_norm[j].y);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) l[i] = l[i] * alpha[i] + sum[i];
        // Once the rows' maxima settle alpha is exactly 1: skip the 128 multiplies then.
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                o[4 * j + 0] *= alpha[0];
                o[4 * j + 1] *= alpha[0];
                o[4 * j + 2] *= alpha[1];
                o[4 * j + 3] *= alpha[1];
            }
        }
        fence_shared_to_async_proxy();
        named_barrier(kConsumersPReady, 256);  // both halves of P, and each consumer's V, written

        // O += P V over the tile's 64 keys, this consumer's 256 columns: 4 steps of 16 keys.
        // V [key][dim] is the MN-major B: 64-dim blocks kRegionBytes apart, 8-key groups 1024.
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
            wgmma_m64n256k16_b_mn_major(
                o, wgmma_descriptor(p_base + kk * 32, 16, 1024),
                wgmma_descriptor(v_base + kk * 16 * 128, kRegionBytes, 1024), 1);
        }
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_pin(o);
    }

    // l over the lane quad, then both consumers' keys; every valid row saw at least its own key.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        if (c == 0) row_sum[consumer * kRows + row[i]] = l[i];
    }
    named_barrier(kConsumersExchange, 256);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int packed = row0 + row[i];
        if (packed >= rows_total) continue;
        const float inv_l = 1.0f / (row_sum[row[i]] + row_sum[kRows + row[i]]);
        const int token = packed / a.group;
        const int head = kv_head * a.group + packed % a.group;
        float* dst = a.out + (static_cast<int64_t>(token) * a.n_heads + head) * kHeadDim +
                     256 * consumer + 2 * c;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            *reinterpret_cast<float2*>(dst + 8 * j) =
                make_float2(o[4 * j + 2 * i] * inv_l, o[4 * j + 2 * i + 1] * inv_l);
        }
    }
}

#endif  // KESTREL_HAS_WGMMA

__global__ void __launch_bounds__(kThreads, 1)
    attention_prefill_tq4_wgmma_kernel(AttentionKernelArgs a) {
#if KESTREL_HAS_WGMMA
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    unsigned char* shared = shared_raw + ((1024 - shared_address(shared_raw) % 1024) % 1024);
    const int row_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // latest (longest) first
    const int kv_head = static_cast<int>(blockIdx.y);
    const int row0 = row_tile * kRows;
    const int rows_total = a.n_tokens * a.group;
    const int first_token = row0 / a.group;
    const int last_row = min(row0 + kRows - 1, rows_total - 1);
    const int last_token = last_row / a.group;
    const int key_begin =
        attention_first_visible(static_cast<int>(a.positions[first_token]), a.window);
    const int key_end = static_cast<int>(a.positions[last_token]) + 1;
    const int n_tiles = (key_end - key_begin + kKeys - 1) / kKeys;

    // Q -> bf16 into 8 swizzled column blocks of 64 dims; rows past the call are zeros.
    for (int i = static_cast<int>(threadIdx.x); i < kRows * (kHeadDim / 8); i += kThreads) {
        const int r = i / (kHeadDim / 8);
        const int chunk = i % (kHeadDim / 8);
        const int packed = row0 + r;
        float4 x0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), x1 = x0;
        if (packed < rows_total) {
            const int token = packed / a.group;
            const int head = kv_head * a.group + packed % a.group;
            const float4* src = reinterpret_cast<const float4*>(
                a.q + (static_cast<int64_t>(token) * a.n_heads + head) * kHeadDim + chunk * 8);
            x0 = src[0];
            x1 = src[1];
        }
        *reinterpret_cast<uint4*>(shared + kQOffset + (chunk >> 3) * kRegionBytes +
                                  swizzled_offset(r, chunk & 7)) =
            make_uint4(pack_bf16x2(x0.x, x0.y), pack_bf16x2(x0.z, x0.w), pack_bf16x2(x1.x, x1.y),
                       pack_bf16x2(x1.z, x1.w));
    }
    fence_shared_to_async_proxy();
    __syncthreads();

    if (threadIdx.x < 128) {
        warpgroup_registers_decrease<kProducerRegisters>();
        produce_keys(a, kv_head, key_begin, key_end, n_tiles, shared);
    } else {
        warpgroup_registers_increase<kConsumerRegisters>();
        consume_tiles(a, kv_head, row0, key_begin, key_end, n_tiles, shared);
    }
#else
    __trap();  // never launched: attention_prefill_tq4_wgmma_available() is false in such a build
#endif
}

}  // namespace

bool attention_prefill_tq4_wgmma_built_for_device() {
    // The sm_90a build of the kernel is what this device runs only if both the binary and the PTX
    // it came from are sm_90 (an sm_80 PTX JIT-compiled here holds only a trap).
    cudaFuncAttributes attributes{};
    if (cudaFuncGetAttributes(&attributes, attention_prefill_tq4_wgmma_kernel) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return attributes.binaryVersion == 90 && attributes.ptxVersion == 90;
}

Status launch_attention_prefill_tq4_wgmma(const AttentionKernelArgs& args, cudaStream_t stream) {
    // tq4_levels_of_eight reads the negative half of the codebook off the positive one.
    for (int i = 0; i < 8; ++i) {
        const uint16_t positive =
            __bfloat16_as_ushort(__float2bfloat16_rn(args.tq4_levels[15 - i]));
        const uint16_t negative = __bfloat16_as_ushort(__float2bfloat16_rn(args.tq4_levels[i]));
        if (negative != (positive ^ 0x8000u) || (positive & 0x8000u) != 0) {
            return Status(StatusCode::kInternal,
                          "attention_prefill_tq4: the TQ4 codebook is not symmetric in bf16");
        }
    }
    const int64_t rows = static_cast<int64_t>(args.n_tokens) * args.group;
    const int64_t row_tiles = (rows + kRows - 1) / kRows;
    KESTREL_CUDA_CHECK(cudaFuncSetAttribute(attention_prefill_tq4_wgmma_kernel,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kSharedAlloc));
    attention_prefill_tq4_wgmma_kernel<<<dim3(static_cast<unsigned>(row_tiles),
                                              static_cast<unsigned>(args.n_kv_heads)),
                                         kThreads, kSharedAlloc, stream>>>(args);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
