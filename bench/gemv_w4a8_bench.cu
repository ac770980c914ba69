// Microbenchmark of the W4A8 and W8A8 decode GEMVs (src/ops/cuda/gemv_w4a8.cu, gemv_w8a8.cu) on
// the Gemma 4 31B and Qwen3.5-35B-A3B shapes: GB/s of the GEMV alone (weights + scales + Q8
// activations + fp32 output, each counted once; W4's scales are group_scales (2 bytes per 32
// weights) + super_scales (4 bytes per 256), W8's one (scale, min) word per 32) against a
// device-to-device copy measured in the same run (bytes read + written). Each shape holds enough
// weight copies to exceed 4x the L2 (rotated, so every launch reads DRAM); the launches are
// captured in a CUDA graph (as decode runs), timed with events after warm-up, median of the
// repeats. Random data, never zeros. Usage: gemv_w4a8_bench [repeats=30]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_check.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/gemv_w8a8.h"

namespace {

__global__ void fill_random(uint32_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words; i += int64_t{gridDim.x} * blockDim.x) {
        uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        p[i] = x;
    }
}

// W4 group_scales words sc | m << 8: sc in [1, 255], m in [0, 255].
__global__ void fill_group_scales(uint16_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words;
         i += int64_t{gridDim.x} * blockDim.x) {
        uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        x ^= x >> 16;
        x *= 0x7feb352du;
        x ^= x >> 15;
        p[i] = static_cast<uint16_t>((1u + (x & 0xffffu) % 255u) | (((x >> 16) & 0xffu) << 8));
    }
}

// W4 super_scales words (d, dmin): d in [2^-14, 2^-13), dmin in [2^-13, 2^-12): finite fp16 bits.
__global__ void fill_super_scales(uint32_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words;
         i += int64_t{gridDim.x} * blockDim.x) {
        uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        x ^= x >> 16;
        x *= 0x7feb352du;
        x ^= x >> 15;
        p[i] = ((1u << 10) | (x & 0x3ffu)) | (((2u << 10) | ((x >> 10) & 0x3ffu)) << 16);
    }
}

// W8 (scale, min) pairs: scale in [2^-9, 2^-8), min in [0, 2^-5): finite fp16 bits.
__global__ void fill_scale_min(uint32_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words; i += int64_t{gridDim.x} * blockDim.x) {
        uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15;
        const uint32_t scale = (6u << 10) | (x & 0x3ffu);          // 2^-9 * (1 + f)
        const uint32_t min = (((x >> 10) % 10u) << 10) | ((x >> 20) & 0x3ffu);  // < 2^-5
        p[i] = scale | (min << 16);
    }
}

__global__ void fill_normalish(float* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        p[i] = (static_cast<float>(x & 0xffffff) / 16777216.0f - 0.5f) * 4.0f;
    }
}

// A plain 16-byte copy kernel: the second copy ceiling (cudaMemcpy's own kernel can fall short of it).
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        dst[i] = src[i];
    }
}

float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Median over `repeats` of the time of one replay of `graph`, in ms.
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

}  // namespace

