#!/usr/bin/env bash
# Quick start: installs everything, builds, and runs Kestrel on the default model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/setup_models.sh"
"$root/scripts/build.sh"
"$root/build/kestrel" info
