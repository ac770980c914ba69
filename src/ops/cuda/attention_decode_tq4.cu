// Split-K decode attention over a TQ4 cache (issue 8; techniques.md §3 and §4): the splits'
// kernel. attention_decode.cu plans the splits, checks the arguments and combines the partials
// with the reduce kernel it shares with the bf16 path.
//
// Decode has 8 packed query rows a kv head (Gemma 4 and Qwen3.5: 8 query heads share one, T = 1),
// so the block computes the transposed products, with the keys and the output columns in the
// mma's 16 rows and the 8 queries in its 8 columns (m16n8k16, bf16 in, fp32 accumulate):
//   S^T = K Q^T        A = 16 keys x 16 dims from the index bytes, B = Q^T (shared memory)
//   O^T += V^T P^T     A = 16 output columns x 16 keys from the index bytes, B = P^T (shared)
// instead of Q K^T and P V with 16 query rows of which 8 are padding. Every mma does useful work,
// the accumulators take half the registers, and both operands that come from the cache are
// built in registers from the index bytes, which each lane loads from global memory itself (no
// staging tile, no dequantised tile in shared memory): a byte holds two neighbouring elements of
// one vector, and its bf16 pair of levels comes from a 256-entry table in shared memory (one copy
// per lane, so a warp's 32 random lookups never share a bank).
//
// The mma's k index is a slot, not a dimension: any order of the dimensions gives the same
// sums if Q^T uses it too. Lane (g, c) of a warp holds A rows g and g + 8 and k slots 2c, 2c + 1
// and 2c + 8, 2c + 9 of each 16-wide step; for S^T the step's two slot pairs are two neighbouring
// index bytes, chosen so that each lane's bytes of a key over all steps are whole 16-byte
// chunks, and the 4 lanes of a key together read one contiguous 64-byte run a load. For O^T the
// A rows are output columns: row g of column block b is the low nibble (column 2 rho) of byte rho
// = g * kColBlocks + b of the warp's columns, row g + 8 its high nibble, so a lane's bytes of a
// value are kColBlocks contiguous bytes; its 4 keys' lookups are paired by key with one byte
// permute each (the mma wants two keys of one column in a register, a byte holds two columns of
// one key).
//
// A tile is 16 keys a warp (128 at 8 warps): warp w computes S^T of keys 16w..16w+15 over all
// dimensions; the block exchanges row maxima and P^T (bf16, each p times its value's norm)
// through shared memory, and warp w accumulates O^T of its share of the columns over all the
// tile's keys. Online softmax in base 2 as flash_attend (attention_common.cuh): a key's norm scales
// its score, a value's norm its probability; l sums the plain p. Each lane's index bytes of the
// next tile are loaded while the current one is computed: K's right after S^T, V's right after O^T,
// into the registers just consumed.
#include "ops/cuda/attention_decode_tq4.h"

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

template <int kHeadDimPad>
struct Tq4DecodeConfig {
    static constexpr int kHeadDim = kHeadDimPad;  // 64..512; smaller head dims are zero-padded
    // 8 warps: the byte table and its fill serve twice the warps of 4 (at head dim 64 a warp's
    // 16 output columns need 4). Measured on the H100 at head dim 512 with the table's earlier
    // 32 KiB layout (attention_bench 20 tq4, us at depth 32768 / 130000): 4 warps, 3 blocks an
    // SM (168 registers) 72.6 / 159.2; 4 warps, 4 blocks (128 registers, spills) 77.5 / 168.6;
    // 8 warps, 2 blocks (128 registers) 61.5 / 157.5.
    static constexpr int kWarps = kHeadDimPad >= 128 ? 8 : 4;
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kRows = kTq4DecodeRows;  // the mma's n: packed query rows a block
    static constexpr int kKeys = 16 * kWarps;     // keys a tile, 16 a warp
    static constexpr int kSteps = kHeadDim / 16;  // k steps of S^T
    // K: each lane's bytes of a key row, in chunks of up to 16 bytes (one load each).
    static constexpr int kLaneKeyBytes = kHeadDim / 8;
    static constexpr int kChunkBytes = kLaneKeyBytes < 16 ? kLaneKeyBytes : 16;
    static constexpr int kChunks = kLaneKeyBytes / kChunkBytes;
    static constexpr int kStepsPerChunk = kChunkBytes / 2;
    static constexpr int kLaneKeyWords = kLaneKeyBytes / 4;
    // V: output column blocks (16 columns) a warp, = each lane's bytes of a value row.
    static constexpr int kColBlocks = kHeadDim / kWarps / 16;
    static constexpr int kValueWords = (kColBlocks + 3) / 4;
    static constexpr int kWarpValueBytes = kHeadDim / 2 / kWarps;
    static constexpr int kPStride = kKeys + 8;  // bf16 per P^T row ([query][key])
    // The byte -> bf16 pair table (dynamic shared memory): entry b at byte offset 256 b, lane l's
    // copy at 4 l (the upper 128 bytes of each entry unused), so that one byte permute of the
    // index word and the lane's offset forms a lookup's whole address, which the load adds to
    // the table's base: two instructions a lookup, not three (extract, multiply-add, load).
    static constexpr int kTableEntryBytes = 256;
    static constexpr int kTableBytes = 256 * kTableEntryBytes;

