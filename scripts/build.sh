#!/usr/bin/env bash
# Configures and builds Kestrel in build/ (Release, warnings as errors). Extra arguments go to
# cmake, e.g. scripts/build.sh -DKESTREL_CUDA=OFF. Set KESTREL_CUDA_ARCHITECTURES to compile
# CUDA for fewer architectures (CI compiles one: 2 cores compile slowly).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
arguments=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DKESTREL_WERROR=ON)
[ -n "${KESTREL_CUDA_ARCHITECTURES:-}" ] && arguments+=("-DCMAKE_CUDA_ARCHITECTURES=$KESTREL_CUDA_ARCHITECTURES")
cmake -S "$root" -B "$root/build" "${arguments[@]}" "$@" >/dev/null
cmake --build "$root/build" -j "$(nproc)"
