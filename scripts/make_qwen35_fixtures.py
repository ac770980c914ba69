#!/usr/bin/env python3
"""Makes tests/fixtures/qwen35_tiny/: a TINY random-weight Qwen3.5-MoE model and transformers'
fp32 logits for it, the reference tests/unit/qwen35_reference_test.cpp holds our CPU engine against.
With --variant, a variant of it in its own folder (see "Variants" below).

The model is transformers' own Qwen3_5MoeForConditionalGeneration (modeling_qwen3_5_moe.py), so
the checkpoint has the real layout: `model.language_model.*` text weights, a (tiny) vision tower
`model.visual.*`, fused expert tensors, plus a multi-token-prediction block `mtp.*` added by hand
with the real checkpoint's names (transformers ignores it; llama.cpp's converter turns it into
blk.<n_layers>). Both loaders must skip the vision tower and MTP weights.

  text: hidden 64, 4 layers L F L F (full_attention_interval 2), 4 query heads / 2 KV heads of
        head_dim 32 with partial RoPE (rotary 16), Gated DeltaNet with 2 key heads (dk 16) and
        4 value heads (dv 24: the GGUF value-head reorder matters, dk != dv catches transposes),
        8 experts top-2 (ffn 32) + a shared expert (ffn 48), vocab 320.
  tokenizer: a byte-level BPE trained here on a few sentences (Qwen3.5's pre-tokenizer regex,
        NFC, 256 byte tokens + merges, <|endoftext|> <|im_start|> <|im_end|>).

Weights are redrawn after transformers' init with larger scales (norm weights != 0, decays
spread over (0, 1), routers decisive) so that every op changes the logits measurably.

Files written (about 1 MB; sizes printed at the end):
  config.json, model.safetensors, tokenizer.json, tokenizer_config.json   the HF folder
  qwen35_tiny-f32.gguf           llama.cpp's convert_hf_to_gguf.py --outtype f32 of the folder
  reference.json                 prompts (token ids), greedy continuations, shapes
  logits_<i>.f32                 [len(prompt) + 32, vocab] little-endian fp32: row t < len is
                                 the prefill logits at position t; row len + s is decode step s
                                 (after feeding greedy[s]); greedy[s + 1] = argmax(row len + s)

The converter: llama.cpp's own convert_hf_to_gguf.py from the llama-cpp-python sdist, used as a
tool (not copied here), with its bundled gguf-py:
    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d /tmp/dl
    tar xzf /tmp/dl/llama_cpp_python-0.3.36.tar.gz -C /tmp
    python3 scripts/make_qwen35_fixtures.py /tmp/llama_cpp_python-0.3.36/vendor/llama.cpp
Its pre-tokenizer detection hashes the tokenizer's output on a fixed text and knows only real
models' hashes, so for this tiny tokenizer it is told the answer: "qwen35" (what it writes for
the real Qwen3.5 tokenizer, whose regex ours copies). Nothing else is patched.

Variants (--variant NAME; HF folder only, no GGUF, so no llama.cpp argument; same seed 1234):
  shared32   tests/fixtures/qwen35_tiny_shared32/: the shared expert as wide as a routed expert
             (shared_expert_intermediate_size = moe_intermediate_size = 32, as the real
             Qwen3.5-35B-A3B's 512 = 512), the case where the engine may run the shared expert as
             one more expert in the routed-expert kernels. To stay under 1.5 MB it has 2 layers
             (L F) instead of 4 and 10 decode steps instead of 32; everything else (tokenizer,
             prompts, vision tower, MTP block, weight scales) is as above. Made with:
    python3 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install torch transformers==5.23.0 safetensors numpy tokenizers
    /tmp/fixture-venv/bin/python scripts/make_qwen35_fixtures.py --variant shared32

Needs: torch, transformers (5.x), tokenizers, safetensors, numpy. CPU, ~20 s.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 1234
VOCAB = 320
# name -> what differs from the default fixture. "gguf": also convert with llama.cpp's converter.
VARIANTS = {
    None: dict(folder="qwen35_tiny", gguf=True, num_hidden_layers=4, decode_steps=32,
               shared_expert_intermediate_size=48),
    "shared32": dict(folder="qwen35_tiny_shared32", gguf=False, num_hidden_layers=2, decode_steps=10,
                     shared_expert_intermediate_size=32),
}
QWEN35_PRE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Kestrel runs Qwen3.5 on the CPU, exact against transformers.",
    "Gated DeltaNet layers carry a recurrent state; attention layers keep a KV cache.",
    "def forward(x):\n    return x + 1\n",
    "Numbers: 1, 22, 333, 4444. Hello, world! Hello again, world.",
]


def make_tokenizer(out):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN35_PRE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
                   "pad_token": "<|endoftext|>", "model_max_length": 512,
                   "tokenizer_class": "Qwen2Tokenizer"}, f)
    assert tok.get_vocab_size() <= VOCAB
    return tok


def make_config(variant):
    from transformers import Qwen3_5MoeConfig
    n_layers = variant["num_hidden_layers"]
    text = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                 "mrope_section": [3, 3, 2], "mrope_interleaved": True},
                linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=24,
                linear_num_key_heads=2, linear_num_value_heads=4, moe_intermediate_size=32,
                shared_expert_intermediate_size=variant["shared_expert_intermediate_size"], num_experts=8,
                num_experts_per_tok=2, layer_types=["linear_attention", "full_attention"] * (n_layers // 2),
                full_attention_interval=2,
                mtp_num_hidden_layers=1, tie_word_embeddings=False, eos_token_id=VOCAB - 1)
    vision = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=4,
                  spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16)
    config = Qwen3_5MoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    config.architectures = ["Qwen3_5MoeForConditionalGeneration"]
    return config


@torch.no_grad()
def randomize(model):
    g = torch.Generator().manual_seed(SEED)
    for name, p in model.named_parameters():
        if name.endswith("linear_attn.norm.weight"):      # plain w (RMSNormGated)
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif name.endswith("norm.weight"):                # (1 + w) norms
            p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.6)
        elif name.endswith("A_log"):                      # decays exp(-A softplus(.)) spread over (0, 1)
            p.copy_(torch.log(torch.rand(p.shape, generator=g) * 2.0 + 0.1))
        elif name.endswith("dt_bias"):
            p.copy_(torch.rand(p.shape, generator=g) * 2.0 - 1.0)
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif name.endswith("mlp.gate.weight"):            # router: decisive top-k
            p.copy_(torch.randn(p.shape, generator=g) * 3.0 / p.shape[-1] ** 0.5)
        elif p.dim() >= 2:
            fan_in = p.shape[-1] if p.dim() != 3 or "conv" not in name else p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def add_mtp_block(config, out):
    """The real checkpoints' MTP head (mtp.fc, mtp.pre_fc_norm_*, mtp.norm, mtp.layers.0.* = one
    full-attention MoE layer); values copied from text layer 1 so the converter can map them."""
    path = os.path.join(out, "model.safetensors")
    tensors = load_file(path)
    d = config.text_config.hidden_size
    g = torch.Generator().manual_seed(SEED + 1)
    prefix = "model.language_model.layers.1."
    for name in list(tensors):
        if name.startswith(prefix):
            tensors["mtp.layers.0." + name[len(prefix):]] = tensors[name].clone()
    tensors["mtp.fc.weight"] = torch.randn(d, 2 * d, generator=g)
    for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        tensors[f"mtp.{n}.weight"] = torch.zeros(d)
    save_file(tensors, path, metadata={"format": "pt"})


@torch.no_grad()
def reference(model, prompt, decode_steps):
    from transformers import DynamicCache
    lm = model
    cache = DynamicCache(config=model.config.text_config)
    out = lm(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    rows = [out.logits[0].float()]
    greedy = [int(out.logits[0, -1].argmax())]
    for _ in range(decode_steps):
        out = lm(input_ids=torch.tensor([[greedy[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        rows.append(out.logits[0].float())
        greedy.append(int(out.logits[0, -1].argmax()))
    return torch.cat(rows).numpy().astype("<f4"), greedy


CONVERT_RUNNER = r"""
import sys
llama_cpp = sys.argv[1]
sys.path.insert(0, llama_cpp + "/gguf-py")
sys.path.insert(0, llama_cpp)
import conversion.base as base
# The tiny tokenizer's pre-tokenizer hash is unknown to the converter: it is Qwen3.5's regex.
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen35"
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", sys.argv[2], "--outtype", "f32", "--outfile", sys.argv[3]]
convert_hf_to_gguf.main()
"""


def main():
    parser = argparse.ArgumentParser(usage="%(prog)s LLAMA_CPP_DIR | --variant NAME")
    parser.add_argument("llama_cpp", nargs="?", help="llama.cpp source tree (its convert_hf_to_gguf.py)")
    parser.add_argument("--variant", choices=[name for name in VARIANTS if name], default=None)
    args = parser.parse_args()
    variant = VARIANTS[args.variant]
    if variant["gguf"] and not args.llama_cpp:
        sys.exit(__doc__)
    out = os.path.join(ROOT, "tests", "fixtures", variant["folder"])
    decode_steps = variant["decode_steps"]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    from transformers import Qwen3_5MoeForConditionalGeneration

    tok = make_tokenizer(out)
    config = make_config(variant)
    model = Qwen3_5MoeForConditionalGeneration(config).float().eval()
    model.config._attn_implementation = "eager"
    randomize(model)
    model.save_pretrained(out, safe_serialization=True)
    add_mtp_block(config, out)
    # Reload what was written, so the reference runs the saved checkpoint (and proves it loads).
    model = Qwen3_5MoeForConditionalGeneration.from_pretrained(out, dtype=torch.float32,
                                                                attn_implementation="eager").eval()

    rng = np.random.default_rng(SEED)
    n_text = tok.get_vocab_size() - 3
    text_ids = tok.encode(CORPUS[1]).ids
    prompts = [
        [int(i) for i in rng.integers(0, VOCAB, 7)],           # ids across the whole vocabulary
        text_ids,                                              # real text
        [int(i) for i in rng.integers(0, n_text, 70)],         # > 64: two chunks of the chunked rule
    ]
    ref = {"vocab": VOCAB, "decode_steps": decode_steps, "prompts": []}
    for i, prompt in enumerate(prompts):
        logits, greedy = reference(model, prompt, decode_steps)
        logits.tofile(os.path.join(out, f"logits_{i}.f32"))
        ref["prompts"].append({"ids": prompt, "greedy": greedy, "rows": int(logits.shape[0]),
                               "logits": f"logits_{i}.f32", "max_abs_logit": float(np.abs(logits).max())})
    ref["tokenizer_check"] = {"text": CORPUS[1], "ids": text_ids}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)

    if variant["gguf"]:
        gguf = os.path.join(out, "qwen35_tiny-f32.gguf")
        subprocess.run([sys.executable, "-c", CONVERT_RUNNER, args.llama_cpp, out, gguf], check=True)
    for name in sorted(os.listdir(out)):
        print(f"{os.path.getsize(os.path.join(out, name)):>10}  {name}")


if __name__ == "__main__":
    main()
