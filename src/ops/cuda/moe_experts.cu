// The routed experts of a Qwen3.5-MoE layer (host API and semantics: moe_experts.h; the CPU twin:
// tests/unit/cuda_moe_experts_test.cpp). Two launches, both with launch_overlapped (PDL,
// launch.cuh); neither can start streaming weights before its wait, since which expert's rows
// to read comes from ids, which the router kernel writes.
//
// moe_gate_up_kernel<Format, U>: one block of 16 warps per (row t, slot j, 32 consecutive act
//   values): grid rows * k * ffn / 32 (144 blocks at decode for k = 9, ffn = 512), each block
//   reading 32 gate rows and 32 up rows of expert ids[t, j] (64 KiB in W4 at dim = 2048). Why 32
//   act values per block: that is one Q8 block of act, so the block quantises act itself in its
//   epilogue and the down kernel reads 48-byte blocks instead of re-quantising fp32 act in every
//   block (which would read 16 KiB of act from L2 per down block, more than its weights). Why 16
//   warps: each SM gets one or two blocks at decode, and 2 x 512 threads x 4 loads of 16 bytes
//   keep 64 KiB per SM in flight, more than DRAM's latency x bandwidth share (~18 KiB per SM).
//   Warp w owns act values 2w and 2w+1 of the block: its rows are gate 2w, 2w+1 and up 2w, 2w+1
//   (R = 4), so silu(gate) * up needs no exchange between warps. Lane l takes the rows' work
//   units l + 32 u (W4: 32-weight groups, W8: 16-byte halves of groups, as the GEMVs: each warp
//   load is 512 contiguous bytes), U units per row in flight, ld.global.cs (read once). The
//   first step's weight loads are issued before the block quantises its row of x (8 lanes per Q8
//   block, 4 elements each) into shared memory, so the quantisation hides behind DRAM latency.
//   Then: the lane partial sums reduced by xor shuffles (gemv_w4a8.cuh), act = silu(g) * u in
//   fp32 by lane 0 of each warp into shared memory, and warp 0 writes the Q8 block of the 32.
// moe_down_kernel<Format, L>: output rows of out, L lanes per (row, slot) dot: a down row has
//   ffn / 32 groups (16 at ffn = 512; W8: 32 half-group units), so L = 16 puts two rows in a
//   warp and no lane idles (L = 32 where a row has more than 16 units). The block's 8 warps form
//   8 / S row groups; the S warps of a group split the k slots (warp s takes slots s, s + S, ...,
//   B = Format::kDownSlotBatch of them with their weights in flight together: W4 4, W8 8).
//   S = moe_down_warps_per_row: the smallest that leaves each warp one batch, grown while the
//   grid has fewer blocks than SMs (decode, k = 8, dim 2048, ffn 512: W4 S = 2, W8 S = 1, both
//   256 blocks that fit the SMs at once). The block first asks for its first batch's weights,
//   then copies its row's k ffn / 32 act blocks to shared memory. Each (row, slot) dot is
//   complete before it is weighted: the sub-warp's sum goes to shared memory, and after one
//   barrier one thread per row adds weights[t, j] * y_j in j order, as the twin does.
//   Rows per block (8 / S) x (32 / L) is a power of two <= 16, so it divides dim (dim % 32 == 0):
//   every block lies within one row t.
// An id outside [0, n_experts) is replaced by expert 0 for addressing (so nothing is read out of
//   bounds) and its slot's result by NaN: NaN act blocks from the gate/up kernel, a NaN y_j in
//   the down kernel, so the row's out is NaN.
#include "ops/cuda/moe_experts.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <limits>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemv_w4a8.cuh"
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- weight formats: a row's 16-byte work units and their W4A8 / W8A8 terms -------------------

// W4 (ops/weight_format.h): a unit is one 32-weight group: 16 bytes of nibbles, its sc | m << 8
// word and its super-group's (d, dmin).
struct W4Format {
    struct Stack {
        const uint4* qs;
        const uint16_t* group_scales;
        const uint32_t* super_scales;
    };
    using Row = Stack;  // the same three pointers, at a row's start
    struct Unit {
        uint4 weights;
        uint16_t group_scale;
        uint32_t super_scale;
    };
    static constexpr int kDownSlotBatch = 4;  // see moe_down_kernel

    __device__ static int units(int cols) { return cols / 32; }

