"""One facts object per model: the architecture facts every exact decomposition depends on.

:func:`arch_facts` reads, once per loaded model, what the engine, the tracer, DLA, the lenses,
OV circuits and the circuit graph need to know (norm form and placement, QK-norm, parallel
residual, fused projections, positions, sliding / global layers, soft-capping) from the Hugging
Face config and the bridge's modules, never from the model's name. It then checks them against
the model's family file (:mod:`headscope.models.families`, found by ``config.model_type``): a
checkpoint whose structure contradicts its family is refused with one line. A model_type with
no family file is read the same way but marked ``verified=False`` (its numbers are not covered
by the conformance zoo, ``docs/support.md``) and warned about once.

Consumers read the facts (``model.facts`` or :func:`arch_facts`), not the config.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from headscope.errors import HeadscopeWarning
from headscope.models.config import UnsupportedArchitectureError, architecture, hf_config
from headscope.models.families import Family, family_for
from headscope.models.norms import BLOCK_NORMS, final_norm, norm_spec

__all__ = ["ArchFacts", "UnverifiedArchitectureWarning", "arch_facts", "check_family", "detect_facts"]


class UnverifiedArchitectureWarning(HeadscopeWarning):
    """The model's family has no family file, so its facts are unchecked (see :func:`arch_facts`)."""


@dataclass(frozen=True)
class ArchFacts:
    """Architecture facts of one loaded model.

    Attributes:
        architecture: the HF model class, e.g. ``Gemma2ForCausalLM``.
        model_type: the HF ``config.model_type`` (text config for multimodal wrappers).
        family: the family file that covers it (``headscope/models/families/<family>.py``), or
            None.
        verified: the family is in the conformance zoo (it has a family file).
        norm: the final norm's form: ``LayerNorm``, ``RMSNorm`` or ``RMSNorm, 1 + weight``.
        block_norms: the norms of every block, in ``ln1, ln1_post, ln2, ln2_post`` order.
        qk_norm: None, ``"per_head"`` or ``"all_heads"`` (a norm on queries and keys after
            ``hook_q``/``hook_k``).
        qk_norm_after_rope: the bridge applies QK-norm after the rotary embedding.
        parallel_residual: attention and MLP of a block read the same residual.
        fused_qkv: q, k and v come from one projection.
        positions: ``"learned"``, ``"rotary"`` or the bridge's other
            ``positional_embedding_type``.
        layer_types: per layer, ``"full_attention"`` or ``"sliding_attention"``.
        sliding_window: the window of sliding layers, or None.
        final_logit_softcap: ``c`` in ``logits = c * tanh(raw / c)``, or None.
        attention_softcap: the same on attention logits, or None.
    """

    architecture: str
    model_type: str
    family: str | None
    verified: bool
    norm: str
    block_norms: tuple[str, ...]
    qk_norm: str | None
    qk_norm_after_rope: bool
    parallel_residual: bool
    fused_qkv: bool
    positions: str
    layer_types: tuple[str, ...]
    sliding_window: int | None
    final_logit_softcap: float | None
    attention_softcap: float | None

    @property
    def attention_layers(self) -> str:
        """``"global"``, ``"sliding"`` (every layer) or ``"mixed"``."""
        kinds = set(self.layer_types)
        if kinds <= {"full_attention"}:
            return "global"
        return "sliding" if kinds == {"sliding_attention"} else "mixed"

    @property
    def softcapping(self) -> bool:
        """Some logits are soft-capped (attention or final)."""
        return self.final_logit_softcap is not None or self.attention_softcap is not None

    @property
    def post_attention_norm(self) -> bool:
        """A norm acts on the attention output before the residual add (``ln1_post``)."""
        return "ln1_post" in self.block_norms


def _norm_form(model: Any) -> str:
    spec = final_norm(model)
    if spec.centred:
        return "LayerNorm"
    return "RMSNorm, 1 + weight" if "1 + weight" in spec.form else "RMSNorm"


