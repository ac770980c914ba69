// Host API of the prefill (many-row) routed experts of a Qwen3.5-MoE layer on the GPU
// (moe_prefill.cu): the same function as moe_experts (moe_experts.h), for every row t of x and
// each of its k routed slots j, expert e = ids[t, j]:
//   act_{t,j} = silu(gate_e . x[t]) * (up_e . x[t])
//   out[t, :] = (accumulate ? out[t, :] : 0) + sum over j = 0..k-1, in j order, in fp32, of
//               weights[t, j] * down_e(act_{t,j})
// but with tokens grouped by expert and multiplied on the tensor cores, so each expert's weights
// are read once per 128 of its rows instead of once per row. Arithmetic (the CPU twin in
// tests/unit/cuda_moe_prefill_test.cpp composes it):
//   x -> bf16 (round to nearest even, fp32_to_bf16 in core/half.h);
//   weights -> scale * q - min in fp32 exactly as w4_dequantize / w8_dequantize (a product and a
//     difference, each rounded), then -> bf16;
//   gate, up = sums of bf16 x bf16 products (exact in fp32) accumulated in fp32 by the tensor
//     cores (their order and rounding, not the CPU's);
//   act = silu(g) * u in fp32 with silu(g) = g / (1 + exp(-g)), then -> bf16;
//   y_{t,j} = down_e(act) the same way (bf16 x bf16, fp32 accumulation);
//   out = the weighted sum in j order, each product and sum rounded to fp32 (no FMA).
// So it differs from moe_experts (Q8 activations, exact integer dots) by the quantisation of the
// activations and the bf16 rounding of the weights, both about 2^-9 relative.
// Plain C++: includable from .cpp files that have the CUDA runtime headers.
//
// All pointers are device pointers. The launcher only launches (five kernels): it never
// synchronises, allocates or copies, and never reads ids on the host: the grids are sized from
// rows, k and n_experts alone, so the call can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kestrel/status.h"
#include "ops/cuda/moe_experts.h"  // ExpertStackView, kMoeMaxTopK

namespace kestrel::cuda {

// Rows (routed slots of one expert) per GEMM tile: an expert with c slots takes ceil(c / 128)
// tiles.
constexpr int64_t kMoePrefillTileRows = 128;
// n_experts above this is rejected: the routing kernel keeps two counters per expert in shared
// memory (32 KiB at 4096).
constexpr int64_t kMoePrefillMaxExperts = 4096;

// Where the pieces of scratch lie, in bytes from its start (each 256-byte aligned), and the
// total. The tests read them back; nothing else should depend on them.
struct MoePrefillLayout {
    size_t x_bf16 = 0;        // [rows, dim] bf16: x rounded
    size_t act = 0;           // [rows k, ffn] bf16: act in expert-sorted order
    size_t y = 0;             // [rows k, dim] fp32: down_e(act) per slot, at slot t k + j
    size_t sorted_slots = 0;  // [rows k] int32: the slot t k + j at each sorted position
    size_t offsets = 0;       // [n_experts + 2] int32: expert e's sorted positions are
                              // [offsets[e], offsets[e + 1]); offsets[n_experts] = known slots,
                              // offsets[n_experts + 1] = GEMM tiles in use
    size_t tiles = 0;         // [max_tiles] int4 (expert, first position, end position, 0)
    size_t total = 0;
    int64_t max_tiles = 0;  // ceil(rows k / 128) + min(n_experts, rows k): the GEMM grids' y
};

MoePrefillLayout moe_prefill_scratch_layout(int64_t rows, int64_t k, int64_t dim, int64_t ffn,
                                            int64_t n_experts);

// Device memory moe_experts_prefill needs (moe_prefill_scratch_layout(...).total): about
// rows k (2 ffn + 4 dim + 4) + 2 rows dim bytes, 152 MiB at rows 2048, k 8, dim 2048, ffn 512.
size_t moe_prefill_scratch_bytes(int64_t rows, int64_t k, int64_t dim, int64_t ffn,
                                 int64_t n_experts);

// out [rows, dim] = the routed experts of x [rows, dim] (16-byte aligned), ids [rows, k] int32 and
// weights [rows, k]; gate_up [n_experts * 2 ffn, dim] (expert e's ffn gate rows at e * 2 ffn, then
// its ffn up rows), down [n_experts * dim, ffn] (expert e's rows at e * dim), each W4 or W8.
// dim % 32 == 0, ffn % 32 == 0, 1 <= k <= kMoeMaxTopK, 1 <= n_experts <= kMoePrefillMaxExperts,
// any rows >= 0 (0 launches nothing), rows k small enough for the grids (about 8M slots).
// scratch: moe_prefill_scratch_bytes(rows, k, dim, ffn, n_experts) bytes, 16-byte aligned. An id
// outside [0, n_experts) reads nothing out of bounds and its slot contributes NaN, so its row of
// out is NaN and the other rows are unaffected. Arguments are checked on the host
// (kInvalidArgument). accumulate: the slots' sum is formed first, then added to out (moe_experts'
// convention; Ops::moe_experts adds to the residual stream).
Status moe_experts_prefill(const float* x, int64_t rows, const int32_t* ids, const float* weights,
                           int64_t k, const ExpertStackView& gate_up, const ExpertStackView& down,
                           int64_t n_experts, int64_t ffn, int64_t dim, void* scratch,
                           bool accumulate, float* out, cudaStream_t stream);

}  // namespace kestrel::cuda
