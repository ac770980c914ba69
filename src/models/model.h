// A model: immutable weights plus one forward() per architecture, written once against the Ops
// interface (DESIGN.md). models/ knows nothing of sessions or devices: the caller passes the
// batch, one KV-cache view per layer, and the backend.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "io/model_files.h"
#include "kestrel/status.h"
#include "models/model_config.h"
#include "models/weight_load_options.h"
#include "ops/ops.h"

namespace kestrel {

// Tokens of one sequence at their absolute positions (consecutive, ascending). The KV cache
// passed with it must already hold every earlier position the window can see.
struct Batch {
    std::span<const int32_t> tokens;     // [T]
    std::span<const int64_t> positions;  // [T]
    // The sequence's Gated DeltaNet state, one view per layer (null pointers for attention
    // layers), updated in place; empty for models without linear layers (recurrent_layout()).
    std::span<const RecurrentLayerView> recurrent = {};
};

// What one Gated DeltaNet layer's state holds, so the runtime can size it (zeros: no state).
struct RecurrentLayerSpec {
    int64_t conv_kernel = 0;
    int64_t conv_channels = 0;
    int64_t state_floats = 0;  // n_v_heads * k_head_dim * v_head_dim
};

// What one layer's KV cache must hold, so the runtime can size it (flat or ring).
struct KvLayerSpec {
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t v_head_dim = 0;
    int64_t window = 0;  // 0: full attention (flat cache); W: sliding (KvCache::ring_capacity)
};

// The cache every layer of `config` needs: full layers flat, sliding layers a ring of their window,
// linear (Gated DeltaNet) layers none (their state is a RecurrentLayerSpec).
std::vector<KvLayerSpec> kv_layout_of(const ModelConfig& config);

// Sees every named intermediate of a forward: name as in the model card / llama.cpp's graph
// ("attn_norm", "ffn_out"), layer (-1 outside the layer stack), data [rows, cols] on the host.
using DebugHook =
    std::function<void(std::string_view name, int64_t layer, const float* data, int64_t rows, int64_t cols)>;

// Which rows of logits a forward computes. The lm_head is the largest matrix of a small model
// (Gemma 3 270M: [262144, 640]), so a prefill chunk that is not the last computes none.
enum class LogitRows {
    kNone,  // logits empty
    kLast,  // [1, vocab]: the last token's
    kAll,   // [T, vocab]
};

struct ForwardOptions {
    LogitRows logits = LogitRows::kLast;
    const DebugHook* debug = nullptr;  // null: no dumps
};

class Model {
public:
    virtual ~Model() = default;
    virtual const ModelConfig& config() const = 0;
    // One entry per layer.
    virtual std::vector<KvLayerSpec> kv_layout() const = 0;
    // One entry per layer when the model has recurrent (Gated DeltaNet) layers; empty otherwise.
    virtual std::vector<RecurrentLayerSpec> recurrent_layout() const { return {}; }
    // Runs the batch, appending its keys and values to `kv` (one view per layer), and writes the
    // logits to `logits` (sized as ForwardOptions::logits says).
    virtual Status forward(Ops& ops, const Batch& batch, std::span<const KvLayerView> kv,
                           const ForwardOptions& options, std::span<float> logits) const = 0;
};

// registry.cpp: the architecture's factory. kUnsupported for an architecture we do not run
// (the message model_config gives), kNotFound/kCorruptFile naming a missing or misshapen tensor.
// Weights go into `ops`'s memory and formats; `files` may have no weight source when
// options.dummy asks for synthetic weights.
Result<std::unique_ptr<Model>> load_model(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                          const WeightLoadOptions& options);

// gemma3.cpp
Result<std::unique_ptr<Model>> load_gemma3(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                           const WeightLoadOptions& options);

// gemma4.cpp
Result<std::unique_ptr<Model>> load_gemma4(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                           const WeightLoadOptions& options);

// qwen35_moe.cpp
Result<std::unique_ptr<Model>> load_qwen35_moe(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                               const WeightLoadOptions& options);

}  // namespace kestrel
