#!/usr/bin/env bash
# Runs on the GPU machine after scripts/gpu/build_and_test.sh (same machine, build-gpu/ kept):
# the kernel benches and `kestrel bench` on synthetic full-size models, each log in $OUT, and a
# short summary last. Usage: bash scripts/gpu/bench.sh [model ...]   (default: gemma4-31b)
# WITH_GGUF=1 also writes gemma4-31b as a Q4_K_M GGUF (make-gguf) and benchmarks that file:
# the load path (conversion to W4/W8, progress, time) on the real Q4_K_M type mix. KERNELS=0
# skips the kernel benches. Prompt lengths follow each model's issue target (Qwen3.5: 8192).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-/tmp/kestrel-out}"
build="$root/build-gpu"
mkdir -p "$out"
export LD_LIBRARY_PATH="/tmp/kestrel-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
models=("${@:-gemma4-31b}")

if [ "${KERNELS:-1}" != 0 ]; then
    "$build/gemv_w4a8_bench" 20 >"$out/gemv.txt" 2>&1
    "$build/gemm_bench" 10 >"$out/gemm.txt" 2>&1
    "$build/attention_bench" 20 >"$out/attention.txt" 2>&1
fi
for model in "${models[@]}"; do
    long=2048
    [ "$model" = qwen3.5-35b-a3b ] && long=8192
    "$build/kestrel" bench --dummy "$model" -p "512,$long" -n 128 -d 512,32768 -r 3 --profile \
        >"$out/bench-$model.md" 2>"$out/bench-$model.log"
    "$build/kestrel" bench --dummy "$model" -p "$long" -n 64 -d 512 -r 2 --json \
        >"$out/bench-$model.json" 2>>"$out/bench-$model.log"
done
if [ "${WITH_GGUF:-0}" = 1 ]; then
    gguf=/tmp/kestrel-gemma4-31b-q4_k_m.gguf
    start=$(date +%s)
    "$build/kestrel" make-gguf --dummy gemma4-31b --type q4_k_m -o "$gguf" >"$out/make-gguf.log" 2>&1
    echo "make-gguf: $(( $(date +%s) - start )) s, $(stat -c %s "$gguf") bytes" >>"$out/make-gguf.log"
    "$build/kestrel" bench -m "$gguf" -p 2048 -n 64 -d 512 -r 2 \
        >"$out/bench-gemma4-31b-q4_k_m.md" 2>"$out/bench-gemma4-31b-q4_k_m.log"
    rm -f "$gguf"
fi
if [ "${KERNELS:-1}" != 0 ]; then
    echo "== kernels"; tail -4 "$out/gemv.txt"; tail -4 "$out/gemm.txt"; tail -8 "$out/attention.txt"
fi
for model in "${models[@]}"; do echo "== $model"; cat "$out/bench-$model.md"; tail -3 "$out/bench-$model.log"; done
if [ "${WITH_GGUF:-0}" = 1 ]; then
    echo "== gemma4-31b Q4_K_M file"; tail -2 "$out/make-gguf.log"; cat "$out/bench-gemma4-31b-q4_k_m.md"
    grep -E "weights:|loaded in" "$out/bench-gemma4-31b-q4_k_m.log" | tail -4
fi
