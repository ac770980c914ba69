// The kernel benches' error handling: a failed CUDA call or Kestrel launcher prints where and why
// and ends the bench (a bench that goes on after an error times nothing real).
#pragma once

#include <cuda_runtime.h>

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
