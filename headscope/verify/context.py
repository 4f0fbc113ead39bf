"""What every check shares: the model, its raw copy, the prompts, the sampled heads, cached raw runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from headscope.verify.outcomes import NotChecked, Outcome, ours, reference
from headscope.verify.prompts import Head, Prompts
from headscope.verify.raw_model import RawModel
from headscope.verify.raw_norms import NormSites, find_norms
from headscope.verify.raw_run import RawRun, raw_forward
from headscope.verify.report import relative_tolerance


@dataclass
class Measured:
    """A check's comparison: largest |headscope - reference|, and max |reference| (the scale the
    relative tolerance applies to). ``exact`` checks (token ids) have tolerance 0."""

    diff: float
    scale: float = 1.0
    exact: bool = False
    note: str = ""


def compare(got: torch.Tensor, want: torch.Tensor, note: str = "") -> Measured:
    """max |got - want| (NaN if either has NaN) and max |want|, in float32 on the CPU."""
    g, w = got.detach().float().cpu(), want.detach().float().cpu()
    if g.shape != w.shape:
        return Measured(float("inf"), note=f"shape {tuple(g.shape)} vs reference {tuple(w.shape)}")
    diff = (g - w).abs()
    worst = float("nan") if torch.isnan(diff).any() else float(diff.max()) if diff.numel() else 0.0
    return Measured(worst, float(w.abs().max()) if w.numel() else 1.0, note=note)


def worst(*parts: Measured) -> Measured:
    """The combination of several comparisons held to one tolerance (NaN wins)."""
    diffs = [p.diff for p in parts]
    diff = float("nan") if any(d != d for d in diffs) else max(diffs)
    return Measured(diff, max(p.scale for p in parts), note="; ".join(p.note for p in parts if p.note))


@dataclass
class VerifyContext:
    """Shared state of one ``verify`` run.

    Attributes:
        model: the headscope :class:`~headscope.models.Model`.
        raw: the independent raw copy.
        prompts: clean/corrupted prompts and END positions.
        heads: the sampled heads; ``layers`` their layers.
    """

    model: Any
    raw: RawModel
    prompts: Prompts
    heads: list[Head]
    decode_tokens: int = 4
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.heads})

    def heads_in(self, layer: int) -> list[int]:
        return [h for lay, h in self.heads if lay == layer]

    @property
    def rtol(self) -> float:
        return relative_tolerance(self.model.dtype)

    # ------------------------------------------------------------------ cached calls
    def headscope(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``ours(fn, ...)`` computed once per key (a refusal or crash is remembered too)."""
        if key not in self.cache:
            try:
                self.cache[key] = ours(fn, *args, **kwargs)
            except Outcome as exc:
                self.cache[key] = exc
        value = self.cache[key]
        if isinstance(value, Outcome):
            raise value
        return value

    def ref(self, name: str) -> Any:
        """A raw-side attribute of this context (``clean_run``, ``norms``, ...), built through
        :func:`reference` so a failure reads NOT CHECKED."""
        return reference(getattr, self, name)

    def raw_act(self, run: RawRun, act: str, layer: int) -> torch.Tensor:
        """``act`` (q, k, v, z, attn_out, pattern) of ``run`` at ``layer``, or NotChecked."""
        got = getattr(run, act).get(layer)
        if got is None:
            self.raw.need("qkv" if act in ("q", "k", "v") else "out_proj", layer)
            raise NotChecked(f"the raw model gave no {act} at layer {layer}")
        return got

    # ------------------------------------------------------------------ raw runs
    @cached_property
    def norms(self) -> NormSites:
        return find_norms(self.raw, self.prompts.clean[:1])

    def _inputs_of(self) -> dict[str, Any]:
        final = self.norms.final
        return {} if final is None else {"final": final}

    @cached_property
    def clean_run(self) -> RawRun:
        return raw_forward(self.raw, self.prompts.clean, attentions=True, inputs_of=self._inputs_of())

    @cached_property
    def corrupted_run(self) -> RawRun:
        return raw_forward(self.raw, self.prompts.corrupted, inputs_of=self._inputs_of())

    @cached_property
    def answers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer, wrong) per row: the raw clean top token at END, and the corrupted top token
        (the clean runner-up where they coincide)."""
        rows = torch.arange(self.prompts.n)
        clean = self.clean_run.logits[rows, self.prompts.end.to(self.clean_run.logits.device)].cpu()
        corr = self.corrupted_run.logits[rows, self.prompts.end.to(self.clean_run.logits.device)].cpu()
        answer = clean.argmax(-1)
        top2 = clean.topk(2, -1).indices[:, 1]
        wrong = torch.where(corr.argmax(-1) == answer, top2, corr.argmax(-1))
        return answer, wrong

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw metric: logits (n, p, vocab) -> (n,) ``logit[answer] - logit[wrong]`` at END."""
        answer, wrong = self.answers
        rows = torch.arange(self.prompts.n)
        at = logits.float().cpu()[rows, self.prompts.end]
        return at[rows, answer] - at[rows, wrong]

    def batch(self) -> Any:
        """The prompts as headscope's :class:`~headscope.tasks.contrastive.ContrastiveBatch`."""
        from headscope.tasks.contrastive import END, ContrastiveBatch

        answer, wrong = self.answers
        return ContrastiveBatch(self.prompts.clean, self.prompts.corrupted, answer, wrong, {END: self.prompts.end})
