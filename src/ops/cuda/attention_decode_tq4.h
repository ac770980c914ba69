// The TQ4 decode splits' kernel (attention_decode_tq4.cu), launched by attention_decode.cu, which
// plans the splits and combines them with its reduce kernel.
#pragma once

#include <cuda_runtime.h>

#include "kestrel/status.h"
#include "ops/cuda/attention_common.cuh"

namespace kestrel::cuda {

// Packed query rows a block (the mma's n: the 8 query heads of a Gemma 4 / Qwen3.5 kv head).
constexpr int kTq4DecodeRows = 8;
// Blocks of the kernel resident on one SM (128 registers a thread at 256 threads, ~75 KiB of
// shared memory a block): the split plan fills this many per SM of an H100 (decode_max_splits;
// the bf16 kernel's three-quarter target, kDecodeTargetBlocks, was not measured here).
constexpr int kTq4DecodeBlocksPerSm = 2;
constexpr int kTq4DecodeTargetBlocks = kTq4DecodeBlocksPerSm * 132;

// Launches the splits: grid (args.max_splits, n_kv_heads, row tiles of kTq4DecodeRows). One split
// (decode_splits_used) writes args.out itself, normalised; more write their partials for the
// reduce.
Status launch_attention_decode_tq4_splits(const AttentionKernelArgs& args, cudaStream_t stream);

}  // namespace kestrel::cuda
