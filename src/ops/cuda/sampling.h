// Sampling on the GPU (kernels: sampling.cu): device logits [vocab] -> one token id in device
// memory, so a decode step sends back 4 bytes (techniques.md §5). The twin is the CPU
// kestrel::Sampler (runtime/sampler.h): for the same parameters, seed, logits and accepted tokens
// the GPU picks the same ids (tests/unit/cuda_sampling_test.cpp asserts it draw by draw), through
// the same chain: penalties -> top-k -> top-p -> min-p -> temperature -> draw, with the draw
// u = sampling_uniform(seed, step) computed on the device from a step counter in device memory.
//
// Graph-capturable: sample(), accept() and reset() only enqueue work on the given stream; every
// value that changes per step (the token history, its counts, the draw counter) lives in device
// memory, and all workspace is allocated once by create().
//
// How the GPU reaches the CPU's numbers (details in sampling.cu):
//   - the order is the CPU's sort (logit descending, lower id first on ties): a stable radix sort
//     of the penalised logits (CUB) over ids 0..vocab-1;
//   - exp() of each fp32 argument in double, rounded to fp32 (glibc's expf is correctly rounded up
//     to a 0.502-ulp bound, so the fp32 values agree except at astronomically rare ties);
//   - sums of probabilities in double as the CPU does, in a fixed tree order: they differ from the
//     CPU's sequential sums by ~1e-16 relative, which changes a cut or a draw only if it lands that
//     close to a boundary.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "kestrel/status.h"

namespace kestrel::cuda {

// kestrel::SamplingParams, field for field (ops/ may not include runtime/).
struct GpuSamplingParams {
    float temperature = 0.8f;        // <= 0: greedy
    int32_t top_k = 40;              // <= 0: off
    float top_p = 0.95f;             // >= 1: off
    float min_p = 0.05f;             // <= 0: off
    float repeat_penalty = 1.0f;     // 1: off
    int32_t repeat_last_n = 64;      // 0: off, -1: the whole history
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    uint64_t seed = 0;
};

class GpuSampler {
public:
    // Allocates the device workspace and state for logits of `vocab` entries (1 <= vocab < 2^31)
    // and zeroes the state (synchronously: create is not part of a captured step).
    static Result<GpuSampler> create(int64_t vocab, const GpuSamplingParams& params);

    GpuSampler(GpuSampler&& other) noexcept;
    GpuSampler& operator=(GpuSampler&& other) noexcept;
    GpuSampler(const GpuSampler&) = delete;
    GpuSampler& operator=(const GpuSampler&) = delete;
    ~GpuSampler();

    // Writes the sampled id of logits [vocab] (device fp32) to *token_out (device int32). Greedy:
    // one kernel; otherwise a fixed sequence of kernels (their count depends only on the params).
    Status sample(const float* logits, int32_t* token_out, cudaStream_t stream);
    // Records `count` accepted tokens (device int32, prompt or generated, oldest first) for the
    // penalties, as Sampler::accept one by one. No work when the penalties are off.
    Status accept(const int32_t* tokens, int64_t count, cudaStream_t stream);
    Status accept(const int32_t* token, cudaStream_t stream) { return accept(token, 1, stream); }
    // Forgets the history and restarts the draw counter (Sampler::reset).
    Status reset(cudaStream_t stream);

    int64_t vocab() const { return vocab_; }
    const GpuSamplingParams& params() const { return params_; }

    struct Workspace;  // one device allocation and the pointers into it (sampling.cu)

private:
    GpuSampler();

    GpuSamplingParams params_;
    int64_t vocab_ = 0;
    std::unique_ptr<Workspace> workspace_;
};

}  // namespace kestrel::cuda
