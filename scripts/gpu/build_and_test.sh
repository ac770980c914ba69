#!/usr/bin/env bash
# Runs on the GPU machine (carry .gpu-deps from scripts/gpu/fetch_deps.sh): unpacks the library
# packages into /tmp/kestrel-deps, builds Kestrel with the CUDA backend for sm_90a in build-gpu/,
# runs the tests that need no default model (it is too large to travel) and `kestrel info`, and
# leaves logs in $OUT. Usage: bash scripts/gpu/build_and_test.sh [ctest -R regex]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-/tmp/kestrel-out}"
mkdir -p "$out"
deps=/tmp/kestrel-deps
mkdir -p "$deps"
for deb in "$root"/.gpu-deps/*.deb; do
    if command -v dpkg >/dev/null; then
        dpkg -x "$deb" "$deps"
    else  # a .deb is an ar archive holding data.tar.*
        (cd /tmp && rm -f data.tar.* && ar x "$deb" && tar -xf data.tar.* -C "$deps")
    fi
done
lib="$deps/usr/lib/x86_64-linux-gnu"
export CMAKE_PREFIX_PATH="$deps/usr"
export PKG_CONFIG_SYSROOT_DIR="$deps" PKG_CONFIG_LIBDIR="$lib/pkgconfig:$deps/usr/share/pkgconfig"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v pkg-config >/dev/null || export PKG_CONFIG="$deps/usr/bin/pkgconf"
export PATH="$PATH:/usr/local/cuda/bin"

{
    echo "== machine"; nvidia-smi -L; nvcc --version | tail -1; g++ --version | head -1; cmake --version | head -1
} 2>&1 | tee "$out/machine.txt"
cmake -S "$root" -B "$root/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKESTREL_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DKESTREL_WERROR=ON -DKESTREL_COMMIT="${KESTREL_COMMIT:-unknown}" ${PKG_CONFIG:+-DPKG_CONFIG_EXECUTABLE=$PKG_CONFIG} \
    >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build "$root/build-gpu" -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
echo "== built"
# Tests that read the default model (models/default.gguf) run only when it is there.
needs_default_model="DefaultModel|CliRun|CliChat|CliTokenize|CliPerplexity|CliInfo.DescribesTheDefaultModel|CliInfo.JsonAtAGivenContext|Gemma3Reference|GemmaTokenizer|MakeGguf.Q4KMMixEqualsLlamaQuantizeOnGemma3_270M"
[ -f "$root/models/default.gguf" ] && needs_default_model="^$"
ctest --test-dir "$root/build-gpu" -E "$needs_default_model" ${1:+-R "$1"} -j 8 --output-on-failure >"$out/ctest.log" 2>&1
status=$?
grep -E "tests passed|\(Failed\)|\(Timeout\)" "$out/ctest.log" | head -30
"$root/build-gpu/kestrel" info -m "$root/tests/fixtures/gemma4_tiny/model.gguf" 2>&1 | tee "$out/info.txt" | tail -4
exit $status
