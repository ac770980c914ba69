// The Gated DeltaNet state of one session (DESIGN.md "Batches and sessions"): per linear layer,
// the causal conv's last (kernel - 1) inputs and the delta rule's state matrices. Fixed size,
// independent of the context; zero for a fresh sequence.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "models/model.h"
#include "ops/ops.h"

namespace kestrel {

class RecurrentState {
public:
    RecurrentState() = default;
    explicit RecurrentState(std::span<const RecurrentLayerSpec> layout);

    // One view per layer (null pointers for layers without state); empty when no layer has any.
    std::span<const RecurrentLayerView> views() const { return views_; }
    // Zeroes every state: the next token starts a new sequence.
    void reset();
    int64_t bytes() const;

private:
    std::vector<std::vector<float>> conv_, state_;  // per layer
    std::vector<RecurrentLayerView> views_;
};

}  // namespace kestrel
