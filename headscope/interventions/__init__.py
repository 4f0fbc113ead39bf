"""The intervention layer: ablations and patches on heads, as plain objects.

>>> from headscope.interventions import ZeroAblate, MeanAblate, MaskQuery, run_with_interventions
>>> logits = run_with_interventions(model, tokens, [MeanAblate([(9, 6)], reference=ref_tokens)])

Analyzers never hook the model themselves: they describe interventions here (or ask the
tracer, which accepts the same objects) and this layer owns hooking, batching and GQA.
"""

from headscope.interventions.heads import (
    ABLATION_KINDS,
    MaskQuery,
    MeanAblate,
    MeanQuery,
    PatchHeads,
    ResampleAblate,
    ZeroAblate,
    make_ablation,
)
from headscope.trace.hooks import Intervention, run_with_interventions

__all__ = [
    "ABLATION_KINDS",
    "Intervention",
    "MaskQuery",
    "MeanAblate",
    "MeanQuery",
    "PatchHeads",
    "ResampleAblate",
    "ZeroAblate",
    "make_ablation",
    "run_with_interventions",
]