    __device__ static Row row(const Stack& stack, int64_t row, int cols) {
        const int64_t groups = cols / 32;
        const int64_t supers = (groups + 7) / 8;
        return {stack.qs + row * groups, stack.group_scales + row * groups,
                stack.super_scales + row * supers};
    }

    __device__ static Unit load(const Row& row, int unit) {
        return {__ldcs(row.qs + unit), __ldcs(row.group_scales + unit),
                __ldcs(row.super_scales + static_cast<unsigned>(unit) / 8u)};
    }

    // d_a (scale dot - min sum_a) for group `unit` (weight_format.h), blocks = the row's Q8
    // blocks of the activations (shared or global memory).
    __device__ static float term(const Unit& w, int unit, const Q8Block* blocks) {
        const uint4* block = reinterpret_cast<const uint4*>(blocks + unit);
        const uint4 a_lo = block[0];
        const uint4 a_hi = block[1];
        const uint2 a_ds = *reinterpret_cast<const uint2*>(block + 2);
        // (d, dmin) widened exactly; d * sc and dmin * m are exact in fp32.
        const float2 d = __half22float2(*reinterpret_cast<const __half2*>(&w.super_scale));
        const float scale = d.x * static_cast<float>(w.group_scale & 0xffu);
        const float group_min = d.y * static_cast<float>(w.group_scale >> 8);
        const int dot = dot_group(w.weights, a_lo, a_hi);
        return __uint_as_float(a_ds.x) * (scale * static_cast<float>(dot) -
                                          group_min * static_cast<float>(static_cast<int>(a_ds.y)));
    }
};

// W8 (ops/weight_format_w8.h): a unit is one 16-byte half of a group (unit h = half h & 1 of
// group h >> 1) and the group's (scale, min); the min term is counted by the first half only.
struct W8Format {
    struct Stack {
        const uint4* qs;
        const uint32_t* scale_min;
    };
    using Row = Stack;
    struct Unit {
        uint4 weights;
        uint32_t scale_min;
    };
    static constexpr int kDownSlotBatch = 8;  // see moe_down_kernel

    __device__ static int units(int cols) { return cols / 16; }

    __device__ static Row row(const Stack& stack, int64_t row, int cols) {
        const int64_t groups = cols / 32;
        return {stack.qs + row * 2 * groups, stack.scale_min + row * groups};
    }

    __device__ static Unit load(const Row& row, int unit) {
        return {__ldcs(row.qs + unit), __ldcs(row.scale_min + static_cast<unsigned>(unit) / 2u)};
    }

    __device__ static float term(const Unit& w, int unit, const Q8Block* blocks) {
        const int half = unit & 1;
        const uint4* block = reinterpret_cast<const uint4*>(blocks + (unit >> 1));
        const uint4 a = block[half];
        const uint2 a_ds = *reinterpret_cast<const uint2*>(block + 2);
        const float2 scale_min = __half22float2(*reinterpret_cast<const __half2*>(&w.scale_min));
        const float group_min = half == 0 ? scale_min.y : 0.0f;
        int dot = __dp4a(static_cast<int>(w.weights.x), static_cast<int>(a.x), 0);
        dot = __dp4a(static_cast<int>(w.weights.y), static_cast<int>(a.y), dot);
        dot = __dp4a(static_cast<int>(w.weights.z), static_cast<int>(a.z), dot);
        dot = __dp4a(static_cast<int>(w.weights.w), static_cast<int>(a.w), dot);
        return __uint_as_float(a_ds.x) * (scale_min.x * static_cast<float>(dot) -
                                          group_min * static_cast<float>(static_cast<int>(a_ds.y)));
    }
};

// ---- Q8 quantisation (quantize_q8_row's float operations, bit for bit) ------------------------

