// The prefill GEMM's operand preparation (API: gemm_prefill.h): W4 / W8 weights dequantised to
// bf16, and fp32 activations rounded to bf16. Memory-bound element-wise kernels.
//
// Dequantisation: a quarter group (8 weights) becomes one 16-byte store, a warp's stores 512
// contiguous bytes (W4: kW4Unroll quarters a thread, loads first). W4 quarter t of a group
// (ops/weight_format.h's nibble order):
//   t = 0: weights 0-7   = low nibbles of bytes 0-7    t = 1: weights 8-15  = low nibbles of 8-15
//   t = 2: weights 16-23 = high nibbles of bytes 0-7   t = 3: weights 24-31 = high nibbles of 8-15
// W8 quarter t: weights 8t..8t+7 = bytes 8t..8t+7. The four threads of a group read its scales
// together (one transaction): W8 its (scale, min) word; W4 its group_scales word sc | m << 8 and
// the (d, dmin) super word of its super-group (groups 8s..8s+7 of the row, shared by 32 threads),
// from which scale = d * sc and min = dmin * m, each exact in fp32.
// Every value is the CPU twin's: w = scale * q - min with the product and the difference each
// rounded to fp32 (__fmul_rn / __fsub_rn: nvcc would otherwise fuse them into one FMA, which
// w4_dequantize, built with -ffp-contract=off, does not), then fp32_to_bf16's rounding.
#include <cuda_fp16.h>

#include <string>

#include "ops/cuda/bf16_bits.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm_prefill.h"

namespace kestrel::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t bf16_pair(float low, float high) { return bf16_bits(low) | (bf16_bits(high) << 16); }

__device__ __forceinline__ float fp16_bits_to_float(uint32_t bits) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));  // exact widening
}

__device__ __forceinline__ float scale_q_minus_min(float scale, int q, float min) {
    return __fsub_rn(__fmul_rn(scale, static_cast<float>(q)), min);
}

// W4 quarters per thread: a block covers kW4Unroll x kThreads consecutive quarters, its threads
// at stride kThreads (each store instruction still 512 contiguous bytes a warp), and a thread
// issues all its loads before its first store. With one quarter a thread a warp had 128 bytes
// of qs in flight, and the H100's DRAM ran at 62% of peak on Gemma 4 31B's gate | up slice
// (ncu: 132.7 us for 21504 x 5376).
constexpr int kW4Unroll = 4;

// qs, group_scales and super_scales start at the slice's first row; groups / supers per row.
// kWholeSupers (groups % 8 == 0, K a multiple of 256, every Gemma 4 31B weight): the rows hold
// whole super-groups, so group i's super word is i / 8 of the slice; otherwise the row is found
// by a division (a 32-bit one per thread made the H100 dequantisation 4-7% slower).
template <bool kWholeSupers>
__global__ void __launch_bounds__(kThreads)
    dequantize_w4_kernel(const uint8_t* __restrict__ qs, const uint16_t* __restrict__ group_scales,
                         const uint32_t* __restrict__ super_scales, uint32_t groups,
                         uint32_t supers, int64_t quarters, uint4* __restrict__ out) {
    const int64_t first = static_cast<int64_t>(blockIdx.x) * (kW4Unroll * kThreads) + threadIdx.x;
    uint2 packed[kW4Unroll];
    uint32_t sc_m[kW4Unroll], d_dmin[kW4Unroll];
#pragma unroll
    for (int u = 0; u < kW4Unroll; ++u) {
        const int64_t i = first + u * kThreads;
        if (i >= quarters) break;
        const uint64_t group = static_cast<uint64_t>(i) >> 2;
        const int quarter = static_cast<int>(i & 3);
        packed[u] = *reinterpret_cast<const uint2*>(qs + group * 16 + (quarter & 1) * 8);
        uint64_t super = group >> 3;
        if constexpr (!kWholeSupers) {
            // 32-bit division whenever the slice allows (always, in practice).
            const uint64_t row =
                group <= 0xffffffffu ? static_cast<uint32_t>(group) / groups : group / groups;
            super = row * supers + static_cast<uint32_t>(group - row * groups) / 8;
        }
        sc_m[u] = group_scales[group];
        d_dmin[u] = super_scales[super];
    }
#pragma unroll
    for (int u = 0; u < kW4Unroll; ++u) {
        const int64_t i = first + u * kThreads;
        if (i >= quarters) break;
        const int nibble_shift = (static_cast<int>(i & 3) >> 1) * 4;
        const float scale =
            __fmul_rn(fp16_bits_to_float(d_dmin[u] & 0xffffu), static_cast<float>(sc_m[u] & 0xffu));
        const float min =
            __fmul_rn(fp16_bits_to_float(d_dmin[u] >> 16), static_cast<float>(sc_m[u] >> 8));
        const uint32_t words[2] = {packed[u].x >> nibble_shift, packed[u].y >> nibble_shift};
        uint32_t pairs[4];
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const uint32_t word = words[p >> 1] >> ((p & 1) * 16);  // bytes 2p, 2p + 1 of the 8
            pairs[p] =
                bf16_pair(scale_q_minus_min(scale, static_cast<int>(word & 0xfu), min),
                          scale_q_minus_min(scale, static_cast<int>((word >> 8) & 0xfu), min));
        }
        out[i] = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
    }
}