    static_assert(kHeadDim >= 64 && kHeadDim <= 512 && kHeadDim % 64 == 0);
    static_assert(kChunkBytes >= 8 && kLaneKeyBytes % kChunkBytes == 0);
    static_assert(kColBlocks >= 1 && kColBlocks <= 8);
};

// kBytes (1, 2, 4, 8 or 16) bytes at p into words (zeros where !valid), little-endian.
template <int kBytes>
__device__ __forceinline__ void load_index_bytes(const uint8_t* p, bool valid, uint32_t* words) {
    if constexpr (kBytes == 16) {
        const uint4 x = valid ? __ldg(reinterpret_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
        words[0] = x.x;
        words[1] = x.y;
        words[2] = x.z;
        words[3] = x.w;
    } else if constexpr (kBytes == 8) {
        const uint2 x = valid ? __ldg(reinterpret_cast<const uint2*>(p)) : make_uint2(0, 0);
        words[0] = x.x;
        words[1] = x.y;
    } else if constexpr (kBytes == 4) {
        words[0] = valid ? __ldg(reinterpret_cast<const unsigned int*>(p)) : 0u;
    } else if constexpr (kBytes == 2) {
        words[0] = valid ? __ldg(reinterpret_cast<const unsigned short*>(p)) : 0u;
    } else {
        static_assert(kBytes == 1);
        words[0] = valid ? __ldg(reinterpret_cast<const unsigned char*>(p)) : 0u;
    }
}

template <int kHeadDimPad>
__global__ void __launch_bounds__(Tq4DecodeConfig<kHeadDimPad>::kThreads, kTq4DecodeBlocksPerSm)
    attention_decode_tq4_kernel(AttentionKernelArgs a) {
    using C = Tq4DecodeConfig<kHeadDimPad>;
    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int g = lane >> 2;  // A rows g and g + 8; B and output column (query) g
    const int c = lane & 3;   // k slots 2c, 2c + 1 (+8); output rows (queries) 2c, 2c + 1
    const int split = static_cast<int>(blockIdx.x);
    const int kv_head = static_cast<int>(blockIdx.y);
    const int row0 = static_cast<int>(blockIdx.z) * C::kRows;
    const int rows_total = a.n_tokens * a.group;
    const int partial_rows = a.n_tokens * a.n_heads;
    const int row_bytes = a.head_dim / 2;

    // The split plan of attention_decode_kernel (the reduce recomputes it): ranges of whole
    // 16-key warp shares, so a split of 32 keys is one tile half used.
    int lo, hi;
    decode_key_span(a, lo, hi);
    const int n_keys = hi - lo;
    const int splits = decode_splits_used(n_keys, a.max_splits, a.single_pass_keys);
    const int per_split = (n_keys + splits - 1) / splits;
    const int chunk = (per_split + 15) / 16 * 16;
    const int key_begin = splits == 1 ? lo : lo + split * chunk;
    const int key_end = splits == 1 ? hi : min(hi, key_begin + chunk);
    // The packed rows (query heads) of output row 2c + i.
    const auto output_row = [&](int i) {
        const int packed = row0 + 2 * c + i;
        return (packed / a.group) * a.n_heads + kv_head * a.group + packed % a.group;
    };
    if ((splits == 1 && split > 0) || (splits > 1 && (split >= splits || key_begin >= key_end))) {
        if (splits == 1) return;  // split 0 writes the rows; nothing for the reduce
        wait_for_upstream();      // the previous kernels are done with the partials
        if (warp == 0 && g == 0) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                if (row0 + 2 * c + i >= rows_total) continue;
                float* ml =
                    a.partial_ml + (static_cast<int64_t>(split) * partial_rows + output_row(i)) * 2;
                ml[0] = -INFINITY;
                ml[1] = 0.0f;
            }
        }
        return;
    }

    extern __shared__ __align__(16) unsigned char pair_table[];  // C::kTableBytes
    __shared__ __align__(16) uint16_t p_shared[C::kRows * C::kPStride];
    __shared__ float red_max[C::kWarps][C::kRows];
    __shared__ float red_sum[C::kWarps][C::kRows];
    __shared__ float levels[16];

    // This lane's index bytes: K rows of keys 16 warp + g and + 8 (S^T), V rows of keys 2c, 2c +
    // 1, 2c + 8, 2c + 9 of each 16-key step (O^T), and the norms of the lane's two K rows' keys
    // (their scores, and their probabilities in P^T).
    uint32_t k_words[2][C::kLaneKeyWords];
    uint32_t v_words[C::kWarps][4][C::kValueWords];
    float k_norm[2], v_norm[2];
    const int slot_stride = a.n_kv_heads * row_bytes;
    const uint8_t* k_head = a.k_tq4 + static_cast<int64_t>(kv_head) * row_bytes;
    const uint8_t* v_head = a.v_tq4 + static_cast<int64_t>(kv_head) * row_bytes +
                            warp * C::kWarpValueBytes + g * C::kColBlocks;
    const bool v_column = warp * C::kWarpValueBytes + g * C::kColBlocks < row_bytes;
    // A TQ4 cache is a full layer's: a tile's keys are consecutive slots unless the ring wraps
    // inside it. A live key's offset from the tile's first key is below capacity (a call's keys
    // fit the cache), so one conditional subtraction finds its slot, no modulo per key.
    const auto first_slot = [&](int k0) { return k0 < a.capacity ? k0 : k0 % a.capacity; };
    const auto slot_offset = [&](int slot0, int offset) {
        return slot0 + offset >= a.capacity ? offset - a.capacity : offset;
    };
    const auto load_k = [&](int k0) {
        const int slot0 = first_slot(k0);
        const uint8_t* tile = k_head + static_cast<int64_t>(slot0) * slot_stride;
        const uint16_t* k_norms = a.k_norm + static_cast<int64_t>(slot0) * a.n_kv_heads + kv_head;
        const uint16_t* v_norms = a.v_norm + static_cast<int64_t>(slot0) * a.n_kv_heads + kv_head;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int offset = 16 * warp + g + 8 * r;
            const bool live = k0 + offset < key_end;
            const int slot = live ? slot_offset(slot0, offset) : 0;
#pragma unroll
            for (int i = 0; i < C::kChunks; ++i) {
                const int byte = i * 4 * C::kChunkBytes + c * C::kChunkBytes;
                load_index_bytes<C::kChunkBytes>(
                    tile + static_cast<int64_t>(slot) * slot_stride + byte,
                    live && byte < row_bytes, &k_words[r][i * C::kChunkBytes / 4]);
            }
            k_norm[r] =
                live
                    ? bf16_bits_to_float(__ldg(k_norms + static_cast<int64_t>(slot) * a.n_kv_heads))
                    : 0.0f;
            v_norm[r] =
                live
                    ? bf16_bits_to_float(__ldg(v_norms + static_cast<int64_t>(slot) * a.n_kv_heads))
                    : 0.0f;
        }
    };
    const auto load_v = [&](int k0) {
        const int slot0 = first_slot(k0);
        const uint8_t* tile = v_head + static_cast<int64_t>(slot0) * slot_stride;
#pragma unroll
        for (int step = 0; step < C::kWarps; ++step) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int offset = 16 * step + 2 * c + (j & 1) + 8 * (j >> 1);
                const bool live = k0 + offset < key_end && v_column;
                const int slot = live ? slot_offset(slot0, offset) : 0;
                load_index_bytes<C::kColBlocks>(tile + static_cast<int64_t>(slot) * slot_stride,
                                                live, v_words[step][j]);
            }
        }
    };

    const int n_tiles = (key_end - key_begin + C::kKeys - 1) / C::kKeys;
    // Keys older than this step's first position are not written by any kernel of the step
    // (launch.cuh): the first tile's loads may go out before waiting for the previous kernel.
    const bool early = key_begin + C::kKeys <= static_cast<int>(a.positions[0]);
    if (early) {
        load_k(key_begin);
        load_v(key_begin);
    }
    if (tid < 16) levels[tid] = a.tq4_levels[tid];
    __syncthreads();
    // Byte b -> bf16 pair (level of its low nibble in the low half), 32 copies, four a store.
    constexpr int kStoresPerEntry = 32 * 4 / 16;
    for (int i = tid; i < 256 * kStoresPerEntry; i += C::kThreads) {
        const int byte = i / kStoresPerEntry;
        const uint32_t pair = pack_bf16x2(levels[byte & 0x0f], levels[byte >> 4]);
        reinterpret_cast<uint4*>(pair_table + byte * C::kTableEntryBytes)[i % kStoresPerEntry] =
            make_uint4(pair, pair, pair, pair);
    }
    wait_for_upstream();  // q is the previous kernel's output
    if (!early) {
        load_k(key_begin);
        load_v(key_begin);
    }

    // Q^T's B fragments, rounded to bf16: step s, b0 = dimensions 2b, 2b + 1 and b1 = 2b + 2,
    // 2b + 3 of query g, b the byte of slot pair 2c of step s (below); zeros past the rows and the
    // head dim. In shared memory in fragment order (step s, lane l at s * 32 + l: one 8-byte
    // load a step, no bank conflicts), which leaves the registers to the next tile's bytes (Q^T
    // in registers took 255 and allowed two blocks of 4 warps an SM: 176 against 159 us at
    // depth 130000 with 4 warps in shared memory, three blocks).
    __shared__ uint2 q_shared[C::kSteps * 32];
    for (int i = tid; i < C::kSteps * 32; i += C::kThreads) {
        const int step = i / 32, for_lane = i % 32;
        const int packed = row0 + (for_lane >> 2);
        const int dim = 2 * ((step / C::kStepsPerChunk) * 4 * C::kChunkBytes +
                             (for_lane & 3) * C::kChunkBytes + 2 * (step % C::kStepsPerChunk));
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (packed < rows_total && dim < a.head_dim) {
            x = *reinterpret_cast<const float4*>(
                a.q +
                (static_cast<int64_t>(packed / a.group) * a.n_heads + kv_head * a.group +
                 packed % a.group) *
                    a.head_dim +
                dim);
        }
        q_shared[i] = make_uint2(pack_bf16x2(x.x, x.y), pack_bf16x2(x.z, x.w));
    }
    // The visible keys of output rows 2c, 2c + 1: row_lo <= key <= row_hi (none for padding).
    int row_lo[2], row_hi[2];
    float m[2], l_part[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        visible_keys(a, row0 + 2 * c + i, key_end, row_lo[i], row_hi[i]);
        m[i] = -INFINITY;
        l_part[i] = 0.0f;
    }
    float o[C::kColBlocks][4];