// One Q8 block held by a segment of kLanes lanes (aligned to kLanes within the warp), lane s of
// the segment holding elements kPerLane s .. kPerLane s + kPerLane - 1 in v. Bit for bit
// quantize_q8_row: amax is a maximum (order-free), d = amax / 127, q = rint(v / d) clamped to
// [-127, 127] (IEEE division, ties to even), and a block holding a NaN or an infinity becomes
// d = NaN, q = 0, sum = 0. Every lane of the warp must call it (shuffles); `write` says whether
// the segment stores its block.
template <int kLanes>
__device__ __forceinline__ void quantize_q8_segment(const float (&v)[32 / kLanes], bool write,
                                                    Q8Block* out) {
    constexpr int kPerLane = 32 / kLanes;
    const int position = static_cast<int>(threadIdx.x % kLanes);
    int finite = 1;
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
        finite &= isfinite(v[i]) ? 1 : 0;
        amax = fmaxf(amax, fabsf(v[i]));
    }
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, offset));
        finite &= __shfl_xor_sync(kFullMask, finite, offset);
    }
    float d = __fdiv_rn(amax, 127.0f);
    int q[kPerLane];
    int sum = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
        q[i] = 0;
        if (finite != 0 && d > 0.0f) q[i] = min(127, max(-127, __float2int_rn(__fdiv_rn(v[i], d))));
        sum += q[i];
    }
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
        sum += __shfl_xor_sync(kFullMask, sum, offset);
    }
    if (finite == 0) d = __int_as_float(0x7fc00000);
    if (!write) return;
    if constexpr (kPerLane == 4) {
        const uint32_t packed = (static_cast<uint32_t>(q[0]) & 0xffu) |
                                ((static_cast<uint32_t>(q[1]) & 0xffu) << 8) |
                                ((static_cast<uint32_t>(q[2]) & 0xffu) << 16) |
                                ((static_cast<uint32_t>(q[3]) & 0xffu) << 24);
        reinterpret_cast<uint32_t*>(out->qs)[position] = packed;
    } else {
        static_assert(kPerLane == 1, "segments of 8 or 32 lanes");
        out->qs[position] = static_cast<int8_t>(q[0]);
    }
    if (position == 0) {
        out->d = d;
        out->sum = sum;
        out->pad[0] = 0;
        out->pad[1] = 0;
    }
}

// src [n_blocks * 32] fp32 (16-byte aligned) -> out [n_blocks] Q8 blocks, by n_warps warps:
// 8 lanes per block, one float4 each, so a warp quantises 4 blocks per step.
__device__ __forceinline__ void quantize_q8_row_by_warps(const float* src, int n_blocks,
                                                         Q8Block* out, int warp, int n_warps) {
    const int lane = static_cast<int>(threadIdx.x % 32u);
    for (int first = warp * 4; first < n_blocks; first += n_warps * 4) {
        const int block = first + lane / 8;
        const bool in_row = block < n_blocks;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (in_row) {
            const float4 f = *reinterpret_cast<const float4*>(src + block * 32 + (lane % 8) * 4);
            v[0] = f.x;
            v[1] = f.y;
            v[2] = f.z;
            v[3] = f.w;
        }
        quantize_q8_segment<8>(v, in_row, out + block);
    }
}

// ops/cpu: silu(g) = g / (1 + exp(-g)). exp in double rounded to fp32, as qwen35_ops.cu's
// exp_rounded: the correctly rounded exp but within ~2^-29 ulp of a rounding boundary, so it
// agrees with the CPU's expf (within 0.502 ulp) far more often than CUDA's expf (2 ulp). Each
// operation an explicit _rn so that nvcc contracts nothing.
__device__ __forceinline__ float silu(float g) {
    const float e = static_cast<float>(exp(static_cast<double>(-g)));
    return __fdiv_rn(g, __fadd_rn(1.0f, e));
}

// ---- gate/up: x -> act Q8 blocks ------------------------------------------------------------

constexpr int kGateUpWarps = 16;
constexpr int kGateUpThreads = kGateUpWarps * 32;
constexpr int kActPerBlock = 32;  // one Q8 block of act
constexpr int kPairsPerWarp = kActPerBlock / kGateUpWarps;
constexpr int kGateUpRowsPerWarp = 2 * kPairsPerWarp;  // gate rows, then the same up rows

// Issues the loads of the lane's units first_unit + j, j = j0 + 32 u (u < U, j < lane_units).
template <class Format, int U, int R>
__device__ __forceinline__ void load_units(const typename Format::Row (&rows)[R], int first_unit,
                                           int j0, int lane_units,
                                           typename Format::Unit (&w)[U][R]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int j = j0 + 32 * u;
        if (j < lane_units) {
#pragma unroll
            for (int r = 0; r < R; ++r) w[u][r] = Format::load(rows[r], first_unit + j);
        }
    }
}

