#include "runtime/engine.h"

#include <chrono>

#include <fmt/format.h>

#include "core/log.h"
#include "models/dummy_configs.h"
#include "ops/gpu_info.h"
#include "runtime/memory_plan.h"
#include "runtime/session.h"

namespace kestrel {

Result<Device> parse_device(std::string_view name) {
    if (name == "auto") return Device::kAuto;
    if (name == "cpu") return Device::kCpu;
    if (name == "cuda") return Device::kCuda;
    return Status(StatusCode::kInvalidArgument, fmt::format("unknown device '{}' (auto, cpu or cuda)", name));
}

Result<WeightFormat> parse_weight_format(std::string_view name) {
    if (name == "w4") return WeightFormat::kW4;
    if (name == "w8") return WeightFormat::kW8;
    if (name == "bf16") return WeightFormat::kBF16;
    return Status(StatusCode::kInvalidArgument, fmt::format("unknown weight format '{}' (w4, w8 or bf16)", name));
}

namespace {

Result<std::unique_ptr<Ops>> make_backend(const EngineOptions& options) {
    if (options.device == Device::kCpu) return make_cpu_ops(options.threads);
    Result<std::unique_ptr<Ops>> cuda = make_cuda_ops();
    if (cuda.ok() || options.device == Device::kCuda) return cuda;
    // Auto: say once why the fast path is not taken.
    log_info("no CUDA backend ({}); running on the CPU reference backend", cuda.status().message());
    return make_cpu_ops(options.threads);
}

// A synthetic model: the built-in config, no weight source (the backend makes the weights).
Result<ModelFiles> dummy_files(const std::string& name) {
    KESTREL_ASSIGN_OR_RETURN(std::string text, dummy_config_json(name));
    ModelFiles files;
    files.format = ModelFormat::kHfFolder;
    files.path = fmt::format("dummy:{}", name);
    KESTREL_ASSIGN_OR_RETURN(HfConfig config, HfConfig::parse(text, fmt::format("built-in config {}", name)));
    files.hf_config = std::move(config);
    return files;
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::load(const EngineOptions& options) {
    const auto start = std::chrono::steady_clock::now();
    std::unique_ptr<Engine> engine(new Engine());
    const bool dummy = !options.dummy.empty();
    if (dummy) {
        log_info("synthetic model {} (random weights, no tokenizer)", options.dummy);
        KESTREL_ASSIGN_OR_RETURN(engine->files_, dummy_files(options.dummy));
    } else {
        std::filesystem::path path = options.model;
        if (path.empty()) {
            KESTREL_ASSIGN_OR_RETURN(path, default_model_path());
        }
        log_info("loading {}", path.string());
        KESTREL_ASSIGN_OR_RETURN(engine->files_, open_model_files(path));
    }
    ModelConfig config;
    if (engine->files_.format == ModelFormat::kGguf) {
        KESTREL_ASSIGN_OR_RETURN(config, model_config_from_gguf(*engine->files_.gguf));
    } else {
        KESTREL_ASSIGN_OR_RETURN(config, model_config_from_hf(*engine->files_.hf_config));
    }
    if (dummy) config.name = options.dummy;
    log_info("{} ({}): {} layers [{}], d_model {}, vocab {}, context {}", config.name, config.architecture,
             config.n_layers, config.layer_pattern(), config.hidden_size, config.vocab_size, config.context_length);

    if (engine->files_.gguf) {
        KESTREL_ASSIGN_OR_RETURN(engine->tokenizer_, Tokenizer::from_gguf(*engine->files_.gguf));
    } else if (!dummy) {
        KESTREL_ASSIGN_OR_RETURN(engine->tokenizer_, Tokenizer::from_hf_folder(engine->files_.path));
    }

    KESTREL_ASSIGN_OR_RETURN(engine->ops_, make_backend(options));
    const bool reference = engine->ops_->accepts(WeightFormat::kF32);
    log_info("{} weights ({} backend{})", dummy ? "making synthetic" : reference ? "dequantising to fp32" : "converting",
             engine->ops_->name(),
             reference ? "" : fmt::format(", float matrices as {}", weight_format_name(options.float_weights)));
    WeightLoadOptions load;
    load.float_weights = options.float_weights;
    load.dummy = dummy;
    Result<std::unique_ptr<Model>> model = load_model(config, engine->files_, *engine->ops_, load);
    if (!model.ok() && model.status().code() == StatusCode::kUnsupported && options.device == Device::kAuto &&
        !reference) {
        // Auto: a model the CUDA backend cannot run yet runs on the CPU reference (said once).
        log_info("{}; running on the CPU reference backend", model.status().message());
        engine->ops_ = make_cpu_ops(options.threads);
        model = load_model(config, engine->files_, *engine->ops_, load);
    }
    if (!model.ok()) return model.status();
    engine->model_ = std::move(*model);
    KESTREL_RETURN_IF_ERROR(engine->ops_->synchronize());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log_info("loaded in {:.1f} s, backend {}", seconds, engine->ops_->name());
    return engine;
}

Result<int64_t> Engine::fit_prefill_chunk(int64_t context, int64_t prefill_chunk,
                                          KvCacheFormat kv_cache) const {
    const int64_t asked = prefill_chunk > 0 ? prefill_chunk : default_prefill_chunk();
    if (ops_->accepts(WeightFormat::kF32)) return asked;  // the CPU reference: host memory
    const Result<GpuInfo> gpu = gpu_info();
    if (!gpu.ok()) return asked;
    MemoryPlanOptions plan;
    plan.context = context;
    plan.prefill_chunk = prefill_chunk;
    plan.kv_bytes_per_element = ops_->kv_dtype() == KvDtype::kBF16 ? 2 : 4;
    plan.kv_cache = kv_cache;
    // The workspace already reserved is reused by this session's forwards.
    const int64_t available =
        static_cast<int64_t>(gpu->free_bytes) + ops_->workspace().bytes_reserved();
    KESTREL_ASSIGN_OR_RETURN(
        const int64_t chunk,
        choose_prefill_chunk(config(), plan, available, ops_->supports_kv(KvDtype::kTq4)));
    if (chunk != asked) {
        log_info(
            "prefill chunk {}: the default {} does not fit in the {} of GPU memory free at "
            "context {}",
            chunk, asked, fmt::format("{:.2f} GiB", static_cast<double>(available) / (1 << 30)),
            context);
    }
    return chunk;
}

int64_t Engine::default_prefill_chunk() const {
    return ops_->accepts(WeightFormat::kF32) ? 512 : kestrel::default_prefill_chunk(config());
}

Result<std::unique_ptr<Session>> Engine::new_session(int64_t context, int64_t prefill_chunk,
                                                     KvCacheFormat kv_cache,
                                                     int64_t sliding_step) const {
    const int64_t trained = config().context_length;
    if (context < 0 || prefill_chunk < 0) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("context {} and prefill chunk {} must be >= 0", context, prefill_chunk));
    }
    if (context == 0) context = trained;
    if (trained > 0 && context > trained) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("context {} is longer than the model's trained context {}", context, trained));
    }
    // 0: the default chunk, or a smaller one where the default does not fit.
    KESTREL_ASSIGN_OR_RETURN(prefill_chunk, fit_prefill_chunk(context, prefill_chunk, kv_cache));
    const std::vector<KvLayerSpec> layout = model_->kv_layout();
    KESTREL_ASSIGN_OR_RETURN(KvCache cache, KvCache::create(layout, context, prefill_chunk, *ops_,
                                                            kv_cache, sliding_step));
    auto session = std::make_unique<Session>(*this, std::move(cache), context, prefill_chunk);
    KESTREL_RETURN_IF_ERROR(session->allocate_staging());
    return session;
}

}  // namespace kestrel
