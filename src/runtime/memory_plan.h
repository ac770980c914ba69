// What a model needs on the GPU at a given context, computed before anything is loaded, so an
// engine can refuse up front (with a suggested -c) instead of running out of memory mid-way.
#pragma once

#include <cstdint>
#include <string>

#include "io/weight_source.h"
#include "models/model_config.h"
#include "ops/ops.h"  // WeightFormat
#include "runtime/kv_cache_format.h"

namespace kestrel {

// The CUDA backend's prefill chunk for a model: 2048 tokens, and 8192 for a mixture of experts,
// whose grouped expert GEMMs give each expert about chunk * top-k / n_experts rows (72 per expert
// at 2048 for Qwen3.5-35B-A3B's 257 experts of 9 slots, under one 128-row tile): measured on the
// H100, an 8192-token prompt prefills at 27.7k tok/s in chunks of 2048 and 30.0k in one chunk
// (bench/results/2026-11-23-qwen35-35b-a3b-h100.md).
int64_t default_prefill_chunk(const ModelConfig& config);

struct MemoryPlanOptions {
    int64_t context = 0;                // tokens per session; 0 = the model's trained context
    int64_t prefill_chunk = 0;          // tokens per prefill step; 0 = default_prefill_chunk
    int64_t kv_bytes_per_element = 2;   // the native K/V: bf16
    WeightFormat float_weights = WeightFormat::kW4;  // what --weights makes of float matrices
    // --kv-cache: kTq4 stores full layers' K and V in TQ4 (tq4_vector_bytes per vector, and one
    // fp32 rotation per head dim); sliding rings stay native.
    KvCacheFormat kv_cache = KvCacheFormat::kNative;
};

struct MemoryPlan {
    int64_t context = 0;
    int64_t weight_bytes = 0;           // in the engine's GPU formats (see engine_weight_bytes)
    int64_t kv_cache_bytes = 0;  // full layers: context entries; sliding: a ring; TQ4 rotations
    int64_t sliding_ring_entries = 0;   // KvCache::ring_capacity: window + min(chunk, 512) - 1
    int64_t recurrent_state_bytes = 0;  // Gated DeltaNet conv + recurrent state, fp32
    int64_t workspace_bytes = 0;        // activations of one prefill chunk and the logits
    int64_t runtime_bytes = 0;          // CUDA context and library workspaces (an estimate)
    int64_t total_bytes() const {
        return weight_bytes + kv_cache_bytes + recurrent_state_bytes + workspace_bytes + runtime_bytes;
    }
};

// Bytes a stored tensor takes once converted to the engine's GPU format. DESIGN.md "The Ops
// interface": 1-D tensors (norms, scalars) stay fp32; float matrices become `float_weights`
// (--weights: W4 by default, W8 or bf16; ones whose rows are not a multiple of 32 wide, such as
// a depthwise conv's taps, stay fp32); block types
// of at most 4.5 bits/weight become W4 (int4, group 32, 8-bit scale + min under an fp16 pair per
// 256 = 4.625 bits/weight) and wider block types W8 (int8, group 32, fp16 scale + min = 9
// bits/weight).
int64_t engine_weight_bytes(const WeightInfo& tensor,
                            WeightFormat float_weights = WeightFormat::kW4);

// The same for a tensor that the loader stacks with others into one projection (a layer's q, k, v;
// its gate, up): when the stack mixes W4 and W8 parts (a Q4_K q, k beside a Q6_K v) the loader
// holds all of it as W8, so a part that alone would be W4 is priced as W8.
int64_t engine_weight_bytes_in_stack(const WeightInfo& tensor, bool stack_has_w8,
                                     WeightFormat float_weights = WeightFormat::kW4);

// Whether the engine loads this tensor (vision towers, audio towers and the multi-token
// prediction head are skipped).
bool is_loaded_tensor(const ModelConfig& config, std::string_view name);

struct ParameterCount {
    int64_t total = 0;   // elements of every loaded tensor
    int64_t active = 0;  // per token: total less the routed experts a token does not use
};

ParameterCount count_parameters(const ModelConfig& config, const WeightSource& weights);

MemoryPlan plan_memory(const ModelConfig& config, const WeightSource& weights, const MemoryPlanOptions& options);

// The part of the plan a session adds once the weights are loaded: KV cache, recurrent state,
// workspace and the runtime reserve (weight_bytes 0).
MemoryPlan plan_session_memory(const ModelConfig& config, const MemoryPlanOptions& options);

// KV-cache bytes one token adds across the full-attention layers (the part that grows with
// context): n_kv_heads * (head_dim + v_head_dim) * kv_bytes_per_element per layer, or with kTq4
// n_kv_heads * 2 * tq4_vector_bytes(head_dim).
int64_t kv_bytes_per_token(const ModelConfig& config, int64_t kv_bytes_per_element = 2,
                           KvCacheFormat kv_cache = KvCacheFormat::kNative);

// GPU memory the runtime takes once a session runs, beyond the CUDA context that exists before
// it (cuBLAS / cuBLASLt kernels and workspace, graphs, allocation granularity; memory_plan.cpp
// kRuntimeReserve says how it was measured): a session must leave room for it.
constexpr int64_t kLateRuntimeBytes = int64_t{768} << 20;

// The up-front refusal (issue 8): ok when a session planned by `options` (its KV cache, state
// and workspace, and kLateRuntimeBytes; the weights already loaded) fits in `available_bytes`; else
// kOutOfMemory naming what it needs, what is free, and the longest -c that fits (a multiple of
// 256), and, when the session is native and tq4_available, the longest -c with --kv-cache tq4.
Status check_session_fits(const ModelConfig& config, const MemoryPlanOptions& options,
                          int64_t available_bytes, bool tq4_available);

// The smallest prefill chunk a session is given on its own (choose_prefill_chunk).
constexpr int64_t kSmallestAutoPrefillChunk = 256;

// The prefill chunk a session runs with: options.prefill_chunk when given (> 0) and the session
// fits; with 0, default_prefill_chunk(config) or, when that does not fit in `available_bytes`, the
// largest halving of it down to kSmallestAutoPrefillChunk that does. A smaller chunk shrinks the
// workspace and, below 512, the sliding-window rings (window + min(chunk, 512) - 1 entries), at
// some prefill speed (the GEMMs run on fewer rows). Else check_session_fits' refusal for the chunk
// asked for (or the default), which names a -b that fits where a smaller chunk would.
Result<int64_t> choose_prefill_chunk(const ModelConfig& config, const MemoryPlanOptions& options,
                                     int64_t available_bytes, bool tq4_available);

}  // namespace kestrel