// x [rows, dim] fp32; ids [rows, k]; stack [n_experts * 2 ffn, dim]; act [rows, k, ffn / 32].
// Dynamic shared memory: dim / 32 Q8 blocks.
template <class Format, int U>
__global__ void __launch_bounds__(kGateUpThreads, 2)
    moe_gate_up_kernel(const float* __restrict__ x, const int32_t* __restrict__ ids,
                       typename Format::Stack stack, int k, int n_experts, int dim, int ffn,
                       Q8Block* __restrict__ act) {
    extern __shared__ uint4 gate_up_shared[];
    Q8Block* x_blocks = reinterpret_cast<Q8Block*>(gate_up_shared);
    __shared__ float act_values[kActPerBlock];

    wait_for_upstream();  // x and ids are earlier kernels' outputs; act may still be read
    allow_downstream();

    const int lane = static_cast<int>(threadIdx.x % 32u);
    const int warp = static_cast<int>(threadIdx.x / 32u);
    const int tiles = ffn / kActPerBlock;
    const int64_t slot = blockIdx.x / static_cast<unsigned>(tiles);  // t k + j
    const int tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(tiles));
    const int64_t t = slot / k;
    const int32_t expert = ids[slot];
    const bool known = expert >= 0 && expert < n_experts;
    // Rows of expert e: gate i at e 2 ffn + i, up i at e 2 ffn + ffn + i.
    const int64_t gate_row = static_cast<int64_t>(known ? expert : 0) * 2 * ffn +
                             tile * kActPerBlock + warp * kPairsPerWarp;
    typename Format::Row rows[kGateUpRowsPerWarp];
#pragma unroll
    for (int p = 0; p < kPairsPerWarp; ++p) {
        rows[p] = Format::row(stack, gate_row + p, dim);
        rows[kPairsPerWarp + p] = Format::row(stack, gate_row + ffn + p, dim);
    }
    const int lane_units = Format::units(dim) - lane;  // the lane's units are lane + j, j < this
    typename Format::Unit w[U][kGateUpRowsPerWarp];
    load_units<Format, U>(rows, lane, 0, lane_units, w);

    quantize_q8_row_by_warps(x + t * dim, dim / 32, x_blocks, warp, kGateUpWarps);
    __syncthreads();

    float acc[1][kGateUpRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kGateUpRowsPerWarp; ++r) acc[0][r] = 0.0f;
    for (int j0 = 0; j0 < lane_units; j0 += 32 * U) {
        if (j0 > 0) load_units<Format, U>(rows, lane, j0, lane_units, w);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + 32 * u;
            if (j < lane_units) {
#pragma unroll
                for (int r = 0; r < kGateUpRowsPerWarp; ++r) {
                    acc[0][r] += Format::term(w[u][r], lane + j, x_blocks);
                }
            }
        }
    }
    sum_across_lanes(acc);
    if (lane == 0) {
#pragma unroll
        for (int p = 0; p < kPairsPerWarp; ++p) {
            // SwiGLU: act = silu(gate) * up, the twin's two roundings.
            act_values[warp * kPairsPerWarp + p] =
                known ? __fmul_rn(silu(acc[0][p]), acc[0][kPairsPerWarp + p])
                      : __int_as_float(0x7fc00000);
        }
    }
    __syncthreads();
    if (warp == 0) {
        const float v[1] = {act_values[lane]};
        quantize_q8_segment<32>(v, true, act + slot * tiles + tile);
    }
}

// ---- down and the weighted sum ----------------------------------------------------------------

constexpr int kDownWarps = 8;
constexpr int kDownThreads = kDownWarps * 32;

// Slots j0, j0 + split, ... (kB of them) of one row of out: where each slot's expert row lies in
// the stack (expert 0's for an unknown id, which is never stored).
template <int kB>
struct SlotBatch {
    int expert_row[kB];  // < n_experts dim < 2^31 (checked on the host)
    bool in_range[kB];
    bool known[kB];
};

template <int kB>
__device__ __forceinline__ SlotBatch<kB> slot_batch(const int32_t* row_ids, int j0, int split,
                                                    int k, int n_experts, int dim, int row) {
    SlotBatch<kB> batch;
#pragma unroll
    for (int b = 0; b < kB; ++b) {
        const int j = j0 + split * b;
        batch.in_range[b] = j < k;
        const int32_t expert = batch.in_range[b] ? row_ids[j] : 0;
        batch.known[b] = batch.in_range[b] && expert >= 0 && expert < n_experts;
        batch.expert_row[b] = (batch.known[b] ? expert : 0) * dim + row;
    }
    return batch;
}

template <class Format, int kB>
__device__ __forceinline__ void load_batch(typename Format::Stack stack, const SlotBatch<kB>& batch,
                                           int ffn, int unit, typename Format::Unit (&w)[kB]) {
#pragma unroll
    for (int b = 0; b < kB; ++b) {
        if (batch.in_range[b]) {
            w[b] = Format::load(Format::row(stack, batch.expert_row[b], ffn), unit);
        }
    }
}

