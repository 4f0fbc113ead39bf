"""The IOI tokenization error (issue 23 #5): the real template id, the real cause, a fix that works."""

from __future__ import annotations

import re

import pytest
from cli_harness import run_main

from headscope.errors import HeadscopeError
from headscope.tasks.ioi import IOITask


class _Tok:
    """Word-level: one id per space-separated word, except that "After NAME" is one token."""

    unk_token_id = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        words = re.findall(r" ?\S+", text)
        merged: list[str] = []
        for w in words:
            if merged and merged[-1] == "After":
                merged[-1] += w
            else:
                merged.append(w)
        return [self.vocab.setdefault(w, len(self.vocab)) for w in merged]

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids)


class _Model:
    spec = "fake"
    prepend_bos = False
    bos_token_id = None

    def __init__(self) -> None:
        self.tokenizer = _Tok()

    def single_token(self, text: str) -> int:
        (tid,) = self.tokenizer.encode(text)
        return tid


def test_template_specific_failure_names_the_template_id_and_other_templates() -> None:
    with pytest.raises(HeadscopeError) as err:
        IOITask(n_prompts=4, templates=[1, 0]).batch(_Model())
    msg = str(err.value)
    assert msg.startswith("IOI template 0 cannot be used with fake: the name ")
    assert "should be" in msg and "separate token" in msg
    assert "-o templates=[1,2,3,4,5]" in msg and "\n" not in msg


def test_zoo_llama_names_are_unknown_tokens(capsys) -> None:
    code, _, err = run_main(["score", "-m", "zoo-llama", "-t", "ioi", "-o", "n_prompts=2", "-o", "templates=[3,1]"],
                            capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: IOI template 3 cannot be used with zoo-llama")
    assert "unknown token '<unk>'" in lines[0] and "templates=[" not in lines[0]
