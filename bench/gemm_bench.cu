// Microbenchmark of the prefill GEMM (src/ops/cuda/gemm_prefill.cu) on the Gemma 4 31B shapes at
// M = 2048 tokens: TFLOP/s (2 M N K / time) of each path against the bf16 tensor-core rate measured
// in the same run, a plain cuBLASLt GEMM bf16 x bf16 -> bf16 (fp32 compute, the heuristic's first
// algorithm) on operands already in bf16. The issue's target: the prefill GEMM at >= 55% of it.
// Rows printed per shape:
//   bf16 reference    plain cuBLASLt, bf16 out (the 100% line)
//   matmul_bf16       our cuBLASLt call alone, fp32 out, x already bf16
//   gemm_bf16         x fp32 -> bf16, then matmul_bf16 (BF16 weights)
//   gemm_w4           x -> bf16, whole W4 -> bf16, one GEMM
//   gemm_w4 sliced    x -> bf16, then per slice of output rows (half the L2 of bf16): dequantise, GEMM
//   gemm_w8           as gemm_w4, W8 weights
//   convert x         convert_f32_to_bf16 alone;  dequantize w4 / w8: the whole weight alone
// Weights are rotated over enough copies to exceed 3x the L2, so every call reads them from DRAM,
// as prefill does; calls are captured in a CUDA graph and timed with events after warm-up,
// median of the repeats. Random data, never zeros.
// Usage: gemm_bench [repeats=20] [m=2048]
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#include "bench_check.h"
#include "ops/cuda/gemm_prefill.h"

namespace {

#define CHECK_CUBLAS(expr)                                                                          \
    do {                                                                                            \
        cublasStatus_t b_ = (expr);                                                                 \
        if (b_ != CUBLAS_STATUS_SUCCESS) {                                                          \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cublasLtGetStatusString(b_)); \
            std::exit(1);                                                                           \
        }                                                                                           \
    } while (0)

__device__ uint32_t hash(int64_t i, uint32_t seed) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}

__global__ void fill_random(uint32_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words; i += int64_t{gridDim.x} * blockDim.x) {
        p[i] = hash(i, seed);
    }
}

// W4 group_scales words sc | m << 8: sc in [1, 255], m in [0, 255].
__global__ void fill_group_scales(uint16_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words;
         i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t x = hash(i, seed);
        p[i] = static_cast<uint16_t>((1u + (x & 0xffffu) % 255u) | (((x >> 16) & 0xffu) << 8));
    }
}

// W4 super_scales words (d, dmin): d in [2^-14, 2^-13), dmin in [2^-13, 2^-12): finite fp16 bits.
__global__ void fill_super_scales(uint32_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words;
         i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t x = hash(i, seed);
        p[i] = ((1u << 10) | (x & 0x3ffu)) | (((2u << 10) | ((x >> 10) & 0x3ffu)) << 16);
    }
}

// W8 (scale, min) pairs: scale in [2^-9, 2^-8), min in [0, 2^-5): finite fp16 bits.
__global__ void fill_scale_min(uint32_t* p, int64_t words, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words; i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t x = hash(i, seed);
        const uint32_t scale = (6u << 10) | (x & 0x3ffu);
        const uint32_t min = (((x >> 10) % 10u) << 10) | ((x >> 20) & 0x3ffu);
        p[i] = scale | (min << 16);
    }
}

__global__ void fill_normalish(float* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        p[i] = (static_cast<float>(hash(i, seed) & 0xffffff) / 16777216.0f - 0.5f) * 4.0f;
    }
}

__global__ void fill_bf16(__nv_bfloat16* p, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        p[i] = __float2bfloat16_rn((static_cast<float>(hash(i, seed) & 0xffffff) / 16777216.0f - 0.5f) * 0.1f);
    }
}

void check_fill() { CHECK(cudaGetLastError()); }