#pragma unroll
    for (int b = 0; b < C::kColBlocks; ++b) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[b][e] = 0.0f;
    }
    __syncthreads();  // the table

    static_assert(C::kTableEntryBytes == 256, "the entry's byte offset is the index byte itself");
    const uint32_t lane_offset = 4u * static_cast<uint32_t>(lane);  // < 256: one byte
    const auto lookup = [&](uint32_t word, uint32_t byte_in_word) {
        // Offset bytes: lane_offset, the index byte, zero, zero (lane_offset's byte 1).
        const uint32_t offset = __byte_perm(word, lane_offset, 0x5504u | (byte_in_word << 4));
        return *reinterpret_cast<const uint32_t*>(pair_table + offset);
    };
    constexpr float kLog2e = 1.4426950408889634f;

    for (int tile = 0; tile < n_tiles; ++tile) {
        const int k0 = key_begin + tile * C::kKeys;
        // S^T of keys 16 warp + g (s[0], s[1]: queries 2c, 2c + 1) and + 8 (s[2], s[3]); the
        // odd steps into a second accumulator (two dependent mma chains, not one).
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        float s_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int step = 0; step < C::kSteps; ++step) {
            const int p = step % C::kStepsPerChunk;
            const int word = (step / C::kStepsPerChunk) * (C::kChunkBytes / 4) + p / 2;
            const uint32_t byte = 2 * (p % 2);
            const uint32_t frag[4] = {
                lookup(k_words[0][word], byte), lookup(k_words[1][word], byte),
                lookup(k_words[0][word], byte + 1), lookup(k_words[1][word], byte + 1)};
            const uint2 qb = q_shared[step * 32 + lane];
            if (step % 2 == 0) {
                mma_bf16_16x8x16(s, frag, qb.x, qb.y);
            } else {
                mma_bf16_16x8x16(s_odd, frag, qb.x, qb.y);
            }
        }
        // Scale, norm, softcap, mask (log2 units); the warp's maxima of queries 2c, 2c + 1.
        float x[4];
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = e & 1;
            const int key = k0 + 16 * warp + g + 8 * (e >> 1);
            float v = (s[e] + s_odd[e]) * a.scale * k_norm[e >> 1];
            if (a.softcap > 0.0f) v = a.softcap * tanhf(v / a.softcap);
            v = (key >= row_lo[i] && key <= row_hi[i]) ? v * kLog2e : -INFINITY;
            x[e] = v;
            tile_max[i] = fmaxf(tile_max[i], v);
        }
        const float p_norm[2] = {v_norm[0], v_norm[1]};
        if (tile + 1 < n_tiles) load_k(k0 + C::kKeys);  // k_words and the norms are free now
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int mask = 4; mask < 32; mask <<= 1) {
                tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], mask));
            }
        }
        if (g == 0) {
            red_max[warp][2 * c] = tile_max[0];
            red_max[warp][2 * c + 1] = tile_max[1];
        }
        __syncthreads();  // every warp's maxima
        float reference[2], alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float tile_m = red_max[0][2 * c + i];
