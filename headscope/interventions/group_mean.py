"""Mean ablation with one mean per group (e.g. per IOI template), Wang et al. 2022 §3.

``GroupMeanAblate`` sets the heads' z to the mean over the reference rows *of the same group*
(over examples, and over positions unless ``per_position``). Row ``i`` of the input uses the
mean of group ``groups[i]``, computed over reference rows with ``reference_groups == groups[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.interventions.heads import _by_layer, _check_heads, _ZEdit


@dataclass
class GroupMeanAblate(_ZEdit):
    """Per-group mean ablation. ``groups``: one label per input row; ``reference_groups``: one
    per reference row (default: ``groups``)."""

    reference: torch.Tensor | None = None
    groups: Sequence[str] = ()
    reference_groups: Sequence[str] | None = None
    per_position: bool = False
    _means: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def prepare(self, model: Any) -> None:
        from headscope.trace import trace

        _check_heads(model, self.heads)
        if self.reference is None:
            raise HeadscopeError("per-group mean ablation needs reference tokens (e.g. the corrupted prompts).")
        ref_groups = list(self.reference_groups if self.reference_groups is not None else self.groups)
        if len(ref_groups) != self.reference.shape[0]:
            raise HeadscopeError("reference_groups must have one label per reference row.")
        missing = sorted(set(self.groups) - set(ref_groups))
        if missing:
            raise HeadscopeError(f"group '{missing[0]}' has no reference rows for its mean.")
        if self._means:
            return
        grouped = _by_layer(self.heads)
        tr = trace(model, self.reference, acts=["z"], layers=list(grouped), batch_size=16)
        for layer, heads in grouped.items():
            z = tr.get("z", layer)[:, :, heads]  # (ref, pos, n_sel, d_head)
            rows = []
            for g in self.groups:
                sel = torch.tensor([r == g for r in ref_groups])
                m = z[sel].mean(0, keepdim=True)
                rows.append(m if self.per_position else m.mean(1, keepdim=True))
            self._means[layer] = torch.cat(rows)  # (n_input, 1|pos, n_sel, d)

    def value(self, model: Any, layer: int, heads: list[int], z: torch.Tensor, batch_slice: slice) -> torch.Tensor:
        return self._means[layer][batch_slice].to(z.device)
