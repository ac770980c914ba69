// Engine: what every session of a model shares and never changes — the files, the config, the
// tokenizer, the weights (in the backend's formats) and the backend. Sessions hold the per-conversation state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include "io/model_files.h"
#include "kestrel/status.h"
#include "models/model.h"
#include "models/model_config.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"

namespace kestrel {

class Session;

struct EngineOptions {
    std::filesystem::path model;  // a GGUF file or a Hugging Face folder
    int threads = 0;              // CPU threads; 0 = every hardware thread
};

class Engine {
public:
    // Opens the files, reads the config and the tokenizer, loads (dequantises) the weights;
    // logs each step.
    static Result<std::unique_ptr<Engine>> load(const EngineOptions& options);

    const ModelConfig& config() const { return model_->config(); }
    const Tokenizer& tokenizer() const { return *tokenizer_; }
    const ModelFiles& files() const { return files_; }
    const Model& model() const { return *model_; }
    Ops& ops() const { return *ops_; }

    // A fresh session. context 0 = the model's trained context; prefill_chunk = tokens per
    // forward step of a prefill (it sizes the sliding-window rings).
    Result<std::unique_ptr<Session>> new_session(int64_t context = 0, int64_t prefill_chunk = 512) const;

private:
    Engine() = default;

    ModelFiles files_;
    std::optional<Tokenizer> tokenizer_;
    std::unique_ptr<Model> model_;
    std::unique_ptr<Ops> ops_;  // the backend is stateless per call; sessions share it
};

}  // namespace kestrel
