// Host API of the routed experts of a Qwen3.5-MoE layer on the GPU (moe_experts.cu): for every
// row t of x and each of its k routed slots j, expert e = ids[t, j] runs its SwiGLU FFN, and
//   out[t, :] = sum over j = 0..k-1, in j order, in fp32, of weights[t, j] * down_e(act_{t,j})
//   act_{t,j} = silu(gate_e . x[t]) * (up_e . x[t])              (ops/ops.h, Ops::moe_experts)
// in the engine's quantised arithmetic, which is what the CPU twin in
// tests/unit/cuda_moe_experts_test.cpp composes:
//   x[t] -> Q8 blocks (quantize_q8_row); gate and up rows by matvec_w4a8 / matvec_w8a8 on those
//   blocks; act in fp32 with silu(g) = g / (1 + exp(-g)); act -> Q8 blocks (quantize_q8_row);
//   down rows by matvec_w4a8 / matvec_w8a8 on them; the weighted sum in j order.
// The kernels agree with the twin up to fp32 accumulation order (the dots' group order; the Q8
// quantisations are the twin's float operations, so they are bit for bit on equal inputs).
// Plain C++: includable from .cpp files that have the CUDA runtime headers.
//
// All pointers are device pointers. The launcher only launches (two kernels): it never
// synchronises, allocates or copies, and never reads ids, which the router kernel writes on the
// device: the call can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kestrel/status.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/gemv_w8a8.h"
#include "ops/weight_format.h"

namespace kestrel::cuda {

// One stack of expert matrices, in W4 or in W8 (the two stacks of a layer may differ: llama.cpp's
// Q4_K_M files hold Q4_K gate/up beside Q6_K down, which the engine holds as W8).
struct ExpertStackView {
    bool is_w4 = true;
    W4DeviceView w4;  // read when is_w4
    W8DeviceView w8;  // read otherwise

    int64_t rows() const { return is_w4 ? w4.n : w8.n; }
    int64_t cols() const { return is_w4 ? w4.k : w8.k; }
};

// A launcher's host-side check of one stack (moe_experts, moe_experts_prefill): the view is
// [rows, cols] and its arrays are present and aligned as the kernels load them (qs 16 bytes;
// W4 group_scales 2, super_scales 4; W8 scale_min 4). Otherwise kInvalidArgument with the message
// "<op>: <name> ...", op being the launcher's name and name the stack's ("gate_up", "down").
Status check_expert_stack(const ExpertStackView& view, const char* op, const char* name,
                          int64_t rows, int64_t cols);

// The same for a launcher's other arrays: x and scratch present and 16-byte aligned, ids, weights
// and out present and 4-byte aligned. Otherwise kInvalidArgument, "<op>: ...".
Status check_expert_buffers(const char* op, const float* x, const int32_t* ids,
                            const float* weights, const void* scratch, const float* out);

// k above this is rejected (the router's own limit, qwen35_ops.h kMaxRouteTopK).
constexpr int64_t kMoeMaxTopK = 32;
// dim above this is rejected: each gate/up block holds its row of x as Q8 blocks in shared
// memory, dim / 32 x 48 bytes (24 KiB here), well within the 48 KiB a launch gets without
// opting in.
constexpr int64_t kMoeMaxDim = 16384;
// k ffn above this is rejected: each down block holds its row's k ffn / 32 act blocks in shared
// memory (24 KiB here; Qwen3.5-35B-A3B has k ffn = 8 x 512 = 4096).
constexpr int64_t kMoeMaxSlotValues = 16384;

// Device memory moe_experts needs, in 256-byte aligned pieces. Today one piece: the Q8 blocks of
// act, [rows, k, ffn / 32] Q8Block at the start of scratch (the tests read them back). dim does
// not enter (x is quantised in shared memory); it is an argument so that callers size scratch
// from the layer's full shape.
size_t moe_experts_scratch_bytes(int64_t rows, int64_t k, int64_t dim, int64_t ffn);

// out [rows, dim] = (accumulate: out +) the routed experts of x [rows, dim] (16-byte aligned),
// the sum over slots formed first and then added (Ops::moe_experts), ids [rows, k] int32
// and weights [rows, k] (the router's, moe_route in qwen35_ops.h). gate_up: [n_experts * 2 ffn,
// dim], expert e's ffn gate rows at row e * 2 ffn, then its ffn up rows; down: [n_experts * dim,
// ffn], expert e's rows at e * dim. dim % 32 == 0, ffn % 32 == 0, 1 <= k <= kMoeMaxTopK, dim <=
// kMoeMaxDim, k ffn <= kMoeMaxSlotValues, any rows >= 0 (0 launches nothing). scratch:
// moe_experts_scratch_bytes(rows, k, dim, ffn) bytes, 16-byte aligned. An id outside [0, n_experts)
// reads nothing out of bounds (expert 0's rows stand in) and its slot contributes NaN, so its row
// of out is NaN and the other rows are unaffected. Arguments are checked on the host
// (kInvalidArgument).
Status moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights,
                   int64_t k, const ExpertStackView& gate_up, const ExpertStackView& down,
                   int64_t n_experts, int64_t ffn, int64_t dim, void* scratch, bool accumulate,
                   float* out, cudaStream_t stream);

// The warps per output row group the down kernel picks (1, 2, 4 or 8: they split the k slots of
// a row between them), exposed so that tests can see which variants their shapes reach. Rule:
// the smallest split that leaves each warp at most one batch of slots (W4 4, W8 8), halved once
// where that grid would need a second wave of blocks (blocks_per_sm resident per SM) and half of
// it fits in one (decode with k = 9, the shared expert stacked: a warp's second batch costs one
// more weight round trip, a second wave a whole block's time); then doubled while the grid has
// fewer blocks than SMs, up to 8 and below 2 k.
int moe_down_warps_per_row(int64_t rows, int64_t k, int64_t dim, int64_t ffn, bool down_is_w4,
                           int sm_count, int blocks_per_sm);

}  // namespace kestrel::cuda
