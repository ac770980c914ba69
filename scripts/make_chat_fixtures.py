#!/usr/bin/env python3
"""Makes tests/fixtures/chat/expected.json: conversations rendered by Hugging Face's own renderer.

tests/unit/chat_template_test.cpp requires Kestrel's per-family renderers (src/chat/) to
reproduce every "expected" string byte for byte, and to fail on every case that has "error".
Run from anywhere:

    python3 scripts/make_chat_fixtures.py [--out FILE]

Needs `transformers` and `jinja2` (no torch, no tokenizer, no network). Each template is
rendered with transformers.utils.chat_template_utils.render_jinja_template, the function
`apply_chat_template(..., tokenize=False)` calls, so the Jinja environment (trim_blocks,
lstrip_blocks, raise_exception, tojson, sandboxing) is exactly HF's. bos_token is passed as
the tokenizer would pass it ("<bos>" for Gemma; Qwen's template never uses it).

The templates (tests/fixtures/chat/<family>.jinja) are copies of the models' published
chat templates; we did not write them. Where each copy came from (the Hugging Face Hub
itself was not reachable from the machine that made them, so each is a verbatim copy kept
in a public GitHub repository):

  gemma3.jinja  google/gemma-3-*-it tokenizer_config.json "chat_template" (the same template
                ships with 270m/1b/4b/12b/27b -it). Copy taken from pareshppp's smol-course
                fine-tuning script (get_chat_template_gemma3_270m), cross-checked line by
                line against the JSON-escaped copies in transformers'
                tests/models/gemma3/test_processing_gemma3.py (which drops the `is string`
                branch) and other public copies. '\\n' literals are written escaped; this
                renders identically to the JSON-decoded text.
  gemma4.jinja  google/gemma-4-31B-it chat_template.jinja, the revision with
                `preserve_thinking`, OpenAI-style role:"tool" forward scan and
                "continuation" of consecutive assistant turns, as vendored by llama.cpp as
                models/templates/google-gemma-4-31B-it.jinja (copy read from the fork
                DFveloper/aikar-engine @ 83c4c14f834361172fde0d0e3e86f05366bf71e3,
                16508 bytes). Earlier Hub revisions (e.g. llama.cpp fork
                acproject/seq2seq_llama.cpp @ 6626e786) differ only in tool handling and in
                not merging consecutive assistant turns; none of the cases below except
                "consecutive_assistants" can tell them apart.
  qwen35.jinja  Qwen/Qwen3.5-35B-A3B chat_template.jinja, copied from the raw string
                _QWEN35_DEFAULT_CHAT_TEMPLATE ("Official Qwen3.5 chat_template.jinja fallback
                from Qwen/Qwen3.5-35B-A3B") in alibaba rtp-llm
                rtp_llm/frontend/tokenizer_factory/tokenizers/ (Qwen tokenizer module).

A rerun with the same transformers/jinja2 versions rewrites an identical file.
"""

import argparse
import json
import pathlib
import sys

import jinja2
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "chat"

BOS = {"gemma3": "<bos>", "gemma4": "<bos>", "qwen35": ""}


def u(content):
    return {"role": "user", "content": content}


def a(content):
    return {"role": "assistant", "content": content}


def s(content):
    return {"role": "system", "content": content}