#pragma unroll
            for (int w = 1; w < C::kWarps; ++w) tile_m = fmaxf(tile_m, red_max[w][2 * c + i]);
            const float m_new = fmaxf(m[i], tile_m);
            // A row that has seen no key keeps m = -inf and uses 0: its p and alpha are zeros.
            reference[i] = m_new == -INFINITY ? 0.0f : m_new;
            alpha[i] = exp2f(m[i] - reference[i]);
            m[i] = m_new;
        }
        // P^T -> shared as P [query][key], bf16(p * norm_v); l sums the plain p.
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = e & 1;
            const float p = exp2f(x[e] - reference[i]);
            if (e < 2) l_part[i] *= alpha[i];
            l_part[i] += p;
            const __nv_bfloat16 value = __float2bfloat16_rn(p * p_norm[e >> 1]);
            p_shared[(2 * c + i) * C::kPStride + 16 * warp + g + 8 * (e >> 1)] =
                *reinterpret_cast<const uint16_t*>(&value);
        }
        // alpha is exactly 1 once the rows' maxima settle: skip the rescale unless one moved.
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int b = 0; b < C::kColBlocks; ++b) {
                o[b][0] *= alpha[0];
                o[b][1] *= alpha[1];
                o[b][2] *= alpha[0];
                o[b][3] *= alpha[1];
            }
        }
        __syncthreads();  // P^T complete

        // O^T of the warp's columns over the tile's keys, 16 a step.
