// Which kernel a TQ4 prefill at head dim 512 runs (attention_prefill_tq4): the wgmma one where this
// build holds it for the device, said once in the log when it does not (no silent fallback).
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
            log_once(LogLevel::kWarning, "tq4-prefill-wgmma-missing",
                     "TQ4 prefill attention at head dim 512: this build has no sm_90a wgmma "
                     "kernel for this device; using the slower mma.sync kernel");
            return false;
        }
        return true;
    }();
    return available;
}

}  // namespace kestrel::cuda
