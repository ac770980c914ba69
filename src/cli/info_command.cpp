// `kestrel info [-m FILE|DIR | --dummy NAME] [-c CTX] [--json]`: what a model file holds and what
// it needs on the GPU, before anyone waits for a load. Without weights (--dummy, or a folder with
// a config.json and no safetensors) the tensors are the shapes the config implies.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "io/hf_folder_source.h"
#include "io/model_files.h"
#include "models/dummy_configs.h"
#include "models/model_config.h"
#include "models/model_shapes.h"
#include "ops/gpu_info.h"
#include "runtime/engine.h"  // parse_weight_format
#include "runtime/memory_plan.h"

namespace kestrel::cli {
namespace {

struct InfoOptions {
    std::string model;
    std::string dummy;  // a built-in config (dummy_configs.h) with shape-only weights
    int64_t context = 0;
    int64_t prefill_chunk = 0;   // -b; 0: the CUDA backend's default for the model
    std::string weights = "w4";  // what the loader makes of float matrices (--weights)
    std::string kv_cache = "bf16";  // --kv-cache
    bool json = false;
};

std::string human_bytes(int64_t bytes) {
    const double value = static_cast<double>(bytes);
    if (bytes >= (int64_t{1} << 30)) return fmt::format("{:.2f} GiB", value / (1 << 30));
    if (bytes >= (int64_t{1} << 20)) return fmt::format("{:.1f} MiB", value / (1 << 20));
    if (bytes >= (int64_t{1} << 10)) return fmt::format("{:.1f} KiB", value / (1 << 10));
    return fmt::format("{} B", bytes);
}

std::string human_count(int64_t count) {
    const double value = static_cast<double>(count);
    if (count >= 1'000'000'000) return fmt::format("{:.2f} B", value / 1e9);
    if (count >= 1'000'000) return fmt::format("{:.2f} M", value / 1e6);
    return fmt::format("{}", count);
}

// Tokenizer model and chat-template presence, from GGUF metadata or the HF folder's files.
struct TokenizerFacts {
    std::string model = "none";
    int64_t n_tokens = 0;
    bool chat_template = false;
};

nlohmann::json read_json_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) return nullptr;
    return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
}

TokenizerFacts tokenizer_facts(const ModelFiles& files) {
    TokenizerFacts facts;
    if (files.gguf) {
        Result<std::string> model = files.gguf->get_string("tokenizer.ggml.model");
        if (model.ok()) facts.model = *model;
        if (const GgufValue* tokens = files.gguf->find("tokenizer.ggml.tokens"); tokens && tokens->as_array()) {
            facts.n_tokens = static_cast<int64_t>(tokens->as_array()->elements.size());
        }
        facts.chat_template = files.gguf->find("tokenizer.chat_template") != nullptr;
        return facts;
    }
    const nlohmann::json tokenizer = read_json_file(files.path / "tokenizer.json");
    if (tokenizer.is_object() && tokenizer.contains("model") && tokenizer["model"].is_object()) {
        facts.model = tokenizer["model"].value("type", std::string("unknown"));
        if (tokenizer["model"].contains("vocab")) facts.n_tokens = static_cast<int64_t>(tokenizer["model"]["vocab"].size());
        if (tokenizer.contains("added_tokens") && tokenizer["added_tokens"].is_array()) {
            facts.n_tokens += static_cast<int64_t>(tokenizer["added_tokens"].size());
        }
    }
    const nlohmann::json tokenizer_config = read_json_file(files.path / "tokenizer_config.json");
    facts.chat_template = (tokenizer_config.is_object() && tokenizer_config.contains("chat_template")) ||
                          std::filesystem::exists(files.path / "chat_template.jinja") ||
                          std::filesystem::exists(files.path / "chat_template.json");
    return facts;
}

// What a plan without weights assumes, for a model planned from its shapes alone.
struct Synthetic {
    std::string source;   // "built-in gemma4-31b config.json" or the folder's config.json
    std::string weights;  // the engine format the plan assumes, "W4" or "BF16"
    std::string assumes;  // one line for people
};

// --dummy NAME: the built-in config.json, weights as shapes in Q4_K (a Q4_K_M-like file, which
// the engine loads as W4).
Result<ModelFiles> open_dummy(const std::string& name, Synthetic& synthetic) {
    KESTREL_ASSIGN_OR_RETURN(std::string text, dummy_config_json(name));
    KESTREL_ASSIGN_OR_RETURN(HfConfig hf, HfConfig::parse(text, fmt::format("built-in {} config.json", name)));
    KESTREL_ASSIGN_OR_RETURN(ModelConfig config, model_config_from_hf(hf));
    ModelFiles files;
    files.format = ModelFormat::kHfFolder;
    files.hf_config = std::move(hf);
    files.weights = std::make_unique<ShapeOnlySource>(name, model_tensor_shapes(config, DType::kQ4_K));
    synthetic = {fmt::format("built-in {} config.json", name), "W4",
                 "W4 weights: int4 matrices, group 32, fp16 scale + min (as the engine loads a Q4_K file); fp32 "
                 "norms"};
    return files;
}

// A folder with config.json but no safetensors: plan from the shapes, in bf16 as a Hugging Face
// checkpoint of it would hold them. Anything else opens as usual.
Result<ModelFiles> open_for_info(const std::filesystem::path& path, std::optional<Synthetic>& synthetic) {
    std::error_code error;
    bool config_only = std::filesystem::is_directory(path, error) && std::filesystem::exists(path / "config.json", error) &&
                       !std::filesystem::exists(path / HfFolderSource::kIndexFileName, error);
    for (std::filesystem::directory_iterator entry(path, error), end; config_only && !error && entry != end;
         entry.increment(error)) {
        if (entry->path().extension() == ".safetensors") config_only = false;
    }
    if (!config_only) return open_model_files(path);
    KESTREL_ASSIGN_OR_RETURN(HfConfig hf, load_hf_config(path));
    Result<ModelConfig> config = model_config_from_hf(hf);  // an error is reported with the rest
    ModelFiles files;
    files.format = ModelFormat::kHfFolder;
    files.path = path;
    files.hf_config = std::move(hf);
    files.weights = std::make_unique<ShapeOnlySource>(
        path.string(), config.ok() ? model_tensor_shapes(*config, DType::kBF16) : std::vector<WeightInfo>{});
    synthetic = Synthetic{(path / "config.json").string(), "BF16",
                          "bf16 weights, as a Hugging Face checkpoint of this config holds them"};
    return files;
}

struct TypeTotals {
    int64_t count = 0;
    int64_t bytes = 0;
};

int run_info(const InfoOptions& options) {
    std::filesystem::path path = options.model;
    if (path.empty() && options.dummy.empty()) {
        Result<std::filesystem::path> found = default_model_path();
        if (!found.ok()) return fail(found.status().message());
        path = *found;
    }
    if (options.context < 0) return fail(fmt::format("-c {}: the context must be a positive number of tokens", options.context));
    const Result<WeightFormat> parsed_weights = parse_weight_format(options.weights);
    if (!parsed_weights.ok()) return fail(parsed_weights.status().message());
    const WeightFormat float_weights = *parsed_weights;
    const Result<KvCacheFormat> kv_cache = parse_kv_cache_format(options.kv_cache);
    if (!kv_cache.ok()) return fail(kv_cache.status().message());
    std::optional<Synthetic> synthetic;
    if (!options.dummy.empty()) synthetic.emplace();
    Result<ModelFiles> opened = synthetic ? open_dummy(options.dummy, *synthetic) : open_for_info(path, synthetic);
    if (!opened.ok()) return fail(opened.status().message());
    const ModelFiles& files = *opened;

    nlohmann::json info;
    info["file"] = options.dummy.empty() ? nlohmann::json(path.string()) : nlohmann::json(nullptr);
    info["format"] = !options.dummy.empty() ? "synthetic" : files.format == ModelFormat::kGguf ? "gguf" : "hf_folder";
    if (files.gguf) info["gguf_version"] = files.gguf->version();
    if (synthetic) {
        info["synthetic"] = {{"source", synthetic->source}, {"weights", synthetic->weights}, {"assumes", synthetic->assumes}};
    }

    std::map<std::string, TypeTotals> by_type;
    int64_t total_bytes = 0;
    for (const WeightInfo& tensor : files.weights->tensors()) {
        TypeTotals& totals = by_type[std::string(dtype_name(tensor.dtype))];
        ++totals.count;
        totals.bytes += tensor.n_bytes;
        total_bytes += tensor.n_bytes;
    }
    info["tensors"] = {{"count", files.weights->tensors().size()}, {"bytes", total_bytes}};
    for (const auto& [type, totals] : by_type) {
        info["tensors"]["by_type"][type] = {{"count", totals.count}, {"bytes", totals.bytes}};
    }
    const TokenizerFacts tokenizer = options.dummy.empty() ? tokenizer_facts(files) : TokenizerFacts{};
    info["tokenizer"] = {{"model", tokenizer.model}, {"tokens", tokenizer.n_tokens}};
    info["chat_template"] = tokenizer.chat_template;

    Result<ModelConfig> config_result =
        files.gguf ? model_config_from_gguf(*files.gguf) : model_config_from_hf(*files.hf_config);
    if (config_result.ok() && !options.dummy.empty()) config_result->name = options.dummy;
    Status config_status = config_result.ok() ? Status() : config_result.status();
    if (config_result.ok()) {
        const ModelConfig& config = *config_result;
        const ParameterCount parameters = count_parameters(config, *files.weights);
        info["architecture"] = config.architecture;
        info["name"] = config.name;
        info["parameters"] = parameters.total;
        if (config.n_experts > 0) {
            info["active_parameters"] = parameters.active;
            info["experts"] = {{"count", config.n_experts}, {"used", config.n_experts_used}};
        }
        info["context_length"] = config.context_length;
        info["vocab_size"] = config.vocab_size;
        info["hidden_size"] = config.hidden_size;
        info["layers"] = {{"count", config.n_layers},
                          {"sliding", config.count_layers(LayerKind::kSliding)},
                          {"full", config.count_layers(LayerKind::kFull)},
                          {"linear", config.count_layers(LayerKind::kLinear)},
                          {"pattern", config.layer_pattern()}};
        info["sliding_window"] = config.sliding_window;

        const MemoryPlan plan = plan_memory(config, *files.weights,
                                            {.context = options.context,
                                             .prefill_chunk = options.prefill_chunk,
                                             .float_weights = float_weights,
                                             .kv_cache = *kv_cache});
        const int64_t prefill_chunk =
            options.prefill_chunk > 0 ? options.prefill_chunk : default_prefill_chunk(config);
        info["memory"] = {{"context", plan.context},
                          {"prefill_chunk", prefill_chunk},
                          {"weights", plan.weight_bytes},
                          {"kv_cache_format", kv_cache_format_name(*kv_cache)},
                          {"kv_cache", plan.kv_cache_bytes},
                          {"kv_bytes_per_token", kv_bytes_per_token(config, 2, *kv_cache)},
                          {"sliding_ring_entries", plan.sliding_ring_entries},
                          {"recurrent_state", plan.recurrent_state_bytes},
                          {"workspace", plan.workspace_bytes},
                          {"runtime", plan.runtime_bytes},
                          {"total", plan.total_bytes()}};
    } else {
        Result<std::string> architecture =
            files.gguf ? files.gguf->get_string("general.architecture") : Result<std::string>(files.hf_config->model_type);
        info["architecture"] = architecture.ok() ? *architecture : "unknown";
        info["error"] = config_status.message();
    }
    Result<GpuInfo> gpu = gpu_info();
    if (gpu.ok()) {
        info["gpu"] = {{"name", gpu->name}, {"total", gpu->total_bytes}, {"free", gpu->free_bytes}};
    } else {
        info["gpu"] = nullptr;
    }

    if (options.json) {
        std::printf("%s\n", info.dump(2).c_str());
        return config_status.ok() ? 0 : fail(config_status.message());
    }

    std::string text;
    const auto line = [&](std::string_view label, const std::string& value) {
        text += fmt::format("{:<16}{}\n", label, value);
    };
    if (!options.dummy.empty()) {
        line("file", fmt::format("none: synthetic {} ({}, shapes only)", options.dummy, synthetic->source));
    } else if (synthetic) {
        line("file", fmt::format("{} (Hugging Face folder: config.json only, the folder holds no weights)", path.string()));
    } else {
        line("file", fmt::format("{} ({}{}, {})", path.string(), files.gguf ? "GGUF v" : "Hugging Face folder",
                                 files.gguf ? std::to_string(files.gguf->version()) : "", human_bytes(total_bytes)));
    }
    line("architecture", info["architecture"].get<std::string>() +
                             (info.contains("name") ? fmt::format(" ({})", info["name"].get<std::string>()) : ""));
    if (config_result.ok()) {
        const ModelConfig& config = *config_result;
        std::string parameters = human_count(info["parameters"].get<int64_t>());
        if (info.contains("active_parameters")) {
            parameters += fmt::format(", {} active ({} of {} experts per token)",
                                      human_count(info["active_parameters"].get<int64_t>()), config.n_experts_used,
                                      config.n_experts);
        }
        line("parameters", parameters);
        line("context", fmt::format("{} tokens (trained)", config.context_length));
        std::string layers = fmt::format("{}:", config.n_layers);
        for (const auto& [kind, label] : {std::pair{LayerKind::kSliding, "sliding"}, std::pair{LayerKind::kFull, "full"},
                                          std::pair{LayerKind::kLinear, "linear (Gated DeltaNet)"}}) {
            if (const int64_t n = config.count_layers(kind); n > 0) layers += fmt::format(" {} {},", n, label);
        }
        layers.pop_back();
        if (config.sliding_window > 0) layers += fmt::format("; sliding window {}", config.sliding_window);
        line("layers", layers);
        line("layer pattern", config.layer_pattern());
        for (const LayerKind kind : {LayerKind::kSliding, LayerKind::kFull}) {
            const auto layer = std::find_if(config.layers.begin(), config.layers.end(),
                                            [&](const LayerConfig& l) { return l.kind == kind; });
            if (layer == config.layers.end()) continue;
            line(kind == LayerKind::kSliding ? "attention (S)" : "attention (F)",
                 fmt::format("{} q heads, {} kv heads, head dim {}{}", config.n_heads, layer->n_kv_heads,
                             layer->head_dim, layer->k_eq_v ? ", V = K projection" : ""));
        }
    }
    line("tokenizer", tokenizer.n_tokens > 0 ? fmt::format("{}, {} tokens", tokenizer.model, tokenizer.n_tokens)
                                             : tokenizer.model);
    line("chat template", tokenizer.chat_template ? "yes" : "no");
    line("tensors", fmt::format("{}, {}{}", files.weights->tensors().size(), human_bytes(total_bytes),
                                synthetic ? fmt::format(" (synthetic: as a {} file would hold them)",
                                                        synthetic->weights == "W4" ? "Q4_K" : "bf16")
                                          : ""));
    for (const auto& [type, totals] : by_type) {
        line("", fmt::format("{:<8}{:>6}  {:>12}", type, totals.count, human_bytes(totals.bytes)));
    }
    if (config_result.ok()) {
        const nlohmann::json& memory = info["memory"];
        line("GPU memory",
             fmt::format("at context {}, prefill chunk {} ({})", memory["context"].get<int64_t>(),
                         memory["prefill_chunk"].get<int64_t>(),
                         *kv_cache == KvCacheFormat::kTq4
                             ? "TQ4 KV cache in full-attention layers, bf16 sliding rings"
                             : "bf16 KV cache"));
        line("  weights", human_bytes(memory["weights"]) + (synthetic ? " (" + synthetic->assumes + ")" : ""));
        line("  KV cache", fmt::format("{} ({} per token in full layers{})", human_bytes(memory["kv_cache"]),
                                       human_bytes(memory["kv_bytes_per_token"]),
                                       memory["sliding_ring_entries"].get<int64_t>() > 0
                                           ? fmt::format(", sliding rings of {} entries",
                                                         memory["sliding_ring_entries"].get<int64_t>())
                                           : ""));
        if (memory["recurrent_state"].get<int64_t>() > 0) line("  recurrent", human_bytes(memory["recurrent_state"]));
        line("  workspace", human_bytes(memory["workspace"]));
        line("  runtime", human_bytes(memory["runtime"]) + " (CUDA context, estimate)");
        line("  total", human_bytes(memory["total"]));
        if (gpu.ok()) {
            const int64_t total = memory["total"];
            line("GPU", fmt::format("{}: {} free of {}: {}", gpu->name, human_bytes(static_cast<int64_t>(gpu->free_bytes)),
                                    human_bytes(static_cast<int64_t>(gpu->total_bytes)),
                                    total <= static_cast<int64_t>(gpu->free_bytes) ? "fits" : "does NOT fit"));
        } else {
            line("GPU", "none (" + gpu.status().message() + ")");
        }
    }
    std::fputs(text.c_str(), stdout);
    return config_status.ok() ? 0 : fail(config_status.message());
}

}  // namespace

