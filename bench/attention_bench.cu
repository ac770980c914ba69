// Microbenchmark of the GPU attention (src/ops/cuda/attention_{decode,prefill}.cu) on the Gemma 4
// 31B layer shapes (32 query heads; sliding: 16 kv heads x 256, window 1024, ring 1535; full:
// 4 kv heads x 512, flat cache).
//   decode (T = 1, split-K + reduce, or a single pass) at depths 16 .. 32768 under graph replay, as
//   the
//     engine runs it; effective GB/s = the live K and V bytes read (min(depth, window) keys) per
//     call / time. Each graph rotates over enough cache copies to exceed 4x the L2, so every
//     call reads DRAM.
//   prefill T = 2048 (positions 0..2047) at head 256 (sliding, ring 1024 + 2048 - 1) and 512
//     (full); TFLOP/s counts only the visible (query, key) pairs: 2 (d + dv) flops each.
//   TQ4 (the full layer over a TQ4 cache of random indices and norms, as the 128k runs use it):
//   decode at depths 32768 and 130000 (GB/s of index bytes and norms), and prefill chunks of
//   256 and 2048 tokens at depth 65536 (TFLOP/s as above).
// Median of the repeats, timed with events after warm-up. Random bf16 data, never zeros.
// Usage: attention_bench [repeats=30 [depth]]: with a depth, only the full layer's decode at that
// depth (one shape for a profiler such as ncu); depth "tq4": only the TQ4 part.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_check.h"
#include "ops/cuda/attention.h"
#include "ops/kv_tq4.h"

namespace {

// bf16 in +-[0.5, 1) * 2^-2..2^0 with random signs: finite, never zero.
__global__ void fill_bf16(uint16_t* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        uint32_t x = bench_hash(i, seed);
        x *= 0x846ca68bu;
        x ^= x >> 16;
        p[i] = static_cast<uint16_t>((x & 0x8000u) | ((124u + (x >> 20) % 3u) << 7) | (x & 0x7fu));
    }
}

__global__ void fill_float(float* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t x = bench_hash(i, seed);
        p[i] = (static_cast<float>(x & 0xffffff) / 16777216.0f - 0.5f) * 2.0f;
    }
}

float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Median over `repeats` of one replay of `graph`, in ms.
float time_graph(cudaGraphExec_t graph, cudaStream_t stream, int repeats) {
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
    for (int i = 0; i < 3; ++i) CHECK(cudaGraphLaunch(graph, stream));
    std::vector<float> times;
    for (int i = 0; i < repeats; ++i) {
        CHECK(cudaEventRecord(start, stream));
        CHECK(cudaGraphLaunch(graph, stream));
        CHECK(cudaEventRecord(stop, stream));
        CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    CHECK(cudaEventDestroy(start));
    CHECK(cudaEventDestroy(stop));
    return median(times);
}

struct Layer {
    const char* name;
    int64_t n_kv_heads, head_dim, window;
};
constexpr int64_t kHeads = 32;

struct Cache {
    void* k = nullptr;
    void* v = nullptr;
    kestrel::cuda::KvCacheBf16View view;
};

Cache make_cache(const Layer& layer, int64_t capacity, cudaStream_t stream, uint32_t seed) {
    Cache c;
    const int64_t n = capacity * layer.n_kv_heads * layer.head_dim;
    CHECK(cudaMalloc(&c.k, n * 2));
    CHECK(cudaMalloc(&c.v, n * 2));
    fill_bf16<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(c.k), n, seed);
    fill_bf16<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(c.v), n, seed + 1);
    CHECK(cudaGetLastError());
    c.view = {static_cast<uint16_t*>(c.k), static_cast<uint16_t*>(c.v), capacity, layer.n_kv_heads, layer.head_dim,
              layer.head_dim};
    return c;
}

void free_cache(Cache& c) {
    CHECK(cudaFree(c.k));
    CHECK(cudaFree(c.v));
}

