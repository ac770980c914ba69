// The Gated DeltaNet state of one session (DESIGN.md "Batches and sessions"): per linear layer,
// the causal conv's last (kernel - 1) inputs and the delta rule's state matrices, in backend
// memory (the kernels update them in place, and a captured decode step reads them at fixed
// addresses). Fixed size, independent of the context; zero for a fresh sequence.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kestrel/status.h"
#include "models/model.h"
#include "ops/ops.h"

namespace kestrel {

class RecurrentState {
public:
    RecurrentState() = default;
    // The state `layout` asks for, allocated in `ops`'s memory and zeroed.
    static Result<RecurrentState> create(Ops& ops, std::span<const RecurrentLayerSpec> layout);

    // One view per layer (null pointers for layers without state); empty when no layer has any.
    std::span<const RecurrentLayerView> views() const { return views_; }
    // Zeroes every state: the next token starts a new sequence.
    Status reset();
    int64_t bytes() const;

private:
    Ops* ops_ = nullptr;
    std::vector<Buffer> buffers_;  // per layer with state: conv floats, then the state floats
    std::vector<RecurrentLayerView> views_;
};

}  // namespace kestrel
