// `kestrel perplexity [-m FILE] -f TEXT [-c CTX]`: perplexity of a text with llama.cpp's
// definition (non-overlapping chunks of CTX tokens, the second half of each scored), so the
// numbers compare with llama-perplexity's.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "runtime/perplexity.h"

namespace kestrel::cli {
namespace {

struct PerplexityOptions {
    ModelOptions model;
    std::string file;
    int64_t max_chunks = -1;
};

int run_perplexity(PerplexityOptions options) {
    std::ifstream in(options.file, std::ios::binary);
    if (!in) return fail(options.file + ": cannot read the text file");
    std::stringstream text;
    text << in.rdbuf();
    if (text.str().empty()) return fail(options.file + ": the text is empty");

    Result<std::unique_ptr<Engine>> loaded = load_engine(options.model);
    if (!loaded.ok()) return fail(loaded.status().message());
    const Engine& engine = **loaded;
    const Tokenizer& tokenizer = engine.tokenizer();
    // -c is the chunk length here, as in llama-perplexity (default 512 there too).
    const int64_t chunk = options.model.context == 0 ? 512 : options.model.context;
    Result<std::unique_ptr<Session>> session = open_session(engine, options.model, chunk);
    if (!session.ok()) return fail(session.status().message());
    std::vector<int32_t> tokens = tokenizer.encode(text.str(), /*parse_special=*/false, /*add_bos=*/true);
    if (options.max_chunks > 0 && static_cast<int64_t>(tokens.size()) > options.max_chunks * chunk) {
        tokens.resize(static_cast<size_t>(options.max_chunks * chunk));
    }
    std::fprintf(stderr, "%zu tokens, %lld per chunk\n", tokens.size(), static_cast<long long>(chunk));
    Result<PerplexityResult> result =
        perplexity(**session, tokens, chunk, tokenizer.bos_id() >= 0 ? tokenizer.bos_id() : tokens.front());
    if (!result.ok()) return fail(result.status().message());
    std::printf("perplexity %.4f over %lld chunks of %lld tokens (%lld predictions scored)\n", result->perplexity,
                static_cast<long long>(result->n_chunks), static_cast<long long>(chunk),
                static_cast<long long>(result->n_scored));
    return 0;
}

}  // namespace

Command add_perplexity_command(CLI::App& app) {
    auto options = std::make_shared<PerplexityOptions>();
    options->model.context = 512;
    CLI::App* command = app.add_subcommand("perplexity", "Perplexity of a text (llama.cpp's definition)");
    add_model_options(*command, options->model);
    command->add_option("-f,--file", options->file, "The text file")->required();
    command->add_option("--chunks", options->max_chunks, "Score at most this many chunks (-1: all)")
        ->capture_default_str();
    return [options] { return run_perplexity(*options); };
}

}  // namespace kestrel::cli
