"""Split the residual stream into what each head, bias and MLP writes, with the model's real norms.

A head's output ``result_h = z_h @ W_O^h`` (d_model) is what it adds to the residual only on
pre-norm models. Gemma-2/3 (sandwich norms) and OLMo-2 pass the attention output
``o = sum_h result_h + b_O`` through a post-attention norm ``ln1_post`` before the residual
add, so head ``h`` contributes ``ln1_post.linear(result_h) / ln1_post.scale(o)``: the norm
linearised with its scale frozen at this run's value (exact for the sum, since the norm is
linear in ``o`` once its scale is fixed). This module computes those contributions from one
hooked forward pass, so analyzers never hook the model themselves.

``residual_split`` decomposes the residual entering the final norm at one position per row::

    final = embed + sum_L (sum_h heads[L, h] + attn_bias[L] + mlp[L])

``embed`` is the residual entering block 0 (token and position embeddings, Gemma's
embedding scale included); ``attn_bias`` is ``b_O``'s share plus the post-attention norm's
bias; ``mlp[L]`` is the rest of block ``L``'s write (its MLP, after ``ln2_post`` where there is
one), taken by difference of the block's input and output residuals, so the split is exact by
construction and the only modelling step is the post-attention norm's frozen scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headscope.models.norms import NormSpec, block_norm, final_norm
from headscope.trace.stream import capture_stream

Head = tuple[int, int]


@dataclass
class ResidualSplit:
    """The residual entering the final norm, split into components (float32, CPU).

    Attributes:
        embed: (n, d_model).
        heads: (n, n_layers, n_heads, d_model) each head's write.
        attn_bias: (n, n_layers, d_model) ``b_O`` and the post-attention norm's bias.
        mlp: (n, n_layers, d_model) the rest of each block's write.
        final: (n, d_model) the residual entering the final norm.
    """

    embed: torch.Tensor
    heads: torch.Tensor
    attn_bias: torch.Tensor
    mlp: torch.Tensor
    final: torch.Tensor

    def total(self) -> torch.Tensor:
        """Sum of all components: equals ``final`` up to float rounding."""
        return self.embed + self.heads.sum((1, 2)) + self.attn_bias.sum(1) + self.mlp.sum(1)


def _w_o(model: Any, layer: int) -> torch.Tensor:
    return model.bridge.blocks[layer].attn.W_O.detach().float().cpu()  # (head, d_head, d_model)


def _head_writes(model: Any, layer: int, z: torch.Tensor, o_out: torch.Tensor,
                 heads: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads' writes (..., n_sel, d_model) and the bias part (..., d_model) at one layer.

    ``z``: (..., n_heads, d_head); ``o_out``: (..., d_model) the attention output (o_proj's).
    """
    w_o = _w_o(model, layer)
    result = torch.einsum("...hd,hdm->...hm", z.float(), w_o)
    bias = o_out.float() - result.sum(-2)
    sel = result if heads is None else result[..., list(heads), :]
    post: NormSpec | None = block_norm(model, layer, "ln1_post")
    if post is None:
        return sel, bias
    scale = post.scale(o_out).unsqueeze(-2)
    bias_part = post.linear(bias) / scale.squeeze(-2)
    if post.bias is not None:
        bias_part = bias_part + post.bias.cpu()
    return post.linear(sel) / scale, bias_part


def residual_split(
    model: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    interventions: Sequence[Any] = (),
    batch_size: int | None = None,
) -> ResidualSplit:
    """Split the final residual at ``positions`` (n,) (one per row of ``tokens`` (n, pos))."""
    L = model.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)] + ["ln_final.hook_in"]
    names += [f"blocks.{layer}.attn.hook_z" for layer in range(L)]
    names += [f"blocks.{layer}.attn.hook_out" for layer in range(L)]
    got = capture_stream(model, tokens, names, interventions, batch_size, positions=positions)
    final = got["ln_final.hook_in"]
    heads, biases, mlps = [], [], []
    for layer in range(L):
        z, o_out = got[f"blocks.{layer}.attn.hook_z"], got[f"blocks.{layer}.attn.hook_out"]
        h, b = _head_writes(model, layer, z, o_out)
        nxt = got[f"blocks.{layer + 1}.hook_resid_pre"] if layer + 1 < L else final
        block_write = nxt - got[f"blocks.{layer}.hook_resid_pre"]
        heads.append(h)
        biases.append(b)
        mlps.append(block_write - h.sum(-2) - b)
    return ResidualSplit(
        embed=got["blocks.0.hook_resid_pre"], heads=torch.stack(heads, 1), attn_bias=torch.stack(biases, 1),
        mlp=torch.stack(mlps, 1), final=final,
    )


def head_writes(
    model: Any,
    tokens: torch.Tensor,
    heads: Sequence[Head],
    positions: torch.Tensor | None = None,
    interventions: Sequence[Any] = (),
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``heads`` write into the residual, and the final norm's scale of the residual.

    Args:
        tokens: (batch, pos).
        heads: the heads, in output order.
        positions: (n_pos,) positions kept for every row (default all).

    Returns:
        ``(writes (batch, n_pos, n_heads, d_model), final-norm scale (batch, n_pos, 1))``,
        float32 on the CPU.
    """
    layers = sorted({layer for layer, _ in heads})
    names = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    names += [f"blocks.{layer}.attn.hook_out" for layer in layers] + ["ln_final.hook_in"]
    got = capture_stream(model, tokens, names, interventions, batch_size)
    pos = slice(None) if positions is None else positions
    per_layer = {
        layer: _head_writes(model, layer, got[f"blocks.{layer}.attn.hook_z"][:, pos],
                            got[f"blocks.{layer}.attn.hook_out"][:, pos])[0]
        for layer in layers
    }
    writes = torch.stack([per_layer[layer][:, :, head] for layer, head in heads], dim=2)
    scale = final_norm(model).scale(got["ln_final.hook_in"][:, pos]).cpu()
    return writes, scale
