// Token embedding lookup (host API: small_ops.h; CPU twin: ops/cpu/embed.cpp, and
// w4_dequantize of ops/weight_format.h for the W4 table).
//
// One block per token; ids are read on the device (graph replay changes only their contents). An
// id outside [0, vocab) writes NaN, so a bad id shows in the output instead of reading elsewhere.
// embed_w4_kernel: thread per 32-group g: one 16-byte load of the group's nibbles, one 2-byte
// group_scales load (sc | m << 8) and one 4-byte super_scales load, the (d, dmin) of super-group
// g / 8; scale = d * sc and min = dmin * m (exact in fp32), 32 values dequantised as
// scale * q - min, times the embedding scale.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/small_ops.cuh"
#include "ops/cuda/small_ops.h"

namespace kestrel::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float4 nan4() {
    const float nan = __int_as_float(0x7fc00000);
    return make_float4(nan, nan, nan, nan);
}

__global__ void __launch_bounds__(kThreads)
    embed_kernel(const int32_t* ids, const float* table, int64_t vocab, int dim, float scale, float* out, bool vec4) {
    wait_for_upstream();
    allow_downstream();
    const int32_t id = ids[blockIdx.x];
    const bool valid = id >= 0 && id < vocab;
    const float* src = table + static_cast<int64_t>(valid ? id : 0) * dim;
    float* dst = out + static_cast<int64_t>(blockIdx.x) * dim;
    const int chunks = (dim + 3) / 4;
    for (int c = static_cast<int>(threadIdx.x); c < chunks; c += kThreads) {
        // ops/cpu/embed.cpp: row[i] * scale.
        const float4 v = valid ? chunk_times(load_chunk(src, c, dim, vec4), scale) : nan4();
        store_chunk(dst, c, dim, vec4, v);
    }
}

// w4_dequantize: scale * q - min in fp32 (product and difference each rounded, never fused), then
// the embedding's scale.
__device__ __forceinline__ float dequantize(float group_scale, float group_min, uint32_t q, float scale) {
    return __fmul_rn(__fsub_rn(__fmul_rn(group_scale, static_cast<float>(q)), group_min), scale);
}

__global__ void __launch_bounds__(kThreads)
    embed_w4_kernel(const int32_t* ids, const uint4* qs, const uint16_t* group_scales,
                    const uint32_t* super_scales, int64_t vocab, int groups, float scale,
                    float* out) {
    wait_for_upstream();
    allow_downstream();
    const int32_t id = ids[blockIdx.x];
    const bool valid = id >= 0 && id < vocab;
    const int64_t row = static_cast<int64_t>(valid ? id : 0) * groups;
    const int64_t super_row = static_cast<int64_t>(valid ? id : 0) * ((groups + 7) / 8);
    float4* dst = reinterpret_cast<float4*>(out + static_cast<int64_t>(blockIdx.x) * groups * 32);
    for (int g = static_cast<int>(threadIdx.x); g < groups; g += kThreads) {
        float4* group_out = dst + g * 8;  // 32 floats
        if (!valid) {
#pragma unroll
            for (int i = 0; i < 8; ++i) group_out[i] = nan4();
            continue;
        }
        const uint4 packed = qs[row + g];
        const uint32_t sc_m = group_scales[row + g];
        const uint32_t d_dmin = super_scales[super_row + g / 8];
        const float2 d = __half22float2(*reinterpret_cast<const __half2*>(&d_dmin));  // (d, dmin)
        const float2 f =
            make_float2(__fmul_rn(d.x, static_cast<float>(sc_m & 0xffu)),
                        __fmul_rn(d.y, static_cast<float>(sc_m >> 8)));  // (scale, min)
        const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
        // Byte b holds weight b (low nibble) and weight b + 16 (high nibble); word m holds bytes 4m..4m+3.
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const uint32_t w = words[m];
            group_out[m] = make_float4(dequantize(f.x, f.y, w & 0xfu, scale), dequantize(f.x, f.y, (w >> 8) & 0xfu, scale),
                                       dequantize(f.x, f.y, (w >> 16) & 0xfu, scale),
                                       dequantize(f.x, f.y, (w >> 24) & 0xfu, scale));
            group_out[4 + m] = make_float4(
                dequantize(f.x, f.y, (w >> 4) & 0xfu, scale), dequantize(f.x, f.y, (w >> 12) & 0xfu, scale),
                dequantize(f.x, f.y, (w >> 20) & 0xfu, scale), dequantize(f.x, f.y, (w >> 28) & 0xfu, scale));
        }
    }
}

Status check_tokens(const char* what, const int32_t* ids, int64_t tokens, const void* table, const void* out) {
    if (tokens < 0 || tokens > (int64_t{1} << 31) - 1) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": " + std::to_string(tokens) + " tokens");
    }
    if (tokens > 0 && (ids == nullptr || table == nullptr || out == nullptr)) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": null ids, table or output");
    }
    return ok_status();
}

}  // namespace

Status embed(const int32_t* ids, int64_t tokens, const float* table, int64_t vocab, int64_t dim, float scale,
             float* out, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_tokens("embed", ids, tokens, table, out));
    if (vocab <= 0 || dim <= 0 || dim > (int64_t{1} << 30)) {
        return Status(StatusCode::kInvalidArgument,
                      "embed: table [" + std::to_string(vocab) + ", " + std::to_string(dim) + "] is empty or too wide");
    }
    if (tokens == 0) return ok_status();
    const bool vec4 = dim % 4 == 0 && reinterpret_cast<uintptr_t>(table) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(out) % 16 == 0;
    KESTREL_CUDA_CHECK(launch_overlapped(embed_kernel, dim3(static_cast<unsigned>(tokens)),
                                         dim3(kThreads), 0, stream, ids, table, vocab,
                                         static_cast<int>(dim), scale, out, vec4));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status embed(const int32_t* ids, int64_t tokens, const W4DeviceView& table, float scale, float* out,
             cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_tokens("embed (W4)", ids, tokens, table.qs, out));
    if (table.n <= 0 || table.k <= 0 || table.k % 32 != 0 || table.k > (int64_t{1} << 30) ||
        table.group_scales == nullptr || table.super_scales == nullptr ||
        reinterpret_cast<uintptr_t>(table.qs) % 16 != 0 ||
        reinterpret_cast<uintptr_t>(table.group_scales) % 2 != 0 ||
        reinterpret_cast<uintptr_t>(table.super_scales) % 4 != 0 ||
        reinterpret_cast<uintptr_t>(out) % 16 != 0) {
        return Status(StatusCode::kInvalidArgument,
                      "embed (W4): table [" + std::to_string(table.n) + ", " +
                          std::to_string(table.k) +
                          "] needs k % 32 == 0, group_scales (2-byte aligned) and super_scales "
                          "(4-byte aligned), and 16-byte aligned nibbles and output");
    }
    if (tokens == 0) return ok_status();
    KESTREL_CUDA_CHECK(
        launch_overlapped(embed_w4_kernel, dim3(static_cast<unsigned>(tokens)), dim3(kThreads), 0,
                          stream, ids, reinterpret_cast<const uint4*>(table.qs), table.group_scales,
                          table.super_scales, table.n, static_cast<int>(table.k / 32), scale, out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
