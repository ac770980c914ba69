#include "runtime/recurrent_state.h"

#include <algorithm>

namespace kestrel {

RecurrentState::RecurrentState(std::span<const RecurrentLayerSpec> layout) {
    for (const RecurrentLayerSpec& spec : layout) {
        conv_.emplace_back(static_cast<size_t>(std::max<int64_t>(spec.conv_kernel - 1, 0) * spec.conv_channels));
        state_.emplace_back(static_cast<size_t>(spec.state_floats));
        const bool empty = state_.back().empty();
        views_.push_back(RecurrentLayerView{empty ? nullptr : conv_.back().data(),
                                            empty ? nullptr : state_.back().data(), spec.conv_kernel,
                                            spec.conv_channels});
    }
}

void RecurrentState::reset() {
    for (std::vector<float>& v : conv_) std::fill(v.begin(), v.end(), 0.0f);
    for (std::vector<float>& v : state_) std::fill(v.begin(), v.end(), 0.0f);
}

int64_t RecurrentState::bytes() const {
    int64_t total = 0;
    for (size_t i = 0; i < conv_.size(); ++i) total += static_cast<int64_t>((conv_[i].size() + state_[i].size()) * sizeof(float));
    return total;
}

}  // namespace kestrel