#pragma unroll
        for (int step = 0; step < C::kWarps; ++step) {
            const uint16_t* p_row = p_shared + g * C::kPStride + 16 * step + 2 * c;
            const uint32_t b0 = *reinterpret_cast<const uint32_t*>(p_row);
            const uint32_t b1 = *reinterpret_cast<const uint32_t*>(p_row + 8);
#pragma unroll
            for (int b = 0; b < C::kColBlocks; ++b) {
                const uint32_t byte = b % 4;
                const uint32_t key0 = lookup(v_words[step][0][b / 4], byte);  // key 2c
                const uint32_t key1 = lookup(v_words[step][1][b / 4], byte);  // 2c + 1
                const uint32_t key8 = lookup(v_words[step][2][b / 4], byte);  // 2c + 8
                const uint32_t key9 = lookup(v_words[step][3][b / 4], byte);  // 2c + 9
                // Row g: column 2 rho (the low halves), row g + 8: 2 rho + 1 (the high halves).
                const uint32_t frag[4] = {
                    __byte_perm(key0, key1, 0x5410), __byte_perm(key0, key1, 0x7632),
                    __byte_perm(key8, key9, 0x5410), __byte_perm(key8, key9, 0x7632)};
                mma_bf16_16x8x16(o[b], frag, b0, b1);
            }
        }
        if (tile + 1 < n_tiles) load_v(k0 + C::kKeys);  // v_words are free now
    }

    // l over the warp's lanes of one query, then over the warps (same order in every warp).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int mask = 4; mask < 32; mask <<= 1) {
            l_part[i] += __shfl_xor_sync(0xffffffffu, l_part[i], mask);
        }
    }
    if (g == 0) {
        red_sum[warp][2 * c] = l_part[0];
        red_sum[warp][2 * c + 1] = l_part[1];
    }
    __syncthreads();
    float l[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] = 0.0f;