// Format::kDownSlotBatch (B) is how many slots' units a lane has in flight together: W4 4, W8 8.
// Why: with 4 slots ptxas gives the W4 kernel ~80 registers, 3 blocks of 256 threads per SM; at
// decode (k = 8, ffn = 512) W4 then runs S = 2 warps per row group, 256 blocks, and every weight
// load of the kernel is issued at once. A W8 row has twice the units: with 8 slots per lane
// (S = 1) its grid is again 256 blocks, which fit at 2 blocks per SM (4 slots would need 512);
// ptxas then takes 128 registers and spills 12-16 bytes (CUDA 13.0, sm_90a), not yet measured
// against the alternative.
//
// act [rows, k, ffn / 32] Q8 blocks; ids, weights [rows, k]; stack [n_experts * dim, ffn];
// out [rows, dim]. split = S, the warps of a row group (1, 2, 4 or 8). Dynamic shared memory:
// the k ffn / 32 act blocks of the block's row t (the lanes' act reads then stay off the L1
// path and out of registers across the weight loads: with them in L1, ptxas kept every slot's
// act in registers, 128 per thread, and fewer blocks fitted an SM than the decode grid has).
template <class Format, int L>
__global__ void __launch_bounds__(kDownThreads)
    moe_down_kernel(const Q8Block* __restrict__ act, const int32_t* __restrict__ ids,
                    const float* __restrict__ weights, typename Format::Stack stack, int k,
                    int n_experts, int dim, int ffn, int split, bool accumulate,
                    float* __restrict__ out) {
    static_assert(L == 16 || L == 32, "a row's dot over half a warp or a whole one");
    constexpr int kRowsPerWarp = 32 / L;
    constexpr int kB = Format::kDownSlotBatch;
    extern __shared__ uint4 down_shared[];
    const Q8Block* act_blocks = reinterpret_cast<const Q8Block*>(down_shared);  // [k, ffn / 32]
    __shared__ float slot_dots[kMoeMaxTopK][kDownWarps * kRowsPerWarp];  // y_j per row of the block

    wait_for_upstream();  // act, ids and weights are earlier kernels' outputs; out may be read
    allow_downstream();

    const int lane = static_cast<int>(threadIdx.x % 32u);
    const int warp = static_cast<int>(threadIdx.x / 32u);
    const int rows_per_block = kDownWarps / split * kRowsPerWarp;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block;  // t dim + r0
    const int64_t t = first / dim;
    const int local_row = warp / split * kRowsPerWarp + lane / L;
    const int row = static_cast<int>(first - t * dim) + local_row;  // of the expert's dim rows
    const int first_slot = warp % split;
    const int first_unit = lane % L;
    const int units = Format::units(ffn);
    const int groups = ffn / 32;
    const int32_t* row_ids = ids + t * k;

    // The first batch's weights are on their way while the block stages act.
    SlotBatch<kB> batch = slot_batch<kB>(row_ids, first_slot, split, k, n_experts, dim, row);
    typename Format::Unit w[kB];
    if (first_unit < units) load_batch<Format>(stack, batch, ffn, first_unit, w);
    const uint4* row_act = reinterpret_cast<const uint4*>(act + t * k * groups);
    for (int i = static_cast<int>(threadIdx.x); i < k * groups * 3; i += kDownThreads) {
        down_shared[i] = row_act[i];
    }
    __syncthreads();

    bool loaded = true;  // w holds the first batch's first units
    for (int j0 = first_slot; j0 < k; j0 += split * kB) {
        if (j0 != first_slot) batch = slot_batch<kB>(row_ids, j0, split, k, n_experts, dim, row);
        float acc[1][kB];
#pragma unroll
        for (int b = 0; b < kB; ++b) acc[0][b] = 0.0f;
        for (int unit = first_unit; unit < units; unit += L) {
            if (!loaded) load_batch<Format>(stack, batch, ffn, unit, w);
            loaded = false;
#pragma unroll
            for (int b = 0; b < kB; ++b) {
                if (batch.in_range[b]) {
                    acc[0][b] += Format::term(w[b], unit, act_blocks + (j0 + split * b) * groups);
                }
            }
        }
#pragma unroll
        for (int b = 0; b < kB; ++b) {
#pragma unroll
            for (int offset = L / 2; offset > 0; offset >>= 1) {
                acc[0][b] += __shfl_xor_sync(kFullMask, acc[0][b], offset);
            }
        }
        if (first_unit == 0) {
#pragma unroll
            for (int b = 0; b < kB; ++b) {
                if (batch.in_range[b]) {
                    slot_dots[j0 + split * b][local_row] =
                        batch.known[b] ? acc[0][b] : __int_as_float(0x7fc00000);
                }
            }
        }
    }
    __syncthreads();
    const int r = static_cast<int>(threadIdx.x);
    if (r < rows_per_block) {
        // ops/cpu moe_experts: sum = 0, sum += weights[t, j] * y_j for j = 0 .. k-1, then
        // out += sum (accumulate) or out = sum.
        const float* row_weights = weights + t * k;
        float sum = 0.0f;
        for (int j = 0; j < k; ++j) {
            sum = __fadd_rn(sum, __fmul_rn(row_weights[j], slot_dots[j][r]));
        }
        out[first + r] = accumulate ? __fadd_rn(out[first + r], sum) : sum;
    }
}

