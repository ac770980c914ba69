// Whether a TQ4 prefill at head dim 512 runs on the wgmma kernel (attention_prefill_tq4_wgmma.cu)
// or the mma.sync one (attention_prefill.cu). Plain C++.
#pragma once

namespace kestrel::cuda {

// True when this build holds the kernel's sm_90a code for the current device and
// KESTREL_TQ4_PREFILL_WGMMA=0 (to measure the mma.sync kernel against it) is not set; said once
// in the log when false (tq4_prefill_choice.cpp).
bool attention_prefill_tq4_wgmma_available();
// Only the first condition (attention_prefill_tq4_wgmma.cu).
bool attention_prefill_tq4_wgmma_built_for_device();

}  // namespace kestrel::cuda
