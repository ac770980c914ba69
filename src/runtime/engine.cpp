#include "runtime/engine.h"

#include <chrono>

#include <fmt/format.h>

#include "core/log.h"
#include "runtime/session.h"

namespace kestrel {

Result<std::unique_ptr<Engine>> Engine::load(const EngineOptions& options) {
    const auto start = std::chrono::steady_clock::now();
    std::filesystem::path path = options.model;
    if (path.empty()) {
        KESTREL_ASSIGN_OR_RETURN(path, default_model_path());
    }

    std::unique_ptr<Engine> engine(new Engine());
    log_info("loading {}", path.string());
    KESTREL_ASSIGN_OR_RETURN(engine->files_, open_model_files(path));
    ModelConfig config;
    if (engine->files_.format == ModelFormat::kGguf) {
        KESTREL_ASSIGN_OR_RETURN(config, model_config_from_gguf(*engine->files_.gguf));
    } else {
        KESTREL_ASSIGN_OR_RETURN(config, model_config_from_hf(*engine->files_.hf_config));
    }
    log_info("{} ({}): {} layers [{}], d_model {}, vocab {}, context {}", config.name, config.architecture,
             config.n_layers, config.layer_pattern(), config.hidden_size, config.vocab_size, config.context_length);

    if (engine->files_.gguf) {
        KESTREL_ASSIGN_OR_RETURN(engine->tokenizer_, Tokenizer::from_gguf(*engine->files_.gguf));
    } else {
        KESTREL_ASSIGN_OR_RETURN(engine->tokenizer_, Tokenizer::from_hf_folder(engine->files_.path));
    }

    log_info("dequantising weights to fp32 (CPU reference backend)");
    KESTREL_ASSIGN_OR_RETURN(engine->model_, load_model(config, engine->files_));
    engine->ops_ = make_cpu_ops(options.threads);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log_info("loaded in {:.1f} s, backend {}", seconds, engine->ops_->name());
    return engine;
}

Result<std::unique_ptr<Session>> Engine::new_session(int64_t context, int64_t prefill_chunk) const {
    const int64_t trained = config().context_length;
    if (context < 0 || prefill_chunk <= 0) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("context {} must be >= 0 and prefill chunk {} > 0", context, prefill_chunk));
    }
    if (context == 0) context = trained;
    if (trained > 0 && context > trained) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("context {} is longer than the model's trained context {}", context, trained));
    }
    const std::vector<KvLayerSpec> layout = model_->kv_layout();
    KESTREL_ASSIGN_OR_RETURN(KvCache cache, KvCache::create(layout, context, prefill_chunk));
    return std::make_unique<Session>(*this, std::move(cache), context, prefill_chunk);
}

}  // namespace kestrel
