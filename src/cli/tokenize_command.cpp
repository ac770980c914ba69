// `kestrel tokenize [-m FILE] -p TEXT [--parse-special] [--no-bos] [--ids]`: how the model's
// tokenizer splits a text, one "id<TAB>piece" line per token (or only the ids).
#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/printable.h"

namespace kestrel::cli {
namespace {

struct TokenizeOptions {
    ModelOptions model;
    std::string text;
    bool parse_special = false;
    bool no_bos = false;
    bool ids_only = false;
};

int run_tokenize(const TokenizeOptions& options) {
    Result<Tokenizer> loaded = load_tokenizer(options.model);
    if (!loaded.ok()) return fail(loaded.status().message());
    const Tokenizer& tokenizer = *loaded;
    const std::vector<int32_t> ids = tokenizer.encode(options.text, options.parse_special, !options.no_bos);
    if (options.ids_only) {
        std::printf("[%s]\n", fmt::format("{}", fmt::join(ids, ", ")).c_str());
        return 0;
    }
    for (int32_t id : ids) {
        std::printf("%6d\t'%s'\n", id, printable(tokenizer.token_to_piece(id)).c_str());
    }
    std::fprintf(stderr, "%zu tokens\n", ids.size());
    return 0;
}

}  // namespace

Command add_tokenize_command(CLI::App& app) {
    auto options = std::make_shared<TokenizeOptions>();
    CLI::App* command = app.add_subcommand("tokenize", "Show how the model's tokenizer splits a text");
    command->add_option("-m,--model", options->model.model, "GGUF file or Hugging Face folder");
    command->add_option("-p,--prompt", options->text, "The text")->required();
    command->add_flag("--parse-special", options->parse_special, "Read special-token text as those tokens");
    command->add_flag("--no-bos", options->no_bos, "Do not add the BOS token");
    command->add_flag("--ids", options->ids_only, "Print only the ids, as a list");
    return [options] { return run_tokenize(*options); };
}

}  // namespace kestrel::cli
