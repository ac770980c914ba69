#!/usr/bin/env python3
"""Makes tests/fixtures/dequant/<TYPE>.bin: random GGUF blocks and gguf-py's float32 dequantisation.

tests/unit/dequantize_test.cpp requires Kestrel's dequantize() (src/io/dequantize*.cpp) to
reproduce the expected floats bit for bit. Run from anywhere:

    python3 scripts/make_dequant_fixtures.py [--out DIR]

Needs numpy and the PyPI `gguf` package (gguf-py); the fixtures in the tree were made with
the version recorded in each header. The seed is fixed, so a rerun with the same numpy and
gguf versions rewrites identical files.

File format (all integers little-endian; one file per type, named by its ggml type name):

    offset  size  field
    0       8     magic "KDQFIX01"
    8       4     u32 ggml type id (ggml.h enum ggml_type; Kestrel's DType value)
    12      4     u32 number of blocks
    16      8     u64 n_elements (blocks * block elements)
    24      8     u64 n_raw_bytes (blocks * block bytes)
    32      16    gguf-py version that computed the expected values, ASCII, NUL-padded
    48      n_raw_bytes        raw blocks, exactly as a GGUF file stores them
    48 + n_raw_bytes, 4 * n_elements   expected float32 values (gguf.quants.dequantize)

The raw bytes are uniform random except for the fp16 scale fields (d, dmin, m), which are
overwritten with random finite fp16 values of sane magnitude (both signs, with some zeros
and subnormals), so that NaN and Inf (1 in 32 random fp16 patterns) do not dominate. The
first blocks of every quantised type instead carry extreme scales: +-0, the smallest and
largest subnormals, the smallest normal, +-65504, and one block each with +Inf and a NaN
scale (the test compares NaN with NaN by class, everything else by bits). F16 and BF16
fixtures sweep the 16-bit patterns (every exponent and sign, random mantissas), NaN and Inf
included (and exactly +0 and -0); F32 is random bits.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import struct
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
import gguf.quants

SEED = 20260807
MAGIC = b"KDQFIX01"

# Byte offsets of the fp16 scale fields inside one block (ggml-common.h block_* structs).
SCALE_OFFSETS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,),       # d | qs[16]
    "Q4_1": (0, 2),     # d | m | qs[16]
    "Q5_0": (0,),       # d | qh[4] | qs[16]
    "Q5_1": (0, 2),     # d | m | qh[4] | qs[16]
    "Q8_0": (0,),       # d | qs[32]
    "Q2_K": (80, 82),   # scales[16] | qs[64] | d | dmin
    "Q3_K": (108,),     # hmask[32] | qs[64] | scales[12] | d
    "Q4_K": (0, 2),     # d | dmin | scales[12] | qs[128]
    "Q5_K": (0, 2),     # d | dmin | scales[12] | qh[32] | qs[128]
    "Q6_K": (208,),     # ql[128] | qh[64] | scales[16] | d
    "IQ4_NL": (0,),     # d | qs[16]
    "IQ4_XS": (0,),     # d | scales_h | scales_l[4] | qs[128]
}

# Blocks per quantised type: 32-element types get more blocks than 256-element ones, so each
# fixture holds a few thousand values and all of them together stay near 200 KB.
BLOCKS_SMALL = 64   # 32-element blocks
BLOCKS_LARGE = 16   # 256-element (super-)blocks

# fp16 bit patterns of the extreme scales used by the first blocks of each type.
EXTREME_SCALES = (
    0x0000,  # +0
    0x8000,  # -0
    0x0001,  # smallest subnormal, 2^-24
    0x83FF,  # largest subnormal, negative
    0x0400,  # smallest normal, 2^-14
    0x7BFF,  # 65504
    0xFBFF,  # -65504
    0x7C00,  # +Inf
    0x7E01,  # NaN with a payload
)


def sane_fp16_scales(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random finite fp16 bit patterns: mostly normal values of scale-like magnitude, both signs,
    with about 10% zeros and 10% subnormals."""
    magnitude = (2.0 ** rng.uniform(-14.0, 4.0, size=count)).astype(np.float16).view(np.uint16)
    kind = rng.random(size=count)
    subnormal = rng.integers(1, 0x400, size=count, dtype=np.uint16)
    bits = np.where(kind < 0.1, np.uint16(0), np.where(kind < 0.2, subnormal, magnitude))
    sign = rng.integers(0, 2, size=count, dtype=np.uint16) << np.uint16(15)
    return (bits | sign).astype(np.uint16)


def quantised_blocks(rng: np.random.Generator, name: str) -> np.ndarray:
    qtype = GGMLQuantizationType[name]
    block_elements, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = BLOCKS_SMALL if block_elements == 32 else BLOCKS_LARGE
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    offsets = SCALE_OFFSETS[name]
    for field, offset in enumerate(offsets):
        scales = sane_fp16_scales(rng, n_blocks)
        # Blocks 0..8 carry the extremes; a second scale field (dmin, m) walks the list at a
        # different stride, so the extremes meet each other in different pairs.
        for block in range(len(EXTREME_SCALES)):
            scales[block] = EXTREME_SCALES[(block * (2 * field + 1) + field) % len(EXTREME_SCALES)]
        raw[:, offset:offset + 2] = scales.reshape(n_blocks, 1).view(np.uint8)
    return raw


def sweep_16bit(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` 16-bit patterns spread evenly over all 65536, each with random low bits."""
    stride = 65536 // count
    base = np.arange(0, 65536, stride, dtype=np.uint32)
    low = rng.integers(0, stride, size=count, dtype=np.uint32)
    patterns = (base + low).astype(np.uint16)
    patterns[0], patterns[count // 2] = 0x0000, 0x8000  # +0 and -0 exactly
    return patterns


def make_raw(rng: np.random.Generator, name: str) -> np.ndarray:
    if name == "F32":
        return rng.integers(0, 256, size=1024 * 4, dtype=np.uint8)
    if name in ("F16", "BF16"):
        return sweep_16bit(rng, 2048).view(np.uint8)
    return quantised_blocks(rng, name).reshape(-1)


TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dequant"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    version = importlib.metadata.version("gguf")
    version_field = version.encode("ascii")[:16].ljust(16, b"\0")
    rng = np.random.default_rng(SEED)
    total = 0
    for name in TYPES:
        qtype = GGMLQuantizationType[name]
        block_elements, block_bytes = GGML_QUANT_SIZES[qtype]
        raw = make_raw(rng, name)
        with np.errstate(all="ignore"):  # Inf * 0 and NaN scales are intended
            expected = np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(-1)
        n_blocks = raw.size // block_bytes
        assert n_blocks * block_bytes == raw.size
        assert expected.size == n_blocks * block_elements
        header = MAGIC + struct.pack("<IIQQ", int(qtype), n_blocks, expected.size, raw.size)
        header += version_field
        data = header + raw.tobytes() + expected.astype("<f4").tobytes()
        (args.out / f"{name}.bin").write_bytes(data)
        total += len(data)
        print(f"{name:7s} {n_blocks:5d} blocks {expected.size:6d} values {len(data):7d} bytes")
    print(f"total {total} bytes, gguf {version}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