float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Median over `repeats` of one replay of `graph`, in ms.
float time_graph(cudaGraphExec_t graph, cudaStream_t stream, int repeats) {
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
    for (int i = 0; i < 2; ++i) CHECK(cudaGraphLaunch(graph, stream));
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

// ms per call of call(c) for c = 0..copies-1: one eager run (loads modules, fills plan caches),
// then a graph of all the copies.
float time_calls(const std::function<void(int)>& call, int copies, cudaStream_t stream, int repeats) {
    for (int c = 0; c < copies; ++c) call(c);
    CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (int c = 0; c < copies; ++c) call(c);
    CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CHECK(cudaGraphDestroy(graph));
    const float ms = time_graph(exec, stream, repeats) / copies;
    CHECK(cudaGraphExecDestroy(exec));
    return ms;
}

// The reference: y bf16 [m, n] = x bf16 [m, k] · w bf16 [n, k]^T, cuBLASLt's first heuristic choice.
struct ReferenceGemm {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w_layout = nullptr, x_layout = nullptr, y_layout = nullptr;
    cublasLtMatmulAlgo_t algo{};

    ReferenceGemm(cublasLtHandle_t handle, int64_t m, int64_t n, int64_t k, size_t workspace_bytes) {
        CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t t = CUBLAS_OP_T, nt = CUBLAS_OP_N;
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt));
        CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&w_layout, CUDA_R_16BF, k, n, k));
        CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&x_layout, CUDA_R_16BF, k, m, k));
        CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&y_layout, CUDA_R_16BF, n, m, n));
        cublasLtMatmulPreference_t preference;
        CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&preference));
        const uint64_t workspace = workspace_bytes;
        CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &workspace, sizeof workspace));
        cublasLtMatmulHeuristicResult_t best{};
        int found = 0;
        CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(handle, desc, w_layout, x_layout, y_layout, y_layout, preference, 1,
                                                    &best, &found));
        CHECK_CUBLAS(cublasLtMatmulPreferenceDestroy(preference));
        if (found == 0) {
            std::fprintf(stderr, "no cuBLASLt algorithm for the bf16 reference\n");
            std::exit(1);
        }
        algo = best.algo;
    }
    ~ReferenceGemm() {
        cublasLtMatrixLayoutDestroy(y_layout);
        cublasLtMatrixLayoutDestroy(x_layout);
        cublasLtMatrixLayoutDestroy(w_layout);
        cublasLtMatmulDescDestroy(desc);
    }
};

struct Row {
    const char* name;
    float ms;
    bool is_gemm = true;  // the operand kernels alone get no TFLOP/s
};

}  // namespace

