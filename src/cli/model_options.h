// Flags and loading shared by the verbs that run a model (run, chat, perplexity, tokenize).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>

#include "chat/chat_template.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace kestrel::cli {

struct ModelOptions {
    std::string model;            // -m; empty: the default model
    int64_t context = 4096;       // -c; 0: the model's trained context. Capped by it.
    int64_t prefill_chunk = 0;    // -b; 0: the backend's default
    int threads = 0;              // -t; 0: every hardware thread
    std::string device = "auto";  // --device auto|cpu|cuda
    std::string weights = "w4";   // --weights w4|w8|bf16: float matrices on CUDA
    std::string kv_cache = "bf16";  // --kv-cache bf16|tq4 (runtime/kv_cache_format.h)
};

void add_model_options(CLI::App& command, ModelOptions& options);
// --kv-cache bf16|tq4, for verbs with their own flags (bench, info).
void add_kv_cache_option(CLI::App& command, std::string& kv_cache);

// -s is a flag of its own: without it the seed is random (and logged, so a run can be repeated).
struct SamplingOptions {
    SamplingParams params;
    int64_t seed = -1;
};

void add_sampling_options(CLI::App& command, SamplingOptions& options);
// The parameters with the seed resolved, or the first invalid flag.
Result<SamplingParams> resolve_sampling(const SamplingOptions& options);

Result<std::unique_ptr<Engine>> load_engine(const ModelOptions& options);
// Only the tokenizer, for verbs that need no weights.
Result<Tokenizer> load_tokenizer(const ModelOptions& options);
// The context a session gets: -c, 0 meaning the trained context, capped by it.
int64_t session_context(const ModelOptions& options, const ModelConfig& config);
// A session of `context` tokens with -b and --kv-cache.
Result<std::unique_ptr<Session>> open_session(const Engine& engine, const ModelOptions& options,
                                              int64_t context);
// A generate() text sink that streams to stdout.
bool print_to_stdout(std::string_view text);
// The chat format of the loaded files (template text if present, else the architecture).
Result<ChatFormat> chat_format_of(const ModelFiles& files, const ModelConfig& config);

}  // namespace kestrel::cli
