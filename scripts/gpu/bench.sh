#!/usr/bin/env bash
# Runs on the GPU machine after scripts/gpu/build_and_test.sh (same machine, build-gpu/ kept):
# the kernel benches and `kestrel bench` on synthetic full-size models, each log in $OUT, and a
# short summary last. Usage: bash scripts/gpu/bench.sh [model ...]   (default: gemma4-31b)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-/tmp/kestrel-out}"
build="$root/build-gpu"
mkdir -p "$out"
export LD_LIBRARY_PATH="/tmp/kestrel-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
models=("${@:-gemma4-31b}")

"$build/gemv_w4a8_bench" 20 >"$out/gemv.txt" 2>&1
"$build/gemm_bench" 10 >"$out/gemm.txt" 2>&1
"$build/attention_bench" 20 >"$out/attention.txt" 2>&1
for model in "${models[@]}"; do
    "$build/kestrel" bench --dummy "$model" -p 512,2048 -n 128 -d 512,32768 -r 3 --profile \
        >"$out/bench-$model.md" 2>"$out/bench-$model.log"
    "$build/kestrel" bench --dummy "$model" -p 2048 -n 64 -d 512 -r 2 --json \
        >"$out/bench-$model.json" 2>>"$out/bench-$model.log"
done
echo "== kernels"; tail -4 "$out/gemv.txt"; tail -4 "$out/gemm.txt"; tail -8 "$out/attention.txt"
for model in "${models[@]}"; do echo "== $model"; cat "$out/bench-$model.md"; tail -3 "$out/bench-$model.log"; done
