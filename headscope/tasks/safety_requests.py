"""Harmful and harmless requests for safety-head analysis (Zhou et al. 2024, "On the Role of
Attention Heads in Large Language Model Safety").

Sources (``source``):

- ``builtin`` (default): ``data/harmful_requests.json`` (64 generic requests in 8 harm
  categories, written for headscope; no operational detail) and ``harmless_requests.json``
  (64 matched benign requests);
- ``advbench`` (walledai/AdvBench), ``jailbreakbench`` (JailbreakBench/JBB-Behaviors) or any
  hub dataset id (``column`` names the text column) via ``datasets`` when online; offline this
  is a one-line error naming the fix;
- a path to the user's own file: ``.txt`` (one request per line), ``.json`` (a list of strings,
  a list of ``{"prompt": ...}`` objects or ``{"requests": [...]}``), ``.jsonl`` or ``.csv``
  (column ``prompt`` or ``column``).

``n_prompts`` requests are drawn (seeded, without replacement). Each request becomes a
one-turn user message formatted with the model's chat template (``add_generation_prompt``)
when the tokenizer has one and ``chat_template`` is true; otherwise the raw text with the
model's default BOS. Batches are right-padded: under causal attention the padding after a
row's last token cannot change that row's real positions, so no attention mask is needed, and
``last`` gives each row's last real position.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headscope.datafiles import load_json
from headscope.errors import HeadscopeError
from headscope.tasks.json_files import read_json, read_jsonl
from headscope.tasks.registry import register_task

HUB_SETS: dict[str, tuple[str, str | None, str, str]] = {
    "advbench": ("walledai/AdvBench", None, "prompt", "train"),
    "jailbreakbench": ("JailbreakBench/JBB-Behaviors", "behaviors", "Goal", "harmful"),
}
TEXT_COLUMNS = ("prompt", "goal", "Goal", "behavior", "Behavior", "instruction", "text", "request")


def builtin_requests(kind: str) -> list[str]:
    """The built-in ``harmful`` or ``harmless`` requests."""
    data = load_json(f"{kind}_requests.json")
    return [r["prompt"] for r in data["requests"]]


def _pick_text(row: Any, column: str | None, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for c in ([column] if column else TEXT_COLUMNS):
            if c in row and isinstance(row[c], str):
                return row[c]
    raise HeadscopeError(f"{where}: no text column {column or TEXT_COLUMNS[0]!r} in a row; pass -o column=NAME.")


def read_requests(path: str | Path, column: str | None = None) -> list[str]:
    """Requests from a user's .txt/.json/.jsonl/.csv file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise HeadscopeError(f"request file {p} does not exist: give a .txt, .json, .jsonl or .csv file.")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        rows: list[Any] = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    elif suffix == ".json":
        data = read_json(p, "request file", 'a list of strings, of {"prompt": ...} objects, or {"requests": [...]}')
        rows = data.get("requests", []) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise HeadscopeError(f"request file {p} must hold a JSON list of requests (or {{\"requests\": [...]}}).")
    elif suffix == ".jsonl":
        rows = read_jsonl(p, "request file")
    elif suffix == ".csv":
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise HeadscopeError(f"request file {p} must end in .txt, .json, .jsonl or .csv.")
    out = [_pick_text(r, column, str(p)) for r in rows]
    if not out:
        raise HeadscopeError(f"request file {p} has no requests.")
    return out


def hub_requests(name: str, column: str | None = None) -> list[str]:
    """Requests from a public hub dataset (needs network unless cached)."""
    repo, config, col, split = HUB_SETS.get(name.lower(), (name, None, column or "prompt", "train"))
    try:
        from datasets import load_dataset

        ds = load_dataset(repo, config, split=split)
    except Exception as exc:  # noqa: BLE001 - offline and missing-dataset errors vary
        raise HeadscopeError(
            f"cannot load '{repo}' from the hub ({type(exc).__name__}; offline?). Connect and unset "
            "HF_HUB_OFFLINE, or use -o source=builtin or -o source=path/to/requests.json."
        ) from None
    col = column or col
    if col not in ds.column_names:
        raise HeadscopeError(f"dataset '{repo}' has no column '{col}' (has {', '.join(ds.column_names)}): pass -o column=NAME.")
    return [str(x) for x in ds[col]]


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``(tokens (n, max_len), last (n,) index of each row's last token)``."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return tokens, torch.tensor([len(r) - 1 for r in rows])


def pad_id(tokenizer: Any) -> int:
    """A padding id (pad, else eos, else 0); padding sits after each row's end, so it is never read."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@register_task(
    "safety",
    summary="harmful vs harmless requests (chat-formatted) for safety heads: Ships, Sahara",
    default_analyzer="ships",
)
@dataclass
class SafetyRequests:
    """Harmful (and harmless) requests.

    Args:
        source: ``builtin``, ``advbench``, ``jailbreakbench``, a hub dataset id, or a file path.
        harmless: source of the harmless set (``builtin`` or a file path).
        n_prompts: requests drawn from each set (seeded).
        column: text column for hub datasets and csv/json files.
        chat_template: format with the model's chat template when it has one.
        seed: seed of the draw.
    """

    source: str = "builtin"
    harmless: str = "builtin"
    n_prompts: int = 16
    column: str | None = None
    chat_template: bool = True
    seed: int = 0
    name: str = field(default="safety", init=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters."""
        return {"name": self.name, "source": self.source, "harmless": self.harmless, "n_prompts": self.n_prompts,
                "column": self.column, "chat_template": self.chat_template, "seed": self.seed}

    def _load(self, source: str, kind: str) -> list[str]:
        if source == "builtin":
            return builtin_requests(kind)
        if Path(source).expanduser().suffix.lower() in (".txt", ".json", ".jsonl", ".csv"):
            return read_requests(source, self.column)
        if source.lower() in HUB_SETS or "/" in source:
            return hub_requests(source, self.column)
        raise HeadscopeError(f"unknown request source '{source}': use builtin, advbench, jailbreakbench, a hub id or a file.")

    def requests(self, kind: str = "harmful") -> list[str]:
        """The drawn raw requests of ``kind`` (``harmful`` or ``harmless``)."""
        if kind not in ("harmful", "harmless"):
            raise HeadscopeError(f"kind must be harmful or harmless, not '{kind}'.")
        texts = self._load(self.source if kind == "harmful" else self.harmless, kind)
        if self.n_prompts < 1:
            raise HeadscopeError("n_prompts must be at least 1.")
        if len(texts) <= self.n_prompts:
            return texts
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(self.seed))[: self.n_prompts]
        return [texts[i] for i in sorted(order.tolist())]

    def uses_chat(self, model: Any) -> bool:
        """Whether prompts are chat-formatted for this model."""
        return bool(self.chat_template and model.has_chat_template)

    def format(self, model: Any, texts: list[str]) -> list[str]:
        """Chat-formatted prompts (or the raw texts)."""
        if not self.uses_chat(model):
            return list(texts)
        return [
            model.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts
        ]

    def token_rows(self, model: Any, kind: str = "harmful") -> list[list[int]]:
        """Token ids of each formatted prompt (chat: the template's own special tokens only)."""
        prompts = self.format(model, self.requests(kind))
        if self.uses_chat(model):
            rows = [model.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        else:
            rows = [model.to_tokens(p)[0].tolist() for p in prompts]
        for r in rows:
            model.check_length(len(r))
        return rows

    def padded(self, model: Any, kind: str = "harmful") -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(tokens (n, pos), last (n,))`` of the formatted prompts."""
        return pad_right(self.token_rows(model, kind), pad_id(model.tokenizer))