// Random index bytes (any byte is valid) and norms in [0.5, 1.5).
__global__ void fill_bytes(uint8_t* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
         i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t x = bench_hash(i, seed);
        p[i] = static_cast<uint8_t>(x >> 8);
    }
}

__global__ void fill_norms(uint16_t* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
         i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t x = bench_hash(i, seed);
        p[i] = static_cast<uint16_t>(((126u + (x >> 20) % 2u) << 7) | (x & 0x7fu));
    }
}

struct Tq4Cache {
    kestrel::cuda::KvCacheTq4View view;
};

Tq4Cache make_tq4_cache(int64_t capacity, int64_t n_kv_heads, int64_t head_dim,
                        cudaStream_t stream) {
    Tq4Cache c;
    const int64_t bytes = capacity * n_kv_heads * head_dim / 2;
    const int64_t norms = capacity * n_kv_heads;
    CHECK(cudaMalloc(&c.view.k, bytes));
    CHECK(cudaMalloc(&c.view.v, bytes));
    CHECK(cudaMalloc(&c.view.k_norm, norms * 2));
    CHECK(cudaMalloc(&c.view.v_norm, norms * 2));
    fill_bytes<<<1024, 256, 0, stream>>>(c.view.k, bytes, 11);
    fill_bytes<<<1024, 256, 0, stream>>>(c.view.v, bytes, 12);
    fill_norms<<<1024, 256, 0, stream>>>(c.view.k_norm, norms, 13);
    fill_norms<<<1024, 256, 0, stream>>>(c.view.v_norm, norms, 14);
    CHECK(cudaGetLastError());
    c.view.capacity = capacity;
    c.view.n_kv_heads = n_kv_heads;
    c.view.head_dim = head_dim;
    return c;
}

void free_tq4_cache(Tq4Cache& c) {
    CHECK(cudaFree(c.view.k));
    CHECK(cudaFree(c.view.v));
    CHECK(cudaFree(c.view.k_norm));
    CHECK(cudaFree(c.view.v_norm));
}

// The full layer over a TQ4 cache of 131072 slots: decode at two depths, prefill chunks at 65536.
void bench_tq4(float* q, float* out, int64_t* positions, cudaStream_t stream, int repeats) {
    constexpr int64_t kCapacity = 131072;
    constexpr int64_t kKvHeads = 4;
    constexpr int64_t kHeadDim = 512;
    Tq4Cache cache = make_tq4_cache(kCapacity, kKvHeads, kHeadDim, stream);
    const kestrel::cuda::AttentionShape shape{kHeads, 1.0f, 0, 0.0f};
    std::printf("\nTQ4 full 4x512, capacity %lld\n%-22s %7s %9s %9s\n",
                static_cast<long long>(kCapacity), "call", "depth", "us", "GB/s|TF/s");
    const size_t workspace_bytes =
        kestrel::cuda::attention_decode_tq4_workspace_bytes(1, cache.view, shape);
    void* workspace;
    CHECK(cudaMalloc(&workspace, workspace_bytes));
    for (const int64_t depth : {int64_t{32768}, int64_t{130000}}) {
        const int64_t position = depth - 1;
        CHECK(cudaMemcpyAsync(positions, &position, 8, cudaMemcpyHostToDevice, stream));
        CHECK(cudaStreamSynchronize(stream));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        constexpr int kLaunches = 4;
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < kLaunches; ++i) {
            CHECK_STATUS(kestrel::cuda::attention_decode_tq4(q, positions, 1, cache.view, shape,
                                                             workspace, out, stream));
        }
        CHECK(cudaStreamEndCapture(stream, &graph));
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        CHECK(cudaGraphDestroy(graph));
        const float ms = time_graph(exec, stream, repeats) / kLaunches;
        CHECK(cudaGraphExecDestroy(exec));
        const double bytes = static_cast<double>(depth) * kKvHeads * (kHeadDim + 4);
        std::printf("%-22s %7lld %9.2f %9.1f\n", "decode T = 1", static_cast<long long>(depth),
                    ms * 1e3, bytes / (ms * 1e-3) / 1e9);
    }
    CHECK(cudaFree(workspace));
    constexpr int64_t kDepth = 65536;
    for (const int64_t n_tokens : {int64_t{256}, int64_t{2048}}) {
        std::vector<int64_t> host_positions(n_tokens);
        for (int64_t t = 0; t < n_tokens; ++t) host_positions[t] = kDepth + t;
        CHECK(cudaMemcpyAsync(positions, host_positions.data(), n_tokens * 8,
                              cudaMemcpyHostToDevice, stream));
        CHECK(cudaStreamSynchronize(stream));
        double pairs = 0;
        for (int64_t t = 0; t < n_tokens; ++t) pairs += static_cast<double>(kDepth + t + 1);
        const double flops = pairs * kHeads * 2.0 * (2 * kHeadDim);
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        CHECK_STATUS(kestrel::cuda::attention_prefill_tq4(q, positions, n_tokens, cache.view, shape,
                                                          out, stream));
        CHECK(cudaStreamEndCapture(stream, &graph));
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        CHECK(cudaGraphDestroy(graph));
        const float ms = time_graph(exec, stream, std::max(3, repeats / 10));
        CHECK(cudaGraphExecDestroy(exec));
        std::printf("prefill T = %-10lld %7lld %9.1f %9.1f\n", static_cast<long long>(n_tokens),
                    static_cast<long long>(kDepth), ms * 1e3, flops / (ms * 1e-3) / 1e12);
    }
    free_tq4_cache(cache);
}

}  // namespace

