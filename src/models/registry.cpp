// Architecture name (GGUF spelling) -> the factory that loads its weights.
#include <string_view>

#include <fmt/format.h>

#include "models/model.h"

namespace kestrel {

namespace {

using Factory = Result<std::unique_ptr<Model>> (*)(const ModelConfig&, const ModelFiles&, Ops&,
                                                   const WeightLoadOptions&);

struct Entry {
    std::string_view architecture;
    Factory factory;
};

constexpr Entry kRegistry[] = {
    {"gemma3", &load_gemma3},
    {"gemma4", &load_gemma4},
    {"qwen35moe", &load_qwen35_moe},
};

}  // namespace

Result<std::unique_ptr<Model>> load_model(const ModelConfig& config, const ModelFiles& files, Ops& ops,
                                          const WeightLoadOptions& options) {
    for (const Entry& entry : kRegistry) {
        if (entry.architecture == config.architecture) return entry.factory(config, files, ops, options);
    }
    std::string known;
    for (const Entry& entry : kRegistry) known += fmt::format("{}{}", known.empty() ? "" : ", ", entry.architecture);
    return Status(StatusCode::kUnsupported,
                  fmt::format("{}: architecture '{}' has no forward pass yet (implemented: {})",
                              files.weights ? files.weights->description() : files.path.string(),
                              config.architecture, known));
}

std::vector<KvLayerSpec> kv_layout_of(const ModelConfig& config) {
    std::vector<KvLayerSpec> layout;
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind == LayerKind::kLinear) {
            layout.push_back({});
        } else {
            layout.push_back({layer.n_kv_heads, layer.head_dim, layer.v_head_dim,
                              layer.kind == LayerKind::kSliding ? config.sliding_window : 0});
        }
    }
    return layout;
}

}  // namespace kestrel
