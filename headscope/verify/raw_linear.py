"""Per-head linear quantities of the raw model, computed by calling its own modules.

- a head's output ``z_h @ W_O^h``: the output projection applied to ``z`` with every other head
  zeroed, minus the projection of zero (its bias);
- what a head writes into the residual: that output, through the layer's post-attention norm
  with the scale frozen at the whole attention output's (Gemma-2/3, OLMo-2), else unchanged;
- a vector's logits through the final norm frozen at the residual's scale: ``lm_head`` of the
  frozen-norm vector minus ``lm_head(0)``;
- ``W_V`` / ``W_O`` slices: the projection modules applied to the identity basis (this reads
  ``nn.Linear`` and GPT-2's transposed ``Conv1D`` alike).
"""

from __future__ import annotations

import torch

from headscope.verify.raw_model import RawModel
from headscope.verify.raw_norms import NormSites, frozen_norm


def _apply(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x) - module(0)`` in float32: the linear part of an affine module."""
    dtype = next(module.parameters()).dtype
    with torch.inference_mode():
        return (module(x.to(dtype)) - module(torch.zeros_like(x).to(dtype))).float()


def head_results(raw: RawModel, layer: int, z: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """``z_h @ W_O^h`` for ``heads``: z (..., H, d) -> (..., n_heads_sel, d_model)."""
    proj = raw.need("out_proj", layer)
    mask = torch.zeros(len(heads), raw.n_heads, 1, device=z.device)
    mask[torch.arange(len(heads)), torch.tensor(heads)] = 1.0
    masked = z.unsqueeze(-3) * mask  # (..., n_sel, H, d)
    return _apply(proj, masked.reshape(*z.shape[:-2], len(heads), raw.n_heads * raw.d_head))


def head_writes(raw: RawModel, norms: NormSites, layer: int, z: torch.Tensor, attn_out: torch.Tensor,
                heads: list[int]) -> torch.Tensor:
    """What ``heads`` add to the residual: (..., n_sel, d_model); ``attn_out`` (..., d_model)."""
    results = head_results(raw, layer, z, heads)
    post = norms.post_attn[layer]
    return results if post is None else frozen_norm(post, results, attn_out.unsqueeze(-2))


def frozen_logits(raw: RawModel, norms: NormSites, vectors: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
    """Logits of residual components (..., d_model) through the final norm frozen at
    ``final_resid`` (broadcastable) and ``lm_head``'s linear part: (..., vocab)."""
    normed = frozen_norm(norms.need_final(), vectors, final_resid)
    return _apply(raw.need("lm_head"), normed)


def w_v(raw: RawModel, layer: int, kv: int) -> torch.Tensor:
    """(d_model, d_head) value weights of KV head ``kv``."""
    qkv = raw.need("qkv", layer)
    eye = torch.eye(raw.d_model, device=raw.device).unsqueeze(0)  # (1, D, D)
    return qkv.split(_apply(qkv.modules["v"], eye), "v")[0, :, kv]


def w_o(raw: RawModel, layer: int, head: int) -> torch.Tensor:
    """(d_head, d_model) output weights of query head ``head``."""
    width = raw.n_heads * raw.d_head
    rows = _apply(raw.need("out_proj", layer), torch.eye(width, device=raw.device))  # (H*d, D)
    return rows[head * raw.d_head : (head + 1) * raw.d_head]
