#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, builds, runs every
# test under the sanitizers, fuzzes the GGUF parser, then runs every test of the release build
# (GPU tests only where a GPU is present).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/setup_models.sh"
"$root/scripts/build.sh"

"$root/scripts/fuzz.sh"

labels="unit"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then labels="unit|cuda"; fi
echo "== tests ($labels)"
ctest --test-dir "$root/build" -L "$labels" -j "$(nproc)" --output-on-failure
