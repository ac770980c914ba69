#!/usr/bin/env bash
# The sanitizer build (clang, AddressSanitizer + UndefinedBehaviorSanitizer) in build-sanitize/:
# runs the unit tests there but the slow model-numerics ones (every corrupt file must still exit 1
# with one line, no signal),
# then the libFuzzer targets: the GGUF parser for FUZZ_SECONDS (default 60) from a generated seed
# corpus, and the safetensors/config.json parsers for half as long from the fixture files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-60}"
build="$root/build-sanitize"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKESTREL_CUDA=OFF -DKESTREL_SANITIZE=ON -DKESTREL_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(nproc)"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Parsers, loaders and every CLI error path run here; the model-numerics tests (forward passes
# against transformers) run ~50x slower under the sanitizers and stay in the release build.
echo "== unit tests under ASan + UBSan"
ctest --test-dir "$build" -L unit -E "Reference|CliRun|CliChat|CliPerplexity" -j "$(nproc)" --output-on-failure

# Each run's last lines: libFuzzer's statistics, or the crash and the artifact's path.
fuzz() {
    local name="$1" corpus="$2" seconds="$3"
    echo "== fuzzing $name for ${seconds}s"
    "$build/tests/fuzz/$name" "$corpus" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
        -rss_limit_mb=4096 -artifact_prefix="$build/fuzz-artifacts/" -print_final_stats=1 >"$build/$name.log" 2>&1 ||
        { tail -n 40 "$build/$name.log"; echo "$name found a failure"; return 1; }
    grep -E "^Done|number_of_executed_units|new_units_added" "$build/$name.log"
}
mkdir -p "$build/fuzz-artifacts"
"$build/tests/fuzz/gguf_fuzz_seeds" "$build/fuzz-corpus/gguf"
fuzz gguf_fuzzer "$build/fuzz-corpus/gguf" "$seconds"
mkdir -p "$build/fuzz-corpus/safetensors"
cp "$root"/tests/fixtures/hf_tiny/* "$build/fuzz-corpus/safetensors/"
fuzz safetensors_fuzzer "$build/fuzz-corpus/safetensors" "$((seconds / 2))"
