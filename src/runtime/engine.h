// Engine: what every session of a model shares and never changes — the files, the config, the
// tokenizer, the weights (in the backend's formats) and the backend. Sessions hold the per-conversation state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "io/model_files.h"
#include "kestrel/status.h"
#include "models/model.h"
#include "models/model_config.h"
#include "ops/ops.h"
#include "runtime/kv_cache.h"
#include "runtime/kv_cache_format.h"
#include "tokenizer/tokenizer.h"

namespace kestrel {

class Session;

enum class Device {
    kAuto,  // CUDA when this build has it and the machine has a GPU, else the CPU
    kCpu,   // the fp32 reference backend
    kCuda,
};

struct EngineOptions {
    std::filesystem::path model;  // a GGUF file or a Hugging Face folder
    int threads = 0;              // CPU threads; 0 = every hardware thread
    Device device = Device::kAuto;
    // The engine format for float (F32/F16/BF16) matrices on CUDA (`--weights w4|w8|bf16`).
    WeightFormat float_weights = WeightFormat::kW4;
    // A built-in config (models/dummy_configs.h) with synthetic weights made on the device, no
    // file and no tokenizer (`--dummy gemma4-31b`): for `kestrel bench`.
    std::string dummy;
};

// "auto", "cpu", "cuda" -> Device; kInvalidArgument for anything else.
Result<Device> parse_device(std::string_view name);
// "w4", "w8", "bf16" -> WeightFormat; kInvalidArgument for anything else.
Result<WeightFormat> parse_weight_format(std::string_view name);

class Engine {
public:
    // Opens the files, reads the config and the tokenizer, loads (dequantises) the weights;
    // logs each step.
    static Result<std::unique_ptr<Engine>> load(const EngineOptions& options);

    const ModelConfig& config() const { return model_->config(); }
    // Every engine loaded from files has one; a synthetic (--dummy) engine has none.
    bool has_tokenizer() const { return tokenizer_.has_value(); }
    const Tokenizer& tokenizer() const { return *tokenizer_; }
    const ModelFiles& files() const { return files_; }
    const Model& model() const { return *model_; }
    Ops& ops() const { return *ops_; }

    // A fresh session. context 0 = the model's trained context; prefill_chunk = tokens per
    // forward step of a prefill (it sizes the sliding-window rings), 0 = default_prefill_chunk(),
    // or on a GPU where that does not fit the largest halving of it that does (said in the log);
    // kv_cache = how full-attention layers store K and V (`--kv-cache`). On a GPU, a session whose
    // memory plan does not fit in the free device memory is refused here (kOutOfMemory naming
    // the sizes and a -c or -b that fits), not part-way through a long prompt. sliding_step:
    // tokens per sliding-attention step (runtime/kv_cache.h kSlidingAttentionStep; tests take
    // smaller ones).
    Result<std::unique_ptr<Session>> new_session(
        int64_t context = 0, int64_t prefill_chunk = 0,
        KvCacheFormat kv_cache = KvCacheFormat::kNative,
        int64_t sliding_step = kSlidingAttentionStep) const;
    // 512 on the CPU; 2048 on CUDA, where each chunk dequantises every weight matrix once for
    // the tensor cores, so longer chunks amortise it (and the GEMMs run at a better shape).
    int64_t default_prefill_chunk() const;

private:
    Engine() = default;
    // The prefill chunk a new session runs with (memory_plan.h choose_prefill_chunk against the
    // free GPU memory; on the CPU the chunk asked for, or the default): kOutOfMemory (with a -c
    // or -b that fits) when even that does not fit.
    Result<int64_t> fit_prefill_chunk(int64_t context, int64_t prefill_chunk,
                                      KvCacheFormat kv_cache) const;

    ModelFiles files_;
    std::optional<Tokenizer> tokenizer_;
    std::unique_ptr<Ops> ops_;  // shared by the sessions, one at a time; outlives the weights
    std::unique_ptr<Model> model_;
};

}  // namespace kestrel
