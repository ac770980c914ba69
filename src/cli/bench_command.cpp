// `kestrel bench [-m FILE | --dummy NAME] [-p 512,2048] [-n 128] [-d 0,8192,32768] [-r 3] [-c CTX]
// [--device auto|cpu|cuda] [--profile] [--json]`: prefill speed and time to first token at each
// prompt length, decode speed at each context depth, peak device memory; a llama-bench-style
// markdown table, or one JSON object (GPU, commit, flags, results) for bench/results/.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "models/dummy_configs.h"
#include "models/model_shapes.h"
#include "ops/gpu_info.h"
#include "runtime/bench_runner.h"
#include "runtime/memory_plan.h"

namespace kestrel::cli {
namespace {

struct BenchCommandOptions {
    std::string model;
    std::string dummy;
    BenchOptions bench;
    int threads = 0;
    std::string device = "auto";
    std::string weights = "w4";
    std::string kv_cache = "bf16";  // --kv-cache
    bool json = false;
    bool no_warmup = false;
    bool profile = false;
};

// The model column and the size and params columns, as llama-bench fills them.
struct ModelFacts {
    std::string description;  // "gemma3 268M Q4_K_M"
    std::string type;         // "Q4_K_M", "F32", "synthetic W4"
    int64_t size_bytes = 0;   // tensor bytes in the file (a synthetic model: in the engine's format)
    int64_t parameters = 0;
};

std::string human_bytes(int64_t bytes) {
    const double value = static_cast<double>(bytes);
    if (bytes >= (int64_t{1} << 30)) return fmt::format("{:.2f} GiB", value / (1 << 30));
    if (bytes >= (int64_t{1} << 20)) return fmt::format("{:.2f} MiB", value / (1 << 20));
    return fmt::format("{:.2f} KiB", value / (1 << 10));
}

std::string human_count(int64_t count, bool compact) {
    const double value = static_cast<double>(count);
    const auto [scaled, unit] = count >= 1'000'000'000 ? std::pair{value / 1e9, "B"}
                                : count >= 1'000'000   ? std::pair{value / 1e6, "M"}
                                                       : std::pair{value / 1e3, "K"};
    return compact ? fmt::format("{:.3g}{}", scaled, unit) : fmt::format("{:.2f} {}", scaled, unit);
}

// llama.cpp's llama_ftype numbers of general.file_type, by the names llama-quantize takes.
std::string file_type_name(int64_t file_type) {
    static const std::map<int64_t, std::string> kNames = {
        {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},    {8, "Q5_0"},
        {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"}, {13, "Q3_K_L"}, {14, "Q4_K_S"},
        {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"}, {18, "Q6_K"},   {32, "BF16"}};
    const auto found = kNames.find(file_type);
    return found != kNames.end() ? found->second : fmt::format("file type {}", file_type);
}

// The type that holds the most bytes, for files without general.file_type.
std::string dominant_type(std::span<const WeightInfo> tensors) {
    std::map<std::string, int64_t> bytes;
    for (const WeightInfo& tensor : tensors) bytes[std::string(dtype_name(tensor.dtype))] += tensor.n_bytes;
    const auto largest = std::max_element(bytes.begin(), bytes.end(),
                                          [](const auto& a, const auto& b) { return a.second < b.second; });
    return largest != bytes.end() ? largest->first : "?";
}

ModelFacts describe_model(const Engine& engine, const BenchCommandOptions& options) {
    const ModelConfig& config = engine.config();
    ModelFacts facts;
    if (const WeightSource* weights = engine.files().weights.get()) {
        facts.parameters = count_parameters(config, *weights).total;
        for (const WeightInfo& tensor : weights->tensors()) {
            if (is_loaded_tensor(config, tensor.name)) facts.size_bytes += tensor.n_bytes;
        }
        Result<int64_t> file_type = engine.files().gguf ? engine.files().gguf->get_int("general.file_type")
                                                        : Result<int64_t>(Status(StatusCode::kNotFound, ""));
        facts.type = file_type.ok() ? file_type_name(*file_type) : dominant_type(weights->tensors());
    } else {
        // A synthetic model holds no file: its tensors are the config's shapes, made in the backend's
        // format: fp32 on the reference backend, else --weights (memory_plan.h engine_weight_bytes
        // prices a stored type in the format the engine converts it to).
        const bool reference = engine.ops().accepts(WeightFormat::kF32);
        const DType stored = reference                 ? DType::kF32
                             : options.weights == "w8"   ? DType::kQ8_0
                             : options.weights == "bf16" ? DType::kBF16
                                                         : DType::kQ4_K;
        const ShapeOnlySource shapes(config.name, model_tensor_shapes(config, stored));
        facts.parameters = count_parameters(config, shapes).total;
        for (const WeightInfo& tensor : shapes.tensors()) {
            // The stored type stands for the format (BF16 for bf16), so float stays bf16 here.
            facts.size_bytes +=
                reference ? tensor.n_bytes : engine_weight_bytes(tensor, WeightFormat::kBF16);
        }
        std::string format = reference ? "f32" : options.weights;
        for (char& c : format) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        facts.type = "synthetic " + format;
    }
    facts.description = fmt::format("{} {} {}", config.architecture, human_count(facts.parameters, true), facts.type);
    return facts;
}

std::string backend_label(const Engine& engine) {
    std::string name = engine.ops().name();
    for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return name;
}

std::string speed_cell(const BenchResult& result) {
    return fmt::format("{:.2f} ± {:.2f}", result.tokens_per_second.mean, result.tokens_per_second.stddev);
}

void print_table_header() {
    std::printf("| %-30s | %11s | %10s | %-8s | %15s | %20s |\n", "model", "size", "params", "backend", "test", "t/s");
    std::printf("| %s | %s: | %s: | %s | %s: | %s: |\n", std::string(30, '-').c_str(), std::string(10, '-').c_str(),
                std::string(9, '-').c_str(), std::string(8, '-').c_str(), std::string(14, '-').c_str(),
                std::string(19, '-').c_str());
}

void print_table_row(const ModelFacts& model, const std::string& backend, const BenchResult& result) {
    // "±" is two bytes in UTF-8: pad the cell by hand so the column lines up on screen.
    const std::string speed = speed_cell(result);
    const std::string padded = std::string(speed.size() < 21 ? 21 - speed.size() : 0, ' ') + speed;
    std::printf("| %-30s | %11s | %10s | %-8s | %15s | %s |\n", model.description.c_str(),
                human_bytes(model.size_bytes).c_str(), human_count(model.parameters, false).c_str(), backend.c_str(),
                result.test.c_str(), padded.c_str());
    std::fflush(stdout);
}

nlohmann::json stat_json(const BenchStat& stat) { return {{"mean", stat.mean}, {"stddev", stat.stddev}}; }

// Per-op time, largest first, as a markdown table per profiled test.
void print_profiles(std::span<const OpProfile> profiles, const Engine& engine) {
    for (const OpProfile& profile : profiles) {
        if (profile.ops.empty()) {
            std::printf("\nper-op time, %s: none (the %s backend has no per-op timers)\n", profile.test.c_str(),
                        engine.ops().name());
            continue;
        }
        std::vector<OpTiming> ops = profile.ops;
        std::sort(ops.begin(), ops.end(), [](const OpTiming& a, const OpTiming& b) { return a.microseconds > b.microseconds; });
        double total = 0.0;
        for (const OpTiming& op : ops) total += op.microseconds;
        std::printf("\nper-op time, %s (one eager run, %.2f ms):\n", profile.test.c_str(), total / 1000.0);
        std::printf("| %-24s | %8s | %10s | %6s | %10s |\n", "op", "calls", "ms", "share", "us/call");
        std::printf("| %s | %s: | %s: | %s: | %s: |\n", std::string(24, '-').c_str(), std::string(7, '-').c_str(),
                    std::string(9, '-').c_str(), std::string(5, '-').c_str(), std::string(9, '-').c_str());
        for (const OpTiming& op : ops) {
            std::printf("| %-24s | %8lld | %10.3f | %5.1f%% | %10.2f |\n", op.op.c_str(), static_cast<long long>(op.calls),
                        op.microseconds / 1000.0, total > 0.0 ? 100.0 * op.microseconds / total : 0.0,
                        op.calls > 0 ? op.microseconds / static_cast<double>(op.calls) : 0.0);
        }
    }
}

nlohmann::json profiles_json(std::span<const OpProfile> profiles) {
    nlohmann::json json = nlohmann::json::array();
    for (const OpProfile& profile : profiles) {
        nlohmann::json ops = nlohmann::json::array();
        for (const OpTiming& op : profile.ops) {
            ops.push_back({{"op", op.op}, {"calls", op.calls}, {"microseconds", op.microseconds}});
        }
        json.push_back({{"test", profile.test}, {"ops", std::move(ops)}});
    }
    return json;
}

nlohmann::json report_json(const BenchCommandOptions& options, const Engine& engine, const ModelFacts& model,
                           const BenchReport& report) {
    nlohmann::json json;
    json["kestrel_version"] = KESTREL_VERSION;
    json["commit"] = KESTREL_COMMIT;
    const Result<GpuInfo> gpu = gpu_info();
    json["gpu"] = gpu.ok() ? nlohmann::json{{"name", gpu->name},
                                            {"compute_capability", gpu->compute_capability},
                                            {"total_bytes", gpu->total_bytes}}
                           : nlohmann::json(nullptr);
    json["backend"] = engine.ops().name();
    json["model"] = {{"file", options.model.empty() ? nlohmann::json(nullptr) : nlohmann::json(options.model)},
                     {"dummy", options.dummy.empty() ? nlohmann::json(nullptr) : nlohmann::json(options.dummy)},
                     {"name", engine.config().name},
                     {"architecture", engine.config().architecture},
                     {"description", model.description},
                     {"type", model.type},
                     {"size_bytes", model.size_bytes},
                     {"parameters", model.parameters}};
    const BenchOptions& bench = options.bench;
    json["flags"] = {{"n_prompt", bench.prompt_lengths}, {"n_gen", bench.decode_tokens},
                     {"n_depth", bench.depths},          {"repetitions", bench.repetitions},
                     {"ctx_size", bench.context},        {"batch_size", bench.prefill_chunk},
                     {"threads", options.threads},       {"device", options.device},
                     {"weights", options.weights},       {"kv_cache", options.kv_cache},
                     {"warmup", bench.warmup},           {"seed", bench.seed}};
    json["context"] = report.context;
    json["peak_device_bytes"] = report.peak_device_bytes;
    json["results"] = nlohmann::json::array();
    for (const BenchResult& result : report.results) {
        nlohmann::json entry = {{"test", result.test},
                                {"n_prompt", result.n_prompt},
                                {"n_gen", result.n_decode},
                                {"n_depth", result.depth},
                                {"seconds", result.seconds},
                                {"tokens_per_second", stat_json(result.tokens_per_second)}};
        if (result.n_prompt > 0) entry["time_to_first_token_ms"] = stat_json(result.time_to_first_token_ms);
        json["results"].push_back(std::move(entry));
    }
    return json;
}

int run_bench_command(BenchCommandOptions options) {
    options.bench.warmup = !options.no_warmup;
    const Status valid = validate_bench_options(options.bench);
    if (!valid.ok()) return fail(valid.message());

    EngineOptions engine_options;
    engine_options.model = options.model;
    engine_options.dummy = options.dummy;
    engine_options.threads = options.threads;
    Result<Device> device = parse_device(options.device);
    if (!device.ok()) return fail(device.status().message());
    engine_options.device = *device;
    Result<WeightFormat> weights = parse_weight_format(options.weights);
    if (!weights.ok()) return fail(weights.status().message());
    engine_options.float_weights = *weights;
    Result<KvCacheFormat> kv_cache = parse_kv_cache_format(options.kv_cache);
    if (!kv_cache.ok()) return fail(kv_cache.status().message());
    options.bench.kv_cache = *kv_cache;
    Result<std::unique_ptr<Engine>> loaded = Engine::load(engine_options);
    if (!loaded.ok()) return fail(loaded.status().message());
    const Engine& engine = **loaded;
    if (options.bench.prefill_chunk == 0) options.bench.prefill_chunk = engine.default_prefill_chunk();

    const ModelFacts model = describe_model(engine, options);
    const std::string backend = backend_label(engine);
    if (!options.json) print_table_header();
    Result<BenchReport> report = run_bench(engine, options.bench, [&](const BenchResult& result) {
        if (!options.json) print_table_row(model, backend, result);
    });
    if (!report.ok()) return fail(report.status().message());
    std::vector<OpProfile> profiles;
    if (options.profile) {
        Result<std::vector<OpProfile>> profiled = profile_ops(engine, options.bench);
        if (!profiled.ok()) return fail(profiled.status().message());
        profiles = std::move(profiled).value();
    }

    if (options.json) {
        nlohmann::json json = report_json(options, engine, model, *report);
        if (options.profile) json["profile"] = profiles_json(profiles);
        std::printf("%s\n", json.dump(2).c_str());
        return 0;
    }
    std::printf("\n");
    for (const BenchResult& result : report->results) {
        if (result.n_prompt == 0) continue;
        std::printf("time to first token, %s: %.2f ± %.2f ms\n", result.test.c_str(),
                    result.time_to_first_token_ms.mean, result.time_to_first_token_ms.stddev);
    }
    if (report->peak_device_bytes >= 0) {
        std::printf("peak device memory: %s (device-wide, cudaMemGetInfo)\n",
                    human_bytes(report->peak_device_bytes).c_str());
    } else {
        std::printf("peak device memory: none (%s backend)\n", engine.ops().name());
    }
    std::printf("context: %lld tokens\nbuild: %s (kestrel %s)\n", static_cast<long long>(report->context),
                KESTREL_COMMIT, KESTREL_VERSION);
    print_profiles(profiles, engine);
    return 0;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
    auto options = std::make_shared<BenchCommandOptions>();
    CLI::App* bench = app.add_subcommand("bench", "Measure prefill and decode speed (llama-bench style)");
    CLI::Option* model =
        bench->add_option("-m,--model", options->model, "GGUF file or Hugging Face folder (default: the installed default model)");
    bench->add_option("--dummy", options->dummy,
                      fmt::format("Benchmark a built-in full-size model with synthetic weights: {}",
                                  fmt::join(dummy_model_names(), ", ")))
        ->excludes(model);
    bench->add_option("-p,--n-prompt", options->bench.prompt_lengths, "Prompt lengths to prefill, comma-separated (0: none)")
        ->delimiter(',')
        ->capture_default_str();
    bench->add_option("-n,--n-gen", options->bench.decode_tokens, "Tokens to decode per generation test (0: none)")
        ->capture_default_str();
    bench->add_option("-d,--n-depth", options->bench.depths, "Context depths to decode at, comma-separated")
        ->delimiter(',')
        ->capture_default_str();
    bench->add_option("-r,--repetitions", options->bench.repetitions, "Runs of each test")->capture_default_str();
    bench->add_option("-c,--ctx-size", options->bench.context, "Session context (0: the smallest that fits every test)")
        ->capture_default_str();
    bench->add_option("-b,--batch-size", options->bench.prefill_chunk,
                      "Tokens per prefill step (0: the backend's default, 512 on the CPU, 2048 on CUDA)")
        ->capture_default_str();
    bench->add_option("-t,--threads", options->threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
    bench->add_option("--device", options->device, "auto (CUDA when there is a GPU), cpu or cuda")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    bench->add_option("--weights", options->weights, "Engine format of float matrices on CUDA: w4, w8 or bf16")
        ->capture_default_str()
        ->check(CLI::IsMember({"w4", "w8", "bf16"}));
    add_kv_cache_option(*bench, options->kv_cache);
    bench->add_option("--seed", options->bench.seed, "Seed of the random prompt tokens")->capture_default_str();
    bench->add_flag("--no-warmup", options->no_warmup, "Skip the unrecorded warm-up run before each test");
    bench->add_flag("--profile", options->profile,
                    "Then time each op of one prefill (first -p) and of -n decodes (first -d), run eagerly");
    bench->add_flag("--json", options->json, "Print one JSON object instead of the table");
    return [options] { return run_bench_command(*options); };
}

}  // namespace kestrel::cli