def _block_norms(model: Any) -> tuple[str, ...]:
    children = dict(model.bridge.blocks[0].named_children())
    return tuple(name for name in BLOCK_NORMS if name in children)


def _qk_norm(model: Any) -> tuple[str | None, bool]:
    attn = model.bridge.blocks[0].attn
    module = getattr(attn, "submodules", {}).get("q_norm")
    if module is None:
        return None, False
    width = int(norm_spec(model, module, "block 0's q_norm").weight.numel())
    after_rope = bool(getattr(getattr(attn, "config", None), "qk_norm_after_rope", False))
    return ("per_head" if width == int(model.d_head) else "all_heads"), after_rope


def _parallel_residual(model: Any) -> bool:
    cfg = hf_config(model)
    return bool(getattr(cfg, "use_parallel_residual", False) or getattr(cfg, "parallel_attn", False)
                or getattr(model.bridge.cfg, "parallel_attn_mlp", False))


def _positions(model: Any) -> str:
    kind = str(getattr(model.bridge.cfg, "positional_embedding_type", "standard"))
    return {"standard": "learned"}.get(kind, kind)


def _layer_types(model: Any) -> tuple[tuple[str, ...], int | None]:
    cfg = hf_config(model)
    n = int(model.n_layers)
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        types = tuple(str(t) for t in types)[:n]
    elif window and getattr(cfg, "use_sliding_window", True) is not False:
        types = ("sliding_attention",) * n
    else:
        types = ("full_attention",) * n
    return types, (int(window) if window and "sliding_attention" in types else None)


def _cap(model: Any, key: str) -> float | None:
    cap = getattr(hf_config(model), key, None)
    return float(cap) if cap else None


def detect_facts(model: Any) -> ArchFacts:
    """Read every fact from ``model``'s config and bridge modules (no family check)."""
    model_type = str(getattr(hf_config(model), "model_type", "") or "")
    family = family_for(model_type)
    qk_norm, after_rope = _qk_norm(model)
    layer_types, window = _layer_types(model)
    return ArchFacts(
        architecture=architecture(model), model_type=model_type,
        family=family.name if family else None, verified=family is not None,
        norm=_norm_form(model), block_norms=_block_norms(model), qk_norm=qk_norm,
        qk_norm_after_rope=after_rope, parallel_residual=_parallel_residual(model),
        fused_qkv="qkv" in getattr(model.bridge.blocks[0].attn, "submodules", {}),
        positions=_positions(model), layer_types=layer_types, sliding_window=window,
        final_logit_softcap=_cap(model, "final_logit_softcapping"),
        attention_softcap=_cap(model, "attn_logit_softcapping"),
    )


def check_family(facts: ArchFacts, family: Family) -> None:
    """Refuse (one line) where ``facts`` contradict what ``family``'s file declares."""
    for name, want in family.declared().items():
        got = getattr(facts, name)
        if got != want:
            raise UnsupportedArchitectureError(
                f"{facts.architecture}: {name} is {got!r}, but headscope's {family.name} family "
                f"(headscope/models/families/{family.name}.py) declares {want!r}, so its numbers "
                "are not verified for this variant."
            )


def arch_facts(model: Any) -> ArchFacts:
    """The :class:`ArchFacts` of ``model``, read and checked once, then cached on it.

    Raises:
        UnsupportedArchitectureError: the model contradicts its family file.
    """
    store = model.__dict__.setdefault("_arch_cache", {})
    if "facts" not in store:
        facts = detect_facts(model)
        family = family_for(facts.model_type)
        if family is None:
            warnings.warn(
                f"{facts.architecture} (model_type {facts.model_type!r}) has no headscope family file: its "
                "architecture facts are read from the config but not checked by the conformance zoo "
                "(docs/support.md).", UnverifiedArchitectureWarning, stacklevel=2,
            )
        else:
            check_family(facts, family)
        store["facts"] = facts
    return store["facts"]
