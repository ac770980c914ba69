#!/usr/bin/env python3
"""Builds a tiny Hugging Face checkpoint folder for the safetensors / config.json tests.

The .safetensors files are written by the reference implementation (the PyPI `safetensors`
package), not by us, so the C++ reader is checked against what real checkpoints look like:

  tests/fixtures/hf_tiny/
    config.json                          gemma3-like, with a nested text_config (Gemma 3/4 and
                                         Qwen3.5 multimodal checkpoints nest it the same way)
    model-00001-of-00002.safetensors     two shards ...
    model-00002-of-00002.safetensors
    model.safetensors.index.json         ... and the index that maps tensor name -> shard
    expected.json                        name -> dtype, shape, shard and values (all of them for
                                         small tensors; spot values, sum and sum of |x| for
                                         larger ones), computed here from the arrays

numpy has no bfloat16: BF16 tensors are rounded to bfloat16 here (round to nearest even, as
torch does), kept as their uint16 bit patterns, and handed to `safetensors.serialize_file`
with dtype "bfloat16" (safetensors >= 0.6 `TensorSpec`) or "BF16" (the older dict form), so
the header and layout still come from the safetensors package.

Usage: python3 scripts/make_safetensors_fixture.py [--out DIR]
Needs: pip install safetensors numpy
"""

import argparse
import json
import math
import os
import pathlib

import numpy as np
import safetensors

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "hf_tiny"

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"

# Tensors with at most this many elements list every value in expected.json; larger ones list
# spot values plus sums, to keep the fixture small.
FULL_VALUES_LIMIT = 256


def contiguous(array):
    """A C-contiguous array of the same shape (np.ascontiguousarray turns a scalar into [1])."""
    return np.require(array, requirements="C")


class Bf16:
    """A bfloat16 tensor: its uint16 bit patterns and the float32 values they stand for."""

    def __init__(self, values_f32):
        values_f32 = contiguous(np.asarray(values_f32, dtype=np.float32))
        bits = values_f32.view(np.uint32).astype(np.uint64)
        # Round to nearest even on the upper 16 bits (no NaN/inf in the fixture).
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        self.bits = rounded.astype(np.uint16)
        self.values = (self.bits.astype(np.uint32) << 16).view(np.float32)
        self.shape = values_f32.shape


def config_json():
    text_config = {
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "vocab_size": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-06,
        "query_pre_attn_scalar": 16,
        "sliding_window": 512,
        "sliding_window_pattern": 2,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
        "hidden_activation": "gelu_pytorch_tanh",
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
        "use_bidirectional_attention": False,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
    }
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "boi_token_index": 30,
        "eoi_token_index": 31,
        "image_token_index": 29,
        "mm_tokens_per_image": 4,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0",
        "text_config": text_config,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "image_size": 32,
            "patch_size": 16,
            "num_hidden_layers": 1,
        },
    }


def make_tensors():
    """Two shards of tensors, one of every dtype the reader handles, with fixed values."""
    rng = np.random.default_rng(20250101)
    prefix = "language_model.model."

    shard_1 = {
        # Gemma keeps embeddings in bf16; [vocab, hidden]
        prefix + "embed_tokens.weight": Bf16(rng.standard_normal((32, 64)) * 0.5),
        prefix + "layers.0.input_layernorm.weight": rng.standard_normal(64).astype(np.float32),
        prefix + "layers.0.self_attn.q_proj.weight":
            (rng.standard_normal((64, 64)) * 0.1).astype(np.float16),
        prefix + "layers.0.self_attn.k_proj.weight": Bf16(rng.standard_normal((16, 64)) * 0.1),
        # an int8 weight with per-row scales, as a W8 checkpoint would store it
        prefix + "layers.0.mlp.gate_proj.weight":
            rng.integers(-128, 128, size=(32, 64), dtype=np.int8),
        prefix + "layers.0.mlp.gate_proj.weight_scale":
            (rng.random(32) * 0.01 + 0.001).astype(np.float32),
        # a scalar: shape []
        prefix + "logit_scale": np.array(0.125, dtype=np.float32),
    }
    shard_2 = {
        prefix + "layers.1.input_layernorm.weight": rng.standard_normal(64).astype(np.float32),
        # packed 4-bit pairs, as bytes
        prefix + "layers.1.mlp.down_proj.qweight":
            rng.integers(0, 256, size=(16, 32), dtype=np.uint8),
        prefix + "layers.1.mlp.down_proj.scales":
            (rng.random((16, 2)) * 0.1).astype(np.float16),
        prefix + "position_ids": np.arange(16, dtype=np.int32).reshape(2, 8) - 3,
        # values past 2^32 and 2^53 check that all 64 bits are read
        prefix + "token_table": np.array(
            [0, -1, 2**40 + 7, -(2**53) - 12345, 2**62 + 1], dtype=np.int64),
        prefix + "rope_freqs": (1.0 / (10000.0 ** (np.arange(8) / 8.0))).astype(np.float64),
        prefix + "layer_offsets": np.array([[-32768, -1, 0], [1, 255, 32767]], dtype=np.int16),
        prefix + "sliding_mask": np.array([True, False, True, True, False, False], dtype=np.bool_),
        # zero elements: data_offsets [x, x]
        prefix + "empty": np.zeros((0, 4), dtype=np.float32),
    }
    return {SHARD_1: shard_1, SHARD_2: shard_2}