int main(int argc, char** argv) {
    const int repeats = argc > 1 ? std::atoi(argv[1]) : 30;
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

    // Copy ceiling: 1 GiB device-to-device, 10 copies per graph.
    const size_t copy_bytes = size_t{1} << 30;
    void *src, *dst;
    CHECK(cudaMalloc(&src, copy_bytes));
    CHECK(cudaMalloc(&dst, copy_bytes));
    fill_random<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(src), copy_bytes / 4, 1);
    CHECK(cudaGetLastError());
    cudaGraph_t g;
    cudaGraphExec_t copy_graph;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < 10; ++i) CHECK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
    CHECK(cudaStreamEndCapture(stream, &g));
    CHECK(cudaGraphInstantiate(&copy_graph, g, 0));
    CHECK(cudaGraphDestroy(g));
    const float copy_ms = time_graph(copy_graph, stream, std::max(5, repeats / 3)) / 10;
    const double memcpy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
    CHECK(cudaGraphExecDestroy(copy_graph));
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < 10; ++i) {
        copy_kernel<<<prop.multiProcessorCount * 8, 256, 0, stream>>>(static_cast<const uint4*>(src),
                                                                       static_cast<uint4*>(dst), copy_bytes / 16);
    }
    CHECK(cudaStreamEndCapture(stream, &g));
    CHECK(cudaGraphInstantiate(&copy_graph, g, 0));
    CHECK(cudaGraphDestroy(g));
    const float kernel_ms = time_graph(copy_graph, stream, std::max(5, repeats / 3)) / 10;
    const double kernel_gbs = 2.0 * copy_bytes / (kernel_ms * 1e-3) / 1e9;
    CHECK(cudaGraphExecDestroy(copy_graph));
    const double copy_gbs = std::max(memcpy_gbs, kernel_gbs);
    std::printf("device-to-device copy, 1 GiB (read + write): cudaMemcpy %.1f GB/s, 16-byte copy kernel %.1f GB/s; "
                "ceiling used: %.1f GB/s\n", memcpy_gbs, kernel_gbs, copy_gbs);
    CHECK(cudaFree(src));
    CHECK(cudaFree(dst));

    // The matrices the engine runs for the 31B (stacked as it loads them: q|k|v of a sliding
    // layer 16384 rows, q|k of a full layer 18432 (v is k there), gate|up 43008; o, down; the tied
    // output head, vocab 262144, W8 when token_embd is Q6_K), then q, k or v and gate or up alone,
    // which it never runs (kept for comparison with earlier runs).
    struct Shape {
        int64_t k, n;
        bool run_by_engine;
    };
    // Last, Qwen3.5-35B-A3B's short rows: the Gated DeltaNet in-projection, the attention's
    // q | gate | k | v, the output projections and the output head.
    const Shape shapes[] = {{5376, 16384, true},  {5376, 18432, true}, {5376, 43008, true},
                            {8192, 5376, true},   {16384, 5376, true}, {21504, 5376, true},
                            {5376, 262144, true}, {5376, 8192, false}, {5376, 4096, false},
                            {5376, 21504, false}, {2048, 12352, true}, {2048, 9216, true},
                            {4096, 2048, true},   {2048, 248320, true}};
    const int ms[] = {1, 2, 4, 8};
    std::printf("%-3s %-16s %2s %10s %10s %8s\n", "fmt", "K -> N", "M", "us", "GB/s", "of copy");
    std::vector<double> m1_fraction[2][2];  // [W4, W8][standalone, run by the engine]
    for (const Shape& shape : shapes) {
        const int64_t k = shape.k, n = shape.n, groups = k / 32;
        float* x;
        kestrel::Q8Block* a;
        float* y;
        CHECK(cudaMalloc(&x, 8 * k * 4));
        CHECK(cudaMalloc(&a, 8 * groups * sizeof(kestrel::Q8Block)));
        CHECK(cudaMalloc(&y, 8 * n * 4));
        fill_normalish<<<256, 256, 0, stream>>>(x, 8 * k, 5);
        CHECK(cudaGetLastError());
        CHECK_STATUS(kestrel::cuda::quantize_q8(x, 8, k, k, a, stream));
        for (int w8 = 0; w8 < 2; ++w8) {
            // W4: 4-bit q, a group_scales word (2 bytes) per 32 weights and a super_scales word
            // (4 bytes) per 256 (the last of a row may cover fewer); W8: int8 q, one (scale, min)
            // word per 32 weights. sm holds W4's group_scales or W8's scale_min.
            const int64_t supers = (groups + 7) / 8;
            const int64_t qs_bytes = w8 ? n * k : n * k / 2;
            const int64_t sm_bytes = w8 ? n * groups * 4 : n * groups * 2;
            const int64_t super_bytes = w8 ? 0 : n * supers * 4;
            const int64_t set_bytes = qs_bytes + sm_bytes + super_bytes;
            const int copies = static_cast<int>(std::max<int64_t>(2, (4 * int64_t{prop.l2CacheSize} + set_bytes - 1) / set_bytes));
            std::vector<void*> qs(copies), sm(copies), ss(copies, nullptr);
            for (int c = 0; c < copies; ++c) {
                CHECK(cudaMalloc(&qs[c], qs_bytes));
                CHECK(cudaMalloc(&sm[c], sm_bytes));
                fill_random<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(qs[c]), qs_bytes / 4, 17 + c);
                if (w8) {
                    fill_scale_min<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(sm[c]),
                                                             sm_bytes / 4, 99 + c);
                } else {
                    CHECK(cudaMalloc(&ss[c], super_bytes));
                    fill_group_scales<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(sm[c]),
                                                                n * groups, 99 + c);
                    fill_super_scales<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(ss[c]),
                                                                n * supers, 199 + c);
                }
                CHECK(cudaGetLastError());
            }
            for (int m : ms) {
                CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
                for (int c = 0; c < copies; ++c) {
                    if (w8) {
                        kestrel::cuda::W8DeviceView view{static_cast<const int8_t*>(qs[c]), static_cast<const uint32_t*>(sm[c]), n, k};
                        CHECK_STATUS(kestrel::cuda::gemv_w8a8(view, a, m, y, stream));
                    } else {
                        kestrel::cuda::W4DeviceView view{static_cast<const uint8_t*>(qs[c]),
                                                         static_cast<const uint16_t*>(sm[c]),
                                                         static_cast<const uint32_t*>(ss[c]), n, k};
                        CHECK_STATUS(kestrel::cuda::gemv_w4a8(view, a, m, y, stream));
                    }
                }
                CHECK(cudaStreamEndCapture(stream, &g));
                cudaGraphExec_t exec;
                CHECK(cudaGraphInstantiate(&exec, g, 0));
                CHECK(cudaGraphDestroy(g));
                const float ms_per = time_graph(exec, stream, repeats) / copies;
                CHECK(cudaGraphExecDestroy(exec));
                const double bytes = static_cast<double>(set_bytes) + m * groups * 48.0 + m * n * 4.0;
                const double gbs = bytes / (ms_per * 1e-3) / 1e9;
                char name[32];
                std::snprintf(name, sizeof name, "%lld -> %lld", static_cast<long long>(k), static_cast<long long>(n));
                std::printf("%-3s %-16s %2d %10.2f %10.1f %7.1f%%\n", w8 ? "W8" : "W4", name, m, ms_per * 1e3, gbs,
                            100.0 * gbs / copy_gbs);
                if (m == 1) m1_fraction[w8][shape.run_by_engine].push_back(gbs / copy_gbs);
            }
            for (int c = 0; c < copies; ++c) {
                CHECK(cudaFree(qs[c]));
                CHECK(cudaFree(sm[c]));
                if (ss[c] != nullptr) CHECK(cudaFree(ss[c]));
            }
        }
        CHECK(cudaFree(x));
        CHECK(cudaFree(a));
        CHECK(cudaFree(y));
    }
    // Activation quantisation alone (K = 5376 and 21504, M = 1), for the step budget.
    for (int64_t k : {int64_t{5376}, int64_t{21504}}) {
        float* x;
        kestrel::Q8Block* a;
        CHECK(cudaMalloc(&x, k * 4));
        CHECK(cudaMalloc(&a, (k / 32) * sizeof(kestrel::Q8Block)));
        fill_normalish<<<64, 256, 0, stream>>>(x, k, 3);
        CHECK(cudaGetLastError());
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < 20; ++i) CHECK_STATUS(kestrel::cuda::quantize_q8(x, 1, k, k, a, stream));
        CHECK(cudaStreamEndCapture(stream, &g));
        cudaGraphExec_t exec;
        CHECK(cudaGraphInstantiate(&exec, g, 0));
        CHECK(cudaGraphDestroy(g));
        std::printf("quantize_q8 K=%lld M=1: %.2f us per launch (graph)\n", static_cast<long long>(k),
                    time_graph(exec, stream, repeats) / 20 * 1e3);
        CHECK(cudaGraphExecDestroy(exec));
        CHECK(cudaFree(x));
        CHECK(cudaFree(a));
    }
    for (int w8 = 0; w8 < 2; ++w8) {
        for (int run = 1; run >= 0; --run) {
            double worst = 1e9;
            for (double f : m1_fraction[w8][run]) worst = std::min(worst, f);
            std::printf("%s M=1: worst %s at %.1f%% of copy bandwidth%s\n", w8 ? "W8" : "W4",
                        run ? "shape the engine runs" : "standalone shape", 100.0 * worst,
                        run ? " (target >= 80%)" : "");
        }
    }
    CHECK(cudaStreamDestroy(stream));
    return 0;
}
