// The measuring loop of `kestrel bench`, in llama-bench's terms: "pp<p>" prefills p random
// tokens into an empty session (prompt processing speed and time to first token); "tg<n> @ d<d>"
// fills a session to depth d (not timed), then decodes n tokens greedily (generation speed at
// that context). Each test runs `repetitions` times after one warm-up run; speeds are the mean
// and sample standard deviation of n / seconds over the repetitions, as llama-bench reports them.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kestrel/status.h"
#include "ops/ops.h"
#include "runtime/engine.h"
#include "runtime/kv_cache_format.h"

namespace kestrel {

struct BenchOptions {
    std::vector<int64_t> prompt_lengths = {512};  // one pp test each; 0 entries are skipped
    int64_t decode_tokens = 128;                  // n of every tg test; 0 skips them
    std::vector<int64_t> depths = {0};            // one tg test each
    int repetitions = 3;
    int64_t context = 0;         // session context; 0: the smallest that fits every test
    int64_t prefill_chunk = 0;   // tokens per prefill step; 0: the engine's default
    KvCacheFormat kv_cache = KvCacheFormat::kNative;  // --kv-cache
    uint64_t seed = 1234;        // the random tokens
    bool warmup = true;          // one unrecorded run before each test (CUDA init, graph capture, caches)
};

// The context every test fits in: the longest prompt, and the deepest depth plus n.
int64_t bench_context_needed(const BenchOptions& options);

// kInvalidArgument naming the first bad option (negative lengths, no test at all, r < 1, a -c
// shorter than bench_context_needed).
Status validate_bench_options(const BenchOptions& options);

struct BenchStat {
    double mean = 0.0;
    double stddev = 0.0;  // sample standard deviation (n - 1); 0 for one sample
};

BenchStat mean_and_stddev(std::span<const double> samples);

struct BenchResult {
    std::string test;      // "pp512", "tg128", "tg128 @ d8192" (llama-bench's names)
    int64_t n_prompt = 0;  // pp: tokens prefilled and timed
    int64_t n_decode = 0;  // tg: tokens decoded and timed
    int64_t depth = 0;     // tg: tokens in the session before the timed decode
    std::vector<double> seconds;             // each repetition's timed part
    BenchStat tokens_per_second;             // of n / seconds
    BenchStat time_to_first_token_ms;        // pp: prefill + the first greedy token; tg: zero
};

std::string bench_test_name(const BenchResult& result);

struct BenchReport {
    int64_t context = 0;                 // the session's
    std::vector<BenchResult> results;    // pp tests in -p order, then tg tests in -d order
    int64_t peak_device_bytes = -1;      // see DeviceMemoryPeak; -1 on the CPU backend
};

// Peak device memory over a run. The engine keeps no allocator statistics yet, so this samples
// cudaMemGetInfo (total - free: the whole device's use, the CUDA context and other processes
// included) after every measured run and keeps the largest. On the CPU backend it stays -1.
class DeviceMemoryPeak {
public:
    explicit DeviceMemoryPeak(bool on_device) : on_device_(on_device) {}
    void sample();
    int64_t peak_device_bytes() const { return peak_; }

private:
    bool on_device_;
    int64_t peak_ = -1;
};

// Whether the engine runs on a GPU (its Ops backend is not the CPU reference).
bool runs_on_device(const Engine& engine);

// Runs every test on one session of `engine` (reset before each run, so each starts empty).
// `on_result` sees each test as it finishes (the table prints row by row). Errors from the
// session (a context past the model's trained one, ...) end the run.
Result<BenchReport> run_bench(const Engine& engine, const BenchOptions& options,
                              const std::function<void(const BenchResult&)>& on_result = {});

// Where the time goes: per-op device time (Ops::set_profiling) of one prefill of the first
// prompt length and of n decodes at the first depth, run eagerly because captured decode graphs
// are not timed. The ops come in the backend's order; a backend without per-op timing (the CPU)
// gives empty lists.
struct OpProfile {
    std::string test;  // "pp512", "tg128 @ d8192"
    std::vector<OpTiming> ops;
};
Result<std::vector<OpProfile>> profile_ops(const Engine& engine, const BenchOptions& options);

}  // namespace kestrel