NUMPY_TO_SAFETENSORS = {
    "float32": "F32", "float16": "F16", "float64": "F64", "int8": "I8", "uint8": "U8",
    "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL",
}


def write_shard(tensors, path, metadata):
    """Serialises through the safetensors package: numpy arrays and BF16 bit patterns alike."""
    keep_alive = []
    has_spec = hasattr(safetensors, "TensorSpec")
    flat = {}
    for name, tensor in tensors.items():
        if isinstance(tensor, Bf16):
            data = contiguous(tensor.bits)
            dtype_new, dtype_old, shape = "bfloat16", "BF16", list(tensor.shape)
        else:
            data = contiguous(tensor)
            dtype_new = data.dtype.name
            dtype_old = NUMPY_TO_SAFETENSORS[data.dtype.name]
            shape = list(data.shape)
        if not data.dtype.isnative and data.dtype.byteorder == ">":
            data = data.byteswap()
        keep_alive.append(data)
        if has_spec:
            flat[name] = safetensors.TensorSpec(
                dtype=dtype_new, shape=shape, data_ptr=data.ctypes.data, data_len=data.nbytes)
        else:  # safetensors < 0.6: {"dtype", "shape", "data": bytes}
            flat[name] = {"dtype": dtype_old, "shape": shape, "data": data.tobytes()}
    safetensors.serialize_file(flat, str(path), metadata=metadata)
    del keep_alive
    os.chmod(path, 0o644)  # safetensors creates files 0600; fixtures are plain repository files


def as_float_list(values):
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def expected_entry(shard, tensor):
    if isinstance(tensor, Bf16):
        dtype, shape, values = "BF16", list(tensor.shape), tensor.values
    else:
        dtype, shape, values = NUMPY_TO_SAFETENSORS[tensor.dtype.name], list(tensor.shape), tensor
    flat = np.asarray(values).reshape(-1)
    entry = {"dtype": dtype, "shape": shape, "shard": shard, "n_elements": int(flat.size)}
    is_integer = dtype in ("I8", "U8", "I16", "I32", "I64", "BOOL")
    # Integers are written as JSON integers (exact, also past 2^53); floats as the float64 of
    # the stored value, which is exact for F16/BF16/F32/F64.
    to_list = (lambda a: [int(v) for v in a]) if is_integer else as_float_list
    if flat.size <= FULL_VALUES_LIMIT:
        entry["values"] = to_list(flat)
    else:
        count = flat.size
        indices = sorted({0, 1, count // 3, count // 2, (7 * count) // 9, count - 2, count - 1})
        entry["spot"] = {str(i): v for i, v in zip(indices, to_list(flat[indices]))}
        as_f64 = flat.astype(np.float64)
        # fsum is exactly rounded, so any summation order in the test lands within 1e-12.
        entry["sum"] = math.fsum(as_f64.tolist())
        entry["sum_abs"] = math.fsum(np.abs(as_f64).tolist())
    return entry


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    with open(out / "config.json", "w") as f:
        json.dump(config_json(), f, indent=2)
        f.write("\n")

    shards = make_tensors()
    weight_map = {}
    expected = {}
    total_size = 0
    for shard, tensors in shards.items():
        write_shard(tensors, out / shard, metadata={"format": "pt"})
        for name, tensor in tensors.items():
            weight_map[name] = shard
            entry = expected_entry(shard, tensor)
            expected[name] = entry
            data = tensor.bits if isinstance(tensor, Bf16) else tensor
            total_size += int(np.asarray(data).nbytes)

    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    with open(out / "model.safetensors.index.json", "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")

    with open(out / "expected.json", "w") as f:
        json.dump({"generator": "scripts/make_safetensors_fixture.py",
                   "safetensors_version": safetensors.__version__,
                   "tensors": expected}, f, indent=1)
        f.write("\n")

    total = sum(os.path.getsize(p) for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({total} bytes, {len(expected)} tensors)")


if __name__ == "__main__":
    main()
