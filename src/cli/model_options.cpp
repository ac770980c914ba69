#include "cli/model_options.h"

#include <fmt/format.h>

#include <cstdio>
#include <random>

#include "core/log.h"

namespace kestrel::cli {

void add_model_options(CLI::App& command, ModelOptions& options) {
    command.add_option("-m,--model", options.model, "GGUF file or Hugging Face folder (default: the installed default model)");
    command.add_option("-c,--ctx-size", options.context, "Context length in tokens (0: the model's)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    command.add_option("-b,--batch-size", options.prefill_chunk,
                       "Tokens per prefill step (0: the backend's default, 512 on the CPU, 2048 on CUDA)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    command.add_option("-t,--threads", options.threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
    command.add_option("--device", options.device, "auto (CUDA when there is a GPU), cpu (the fp32 reference) or cuda")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    command.add_option("--weights", options.weights,
                       "Engine format of float (F32/F16/BF16) matrices on CUDA: w4, w8 or bf16 (quantised GGUF "
                       "types keep their nearest format)")
        ->capture_default_str()
        ->check(CLI::IsMember({"w4", "w8", "bf16"}));
    add_kv_cache_option(command, options.kv_cache);
}

void add_kv_cache_option(CLI::App& command, std::string& kv_cache) {
    command
        .add_option("--kv-cache", kv_cache,
                    "KV cache format: bf16 (the backend's own: bf16 on CUDA, fp32 on the CPU) or "
                    "tq4 (full-attention layers in TurboQuant 4-bit, ~3.9x smaller; "
                    "sliding-window layers stay bf16)")
        ->capture_default_str()
        ->check(CLI::IsMember({"bf16", "tq4"}));
}

void add_sampling_options(CLI::App& command, SamplingOptions& options) {
    SamplingParams& p = options.params;
    command.add_option("--temp", p.temperature, "Temperature; 0 is greedy")->capture_default_str();
    command.add_option("--top-k", p.top_k, "Keep the k most likely tokens (0: off)")->capture_default_str();
    command.add_option("--top-p", p.top_p, "Nucleus sampling threshold (1: off)")->capture_default_str();
    command.add_option("--min-p", p.min_p, "Drop tokens less likely than min-p times the best (0: off)")
        ->capture_default_str();
    command.add_option("--repeat-penalty", p.repeat_penalty, "Penalise repeated tokens (1: off)")->capture_default_str();
    command.add_option("--repeat-last-n", p.repeat_last_n, "Tokens the penalties look back over (-1: all)")
        ->capture_default_str();
    command.add_option("--presence-penalty", p.presence_penalty, "Subtract for every token already seen")
        ->capture_default_str();
    command.add_option("--frequency-penalty", p.frequency_penalty, "Subtract per occurrence of a token")
        ->capture_default_str();
    command.add_option("-s,--seed", options.seed, "Random seed (default: random)");
}

Result<SamplingParams> resolve_sampling(const SamplingOptions& options) {
    SamplingParams params = options.params;
    if (options.seed >= 0) {
        params.seed = static_cast<uint64_t>(options.seed);
    } else {
        params.seed = std::random_device{}();
        log_debug("seed {}", params.seed);
    }
    KESTREL_RETURN_IF_ERROR(validate(params));
    return params;
}

Result<std::unique_ptr<Engine>> load_engine(const ModelOptions& options) {
    EngineOptions engine;
    engine.model = options.model;
    engine.threads = options.threads;
    KESTREL_ASSIGN_OR_RETURN(engine.device, parse_device(options.device));
    KESTREL_ASSIGN_OR_RETURN(engine.float_weights, parse_weight_format(options.weights));
    return Engine::load(engine);
}

Result<Tokenizer> load_tokenizer(const ModelOptions& options) {
    std::filesystem::path path = options.model;
    if (path.empty()) {
        KESTREL_ASSIGN_OR_RETURN(path, default_model_path());
    }
    KESTREL_ASSIGN_OR_RETURN(ModelFiles files, open_model_files(path));
    if (files.gguf) return Tokenizer::from_gguf(*files.gguf);
    return Tokenizer::from_hf_folder(files.path);
}

int64_t session_context(const ModelOptions& options, const ModelConfig& config) {
    if (options.context == 0) return config.context_length;
    if (options.context > config.context_length) {
        log_warning("-c {} is longer than the model's trained context; using {}", options.context, config.context_length);
        return config.context_length;
    }
    return options.context;
}

Result<std::unique_ptr<Session>> open_session(const Engine& engine, const ModelOptions& options,
                                              int64_t context) {
    KESTREL_ASSIGN_OR_RETURN(KvCacheFormat kv_cache, parse_kv_cache_format(options.kv_cache));
    return engine.new_session(context, options.prefill_chunk, kv_cache);
}

bool print_to_stdout(std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
}

Result<ChatFormat> chat_format_of(const ModelFiles& files, const ModelConfig& config) {
    if (files.gguf) return detect_chat_format(*files.gguf);
    KESTREL_ASSIGN_OR_RETURN(std::optional<std::string> text, read_hf_chat_template(files.path));
    return detect_chat_format(config.architecture, text ? std::optional<std::string_view>(*text) : std::nullopt);
}

}  // namespace kestrel::cli
