#!/usr/bin/env python3
"""Builds tests/fixtures/gemma4_tiny/: a tiny random-weight Gemma 4 text model and what
transformers computes with it (the reference for tests/unit/gemma4_reference_test.cpp).

    hf/        Gemma4ForConditionalGeneration (text only) as transformers saves it: config.json
               with a nested text_config, fp32 safetensors named model.language_model.*,
               tokenizer.json (SentencePiece-style BPE with byte fallback) + tokenizer_config.json
    hf_bf16/   the same weights as Gemma4ForCausalLM in bf16 (names model.*)
    model.gguf hf/ converted by llama.cpp's own convert_hf_to_gguf.py (--outtype f32)
    reference.json, logits.f32   three prompts (token ids) and 32 greedy steps after each

Every weight is rounded to bf16 first, so the fp32 folder, the bf16 folder and the GGUF hold
identical values and one set of reference logits serves all three.

The model has every Gemma 4 feature of the 31B dense model at toy size: sliding layers (head
dim 16, 2 kv heads, window 8) and full layers (head dim 32 = twice, 1 kv head, K = V, no
v_proj, proportional RoPE with partial_rotary_factor 0.25), layer_scalar, final softcap 30.

Usage (needs torch, transformers >= 5.5, tokenizers, safetensors, numpy):
    python3 scripts/make_gemma4_fixtures.py --llama-cpp /path/to/llama.cpp
where /path/to/llama.cpp holds convert_hf_to_gguf.py and gguf-py/ (e.g. vendor/llama.cpp of the
llama-cpp-python 0.3.36 source distribution: `pip download --no-deps --no-binary :all:
llama-cpp-python==0.3.36`).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, trainers
from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gemma4_tiny"
SEED = 20260405
N_DECODE = 32

TEXT = """the quick brown fox jumps over the lazy dog. a tiny model reads the text and writes
the next token; the kestrel flies over the river and the hills. gemma four has sliding and
full attention layers, and the full layers share keys and values. hello world, hello kestrel.
"""


def make_tokenizer(folder: Path) -> int:
    """A SentencePiece-style BPE (Gemma's shape): ' ' -> U+2581, byte fallback, no pre-tokenizer."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=140, special_tokens=[], show_progress=False)
    trainer_tok.train_from_iterator([TEXT.replace("\n", " ")], trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in trained["merges"]]
    merges = [tuple(m.split(" ")) for m in merges]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
    }, indent=2) + "\n")
    return len(vocab)


def text_config(vocab_size: int) -> Gemma4TextConfig:
    return Gemma4TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        sliding_window=8,
        max_position_embeddings=512,
        final_logit_softcapping=30.0,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=vocab_size,
        num_kv_shared_layers=0,
        rms_norm_eps=1e-6,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True,
    )


def randomise(model: torch.nn.Module) -> None:
    """Random weights large enough that every part matters (attention is peaked, the softcap
    bends the logits), rounded to bf16 so every saved format holds the same numbers."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("language_model.norm.weight"):  # large logits, so the softcap bends them
                v = 3.0 + 0.5 * torch.randn(p.shape, generator=g)
            elif p.dim() == 1:  # norm weights: around 1, so a (1 + w) mistake shows
                v = 1.0 + 0.3 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name:  # small: the layers' outputs, not the token itself, dominate
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]) * 2.0
            p.copy_(v.to(torch.bfloat16).float())
        for name, b in sorted(model.named_buffers(), key=lambda kv: kv[0]):
            if name.endswith("layer_scalar"):
                b.copy_((0.5 + torch.rand(b.shape, generator=g)).to(torch.bfloat16).float())


@torch.no_grad()
def logits_of(model, ids: list[int]) -> np.ndarray:
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", required=True, type=Path, help="folder with convert_hf_to_gguf.py and gguf-py/")
    args = parser.parse_args()
    torch.manual_seed(SEED)

    if OUT.exists():
        shutil.rmtree(OUT)
    hf = OUT / "hf"
    hf.mkdir(parents=True)
    vocab_size = make_tokenizer(hf)

    config = Gemma4Config(text_config=text_config(vocab_size).to_dict(), vision_config=None, audio_config=None)
    model = Gemma4ForConditionalGeneration(config).eval()
    model.config._attn_implementation = "eager"
    model.model.language_model.config._attn_implementation = "eager"
    randomise(model)
    model.save_pretrained(hf, safe_serialization=True)

    # The same weights as a text-only bf16 checkpoint (names model.*).
    causal = Gemma4ForCausalLM(text_config(vocab_size)).eval()
    causal.model.load_state_dict(model.model.language_model.state_dict())
    causal.to(torch.bfloat16).save_pretrained(OUT / "hf_bf16", safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf / name, OUT / "hf_bf16" / name)
    for folder in (hf, OUT / "hf_bf16"):
        (folder / "generation_config.json").unlink(missing_ok=True)

    # Prompts (ids chosen directly): short, medium, and longer than the sliding window (8).
    rng = np.random.default_rng(SEED)
    prompts = [
        [2, 270, 281, 266, 300],
        [2] + rng.integers(4, vocab_size, 11).tolist(),
        [2] + rng.integers(4, vocab_size, 39).tolist(),
    ]
    records, blobs = [], []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(N_DECODE):  # greedy, recomputing the whole sequence each step
            ids.append(int(np.argmax(logits_of(model, ids)[-1])))
        logits = logits_of(model, ids[:-1])  # [len(prompt) + N_DECODE - 1, vocab]
        records.append({"prompt": prompt, "greedy": ids[len(prompt):], "rows": int(logits.shape[0]),
                        "max_abs_logit": float(np.abs(logits).max())})
        blobs.append(logits.astype("<f4"))
    np.concatenate(blobs).tofile(OUT / "logits.f32")
    # What HF tokenizers makes of a text (byte fallback included), for our tokenizer.
    sample = "hello kestrel, the quick fox! \u00e9"
    sample_ids = Tokenizer.from_file(str(hf / "tokenizer.json")).encode(sample).ids
    (OUT / "reference.json").write_text(json.dumps({
        "generator": "scripts/make_gemma4_fixtures.py (transformers, fp32, eager attention)",
        "vocab_size": vocab_size, "n_decode": N_DECODE, "prompts": records,
        "tokenizer": {"text": sample, "ids": sample_ids}}, indent=1) + "\n")

    # GGUF with llama.cpp's own converter (run as a tool, from its folder).
    env = dict(os.environ, PYTHONPATH=str(args.llama_cpp / "gguf-py"))
    subprocess.run([sys.executable, str(args.llama_cpp / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f32",
                    "--outfile", str(OUT / "model.gguf")], check=True, env=env)
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