#pragma unroll
        for (int w = 0; w < C::kWarps; ++w) l[i] += red_sum[w][2 * c + i];
    }

    // Output row 2c + i, columns 2 rho, 2 rho + 1 of the lane's bytes rho: normalised into out
    // (one split; what the reduce computes for one split) or the split's partial (m, l, O).
    const int first_column = 2 * (warp * C::kWarpValueBytes + g * C::kColBlocks);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        if (row0 + 2 * c + i >= rows_total) continue;
        const int64_t prow = output_row(i);
        float* dst;
        float factor = 1.0f;
        if (splits == 1) {
            dst = a.out + prow * a.v_head_dim;
            factor = 1.0f / l[i];
        } else {
            const int64_t base = static_cast<int64_t>(split) * partial_rows + prow;
            dst = a.partial_acc + base * a.v_head_dim;
            if (warp == 0 && g == 0) {
                a.partial_ml[base * 2] = m[i];
                a.partial_ml[base * 2 + 1] = l[i];
            }
        }
#pragma unroll
        for (int b = 0; b < C::kColBlocks; ++b) {
            const int col = first_column + 2 * b;
            if (col < a.v_head_dim) {
                *reinterpret_cast<float2*>(dst + col) =
                    make_float2(o[b][i] * factor, o[b][i + 2] * factor);
            }
        }
    }
    allow_downstream();  // late on purpose, as attention_decode_kernel
}

template <int kHeadDimPad>
Status launch(const AttentionKernelArgs& args, int64_t row_tiles, cudaStream_t stream) {
    using C = Tq4DecodeConfig<kHeadDimPad>;
    // kTq4DecodeBlocksPerSm blocks of ~75 KiB need the largest shared-memory carveout.
    KESTREL_CUDA_CHECK(cudaFuncSetAttribute(attention_decode_tq4_kernel<kHeadDimPad>,
                                            cudaFuncAttributePreferredSharedMemoryCarveout, 100));
    KESTREL_CUDA_CHECK(cudaFuncSetAttribute(attention_decode_tq4_kernel<kHeadDimPad>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            C::kTableBytes));
    KESTREL_CUDA_CHECK(launch_overlapped(
        attention_decode_tq4_kernel<kHeadDimPad>,
        dim3(static_cast<unsigned>(args.max_splits), static_cast<unsigned>(args.n_kv_heads),
             static_cast<unsigned>(row_tiles)),
        dim3(C::kThreads), C::kTableBytes, stream, args));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status launch_attention_decode_tq4_splits(const AttentionKernelArgs& args, cudaStream_t stream) {
    const int64_t row_tiles =
        (static_cast<int64_t>(args.n_tokens) * args.group + kTq4DecodeRows - 1) / kTq4DecodeRows;
    if (row_tiles > 65535) {
        return Status(StatusCode::kInvalidArgument, "attention_decode_tq4: too many tokens");
    }
    switch (attention_padded_head_dim(args.head_dim, args.v_head_dim)) {
        case 64:
            return launch<64>(args, row_tiles, stream);
        case 128:
            return launch<128>(args, row_tiles, stream);
        case 256:
            return launch<256>(args, row_tiles, stream);
        default:
            return launch<512>(args, row_tiles, stream);
    }
}

}  // namespace kestrel::cuda
