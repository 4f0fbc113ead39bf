"""Registry of the toy models: name -> :class:`ToySpec` (summary, planted heads, builder).

Each builder returns a fresh ``(model, tokenizer)`` pair (float32, eval mode) in well under a
second, deterministically. Boot one through TransformerLens with::

    hf_model, tok = build_toy("toy-induction")
    bridge = TransformerBridge.boot_transformers("toy-induction", hf_model=hf_model, tokenizer=tok)
    bridge.eval()

``ToySpec.planted`` maps a role (``"induction"``, ``"previous_token"``, ``"copying"``,
``"successor"``) to the ``(layer, head)`` pairs that implement it by construction; every other
head is deliberately unrelated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from headscope.toy import copying, gqa, induction, refusal, successor

__all__ = ["TOY_MODELS", "ToySpec", "build_toy", "toy_names"]


@dataclass(frozen=True)
class ToySpec:
    """A hand-built toy model.

    Attributes:
        name: registry key, e.g. ``"toy-induction"``.
        summary: one line for ``headscope models``.
        planted: role -> ``((layer, head), ...)`` of the heads built to play that role.
        build: returns a fresh ``(hf_model, tokenizer)``.
    """

    name: str
    summary: str
    planted: dict[str, tuple[tuple[int, int], ...]]
    build: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerFast]]


TOY_MODELS: dict[str, ToySpec] = {
    spec.name: spec
    for spec in (
        ToySpec(
            name=induction.NAME,
            summary="hand-set 2-layer GPT-2: previous-token head 0.0 feeds induction head 1.0",
            planted=induction.PLANTED,
            build=induction.build_induction,
        ),
        ToySpec(
            name=copying.NAME,
            summary="hand-set 2-layer GPT-2: copying head 1.1 (OV = identity), permutation head 0.0",
            planted=copying.PLANTED,
            build=copying.build_copying,
        ),
        ToySpec(
            name=successor.NAME,
            summary="hand-set 2-layer GPT-2: successor head 1.0, copying distractor 1.1, MLP0 ~ id",
            planted=successor.PLANTED,
            build=successor.build_successor,
        ),
        ToySpec(
            name=gqa.NAME,
            summary="seeded-random 2-layer Llama with GQA: 4 query heads share 2 KV heads",
            planted=gqa.PLANTED,
            build=gqa.build_gqa,
        ),
        ToySpec(
            name=refusal.NAME,
            summary="hand-set 2-layer GPT-2: refusal head 1.1 attends to a trigger word and writes a 'refuse' logit",
            planted=refusal.PLANTED,
            build=refusal.build_refusal,
        ),
    )
}
"""All toy models, by name."""


def toy_names() -> list[str]:
    """Names of all toy models, in registry order."""
    return list(TOY_MODELS)


def build_toy(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build toy model ``name``: a fresh float32 HF model in eval mode and its tokenizer.

    Raises:
        KeyError: if ``name`` is not a toy model.
    """
    try:
        spec = TOY_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown toy model {name!r}; choose from {toy_names()}") from None
    return spec.build()
