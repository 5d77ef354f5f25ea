from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from pipeline.cost.tokens import O200K_SHA256, o200k, prompt_text_tokens, text_tokens


def test_text_counts_match_known_o200k_encodings() -> None:
    enc = o200k()
    assert enc.encode("hello world") == [24912, 2375]
    assert enc.encode("Hello, world!") == [13225, 11, 2375, 0]
    assert enc.encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert text_tokens("hello world") == 2


def test_prompt_framing_counted_once_per_message() -> None:
    # user message: 3 framing + "user" (1) + prompt; reply priming 3.
    assert prompt_text_tokens("", "hello world") == 3 + 1 + 2 + 3
    # a system message adds 3 framing + "system" (1) + its text.
    assert prompt_text_tokens("Hello, world!", "hello world") == 9 + 3 + 1 + 4


def test_o200k_is_counted_offline_from_the_copy_shipped_in_the_package(tmp_path: Path) -> None:
    """A fresh process with an empty cache: the shipped file is staged where tiktoken
    looks first (no network here: a download would fail), and counts match."""
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["CAPTION_CACHE_DIR"] = str(tmp_path)
    code = "from pipeline.cost.tokens import text_tokens; print(text_tokens('a red square'))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "3"
    (staged,) = (tmp_path / "tiktoken").iterdir()
    assert hashlib.sha256(staged.read_bytes()).hexdigest() == O200K_SHA256
