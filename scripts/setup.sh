#!/usr/bin/env bash
# Quick start: installs everything, builds, describes the default model and runs a prompt on it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/setup_models.sh"
"$root/scripts/build.sh"
"$root/build/kestrel" info
# The main job: a real prompt on the default model (Gemma 3 270M, CPU reference path).
"$root/build/kestrel" run -p "Q: What is the capital of France?
A:" -n 16 --temp 0
