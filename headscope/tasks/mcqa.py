"""Multiple-choice questions for select-and-copy heads (Tulchinskii et al. 2024, "Listening to the Wise Few").

Data: ``data/mcqa.json`` (48 easy 4-option questions written for headscope) or a
user's ``.json`` file (a list of ``{"question", "options", "answer"}`` objects, ``answer`` the
0-based index of the correct option; or ``{"questions": [...]}``).

Prompt (chat template not used)::

    Question: What is the capital of France?
    A. Berlin
    B. Paris
    ...
    Answer:

Key tokens of option ``j`` (``MCQAItem.keys(kind)``):

- ``eol`` (``MCQAItem.eols``): the end-of-line token after the option's text, the key
  Tulchinskii et al. 2024 read: under causal attention it is the first token of the line that
  has seen the whole option text (an OpenReview reviewer's summary of the paper: "the newline
  after the option text"; the follow-up's code ``yhn112/QK-resoning``,
  ``HLE_MCQA_qwen3_14b.ipynb``, ``do_calc_dev``, indexes the last token of each
  ``"X. text\\n"`` line);
- ``letter`` (``MCQAItem.markers``): the token holding the option's letter at the start of its
  line; it has seen none of the option's text (kept for comparison).

Departures from the paper's prompt: no ``Options:`` line before the options; questions are
ours (``data/mcqa.json`` and :mod:`headscope.tasks.mcqa_generated`), not MMLU and the like.

Choices (recorded): built-in questions have their options rotated so the correct letters cycle
A, B, C, D (no letter prior helps); the questions are shuffled (seeded) and split into a
validation part (``n_val``) used to choose heads and a test part used to report accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headscope.datafiles import load_json
from headscope.errors import HeadscopeError
from headscope.tasks.json_files import read_json
from headscope.tasks.mcqa_generated import generated_questions
from headscope.tasks.registry import register_task
from headscope.tasks.safety_requests import pad_id, pad_right

LETTERS = "ABCDEFGH"


def load_questions(path: str | None) -> list[dict[str, Any]]:
    """Questions as dicts with ``question``, ``options`` and ``answer``."""
    if path is None:
        data = load_json("mcqa.json")
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise HeadscopeError(f"MCQA file {p} does not exist: give a .json list of {{question, options, answer}}.")
        data = read_json(p, "MCQA file", 'a .json list of {"question": ..., "options": [...], "answer": 0-based index}')
    rows = data.get("questions", []) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise HeadscopeError("the MCQA file must hold a JSON list of questions (or {\"questions\": [...]}).")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"question", "options", "answer"} <= set(r):
            raise HeadscopeError(f"MCQA row {i} needs question, options and answer.")
        opts, ans = r["options"], r["answer"]
        if (not isinstance(opts, list) or not all(isinstance(o, str) for o in opts) or not isinstance(r["question"], str)
                or isinstance(ans, bool) or not isinstance(ans, int)):
            raise HeadscopeError(f"MCQA row {i}: question must be text, options a list of texts and answer an integer index.")
        if not 2 <= len(opts) <= len(LETTERS) or not 0 <= ans < len(opts):
            raise HeadscopeError(f"MCQA row {i}: 2-8 options and a 0-based answer index are required.")
    if not rows:
        raise HeadscopeError("the MCQA file has no questions.")
    return rows


KEY_TOKENS: tuple[str, ...] = ("eol", "letter")


@dataclass
class MCQAItem:
    """One formatted question: token ids, key positions per option and the correct index.

    Attributes:
        markers: per option, the position of the token holding its letter.
        eols: per option, the position of the end-of-line token after its text.
    """

    ids: list[int]
    markers: list[int]
    answer: int
    n_options: int
    eols: list[int] = field(default_factory=list)

    def keys(self, kind: str = "eol") -> list[int]:
        """Key positions of the options: ``eol`` (end-of-line tokens) or ``letter`` (markers)."""
        if kind not in KEY_TOKENS:
            raise HeadscopeError(f"key must be one of {', '.join(KEY_TOKENS)}; got '{kind}'.")
        return self.eols if kind == "eol" else self.markers


CHAT_INSTRUCTION = "Answer with the letter of the correct option."


@register_task("mcqa", summary="multiple-choice questions (A/B/C/D) for select-and-copy heads", default_analyzer="select_and_copy")
@dataclass
class MCQATask:
    """Multiple-choice questions.

    Args:
        path: a user's .json file (default: the built-in questions).
        n_val: questions in the validation split (the rest are the test split).
        seed: shuffle seed.
        balance: rotate options so correct letters cycle A, B, C, D (built-in default).
        chat: wrap the question in the model's chat template as a user turn (plus the line
            "Answer with the letter of the correct option.") and start the assistant turn with
            "Answer:"; ignored for tokenizers without a chat template. Off by default (the
            plain completion format); instruction-tuned models usually need it.
        generated: add this many generated questions (:mod:`headscope.tasks.mcqa_generated`:
            capitals, addition, weekdays, months; seeded by ``seed``) to the file's questions.
    """

    path: str | None = None
    n_val: int = 16
    seed: int = 0
    balance: bool = True
    chat: bool = False
    generated: int = 0
    name: str = field(default="mcqa", init=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters."""
        return {"name": self.name, "path": self.path, "n_val": self.n_val, "seed": self.seed, "balance": self.balance,
                "chat": self.chat, "generated": self.generated}

    def uses_chat(self, model: Any) -> bool:
        """Whether questions are chat-formatted for this model."""
        return bool(self.chat and model.has_chat_template)

    def questions(self) -> list[dict[str, Any]]:
        """Questions after balancing and the seeded shuffle."""
        rows = load_questions(self.path)
        out = []
        for i, r in enumerate(rows):
            opts, a = list(r["options"]), int(r["answer"])
            if self.balance:
                shift = (i % len(opts)) - a
                opts = [opts[(j - shift) % len(opts)] for j in range(len(opts))]
                a = i % len(opts)
            out.append({"question": r["question"], "options": opts, "answer": a})
        if self.generated < 0:
            raise HeadscopeError("generated must be >= 0 (e.g. -o generated=200).")
        out += generated_questions(self.generated, self.seed)
        order = torch.randperm(len(out), generator=torch.Generator().manual_seed(self.seed)).tolist()
        return [out[i] for i in order]

    def item(self, model: Any, q: dict[str, Any]) -> MCQAItem:
        """Format and tokenize one question, locating each option's letter and end-of-line
        tokens by character offsets."""
        text = f"Question: {q['question']}\n"
        letter_at, eol_at = [], []
        for j, opt in enumerate(q["options"]):
            letter_at.append(len(text))
            text += f"{LETTERS[j]}. {opt}\n"
            eol_at.append(len(text) - 1)
        bos = [model.bos_token_id] if model.prepend_bos and model.bos_token_id is not None else []
        if self.uses_chat(model):
            user = text + CHAT_INSTRUCTION
            prefix = model.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                         add_generation_prompt=True)
            shift = prefix.find(user)
            if shift < 0:
                raise HeadscopeError("the chat template rewrites the question text; run the mcqa task with chat=false.")
            letter_at = [c + shift for c in letter_at]
            eol_at = [c + shift for c in eol_at]
            text, bos = prefix + "Answer:", []  # the template carries its own special tokens
        else:
            text += "Answer:"
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])

        def token_at(c: int, what: str) -> int:
            hit = [t for t, (s, e) in enumerate(offsets) if s <= c < e]
            if not hit:
                raise HeadscopeError(f"cannot locate the option {what} in the tokenization of {q['question']!r}.")
            return hit[0] + len(bos)

        markers = [token_at(c, "letter") for c in letter_at]
        eols = [token_at(c, "end-of-line token") for c in eol_at]
        model.check_length(len(ids) + len(bos))
        return MCQAItem(bos + ids, markers, int(q["answer"]), len(q["options"]), eols)

    def split(self, model: Any) -> tuple[list[MCQAItem], list[MCQAItem]]:
        """(validation items, test items)."""
        questions = self.questions()
        if not 0 < self.n_val < len(questions):  # checked before tokenizing: a usage error comes first
            raise HeadscopeError(f"n_val must be between 1 and {len(questions) - 1}.")
        items = [self.item(model, q) for q in questions]
        return items[: self.n_val], items[self.n_val :]

    @staticmethod
    def item_batch(model: Any, items: list[MCQAItem]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(tokens, last)`` of items."""
        return pad_right([it.ids for it in items], pad_id(model.tokenizer))