__global__ void __launch_bounds__(kThreads) dequantize_w8_kernel(const int8_t* __restrict__ qs,
                                                                const uint32_t* __restrict__ scale_min,
                                                                int64_t quarters, uint4* __restrict__ out) {
    const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
    if (i >= quarters) return;
    const int64_t group = i >> 2;
    const uint2 packed = *reinterpret_cast<const uint2*>(qs + i * 8);
    const uint32_t sm = scale_min[group];
    const float scale = fp16_bits_to_float(sm & 0xffffu);
    const float min = fp16_bits_to_float(sm >> 16);
    const uint32_t words[2] = {packed.x, packed.y};
    uint32_t pairs[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const uint32_t word = words[p >> 1] >> ((p & 1) * 16);
        pairs[p] = bf16_pair(scale_q_minus_min(scale, static_cast<int8_t>(word & 0xffu), min),
                             scale_q_minus_min(scale, static_cast<int8_t>((word >> 8) & 0xffu), min));
    }
    out[i] = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
}

// Eight elements per thread: two 16-byte loads and one 16-byte store when both pointers allow
// it (kVector), element by element otherwise and for the tail.
template <bool kVector>
__global__ void __launch_bounds__(kThreads) convert_f32_to_bf16_kernel(const float* __restrict__ x, int64_t count,
                                                                      uint16_t* __restrict__ out) {
    const int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * 8;
    if (i >= count) return;
    if (kVector && i + 8 <= count) {
        const float4 a = *reinterpret_cast<const float4*>(x + i);
        const float4 b = *reinterpret_cast<const float4*>(x + i + 4);
        *reinterpret_cast<uint4*>(out + i) =
            make_uint4(bf16_pair(a.x, a.y), bf16_pair(a.z, a.w), bf16_pair(b.x, b.y), bf16_pair(b.z, b.w));
        return;
    }
    const int64_t end = i + 8 < count ? i + 8 : count;
    for (int64_t j = i; j < end; ++j) out[j] = static_cast<uint16_t>(bf16_bits(x[j]));
}

bool aligned(const void* p, uintptr_t to) { return (reinterpret_cast<uintptr_t>(p) % to) == 0; }

unsigned blocks_for(int64_t threads) { return static_cast<unsigned>((threads + kThreads - 1) / kThreads); }