// ---- host side --------------------------------------------------------------------------------

bool aligned(const void* p, uintptr_t to) {
    return (reinterpret_cast<uintptr_t>(p) % to) == 0;
}

// op: the launcher the message names (moe_experts, or moe_experts_prefill through the shared
// checks).
Status invalid_in(const char* op, const std::string& message) {
    return Status(StatusCode::kInvalidArgument, std::string(op) + ": " + message);
}

Status invalid(const std::string& message) {
    return invalid_in("moe_experts", message);
}

W4Format::Stack w4_stack(const ExpertStackView& view) {
    return {reinterpret_cast<const uint4*>(view.w4.qs), view.w4.group_scales, view.w4.super_scales};
}

W8Format::Stack w8_stack(const ExpertStackView& view) {
    return {reinterpret_cast<const uint4*>(view.w8.qs), view.w8.scale_min};
}

// U, units in flight per lane and row: 1, so 4 loads of 16 bytes per lane over its 4 rows, and
// the kernel is bounded to 64 registers so that two blocks of 512 threads share an SM: at decode
// with the shared expert stacked (k = 9) the grid is 144 blocks, a second wave on 132 SMs at one
// block per SM (U = 2 took 99 registers; bounding U = 2 to 64 spilled 144 bytes, U = 1 spills 20;
// 24 since dot_group sums in two chains, which Qwen3.5's decode still gained from: 518.71 ->
// 522.56 tok/s, bench/results/2026-11-25-h100-gemv-instructions.md). Per SM that is still 2 x 512 x
// 4 loads of 16 bytes in flight, as U = 2 at one block had.
template <class Format, int U>
Status launch_gate_up(const float* x, int64_t rows, const int32_t* ids, int64_t k,
                      typename Format::Stack stack, int64_t n_experts, int64_t ffn, int64_t dim,
                      Q8Block* act, cudaStream_t stream) {
    const int64_t grid = rows * k * (ffn / kActPerBlock);
    const size_t shared_bytes = static_cast<size_t>(dim / 32) * sizeof(Q8Block);
    KESTREL_CUDA_CHECK(launch_overlapped(
        moe_gate_up_kernel<Format, U>, dim3(static_cast<unsigned>(grid)), dim3(kGateUpThreads),
        shared_bytes, stream, x, ids, stack, static_cast<int>(k), static_cast<int>(n_experts),
        static_cast<int>(dim), static_cast<int>(ffn), act));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

int down_lanes_per_row(int64_t ffn, bool down_is_w4) {
    const int64_t units = down_is_w4 ? ffn / 32 : ffn / 16;
    return units <= 16 ? 16 : 32;
}

template <class Format, int L>
Status launch_down(const Q8Block* act, int64_t rows, const int32_t* ids, const float* weights,
                   int64_t k, typename Format::Stack stack, int64_t n_experts, int64_t ffn,
                   int64_t dim, int split, bool accumulate, float* out, cudaStream_t stream) {
    const int64_t rows_per_block = kDownWarps / split * (32 / L);
    const int64_t grid = rows * dim / rows_per_block;
    const size_t shared_bytes = static_cast<size_t>(k * (ffn / 32)) * sizeof(Q8Block);
    KESTREL_CUDA_CHECK(
        launch_overlapped(moe_down_kernel<Format, L>, dim3(static_cast<unsigned>(grid)),
                          dim3(kDownThreads), shared_bytes, stream, act, ids, weights, stack,
                          static_cast<int>(k), static_cast<int>(n_experts), static_cast<int>(dim),
                          static_cast<int>(ffn), split, accumulate, out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

template <class Format>
Status launch_down_lanes(const Q8Block* act, int64_t rows, const int32_t* ids, const float* weights,
                         int64_t k, typename Format::Stack stack, int64_t n_experts, int64_t ffn,
                         int64_t dim, int split, int lanes, bool accumulate, float* out,
                         cudaStream_t stream) {
    if (lanes == 16) {
        return launch_down<Format, 16>(act, rows, ids, weights, k, stack, n_experts, ffn, dim,
                                       split, accumulate, out, stream);
    }
    return launch_down<Format, 32>(act, rows, ids, weights, k, stack, n_experts, ffn, dim, split,
                                   accumulate, out, stream);
}

// Down blocks resident per SM (the occupancy calculator on this device and build: registers,
// and the act blocks' dynamic shared memory), for the split rule.
Result<int> down_blocks_per_sm(bool is_w4, int lanes, int64_t k, int64_t ffn) {
    const size_t shared_bytes = static_cast<size_t>(k * (ffn / 32)) * sizeof(Q8Block);
    int blocks = 0;
    const auto query = [&](auto kernel) {
        return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kDownThreads,
                                                             shared_bytes);
    };
    if (is_w4) {
        KESTREL_CUDA_CHECK(lanes == 16 ? query(moe_down_kernel<W4Format, 16>)
                                       : query(moe_down_kernel<W4Format, 32>));
    } else {
        KESTREL_CUDA_CHECK(lanes == 16 ? query(moe_down_kernel<W8Format, 16>)
                                       : query(moe_down_kernel<W8Format, 32>));
    }
    return blocks;
}

}  // namespace

size_t moe_experts_scratch_bytes(int64_t rows, int64_t k, int64_t /*dim*/, int64_t ffn) {
    if (rows <= 0 || k <= 0 || ffn <= 0) return 0;
    const int64_t act_bytes = rows * k * (ffn / 32) * static_cast<int64_t>(sizeof(Q8Block));
    return static_cast<size_t>((act_bytes + 255) / 256 * 256);
}

int moe_down_warps_per_row(int64_t rows, int64_t k, int64_t dim, int64_t ffn, bool down_is_w4,
                           int sm_count, int blocks_per_sm) {
    const int64_t rows_per_warp = 32 / down_lanes_per_row(ffn, down_is_w4);
    const int64_t slot_batch = down_is_w4 ? W4Format::kDownSlotBatch : W8Format::kDownSlotBatch;
    const auto blocks = [&](int s) { return rows * dim / (kDownWarps / s * rows_per_warp); };
    int split = 1;
    // Each warp's slots in one batch: a second batch would wait for the first one's weights.
    while (split < kDownWarps && split * slot_batch < k) split *= 2;
    // Unless that takes a second wave that half the split avoids.
    const int64_t resident =
        static_cast<int64_t>(std::max(sm_count, 1)) * std::max(blocks_per_sm, 1);
    if (split > 1 && blocks(split) > resident && blocks(split / 2) <= resident) split /= 2;
    // Then at least one block per SM (short rows, small dim), as far as the slots go.
    while (split < kDownWarps && split < k &&
           rows * dim / (kDownWarps / split * rows_per_warp) < std::max(sm_count, 1)) {
        split *= 2;
    }
    return split;
}

Status check_expert_stack(const ExpertStackView& view, const char* op, const char* name,
                          int64_t rows, int64_t cols) {
    if (view.rows() != rows || view.cols() != cols) {
        return invalid_in(op, std::string(name) + " stack is [" + std::to_string(view.rows()) +
                                  ", " + std::to_string(view.cols()) + "], expected [" +
                                  std::to_string(rows) + ", " + std::to_string(cols) + "]");
    }
    if (view.is_w4) {
        if (view.w4.qs == nullptr || view.w4.group_scales == nullptr ||
            view.w4.super_scales == nullptr || !aligned(view.w4.qs, 16) ||
            !aligned(view.w4.group_scales, 2) || !aligned(view.w4.super_scales, 4)) {
            return invalid_in(op, std::string(name) +
                                      " (W4): null array, or qs not 16-byte aligned, "
                                      "group_scales not 2, super_scales not 4");
        }
    } else if (view.w8.qs == nullptr || view.w8.scale_min == nullptr || !aligned(view.w8.qs, 16) ||
               !aligned(view.w8.scale_min, 4)) {
        return invalid_in(op, std::string(name) +
                                  " (W8): null array, or qs not 16-byte aligned, scale_min not 4");
    }
    return ok_status();
}

Status check_expert_buffers(const char* op, const float* x, const int32_t* ids,
                            const float* weights, const void* scratch, const float* out) {
    if (x == nullptr || ids == nullptr || weights == nullptr || scratch == nullptr ||
        out == nullptr) {
        return invalid_in(op, "null x, ids, weights, scratch or out");
    }
    if (!aligned(x, 16) || !aligned(scratch, 16) || !aligned(ids, 4) || !aligned(weights, 4) ||
        !aligned(out, 4)) {
        return invalid_in(op, "x and scratch need 16-byte alignment, ids, weights and out 4");
    }
    return ok_status();
}

Status moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights,
                   int64_t k, const ExpertStackView& gate_up, const ExpertStackView& down,
                   int64_t n_experts, int64_t ffn, int64_t dim, void* scratch, bool accumulate,
                   float* out, cudaStream_t stream) {
    constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
    if (rows < 0 || k < 1 || k > kMoeMaxTopK || n_experts < 1 || n_experts > kIntMax) {
        return invalid(std::to_string(rows) + " rows, top " + std::to_string(k) + " of " +
                       std::to_string(n_experts) + " experts: needs rows >= 0, 1 <= k <= " +
                       std::to_string(kMoeMaxTopK) + " and 1 <= n_experts < 2^31");
    }
    if (dim <= 0 || ffn <= 0 || dim % 32 != 0 || ffn % 32 != 0 || dim > kMoeMaxDim ||
        k * ffn > kMoeMaxSlotValues) {
        return invalid("dim " + std::to_string(dim) + ", ffn " + std::to_string(ffn) + ", k " +
                       std::to_string(k) + ": needs dim and ffn positive multiples of 32, dim <= " +
                       std::to_string(kMoeMaxDim) +
                       ", k ffn <= " + std::to_string(kMoeMaxSlotValues));
    }
    // The kernels index stack rows (n_experts dim) and grids (rows k ffn / 32 and at most
    // rows dim blocks) with int.
    if (n_experts > kIntMax / dim || n_experts > kIntMax / (2 * ffn) || rows > kIntMax / dim ||
        rows > kIntMax / (k * (ffn / 32))) {
        return invalid(std::to_string(n_experts) + " experts, " + std::to_string(rows) +
                       " rows of top " + std::to_string(k) + " at dim " + std::to_string(dim) +
                       ", ffn " + std::to_string(ffn) + ": stack rows or grids reach 2^31");
    }
    KESTREL_RETURN_IF_ERROR(
        check_expert_stack(gate_up, "moe_experts", "gate_up", n_experts * 2 * ffn, dim));
    KESTREL_RETURN_IF_ERROR(check_expert_stack(down, "moe_experts", "down", n_experts * dim, ffn));
    if (rows == 0) return ok_status();
    KESTREL_RETURN_IF_ERROR(check_expert_buffers("moe_experts", x, ids, weights, scratch, out));
    KESTREL_ASSIGN_OR_RETURN(const int sm_count, gemv_sm_count());
    const int lanes = down_lanes_per_row(ffn, down.is_w4);
    KESTREL_ASSIGN_OR_RETURN(const int blocks_per_sm,
                             down_blocks_per_sm(down.is_w4, lanes, k, ffn));
    Q8Block* act = static_cast<Q8Block*>(scratch);

    if (gate_up.is_w4) {
        KESTREL_RETURN_IF_ERROR((launch_gate_up<W4Format, 1>(x, rows, ids, k, w4_stack(gate_up),
                                                             n_experts, ffn, dim, act, stream)));
    } else {
        KESTREL_RETURN_IF_ERROR((launch_gate_up<W8Format, 1>(x, rows, ids, k, w8_stack(gate_up),
                                                             n_experts, ffn, dim, act, stream)));
    }

    const int split =
        moe_down_warps_per_row(rows, k, dim, ffn, down.is_w4, sm_count, blocks_per_sm);
    if (down.is_w4) {
        return launch_down_lanes<W4Format>(act, rows, ids, weights, k, w4_stack(down), n_experts,
                                           ffn, dim, split, lanes, accumulate, out, stream);
    }
    return launch_down_lanes<W8Format>(act, rows, ids, weights, k, w8_stack(down), n_experts, ffn,
                                       dim, split, lanes, accumulate, out, stream);
}

}  // namespace kestrel::cuda
