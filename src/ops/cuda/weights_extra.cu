#include "ops/cuda/weights_extra.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"

namespace kestrel::cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t count) {
    const int64_t blocks = (count + kThreads - 1) / kThreads;
    return static_cast<int>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

__global__ void fill_w4_kernel(uint8_t* qs, uint16_t* group_scales, uint32_t* super_scales,
                               int64_t qs_bytes, int64_t groups, int64_t supers, uint32_t d_dmin,
                               uint64_t seed) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    for (int64_t i = first; i < qs_bytes; i += stride) {
        qs[i] = random_weight_byte(seed, static_cast<uint64_t>(i));
    }
    for (int64_t g = first; g < groups; g += stride) group_scales[g] = 0xFFFF;  // sc = m = 255
    for (int64_t s = first; s < supers; s += stride) super_scales[s] = d_dmin;
}

__global__ void fill_w8_kernel(int8_t* qs, uint32_t* scale_min, int64_t count, int64_t groups, uint32_t packed,
                               uint64_t seed) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += stride) {
        const int q = static_cast<int8_t>(random_weight_byte(seed, static_cast<uint64_t>(i)));
        qs[i] = static_cast<int8_t>(q < -127 ? -127 : q);
    }
    for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups; g += stride) {
        scale_min[g] = packed;
    }
}

__global__ void fill_bf16_kernel(uint16_t* w, int64_t count, float a, uint64_t seed) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += stride) {
        const float u = static_cast<float>(random_weight_byte(seed, static_cast<uint64_t>(i))) / 255.0f;
        w[i] = __bfloat16_as_ushort(__float2bfloat16_rn(a * (2.0f * u - 1.0f)));
    }
}

__global__ void embed_w8_kernel(const int32_t* ids, int64_t vocab, int64_t dim, const int8_t* qs,
                                const uint32_t* scale_min, float scale, float* out) {
    wait_for_upstream();
    allow_downstream();
    const int64_t t = blockIdx.y;
    const int32_t id = ids[t];
    float* row_out = out + t * dim;
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < dim;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        if (id < 0 || id >= vocab) {
            row_out[c] = __int_as_float(0x7fc00000);
            continue;
        }
        const uint32_t packed = scale_min[static_cast<int64_t>(id) * (dim / 32) + c / 32];
        const float s = __half2float(__ushort_as_half(static_cast<unsigned short>(packed & 0xFFFF)));
        const float m = __half2float(__ushort_as_half(static_cast<unsigned short>(packed >> 16)));
        // scale * q - min, each step rounded in fp32 as w8_dequantize does (no fused multiply-add).
        const float w = __fsub_rn(__fmul_rn(s, static_cast<float>(qs[static_cast<int64_t>(id) * dim + c])), m);
        row_out[c] = __fmul_rn(w, scale);
    }
}

__global__ void embed_bf16_kernel(const int32_t* ids, int64_t vocab, int64_t dim, const uint16_t* table, float scale,
                                  float* out) {
    wait_for_upstream();
    allow_downstream();
    const int64_t t = blockIdx.y;
    const int32_t id = ids[t];
    float* row_out = out + t * dim;
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < dim;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        row_out[c] =
            (id < 0 || id >= vocab)
                ? __int_as_float(0x7fc00000)
                : __fmul_rn(bf16_bits_to_float(table[static_cast<int64_t>(id) * dim + c]), scale);
    }
}

}  // namespace

Status fill_random_w4(uint8_t* qs, uint16_t* group_scales, uint32_t* super_scales, int64_t n,
                      int64_t k, float a, uint64_t seed, cudaStream_t stream) {
    if (n <= 0 || k <= 0 || k % 32 != 0) return Status(StatusCode::kInvalidArgument, "fill_random_w4: bad shape");
    if (qs == nullptr || group_scales == nullptr || super_scales == nullptr) {
        return Status(StatusCode::kInvalidArgument,
                      "fill_random_w4: null qs, group_scales or super_scales");
    }
    // scale = d * 255 and min = dmin * 255 for every group: d = 2a / 15 / 255, dmin = a / 255.
    const float d = 2.0f * a / 15.0f / 255.0f;
    const float dmin = a / 255.0f;
    const uint32_t d_dmin = static_cast<uint32_t>(__half_as_ushort(__float2half_rn(d))) |
                            (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(dmin))) << 16);
    const int64_t groups = k / 32;
    const int64_t supers = (groups + 7) / 8;
    fill_w4_kernel<<<blocks_for(n * k / 2), kThreads, 0, stream>>>(
        qs, group_scales, super_scales, n * k / 2, n * groups, n * supers, d_dmin, seed);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status fill_random_w8(int8_t* qs, uint32_t* scale_min, int64_t n, int64_t k, float a, uint64_t seed,
                      cudaStream_t stream) {
    if (n <= 0 || k <= 0 || k % 32 != 0) return Status(StatusCode::kInvalidArgument, "fill_random_w8: bad shape");
    const uint32_t packed = static_cast<uint32_t>(__half_as_ushort(__float2half_rn(a / 127.0f)));
    fill_w8_kernel<<<blocks_for(n * k), kThreads, 0, stream>>>(qs, scale_min, n * k, n * k / 32, packed, seed);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status fill_random_bf16(uint16_t* w, int64_t count, float a, uint64_t seed, cudaStream_t stream) {
    if (count <= 0) return Status(StatusCode::kInvalidArgument, "fill_random_bf16: empty");
    fill_bf16_kernel<<<blocks_for(count), kThreads, 0, stream>>>(w, count, a, seed);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status embed_w8(const int32_t* ids, int64_t tokens, const W8DeviceView& table, float scale, float* out,
                cudaStream_t stream) {
    if (tokens <= 0 || tokens > 65535 || table.k % 32 != 0) {
        return Status(StatusCode::kInvalidArgument, "embed_w8: 1..65535 tokens and a row of whole 32-groups");
    }
    const dim3 grid(static_cast<unsigned>((table.k + kThreads - 1) / kThreads), static_cast<unsigned>(tokens));
    KESTREL_CUDA_CHECK(launch_overlapped(embed_w8_kernel, dim3(grid), dim3(kThreads), 0, stream,
                                         ids, table.n, table.k, table.qs, table.scale_min, scale,
                                         out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status embed_bf16(const int32_t* ids, int64_t tokens, const uint16_t* table, int64_t vocab, int64_t dim, float scale,
                  float* out, cudaStream_t stream) {
    if (tokens <= 0 || tokens > 65535 || dim <= 0) {
        return Status(StatusCode::kInvalidArgument, "embed_bf16: 1..65535 tokens");
    }
    const dim3 grid(static_cast<unsigned>((dim + kThreads - 1) / kThreads), static_cast<unsigned>(tokens));
    KESTREL_CUDA_CHECK(launch_overlapped(embed_bf16_kernel, dim3(grid), dim3(kThreads), 0, stream,
                                         ids, vocab, dim, table, scale, out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
