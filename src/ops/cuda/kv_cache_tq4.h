// Host API of the TQ4 KV cache's GPU pieces besides attention (kernels: kv_cache_tq4.cu; the format
// and its CPU reference: ops/kv_tq4.h; attention over it: attention.h, attention_*_tq4): the
// rotation of rows by R or R^T, and the cache write (encode). Plain C++: includable from .cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kestrel/status.h"
#include "ops/cuda/attention.h"  // KvCacheTq4View

namespace kestrel::cuda {

// y [rows, d] = each row of x [rows, d] turned by R (transpose false: y_r = R x_r, the way into
// the rotated space) or by R^T (transpose true: y_r = R^T x_r, the way back). rotation: R [d, d]
// row-major fp32; fp32 products and sums (in k order for many rows; per lane then across the
// warp for up to 256 rows). x and y must not overlap; 16-byte aligned; d a multiple of 32, at
// most 512.
Status tq4_rotate_rows(const float* x, int64_t rows, int64_t d, const float* rotation,
                       bool transpose, float* y, cudaStream_t stream);

// Device scratch kv_write_tq4 needs for n_tokens tokens (the rotated K and V rows, the centred K
// rows).
size_t kv_write_tq4_scratch_bytes(int64_t n_tokens, const KvCacheTq4View& cache);

// k, v [T, n_kv_heads, head_dim] fp32 -> TQ4 vectors at slot positions[t] % capacity, as
// tq4_encode (ops/kv_tq4.h) does each: norm = bf16(fp32(sqrt(sum in double of x^2))), index i =
// the codebook bucket of (R x)_i / norm (8 everywhere for a zero vector; a NaN norm for a
// non-finite x). R x is tq4_rotate_rows', so an element that lands within fp32 rounding of a
// bucket boundary may take the neighbouring index. positions: device int64 [T]; two tokens of
// one call must not share a slot. scratch: kv_write_tq4_scratch_bytes, 16-byte aligned. With
// cache.k_center (16-byte aligned) the keys are centred first, as the CPU twin does (ops/kv_tq4.h,
// "Key centring"): a write of at least kTq4CenterMinTokens tokens whose positions[0] is 0 sets
// the centre to their mean; every key is stored less the centre (fp32 subtraction).
Status kv_write_tq4(const KvCacheTq4View& cache, const int64_t* positions, int64_t n_tokens,
                    const float* k, const float* v, void* scratch, cudaStream_t stream);

}  // namespace kestrel::cuda
