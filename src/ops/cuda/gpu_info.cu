#include <cuda_runtime.h>

#include "ops/gpu_info.h"

namespace kestrel {

Result<GpuInfo> gpu_info(int index) {
    int count = 0;
    cudaError_t error = cudaGetDeviceCount(&count);
    if (error == cudaErrorInsufficientDriver || error == cudaErrorNoDevice || (error == cudaSuccess && count == 0)) {
        // A machine without an NVIDIA GPU or driver: the common case on CPU-only hosts.
        return Status(StatusCode::kNotFound, "no CUDA device on this machine");
    }
    if (error != cudaSuccess) {
        return Status(StatusCode::kNotFound, std::string("no CUDA device: ") + cudaGetErrorString(error));
    }
    if (index < 0 || index >= count) {
        return Status(StatusCode::kNotFound, "no CUDA device " + std::to_string(index) + " (" +
                                                 std::to_string(count) + " present)");
    }
    cudaDeviceProp properties{};
    error = cudaGetDeviceProperties(&properties, index);
    if (error != cudaSuccess) {
        return Status(StatusCode::kIoError,
                      std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(error));
    }
    error = cudaSetDevice(index);
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    if (error == cudaSuccess) error = cudaMemGetInfo(&free_bytes, &total_bytes);
    if (error != cudaSuccess) {
        return Status(StatusCode::kIoError,
                      std::string("cudaMemGetInfo: ") + cudaGetErrorString(error));
    }
    return GpuInfo{properties.name, properties.major * 10 + properties.minor, total_bytes,
                   free_bytes};
}

}  // namespace kestrel
