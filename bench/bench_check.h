// The kernel benches' error handling: a failed CUDA call or Kestrel launcher prints where and why
// and ends the bench (a bench that goes on after an error times nothing real). And the hash their
// random fills share.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kestrel/status.h"

#define CHECK(expr)                                                                                  \
    do {                                                                                             \
        cudaError_t e_ = (expr);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
            std::exit(1);                                                                            \
        }                                                                                            \
    } while (0)

#define CHECK_STATUS(expr)                                                                           \
    do {                                                                                             \
        kestrel::Status s_ = (expr);                                                                 \
        if (!s_.ok()) {                                                                              \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, s_.message().c_str()); \
            std::exit(1);                                                                            \
        }                                                                                            \
    } while (0)

#ifdef __CUDACC__
// The benches' random fill: element i's 32 hashed bits under `seed` (multiply-xorshift rounds).
__device__ __forceinline__ uint32_t bench_hash(int64_t i, uint32_t seed) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    return x;
}
#endif
