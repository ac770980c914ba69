// make_cuda_ops in a build without CUDA.
#include "ops/ops.h"

namespace kestrel {

Result<std::unique_ptr<Ops>> make_cuda_ops() {
    return Status(StatusCode::kUnsupported, "this kestrel was built without CUDA");
}

}  // namespace kestrel
