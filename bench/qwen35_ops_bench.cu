// Microbenchmark of the Qwen3.5-35B-A3B layer ops on the GPU (src/ops/cuda/gated_delta.cu,
// qwen35_ops.cu) at the model's shapes (qwen35-moe.md: conv 4 taps over 8192 channels; 16 key
// heads, 32 value heads, 128 x 128 fp32 state each; 256 experts, top 8; expert ffn 512, shared
// 512; attention gate 16 x 256; hidden 2048). Each op is launched 20 times in a CUDA graph (as
// decode runs them) and timed with events after warm-up, median of the repeats; us per launch.
// The gated delta rule is also timed at T = 64 (prefill, which it runs token by token) and its
// decode row gets an effective GB/s: the state read and written once (2 x 2 MiB).
// Usage: qwen35_ops_bench [repeats=30]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "bench_check.h"
#include "ops/cuda/gated_delta.h"
#include "ops/cuda/qwen35_ops.h"

namespace {

__global__ void fill_small(float* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
         i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t x = bench_hash(i, seed);
        p[i] = (static_cast<float>(x & 0xffffff) / 16777216.0f - 0.5f) * 0.5f;
    }
}

float* device_floats(int64_t n, uint32_t seed, cudaStream_t stream) {
    float* p;
    CHECK(cudaMalloc(&p, n * 4));
    fill_small<<<256, 256, 0, stream>>>(p, n, seed);
    CHECK(cudaGetLastError());
    return p;
}

// Median over `repeats` replays of a graph of 20 launches of `launch`, in us per launch.
float time_launches(const std::function<kestrel::Status(cudaStream_t)>& launch, cudaStream_t stream,
                    int repeats) {
    constexpr int kLaunches = 20;
    cudaGraph_t graph;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < kLaunches; ++i) CHECK_STATUS(launch(stream));
    CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CHECK(cudaGraphDestroy(graph));
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
    for (int i = 0; i < 3; ++i) CHECK(cudaGraphLaunch(exec, stream));
    std::vector<float> times;
    for (int i = 0; i < repeats; ++i) {
        CHECK(cudaEventRecord(start, stream));
        CHECK(cudaGraphLaunch(exec, stream));
        CHECK(cudaEventRecord(stop, stream));
        CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    CHECK(cudaEventDestroy(start));
    CHECK(cudaEventDestroy(stop));
    CHECK(cudaGraphExecDestroy(exec));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2] * 1000.0f / kLaunches;
}

}  // namespace

int main(int argc, char** argv) {
    const int repeats = argc > 1 ? std::atoi(argv[1]) : 30;
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

    constexpr int64_t kChannels = 8192, kTaps = 4, kKeyHeads = 16, kValueHeads = 32, kHeadDim = 128;
    constexpr int64_t kPrefill = 64;
    kestrel::GatedDeltaParams params;
    params.n_k_heads = kKeyHeads;
    params.n_v_heads = kValueHeads;
    params.k_head_dim = kHeadDim;
    params.v_head_dim = kHeadDim;
    params.order = kestrel::GdnHeadOrder::kTiled;  // GGUF files' order
    float* x = device_floats(kPrefill * kChannels, 1, stream);
    float* conv_weight = device_floats(kChannels * kTaps, 2, stream);
    float* conv_state = device_floats((kTaps - 1) * kChannels, 3, stream);
    float* conv_out = device_floats(kPrefill * kChannels, 4, stream);
    float* a = device_floats(kPrefill * kValueHeads, 5, stream);
    float* b = device_floats(kPrefill * kValueHeads, 6, stream);
    float* a_neg = device_floats(kValueHeads, 7, stream);
    float* dt_bias = device_floats(kValueHeads, 8, stream);
    float* state = device_floats(kValueHeads * kHeadDim * kHeadDim, 9, stream);
    float* core = device_floats(kPrefill * kValueHeads * kHeadDim, 10, stream);
    float* z = device_floats(kValueHeads * kHeadDim, 11, stream);
    float* norm_weight = device_floats(kHeadDim, 12, stream);
    float* gated = device_floats(kValueHeads * kHeadDim, 13, stream);
    float* logits = device_floats(256, 14, stream);
    float* route_weights = device_floats(8, 15, stream);
    int32_t* ids;
    CHECK(cudaMalloc(&ids, 8 * 4));
    float* gate = device_floats(8 * 512, 16, stream);
    float* up = device_floats(8 * 512, 17, stream);
    float* act = device_floats(8 * 512, 18, stream);
    float* hidden = device_floats(2048, 19, stream);
    float* shared_out = device_floats(2048, 20, stream);
    float* scalar_gate = device_floats(1, 21, stream);
    float* attention = device_floats(16 * 256, 22, stream);
    float* attention_gate = device_floats(16 * 256, 23, stream);
    CHECK(cudaStreamSynchronize(stream));

    struct Row {
        const char* name;
        std::function<kestrel::Status(cudaStream_t)> launch;
        double bytes;  // 0: no GB/s column
    };
    const double state_bytes = 2.0 * kValueHeads * kHeadDim * kHeadDim * 4;
    const std::vector<Row> rows = {
        {"conv1d_causal T=1 (8192 ch, 4 taps, SiLU)",
         [&](cudaStream_t s) {
             return kestrel::cuda::conv1d_causal(x, 1, conv_weight, conv_state, kTaps, kChannels,
                                                 true, conv_out, s);
         },
         0.0},
        {"gated_delta_rule T=1 (32 v heads, 128x128)",
         [&](cudaStream_t s) {
             return kestrel::cuda::gated_delta_rule(conv_out, a, b, a_neg, dt_bias, 1, params,
                                                    state, core, s);
         },
         state_bytes},
        {"gated_delta_rule T=64 (token by token)",
         [&](cudaStream_t s) {
             return kestrel::cuda::gated_delta_rule(conv_out, a, b, a_neg, dt_bias, kPrefill,
                                                    params, state, core, s);
         },
         0.0},
        {"rms_norm_gated 32 x 128",
         [&](cudaStream_t s) {
             return kestrel::cuda::rms_norm_gated(core, z, norm_weight, kValueHeads, kHeadDim,
                                                  1e-6f, gated, s);
         },
         0.0},
        {"moe_route 256 experts, top 8",
         [&](cudaStream_t s) {
             return kestrel::cuda::moe_route(logits, 1, 256, 8, nullptr, ids, route_weights, s);
         },
         0.0},
        {"silu_and_mul 8 x 512",
         [&](cudaStream_t s) { return kestrel::cuda::silu_and_mul(gate, up, 8 * 512, act, s); },
         0.0},
        {"sigmoid_mul 16 x 256",
         [&](cudaStream_t s) {
             return kestrel::cuda::sigmoid_mul(attention, attention_gate, 16 * 256, attention, s);
         },
         0.0},
        {"add_sigmoid_scaled 2048",
         [&](cudaStream_t s) {
             return kestrel::cuda::add_sigmoid_scaled(shared_out, scalar_gate, 1, 2048, hidden, s);
         },
         0.0},
    };
    std::printf("\nQwen3.5 layer ops, graph replay\n%-46s %9s %9s\n", "op", "us", "GB/s");
    for (const Row& row : rows) {
        const float us = time_launches(row.launch, stream, repeats);
        if (row.bytes > 0) {
            std::printf("%-46s %9.2f %9.1f\n", row.name, us, row.bytes / (us * 1e3));
        } else {
            std::printf("%-46s %9.2f %9s\n", row.name, us, "");
        }
    }
    CHECK(cudaStreamDestroy(stream));
    return 0;
}
