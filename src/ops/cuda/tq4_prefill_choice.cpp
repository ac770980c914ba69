// Which kernel a TQ4 prefill at head dim 512 runs (attention_prefill_tq4): the wgmma one where this
// build holds it for the device, said once in the log when it does not (no silent fallback).
#include <cuda_runtime.h>

#include <cstdlib>
#include <string_view>

#include "core/log.h"
#include "ops/cuda/attention_prefill_tq4_wgmma.h"

namespace kestrel::cuda {

bool attention_prefill_tq4_wgmma_available() {
    static const bool available = [] {
        const char* knob = std::getenv("KESTREL_TQ4_PREFILL_WGMMA");
        if (knob != nullptr && std::string_view(knob) == "0") {
            log_once(LogLevel::kInfo, "tq4-prefill-wgmma-off",
                     "TQ4 prefill attention at head dim 512: the wgmma kernel is off "
                     "(KESTREL_TQ4_PREFILL_WGMMA=0); using the mma.sync kernel");
            return false;
        }
        if (!attention_prefill_tq4_wgmma_built_for_device()) {
            // A warning on a Hopper GPU (the build lacks sm_90a: rebuild for it); elsewhere the
            // kernel cannot run at all.
            int device = 0, major = 0;
            const bool hopper = cudaGetDevice(&device) == cudaSuccess &&
                                cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                                       device) == cudaSuccess &&
                                major == 9;
            log_once(hopper ? LogLevel::kWarning : LogLevel::kInfo, "tq4-prefill-wgmma-missing",
                     hopper ? "TQ4 prefill attention at head dim 512: this build has no sm_90a "
                              "code; using the slower mma.sync kernel (build with "
                              "CMAKE_CUDA_ARCHITECTURES including 90a)"
                            : "TQ4 prefill attention at head dim 512: the wgmma kernel needs an "
                              "sm_90 GPU; using the mma.sync kernel");
            return false;
        }
        return true;
    }();
    return available;
}

}  // namespace kestrel::cuda
