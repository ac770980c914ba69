#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, builds, runs every
# unit test but the slow model-numerics ones under the sanitizers, fuzzes the GGUF and safetensors
# parsers, then runs every test of the
# release build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/setup_models.sh"
"$root/scripts/build.sh"

"$root/scripts/fuzz.sh"

# GPU tests (Cuda*) run where there is a GPU and skip themselves elsewhere.
echo "== tests"
ctest --test-dir "$root/build" -L unit -j "$(nproc)" --output-on-failure