# (name, messages, add_generation_prompt, enable_thinking); every conversation runs through
# every family, so each family's handling of the same input is pinned (including errors).
CONVERSATIONS = [
    ("single_user", [u("Hello!")], True, False),
    ("single_user_thinking", [u("Hello!")], True, True),
    ("single_user_no_generation_prompt", [u("Hello!")], False, False),
    ("system_user", [s("You are a helpful assistant."), u("What is 2+2?")], True, False),
    ("system_user_thinking", [s("You are a helpful assistant."), u("What is 2+2?")], True, True),
    ("multi_turn", [s("Be brief."), u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")], True, False),
    ("multi_turn_thinking", [u("Hi"), a("Hello!"), u("Tell me a joke.")], True, True),
    ("multi_turn_ends_with_assistant", [u("Hi"), a("Hello!")], False, False),
    ("multi_turn_ends_with_assistant_thinking", [u("Hi"), a("Hello!")], False, True),
    (
        "unicode_and_newlines",
        [u("Grüße aus Köln 🌍\n\nZeile zwei:\tTab\n  eingerückt\n"), a("Привет! 你好\n\n- a\n- b"), u("日本語で？")],
        True,
        False,
    ),
    (
        "surrounding_whitespace",
        [s("  \n System with spaces \n\n"), u("   padded user   \n"), a("\n\n  padded answer \t"), u("\tnext\n")],
        True,
        False,
    ),
    # Python's str.strip() (Jinja's trim) also removes non-ASCII whitespace.
    ("unicode_whitespace_trim", [u("\u3000\u00a0full-width and nbsp\u2003\u00a0"), a("\u2028ok\u3000")], False, False),
    ("empty_user_content", [u("")], True, False),
    (
        "history_with_qwen_thinking",
        [u("What is 2+2?"), a("<think>\nAdd them.\n</think>\n\n4"), u("And 3+3?")],
        True,
        False,
    ),
    (
        "history_with_qwen_thinking_last_turn",
        [u("What is 2+2?"), a("<think>\nAdd them.\n</think>\n\n4")],
        False,
        True,
    ),
    ("qwen_think_close_only", [u("Q"), a("reasoning without open tag\n</think>\n\nanswer")], False, False),
    (
        "history_with_gemma4_thought_channel",
        [u("What is 2+2?"), a("<|channel>thought\nAdd them.<channel|>4"), u("And 3+3?")],
        True,
        True,
    ),
    (
        "gemma4_channel_in_middle",
        [u("Q"), a("Before <|channel>thought\nhidden<channel|> after <|channel>unterminated")],
        False,
        False,
    ),
    ("system_only", [s("Just a system prompt.")], True, False),
    ("system_only_thinking", [s("Just a system prompt.")], True, True),
    ("consecutive_assistants", [u("Hi"), a("First."), a("Second.")], True, False),
    ("consecutive_users", [u("One"), u("Two")], True, False),
    ("starts_with_assistant", [a("I speak first."), u("Hi")], True, False),
    ("system_in_middle", [u("Hi"), s("Late system."), u("Again")], True, False),
    ("system_after_first_user_even", [u("Hi"), a("Hello"), s("Late system.")], True, False),
    ("empty_conversation", [], True, False),
    ("tool_response_user_only", [u("<tool_response>\nx\n</tool_response>")], True, False),
    (
        "tool_response_user_after_query",
        [u("Query"), a("Calling."), u("<tool_response>\nresult\n</tool_response>")],
        True,
        True,
    ),
]


def render(family, template, messages, add_generation_prompt, enable_thinking):
    text, _ = render_jinja_template(
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        bos_token=BOS[family],
        enable_thinking=enable_thinking,
    )
    return text[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=FIXTURES / "expected.json")
    args = parser.parse_args()

    cases = []
    for family in ("gemma3", "gemma4", "qwen35"):
        template = (FIXTURES / f"{family}.jinja").read_text(encoding="utf-8")
        for name, messages, add_generation_prompt, enable_thinking in CONVERSATIONS:
            case = {
                "family": family,
                "name": name,
                "add_generation_prompt": add_generation_prompt,
                "enable_thinking": enable_thinking,
                "messages": messages,
            }
            try:
                case["expected"] = render(family, template, messages, add_generation_prompt, enable_thinking)
            except Exception as error:  # the template raised (raise_exception or an undefined access)
                case["error"] = f"{type(error).__name__}: {error}"
            cases.append(case)

    document = {
        "generator": "scripts/make_chat_fixtures.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "cases": cases,
    }
    args.out.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
