#include "ops/gpu_info.h"

namespace kestrel {

Result<GpuInfo> gpu_info(int) {
    return Status(StatusCode::kNotFound, "this build of Kestrel has no CUDA backend");
}

}  // namespace kestrel
