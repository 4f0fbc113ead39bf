"""The :class:`Model` wrapper: a TransformerBridge plus what analyzers and provenance need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headscope.errors import HeadscopeError
from headscope.models.facts import ArchFacts, arch_facts

Head = tuple[int, int]


@dataclass
class Model:
    """A loaded model, ready for tracing.

    Attributes:
        bridge: the TransformerLens ``TransformerBridge`` in eval mode (raw HF numerics, eager
            attention so ``hook_pattern`` fires).
        tokenizer: the Hugging Face tokenizer the bridge uses.
        spec: the spec the user asked for (``"smollm2-135m"``, ``"gpt2"``, a path, ...).
        source: ``"toy"``, ``"zoo"``, ``"gguf"``, ``"dir"`` or ``"hub"``.
        weights_hash: sha256 of the weights (GGUF file, safetensors files, or the toy state dict).
        planted: for planted toy models, role -> heads; empty otherwise.
        decode_checks_done: cached decoding steps already checked against a full recompute
            (see :mod:`headscope.trace.decode_check`).
        source_dir: the saved Hugging Face directory the weights were loaded from (directory,
            GGUF-dequantized cache, hub snapshot), so an independent raw copy can be loaded
            (``headscope verify``); None for toy models and models wrapped by hand.
    """

    bridge: Any
    tokenizer: Any
    spec: str
    source: str
    weights_hash: str
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    planted: dict[str, tuple[Head, ...]] = field(default_factory=dict)
    summary: str = ""
    decode_checks_done: int = field(default=0, repr=False)
    source_dir: str | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ shape facts
    @property
    def facts(self) -> ArchFacts:
        """The architecture facts (norms, QK-norm, parallel residual, layer types, soft-caps, ...),
        read once and checked against the family file (:mod:`headscope.models.facts`)."""
        return arch_facts(self)

    @property
    def cfg(self) -> Any:
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def n_kv_heads(self) -> int:
        kv = getattr(self.cfg, "n_key_value_heads", None)
        return int(kv) if kv else self.n_heads

    @property
    def d_head(self) -> int:
        return int(self.cfg.d_head)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self.cfg.d_vocab)

    @property
    def n_ctx(self) -> int:
        return int(self.cfg.n_ctx)

    @property
    def model_id(self) -> str:
        """Stable id for provenance: ``spec@sha256:<first 12 hex digits of the weights hash>``."""
        return f"{self.spec}@sha256:{self.weights_hash[:12]}"

    @property
    def prepend_bos(self) -> bool:
        return bool(getattr(self.cfg, "default_prepend_bos", True))

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template (tasks with a ``chat`` option use it)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    # ------------------------------------------------------------------ GQA
    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The KV head a query head reads (HF ``repeat_kv`` order: ``head // group_size``)."""
        return head // self.group_size

    def kv_head_matrix(self) -> np.ndarray:
        """(n_layers, n_heads) KV head of every query head: the ``kv_head`` column of HeadScores."""
        return np.array([[self.kv_head(h) for h in range(self.n_heads)]] * self.n_layers)

    def kv_groups(self) -> dict[int, list[int]]:
        """KV head -> the query heads that share it."""
        return {
            kv: list(range(kv * self.group_size, (kv + 1) * self.group_size))
            for kv in range(self.n_kv_heads)
        }

    # ------------------------------------------------------------------ validation helpers
    def check_head(self, layer: int, head: int) -> Head:
        """Raise a one-line :class:`HeadscopeError` if ``(layer, head)`` is out of range."""
        if not 0 <= layer < self.n_layers:
            raise HeadscopeError(
                f"layer {layer} is out of range: {self.spec} has layers 0..{self.n_layers - 1}."
            )
        if not 0 <= head < self.n_heads:
            raise HeadscopeError(
                f"head {layer}.{head} is out of range: {self.spec} has heads 0..{self.n_heads - 1} "
                "per layer."
            )
        return (layer, head)

    def parse_heads(self, text: str) -> list[Head]:
        """Parse ``"9.6,10.0"`` into ``[(9, 6), (10, 0)]``, checking ranges."""
        heads: list[Head] = []
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            parts = item.split(".")
            if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
                raise HeadscopeError(
                    f"cannot parse head '{item}': write heads as LAYER.HEAD, e.g. '9.6,10.0'."
                )
            heads.append(self.check_head(int(parts[0]), int(parts[1])))
        if not heads:
            raise HeadscopeError("no heads given: write heads as LAYER.HEAD, e.g. '9.6,10.0'.")
        return heads

    def single_token(self, text: str) -> int:
        """The id of ``text`` if it is exactly one token, else a one-line error naming the fix."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            hint = " (try a leading space)" if not text.startswith(" ") else ""
            raise HeadscopeError(
                f"answer {text!r} is {len(ids)} tokens {pieces} for {self.spec}, not one: "
                f"choose a single-token answer{hint}."
            )
        return int(ids[0])

    def check_length(self, n_positions: int) -> None:
        """Raise if a prompt of ``n_positions`` tokens does not fit in the context."""
        if n_positions > self.n_ctx:
            raise HeadscopeError(
                f"prompt is {n_positions} tokens but {self.spec} has a context of {self.n_ctx}: "
                "shorten the prompt, or lower the task's length (e.g. -o seq_len=N or -o context_lengths=N)."
            )

    # ------------------------------------------------------------------ tokens
    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None) -> torch.Tensor:
        """Tokenize like TransformerLens ``to_tokens`` (BOS prepended by default).

        Returns:
            LongTensor of shape (batch, pos).
        """
        bos = self.prepend_bos if prepend_bos is None else prepend_bos
        tokens = self.bridge.to_tokens(text, prepend_bos=bos)
        self.check_length(int(tokens.shape[-1]))
        return tokens

    def provenance(self) -> dict[str, Any]:
        """What identifies these weights, for a result's provenance."""
        return {
            "spec": self.spec,
            "model_id": self.model_id,
            "source": self.source,
            "weights_sha256": self.weights_hash,
            "architecture": type(self.bridge.original_model).__name__,
            "arch_family": self.facts.family,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def __repr__(self) -> str:
        return (
            f"Model({self.model_id}, {self.n_layers} layers x {self.n_heads} heads, "
            f"{self.n_kv_heads} KV heads, d_head={self.d_head}, {self.device}, "
            f"{str(self.dtype).replace('torch.', '')})"
        )
