#include "runtime/recurrent_state.h"

#include <algorithm>

namespace kestrel {

Result<RecurrentState> RecurrentState::create(Ops& ops,
                                              std::span<const RecurrentLayerSpec> layout) {
    RecurrentState state;
    state.ops_ = &ops;
    for (const RecurrentLayerSpec& spec : layout) {
        if (spec.state_floats == 0) {
            state.views_.push_back(
                RecurrentLayerView{nullptr, nullptr, spec.conv_kernel, spec.conv_channels});
            continue;
        }
        // The state matrices start 16-byte aligned after the conv window (vector loads).
        const int64_t conv_floats =
            (std::max<int64_t>(spec.conv_kernel - 1, 0) * spec.conv_channels + 3) / 4 * 4;
        KESTREL_ASSIGN_OR_RETURN(
            Buffer buffer,
            ops.allocate(static_cast<size_t>(conv_floats + spec.state_floats) * sizeof(float)));
        float* base = buffer.floats();
        state.views_.push_back(
            RecurrentLayerView{base, base + conv_floats, spec.conv_kernel, spec.conv_channels});
        state.buffers_.push_back(std::move(buffer));
    }
    KESTREL_RETURN_IF_ERROR(state.reset());
    return state;
}

Status RecurrentState::reset() {
    for (const Buffer& buffer : buffers_)
        KESTREL_RETURN_IF_ERROR(ops_->fill_zero(buffer.data(), buffer.bytes()));
    return ok_status();
}

int64_t RecurrentState::bytes() const {
    int64_t total = 0;
    for (const Buffer& buffer : buffers_) total += static_cast<int64_t>(buffer.bytes());
    return total;
}

}  // namespace kestrel