Command add_info_command(CLI::App& app) {
    auto options = std::make_shared<InfoOptions>();
    CLI::App* info = app.add_subcommand("info", "Describe a model: architecture, tensors, memory needed");
    CLI::Option* model =
        info->add_option("-m,--model", options->model, "GGUF file or Hugging Face folder (default: the installed default model)");
    info->add_option("--dummy", options->dummy,
                     fmt::format("Describe a built-in full-size model without its weights: {} (memory planned for W4 "
                                 "weights)",
                                 fmt::join(dummy_model_names(), ", ")))
        ->excludes(model);
    info->add_option("-c,--ctx-size", options->context, "Context length to plan memory for (default: the model's)");
    info->add_option(
            "-b,--batch-size", options->prefill_chunk,
            "Prefill chunk to plan memory for (default: the CUDA backend's, 2048; 8192 for a "
            "mixture of experts)")
        ->check(CLI::NonNegativeNumber);
    info->add_option(
        "--weights", options->weights,
        "Plan float matrices (bf16/f16/f32 files) as w4, w8 or bf16, as the loader will make them "
        "(default: w4)");
    add_kv_cache_option(*info, options->kv_cache);
    info->add_flag("--json", options->json, "Print JSON instead of a table");
    return [options] { return run_info(*options); };
}

}  // namespace kestrel::cli
