// What the CUDA device offers, for the memory plan in `kestrel info`. Builds without CUDA
// answer that there is no device, so callers need no #if.
#pragma once

#include <cstdint>
#include <string>

#include "kestrel/status.h"

namespace kestrel {

struct GpuInfo {
    std::string name;          // "NVIDIA H100 80GB HBM3"
    int compute_capability;    // 90 for sm_90
    uint64_t total_bytes;
    uint64_t free_bytes;
};

// The device `index`, or kNotFound when this build has no CUDA or the machine no GPU.
Result<GpuInfo> gpu_info(int index = 0);

}  // namespace kestrel
