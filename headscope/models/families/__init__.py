"""Architecture families: one file each, holding the facts headscope guarantees for it.

A family file (``gemma2.py``, ...) declares one :class:`Family`: the Hugging Face
``model_type`` values it covers and the architecture facts that hold for
every model of the family (``None`` where the fact depends on the checkpoint's config, e.g.
GPT-NeoX's ``use_parallel_residual`` or Mistral's optional sliding window). They play the role
of TransformerLens's per-architecture adapters (``model_bridge/supported_architectures/``)
for the facts headscope's exact decompositions depend on.

:func:`headscope.models.facts.arch_facts` reads every fact from the loaded model (config and
bridge modules) and checks it against the family's declaration: a model whose structure
contradicts its family file is refused with one line, never analysed under wrong assumptions.
Families are found by walking this package (no hand-kept list); every family here has a
conformance-zoo model (``headscope/toy/zoo.py``, ``zoo-<name>``), which
``tests/test_families.py`` checks both ways.

Adding a family: one file here with ``FAMILY = Family(...)`` and its zoo entry.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

__all__ = ["Family", "families", "family_for"]

NORMS = ("LayerNorm", "RMSNorm", "RMSNorm, 1 + weight")
ATTENTION_LAYERS = ("global", "sliding", "mixed")
QK_NORMS = ("per_head", "all_heads")


@dataclass(frozen=True)
class Family:
    """The facts one architecture family guarantees (``None``: read from the config only).

    Attributes:
        name: the family key, also its zoo model ``zoo-<name>`` and its file name.
        model_types: Hugging Face ``config.model_type`` values of the family.
        norm: the norm form, one of :data:`NORMS` (``"RMSNorm, 1 + weight"``: Gemma's offset
            RMSNorm, ``Gemma2RMSNorm.forward`` multiplies by ``1 + weight``).
        block_norms: the bridge's norms in every block, a subset of ``ln1``, ``ln1_post``,
            ``ln2``, ``ln2_post`` (``ln1_post``/``ln2_post``: norms on the sublayer outputs,
            Gemma-2/3 sandwich norms and OLMo-2's post-norm blocks).
        qk_norm: None, ``"per_head"`` (an RMSNorm on each head's query and key: Qwen3,
            Gemma-3) or ``"all_heads"`` (one RMSNorm over all heads' queries: OLMo-2).
        parallel_residual: attention and MLP read the same residual (GPT-NeoX/Pythia).
        fused_qkv: q, k and v come from one projection (GPT-2 ``c_attn``, GPT-NeoX
            ``query_key_value``, Phi-3 ``qkv_proj``); the bridge splits it per head.
        positions: ``"learned"`` (a position embedding added to the residual) or ``"rotary"``.
        attention_layers: ``"global"``, ``"sliding"`` (a sliding window on every layer) or
            ``"mixed"`` (per-layer ``config.layer_types``).
        softcapping: attention-logit and final-logit soft-capping (Gemma-2).
        scaled_embedding: the model multiplies its embeddings by ``sqrt(d_model)`` (Gemma);
            headscope measures the scale (:func:`headscope.trace.embedding.embedding_scale`),
            and the zoo test checks the measurement against this declaration.
    """

    name: str
    model_types: tuple[str, ...]
    norm: str | None = None
    block_norms: tuple[str, ...] | None = None
    qk_norm: str | None = None
    parallel_residual: bool | None = False
    fused_qkv: bool | None = False
    positions: str | None = "rotary"
    attention_layers: str | None = "global"
    softcapping: bool | None = False
    scaled_embedding: bool = False

    def __post_init__(self) -> None:
        for value, choices, what in ((self.norm, NORMS, "norm"), (self.attention_layers, ATTENTION_LAYERS, "attention_layers"),
                                     (self.qk_norm, QK_NORMS, "qk_norm")):
            if value is not None and value not in choices:
                raise ValueError(f"family {self.name}: {what}={value!r}; choose from {choices}")

    def declared(self) -> dict[str, object]:
        """The facts this family pins (name -> value); the others are read per checkpoint."""
        pinned = {"norm": self.norm, "block_norms": self.block_norms, "parallel_residual": self.parallel_residual,
                  "fused_qkv": self.fused_qkv, "positions": self.positions,
                  "attention_layers": self.attention_layers, "softcapping": self.softcapping}
        out = {k: v for k, v in pinned.items() if v is not None}
        out["qk_norm"] = self.qk_norm
        return out


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` (a plugin's families too); a model_type claimed twice is an error."""
    for other in _FAMILIES.values():
        shared = set(other.model_types) & set(family.model_types)
        if other.name != family.name and shared:
            raise ValueError(f"model_type {sorted(shared)} is claimed by families {other.name} and {family.name}")
    _FAMILIES[family.name] = family
    return family


def _load_builtins() -> None:
    if _FAMILIES:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            register_family(family)


def families() -> dict[str, Family]:
    """Every family, by name (built-ins found by walking this package)."""
    _load_builtins()
    return dict(_FAMILIES)


def family_for(model_type: str) -> Family | None:
    """The family covering ``model_type``, or None."""
    for family in families().values():
        if model_type in family.model_types:
            return family
    return None
