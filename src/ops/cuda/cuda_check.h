// CUDA return codes as Status values: every CUDA call in src/ops/cuda goes through
// KESTREL_CUDA_CHECK, and every launch is followed by KESTREL_CUDA_CHECK(cudaGetLastError()).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kestrel/status.h"

namespace kestrel {

inline Status cuda_status(cudaError_t error, const char* what) {
    if (error == cudaSuccess) return ok_status();
    return Status(StatusCode::kInternal, std::string(what) + ": " + cudaGetErrorName(error) + " (" +
                                             cudaGetErrorString(error) + ")");
}

}  // namespace kestrel

// Returns a kInternal Status naming the call and the CUDA error when `expr` fails.
#define KESTREL_CUDA_CHECK(expr) KESTREL_RETURN_IF_ERROR(::kestrel::cuda_status((expr), #expr))
