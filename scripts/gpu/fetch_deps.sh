#!/usr/bin/env bash
# The GPU machine (the `device` tool's H100) has nvcc, CMake and ninja but none of our Debian
# library packages, and nothing can be fetched there. This downloads them here into .gpu-deps/
# (ignored by git), to be named in the run's `carry` and unpacked by scripts/gpu/build_and_test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$root/.gpu-deps"
cd "$root/.gpu-deps"
apt-get download libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev libgtest-dev libpcre2-dev libpcre2-8-0 \
    pkgconf pkgconf-bin libpkgconf3 pkg-config 2>/dev/null
ls -1 "$root/.gpu-deps"