int main(int argc, char** argv) {
    const int repeats = argc > 1 ? std::atoi(argv[1]) : 30;
    const bool only_tq4 = argc > 2 && std::string(argv[2]) == "tq4";
    const int64_t only_depth = argc > 2 && !only_tq4 ? std::atoll(argv[2]) : 0;
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

    const Layer sliding{"sliding 16x256 w1024", 16, 256, 1024};
    const Layer full{"full 4x512", 4, 512, 0};
    float* q;
    float* out;
    int64_t* positions;
    CHECK(cudaMalloc(&q, 2048 * kHeads * 512 * 4));
    CHECK(cudaMalloc(&out, 2048 * kHeads * 512 * 4));
    CHECK(cudaMalloc(&positions, 2048 * 8));
    fill_float<<<1024, 256, 0, stream>>>(q, 2048 * kHeads * 512, 3);
    CHECK(cudaGetLastError());

    if (only_tq4) {
        bench_tq4(q, out, positions, stream, repeats);
        return 0;
    }
    std::printf("\ndecode, T = 1, graph replay\n%-22s %7s %6s %9s %9s\n", "layer", "depth", "keys", "us", "GB/s");
    for (const Layer& layer : {sliding, full}) {
        if (only_depth > 0 && layer.window > 0) continue;
        // Short depths: around the single-pass crossover (KESTREL_DECODE_SINGLE_PASS_KEYS).
        for (const int64_t depth : {int64_t{16}, int64_t{32}, int64_t{64}, int64_t{128},
                                    int64_t{256}, int64_t{512}, int64_t{4096}, int64_t{32768}}) {
            if (only_depth > 0 && depth != only_depth) continue;
            const int64_t capacity = layer.window > 0 ? layer.window + 512 - 1 : depth;
            const int64_t keys = layer.window > 0 ? std::min(depth, layer.window) : depth;
            const int64_t live_bytes = keys * layer.n_kv_heads * layer.head_dim * 2 * 2;
            const int64_t cache_bytes = capacity * layer.n_kv_heads * layer.head_dim * 2 * 2;
            const int copies = static_cast<int>(std::clamp<int64_t>((4 * int64_t{prop.l2CacheSize} + live_bytes - 1) / live_bytes,
                                                                    1, std::max<int64_t>(1, (int64_t{8} << 30) / cache_bytes)));
            std::vector<Cache> caches;
            for (int c = 0; c < copies; ++c) caches.push_back(make_cache(layer, capacity, stream, 100 + 2 * c));
            const kestrel::cuda::AttentionShape shape{kHeads, 1.0f, layer.window, 0.0f};
            const size_t workspace_bytes = kestrel::cuda::attention_workspace_bytes(1, caches[0].view, shape);
            void* workspace;
            CHECK(cudaMalloc(&workspace, workspace_bytes));
            const int64_t position = depth - 1;
            CHECK(cudaMemcpyAsync(positions, &position, 8, cudaMemcpyHostToDevice, stream));
            CHECK(cudaStreamSynchronize(stream));
            cudaGraph_t graph;
            cudaGraphExec_t exec;
            CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
            for (const Cache& c : caches) {
                CHECK_STATUS(kestrel::cuda::attention(q, positions, 1, c.view, shape, workspace, out, stream));
            }
            CHECK(cudaStreamEndCapture(stream, &graph));
            CHECK(cudaGraphInstantiate(&exec, graph, 0));
            CHECK(cudaGraphDestroy(graph));
            const float ms = time_graph(exec, stream, repeats) / copies;
            CHECK(cudaGraphExecDestroy(exec));
            std::printf("%-22s %7lld %6lld %9.2f %9.1f\n", layer.name, static_cast<long long>(depth),
                        static_cast<long long>(keys), ms * 1e3, live_bytes / (ms * 1e-3) / 1e9);
            CHECK(cudaFree(workspace));
            for (Cache& c : caches) free_cache(c);
        }
    }

    if (only_depth > 0) return 0;
    std::printf("\nprefill, T = 2048 at positions 0..2047\n%-22s %9s %9s\n", "layer", "us", "TFLOP/s");
    const int64_t n_tokens = 2048;
    std::vector<int64_t> host_positions(n_tokens);
    for (int64_t t = 0; t < n_tokens; ++t) host_positions[t] = t;
    CHECK(cudaMemcpyAsync(positions, host_positions.data(), n_tokens * 8, cudaMemcpyHostToDevice, stream));
    CHECK(cudaStreamSynchronize(stream));
    for (const Layer& layer : {sliding, full}) {
        const int64_t capacity = layer.window > 0 ? layer.window + n_tokens - 1 : n_tokens;
        Cache cache = make_cache(layer, capacity, stream, 7);
        const kestrel::cuda::AttentionShape shape{kHeads, 1.0f / 16.0f, layer.window, 0.0f};
        double pairs = 0;
        for (int64_t t = 0; t < n_tokens; ++t) pairs += layer.window > 0 ? std::min(t + 1, layer.window) : t + 1;
        const double flops = pairs * kHeads * 2.0 * (2 * layer.head_dim);
        constexpr int kLaunches = 5;
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < kLaunches; ++i) {
            CHECK_STATUS(kestrel::cuda::attention(q, positions, n_tokens, cache.view, shape, nullptr, out, stream));
        }
        CHECK(cudaStreamEndCapture(stream, &graph));
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        CHECK(cudaGraphDestroy(graph));
        const float ms = time_graph(exec, stream, std::max(5, repeats / 3)) / kLaunches;
        CHECK(cudaGraphExecDestroy(exec));
        std::printf("%-22s %9.1f %9.1f\n", layer.name, ms * 1e3, flops / (ms * 1e-3) / 1e12);
        free_cache(cache);
    }
    bench_tq4(q, out, positions, stream, repeats);
    CHECK(cudaFree(q));
    CHECK(cudaFree(out));
    CHECK(cudaFree(positions));
    CHECK(cudaStreamDestroy(stream));
    return 0;
}