int main(int argc, char** argv) {
    const int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
    const int64_t m = argc > 2 ? std::atoll(argv[2]) : 2048;
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::printf("device: %s, %d SMs, L2 %d MB; M = %lld\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20,
                static_cast<long long>(m));

    auto created = kestrel::cuda::GemmContext::create();
    CHECK_STATUS(created.status());
    kestrel::cuda::GemmContext& context = **created;
    void* reference_workspace;
    CHECK(cudaMalloc(&reference_workspace, kestrel::cuda::GemmContext::kDefaultWorkspaceBytes));
    const size_t slice_bytes = static_cast<size_t>(prop.l2CacheSize) / 2;
    const int64_t l2 = prop.l2CacheSize;

    const int64_t shapes[][2] = {{5376, 8192}, {5376, 4096}, {5376, 21504}, {21504, 5376}, {8192, 5376}};
    std::printf("%-15s %-16s %9s %9s %8s\n", "K -> N", "path", "ms", "TFLOP/s", "of bf16");
    double worst_w4 = 1e9, worst_w4_sliced = 1e9, worst_bf16 = 1e9, worst_w8 = 1e9;
    for (const auto& shape : shapes) {
        const int64_t k = shape[0], n = shape[1], groups = k / 32, supers = (groups + 7) / 8;
        // W4: qs + group_scales (2 bytes per 32 weights) + super_scales (4 bytes per 256).
        const int64_t bf16_bytes = n * k * 2,
                      w4_bytes = n * k / 2 + n * groups * 2 + n * supers * 4,
                      w8_bytes = n * k + n * groups * 4;
        const auto copies_for = [&](int64_t bytes) { return static_cast<int>(std::max<int64_t>(2, (3 * l2 + bytes - 1) / bytes)); };
        const int bf16_copies = copies_for(bf16_bytes), w4_copies = copies_for(w4_bytes), w8_copies = copies_for(w8_bytes);

        std::vector<void*> bf16_w(bf16_copies), w4_qs(w4_copies), w4_gs(w4_copies),
            w4_ss(w4_copies), w8_qs(w8_copies), w8_sm(w8_copies);
        for (int c = 0; c < bf16_copies; ++c) {
            CHECK(cudaMalloc(&bf16_w[c], bf16_bytes));
            fill_bf16<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(bf16_w[c]), n * k, 11 + c);
            check_fill();
        }
        for (int c = 0; c < w4_copies; ++c) {
            CHECK(cudaMalloc(&w4_qs[c], n * k / 2));
            CHECK(cudaMalloc(&w4_gs[c], n * groups * 2));
            CHECK(cudaMalloc(&w4_ss[c], n * supers * 4));
            fill_random<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(w4_qs[c]), n * k / 8, 17 + c);
            fill_group_scales<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(w4_gs[c]),
                                                        n * groups, 99 + c);
            fill_super_scales<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(w4_ss[c]),
                                                        n * supers, 299 + c);
            check_fill();
        }
        for (int c = 0; c < w8_copies; ++c) {
            CHECK(cudaMalloc(&w8_qs[c], n * k));
            CHECK(cudaMalloc(&w8_sm[c], n * groups * 4));
            fill_random<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(w8_qs[c]), n * k / 4, 23 + c);
            fill_scale_min<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(w8_sm[c]), n * groups, 199 + c);
            check_fill();
        }
        const auto w4_view = [&](int c) {
            return kestrel::cuda::W4DeviceView{static_cast<const uint8_t*>(w4_qs[c]),
                                               static_cast<const uint16_t*>(w4_gs[c]),
                                               static_cast<const uint32_t*>(w4_ss[c]), n, k};
        };
        const auto w8_view = [&](int c) {
            return kestrel::cuda::W8DeviceView{static_cast<const int8_t*>(w8_qs[c]),
                                               static_cast<const uint32_t*>(w8_sm[c]), n, k};
        };
        float *x, *y;
        uint16_t *x_bf16, *y_bf16, *w_scratch;
        void* scratch;
        CHECK(cudaMalloc(&x, m * k * 4));
        CHECK(cudaMalloc(&x_bf16, m * k * 2));
        CHECK(cudaMalloc(&y, m * n * 4));
        CHECK(cudaMalloc(&y_bf16, m * n * 2));
        CHECK(cudaMalloc(&w_scratch, n * k * 2));
        CHECK(cudaMalloc(&scratch, kestrel::cuda::gemm_scratch_bytes(m, n, k)));
        fill_normalish<<<1024, 256, 0, stream>>>(x, m * k, 5);
        check_fill();
        CHECK_STATUS(kestrel::cuda::convert_f32_to_bf16(x, m * k, x_bf16, stream));

        ReferenceGemm reference(context.handle(), m, n, k, kestrel::cuda::GemmContext::kDefaultWorkspaceBytes);
        const float one = 1.0f, zero = 0.0f;
        std::vector<Row> rows;
        context.set_weight_slice_bytes(0);
        CHECK_STATUS(context.prepare(m, n, k));
        rows.push_back({"bf16 reference", time_calls([&](int c) {
            CHECK_CUBLAS(cublasLtMatmul(context.handle(), reference.desc, &one, bf16_w[c], reference.w_layout, x_bf16,
                                        reference.x_layout, &zero, y_bf16, reference.y_layout, y_bf16,
                                        reference.y_layout, &reference.algo, reference_workspace,
                                        kestrel::cuda::GemmContext::kDefaultWorkspaceBytes, stream));
        }, bf16_copies, stream, repeats)});
        rows.push_back({"matmul_bf16", time_calls([&](int c) {
            CHECK_STATUS(kestrel::cuda::matmul_bf16(context, x_bf16, m, static_cast<const uint16_t*>(bf16_w[c]), n, k, y,
                                                    n, stream));
        }, bf16_copies, stream, repeats)});
        rows.push_back({"gemm_bf16", time_calls([&](int c) {
            CHECK_STATUS(kestrel::cuda::gemm_bf16(context, x, m, static_cast<const uint16_t*>(bf16_w[c]), n, k, scratch,
                                                  y, stream));
        }, bf16_copies, stream, repeats)});
        rows.push_back({"gemm_w4", time_calls([&](int c) {
            CHECK_STATUS(kestrel::cuda::gemm_w4(context, x, m, w4_view(c), scratch, y, stream));
        }, w4_copies, stream, repeats)});
        rows.push_back({"gemm_w8", time_calls([&](int c) {
            CHECK_STATUS(kestrel::cuda::gemm_w8(context, x, m, w8_view(c), scratch, y, stream));
        }, w8_copies, stream, repeats)});
        context.set_weight_slice_bytes(slice_bytes);
        CHECK_STATUS(context.prepare(m, n, k));
        rows.push_back({"gemm_w4 sliced", time_calls([&](int c) {
            CHECK_STATUS(kestrel::cuda::gemm_w4(context, x, m, w4_view(c), scratch, y, stream));
        }, w4_copies, stream, repeats)});
        context.set_weight_slice_bytes(0);
        rows.push_back({"convert x", time_calls([&](int) {
            CHECK_STATUS(kestrel::cuda::convert_f32_to_bf16(x, m * k, x_bf16, stream));
        }, 4, stream, repeats), false});
        rows.push_back({"dequantize w4", time_calls([&](int c) {
            CHECK_STATUS(kestrel::cuda::dequantize_w4_to_bf16(w4_view(c), 0, n, w_scratch, stream));
        }, w4_copies, stream, repeats), false});
        rows.push_back({"dequantize w8", time_calls([&](int c) {
            CHECK_STATUS(kestrel::cuda::dequantize_w8_to_bf16(w8_view(c), 0, n, w_scratch, stream));
        }, w8_copies, stream, repeats), false});

        const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
        const double reference_tflops = flops / (rows[0].ms * 1e-3) / 1e12;
        char name[32];
        std::snprintf(name, sizeof name, "%lld -> %lld", static_cast<long long>(k), static_cast<long long>(n));
        for (const Row& row : rows) {
            const double tflops = flops / (row.ms * 1e-3) / 1e12;
            if (row.is_gemm) {
                std::printf("%-15s %-16s %9.3f %9.1f %7.1f%%\n", name, row.name, row.ms, tflops,
                            100.0 * tflops / reference_tflops);
            } else {
                std::printf("%-15s %-16s %9.3f\n", name, row.name, row.ms);
            }
        }
        const auto ratio = [&](int i) { return static_cast<double>(rows[0].ms) / rows[static_cast<size_t>(i)].ms; };
        worst_bf16 = std::min(worst_bf16, ratio(2));
        worst_w4 = std::min(worst_w4, ratio(3));
        worst_w8 = std::min(worst_w8, ratio(4));
        worst_w4_sliced = std::min(worst_w4_sliced, ratio(5));

        for (void* p : bf16_w) CHECK(cudaFree(p));
        for (int c = 0; c < w4_copies; ++c) {
            CHECK(cudaFree(w4_qs[c]));
            CHECK(cudaFree(w4_gs[c]));
            CHECK(cudaFree(w4_ss[c]));
        }
        for (int c = 0; c < w8_copies; ++c) {
            CHECK(cudaFree(w8_qs[c]));
            CHECK(cudaFree(w8_sm[c]));
        }
        for (void* p : {static_cast<void*>(x), static_cast<void*>(y), static_cast<void*>(x_bf16),
                        static_cast<void*>(y_bf16), static_cast<void*>(w_scratch), scratch}) {
            CHECK(cudaFree(p));
        }
    }
    std::printf("worst shape, share of the bf16 reference rate (target >= 55%%): gemm_w4 %.1f%%, gemm_w4 sliced %.1f%%, "
                "gemm_w8 %.1f%%, gemm_bf16 %.1f%%\n",
                100.0 * worst_w4, 100.0 * worst_w4_sliced, 100.0 * worst_w8, 100.0 * worst_bf16);
    CHECK(cudaFree(reference_workspace));
    CHECK(cudaStreamDestroy(stream));
    return 0;
}
