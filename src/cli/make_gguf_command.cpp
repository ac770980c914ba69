// `kestrel make-gguf --dummy NAME [--type q4_k_m|q8_0|f16] -o FILE [--seed N] [-t THREADS]`:
// writes a synthetic GGUF of a built-in model (the real names, shapes, metadata and quantisation
// mix; random weights, a placeholder vocabulary), so `info`, `run` and `bench` can load a
// full-size model that is not here. Progress on stderr.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "models/dummy_configs.h"
#include "models/dummy_gguf.h"

namespace kestrel::cli {
namespace {

struct MakeGgufOptions {
    std::string dummy;
    std::string type = "q4_k_m";
    std::string output;
    uint64_t seed = 1234;
    int threads = 0;
};

double gib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 30); }

int run_make_gguf(const MakeGgufOptions& options) {
    Result<DummyQuant> quant = parse_dummy_quant(options.type);
    if (!quant.ok()) return fail("--type: " + quant.status().message());
    Result<DummyModel> model = plan_dummy_model(options.dummy, *quant, options.seed);
    if (!model.ok()) return fail(model.status().message());

    const auto start = std::chrono::steady_clock::now();
    const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    std::fprintf(stderr, "make-gguf: %s %s, %zu tensors, %.2f GiB -> %s\n", options.dummy.c_str(),
                 std::string(dummy_quant_name(*quant)).c_str(), model->tensors.size(), gib(model->tensor_bytes),
                 options.output.c_str());
    DummyWriteOptions write;
    write.threads = options.threads;
    double last_print = -1.0;
    write.on_progress = [&](const DummyWriteProgress& progress) {
        // Twice a second, and the last tensor: one line rewritten in place, not 833 of them in a log.
        const double now = elapsed();
        if (now - last_print < 0.5 && progress.tensors_done < progress.tensors_total) return;
        last_print = now;
        std::fprintf(stderr, "\rmake-gguf: %lld/%lld tensors, %.2f/%.2f GiB, %.0f s",
                     static_cast<long long>(progress.tensors_done), static_cast<long long>(progress.tensors_total),
                     gib(progress.bytes_done), gib(progress.bytes_total), elapsed());
        std::fflush(stderr);
    };
    const Status written = write_dummy_gguf(*model, options.output, write);
    std::fputc('\n', stderr);
    if (!written.ok()) return fail(written.message());
    std::fprintf(stderr, "make-gguf: wrote %s in %.1f s\n", options.output.c_str(), elapsed());
    return 0;
}

}  // namespace

Command add_make_gguf_command(CLI::App& app) {
    auto options = std::make_shared<MakeGgufOptions>();
    CLI::App* make = app.add_subcommand("make-gguf", "Write a synthetic GGUF of a built-in model (random weights)");
    make->add_option("--dummy", options->dummy, fmt::format("The built-in model: {}", fmt::join(dummy_model_names(), ", ")))
        ->required();
    make->add_option("--type", options->type,
                     "q4_k_m (llama.cpp's Q4_K_M mix), q8_0 or f16; norms and small tensors stay F32")
        ->capture_default_str();
    make->add_option("-o,--output", options->output, "The GGUF file to write")->required();
    make->add_option("--seed", options->seed, "Seed of the random weights")->capture_default_str();
    make->add_option("-t,--threads", options->threads, "Encoding threads (0: all)")->check(CLI::NonNegativeNumber);
    return [options] { return run_make_gguf(*options); };
}

}  // namespace kestrel::cli