// The shape and row range, and qs / out (non-null, 16-byte aligned); the callers check their
// scales.
Status check_rows(const char* what, int64_t n, int64_t k, int64_t row_begin, int64_t rows,
                  const void* qs, const uint16_t* out) {
    if (n <= 0 || k <= 0 || k % 32 != 0 || row_begin < 0 || rows < 0 || row_begin + rows > n) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": rows [" + std::to_string(row_begin) +
                                                        ", +" + std::to_string(rows) + ") of a [" +
                                                        std::to_string(n) + ", " + std::to_string(k) +
                                                        "] weight (k % 32 == 0 needed)");
    }
    if (qs == nullptr || out == nullptr || !aligned(qs, 16) || !aligned(out, 16)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": null pointer, or qs / out not 16-byte aligned");
    }
    return ok_status();
}

}  // namespace

Status dequantize_w4_to_bf16(const W4DeviceView& w, int64_t row_begin, int64_t rows, uint16_t* out,
                             cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(
        check_rows("dequantize_w4_to_bf16", w.n, w.k, row_begin, rows, w.qs, out));
    if (w.group_scales == nullptr || w.super_scales == nullptr || !aligned(w.group_scales, 2) ||
        !aligned(w.super_scales, 4)) {
        return Status(
            StatusCode::kInvalidArgument,
            "dequantize_w4_to_bf16: null group_scales / super_scales, or not 2- / 4-byte aligned");
    }
    if (w.k / 32 > 0xffffffff) {
        return Status(StatusCode::kInvalidArgument,
                      "dequantize_w4_to_bf16: " + std::to_string(w.k) + " columns is too many");
    }
    if (rows == 0) return ok_status();
    const int64_t groups = w.k / 32;
    const int64_t supers = (groups + 7) / 8;
    const int64_t quarters = rows * groups * 4;
    const auto kernel = groups % 8 == 0 ? dequantize_w4_kernel<true> : dequantize_w4_kernel<false>;
    kernel<<<blocks_for((quarters + kW4Unroll - 1) / kW4Unroll), kThreads, 0, stream>>>(
        w.qs + row_begin * (w.k / 2), w.group_scales + row_begin * groups,
        w.super_scales + row_begin * supers, static_cast<uint32_t>(groups),
        static_cast<uint32_t>(supers), quarters, reinterpret_cast<uint4*>(out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status dequantize_w8_to_bf16(const W8DeviceView& w, int64_t row_begin, int64_t rows, uint16_t* out,
                             cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(
        check_rows("dequantize_w8_to_bf16", w.n, w.k, row_begin, rows, w.qs, out));
    if (w.scale_min == nullptr || !aligned(w.scale_min, 4)) {
        return Status(StatusCode::kInvalidArgument,
                      "dequantize_w8_to_bf16: null pointer, or scale_min not 4-byte aligned");
    }
    if (rows == 0) return ok_status();
    const int64_t groups = w.k / 32;
    const int64_t quarters = rows * groups * 4;
    dequantize_w8_kernel<<<blocks_for(quarters), kThreads, 0, stream>>>(
        w.qs + row_begin * w.k, w.scale_min + row_begin * groups, quarters, reinterpret_cast<uint4*>(out));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status convert_f32_to_bf16(const float* x, int64_t count, uint16_t* out, cudaStream_t stream) {
    if (count < 0 || ((x == nullptr || out == nullptr) && count > 0)) {
        return Status(StatusCode::kInvalidArgument,
                      "convert_f32_to_bf16: " + std::to_string(count) + " elements, or a null pointer");
    }
    if (count == 0) return ok_status();
    const unsigned grid = blocks_for((count + 7) / 8);
    if (aligned(x, 16) && aligned(out, 16)) {
        convert_f32_to_bf16_kernel<true><<<grid, kThreads, 0, stream>>>(x, count, out);
    } else {
        convert_f32_to_bf16_kernel<false><<<grid, kThreads, 0, stream>>>(x, count, out);
    }
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace kestrel::cuda
